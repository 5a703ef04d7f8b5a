-- Trigger function of usage_sessions: started and ended (docs/design.md,
-- "Events"); the payload carries the subscription's credits as the RPCs
-- show them. Created before the migrations (see billing_order_events).
CREATE OR REPLACE FUNCTION billing_usage_session_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
    PERFORM events_emit(CASE NEW.status WHEN 'ACTIVE' THEN 'USAGE_SESSION_STARTED' ELSE 'USAGE_SESSION_ENDED' END,
                        'usage_session', NEW.id::text, NEW.user_id,
                        to_jsonb(NEW) || jsonb_build_object('credits_remaining',
                          (SELECT s.credits_remaining FROM subscriptions s WHERE s.id = NEW.subscription_id)));
  END IF;
  RETURN NULL;
END $$;
