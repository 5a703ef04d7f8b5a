#!/usr/bin/env bash
# Benchmark the gRPC path against the database itself, in one run:
#   1. pgbench runs the deduction as the naive locked transaction and as the
#      best single statement (tests/bench/*.sql), spread over 10,000
#      subscriptions and hot on one subscription;
#   2. loadgen drives the running stack (deduct, deduct-hot, create-session,
#      verify-payment) with the same concurrency;
#   3. pgbench on the service's own statement (billing_charge), to separate
#      the database's share of the cost from the gRPC path's;
#   4. a table of throughput ratios (gRPC tps / pgbench tps).
# Every figure counts only if the database shows the work afterwards (ledger
# rows and balances moved by one per transaction or successful call), and
# every run prints its CPU split in CPU seconds over the measured window:
# PostgreSQL (the backends of the run's database; the whole server, other
# databases included, in parentheses), the service stack and the load
# generator (pgbench or loadgen; tests/bench/cpu.py, loadgen --cpu). loadgen's deduct scenarios also
# sweep concurrency (C and 64: p50/p99/p999 and errors per level).
# Runs against a stack of its own, never the one you use by hand: databases
# payments_bench_checkout/_billing (STACK_DB_PREFIX), ports 16051-16053, env
# file target/stack/bench.env; started (databases kept between runs, so the
# planner has statistics, as in production) unless that file points
# at a live one. The seeded benchmark subscriptions therefore never show up
# in `reconcile` on your stack. pgbench's scratch database is
# payments_bench_pgbench on the same server.
#
# Usage: bash tests/bench/compare.sh [concurrency=8] [seconds=15] [sweep=64]
set -euo pipefail
cd "$(dirname "$0")/../.."
C=${1:-8}
T=${2:-15}
SWEEP=${3:-64}
OUT=target/bench
mkdir -p "$OUT"

cargo build --release --quiet --bin stack --bin loadgen

ENV_FILE=target/stack/bench.env
stack_up() { [ -f "$ENV_FILE" ] && ./target/release/loadgen --help >/dev/null 2>&1 \
  && (. "$ENV_FILE"; pg_isready -q -d "$BILLING_DATABASE_URL" && timeout 1 bash -c "</dev/tcp/${BILLING_ADDR%:*}/${BILLING_ADDR##*:}" 2>/dev/null); }
STACK_PID=""
# Set before the start-up wait, so a stack that fails to come up is stopped too.
trap '[ -n "$STACK_PID" ] && kill -INT $STACK_PID 2>/dev/null; wait 2>/dev/null || true' EXIT
if ! stack_up; then
  rm -f "$ENV_FILE"
  echo "starting the benchmark stack (payments_bench_*, ports 16051-16053)..."
  STACK_DB_PREFIX=payments_bench STACK_ENV_FILE="$ENV_FILE" CHECKOUT_LISTEN_ADDR=127.0.0.1:16051 \
    BILLING_LISTEN_ADDR=127.0.0.1:16052 BILLING_HTTP_ADDR=127.0.0.1:16053 \
    ./target/release/stack >"$OUT/stack.log" 2>&1 &
  STACK_PID=$!
  # Stop waiting as soon as the stack has exited (a refusal, a port in use).
  for _ in $(seq 1 120); do [ -f "$ENV_FILE" ] && break; kill -0 "$STACK_PID" 2>/dev/null || break; sleep 0.5; done
  [ -f "$ENV_FILE" ] || { echo "stack did not start; see $OUT/stack.log"; exit 1; }
fi
set -a; . "$ENV_FILE"; set +a

