#!/usr/bin/env bash
# The failover test (tests/ha/README.md): a three-node Patroni cluster with
# synchronous replication, both services (the `stack` binary, pointed at the
# cluster with a multi-host URL), loadgen's deduct, verify-payment and
# webhook traffic with retries and an ack log, while the primary's
# postmaster is killed with SIGKILL three times (each after the cluster
# healed) and a planned switchover follows. Then tests/ha/check.py looks for
# every acknowledged operation on the new primary and `reconcile` must find
# nothing. Exits non-zero on any violation; everything it started is
# stopped and its temporary directory removed (HA_KEEP=1 keeps it), also on
# failure or Ctrl-C.
#
# Needs (tests/ha/README.md): patroni, etcd-server, etcd-client,
# postgresql-15 from Debian; root (the nodes then run as `postgres`) or
# the `postgres` user itself. Knobs: HA_PROFILE (debug|release, which
# build of the binaries), HA_KILLS (3), HA_DURATION (loadgen's limit in
# seconds, 600; it is stopped after the events),
# HA_DEDUCT_RATE (100/s), HA_PAY_RATE (verify-payment and webhook, 15/s
# each), HA_FREEZE (2: seconds the primary's WAL senders are stopped
# before the last kill), HA_SYNCHRONOUS (true; false is the control
# experiment), HA_PORT_BASE and the other ports of cluster.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
export RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0   # an error is one line in the report
. tests/ha/cluster.sh

KILLS=${HA_KILLS:-3}
PROFILE=${HA_PROFILE:-debug}
DEDUCT_RATE=${HA_DEDUCT_RATE:-100}     # Deducts a second
PAY_RATE=${HA_PAY_RATE:-15}            # VerifyPayments and webhooks a second, each
DURATION=${HA_DURATION:-600}   # loadgen's limit; it is stopped (SIGINT) TAIL s after the last event
TAIL=5
ORDER_SECS=200                 # the payment scenarios' orders last this long at their rate
SETTLE=3                     # seconds of traffic on a healthy cluster before each event
FREEZE=${HA_FREEZE:-2}       # seconds the standbys fall behind before the last kill (0: never)

say() { printf 'ha [%3d s]: %s\n' "$SECONDS" "$*"; }
now_ms() { date +%s%3N; }

for cmd in patroni patronictl etcd etcdctl setpriv "$HA_PG_BIN/postgres" "$HA_PG_BIN/pg_rewind"; do
  command -v "$cmd" >/dev/null || { echo "ha: $cmd not found; see tests/ha/README.md (apt-get install patroni etcd-server etcd-client postgresql-15)" >&2; exit 2; }
done
"$HA_PYTHON" -c 'import psycopg2' || { echo "ha: $HA_PYTHON lacks psycopg2 (apt-get install python3-psycopg2)" >&2; exit 2; }

say "building stack, loadgen and billing-svc ($PROFILE)"
build=(cargo build -q --locked --bin stack --bin loadgen --bin billing-svc)
[ "$PROFILE" = release ] && build+=(--release)
"${build[@]}"
BIN=target/$PROFILE

# Under /tmp (not $TMPDIR, which may be a private directory the `postgres`
# user cannot enter).
WORK=$(mktemp -d "${HA_TMPDIR:-/tmp}/payments-ha.XXXXXX")
chmod 755 "$WORK"
STACK_PID= MONITOR_PID=
LOADGEN_PIDS=()

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  for pid in "${LOADGEN_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  if [ -n "$STACK_PID" ] && kill -0 "$STACK_PID" 2>/dev/null; then
    kill -TERM "$STACK_PID"
    for _ in $(seq 1 150); do kill -0 "$STACK_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$STACK_PID" 2>/dev/null
  fi
  [ -n "$MONITOR_PID" ] && kill -TERM "$MONITOR_PID" 2>/dev/null
  ha_cluster_stop
  wait 2>/dev/null
  if [ "$rc" != 0 ]; then
    echo "ha: FAILED (exit $rc); last lines of the logs:" >&2
    for f in "$WORK"/stack.log "$WORK"/loadgen-*.err "$WORK"/cluster/log/pg*/patroni.out; do
      # loadgen's progress lines end in \r.
      [ -f "$f" ] && { echo "--- $f" >&2; tr '\r' '\n' <"$f" | grep -v ': measuring t=' | tail -n 15 >&2; }
    done
  fi
  if [ "${HA_KEEP:-0}" = 1 ]; then echo "ha: kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting etcd and three Patroni nodes under $WORK"
