-- orapush: the Oracle outbox, the ORAPUSH package and the AQ queue.
-- Run as the owner (after grants.sql), in SQL*Plus or SQLcl:
--
--   sqlplus orapush/...@//host:1521/FREEPDB1 @sql/oracle/install.sql
--
-- Idempotent: running it again keeps the data and replaces the package.
-- Needs Oracle 19c or later (identity columns, JSON_OBJECT_T).
SET DEFINE ON
SET VERIFY OFF
SET SERVEROUTPUT ON
DEFINE app_user = ORAPUSH_APP

WHENEVER SQLERROR EXIT SQL.SQLCODE

-- The outbox. Publish with an INSERT (or ORAPUSH.PUBLISH) and a COMMIT.
-- orapush claims rows with an unlimited
--   SELECT ... ORDER BY id FOR UPDATE SKIP LOCKED
-- cursor (fetching one batch) and deletes each row once its message is
-- handed over; the primary key index serves that order.
BEGIN
  EXECUTE IMMEDIATE q'[
    CREATE TABLE orapush_outbox (
      id          NUMBER GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      channel     VARCHAR2(200) NOT NULL,
      payload     CLOB NOT NULL,
      target_user VARCHAR2(200) NULL,
      created_at  TIMESTAMP WITH TIME ZONE DEFAULT SYSTIMESTAMP NOT NULL
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

-- The queue: RAW payloads carrying a JSON envelope
--   {"channel": "...", "payload": "...", "user": null}
-- (rust-oracle reads RAW and object payloads, not JSON or JMS queues).
-- Single consumer: orapush dequeues; one orapush drains at a time.
-- max_retries: a message rolled back that often moves to the exception
-- queue AQ$_ORAPUSH_QT_E, the dead-letter queue (orapush pushes poison
-- messages there).
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
  -- Dequeue only, so a DBA can inspect or re-enqueue poison messages.
  DBMS_AQADM.START_QUEUE(queue_name => 'AQ$_ORAPUSH_QT_E', enqueue => FALSE, dequeue => TRUE);
END;
/

CREATE OR REPLACE PACKAGE orapush AUTHID DEFINER AS
  -- Publishes in the caller's transaction: delivered when it commits, gone
  -- if it rolls back. No network call, no ACL.
  PROCEDURE publish(p_channel IN VARCHAR2, p_payload IN CLOB, p_user IN VARCHAR2 DEFAULT NULL);
  -- The same, returning the outbox row id.
  FUNCTION publish_id(p_channel IN VARCHAR2, p_payload IN CLOB, p_user IN VARCHAR2 DEFAULT NULL) RETURN NUMBER;
  -- Enqueues on ORAPUSH_Q (for source kind oracle_aq), in the caller's
  -- transaction. The payload is at most 32,767 bytes with the envelope.
  PROCEDURE publish_aq(p_channel IN VARCHAR2, p_payload IN VARCHAR2, p_user IN VARCHAR2 DEFAULT NULL);
  FUNCTION publish_aq_id(p_channel IN VARCHAR2, p_payload IN VARCHAR2, p_user IN VARCHAR2 DEFAULT NULL) RETURN RAW;
  -- For orapush itself: the single-drainer lock (0 granted, 4 already held
  -- by this session, 1 held by another session). It COMMITs (allocate_unique).
  FUNCTION try_lock_drainer(p_name IN VARCHAR2) RETURN NUMBER;
  -- For orapush itself: moves an outbox row to the dead-letter table.
  PROCEDURE dead_letter(p_id IN NUMBER, p_reason IN VARCHAR2);
END orapush;
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
      payload            => UTL_RAW.CAST_TO_RAW(l_envelope.to_string),
      msgid              => l_msgid);
    RETURN l_msgid;
  END publish_aq_id;

  PROCEDURE publish_aq(p_channel IN VARCHAR2, p_payload IN VARCHAR2, p_user IN VARCHAR2 DEFAULT NULL) IS
    l_msgid RAW(16);
  BEGIN
    l_msgid := publish_aq_id(p_channel, p_payload, p_user);
  END publish_aq;

  FUNCTION try_lock_drainer(p_name IN VARCHAR2) RETURN NUMBER IS
    l_handle VARCHAR2(128);
  BEGIN
    DBMS_LOCK.ALLOCATE_UNIQUE(lockname => p_name, lockhandle => l_handle);
    RETURN DBMS_LOCK.REQUEST(
      lockhandle        => l_handle,
      lockmode          => DBMS_LOCK.X_MODE,
      timeout           => 0,
      release_on_commit => FALSE);
  END try_lock_drainer;

  PROCEDURE dead_letter(p_id IN NUMBER, p_reason IN VARCHAR2) IS
  BEGIN
    INSERT INTO orapush_dead_letter (id, channel, payload, target_user, created_at, reason)
    SELECT id, channel, payload, target_user, created_at, SUBSTR(p_reason, 1, 4000)
      FROM orapush_outbox
     WHERE id = p_id;
    DELETE FROM orapush_outbox WHERE id = p_id;
  END dead_letter;
END orapush;
/

-- The service user: read and delete outbox rows (SELECT allows FOR UPDATE),
-- dequeue, and call the package (drain lock, dead letters). Nothing more.
GRANT SELECT, DELETE ON orapush_outbox TO &&app_user;
GRANT EXECUTE ON orapush TO &&app_user;
BEGIN
  DBMS_AQADM.GRANT_QUEUE_PRIVILEGE(
    privilege    => 'DEQUEUE',
    queue_name   => 'ORAPUSH_Q',
    grantee      => '&&app_user',
    grant_option => FALSE);
END;
/

PROMPT orapush installed: ORAPUSH_OUTBOX, ORAPUSH_DEAD_LETTER, package ORAPUSH, queue ORAPUSH_Q
