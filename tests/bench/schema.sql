-- pgbench baseline schema: the same shape as billing's deduction path
-- (usage session -> subscription -> ledger with UNIQUE(session, unit_index)).
DROP TABLE IF EXISTS bench_ledger, bench_sessions, bench_subs;
CREATE TABLE bench_subs (id bigint PRIMARY KEY, credits bigint NOT NULL CHECK (credits >= 0));
CREATE TABLE bench_sessions (id bigint PRIMARY KEY, sub_id bigint NOT NULL REFERENCES bench_subs(id), units bigint NOT NULL DEFAULT 0);
CREATE TABLE bench_ledger (id bigserial PRIMARY KEY, session_id bigint NOT NULL, unit_index bigint NOT NULL, credits bigint NOT NULL,
                           UNIQUE (session_id, unit_index));
INSERT INTO bench_subs SELECT g, 1000000000 FROM generate_series(1, 10000) g;
-- sessions 1..10000 each on their own subscription; 10001..10100 all on subscription 1 (hot)
INSERT INTO bench_sessions SELECT g, g, 0 FROM generate_series(1, 10000) g;
INSERT INTO bench_sessions SELECT 10000 + g, 1, 0 FROM generate_series(1, 100) g;
VACUUM ANALYZE;
