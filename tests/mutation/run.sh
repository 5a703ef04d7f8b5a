#!/usr/bin/env bash
# Mutation check (slow, not in CI): for each guard in mutations.txt, clone
# the repository at HEAD into a scratch directory, remove that guard alone,
# run the test files that should notice, and print which tests caught it.
#
#   bash tests/mutation/run.sh              # every mutation
#   bash tests/mutation/run.sh capture      # only names containing "capture"
#   bash tests/mutation/run.sh etag rollover # names containing either
#
# Environment:
#   MUTATION_WORK        scratch directory (default /tmp/mutation-work)
#   CARGO_TARGET_DIR     shared by all runs so builds stay incremental
#                        (default /tmp/mutation-target)
#   MUTATION_OVERLAY     space-separated paths copied from this working tree
#                        over the clone (to try tests before committing them)
#   MUTATION_BASELINE=0  skip the unmutated run of all suites
#   MUTATION_PG          PostgreSQL server for the liveness check of SQL
#                        mutants (default postgres://postgres@127.0.0.1:5432)
# Exit status: 0 when every mutation that ran was caught, 1 otherwise.
set -uo pipefail

ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
HERE="$ROOT/tests/mutation"
WORK=${MUTATION_WORK:-/tmp/mutation-work}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/mutation-target}
FILTERS=("$@")
SRC="$WORK/src"
LOGS="$WORK/logs"
HEAD_SHA=$(git -C "$ROOT" rev-parse HEAD)

mkdir -p "$WORK" "$LOGS"
if [ ! -d "$SRC/.git" ]; then
  git clone --quiet "$ROOT" "$SRC"
fi
git -C "$SRC" fetch --quiet "$ROOT" "$HEAD_SHA"

reset_tree() {
  git -C "$SRC" checkout --quiet --force --detach "$HEAD_SHA"
  git -C "$SRC" clean --quiet -fd
  for p in ${MUTATION_OVERLAY:-}; do
    mkdir -p "$(dirname "$SRC/$p")"
    cp "$ROOT/$p" "$SRC/$p"
  done
}

# Runs the given test files in the clone; prints "<status> <failed tests>"
# where status is pass, fail or build-error.
run_suites() {
  local log=$1
  shift
  # The suites are modules of the one system-test binary `it`.
  local filter
  filter=$(printf '%s|' "$@")
  filter="test(/^(${filter%|})::/)"
  (cd "$SRC" && cargo nextest run -p tests --test it -E "$filter" --no-fail-fast --color never) >"$log" 2>&1
  local rc=$?
  if ! grep -qE '^ *Starting [0-9]+ tests?' "$log"; then
    echo "build-error"
    return
  fi
  local failed
  failed=$(grep -E '^ *(FAIL|TIMEOUT|SIGSEGV|SIGABRT|SIGKILL) \[' "$log" | grep -oE 'tests::it [A-Za-z_0-9:]+' \
    | sed 's/^tests::it //' | sort -u | paste -sd, -)
  if [ $rc -eq 0 ]; then echo "pass"; else echo "fail ${failed:-?}"; fi
}

