-- SQL functions are not reverted with migrations: the runner applies
-- billing-svc/sql/functions/ after the migrations (docs/design.md, SQL
-- functions). Nothing else to undo.
SELECT 1;
