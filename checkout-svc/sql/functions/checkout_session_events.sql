-- Trigger function of checkout_sessions: the session's events
-- (docs/design.md, "Events"). Created before the migrations (a trigger
-- function reads no table when it is created), so the migration's CREATE
-- TRIGGER can name it.
CREATE OR REPLACE FUNCTION checkout_session_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM events_emit(CASE WHEN NEW.recovered_from IS NOT NULL THEN 'SESSION_RECOVERED' ELSE 'SESSION_CREATED' END,
                        'checkout_session', NEW.id::text, NEW.user_id, to_jsonb(NEW));
  ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
    PERFORM events_emit('SESSION_' || NEW.status, 'checkout_session', NEW.id::text, NEW.user_id, to_jsonb(NEW));
  END IF;
  RETURN NULL;
END $$;
