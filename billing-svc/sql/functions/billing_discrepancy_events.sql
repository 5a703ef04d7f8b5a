-- Trigger function of payment_discrepancies (docs/design.md, "Events"):
-- recorded, then refunded, acknowledged or open again. The user is the
-- order's (none for a payment of an order this system did not create). A
-- deferred trigger: the payload is the row as the transaction commits it.
-- Created before the migrations (see billing_order_events).
CREATE OR REPLACE FUNCTION billing_discrepancy_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  ty text := CASE
               WHEN TG_OP = 'INSERT' THEN 'DISCREPANCY_RECORDED'
               WHEN NEW.status IS NOT DISTINCT FROM OLD.status THEN NULL
               WHEN NEW.status = 'OPEN' THEN 'DISCREPANCY_REOPENED'
               WHEN NEW.status = 'REFUNDED' THEN 'DISCREPANCY_REFUNDED'
               WHEN NEW.status = 'ACKNOWLEDGED' THEN 'DISCREPANCY_ACKNOWLEDGED'
             END;
BEGIN
  IF ty IS NOT NULL THEN
    PERFORM events_emit(ty, 'discrepancy', NEW.id::text, (SELECT o.user_id FROM orders o WHERE o.id = NEW.order_id),
                        coalesce((SELECT to_jsonb(d) FROM payment_discrepancies d WHERE d.id = NEW.id), to_jsonb(NEW)));
  END IF;
  RETURN NULL;
END $$;
