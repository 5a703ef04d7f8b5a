-- Trigger function of subscriptions: a subscription that stops being live
-- (CANCELLED, EXPIRED or REPLACED, by whichever path) takes its open plan
-- change with it, CANCELLED (docs/design.md, "Plan changes"). A payment of
-- an upgrade's order after that is refused as superseded by the capture
-- path, and recorded to be refunded. Runs in the statement that ends the
-- subscription, which holds its row lock (plan_changes rows are locked
-- after the subscription's, as everywhere). Created before the migrations
-- (see billing_order_events).
CREATE OR REPLACE FUNCTION billing_subscription_ended_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE plan_changes SET status = 'CANCELLED', updated_at = NEW.updated_at
   WHERE subscription_id = NEW.id AND status = 'OPEN';
  RETURN NULL;
END $$;
