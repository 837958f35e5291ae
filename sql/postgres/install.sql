-- orapush: the PostgreSQL outbox. Idempotent: running it twice is harmless.
--
--   psql "postgres://user@host/db" -f sql/postgres/install.sql
--
-- The objects go into the first schema of the search_path. For another
-- schema: PGOPTIONS='-c search_path=myschema' psql ... -f install.sql
-- orapush runs this same file itself when postgres.create_schema = true.
--
-- Publish with, in any transaction (delivered when it commits):
--   INSERT INTO orapush_outbox (channel, payload) VALUES ('emp', '{"message":"REFRESH"}');

CREATE TABLE IF NOT EXISTS orapush_outbox (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel     TEXT NOT NULL,
    payload     TEXT NOT NULL,
    target_user TEXT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The claim is `ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED`: the primary
-- key's index serves it directly, so it stays cheap on a table with millions
-- of rows. Rows are deleted once delivered; keep autovacuum close behind so
-- dead tuples do not pile up in front of the index scan.
ALTER TABLE orapush_outbox SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000
);

-- Rows that can never be delivered (bad channel name, payload too large),
-- moved here with the reason so they never block the rows behind them.
CREATE TABLE IF NOT EXISTS orapush_dead_letter (
    id          BIGINT PRIMARY KEY,
    channel     TEXT NOT NULL,
    payload     TEXT NOT NULL,
    target_user TEXT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    failed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    reason      TEXT NOT NULL
);

-- Wake orapush at once: one NOTIFY per inserting statement, sent at commit
-- (PostgreSQL folds repeats within a transaction). The argument is the
-- NOTIFY channel; it must equal orapush's postgres.notify_channel.
CREATE OR REPLACE FUNCTION orapush_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS orapush_outbox_notify ON orapush_outbox;
CREATE TRIGGER orapush_outbox_notify
    AFTER INSERT ON orapush_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION orapush_notify('orapush_outbox');