t0=$SECONDS
ha_cluster_start "$WORK/cluster"
mode="synchronous, sync standby $(ha_sync_standby)"
[ "$HA_SYNCHRONOUS" = true ] || mode="ASYNCHRONOUS (the control experiment: acknowledged commits may be lost)"
say "cluster healthy after $((SECONDS - t0)) s: leader $(ha_leader), $mode"
say "Patroni: $(timeout 10 patronictl -c "$WORK/cluster/pg1.yml" show-config 2>/dev/null | "$HA_PYTHON" -c 'import sys, yaml
c = yaml.safe_load(sys.stdin)
keys = ("ttl", "loop_wait", "retry_timeout", "primary_start_timeout", "synchronous_mode", "synchronous_mode_strict")
print(" ".join(f"{k}={c.get(k)}" for k in keys), "synchronous_commit=" + str(c["postgresql"]["parameters"]["synchronous_commit"]))')"

ports=()
for n in "${HA_NODES[@]}"; do ports+=("$(ha_pg_port "$n")"); done
"$HA_PYTHON" tests/ha/monitor.py "$WORK/primary.log" "${ports[@]}" &
MONITOR_PID=$!

# The services, as in production: one multi-host URL, target_session_attrs=read-write.
# Jobs every 5 s, so that they run through each failover.
DATABASE_URL=$(ha_database_url postgres) STACK_ENV_FILE="$WORK/stack.env" STACK_DB_PREFIX=payments_ha \
  CHECKOUT_LISTEN_ADDR=127.0.0.1:0 BILLING_LISTEN_ADDR=127.0.0.1:0 BILLING_HTTP_ADDR=127.0.0.1:0 \
  AUTO_DEDUCT_INTERVAL_SECS=5 ROLLOVER_INTERVAL_SECS=5 RENEWALS_INTERVAL_SECS=5 COMPLETION_SYNC_INTERVAL_SECS=5 \
  RUST_LOG=${RUST_LOG:-warn} "$BIN/stack" --fresh >"$WORK/stack.log" 2>&1 &
STACK_PID=$!
stack_up() { kill -0 "$STACK_PID" 2>/dev/null || { echo "ha: stack exited" >&2; exit 1; }; [ -s "$WORK/stack.env" ]; }
ha_wait 120 "stack serving" stack_up
say "stack up: $(head -1 "$WORK/stack.log")"

# loadgen, paced (a shared machine must keep up), retrying with the same
# ids for up to 60 s, logging what was acknowledged.
run_loadgen() {
  local scenario=$1 rate=$2 workers=$3
  "$BIN/loadgen" --env "$WORK/stack.env" --scenario "$scenario" --concurrency "$workers" --rate "$rate" --warmup 0 \
    --duration "$DURATION" --sessions 200 --orders $((rate * ORDER_SECS)) --retry 60 \
    --ack-log "$WORK/acks-$scenario.log" --json >"$WORK/loadgen-$scenario.json" 2>"$WORK/loadgen-$scenario.err" &
  LOADGEN_PIDS+=($!)
}
first_ack() { awk '$3 == "ok" { print $1; exit }' "$WORK/acks-$1.log" 2>/dev/null; }
acking() { [ -n "$(first_ack "$1")" ]; }
# The payments first (their set-up creates orders), then deduct, so that
# the three run side by side until the end.
run_loadgen verify-payment "$PAY_RATE" 2
run_loadgen webhook "$PAY_RATE" 2
for s in verify-payment webhook; do ha_wait 300 "loadgen $s acknowledging operations" acking "$s"; done
run_loadgen deduct "$DEDUCT_RATE" 4
ha_wait 120 "loadgen deduct acknowledging operations" acking deduct
say "loadgen running: deduct ${DEDUCT_RATE}/s, verify-payment and webhook ${PAY_RATE}/s each"

