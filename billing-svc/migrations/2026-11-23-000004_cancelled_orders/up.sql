-- Orders can be withdrawn before payment (checkout's cleanup cancels the
-- order of a session before deleting it); a payment for a cancelled order is
-- a discrepancy, never a subscription.
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check CHECK (status IN ('CREATED', 'PAID', 'CANCELLED'));
