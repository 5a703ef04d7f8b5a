-- The best single-statement form: one CTE, one round trip, one transaction.
\set sid random(10001, 10100)
WITH s AS (UPDATE bench_sessions SET units = units + 1 WHERE id = :sid RETURNING id, sub_id, units - 1 AS unit_index),
     b AS (UPDATE bench_subs SET credits = credits - 1 WHERE id = (SELECT sub_id FROM s) AND credits > 0 RETURNING id)
INSERT INTO bench_ledger (session_id, unit_index, credits) SELECT id, unit_index, 1 FROM s WHERE EXISTS (SELECT 1 FROM b);
