DROP FUNCTION billing_period_at;
ALTER TABLE reconcile_audit DROP COLUMN note;
ALTER TABLE orders DROP COLUMN seq;
DROP INDEX webhook_events_rejected_idx;
ALTER TABLE webhook_events DROP COLUMN reviewed_note;
DROP TABLE payment_discrepancies;
