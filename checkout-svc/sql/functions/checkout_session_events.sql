-- Trigger function of checkout_sessions: the session's events
-- (docs/design.md, "Events"). A deferred trigger: it runs at commit, and the
-- payload is the row as the transaction commits it. Created before the
-- migrations (a trigger function reads no table when it is created), so the
-- migration's CREATE TRIGGER can name it.
CREATE OR REPLACE FUNCTION checkout_session_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  ty text := CASE
               WHEN TG_OP = 'INSERT' AND NEW.recovered_from IS NOT NULL THEN 'SESSION_RECOVERED'
               WHEN TG_OP = 'INSERT' THEN 'SESSION_CREATED'
               WHEN NEW.status IS NOT DISTINCT FROM OLD.status THEN NULL
               WHEN NEW.status = 'COMPLETED' THEN 'SESSION_COMPLETED'
               WHEN NEW.status = 'EXPIRED' THEN 'SESSION_EXPIRED'
               WHEN NEW.status = 'INVALIDATED' THEN 'SESSION_INVALIDATED'
             END;
BEGIN
  IF ty IS NOT NULL THEN
    PERFORM events_emit(ty, 'checkout_session', NEW.id::text, NEW.user_id,
                        coalesce((SELECT to_jsonb(s) FROM checkout_sessions s WHERE s.id = NEW.id), to_jsonb(NEW)));
  END IF;
  RETURN NULL;
END $$;
