-- The catalogue (docs/design.md, "Catalogue"): plans an operator creates,
-- reprices and archives through billing.v1.PlanCatalogService. A plan's
-- terms (price, currency, period, credits, limits) live in immutable price
-- versions; a purchase is pinned to the version it was bought at and its
-- renewals charge that version, whatever the plan costs today.

-- Price versions: never updated, never deleted (a new version is made
-- instead). Limits say "unlimited" with NULL, not with a 0 that meant
-- unlimited for sessions and minutes and "none allowed" for uploads.
-- `period` and `trial_days` are room for yearly plans and trials, which no
-- code offers yet.
CREATE TABLE plan_versions (
  plan_id                  text NOT NULL REFERENCES plans(id),
  version                  integer NOT NULL CHECK (version > 0),
  price_minor              bigint NOT NULL CHECK (price_minor >= 0),
  currency                 char(3) NOT NULL,
  period                   text NOT NULL CHECK (period IN ('monthly', 'yearly')),
  credits_per_period       bigint NOT NULL CHECK (credits_per_period >= 0),
  max_sessions_per_period  integer CHECK (max_sessions_per_period > 0),
  max_minutes_per_period   integer CHECK (max_minutes_per_period > 0),
  max_upload_bytes         bigint CHECK (max_upload_bytes >= 0),
  trial_days               integer CHECK (trial_days > 0),
  created_at               timestamptz NOT NULL,
  PRIMARY KEY (plan_id, version),
  -- What an order names (orders_price_of_version below): its amount is the
  -- price of the version it pins.
  CONSTRAINT plan_versions_price_key UNIQUE (plan_id, version, price_minor, currency)
);

-- The trigger function is billing-svc/sql/functions/billing_plan_version_immutable.sql,
-- created before the migrations (docs/design.md, SQL functions).
CREATE TRIGGER plan_versions_immutable BEFORE UPDATE OR DELETE ON plan_versions
  FOR EACH ROW EXECUTE FUNCTION billing_plan_version_immutable();
CREATE TRIGGER plan_versions_not_truncated BEFORE TRUNCATE ON plan_versions
  FOR EACH STATEMENT EXECUTE FUNCTION billing_plan_version_immutable();

-- Version 1 of every existing plan: its terms as they are. A 0 of the old
-- session and minute limits meant unlimited (NULL now); an upload limit of
-- 0 meant none allowed, and stays 0.
INSERT INTO plan_versions (plan_id, version, price_minor, currency, period, credits_per_period,
                           max_sessions_per_period, max_minutes_per_period, max_upload_bytes, created_at)
SELECT id, 1, price_minor, currency, period, credits_per_period,
       nullif(max_sessions_per_period, 0), nullif(max_minutes_per_period, 0), max_upload_bytes, created_at
  FROM plans;

-- A plan points at its current version, which new purchases buy. Its own
-- price, currency, period, credits and limit columns stay, as the current
-- version's terms in their old encoding (0 = unlimited sessions or minutes;
-- unlimited uploads as the largest bigint), so BillingService's ListPlans
-- and GetPlan keep filling their fields. `active` stays too: false exactly
-- when the plan is archived (no new purchases); plans made inactive before
-- the catalogue count as archived now.
ALTER TABLE plans
  ADD COLUMN current_version integer NOT NULL DEFAULT 1,
  ADD COLUMN archived_at timestamptz;
ALTER TABLE plans ALTER COLUMN current_version DROP DEFAULT;
UPDATE plans SET archived_at = now() WHERE NOT active;
ALTER TABLE plans
  ADD CONSTRAINT plans_archived_check CHECK (active = (archived_at IS NULL)),
  ADD CONSTRAINT plans_current_version_fkey FOREIGN KEY (id, current_version)
    REFERENCES plan_versions (plan_id, version) DEFERRABLE INITIALLY DEFERRED,
  DROP CONSTRAINT plans_period_check,
  ADD CONSTRAINT plans_period_check CHECK (period IN ('monthly', 'yearly'));

-- Subscriptions and orders are pinned to the version they buy or renew.
-- Everything before the catalogue bought version 1 (a column default: no
-- row is rewritten or touched, so no trigger fires).
ALTER TABLE subscriptions ADD COLUMN plan_version integer NOT NULL DEFAULT 1;
ALTER TABLE subscriptions ALTER COLUMN plan_version DROP DEFAULT;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_plan_version_fkey
  FOREIGN KEY (plan_id, plan_version) REFERENCES plan_versions (plan_id, version);
ALTER TABLE orders ADD COLUMN plan_version integer NOT NULL DEFAULT 1;
ALTER TABLE orders ALTER COLUMN plan_version DROP DEFAULT;
-- An insert that names no version (an operator's SQL) buys the plan's
-- current one: billing-svc/sql/functions/billing_plan_version_default.sql.
CREATE TRIGGER subscriptions_plan_version BEFORE INSERT ON subscriptions
  FOR EACH ROW WHEN (NEW.plan_version IS NULL) EXECUTE FUNCTION billing_plan_version_default();
CREATE TRIGGER orders_plan_version BEFORE INSERT ON orders
  FOR EACH ROW WHEN (NEW.plan_version IS NULL) EXECUTE FUNCTION billing_plan_version_default();
-- An order's amount is its version's price, in its currency. Orders from
-- before the catalogue may have been charged a price an operator changed by
-- hand since (version 1 records today's): the constraint holds for every
-- new order, and is validated over the old ones when they all agree.
ALTER TABLE orders ADD CONSTRAINT orders_price_of_version
  FOREIGN KEY (plan_id, plan_version, amount_minor, currency)
  REFERENCES plan_versions (plan_id, version, price_minor, currency) NOT VALID;
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM orders o JOIN plan_versions v ON v.plan_id = o.plan_id AND v.version = o.plan_version
                  WHERE o.amount_minor <> v.price_minor OR o.currency <> v.currency) THEN
    ALTER TABLE orders VALIDATE CONSTRAINT orders_price_of_version;
  END IF;
END $$;
