-- Trigger function of the tables with an updated_at column, in both
-- services' databases: this file is its one definition. Each service's first
-- migration creates only a placeholder of the same signature, because its
-- CREATE TRIGGER needs the function to exist; the migration runner replaces
-- it with this right after (docs/design.md, SQL functions).
CREATE OR REPLACE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Keep an explicitly set updated_at (the injected clock); default to now().
  IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
    NEW.updated_at := now();
  END IF;
  RETURN NEW;
END $$;
