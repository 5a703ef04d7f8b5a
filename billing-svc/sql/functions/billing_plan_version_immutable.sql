-- Trigger function of plan_versions: a price version is never changed or
-- removed (docs/design.md, "Catalogue"). Subscriptions and orders are
-- pinned to it, and what a customer was charged must keep meaning what it
-- meant; a change of terms is a new version. Created before the migrations
-- (a trigger function reads no table when it is created), so the
-- migration's CREATE TRIGGER can name it.
CREATE OR REPLACE FUNCTION billing_plan_version_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    RAISE EXCEPTION 'plan versions are immutable: TRUNCATE of plan_versions refused';
  END IF;
  RAISE EXCEPTION 'plan versions are immutable: % of version % of plan % refused (create a new version instead)',
    TG_OP, OLD.version, OLD.plan_id;
END $$;
