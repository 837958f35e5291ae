-- orapush: the embedded SQLite outbox (created by orapush on first start).
-- Publish with:
--   INSERT INTO orapush_outbox(channel, payload) VALUES ('emp', '{"message":"REFRESH"}');
CREATE TABLE IF NOT EXISTS orapush_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    channel     TEXT NOT NULL,
    payload     TEXT NOT NULL,
    target_user TEXT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);

-- Rows that can never be delivered (bad channel name, payload too large),
-- moved here with the reason so they never block the rows behind them.
CREATE TABLE IF NOT EXISTS orapush_dead_letter (
    id          INTEGER PRIMARY KEY,
    channel     TEXT NOT NULL,
    payload     TEXT NOT NULL,
    target_user TEXT NULL,
    created_at  TEXT NOT NULL,
    failed_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    reason      TEXT NOT NULL
);
