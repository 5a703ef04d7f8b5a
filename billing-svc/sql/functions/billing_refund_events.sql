-- Trigger function of refunds: REFUND_PENDING / _PROCESSED / _FAILED as the
-- status moves (docs/design.md, "Events"). The user is the order's.
-- Created before the migrations (see billing_order_events).
CREATE OR REPLACE FUNCTION billing_refund_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
    PERFORM events_emit('REFUND_' || NEW.status, 'refund', NEW.id,
                        (SELECT o.user_id FROM orders o WHERE o.id = NEW.order_id), to_jsonb(NEW));
  END IF;
  RETURN NULL;
END $$;
