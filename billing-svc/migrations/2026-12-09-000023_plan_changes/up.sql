-- Plan changes of a paid subscription (BillingService ChangeSubscriptionPlan;
-- docs/design.md, "Plan changes"). An upgrade takes effect now, once the
-- order charging the prorated difference for the rest of the period is paid
-- (timing IMMEDIATELY, order_id below); a downgrade takes effect at the
-- period end: the renewal order of the next period charges the new plan
-- (timing AT_PERIOD_END). A change is OPEN until it is APPLIED or CANCELLED
-- (withdrawn, superseded by another change, or its subscription ended), and
-- a subscription has at most one OPEN change: Subscription.pending_change.
CREATE TABLE plan_changes (
  id               uuid PRIMARY KEY,
  subscription_id  uuid NOT NULL REFERENCES subscriptions(id),
  timing           text NOT NULL CHECK (timing IN ('IMMEDIATELY', 'AT_PERIOD_END')),
  status           text NOT NULL CHECK (status IN ('OPEN', 'APPLIED', 'CANCELLED')),
  from_plan_id     text NOT NULL,
  from_version     integer NOT NULL,
  to_plan_id       text NOT NULL,
  to_version       integer NOT NULL,
  -- The period the change was priced in (IMMEDIATELY) or ends
  -- (AT_PERIOD_END: the change takes effect at period_end).
  period_start     timestamptz NOT NULL,
  period_end       timestamptz NOT NULL,
  -- The prorated charge (IMMEDIATELY; 0 at period end), in minor units.
  amount_minor     bigint NOT NULL CHECK (amount_minor >= 0),
  currency         char(3) NOT NULL,
  created_at       timestamptz NOT NULL,
  updated_at       timestamptz NOT NULL,
  applied_at       timestamptz,
  CHECK ((status = 'APPLIED') = (applied_at IS NOT NULL)),
  CHECK (timing = 'IMMEDIATELY' OR amount_minor = 0),
  CHECK (period_start < period_end),
  FOREIGN KEY (from_plan_id, from_version) REFERENCES plan_versions (plan_id, version),
  FOREIGN KEY (to_plan_id, to_version) REFERENCES plan_versions (plan_id, version)
);
-- One open change per subscription, however many requests race.
CREATE UNIQUE INDEX plan_changes_one_open ON plan_changes (subscription_id) WHERE status = 'OPEN';
CREATE INDEX plan_changes_subscription ON plan_changes (subscription_id, created_at);

-- The order paying an IMMEDIATELY change (one per change). Its amount is
-- the prorated difference, not a version's price, so the price foreign key
-- binds every other order only: priced_minor is the amount of an order that
-- buys or renews a version at its price, NULL for a proration.
ALTER TABLE orders ADD COLUMN plan_change_id uuid REFERENCES plan_changes(id);
CREATE UNIQUE INDEX orders_plan_change ON orders (plan_change_id) WHERE plan_change_id IS NOT NULL;
ALTER TABLE orders ADD CONSTRAINT orders_one_kind CHECK (plan_change_id IS NULL OR renews_subscription_id IS NULL);
-- An order comes from a checkout session, a renewal, or a plan change.
ALTER TABLE orders DROP CONSTRAINT orders_origin_check,
  ADD CONSTRAINT orders_origin_check
    CHECK (renews_subscription_id IS NOT NULL OR checkout_session_id IS NOT NULL OR plan_change_id IS NOT NULL);
ALTER TABLE orders ADD COLUMN priced_minor bigint
  GENERATED ALWAYS AS (CASE WHEN plan_change_id IS NULL THEN amount_minor END) STORED;
ALTER TABLE orders ADD CONSTRAINT orders_price_of_version_priced
  FOREIGN KEY (plan_id, plan_version, priced_minor, currency)
  REFERENCES plan_versions (plan_id, version, price_minor, currency) NOT VALID;
-- Validated as the constraint it replaces was: over the old orders only
-- when they all agree with their versions (orders from before the catalogue
-- may not).
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'orders_price_of_version' AND convalidated) THEN
    ALTER TABLE orders VALIDATE CONSTRAINT orders_price_of_version_priced;
  END IF;
END $$;
ALTER TABLE orders DROP CONSTRAINT orders_price_of_version;

