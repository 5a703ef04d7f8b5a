-- Trigger function of subscriptions and orders: a row inserted without a
-- plan_version is pinned to its plan's current version, the version on sale
-- now (docs/design.md, "Catalogue"): the default a column DEFAULT cannot
-- express. The service always names the version (a renewal its
-- subscription's, a purchase the one it priced the order at); this keeps
-- hand-written inserts (an operator's SQL, test seeds) meaning what they
-- meant before versions existed. Created before the migrations (a trigger
-- function reads no table when it is created).
CREATE OR REPLACE FUNCTION billing_plan_version_default() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.plan_version IS NULL THEN
    SELECT p.current_version INTO NEW.plan_version FROM plans p WHERE p.id = NEW.plan_id;
  END IF;
  RETURN NEW;
END $$;
