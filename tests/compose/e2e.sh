#!/usr/bin/env bash
# End-to-end test of docker-compose.yml, for anyone with Docker (compose v2):
#
#   tests/compose/e2e.sh
#
# 1. Oracle Free + orapush (oracle_outbox) + orapush-aq (oracle_aq) come up;
#    the database runs sql/oracle/grants.sql and install.sql on first start.
# 2. EXEC orapush.publish(...); COMMIT; in sqlplus reaches a subscriber of
#    the outbox instance; EXEC orapush.publish_aq(...) one of the AQ instance.
# 3. Crash-restart: orapush is SIGKILLed, 100 rows are published while it is
#    down, it restarts, and every row reaches the subscriber; the outbox ends
#    empty.
# 4. The contract suite (tests/contract.rs, Oracle part) runs against the
#    same database with ORAPUSH_TEST_ORACLE set, after the compose drainers
#    orapush and orapush-aq are stopped: they use the same schema, queue and
#    drain-lock names, so while they run every drainer in the tests stands
#    by and the live drainers take the tests' rows.
# Every step ends the script with a non-zero status when it fails.
# Everything is torn down at the end (docker compose down -v).
set -euo pipefail
cd "$(dirname "$0")/../.."

export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-orapush-e2e}"
export ORAPUSH_OWNER_PASSWORD="${ORAPUSH_OWNER_PASSWORD:-orapush}"
export ORAPUSH_APP_PASSWORD="${ORAPUSH_APP_PASSWORD:-orapush_app}"
# SYS and SYSTEM's password (the compose file's default): the contract tests
# kill sessions as SYSTEM.
export ORACLE_PASSWORD="${ORACLE_PASSWORD:-orapush-sys}"
work="$(mktemp -d)"

compose() { docker compose --profile aq "$@"; }
cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then compose logs --tail=80 || true; fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# Runs SQL*Plus input from stdin as the schema owner, failing on any error
# (-L: a refused login exits instead of reading the input as credentials).
sql() {
  { echo "WHENEVER SQLERROR EXIT FAILURE"; echo "SET FEEDBACK OFF HEADING OFF PAGESIZE 0"; cat; echo "EXIT"; } |
    compose exec -T oracle sqlplus -L -s "orapush/${ORAPUSH_OWNER_PASSWORD}@//localhost:1521/FREEPDB1"
}

# subscribe SERVICE CHANNEL COUNT OUTFILE: a background subscriber inside the
# service; its pid is left in $subscriber for the caller's wait.
subscribe() {
  compose exec -T "$1" orapush subscribe --channel "$2" --count "$3" --timeout-ms 180000 >"$4" 2>&1 &
  subscriber=$!
  for _ in $(seq 1 120); do
    grep -q '"type":"subscribed"' "$4" && return 0
    kill -0 "$subscriber" 2>/dev/null || fail "subscriber on $1 exited: $(cat "$4")"
    sleep 0.5
  done
  fail "subscriber on $1 never subscribed: $(cat "$4")"
}

step "starting Oracle Free and orapush (first start of the database takes a minute or two)"
compose up -d --build --wait

# publish_and_expect SERVICE PROCEDURE TEXT: a subscriber on SERVICE gets
# what EXEC orapush.PROCEDURE('emp', ...) publishes.
publish_and_expect() {
  out="$work/$1.out"
  subscribe "$1" emp 1 "$out"
  sql <<SQL
EXEC orapush.$2('emp', '{"message":"$3"}');
COMMIT;
SQL
  wait "$subscriber" || fail "no message on $1: $(cat "$out")"
  grep -q "$3" "$out" || fail "wrong message on $1: $(cat "$out")"
}

step "outbox: EXEC orapush.publish reaches the page"
publish_and_expect orapush publish E2E-OUTBOX

step "AQ: EXEC orapush.publish_aq reaches the page"
publish_and_expect orapush-aq publish_aq E2E-AQ

step "crash-restart: SIGKILL orapush, publish 100 rows, restart, nothing lost"
compose kill -s SIGKILL orapush
# Take the drain lock as soon as the killed session has let go of it, and
# hold it for a while: a restarted orapush (by hand, or by Docker's restart
# policy) then stands by until the subscriber below is connected. The
# 'e2e-lock' row says the lock is held.
sql >"$work/lock.out" <<'SQL' &
DECLARE
  l_status NUMBER;
