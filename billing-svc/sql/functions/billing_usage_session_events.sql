-- Trigger function of usage_sessions: started and ended (docs/design.md,
-- "Events"); the payload carries the subscription's credits as the RPCs
-- show them. A deferred trigger: the payload is as the transaction commits
-- it. Created before the migrations (see billing_order_events).
CREATE OR REPLACE FUNCTION billing_usage_session_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  ty text := CASE
               WHEN TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status THEN NULL
               WHEN NEW.status = 'ACTIVE' THEN 'USAGE_SESSION_STARTED'
               WHEN NEW.status = 'ENDED' THEN 'USAGE_SESSION_ENDED'
             END;
BEGIN
  IF ty IS NOT NULL THEN
    PERFORM events_emit(ty, 'usage_session', NEW.id::text, NEW.user_id,
                        coalesce((SELECT to_jsonb(u) FROM usage_sessions u WHERE u.id = NEW.id), to_jsonb(NEW))
                          || jsonb_build_object('credits_remaining',
                               (SELECT s.credits_remaining FROM subscriptions s WHERE s.id = NEW.subscription_id)));
  END IF;
  RETURN NULL;
END $$;
