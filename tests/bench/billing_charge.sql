-- The service's own statement: billing_charge (EXPLICIT) on random usage
-- sessions prepared by loadgen's deduct run (table bench_ids, see compare.sh).
\set n random(1, 10000)
SELECT billing_charge((SELECT id FROM bench_ids WHERE n = :n), 'EXPLICIT', 1, 'pgbench-' || :client_id || '-' || random()::text, now());
