-- orapush: removes the PostgreSQL outbox. Idempotent.
-- WARNING: drops undelivered rows and the dead letters with them.
--   psql "postgres://user@host/db" -f sql/postgres/uninstall.sql
DROP TABLE IF EXISTS orapush_outbox;        -- its NOTIFY trigger goes with it
DROP TABLE IF EXISTS orapush_dead_letter;
DROP FUNCTION IF EXISTS orapush_notify();