# "cpu postgres_db=S postgres_all=S cmd=S" (tests/bench/cpu.py) as a sentence.
cpu_split() { awk '/^cpu / {split($2, d, "="); split($3, a, "="); split($4, c, "="); printf "postgres %s s (whole server %s s), pgbench %s s", d[2], a[2], c[2]}' <<<"$1"; }
PG_DATA=$(psql -tA "$BILLING_DATABASE_URL" -c "SHOW data_directory" 2>/dev/null || true)
PG_PID=$( (head -1 "$PG_DATA/postmaster.pid" 2>/dev/null) || pgrep -o -x postgres || true)
SVC_PID=${STACK_PROCESS_ID:-}
BILLING_DB=${BILLING_DATABASE_URL##*/}
BILLING_DB=${BILLING_DB%%\?*}
[ -n "$PG_PID" ] && [ -n "$SVC_PID" ] || { echo "compare.sh: cannot find the PostgreSQL ($PG_PID) or stack ($SVC_PID) process" >&2; exit 1; }

# pgbench against a scratch database on the same server. A figure counts
# only if bench_ledger grew by one row and bench_subs lost one credit per
# transaction pgbench reports.
ADMIN_URL="${BILLING_DATABASE_URL%/*}/postgres"
BENCH_DB=payments_bench_pgbench
BENCH_URL="${BILLING_DATABASE_URL%/*}/$BENCH_DB"
psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $BENCH_DB" -c "CREATE DATABASE $BENCH_DB" >/dev/null
psql -q "$BENCH_URL" -f tests/bench/schema.sql >/dev/null 2>&1
bench_work() { psql -tA "$BENCH_URL" -c "SELECT (SELECT count(*) FROM bench_ledger) || ' ' || (SELECT sum(credits) FROM bench_subs)"; }
declare -A PG CPU
for s in naive single naive_hot single_hot; do
  read -r l0 c0 <<<"$(bench_work)"
  out=$(python3 tests/bench/cpu.py run "$PG_PID" "$BENCH_DB" -- pgbench -n -M prepared -c "$C" -j 2 -T "$T" -f "tests/bench/$s.sql" "$BENCH_URL" 2>&1)
  read -r l1 c1 <<<"$(bench_work)"
  PG[$s]=$(awk '/^tps/ {print $3}' <<<"$out")
  done_tx=$(awk -F': ' '/number of transactions actually processed/ {split($2, a, "/"); print a[1]}' <<<"$out")
  if [ -z "$done_tx" ] || [ "$done_tx" -eq 0 ] || [ $((l1 - l0)) -ne "$done_tx" ] || [ $((c0 - c1)) -ne "$done_tx" ]; then
    echo "compare.sh: pgbench $s reported ${done_tx:-no} transactions, but bench_ledger grew by $((l1 - l0)) rows and balances by $((c0 - c1)) credits: not measured" >&2
    exit 1
  fi
  CPU[$s]=$(cpu_split "$out")
  echo "pgbench $s: ${PG[$s]} tps (checked: $done_tx ledger rows and credits); CPU ${CPU[$s]}"
done

# loadgen checks the work itself (deduct: a deductions row, a ledger row and a
# credit per successful call; verify-payment: no duplicate subscriptions) and
# fails the run otherwise; each level's CPU split covers its measured window.
declare -A LG
for s in deduct deduct-hot create-session verify-payment; do
  levels=$C
  case $s in deduct|deduct-hot) [ "$SWEEP" != "$C" ] && levels="$C,$SWEEP" ;; esac
  ./target/release/loadgen --env "$ENV_FILE" --scenario $s --concurrency "$levels" --duration "$T" --json \
    --cpu "postgres=$PG_PID:$BILLING_DB,server=$PG_PID,stack=$SVC_PID" >"$OUT/$s.json" 2>"$OUT/$s.log" \
    || { echo "compare.sh: loadgen $s failed (see $OUT/$s.log):" >&2; tail -3 "$OUT/$s.log" >&2; exit 1; }
  while read -r level line; do
    [ "$level" = "$C" ] && LG[$s]=$line
    echo "loadgen $s c=$level: $line"
  done < <(python3 - "$OUT/$s.json" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    cpu = r.get('cpu_s', {})
    print(r['concurrency'], f"{r['throughput_rps']:.1f} {r['p50_ms']:.2f} {r['p99_ms']:.2f} {r['p999_ms']:.2f} {sum(r['errors'].values())}",
          f"  (tps p50 p99 p999 errors)  CPU postgres {cpu.get('postgres', 0):.1f} s (whole server {cpu.get('server', 0):.1f} s), stack {cpu.get('stack', 0):.1f} s, loadgen {cpu.get('loadgen', 0):.1f} s",
          f" errors {r['errors']}" if r['errors'] else '')
PY
)
done

# The service's own deduction statement, straight from pgbench (no gRPC):
# how much of the gap is the database work itself. It runs on its own
# sessions (one per subscription, credits that cannot run out), and the
# figure counts only if the database shows the work afterwards: one
# deductions row and one ledger row per transaction pgbench reports.
psql -q -v ON_ERROR_STOP=1 "$BILLING_DATABASE_URL" \
  -c "INSERT INTO subscriptions (id, user_id, plan_id, status, anchor_at, period_start, period_end, credits_granted, credits_remaining)
      SELECT gen_random_uuid(), 'bench-pg-' || g, 'pro-monthly', 'ACTIVE', now(), now(), now() + interval '1 month', 1000000000, 1000000000
        FROM generate_series(1, 10000) g ON CONFLICT DO NOTHING" \
  -c "INSERT INTO usage_sessions (id, user_id, subscription_id, kind, status, started_at, deduction_interval_seconds)
      SELECT gen_random_uuid(), user_id, id, 'TEXT', 'ACTIVE', now(), 600 FROM subscriptions
       WHERE user_id LIKE 'bench-pg-%' AND status = 'ACTIVE'" \
  -c "DROP TABLE IF EXISTS bench_ids" \
  -c "CREATE TABLE bench_ids AS SELECT row_number() OVER () AS n, id FROM usage_sessions
       WHERE user_id LIKE 'bench-pg-%' AND status = 'ACTIVE' LIMIT 10000" \
  -c "CREATE UNIQUE INDEX ON bench_ids (n)" >/dev/null
