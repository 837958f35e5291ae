#!/bin/bash
# Runs once, on the database's first start (gvenzl/oracle-free runs every
# file in /container-entrypoint-initdb.d as the oracle user). It applies
# orapush's own scripts from sql/oracle, mounted at /opt/orapush-sql:
#   grants.sql   as SYSDBA in FREEPDB1  (users ORAPUSH and ORAPUSH_APP, tablespace USERS)
#   install.sql  as ORAPUSH             (outbox, package, queue, grants)
# Any failure exits non-zero, which stops the container's start (the
# entrypoint runs under set -e), so a half-installed schema never looks
# healthy:
#   -L                          a refused login exits at once; without it
#                               SQL*Plus prompts again and reads the rest of
#                               this script as user names and passwords;
#   WHENEVER SQLERROR/OSERROR   FAILURE, not SQL.SQLCODE: an exit status is
#   EXIT FAILURE                taken mod 256, so ORA-01536 would exit 0.
set -euo pipefail

sqlplus -L -s / as sysdba <<SQL
WHENEVER SQLERROR EXIT FAILURE
WHENEVER OSERROR EXIT FAILURE
ALTER SESSION SET CONTAINER = FREEPDB1;
@/opt/orapush-sql/grants.sql "${ORAPUSH_OWNER_PASSWORD}" "${ORAPUSH_APP_PASSWORD}" USERS
EXIT
SQL

sqlplus -L -s "orapush/${ORAPUSH_OWNER_PASSWORD}@//localhost:1521/FREEPDB1" <<SQL
WHENEVER SQLERROR EXIT FAILURE
WHENEVER OSERROR EXIT FAILURE
@/opt/orapush-sql/install.sql
EXIT
SQL
