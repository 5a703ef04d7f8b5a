ALTER TABLE orders DROP CONSTRAINT orders_price_of_version_priced;
ALTER TABLE orders ADD CONSTRAINT orders_price_of_version
  FOREIGN KEY (plan_id, plan_version, amount_minor, currency)
  REFERENCES plan_versions (plan_id, version, price_minor, currency) NOT VALID;
ALTER TABLE orders DROP COLUMN priced_minor;
ALTER TABLE orders DROP CONSTRAINT orders_one_kind;
ALTER TABLE orders DROP CONSTRAINT orders_origin_check,
  ADD CONSTRAINT orders_origin_check CHECK (renews_subscription_id IS NOT NULL OR checkout_session_id IS NOT NULL) NOT VALID;
ALTER TABLE orders DROP COLUMN plan_change_id;
DROP TRIGGER subscriptions_ended_changes ON subscriptions;
DROP TABLE plan_changes;
DROP INDEX orders_one_live_per_renewal_period;
ALTER TABLE orders ADD CONSTRAINT orders_one_per_renewal_period UNIQUE (renews_subscription_id, renews_period_start);
DROP TRIGGER subscriptions_events_update ON subscriptions;
CREATE CONSTRAINT TRIGGER subscriptions_events_update AFTER UPDATE ON subscriptions DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                     OR OLD.period_start IS DISTINCT FROM NEW.period_start
                     OR (NEW.cancel_at_period_end AND NOT OLD.cancel_at_period_end)
                     OR (NEW.credits_remaining < OLD.credits_remaining AND NEW.credits_granted > 0
                         AND ((OLD.credits_remaining * 5 > NEW.credits_granted AND NEW.credits_remaining * 5 <= NEW.credits_granted)
                              OR (OLD.credits_remaining > 0 AND NEW.credits_remaining <= 0))))
  EXECUTE FUNCTION billing_subscription_events();
