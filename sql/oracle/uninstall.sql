-- orapush: removes the outbox, the package and the queue. Run as the owner.
-- Idempotent. WARNING: drops undelivered rows, queued messages and dead
-- letters (the outbox's wake-up trigger goes with its table). The users
-- stay (drop them as a DBA: DROP USER orapush_app; DROP USER orapush CASCADE;).
SET SERVEROUTPUT ON
WHENEVER SQLERROR EXIT FAILURE

BEGIN
  BEGIN
    DBMS_AQADM.STOP_QUEUE(queue_name => 'ORAPUSH_Q');
  EXCEPTION
    WHEN OTHERS THEN IF SQLCODE != -24010 THEN RAISE; END IF;  -- no such queue
  END;
  BEGIN
    DBMS_AQADM.DROP_QUEUE_TABLE(queue_table => 'ORAPUSH_QT', force => TRUE);
  EXCEPTION
    WHEN OTHERS THEN IF SQLCODE != -24002 THEN RAISE; END IF;  -- no such queue table
  END;
END;
/

BEGIN
  FOR o IN (SELECT object_name, object_type FROM user_objects
             WHERE (object_name, object_type) IN (('ORAPUSH', 'PACKAGE'),
                                                  ('ORAPUSH_OUTBOX', 'TABLE'),
                                                  ('ORAPUSH_DEAD_LETTER', 'TABLE'),
                                                  ('ORAPUSH_AQ_DEAD_LETTER', 'TABLE'))) LOOP
    EXECUTE IMMEDIATE 'DROP ' || o.object_type || ' ' || o.object_name
      || CASE o.object_type WHEN 'TABLE' THEN ' PURGE' END;
  END LOOP;
END;
/

PROMPT orapush uninstalled
