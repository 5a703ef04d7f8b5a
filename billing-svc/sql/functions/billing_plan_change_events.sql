-- Trigger function of plan_changes: a subscription's pending plan change
-- as events of the subscription (docs/design.md, "Events", "Plan
-- changes"). A deferred trigger: it runs at commit, so the payload is the
-- subscription as the transaction commits it, with the change (and the
-- order paying an upgrade, inserted after the change in the same
-- transaction) under "pending_change". An OPEN change is
-- SUBSCRIPTION_CHANGE_SCHEDULED; one withdrawn, replaced or lapsed is
-- SUBSCRIPTION_CHANGE_CANCELLED (without pending_change). An APPLIED one
-- says nothing here: the subscription's own SUBSCRIPTION_PLAN_CHANGED does.
-- Created before the migrations (see billing_order_events).
CREATE OR REPLACE FUNCTION billing_plan_change_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  sub jsonb;
  uid text;
  change jsonb;
BEGIN
  SELECT to_jsonb(s), s.user_id INTO sub, uid FROM subscriptions s WHERE s.id = NEW.subscription_id;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'INSERT' THEN
    SELECT to_jsonb(c) || jsonb_build_object('order_id', (SELECT o.id FROM orders o WHERE o.plan_change_id = c.id))
      INTO change FROM plan_changes c WHERE c.id = NEW.id;
    -- Replaced or applied within its own transaction: nothing pending.
    IF change IS NOT NULL AND change->>'status' = 'OPEN' THEN
      PERFORM events_emit('SUBSCRIPTION_CHANGE_SCHEDULED', 'subscription', NEW.subscription_id::text, uid,
                          sub || jsonb_build_object('pending_change', change));
    END IF;
  ELSIF NEW.status = 'CANCELLED' AND OLD.status = 'OPEN' THEN
    PERFORM events_emit('SUBSCRIPTION_CHANGE_CANCELLED', 'subscription', NEW.subscription_id::text, uid, sub);
  END IF;
  RETURN NULL;
END $$;