-- One renewal order per period that is open or paid: a plan change cancels
-- the open renewal order priced at the plan the period will not have, and
-- the renewal job opens it again at the new plan's price (a new receipt).
-- Cancelled ones stay as history.
CREATE UNIQUE INDEX orders_one_live_per_renewal_period ON orders (renews_subscription_id, renews_period_start)
  WHERE status <> 'CANCELLED';
ALTER TABLE orders DROP CONSTRAINT orders_one_per_renewal_period;

-- A plan change is an event (SUBSCRIPTION_PLAN_CHANGED), and so is a
-- version an operator's migration schedules (SUBSCRIPTION_CHANGE_SCHEDULED):
-- the subscriptions' update trigger also lets those through.
DROP TRIGGER subscriptions_events_update ON subscriptions;
CREATE CONSTRAINT TRIGGER subscriptions_events_update AFTER UPDATE ON subscriptions DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                     OR OLD.period_start IS DISTINCT FROM NEW.period_start
                     OR OLD.plan_id IS DISTINCT FROM NEW.plan_id
                     OR (NEW.next_plan_version IS NOT NULL AND OLD.next_plan_version IS DISTINCT FROM NEW.next_plan_version)
                     OR (NEW.cancel_at_period_end AND NOT OLD.cancel_at_period_end)
                     OR (NEW.credits_remaining < OLD.credits_remaining AND NEW.credits_granted > 0
                         AND ((OLD.credits_remaining * 5 > NEW.credits_granted AND NEW.credits_remaining * 5 <= NEW.credits_granted)
                              OR (OLD.credits_remaining > 0 AND NEW.credits_remaining <= 0))))
  EXECUTE FUNCTION billing_subscription_events();
ALTER TABLE events DROP CONSTRAINT events_type_known,
  ADD CONSTRAINT events_type_known CHECK (event_type IN (
  'ORDER_CREATED', 'ORDER_PAID', 'ORDER_CANCELLED', 'PAYMENT_CAPTURED',
  'DISCREPANCY_RECORDED', 'DISCREPANCY_REFUNDED', 'DISCREPANCY_ACKNOWLEDGED', 'DISCREPANCY_REOPENED',
  'SUBSCRIPTION_ACTIVATED', 'SUBSCRIPTION_RENEWED', 'SUBSCRIPTION_PAST_DUE', 'SUBSCRIPTION_EXPIRED',
  'SUBSCRIPTION_CANCELLED', 'SUBSCRIPTION_REPLACED', 'SUBSCRIPTION_CANCEL_SCHEDULED',
  'REFUND_PENDING', 'REFUND_PROCESSED', 'REFUND_FAILED',
  'USAGE_SESSION_STARTED', 'USAGE_SESSION_ENDED', 'CREDITS_LOW', 'CREDITS_EXHAUSTED',
  'SUBSCRIPTION_PLAN_CHANGED', 'SUBSCRIPTION_CHANGE_SCHEDULED', 'SUBSCRIPTION_CHANGE_CANCELLED')) NOT VALID;
ALTER TABLE events VALIDATE CONSTRAINT events_type_known;

-- A change opened, withdrawn, replaced or lapsed: SUBSCRIPTION_CHANGE_SCHEDULED
-- and SUBSCRIPTION_CHANGE_CANCELLED (sql/functions/billing_plan_change_events.sql).
CREATE CONSTRAINT TRIGGER plan_changes_events AFTER INSERT ON plan_changes DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION billing_plan_change_events();
CREATE CONSTRAINT TRIGGER plan_changes_events_update AFTER UPDATE ON plan_changes DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.status = 'OPEN' AND NEW.status = 'CANCELLED') EXECUTE FUNCTION billing_plan_change_events();

-- A subscription that ends (any path) cancels its open change
-- (sql/functions/billing_subscription_ended_changes.sql).
CREATE TRIGGER subscriptions_ended_changes AFTER UPDATE OF status ON subscriptions
  FOR EACH ROW WHEN (OLD.status IN ('ACTIVE', 'PAST_DUE') AND NEW.status NOT IN ('ACTIVE', 'PAST_DUE'))
  EXECUTE FUNCTION billing_subscription_ended_changes();
