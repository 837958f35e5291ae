//! The embedded SQLite outbox: the default source, needing no server.
//!
//! The file is opened in WAL mode with a busy timeout, so a DBA's `sqlite3`
//! INSERT while orapush drains waits for the lock instead of failing with
//! "database is locked". A pass holds the write lock (`BEGIN IMMEDIATE`) from
//! claim to commit, which keeps two orapush processes on one file from
//! claiming the same rows.
//!
//! SQLite types are dynamic, so a DBA can put a number or a BLOB in
//! `payload`; rows are read with text conversion (lossy for invalid UTF-8)
//! so that no row can make the claim query fail and block the outbox.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{DeadLetter, OutboxStore, Publisher, SourceError};
use crate::config::SqliteSettings;
use crate::message::{validate_channel, OutboxRow};

const SCHEMA: &str = include_str!("../../sql/sqlite/schema.sql");

const CLAIM_SQL: &str = "SELECT id, channel, payload, target_user, \
     (julianday('now') - julianday(created_at)) * 86400.0 \
     FROM orapush_outbox ORDER BY id LIMIT ?1";

const DEAD_LETTER_SQL: &str = "INSERT OR REPLACE INTO orapush_dead_letter \
     (id, channel, payload, target_user, created_at, reason) \
     SELECT id, channel, CAST(payload AS TEXT), target_user, created_at, ?2 FROM orapush_outbox WHERE id = ?1";

pub struct SqliteOutbox {
    conn: Connection,
    in_transaction: bool,
}

impl SqliteOutbox {
    /// Opens (and creates, with its tables) the outbox file.
    pub fn open(settings: &SqliteSettings) -> Result<Self, SourceError> {
        Self::open_path(&settings.path, Duration::from_millis(settings.busy_timeout_ms))
    }

    pub fn open_path(path: &Path, busy_timeout: Duration) -> Result<Self, SourceError> {
        let context = |e: rusqlite::Error| {
            SourceError::fatal(format!(
                "cannot open the SQLite outbox at `sqlite.path` = {}: {e}",
                path.display()
            ))
        };
        let conn = Connection::open(path).map_err(context)?;
        conn.busy_timeout(busy_timeout).map_err(context)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(context)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(context)?;
        conn.execute_batch(SCHEMA).map_err(context)?;
        Ok(Self { conn, in_transaction: false })
    }

    fn error(context: &str, e: rusqlite::Error) -> SourceError {
        // Every runtime SQLite error (busy past the timeout, a dropped table,
        // a full disk) may clear up; the drainer backs off and retries.
        SourceError::transient(format!("sqlite {context}: {e}"))
    }

    /// Rows waiting in the outbox (for tests and diagnostics).
    pub fn backlog(&self) -> Result<i64, SourceError> {
        self.conn
            .query_row("SELECT count(*) FROM orapush_outbox", [], |r| r.get(0))
            .map_err(|e| Self::error("count", e))
    }

