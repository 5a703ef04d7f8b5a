-- Trigger function of subscriptions: lifecycle and credit-threshold events
-- (docs/design.md, "Events"). A deferred trigger: it runs at commit, and the
-- payload is the row as the transaction commits it. The trigger's WHEN
-- clause lets through only the updates that make one, so a Deduct queues
-- nothing until a threshold is crossed. Created before the migrations (see
-- billing_order_events).
CREATE OR REPLACE FUNCTION billing_subscription_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  cur record;
  id  text := NEW.id::text;
  ty  text;
  credits_done text := 'billing_events.credits_' || replace(NEW.id::text, '-', '');
BEGIN
  SELECT * INTO cur FROM subscriptions s WHERE s.id = NEW.id;
  IF NOT FOUND THEN
    cur := NEW;
  END IF;
  IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
    ty := CASE
            WHEN NEW.status = 'ACTIVE' AND TG_OP = 'UPDATE' AND NEW.period_start IS DISTINCT FROM OLD.period_start
              THEN 'SUBSCRIPTION_RENEWED'
            WHEN NEW.status = 'ACTIVE' THEN 'SUBSCRIPTION_ACTIVATED'
            WHEN NEW.status = 'PAST_DUE' THEN 'SUBSCRIPTION_PAST_DUE'
            WHEN NEW.status = 'EXPIRED' THEN 'SUBSCRIPTION_EXPIRED'
            WHEN NEW.status = 'CANCELLED' THEN 'SUBSCRIPTION_CANCELLED'
            WHEN NEW.status = 'REPLACED' THEN 'SUBSCRIPTION_REPLACED'
          END;
  ELSIF NEW.period_start IS DISTINCT FROM OLD.period_start THEN
    ty := 'SUBSCRIPTION_RENEWED';
  END IF;
  IF ty IS NOT NULL THEN
    PERFORM events_emit(ty, 'subscription', id, NEW.user_id, to_jsonb(cur));
  END IF;
  IF TG_OP = 'INSERT' THEN
    RETURN NULL;
  END IF;
  -- An operator's migration scheduled the version of the next period.
  IF NEW.next_plan_version IS NOT NULL AND NEW.next_plan_version IS DISTINCT FROM OLD.next_plan_version
     AND NEW.period_start = OLD.period_start AND cur.status IN ('ACTIVE', 'PAST_DUE') THEN
    PERFORM events_emit('SUBSCRIPTION_CHANGE_SCHEDULED', 'subscription', id, NEW.user_id, to_jsonb(cur));
  END IF;
  IF NEW.plan_id IS DISTINCT FROM OLD.plan_id AND cur.status IN ('ACTIVE', 'PAST_DUE') THEN
    PERFORM events_emit('SUBSCRIPTION_PLAN_CHANGED', 'subscription', id, NEW.user_id, to_jsonb(cur));
  END IF;
  IF NEW.cancel_at_period_end AND NOT OLD.cancel_at_period_end AND NEW.status IN ('ACTIVE', 'PAST_DUE') THEN
    PERFORM events_emit('SUBSCRIPTION_CANCEL_SCHEDULED', 'subscription', id, NEW.user_id, to_jsonb(cur));
  END IF;
  -- Credits spent within one period: measured from before the
  -- transaction's first such change to what it commits, once per
  -- transaction, and only while the subscription stays ACTIVE (an upgrade,
  -- a cancellation or a period that ends unpaid zeroes the balance of one
  -- that ends or stops: its own event says so).
  IF NEW.credits_remaining < OLD.credits_remaining AND NEW.period_start = OLD.period_start
     AND cur.period_start = OLD.period_start AND cur.status = 'ACTIVE' AND cur.credits_granted > 0
     AND coalesce(current_setting(credits_done, true), '') = '' THEN
    PERFORM set_config(credits_done, 'done', true);
    IF OLD.credits_remaining * 5 > cur.credits_granted AND cur.credits_remaining * 5 <= cur.credits_granted THEN
      PERFORM events_emit('CREDITS_LOW', 'subscription', id, NEW.user_id, to_jsonb(cur));
    END IF;
    IF OLD.credits_remaining > 0 AND cur.credits_remaining <= 0 THEN
      PERFORM events_emit('CREDITS_EXHAUSTED', 'subscription', id, NEW.user_id, to_jsonb(cur));
    END IF;
  END IF;
  RETURN NULL;
END $$;
