-- billing_charge never charges a REPLACED or CANCELLED subscription: when
-- the session's subscription was replaced, it finds the user's live ACTIVE
-- one even if that one committed while the charge waited for a lock. The
-- function is defined by billing-svc/sql/functions/ (now through
-- billing_charge_many), applied by the migration runner after the
-- migrations (docs/design.md, SQL functions).
SELECT 1;
