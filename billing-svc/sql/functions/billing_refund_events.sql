-- Trigger function of refunds: REFUND_PENDING / _PROCESSED / _FAILED as the
-- status moves (docs/design.md, "Events"). The user is the order's. A
-- deferred trigger: the payload is the row as the transaction commits it.
-- Created before the migrations (see billing_order_events).
CREATE OR REPLACE FUNCTION billing_refund_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  ty text := CASE NEW.status WHEN 'PENDING' THEN 'REFUND_PENDING' WHEN 'PROCESSED' THEN 'REFUND_PROCESSED'
                             WHEN 'FAILED' THEN 'REFUND_FAILED' END;
BEGIN
  IF ty IS NOT NULL AND (TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status) THEN
    PERFORM events_emit(ty, 'refund', NEW.id, (SELECT o.user_id FROM orders o WHERE o.id = NEW.order_id),
                        coalesce((SELECT to_jsonb(r) FROM refunds r WHERE r.id = NEW.id), to_jsonb(NEW)));
  END IF;
  RETURN NULL;
END $$;
