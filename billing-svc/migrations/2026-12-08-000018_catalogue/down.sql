DROP TRIGGER orders_plan_version ON orders;
DROP TRIGGER subscriptions_plan_version ON subscriptions;
ALTER TABLE orders DROP CONSTRAINT orders_price_of_version, DROP COLUMN plan_version;
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_plan_version_fkey, DROP COLUMN plan_version;
ALTER TABLE plans
  DROP CONSTRAINT plans_period_check,
  DROP CONSTRAINT plans_current_version_fkey,
  DROP CONSTRAINT plans_archived_check,
  DROP COLUMN archived_at,
  DROP COLUMN current_version;
-- Plans of other periods than monthly cannot go back.
ALTER TABLE plans ADD CONSTRAINT plans_period_check CHECK (period = 'monthly');
DROP TABLE plan_versions;
