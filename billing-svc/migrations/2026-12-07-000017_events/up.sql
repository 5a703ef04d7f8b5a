-- The event stream (docs/design.md, "Events"): the outbox rows, written by
-- triggers in the transaction of the change they describe.
--
-- event_stream: one row. `epoch` names this copy of the stream: cursors
-- carry it, and a cursor of another epoch is CURSOR_EXPIRED. `purged_*` is
-- the last position the retention job deleted (a cursor there is still
-- good: nothing after it was deleted).
CREATE TABLE event_stream (
  singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  epoch            bigint NOT NULL,
  purged_xid       xid8 NOT NULL DEFAULT '0',
  purged_seq       bigint NOT NULL DEFAULT 0,
  purged_event_id  uuid
);
INSERT INTO event_stream (epoch) VALUES (floor(random() * 9007199254740990)::bigint + 1);

CREATE TABLE events (
  xid             xid8 NOT NULL,
  seq             bigint GENERATED ALWAYS AS IDENTITY,
  event_id        uuid NOT NULL DEFAULT gen_random_uuid(),
  event_type      text NOT NULL,
  occurred_at     timestamptz NOT NULL DEFAULT now(),
  entity_kind     text NOT NULL,
  entity_id       text NOT NULL,
  entity_version  bigint NOT NULL CHECK (entity_version > 0),
  user_id         text NOT NULL,
  payload         jsonb NOT NULL,
  PRIMARY KEY (xid, seq)
);

-- The last version of each entity, and the stream position (xid) its last
-- event took: a newer event of the entity is placed after it.
CREATE TABLE event_versions (
  entity_kind  text NOT NULL,
  entity_id    text NOT NULL,
  version      bigint NOT NULL,
  last_xid     xid8 NOT NULL,
  PRIMARY KEY (entity_kind, entity_id)
);

ALTER TABLE events ADD CONSTRAINT events_type_known CHECK (event_type IN (
  'ORDER_CREATED', 'ORDER_PAID', 'ORDER_CANCELLED', 'PAYMENT_CAPTURED',
  'DISCREPANCY_RECORDED', 'DISCREPANCY_REFUNDED', 'DISCREPANCY_ACKNOWLEDGED', 'DISCREPANCY_REOPENED',
  'SUBSCRIPTION_ACTIVATED', 'SUBSCRIPTION_RENEWED', 'SUBSCRIPTION_PAST_DUE', 'SUBSCRIPTION_EXPIRED',
  'SUBSCRIPTION_CANCELLED', 'SUBSCRIPTION_REPLACED', 'SUBSCRIPTION_CANCEL_SCHEDULED',
  'REFUND_PENDING', 'REFUND_PROCESSED', 'REFUND_FAILED',
  'USAGE_SESSION_STARTED', 'USAGE_SESSION_ENDED', 'CREDITS_LOW', 'CREDITS_EXHAUSTED'));

-- The triggers: deferred constraint triggers, so they run at commit and
-- read the rows as the transaction commits them; the WHEN clauses (checked
-- at each statement) queue only the changes that make an event (a Deduct
-- moves credits_remaining and queues nothing until a threshold is
-- crossed). Their functions live in sql/functions/.
CREATE CONSTRAINT TRIGGER orders_events AFTER INSERT ON orders DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION billing_order_events();
CREATE CONSTRAINT TRIGGER orders_events_update AFTER UPDATE ON orders DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.payment_id IS DISTINCT FROM NEW.payment_id)
  EXECUTE FUNCTION billing_order_events();
CREATE CONSTRAINT TRIGGER subscriptions_events AFTER INSERT ON subscriptions DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION billing_subscription_events();
CREATE CONSTRAINT TRIGGER subscriptions_events_update AFTER UPDATE ON subscriptions DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                     OR OLD.period_start IS DISTINCT FROM NEW.period_start
                     OR (NEW.cancel_at_period_end AND NOT OLD.cancel_at_period_end)
                     OR (NEW.credits_remaining < OLD.credits_remaining AND NEW.credits_granted > 0
                         AND ((OLD.credits_remaining * 5 > NEW.credits_granted AND NEW.credits_remaining * 5 <= NEW.credits_granted)
                              OR (OLD.credits_remaining > 0 AND NEW.credits_remaining <= 0))))
  EXECUTE FUNCTION billing_subscription_events();
CREATE CONSTRAINT TRIGGER refunds_events AFTER INSERT ON refunds DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION billing_refund_events();
CREATE CONSTRAINT TRIGGER refunds_events_update AFTER UPDATE ON refunds DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION billing_refund_events();
CREATE CONSTRAINT TRIGGER payment_discrepancies_events AFTER INSERT ON payment_discrepancies DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION billing_discrepancy_events();
CREATE CONSTRAINT TRIGGER payment_discrepancies_events_update AFTER UPDATE ON payment_discrepancies DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION billing_discrepancy_events();
CREATE CONSTRAINT TRIGGER usage_sessions_events AFTER INSERT ON usage_sessions DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION billing_usage_session_events();
CREATE CONSTRAINT TRIGGER usage_sessions_events_update AFTER UPDATE ON usage_sessions DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION billing_usage_session_events();
