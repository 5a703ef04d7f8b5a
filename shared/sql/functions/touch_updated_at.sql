-- Trigger function of the tables with an updated_at column, in both
-- services' databases: this file is its one definition. The migration
-- runner creates it before pending migrations run, because the first
-- migrations' CREATE TRIGGER names it (docs/design.md, SQL functions).
CREATE OR REPLACE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Keep an explicitly set updated_at (the injected clock); default to now().
  IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
    NEW.updated_at := now();
  END IF;
  RETURN NEW;
END $$;
