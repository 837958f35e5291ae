-- orapush: the Oracle outbox, the ORAPUSH package and the AQ queue.
-- Run as the owner (after grants.sql), in SQL*Plus or SQLcl:
--
--   sqlplus -L orapush/...@//host:1521/FREEPDB1 @sql/oracle/install.sql
--
-- Idempotent: running it again keeps the data and replaces the package.
-- Needs Oracle 19c or later (identity columns, JSON_OBJECT_T,
-- DBMS_LOCK.ALLOCATE_UNIQUE_AUTONOMOUS).
--
-- It stops at the first error with a non-zero exit status, compilation
-- errors included: SQL*Plus only warns "created with compilation errors",
-- so every compiled unit is checked in USER_ERRORS below. FAILURE, not the
-- ORA code as status: an exit status is taken mod 256, so ORA-01536 would exit 0.
SET DEFINE ON
SET VERIFY OFF
SET SERVEROUTPUT ON
DEFINE app_user = ORAPUSH_APP

WHENEVER SQLERROR EXIT FAILURE
WHENEVER OSERROR EXIT FAILURE

-- The DBMS_ALERT the outbox trigger signals, one per owner: alert names are
-- database-wide, and signallers of one name wait for each other's commit,
-- so two installs must not share one. At most 30 bytes.
COLUMN outbox_alert NEW_VALUE outbox_alert NOPRINT
SELECT SUBSTRB('ORAPUSH_OUTBOX$' || USER, 1, 30) AS outbox_alert FROM dual;

-- Preflight: every privilege the objects below need, checked before any of
-- them is replaced, so a missing grant (an upgrade without grants.sql)
-- cannot leave an invalid package or trigger behind (an invalid trigger on
-- the outbox would fail every INSERT). Definer's-rights packages ignore
-- roles: the EXECUTE grants must be direct (or to PUBLIC).
DECLARE
  l_missing VARCHAR2(4000);
BEGIN
  FOR p IN (SELECT column_value AS privilege FROM TABLE(sys.odcivarchar2list(
              'CREATE TABLE', 'CREATE PROCEDURE', 'CREATE SEQUENCE', 'CREATE TRIGGER'))
            MINUS SELECT privilege FROM session_privs) LOOP
    l_missing := l_missing || ' ' || p.privilege || ';';
  END LOOP;
  FOR p IN (SELECT column_value AS package_name FROM TABLE(sys.odcivarchar2list(
              'DBMS_AQADM', 'DBMS_AQ', 'DBMS_LOCK', 'DBMS_ALERT'))
            MINUS SELECT table_name FROM all_tab_privs
                   WHERE privilege = 'EXECUTE' AND table_schema = 'SYS' AND grantee IN (USER, 'PUBLIC')) LOOP
    l_missing := l_missing || ' EXECUTE ON SYS.' || p.package_name || ';';
  END LOOP;
  IF l_missing IS NOT NULL THEN
    RAISE_APPLICATION_ERROR(-20101, 'orapush: ' || USER || ' lacks' || l_missing
      || ' run sql/oracle/grants.sql as a DBA first (nothing was changed)');
  END IF;
END;
/

-- The outbox. Publish with an INSERT (or ORAPUSH.PUBLISH) and a COMMIT.
-- orapush claims rows with an unlimited
--   SELECT /*+ INDEX_ASC(o (id)) */ ... ORDER BY id FOR UPDATE SKIP LOCKED
-- cursor (fetching one batch) and deletes each row once its message is
-- handed over; the primary key index serves that order without a sort.
BEGIN
  EXECUTE IMMEDIATE q'[
    CREATE TABLE orapush_outbox (
      id          NUMBER GENERATED ALWAYS AS IDENTITY,
      channel     VARCHAR2(200) NOT NULL,
      payload     CLOB NOT NULL,
      target_user VARCHAR2(200) NULL,
      created_at  TIMESTAMP WITH TIME ZONE DEFAULT SYSTIMESTAMP NOT NULL,
      CONSTRAINT orapush_outbox_pk PRIMARY KEY (id)
    )]';
EXCEPTION
  WHEN OTHERS THEN
    IF SQLCODE != -955 THEN RAISE; END IF;  -- ORA-00955: exists already
