-- billing_charge_many: a coalesced Deduct never waits for a subscription row
-- someone else holds, and its statements never scan a table (docs/design.md,
-- Performance and Invariants 18). Defined by
-- billing-svc/sql/functions/billing_charge_many.sql, applied by the migration
-- runner after the migrations (docs/design.md, SQL functions).
SELECT 1;
