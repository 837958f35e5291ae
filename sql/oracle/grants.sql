-- orapush: users and grants. Run once as a DBA (SYS or SYSTEM) in the PDB
-- that holds the application, in SQL*Plus or SQLcl:
--
--   sqlplus -L sys/...@//host:1521/FREEPDB1 as sysdba @sql/oracle/grants.sql OWNER_PASSWORD APP_PASSWORD [TABLESPACE]
--
-- The first two arguments are the passwords of the two users it creates
-- (SQL*Plus asks for them when they are missing). The third, optional, is
-- the owner's tablespace (default USERS): it becomes the owner's default
-- tablespace and gets an unlimited quota. Idempotent: existing users are
-- kept and their passwords are not changed. It stops at the first error
-- with a non-zero exit status.
-- Two users, so the service runs with least privilege:
--   ORAPUSH      owns the outbox tables, the ORAPUSH package and the queue.
--                It needs to log in only to run install.sql; lock it after.
--   ORAPUSH_APP  the user orapush (the service) logs in as. It can read and
--                delete outbox rows, dequeue, and call the ORAPUSH package:
--                nothing more. install.sql gives it those object grants.
-- To use other user names, edit the two DEFINE lines (and install.sql's
-- app_user, and orapush's oracle.user / oracle.schema).
SET DEFINE ON
SET VERIFY OFF
DEFINE owner_user = ORAPUSH
DEFINE app_user = ORAPUSH_APP
DEFINE owner_password = "&1"
DEFINE app_password = "&2"
-- The optional third argument: a query with no row defines &3 as empty
-- when it was not given (and keeps it when it was).
SET TERMOUT OFF
COLUMN 3 NEW_VALUE 3 NOPRINT
SELECT '' "3" FROM dual WHERE ROWNUM = 0;
COLUMN owner_tablespace NEW_VALUE owner_tablespace NOPRINT
SELECT NVL(UPPER(TRIM('&3')), 'USERS') AS owner_tablespace FROM dual;
SET TERMOUT ON

-- FAILURE, not the ORA code as status: an exit status is taken mod 256 (ORA-01536 would exit 0).
WHENEVER SQLERROR EXIT FAILURE
WHENEVER OSERROR EXIT FAILURE

DECLARE
  PROCEDURE create_user(p_user VARCHAR2, p_password VARCHAR2) IS
  BEGIN
    EXECUTE IMMEDIATE 'CREATE USER ' || p_user || ' IDENTIFIED BY "' || p_password || '"';
  EXCEPTION
    WHEN OTHERS THEN
      IF SQLCODE != -1920 THEN RAISE; END IF;  -- ORA-01920: the user exists already
  END;
BEGIN
  create_user('&&owner_user', '&&owner_password');
  create_user('&&app_user', '&&app_password');
END;
/

-- The owner creates its tables, package and queue.
-- CREATE TRIGGER: the outbox's commit-time wake-up trigger.
GRANT CREATE SESSION, CREATE TABLE, CREATE PROCEDURE, CREATE SEQUENCE, CREATE TRIGGER TO &&owner_user;
ALTER USER &&owner_user DEFAULT TABLESPACE &&owner_tablespace QUOTA UNLIMITED ON &&owner_tablespace;
-- Queue table and queue (install.sql), and PUBLISH_AQ's enqueue. Granted
-- directly, not through a role: definer's-rights packages ignore roles.
GRANT EXECUTE ON SYS.DBMS_AQADM TO &&owner_user;
GRANT EXECUTE ON SYS.DBMS_AQ TO &&owner_user;
-- ORAPUSH.LOCK_DRAINER: one active orapush per outbox or queue.
GRANT EXECUTE ON SYS.DBMS_LOCK TO &&owner_user;
-- The outbox trigger's commit-time wake-up and ORAPUSH.WAIT_FOR_OUTBOX.
-- Publishers and the service user need no grant on it: both run as the owner.
GRANT EXECUTE ON SYS.DBMS_ALERT TO &&owner_user;

-- The service user only logs in and dequeues. Dequeueing through the OCI
-- AQ interface needs EXECUTE on DBMS_AQ besides the queue privilege.
GRANT CREATE SESSION TO &&app_user;
GRANT EXECUTE ON SYS.DBMS_AQ TO &&app_user;
