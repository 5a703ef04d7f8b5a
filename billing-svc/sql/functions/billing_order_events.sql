-- Trigger function of orders: the order's events (docs/design.md, "Events").
-- A deferred trigger: it runs at commit, and the payload is the row as the
-- transaction commits it. Created before the migrations (a trigger function
-- reads no table when it is created), so the migration's CREATE TRIGGER can
-- name it.
CREATE OR REPLACE FUNCTION billing_order_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  p jsonb := coalesce((SELECT to_jsonb(o) FROM orders o WHERE o.id = NEW.id), to_jsonb(NEW));
  was_status text := CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END;
  was_payment text := CASE WHEN TG_OP = 'UPDATE' THEN OLD.payment_id END;
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM events_emit('ORDER_CREATED', 'order', NEW.id, NEW.user_id, p);
  END IF;
  IF NEW.status IS DISTINCT FROM was_status THEN
    IF NEW.status = 'PAID' THEN
      PERFORM events_emit('ORDER_PAID', 'order', NEW.id, NEW.user_id, p);
    ELSIF NEW.status = 'CANCELLED' THEN
      PERFORM events_emit('ORDER_CANCELLED', 'order', NEW.id, NEW.user_id, p);
    END IF;
  END IF;
  IF NEW.status = 'PAID' AND NEW.payment_id IS NOT NULL AND NEW.payment_id IS DISTINCT FROM was_payment THEN
    PERFORM events_emit('PAYMENT_CAPTURED', 'payment', NEW.payment_id, NEW.user_id, p);
  END IF;
  RETURN NULL;
END $$;
