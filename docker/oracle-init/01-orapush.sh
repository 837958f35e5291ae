#!/bin/bash
# Runs once, on the database's first start (gvenzl/oracle-free runs every
# file in /container-entrypoint-initdb.d as the oracle user). It applies
# orapush's own scripts from sql/oracle, mounted at /opt/orapush-sql:
#   grants.sql   as SYSDBA in FREEPDB1  (users ORAPUSH and ORAPUSH_APP)
#   install.sql  as ORAPUSH             (outbox, package, queue, grants)
set -euo pipefail

sqlplus -s / as sysdba <<SQL
WHENEVER SQLERROR EXIT SQL.SQLCODE
ALTER SESSION SET CONTAINER = FREEPDB1;
@/opt/orapush-sql/grants.sql "${ORAPUSH_OWNER_PASSWORD}" "${ORAPUSH_APP_PASSWORD}"
EXIT
SQL

sqlplus -s "orapush/${ORAPUSH_OWNER_PASSWORD}@//localhost:1521/FREEPDB1" <<SQL
@/opt/orapush-sql/install.sql
EXIT
SQL