# The schema a service's binary migrates a scratch database to (tables,
# constraints, indexes and every function's definition): an SQL mutant is
# live only if it changes this. The binary is built with the tests' feature
# set (-p tests), so the suites reuse its build.
PG=${MUTATION_PG:-postgres://postgres@127.0.0.1:5432}
migrated_schema() {
  local svc=$1 out=$2 db var
  db="mutation_scratch_${svc//-/_}"
  var=$(tr 'a-z-' 'A-Z_' <<<"${svc%-svc}")_DATABASE_URL
  (cd "$SRC" && cargo build --quiet -p "$svc" -p tests --bin "$svc") >"$out.build" 2>&1 || return 1
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null || return 1
  env "$var=$PG/$db" "$CARGO_TARGET_DIR/debug/$svc" migrate >"$out.migrate" 2>&1 || return 1
  pg_dump --schema-only --no-owner --no-privileges "$PG/$db" | grep -v '^--' >"$out"
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $db" >/dev/null
}

mapfile -t MUTATIONS < <(python3 "$HERE/mutate.py" list)
START_ALL=$(date +%s)
echo "mutation check of $HEAD_SHA in $SRC (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"

if [ "${MUTATION_BASELINE:-1}" != 0 ]; then
  suites=$(printf '%s\n' "${MUTATIONS[@]}" | cut -d$'\x1f' -f2 | tr ' ' '\n' | grep -v '^$' | sort -u | paste -sd' ' -)
  reset_tree
  t0=$(date +%s)
  # shellcheck disable=SC2086
  base=$(run_suites "$LOGS/baseline.log" $suites)
  echo "baseline (no mutation; $suites): $base in $(( $(date +%s) - t0 ))s"
  if [ "${base%% *}" != pass ]; then
    echo "the unmutated suites do not pass: see $LOGS/baseline.log; a 'caught' below would mean nothing" >&2
    exit 1
  fi
fi

reset_tree
for svc in billing-svc checkout-svc; do
  if ! migrated_schema "$svc" "$LOGS/schema-$svc.sql"; then
    echo "cannot migrate a scratch database with the unmutated $svc: see $LOGS/schema-$svc.sql.*" >&2
    exit 1
  fi
done

ROWS=()
missed=0
for line in "${MUTATIONS[@]}"; do
  IFS=$'\x1f' read -r name suites skip about <<<"$line"
  if [ ${#FILTERS[@]} -gt 0 ]; then
    hit=""
    for f in "${FILTERS[@]}"; do [[ "$name" == *"$f"* ]] && hit=1; done
    [ -n "$hit" ] || continue
  fi
  if [ -n "$skip" ]; then
    ROWS+=("$name|skipped ($skip)|-|-")
    continue
  fi
  reset_tree
  t0=$(date +%s)
  if ! sql_svcs=$(python3 "$HERE/mutate.py" apply "$name" "$SRC" 2>"$LOGS/$name.apply"); then
    ROWS+=("$name|does not apply: $(tr '\n' ' ' <"$LOGS/$name.apply")|-|0")
    missed=$((missed + 1))
    continue
  fi
  # An SQL mutant must change what the migration runner leaves in a fresh
  # database (a function file not applied, a dead migration copy, a
  # definition replaced later would not).
  dead=""
  for svc in $sql_svcs; do
    if ! migrated_schema "$svc" "$LOGS/$name.schema-$svc.sql"; then
      dead="$dead $svc: the mutant does not migrate (see $LOGS/$name.schema-$svc.sql.*);"
    elif cmp -s "$LOGS/schema-$svc.sql" "$LOGS/$name.schema-$svc.sql"; then
      dead="$dead $svc: the migrated schema is unchanged;"
    fi
  done
  if [ -n "$dead" ]; then
    ROWS+=("$name|not live:$dead|-|$(( $(date +%s) - t0 ))")
    missed=$((missed + 1))
    echo "  $name: not live:$dead"
    continue
  fi
  # shellcheck disable=SC2086
  result=$(run_suites "$LOGS/$name.log" $suites)
  secs=$(( $(date +%s) - t0 ))
  case "$result" in
    pass) ROWS+=("$name|NO|-|$secs"); missed=$((missed + 1)) ;;
    build-error) ROWS+=("$name|build error (see $LOGS/$name.log)|-|$secs"); missed=$((missed + 1)) ;;
    fail*) ROWS+=("$name|yes|${result#fail }|$secs") ;;
  esac
  echo "  $name: $result (${secs}s)"
done
reset_tree

echo
echo "| mutation | caught? | by which test(s) | seconds |"
echo "|---|---|---|---|"
for r in "${ROWS[@]}"; do
  IFS='|' read -r n c t s <<<"$r"
  echo "| $n | $c | ${t//,/, } | $s |"
done
echo
echo "total: $(( $(date +%s) - START_ALL ))s; logs in $LOGS"
[ "$missed" -eq 0 ]