ids=$(psql -tA "$BILLING_DATABASE_URL" -c "SELECT count(*) FROM bench_ids")
[ "$ids" -eq 10000 ] || { echo "compare.sh: expected 10000 bench sessions, found $ids" >&2; exit 1; }
work() { psql -tA "$BILLING_DATABASE_URL" -c "SELECT (SELECT count(*) FROM deductions WHERE deduction_id LIKE 'pgbench-%') || ' ' || (SELECT count(*) FROM ledger l JOIN bench_ids b ON b.id = l.usage_session_id)"; }
read -r ded0 led0 <<<"$(work)"
pgb=$(python3 tests/bench/cpu.py run "$PG_PID" "$BILLING_DB" -- pgbench -n -M prepared -c "$C" -j 2 -T "$T" -f tests/bench/billing_charge.sql "$BILLING_DATABASE_URL" 2>&1)
CPU[billing_charge]=$(cpu_split "$pgb")
PG[billing_charge]=$(awk '/^tps/ {print $3}' <<<"$pgb")
done_tx=$(awk -F': ' '/number of transactions actually processed/ {split($2, a, "/"); print a[1]}' <<<"$pgb")
read -r ded1 led1 <<<"$(work)"
psql -q "$BILLING_DATABASE_URL" -c "UPDATE usage_sessions SET status = 'ENDED', ended_at = now(), final_units_charged = 0
  WHERE id IN (SELECT id FROM bench_ids)" -c "DROP TABLE bench_ids" >/dev/null
if [ -z "$done_tx" ] || [ "$done_tx" -eq 0 ] || [ $((ded1 - ded0)) -ne "$done_tx" ] || [ $((led1 - led0)) -ne "$done_tx" ]; then
  echo "compare.sh: pgbench billing_charge reported ${done_tx:-no} transactions, but the database shows $((ded1 - ded0)) deductions and $((led1 - led0)) ledger rows: not measured" >&2
  exit 1
fi
echo "pgbench billing_charge: ${PG[billing_charge]} tps (checked: $done_tx deductions and ledger rows written); CPU ${CPU[billing_charge]}"

ratio() { python3 -c "print(f'{float($1)/float($2):.2f}x')"; }
read -r d_tps d_p50 d_p99 d_p999 d_err _ <<<"${LG[deduct]}"
read -r h_tps h_p50 h_p99 h_p999 h_err _ <<<"${LG[deduct-hot]}"
echo
echo "concurrency $C, $T s per run, same machine, same PostgreSQL"
printf '%-34s %10s %10s %10s %8s\n' "gRPC scenario vs pgbench" "gRPC tps" "pg tps" "ratio" "p99 ms"
printf '%-34s %10s %10s %10s %8s\n' "deduct / naive transaction" "$d_tps" "${PG[naive]}" "$(ratio "$d_tps" "${PG[naive]}")" "$d_p99"
printf '%-34s %10s %10s %10s %8s\n' "deduct / single statement" "$d_tps" "${PG[single]}" "$(ratio "$d_tps" "${PG[single]}")" "$d_p99"
printf '%-34s %10s %10s %10s %8s\n' "deduct / billing_charge via pgbench" "$d_tps" "${PG[billing_charge]}" "$(ratio "$d_tps" "${PG[billing_charge]}")" "$d_p99"
printf '%-34s %10s %10s %10s %8s\n' "deduct-hot / naive hot" "$h_tps" "${PG[naive_hot]}" "$(ratio "$h_tps" "${PG[naive_hot]}")" "$h_p99"
printf '%-34s %10s %10s %10s %8s\n' "deduct-hot / single statement hot" "$h_tps" "${PG[single_hot]}" "$(ratio "$h_tps" "${PG[single_hot]}")" "$h_p99"
echo "errors: deduct $d_err, deduct-hot $h_err; raw JSON in $OUT/"
echo "create-session: ${LG[create-session]%%(*}  verify-payment: ${LG[verify-payment]%%(*}  (tps p50 p99 p999 errors)"