END;
/

-- Rows that can never be delivered (bad channel, payload too large), with
-- the reason; they never block the rows behind them.
BEGIN
  EXECUTE IMMEDIATE q'[
    CREATE TABLE orapush_dead_letter (
      id          NUMBER PRIMARY KEY,
      channel     VARCHAR2(200) NOT NULL,
      payload     CLOB NOT NULL,
      target_user VARCHAR2(200) NULL,
      created_at  TIMESTAMP WITH TIME ZONE NOT NULL,
      failed_at   TIMESTAMP WITH TIME ZONE DEFAULT SYSTIMESTAMP NOT NULL,
      reason      VARCHAR2(4000) NOT NULL
    )]';
EXCEPTION
  WHEN OTHERS THEN
    IF SQLCODE != -955 THEN RAISE; END IF;
END;
/

-- AQ messages that can never be delivered (not an envelope, bad channel,
-- too large), with the reason. orapush moves them here in the same
-- transaction that commits the good messages of their batch, so a poison
-- message never costs the good ones a rollback (each rollback raises the
-- RETRY_COUNT of every message dequeued in the transaction).
BEGIN
  EXECUTE IMMEDIATE q'[
    CREATE TABLE orapush_aq_dead_letter (
      msgid       RAW(16) PRIMARY KEY,
      payload     BLOB,
      failed_at   TIMESTAMP WITH TIME ZONE DEFAULT SYSTIMESTAMP NOT NULL,
      reason      VARCHAR2(4000) NOT NULL
    )]';
EXCEPTION
  WHEN OTHERS THEN
    IF SQLCODE != -955 THEN RAISE; END IF;
END;
/

-- The queue: RAW payloads carrying a UTF-8 JSON envelope
--   {"channel": "...", "payload": "...", "user": null}
-- (rust-oracle reads RAW and object payloads, not JSON or JMS queues).
-- Single consumer: orapush dequeues; one orapush drains at a time.
-- max_retries: a message whose dequeue is rolled back that often moves to
-- the exception queue AQ$_ORAPUSH_QT_E. orapush itself never rolls back a
-- dequeue on purpose; it counts and logs what reaches that queue.
BEGIN
  DBMS_AQADM.CREATE_QUEUE_TABLE(
    queue_table        => 'ORAPUSH_QT',
    queue_payload_type => 'RAW',
    multiple_consumers => FALSE,
    comment            => 'orapush: RAW JSON envelopes');
EXCEPTION
  WHEN OTHERS THEN
    IF SQLCODE != -24001 THEN RAISE; END IF;  -- ORA-24001: exists already
END;
/
BEGIN
  DBMS_AQADM.CREATE_QUEUE(
    queue_name  => 'ORAPUSH_Q',
    queue_table => 'ORAPUSH_QT',
    max_retries => 5,
    retry_delay => 0,
    comment     => 'orapush: messages for browsers');
EXCEPTION
  WHEN OTHERS THEN
    IF SQLCODE != -24006 THEN RAISE; END IF;  -- ORA-24006: exists already
END;
/
BEGIN
  DBMS_AQADM.START_QUEUE(queue_name => 'ORAPUSH_Q');
  -- Dequeue only, so a DBA can inspect or re-enqueue what AQ parked there.
  DBMS_AQADM.START_QUEUE(queue_name => 'AQ$_ORAPUSH_QT_E', enqueue => FALSE, dequeue => TRUE);
END;
/

