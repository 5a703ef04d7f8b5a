-- Trigger function of subscriptions: lifecycle and credit-threshold events
-- (docs/design.md, "Events"). The trigger's WHEN clause lets through only the
-- updates that make one, so a Deduct pays nothing for it until a threshold
-- is crossed. Created before the migrations (see billing_order_events).
CREATE OR REPLACE FUNCTION billing_subscription_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  p  jsonb := to_jsonb(NEW);
  id text := NEW.id::text;
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM events_emit(CASE NEW.status WHEN 'ACTIVE' THEN 'SUBSCRIPTION_ACTIVATED'
                                        ELSE 'SUBSCRIPTION_' || NEW.status END,
                        'subscription', id, NEW.user_id, p);
    RETURN NULL;
  END IF;
  IF NEW.status IS DISTINCT FROM OLD.status THEN
    PERFORM events_emit(CASE
                          WHEN NEW.status = 'ACTIVE' AND NEW.period_start IS DISTINCT FROM OLD.period_start
                            THEN 'SUBSCRIPTION_RENEWED'
                          WHEN NEW.status = 'ACTIVE' THEN 'SUBSCRIPTION_ACTIVATED'
                          ELSE 'SUBSCRIPTION_' || NEW.status
                        END,
                        'subscription', id, NEW.user_id, p);
  ELSIF NEW.period_start IS DISTINCT FROM OLD.period_start THEN
    PERFORM events_emit('SUBSCRIPTION_RENEWED', 'subscription', id, NEW.user_id, p);
  END IF;
  IF NEW.cancel_at_period_end AND NOT OLD.cancel_at_period_end AND NEW.status IN ('ACTIVE', 'PAST_DUE') THEN
    PERFORM events_emit('SUBSCRIPTION_CANCEL_SCHEDULED', 'subscription', id, NEW.user_id, p);
  END IF;
  -- Credits fell within one period: at most one event per threshold.
  IF NEW.period_start = OLD.period_start AND NEW.credits_granted > 0
     AND NEW.credits_remaining < OLD.credits_remaining THEN
    IF OLD.credits_remaining * 5 > NEW.credits_granted AND NEW.credits_remaining * 5 <= NEW.credits_granted THEN
      PERFORM events_emit('CREDITS_LOW', 'subscription', id, NEW.user_id, p);
    END IF;
    IF OLD.credits_remaining > 0 AND NEW.credits_remaining <= 0 THEN
      PERFORM events_emit('CREDITS_EXHAUSTED', 'subscription', id, NEW.user_id, p);
    END IF;
  END IF;
  RETURN NULL;
END $$;