    /// The reason a dead letter was recorded with, if any.
    pub fn dead_letter_reason(&self, id: i64) -> Result<Option<String>, SourceError> {
        self.conn
            .query_row("SELECT reason FROM orapush_dead_letter WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(|e| Self::error("read dead letter", e))
    }
}

fn text(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

impl OutboxStore for SqliteOutbox {
    fn claim(&mut self, limit: usize) -> Result<Vec<OutboxRow>, SourceError> {
        self.abort();
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| Self::error("begin", e))?;
        self.in_transaction = true;
        let mut stmt = self.conn.prepare_cached(CLAIM_SQL).map_err(|e| Self::error("claim", e))?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(OutboxRow {
                    id: r.get(0)?,
                    channel: text(r.get_ref(1)?).unwrap_or_default(),
                    payload: text(r.get_ref(2)?).unwrap_or_default(),
                    target_user: text(r.get_ref(3)?),
                    age_seconds: r.get::<_, Option<f64>>(4)?.unwrap_or(0.0).max(0.0),
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| Self::error("claim", e))?;
        drop(stmt);
        if rows.is_empty() {
            self.abort();
        }
        Ok(rows)
    }

    fn complete(&mut self, handed_over: &[i64], dead: &[DeadLetter]) -> Result<(), SourceError> {
        let result = (|| {
            let mut move_dead = self.conn.prepare_cached(DEAD_LETTER_SQL)?;
            for d in dead {
                move_dead.execute(params![d.row.id, d.reason])?;
            }
            let mut delete = self.conn.prepare_cached("DELETE FROM orapush_outbox WHERE id = ?1")?;
            for id in handed_over.iter().chain(dead.iter().map(|d| &d.row.id)) {
                delete.execute([id])?;
            }
            self.conn.execute_batch("COMMIT")
        })();
        match result {
            Ok(()) => {
                self.in_transaction = false;
                Ok(())
            }
            Err(e) => {
                self.abort();
                Err(Self::error("complete", e))
            }
        }
    }

    fn abort(&mut self) {
        if self.in_transaction || !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.in_transaction = false;
    }
}

impl Publisher for SqliteOutbox {
    fn publish(&mut self, channel: &str, payload: &str, user: Option<&str>) -> Result<i64, SourceError> {
        validate_channel(channel).map_err(|e| SourceError::fatal(e.to_string()))?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Self::error("begin", e))?;
        tx.execute(
            "INSERT INTO orapush_outbox (channel, payload, target_user) VALUES (?1, ?2, ?3)",
            params![channel, payload, user],
        )
        .map_err(|e| Self::error("insert", e))?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(|e| Self::error("commit", e))?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir) -> SqliteOutbox {
        SqliteOutbox::open_path(&dir.path().join("o.db"), Duration::from_secs(5)).unwrap()
    }

    /// Claim returns rows in id order, at most `limit`, and complete deletes them.
    #[test]
    fn claim_in_order_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(&dir);
        for i in 0..5 {
            o.publish("c", &format!("p{i}"), None).unwrap();
        }
        let rows = o.claim(3).unwrap();
        assert_eq!(rows.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>(), ["p0", "p1", "p2"]);
        o.complete(&[rows[0].id, rows[1].id, rows[2].id], &[]).unwrap();
        assert_eq!(o.backlog().unwrap(), 2);
    }

    /// Abort leaves every claimed row in place.
    #[test]
    fn abort_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(&dir);
        o.publish("c", "x", None).unwrap();
        assert_eq!(o.claim(10).unwrap().len(), 1);
        o.abort();
        assert_eq!(o.backlog().unwrap(), 1);
    }

    /// A number or a BLOB in `payload` is read as text instead of failing the claim.
    #[test]
    fn odd_types_do_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(&dir);
        o.conn.execute("INSERT INTO orapush_outbox(channel, payload) VALUES ('c', 42)", []).unwrap();
        o.conn.execute("INSERT INTO orapush_outbox(channel, payload) VALUES ('c', x'ff41')", []).unwrap();
        let rows = o.claim(10).unwrap();
        assert_eq!(rows[0].payload, "42");
        assert_eq!(rows[1].payload, "\u{fffd}A");
    }

    /// Dead letters keep the row and the reason, and leave the outbox.
    #[test]
    fn dead_letters_move_with_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(&dir);
        let id = o.publish("c", "x", None).unwrap();
        let rows = o.claim(10).unwrap();
        o.complete(&[], &[DeadLetter { row: rows[0].clone(), reason: "bad".into() }]).unwrap();
        assert_eq!(o.backlog().unwrap(), 0);
        assert_eq!(o.dead_letter_reason(id).unwrap().as_deref(), Some("bad"));
    }

    /// Publishing refuses a bad channel name with a clear error.
    #[test]
    fn publish_validates_channel() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(&dir);
        let err = o.publish("bad channel", "x", None).unwrap_err();
        assert!(err.message.contains("channel"), "{err}");
    }

    /// An unwritable path is a fatal error naming the key.
    #[test]
    fn unopenable_path_is_fatal() {
        let err = match SqliteOutbox::open_path(Path::new("/nonexistent/dir/o.db"), Duration::from_secs(1)) {
            Err(e) => e,
            Ok(_) => panic!("opened a path in a missing directory"),
        };
        assert!(err.is_fatal() && err.message.contains("sqlite.path"), "{err}");
    }
}
