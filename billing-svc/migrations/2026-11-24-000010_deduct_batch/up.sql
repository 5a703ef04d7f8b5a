-- Group commit of deductions (docs/design.md, Deductions and Performance):
-- billing_charge_many became the one code path that changes a balance, run
-- by billing_charge (one item) and billing_charge_batch (coalesced Deduct
-- calls). The three are defined by billing-svc/sql/functions/, applied by
-- the migration runner after the migrations (docs/design.md, SQL functions).
SELECT 1;
