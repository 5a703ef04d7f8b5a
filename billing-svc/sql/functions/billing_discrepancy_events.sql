-- Trigger function of payment_discrepancies (docs/design.md, "Events"):
-- recorded, then refunded, acknowledged or open again. The user is the
-- order's (none for a payment of an order this system did not create).
-- Created before the migrations (see billing_order_events).
CREATE OR REPLACE FUNCTION billing_discrepancy_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
    PERFORM events_emit(CASE
                          WHEN TG_OP = 'INSERT' THEN 'DISCREPANCY_RECORDED'
                          WHEN NEW.status = 'OPEN' THEN 'DISCREPANCY_REOPENED'
                          ELSE 'DISCREPANCY_' || NEW.status
                        END,
                        'discrepancy', NEW.id::text,
                        (SELECT o.user_id FROM orders o WHERE o.id = NEW.order_id), to_jsonb(NEW));
  END IF;
  RETURN NULL;
END $$;
