-- Subscription lifecycle (docs/design.md, "Subscription lifecycle"): every
-- paid period is paid for. A paid subscription whose period ends without a
-- captured renewal goes PAST_DUE (no credits) for a grace period, then
-- EXPIRED; it can be cancelled at period end or at once; payments can be
-- refunded.

-- States. PAST_DUE is still the user's live subscription (no free row may
-- appear beside it), so the one-per-user index covers both live states.
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_status_check;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_status_check
  CHECK (status IN ('ACTIVE', 'PAST_DUE', 'CANCELLED', 'EXPIRED', 'REPLACED'));
ALTER TABLE subscriptions
  ADD COLUMN cancel_at_period_end boolean NOT NULL DEFAULT false,
  ADD COLUMN ended_at timestamptz;
-- Rows reconciliation cancelled before ended_at existed end when they were
-- last changed.
UPDATE subscriptions SET ended_at = updated_at WHERE status = 'CANCELLED' AND ended_at IS NULL;
ALTER TABLE subscriptions
  -- The saved payment method (the gateway's customer and recurring token)
  -- from the payment that bought the subscription, for automatic renewals.
  ADD COLUMN gateway_customer_id text,
  ADD COLUMN gateway_token_id text,
  ADD CONSTRAINT subscriptions_saved_method_check CHECK ((gateway_customer_id IS NULL) = (gateway_token_id IS NULL)),
  ADD CONSTRAINT subscriptions_ended_check CHECK ((status IN ('CANCELLED', 'EXPIRED')) = (ended_at IS NOT NULL));
DROP INDEX subscriptions_one_active_per_user;
CREATE UNIQUE INDEX subscriptions_one_live_per_user ON subscriptions (user_id) WHERE status IN ('ACTIVE', 'PAST_DUE');
DROP INDEX subscriptions_period_end_idx;
CREATE INDEX subscriptions_live_period_end_idx ON subscriptions (period_end) WHERE status IN ('ACTIVE', 'PAST_DUE');

-- Renewal orders: one per (subscription, period it pays for), created by the
-- renewal job on any replica (the unique constraint decides), without a
-- checkout session unless the customer pays it through a renewal checkout.
ALTER TABLE orders ALTER COLUMN checkout_session_id DROP NOT NULL;
ALTER TABLE orders
  ADD COLUMN renews_subscription_id uuid REFERENCES subscriptions(id),
  ADD COLUMN renews_period_start timestamptz,
  -- Automatic collection: attempts made and when the next one is due
  -- (NULL: not collected automatically, or no longer).
  ADD COLUMN charge_attempts integer NOT NULL DEFAULT 0 CHECK (charge_attempts >= 0),
  ADD COLUMN next_charge_at timestamptz,
  ADD COLUMN last_charge_error text,
  -- The payment a charge of the saved method produced, kept until it is
  -- captured: the next attempt asks the gateway about it instead of
  -- charging again.
  ADD COLUMN pending_payment_id text,
  ADD CONSTRAINT orders_renewal_check CHECK ((renews_subscription_id IS NULL) = (renews_period_start IS NULL)),
  ADD CONSTRAINT orders_origin_check CHECK (renews_subscription_id IS NOT NULL OR checkout_session_id IS NOT NULL),
  ADD CONSTRAINT orders_one_per_renewal_period UNIQUE (renews_subscription_id, renews_period_start);
CREATE INDEX orders_charge_due_idx ON orders (next_charge_at) WHERE status = 'CREATED' AND next_charge_at IS NOT NULL;

-- Credits leave a balance without usage when a period ends (EXPIRED) or a
-- subscription is cancelled at once (FORFEITED).
ALTER TABLE ledger DROP CONSTRAINT ledger_kind_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_kind_check CHECK (kind IN ('USAGE', 'CARRY_OVER', 'EXPIRED', 'FORFEITED'));

-- Refunds, of an order's payment or of a discrepancy's. The id is the
-- caller's refund_id (idempotency). PENDING and PROCESSED refunds count
-- against the captured amount; a FAILED one gives its amount back.
CREATE TABLE refunds (
  id                 text PRIMARY KEY,
  payment_id         text NOT NULL,
  order_id           text REFERENCES orders(id),
  discrepancy_id     bigint REFERENCES payment_discrepancies(id),
  amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
  currency           text NOT NULL,
  status             text NOT NULL CHECK (status IN ('PENDING', 'PROCESSED', 'FAILED')),
  reason             text NOT NULL,
  gateway_refund_id  text UNIQUE,
  detail             text NOT NULL DEFAULT '',
  created_at         timestamptz NOT NULL,
  updated_at         timestamptz NOT NULL,
  CHECK (order_id IS NOT NULL OR discrepancy_id IS NOT NULL)
);
CREATE INDEX refunds_payment_idx ON refunds (payment_id);
CREATE INDEX refunds_order_idx ON refunds (order_id, created_at);
CREATE TRIGGER refunds_touch BEFORE UPDATE ON refunds FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- billing_renewal_paid: defined by billing-svc/sql/functions/billing_renewal_paid.sql, applied by the
-- migration runner after the migrations (docs/design.md, SQL functions).

-- billing_roll_period: defined by billing-svc/sql/functions/billing_roll_period.sql, applied by the
-- migration runner after the migrations (docs/design.md, SQL functions).

-- The renewal job's charges of saved payment methods are a capture path
-- too. A renewal paid for a period the subscription will not have (it was
-- cancelled now, fully refunded or replaced first) is money that buys
-- nothing: a SUBSCRIPTION_ENDED discrepancy, refunded by reconcile --fix.
ALTER TABLE payment_discrepancies DROP CONSTRAINT payment_discrepancies_source_check;
ALTER TABLE payment_discrepancies ADD CONSTRAINT payment_discrepancies_source_check
  CHECK (source IN ('VERIFY_PAYMENT', 'WEBHOOK', 'RECONCILE', 'RENEWAL_CHARGE', 'SUBSCRIPTION_ENDED'));
ALTER TABLE payment_discrepancies DROP CONSTRAINT payment_discrepancies_kind_check;
ALTER TABLE payment_discrepancies ADD CONSTRAINT payment_discrepancies_kind_check
  CHECK (kind IN ('ORDER_SUPERSEDED', 'ORDER_CANCELLED', 'SECOND_PAYMENT', 'AMOUNT_MISMATCH', 'UNKNOWN_ORDER',
                  'RECORDED_BEFORE_CLASSIFICATION', 'SUBSCRIPTION_ENDED'));
