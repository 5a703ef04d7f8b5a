-- One caller at a time asks the gateway about one refund (docs/design.md,
-- Invariants 22): `asking_until` is the claim of the caller doing so, taken
-- under the order's (or discrepancy's) row lock and released when its answer
-- is recorded; an expired claim (a crashed caller) is taken over.
-- `attempts` counts the claims: a PENDING row asked before without a gateway
-- id has an unknown outcome and is looked up at the gateway before it is
-- asked again or recorded FAILED.
ALTER TABLE refunds
  ADD COLUMN asking_until timestamptz,
  ADD COLUMN attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0);
-- Every existing row was asked (or may have been) once.
UPDATE refunds SET attempts = 1;

-- A discrepancy is REFUNDED only when PROCESSED refunds of its payment cover
-- its amount (Invariants 23). Rows closed on a pending answer before this
-- rule are OPEN again, audited, so reconciliation reports them until the
-- money has moved.
WITH reopened AS (
  UPDATE payment_discrepancies d
     SET status = 'OPEN', resolved_at = NULL,
         note = coalesce(d.note || '; ', '') || 'reopened: its refunds were not processed for its amount'
   WHERE d.status = 'REFUNDED'
     AND coalesce(d.amount_minor, (SELECT o.amount_minor FROM orders o WHERE o.id = d.order_id), 0)
         > coalesce((SELECT sum(r.amount_minor) FROM refunds r
                      WHERE r.payment_id = d.payment_id AND r.status = 'PROCESSED'), 0)
  RETURNING d.id)
INSERT INTO reconcile_audit (kind, subject_id, action, note, created_at)
SELECT 'PAYMENT_DISCREPANCY', id::text, 'reopened', 'marked REFUNDED before its refunds were processed', now()
  FROM reopened;
