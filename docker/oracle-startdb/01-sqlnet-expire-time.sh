#!/bin/bash
# Turns on Dead Connection Detection for the compose database: sets
# SQLNET.EXPIRE_TIME in the server's sqlnet.ora, on every start.
#
# Why: a standby orapush takes over the outbox only when the DBMS_LOCK drain
# lock is free, and Oracle frees it only when the holder's session ends. A
# session whose host died or was cut off by a partition ends only once the
# server notices, and without DCD an idle server process never does: it
# waits for the client's next call forever. With EXPIRE_TIME = N (minutes)
# the server turns on TCP keepalive on each new connection (12c and later):
# first probe after N minutes of silence, then 10 probes 6 s apart, so a
# dead client is found within about N minutes + 1 minute.
#
# Where: gvenzl/oracle-free keeps sqlnet.ora in the database's config
# directory under /opt/oracle/oradata and links it from
# $ORACLE_BASE_HOME/network/admin/sqlnet.ora (container-entrypoint.sh,
# create_dbconfig and sym_link_dbconfig). The entrypoint runs the files of
# /container-entrypoint-startdb.d after every start, once the database and
# listener are up and before the health check passes, so orapush (which
# waits for "healthy") logs in after the change. Server processes read
# sqlnet.ora when a connection is made: no restart is needed.
#
# Idempotent: an earlier SQLNET.EXPIRE_TIME line (and this script's comment)
# is replaced. The file is rewritten in place, so the link stays a link.
# Executable on purpose: the entrypoint sources non-executable .sh files
# into its own shell, where an exit would end the container's start.
set -euo pipefail

minutes="${ORAPUSH_SQLNET_EXPIRE_TIME:-1}"
case "$minutes" in
  '' | *[!0-9]*)
    echo "ORAPUSH_SQLNET_EXPIRE_TIME must be a whole number of minutes, not '$minutes'" >&2
    exit 1
    ;;
esac

marker="# orapush: Dead Connection Detection, so a standby takes the drain lock over (docker/oracle-startdb)"
file="$(readlink -f "${ORACLE_BASE_HOME:?ORACLE_BASE_HOME is not set}/network/admin/sqlnet.ora")"
touch "$file"
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
# grep exits 1 when it keeps no line (an empty file): that is no error.
grep -v -i -e '^[[:space:]]*SQLNET\.EXPIRE_TIME[[:space:]]*=' -e "^$marker\$" "$file" >"$tmp" || [ "$?" -eq 1 ]
printf '%s\nSQLNET.EXPIRE_TIME = %s\n' "$marker" "$minutes" >>"$tmp"
cat "$tmp" >"$file"
echo "sqlnet.ora ($file): SQLNET.EXPIRE_TIME = $minutes"
