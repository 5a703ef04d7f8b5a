# shellcheck shell=bash
# A local three-node PostgreSQL 15 cluster under Patroni with one etcd, all
# on 127.0.0.1, from Debian's packages (tests/ha/README.md). Sourced by
# tests/ha/run.sh; every function waits with a timeout and returns non-zero
# when the cluster does not get where it should.
#
#   ha_cluster_start DIR      etcd + three Patroni nodes, data under DIR
#   ha_wait_healthy SECS      a leader, a sync standby, every member streaming
#   ha_leader                 the current leader (empty if none); also
#                             ha_sync_standby, ha_switchover_candidate
#   ha_postmaster_pid NODE    the node's postmaster
#   ha_database_url [DB]      the multi-host URL the services use
#   ha_cluster_stop           stop everything started here (idempotent)

HA_PYTHON=${HA_PYTHON:-/usr/bin/python3}    # Debian's, with python3-psycopg2 (a Patroni dependency)
HA_PG_BIN=${HA_PG_BIN:-/usr/lib/postgresql/15/bin}
HA_PORT_BASE=${HA_PORT_BASE:-25430}          # PostgreSQL: base+1..base+3
HA_API_BASE=${HA_API_BASE:-25480}            # Patroni REST API: base+1..base+3
HA_ETCD_PORT=${HA_ETCD_PORT:-25479}          # etcd client; peer = this - 1
# Synchronous replication (true). `false` is the control experiment of
# tests/ha/README.md: asynchronous replication, where a failover may lose
# acknowledged commits and the test is expected to say so.
HA_SYNCHRONOUS=${HA_SYNCHRONOUS:-true}
HA_NODES=(pg1 pg2 pg3)
HA_SCOPE=payments-ha
HA_PIDS=()                                   # etcd and the Patroni agents we started

