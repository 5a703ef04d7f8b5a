-- Billing-period rollover and the one deduction path, as server-side
-- functions: billing_roll_period and billing_charge. Their definitions live
-- in billing-svc/sql/functions/, applied by the migration runner after the
-- migrations (docs/design.md, SQL functions); no migration uses them while
-- it runs.
SELECT 1;