BEGIN
  FOR attempt IN 1 .. 300 LOOP
    l_status := orapush.try_lock_drainer('orapush:ORAPUSH.ORAPUSH_OUTBOX');
    EXIT WHEN l_status IN (0, 4);
    DBMS_SESSION.SLEEP(0.1);
  END LOOP;
  IF l_status NOT IN (0, 4) THEN
    RAISE_APPLICATION_ERROR(-20001, 'the drain lock stayed taken: ' || l_status);
  END IF;
  orapush.publish('e2e-lock', 'held');
  COMMIT;
  DBMS_SESSION.SLEEP(25);
END;
/
SQL
lock_holder=$!
for _ in $(seq 1 60); do
  held=$(echo "SELECT COUNT(*) FROM orapush_outbox WHERE channel = 'e2e-lock';" | sql | tr -d '[:space:]')
  [ "$held" != "0" ] && break
  sleep 1
done
[ "$held" != "0" ] || fail "could not take the drain lock: $(cat "$work/lock.out")"
sql <<'SQL'
BEGIN
  FOR i IN 1 .. 100 LOOP
    orapush.publish('crash', '{"n":' || i || '}');
  END LOOP;
  COMMIT;
END;
/
SQL
compose start orapush
up=no
for _ in $(seq 1 60); do
  if compose exec -T orapush curl -fsS -o /dev/null http://127.0.0.1:8080/healthz; then up=yes; break; fi
  sleep 1
done
[ "$up" = yes ] || fail "orapush did not come back after the restart"
subscribe orapush crash 100 "$work/crash.out"
wait "$lock_holder" || fail "the lock holder failed: $(cat "$work/lock.out")"
wait "$subscriber" || fail "not every row arrived after the restart: $(tail -5 "$work/crash.out")"
received=$(grep -c '"channel":"crash"' "$work/crash.out" || true)
[ "$received" -ge 100 ] || fail "received $received of 100"
for _ in $(seq 1 30); do
  left=$(echo "SELECT COUNT(*) FROM orapush_outbox;" | sql | tr -d '[:space:]')
  [ "$left" = "0" ] && break
  sleep 1
done
[ "$left" = "0" ] || fail "$left rows left in the outbox"

step "contract suite against Oracle"
docker build --target contract-tests -t orapush-contract-tests .
# The compose drainers hold the drain locks the tests take (same schema,
# queue and lock names): stop them (stop also keeps Docker's restart policy
# from bringing them back), then check that both locks are free.
compose stop orapush orapush-aq
sql <<'SQL'
DECLARE
  l_status NUMBER;
  PROCEDURE expect_free(p_name VARCHAR2) IS
  BEGIN
    -- A session that ended uncleanly may hold its lock a moment longer.
    FOR attempt IN 1 .. 300 LOOP
      l_status := orapush.try_lock_drainer(p_name);
      EXIT WHEN l_status IN (0, 4);
      DBMS_SESSION.SLEEP(0.1);
    END LOOP;
    IF l_status NOT IN (0, 4) THEN
      RAISE_APPLICATION_ERROR(-20001, p_name || ' is still held after the drainers stopped: ' || l_status);
    END IF;
  END;
BEGIN
  expect_free('orapush:ORAPUSH.ORAPUSH_OUTBOX');
  expect_free('orapush:ORAPUSH.ORAPUSH_Q');
END;
/
SQL
# (The locks this check took go with its session, at EXIT.)
docker run --rm --network "${COMPOSE_PROJECT_NAME}_default" \
  -e ORAPUSH_TEST_ORACLE=//oracle:1521/FREEPDB1 \
  -e ORAPUSH_TEST_ORACLE_OWNER_PASSWORD="$ORAPUSH_OWNER_PASSWORD" \
  -e ORAPUSH_TEST_ORACLE_APP_PASSWORD="$ORAPUSH_APP_PASSWORD" \
  -e ORAPUSH_TEST_ORACLE_SYSTEM_PASSWORD="$ORACLE_PASSWORD" \
  orapush-contract-tests

step "all end-to-end checks passed"