event() { echo "$(now_ms) $*" >>"$WORK/events.log"; say "$*"; }
for k in $(seq 1 "$KILLS"); do
  ha_wait_healthy 90
  event healed
  sleep "$SETTLE"
  leader=$(ha_leader)
  pid=$(ha_postmaster_pid "$leader")
  [ -n "$leader" ] && [ -n "$pid" ] || { echo "ha: no leader postmaster to kill" >&2; exit 1; }
  if [ "$k" = "$KILLS" ] && [ "$FREEZE" != 0 ]; then
    # The last kill finds the standbys behind: the primary's WAL senders
    # are stopped for a while first, so it holds commits no standby has.
    # Synchronous replication must keep them from being acknowledged.
    senders=$(pgrep -P "$pid" -f "walsender" | tr '\n' ' ')
    [ -n "$senders" ] || { echo "ha: no WAL sender to pause" >&2; exit 1; }
    event "pause the WAL senders of $leader for ${FREEZE} s (pids $senders)"
    # shellcheck disable=SC2086
    kill -STOP $senders
    sleep "$FREEZE"
    event "kill $leader postmaster $pid, standbys ${FREEZE} s behind"
    # The senders die with it: resumed, they would still send what they hold.
    # shellcheck disable=SC2086
    kill -KILL "$pid" $senders
  else
    event "kill $leader postmaster $pid"
    kill -KILL "$pid"
  fi
done
ha_wait_healthy 90
event healed
sleep "$SETTLE"
leader=$(ha_leader) candidate=$(ha_switchover_candidate)
event "switchover $leader $candidate"
timeout 60 patronictl -c "$WORK/cluster/pg1.yml" switchover --leader "$leader" --candidate "$candidate" --force \
  >"$WORK/switchover.log" 2>&1 || { cat "$WORK/switchover.log" >&2; exit 1; }
ha_wait_healthy 90
event healed
sleep "$TAIL"
for pid in "${LOADGEN_PIDS[@]}"; do
  kill -0 "$pid" 2>/dev/null || { echo "ha: a loadgen ended before the events did (HA_DURATION ${DURATION} s)" >&2; exit 1; }
done
event "end of events"
kill -INT "${LOADGEN_PIDS[@]}"

# From here on a failure is noted and the checks go on, so that the report
# is complete.
failed=()
say "waiting for loadgen (its own checks of the database run at its end)"
scenarios=(verify-payment webhook deduct)    # the order they were started in
for i in "${!LOADGEN_PIDS[@]}"; do
  pid=${LOADGEN_PIDS[$i]}
  ha_wait 180 "loadgen ${scenarios[$i]} to finish" bash -c "! kill -0 $pid 2>/dev/null" || exit 1
  if ! wait "$pid"; then
    failed+=("loadgen ${scenarios[$i]}: $(grep -m1 '^Error' "$WORK/loadgen-${scenarios[$i]}.err" || echo "exit status non-zero")")
  fi
done
LOADGEN_PIDS=()
kill -TERM "$MONITOR_PID"
wait "$MONITOR_PID" || true
MONITOR_PID=

ha_wait_healthy 90 || exit 1
leader=$(ha_leader)
billing_url=$(sed -n 's/^BILLING_DATABASE_URL=//p' "$WORK/stack.env")
say "reconcile on the new primary ($leader)"
if BILLING_DATABASE_URL="$billing_url" RUST_LOG=warn timeout 120 "$BIN/billing-svc" reconcile >"$WORK/reconcile.out" 2>&1; then
  say "reconcile: $(tail -1 "$WORK/reconcile.out")"
else
  cat "$WORK/reconcile.out" >&2
  failed+=("reconcile found inconsistencies (above)")
fi

# A task that panicked (an event tail, a job) would go on unnoticed in a service that stays up.
if grep -q 'panicked at' "$WORK/stack.log"; then
  grep -A1 'panicked at' "$WORK/stack.log" >&2
  failed+=("a task of the services panicked (above)")
fi

"$HA_PYTHON" tests/ha/check.py --work "$WORK" --port "$(ha_pg_port "$leader")" --database payments_ha_billing ||
  failed+=("check.py: violations (above)")
if [ "${#failed[@]}" != 0 ]; then
  printf 'ha: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
say "passed in $SECONDS s"
