#!/usr/bin/env bash
# The Oracle figures of BENCHMARKS.md, for anyone with Docker (compose v2),
# in one command:
#
#   tests/compose/bench.sh
#
# 1. Brings up the compose database and orapush (oracle_outbox, default
#    configuration), or reuses them when they are up (orapush is rebuilt
#    and recreated only when the sources changed).
# 2. Builds the Dockerfile's contract-tests image (cargo, the sources,
#    Instant Client, the bench already compiled) and runs
#    benches/bridge.rs --target-ws in it, on the compose network:
#    a. insert→browser latency: 100 rows/s for 20 s inserted into
#       ORAPUSH.ORAPUSH_OUTBOX as the owner, each its own transaction, the
#       payload carrying the send time; p50/p99/max at a WebSocket
#       subscriber. Target: p50 under 10 ms.
#    b. orapush's calls to the database while idle for 30 s (V$SESSTAT, as
#       SYSTEM). Target: nothing but the commit wake-up's wait (one call
#       every 2 s) and the fallback poll (every 5 s).
#    c. backlog drain: orapush is stopped, the bench takes the drain lock,
#       orapush restarts and stands by, a subscriber connects, 50,000 rows
#       are committed, the lock is released, and the drain is timed until
#       the subscriber has every row; the outbox must end empty.
# The figures are printed last, as Markdown: they go to BENCHMARKS.md,
# Oracle section, with the machine, Docker version and date.
# The stack is left running (docker compose down -v removes it). An
# orapush-aq that runs (--profile aq) is left alone and not counted.
# Knobs: ORAPUSH_BENCH_RATE, ORAPUSH_BENCH_SECONDS, ORAPUSH_BENCH_IDLE_SECONDS,
# ORAPUSH_BENCH_BACKLOG; the passwords as in docker-compose.yml.
set -euo pipefail
cd "$(dirname "$0")/../.."

export ORAPUSH_OWNER_PASSWORD="${ORAPUSH_OWNER_PASSWORD:-orapush}"
export ORAPUSH_APP_PASSWORD="${ORAPUSH_APP_PASSWORD:-orapush_app}"
export ORACLE_PASSWORD="${ORACLE_PASSWORD:-orapush-sys}"
rate="${ORAPUSH_BENCH_RATE:-100}"
seconds="${ORAPUSH_BENCH_SECONDS:-20}"
idle="${ORAPUSH_BENCH_IDLE_SECONDS:-30}"
backlog="${ORAPUSH_BENCH_BACKLOG:-50000}"
work="$(mktemp -d)"
name="orapush-bench-$$"

# No --profile aq and no project name of our own: a stack brought up with
# `docker compose up` in this directory is reused as it is.
compose() { docker compose "$@"; }
cleanup() {
  status=$?
  docker rm -f "$name-latency" "$name-backlog" >/dev/null 2>&1 || true
  # The backlog step stops orapush: leave it running, as it was found.
  compose start orapush >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

step "compose stack: Oracle Free and orapush (first start of the database takes a minute or two)"
compose up -d --build --wait oracle orapush

step "bench image (the Dockerfile's contract-tests stage)"
docker build --target contract-tests -t orapush-contract-tests .

oracle_id="$(compose ps -q oracle)"
orapush_id="$(compose ps -q orapush)"
[ -n "$oracle_id" ] && [ -n "$orapush_id" ] || fail "the oracle and orapush containers are not up"
network="$(docker inspect -f '{{range $net, $conf := .NetworkSettings.Networks}}{{$net}} {{end}}' "$oracle_id" | awk '{print $1}')"
[ -n "$network" ] || fail "no network for the oracle container"
# orapush's host name is V$SESSION.MACHINE of its sessions: only those count.
machine="$(docker inspect -f '{{.Config.Hostname}}' "$orapush_id")"

# bench CONTAINER-NAME ARGS...: benches/bridge.rs --target-ws on the compose network.
bench() {
  local container="$1"
  shift
  docker run --rm --name "$container" --network "$network" \
    -e ORAPUSH_BENCH_OWNER_PASSWORD="$ORAPUSH_OWNER_PASSWORD" \
    -e ORAPUSH_BENCH_SYSTEM_PASSWORD="$ORACLE_PASSWORD" \
    orapush-contract-tests \
    cargo bench --locked --bench bridge -- \
    --target-ws ws://orapush:8080/ws --oracle //oracle:1521/FREEPDB1 --machine "$machine" "$@"
}

step "latency at $rate rows/s for $seconds s, then $idle s idle"
bench "$name-latency" --rate "$rate" --latency-seconds "$seconds" --idle-seconds "$idle" | tee "$work/latency.out"

step "backlog of $backlog rows"
compose stop orapush
bench "$name-backlog" --backlog "$backlog" >"$work/backlog.out" 2>&1 &
bench_pid=$!
held=no
for _ in $(seq 1 600); do
  if grep -q '^LOCK HELD' "$work/backlog.out"; then held=yes; break; fi
  kill -0 "$bench_pid" 2>/dev/null || break
  sleep 0.5
done
if [ "$held" != yes ]; then
  wait "$bench_pid" || true
  fail "the backlog bench did not take the drain lock: $(tail -20 "$work/backlog.out")"
fi
# orapush comes up as a standby; the bench fills the outbox, then lets go.
compose start orapush
wait "$bench_pid" || fail "the backlog bench failed: $(tail -20 "$work/backlog.out")"
cat "$work/backlog.out"

step "figures for BENCHMARKS.md (Oracle section)"
for out in "$work/latency.out" "$work/backlog.out"; do sed -n '/^## /,$p' "$out"; done
