-- Trigger function of the tables with an updated_at column. The bootstrap
-- copy in the first migration exists only because CREATE TRIGGER there needs
-- it; this file is the live definition (docs/design.md, SQL functions).
CREATE OR REPLACE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Keep an explicitly set updated_at (the injected clock); default to now().
  IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
    NEW.updated_at := now();
  END IF;
  RETURN NEW;
END $$;