CREATE OR REPLACE PACKAGE orapush AUTHID DEFINER AS
  -- The DBMS_ALERT the outbox trigger signals on commit; orapush waits on it.
  outbox_alert CONSTANT VARCHAR2(30) := '&&outbox_alert';

  -- Publishes in the caller's transaction: delivered when it commits, gone
  -- if it rolls back. No network call, no ACL.
  PROCEDURE publish(p_channel IN VARCHAR2, p_payload IN CLOB, p_user IN VARCHAR2 DEFAULT NULL);
  -- The same, returning the outbox row id.
  FUNCTION publish_id(p_channel IN VARCHAR2, p_payload IN CLOB, p_user IN VARCHAR2 DEFAULT NULL) RETURN NUMBER;
  -- Enqueues on ORAPUSH_Q (for source kind oracle_aq), in the caller's
  -- transaction. The envelope is UTF-8 whatever the database character
  -- set, and at most 32,767 bytes.
  PROCEDURE publish_aq(p_channel IN VARCHAR2, p_payload IN VARCHAR2, p_user IN VARCHAR2 DEFAULT NULL);
  FUNCTION publish_aq_id(p_channel IN VARCHAR2, p_payload IN VARCHAR2, p_user IN VARCHAR2 DEFAULT NULL) RETURN RAW;

  -- For orapush itself. The single-drainer lock, in two steps so that a
  -- standby's wait writes nothing: the handle of a lock name (allocated
  -- autonomously: no commit forced on the caller; each call pushes the
  -- name's expiration, 10 days after the last allocation, forward), then a
  -- request that waits up to p_wait_seconds. DBMS_LOCK.REQUEST's answer:
  -- 0 granted, 1 timed out (another session holds it), 4 already held by
  -- this session.
  FUNCTION drainer_lock_handle(p_name IN VARCHAR2) RETURN VARCHAR2;
  FUNCTION request_drainer_lock(p_handle IN VARCHAR2, p_wait_seconds IN NUMBER) RETURN NUMBER;
  -- Both steps at once.
  FUNCTION lock_drainer(p_name IN VARCHAR2, p_wait_seconds IN NUMBER) RETURN NUMBER;
  -- lock_drainer without waiting.
  FUNCTION try_lock_drainer(p_name IN VARCHAR2) RETURN NUMBER;
  -- For orapush itself: moves an outbox row to the dead-letter table.
  PROCEDURE dead_letter(p_id IN NUMBER, p_reason IN VARCHAR2);
  -- For orapush itself: keeps a poison AQ message (dequeued in the
  -- caller's transaction) in ORAPUSH_AQ_DEAD_LETTER.
  PROCEDURE dead_letter_aq(p_msgid IN RAW, p_payload IN RAW, p_reason IN VARCHAR2);
  -- For orapush itself, on a session of its own: waits up to p_wait_seconds
  -- for a commit that inserted outbox rows. 0 signalled, 1 timed out.
  -- DBMS_ALERT.WAITONE commits, so never call it on a session with work.
  FUNCTION wait_for_outbox(p_wait_seconds IN NUMBER) RETURN NUMBER;
  -- For orapush itself: messages AQ moved to the exception queue.
  FUNCTION exception_queue_count RETURN NUMBER;
  -- For orapush's status page: messages waiting in ORAPUSH_Q.
  FUNCTION queue_backlog RETURN NUMBER;
END orapush;
/
-- A package that compiled with errors makes every call fail (ORA-04063):
-- stop here instead.
BEGIN
  FOR e IN (SELECT name, type, line, text FROM user_errors
             WHERE name = 'ORAPUSH' AND type = 'PACKAGE' AND attribute = 'ERROR' ORDER BY sequence) LOOP
    RAISE_APPLICATION_ERROR(-20100, 'ORAPUSH package spec: line ' || e.line || ': ' || e.text);
  END LOOP;
END;
/

CREATE OR REPLACE PACKAGE BODY orapush AS
  FUNCTION publish_id(p_channel IN VARCHAR2, p_payload IN CLOB, p_user IN VARCHAR2 DEFAULT NULL) RETURN NUMBER IS
    l_id NUMBER;
  BEGIN
    INSERT INTO orapush_outbox (channel, payload, target_user)
    VALUES (p_channel, p_payload, p_user)
    RETURNING id INTO l_id;
    RETURN l_id;
  END publish_id;

  PROCEDURE publish(p_channel IN VARCHAR2, p_payload IN CLOB, p_user IN VARCHAR2 DEFAULT NULL) IS
    l_id NUMBER;
  BEGIN
    l_id := publish_id(p_channel, p_payload, p_user);
  END publish;

  FUNCTION publish_aq_id(p_channel IN VARCHAR2, p_payload IN VARCHAR2, p_user IN VARCHAR2 DEFAULT NULL) RETURN RAW IS
    l_envelope JSON_OBJECT_T := JSON_OBJECT_T();
    l_options  DBMS_AQ.ENQUEUE_OPTIONS_T;     -- visibility ON_COMMIT: part of the caller's transaction
    l_props    DBMS_AQ.MESSAGE_PROPERTIES_T;
    l_msgid    RAW(16);
  BEGIN
    l_envelope.put('channel', p_channel);
    l_envelope.put('payload', p_payload);
    IF p_user IS NULL THEN
      l_envelope.put_null('user');
    ELSE
      l_envelope.put('user', p_user);
    END IF;
    DBMS_AQ.ENQUEUE(
      queue_name         => $$PLSQL_UNIT_OWNER || '.ORAPUSH_Q',
      enqueue_options    => l_options,
      message_properties => l_props,
      -- UTL_RAW.CAST_TO_RAW would keep the database character set's bytes
      -- (WE8MSWIN1252 on many upgraded 19c databases), which orapush must
      -- refuse as not UTF-8: convert explicitly.
      payload            => UTL_I18N.STRING_TO_RAW(l_envelope.to_string, 'AL32UTF8'),
      msgid              => l_msgid);
    RETURN l_msgid;
  END publish_aq_id;

  PROCEDURE publish_aq(p_channel IN VARCHAR2, p_payload IN VARCHAR2, p_user IN VARCHAR2 DEFAULT NULL) IS
    l_msgid RAW(16);
  BEGIN
    l_msgid := publish_aq_id(p_channel, p_payload, p_user);
  END publish_aq;

  FUNCTION drainer_lock_handle(p_name IN VARCHAR2) RETURN VARCHAR2 IS
    l_handle VARCHAR2(128);
  BEGIN
    -- Upper-cased, so "orapush:orapush.x" and "ORAPUSH:ORAPUSH.X" are one lock.
    DBMS_LOCK.ALLOCATE_UNIQUE_AUTONOMOUS(lockname => UPPER(p_name), lockhandle => l_handle);
    RETURN l_handle;
  END drainer_lock_handle;

  FUNCTION request_drainer_lock(p_handle IN VARCHAR2, p_wait_seconds IN NUMBER) RETURN NUMBER IS
  BEGIN
    RETURN DBMS_LOCK.REQUEST(
      lockhandle        => p_handle,
      lockmode          => DBMS_LOCK.X_MODE,
      timeout           => GREATEST(0, TRUNC(p_wait_seconds)),
      release_on_commit => FALSE);
  END request_drainer_lock;

  FUNCTION lock_drainer(p_name IN VARCHAR2, p_wait_seconds IN NUMBER) RETURN NUMBER IS
  BEGIN
    RETURN request_drainer_lock(drainer_lock_handle(p_name), p_wait_seconds);
  END lock_drainer;

  FUNCTION try_lock_drainer(p_name IN VARCHAR2) RETURN NUMBER IS
  BEGIN
    RETURN lock_drainer(p_name, 0);
  END try_lock_drainer;

  PROCEDURE dead_letter(p_id IN NUMBER, p_reason IN VARCHAR2) IS
  BEGIN
    INSERT INTO orapush_dead_letter (id, channel, payload, target_user, created_at, reason)
    SELECT id, channel, payload, target_user, created_at, SUBSTRB(p_reason, 1, 4000)
      FROM orapush_outbox
     WHERE id = p_id;
    DELETE FROM orapush_outbox WHERE id = p_id;
  END dead_letter;

  PROCEDURE dead_letter_aq(p_msgid IN RAW, p_payload IN RAW, p_reason IN VARCHAR2) IS
    l_payload BLOB;
  BEGIN
    -- Written through DBMS_LOB: a RAW bind over 2,000 bytes may not convert
    -- to a BLOB inside SQL.
    INSERT INTO orapush_aq_dead_letter (msgid, payload, reason)
    VALUES (p_msgid, EMPTY_BLOB(), SUBSTRB(p_reason, 1, 4000))
    RETURNING payload INTO l_payload;
    IF UTL_RAW.LENGTH(p_payload) > 0 THEN
      DBMS_LOB.WRITEAPPEND(l_payload, UTL_RAW.LENGTH(p_payload), p_payload);
    END IF;
  END dead_letter_aq;

  FUNCTION wait_for_outbox(p_wait_seconds IN NUMBER) RETURN NUMBER IS
    l_message VARCHAR2(1800);
    l_status  INTEGER;
  BEGIN
    -- Registering again is harmless; a signal committed since the last wait
    -- is kept for this session and ends the next WAITONE at once.
    DBMS_ALERT.REGISTER(outbox_alert);
    DBMS_ALERT.WAITONE(outbox_alert, l_message, l_status, GREATEST(0, p_wait_seconds));
    RETURN l_status;
  END wait_for_outbox;

  FUNCTION exception_queue_count RETURN NUMBER IS
    l_count NUMBER;
  BEGIN
    SELECT COUNT(*) INTO l_count FROM aq$orapush_qt WHERE queue = 'AQ$_ORAPUSH_QT_E';
    RETURN l_count;
  END exception_queue_count;

  FUNCTION queue_backlog RETURN NUMBER IS
    l_count NUMBER;
  BEGIN
    SELECT COUNT(*) INTO l_count FROM aq$orapush_qt WHERE queue = 'ORAPUSH_Q';
    RETURN l_count;
  END queue_backlog;
END orapush;
/
BEGIN
  FOR e IN (SELECT name, type, line, text FROM user_errors
             WHERE name = 'ORAPUSH' AND type = 'PACKAGE BODY' AND attribute = 'ERROR' ORDER BY sequence) LOOP
    RAISE_APPLICATION_ERROR(-20100, 'ORAPUSH package body: line ' || e.line || ': ' || e.text);
  END LOOP;
END;
/

-- The commit-time wake-up: one alert per inserting statement (statement
-- level, so a bulk insert signals once). DBMS_ALERT delivers the signal
-- when the inserting transaction commits and drops it on a rollback. The
-- trigger runs with the owner's rights, so publishers need no grant on
-- DBMS_ALERT. Concurrent signalling transactions wait for each other's
-- commit (see the README); to go back to polling alone:
--   ALTER TRIGGER orapush_outbox_wakeup DISABLE;
-- Created disabled, with the alert name as a literal (no dependency on the
-- package), and enabled only once it compiled: an invalid trigger would
-- make every INSERT into the outbox fail (ORA-04098).
CREATE OR REPLACE TRIGGER orapush_outbox_wakeup
  AFTER INSERT ON orapush_outbox
  DISABLE
BEGIN
  DBMS_ALERT.SIGNAL('&&outbox_alert', NULL);
END;
/
BEGIN
  FOR e IN (SELECT name, type, line, text FROM user_errors
             WHERE name = 'ORAPUSH_OUTBOX_WAKEUP' AND type = 'TRIGGER' AND attribute = 'ERROR'
             ORDER BY sequence) LOOP
    RAISE_APPLICATION_ERROR(-20100, 'ORAPUSH_OUTBOX_WAKEUP trigger: line ' || e.line || ': ' || e.text);
  END LOOP;
END;
/
ALTER TRIGGER orapush_outbox_wakeup ENABLE;

-- The service user: read and delete outbox rows (SELECT allows FOR UPDATE),
-- read the dead letters, dequeue, and call the package (drain lock, dead
-- letters, the wake-up wait). Nothing more.
GRANT SELECT, DELETE ON orapush_outbox TO &&app_user;
-- Read-only, for orapush's status page (the dead letters of the last hour).
GRANT SELECT ON orapush_dead_letter TO &&app_user;
GRANT SELECT ON orapush_aq_dead_letter TO &&app_user;
GRANT EXECUTE ON orapush TO &&app_user;
BEGIN
  DBMS_AQADM.GRANT_QUEUE_PRIVILEGE(
    privilege    => 'DEQUEUE',
    queue_name   => 'ORAPUSH_Q',
    grantee      => '&&app_user',
    grant_option => FALSE);
END;
/

PROMPT orapush installed: ORAPUSH_OUTBOX (with its wake-up trigger), ORAPUSH_DEAD_LETTER, ORAPUSH_AQ_DEAD_LETTER, package ORAPUSH, queue ORAPUSH_Q
