-- The naive locked transaction: 2x SELECT ... FOR UPDATE, 2 updates, ledger insert.
\set sid random(1, 10000)
BEGIN;
SELECT sub_id, units FROM bench_sessions WHERE id = :sid FOR UPDATE \gset
SELECT credits FROM bench_subs WHERE id = :sub_id FOR UPDATE;
UPDATE bench_subs SET credits = credits - 1 WHERE id = :sub_id;
UPDATE bench_sessions SET units = units + 1 WHERE id = :sid;
INSERT INTO bench_ledger (session_id, unit_index, credits) VALUES (:sid, :units, 1);
COMMIT;