ha_pg_port() { echo $((HA_PORT_BASE + ${1#pg})); }
ha_api_port() { echo $((HA_API_BASE + ${1#pg})); }

# ha_spawn LOG CMD...: CMD in the background, its pid appended to HA_PIDS.
# PostgreSQL refuses to run as root: as root, CMD (Patroni, which starts the
# node) runs as the `postgres` OS user. Every step execs, so the pid is
# CMD's own and a signal sent to it reaches it.
ha_spawn() {
  local log=$1
  shift
  if [ "$(id -u)" = 0 ]; then
    (exec setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$HA_DIR" "$@" >"$log" 2>&1) &
  else
    (exec "$@" >"$log" 2>&1) &
  fi
  HA_PIDS+=($!)
}

# The multi-host connection string the services use (docs/configuration.md).
ha_database_url() {
  local db=${1:-postgres} hosts=() n
  for n in "${HA_NODES[@]}"; do hosts+=("127.0.0.1:$(ha_pg_port "$n")"); done
  local IFS=,
  echo "postgres://postgres@${hosts[*]}/$db?target_session_attrs=read-write"
}

ha_patroni_config() {
  local n=$1 dir=$2
  cat <<YAML
scope: $HA_SCOPE
name: $n
log:
  level: INFO
  dir: $dir/log/$n
restapi:
  listen: 127.0.0.1:$(ha_api_port "$n")
  connect_address: 127.0.0.1:$(ha_api_port "$n")
etcd3:
  hosts: 127.0.0.1:$HA_ETCD_PORT
bootstrap:
  dcs:
    # Failover timings (tests/ha/README.md): the agent checks its node every
    # loop_wait seconds; a crashed primary is failed over at once instead
    # of being restarted in place (primary_start_timeout 0); the leader key
    # expires ttl seconds after its agent is gone.
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    primary_start_timeout: 0
    maximum_lag_on_failover: 1048576
    # A commit returns only once the synchronous standby has it on disk,
    # only that standby may be promoted, and without one writes wait.
    synchronous_mode: $HA_SYNCHRONOUS
    synchronous_mode_strict: $HA_SYNCHRONOUS
    synchronous_node_count: 1
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        synchronous_commit: "on"
        wal_log_hints: "on"
        max_connections: 200
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 256MB
        hot_standby: "on"
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
    - auth: trust
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:$(ha_pg_port "$n")
  connect_address: 127.0.0.1:$(ha_pg_port "$n")
  data_dir: $dir/data/$n
  bin_dir: $HA_PG_BIN
  pgpass: $dir/pgpass-$n
  remove_data_directory_on_rewind_failure: true
  remove_data_directory_on_diverged_timelines: true
  authentication:
    superuser: {username: postgres}
    replication: {username: postgres}
    rewind: {username: postgres}
  parameters:
    unix_socket_directories: $dir/run
    logging_collector: "on"
    log_directory: $dir/log/$n
    log_filename: postgresql.log
    log_line_prefix: "%m [%p] "
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
YAML
}

ha_cluster_start() {
  HA_DIR=$1
  local n
  mkdir -p "$HA_DIR/etcd" "$HA_DIR/run" "$HA_DIR/data" "$HA_DIR/log"
  for n in "${HA_NODES[@]}"; do
    mkdir -p "$HA_DIR/log/$n"
    ha_patroni_config "$n" "$HA_DIR" >"$HA_DIR/$n.yml"
  done
  if [ "$(id -u)" = 0 ]; then chown -R postgres: "$HA_DIR"; fi
  chmod 700 "$HA_DIR/data"

  ha_spawn "$HA_DIR/log/etcd.log" etcd --name ha --data-dir "$HA_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$HA_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$HA_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((HA_ETCD_PORT - 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((HA_ETCD_PORT - 1))" \
    --initial-cluster "ha=http://127.0.0.1:$((HA_ETCD_PORT - 1))"
  ha_wait 20 "etcd answering" ha_etcd_healthy || return 1

  # pg1 first so that it bootstraps the cluster; the others clone it.
  for n in "${HA_NODES[@]}"; do
    ha_spawn "$HA_DIR/log/$n/patroni.out" patroni "$HA_DIR/$n.yml"
    [ "$n" = pg1 ] && { ha_wait 60 "pg1 bootstrapped as leader" ha_is_leader pg1 || return 1; }
  done
  ha_wait_healthy 90
}

ha_etcd_healthy() {
  ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$HA_ETCD_PORT" --dial-timeout 1s endpoint health >/dev/null 2>&1
}

# Patroni's own view of the cluster (JSON list of members).
ha_members() {
  timeout 10 patronictl -c "$HA_DIR/pg1.yml" list -f json 2>/dev/null
}

ha_is_leader() {
  [ "$(ha_leader)" = "$1" ]
}

ha_leader() {
  ha_members | "$HA_PYTHON" -c 'import json,sys
m=[x["Member"] for x in json.load(sys.stdin) if x["Role"]=="Leader" and x["State"]=="running"]
print(m[0] if m else "")' 2>/dev/null
}

# Whom a planned switchover hands over to: the sync standby (the only
# member Patroni may promote), or any replica without synchronous mode.
ha_switchover_candidate() {
  if [ "$HA_SYNCHRONOUS" = true ]; then ha_sync_standby; return; fi
  ha_members | "$HA_PYTHON" -c 'import json,sys
m=[x["Member"] for x in json.load(sys.stdin) if x["Role"]!="Leader" and x["State"] in ("running", "streaming")]
print(m[0] if m else "")' 2>/dev/null
}

ha_sync_standby() {
  ha_members | "$HA_PYTHON" -c 'import json,sys
m=[x["Member"] for x in json.load(sys.stdin) if x["Role"]=="Sync Standby" and x["State"] in ("running", "streaming")]
print(m[0] if m else "")' 2>/dev/null
}

# Healthy: one running leader, a sync standby in Patroni's view (the one
# member it may promote), the leader's pg_stat_replication showing both
# other members streaming and one of them synchronous, and a write on it that
# commits (so it reached the sync standby).
ha_is_healthy() {
  local leader
  leader=$(ha_leader) && [ -n "$leader" ] || return 1
  local want=2,1
  if [ "$HA_SYNCHRONOUS" = true ]; then [ -n "$(ha_sync_standby)" ] || return 1; else want=2,0; fi
  [ "$(ha_psql "$leader" "SELECT count(*) FILTER (WHERE state = 'streaming') || ',' || count(*) FILTER (WHERE sync_state = 'sync')
      FROM pg_stat_replication")" = "$want" ] || return 1
  ha_psql "$leader" "SET statement_timeout = '3s'; CREATE TABLE IF NOT EXISTS ha_probe (at timestamptz); INSERT INTO ha_probe VALUES (now())" >/dev/null
}

# ha_psql NODE SQL: one query as postgres, unaligned output, 5 s at most.
ha_psql() {
  PGCONNECT_TIMEOUT=2 timeout 5 psql -X -q -At -h 127.0.0.1 -p "$(ha_pg_port "$1")" -U postgres -d postgres -c "$2" 2>/dev/null
}

ha_wait_healthy() {
  ha_wait "$1" "a leader, a sync standby and every member streaming" ha_is_healthy
}

# ha_wait SECS WHAT CMD...: runs CMD every 0.2 s until it succeeds.
ha_wait() {
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "ha: timed out after ${secs}s waiting for: $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

# The postmaster's pid of node N (from its data directory).
ha_postmaster_pid() {
  head -1 "$HA_DIR/data/$1/postmaster.pid" 2>/dev/null
}

ha_cluster_stop() {
  local pid n i
  # Patroni stops its PostgreSQL on SIGTERM; etcd last.
  for pid in "${HA_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for i in $(seq 1 100); do
    local alive=0
    for pid in "${HA_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in "${HA_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  # A postmaster left behind (its agent killed): immediate shutdown.
  if [ -n "${HA_DIR:-}" ]; then
    for n in "${HA_NODES[@]}"; do
      pid=$(ha_postmaster_pid "$n")
      if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -QUIT "$pid" 2>/dev/null || true; fi
    done
  fi
  HA_PIDS=()
}
