//! The embedded SQLite outbox: the default source, needing no server.
//!
//! A DBA's `sqlite3` INSERT must not fail with "database is locked", and the
//! `sqlite3` shell waits 0 ms for a lock by default. So the drainer holds
//! SQLite's write lock as briefly as it can: the claim is a plain read (WAL
//! mode: readers never block writers), and only the final delete + commit
//! (`BEGIN IMMEDIATE`, well under a millisecond for a batch) takes the lock.
//! The hand-over to the hub happens with no lock held.
//!
//! Because the claim takes no lock, one process must own the outbox: the
//! drainer holds an exclusive lock on `<path>.drain-lock` for as long as it
//! runs (released by the kernel if the process dies); a second orapush on
//! the same file stands by and takes over when the first stops.
//!
//! **Waking on commit.** The drainer does not poll a busy loop: it watches
//! the database's directory (inotify, through the `notify` crate) for
//! writes to the database or its WAL file, and on each asks SQLite whether
//! another connection committed (`PRAGMA data_version` changes only then,
//! so the drainer's own deletes never wake it). A commit by `sqlite3`,
//! `orapush publish` or an application is claimed at once; a slow poll
//! (`source.poll_interval_ms`, 1 s by default) catches anything a
//! filesystem without change events (NFS) cannot report.
//!
//! SQLite types are dynamic, so a DBA can put a number or a BLOB in
//! `payload`; rows are read with text conversion (lossy for invalid UTF-8)
//! so that no row can make the claim query fail and block the outbox.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tracing::{debug, warn};

use super::{
    DeadLetter, DeadLetterInfo, OutboxStore, Publisher, SourceError, Stopper, StoreStats, Woken,
    DEAD_LETTERS_SHOWN,
};
use crate::config::SqliteSettings;
use crate::message::{validate_channel, OutboxRow};

const SCHEMA: &str = include_str!("../../sql/sqlite/schema.sql");

const CLAIM_SQL: &str = "SELECT id, channel, payload, target_user, \
     (julianday('now') - julianday(created_at)) * 86400.0 \
     FROM orapush_outbox ORDER BY id LIMIT ?1";

const DEAD_LETTER_SQL: &str = "INSERT OR REPLACE INTO orapush_dead_letter \
     (id, channel, payload, target_user, created_at, reason) \
     SELECT id, channel, CAST(payload AS TEXT), target_user, created_at, ?2 FROM orapush_outbox WHERE id = ?1";

/// How long after a file event the drainer keeps checking whether a commit
/// became visible (see `wait_for_work`). A commit is published in the WAL
/// index microseconds after its WAL write, unless the writer is preempted
/// in between: on a loaded machine that can outlast the 50 ms this once
/// was (most likely why one CI run's commit waited for the slow poll).
/// The rechecks double from 100 µs, so a second of settling costs about
/// 14 reads of `PRAGMA data_version`.
const COMMIT_SETTLE: Duration = Duration::from_secs(1);

pub struct SqliteOutbox {
    conn: Connection,
    path: PathBuf,
    /// Held while this process drains the file (see the module doc).
    _drain_lock: Option<std::fs::File>,
    /// The drainer's watch on the file (started by the first wait).
    watch: Option<CommitWatch>,
    /// `PRAGMA data_version` when the drainer last looked.
    data_version: i64,
    /// The bell's rings when the drainer last looked: a ring during a pass
    /// (a commit perhaps not visible yet) is settled at the next wait.
    rings_seen: u64,
}

/// The file watch that rings the drainer's bell when the database or its
/// WAL is written (see the module doc). Dropping it stops the watch.
struct CommitWatch {
    _watcher: Option<notify::RecommendedWatcher>,
}

impl CommitWatch {
    /// Watches `path`'s directory for writes to `path` and `path-wal`. When
    /// the platform cannot watch, the slow poll alone remains (logged once).
    fn start(path: &Path, bell: Stopper) -> Self {
        use notify::{EventKind, RecursiveMode, Watcher};
        // The real file: SQLite writes its WAL beside it, not beside a link.
        let absolute = std::fs::canonicalize(path)
            .or_else(|_| std::path::absolute(path))
            .unwrap_or_else(|_| path.to_path_buf());
        let dir = absolute.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let Some(name) = absolute.file_name().map(|n| n.to_os_string()) else {
            return Self { _watcher: None };
        };
        let mut wal_name = name.clone();
        wal_name.push("-wal");
        let watched = move |p: &Path| p.file_name().is_some_and(|f| f == name || f == wal_name);
        let handler = move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                let write = matches!(event.kind, EventKind::Modify(_) | EventKind::Create(_));
                if write && event.paths.iter().any(|p| watched(p)) {
                    bell.ring();
                }
            }
        };
        let started = notify::recommended_watcher(handler)
            .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        match started {
            Ok(watcher) => {
                debug!(dir = %dir.display(), "watching the SQLite outbox for commits");
                Self { _watcher: Some(watcher) }
            }
            Err(e) => {
                warn!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot watch the SQLite outbox for commits; new rows are found by the poll alone (source.poll_interval_ms)"
                );
                Self { _watcher: None }
            }
        }
    }
}

/// The lock file beside the outbox that the one drainer holds.
fn drain_lock_path(path: &Path) -> String {
    format!("{}.drain-lock", path.display())
}

impl SqliteOutbox {
    /// Opens (and creates, with its tables) the outbox file, to publish.
    pub fn open(settings: &SqliteSettings) -> Result<Self, SourceError> {
        Self::open_path(&settings.path, Duration::from_millis(settings.busy_timeout_ms))
    }

    /// Opens the outbox to drain it, once it holds the single-drainer lock
    /// (taken first, so a standby never touches the database itself).
    pub fn open_for_draining(settings: &SqliteSettings) -> Result<Self, SourceError> {
        let lock_path = drain_lock_path(&settings.path);
        let cannot_create = |e: std::io::Error| {
            let outbox = settings.path.display();
            SourceError::fatal(format!(
                "cannot create the drain lock {lock_path} beside `sqlite.path` = {outbox}: {e}"
            ))
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(cannot_create)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SourceError::standby(format!(
                    "another orapush drains `sqlite.path` = {} (it holds {lock_path})",
                    settings.path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(SourceError::fatal(format!("cannot lock {lock_path}: {e}")))
            }
        }
        let mut outbox = Self::open(settings)?;
        outbox._drain_lock = Some(file);
        Ok(outbox)
    }

    /// True when an orapush holds the file's drain lock right now (for
    /// `orapush publish`'s warning). Takes nothing: a free lock is released
    /// at once.
    pub fn drainer_running(path: &Path) -> bool {
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(drain_lock_path(path)) else {
            return false;
        };
        matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
    }

    pub fn open_path(path: &Path, busy_timeout: Duration) -> Result<Self, SourceError> {
        let context = |e: rusqlite::Error| {
            let message = format!("cannot open the SQLite outbox at `sqlite.path` = {}: {e}", path.display());
            if is_lock_conflict(&e) {
                // Another connection (an `orapush publish` creating the
                // file, a DBA's session) holds a lock that SQLite would not
                // wait for: it clears up, so the drainer retries.
                SourceError::transient(format!(
                    "{message} (if this lasts: another process holds the file locked, or its file \
                     system has no working locks, as on some NFS or SMB mounts)"
                ))
            } else {
                SourceError::fatal(message)
            }
        };
        let conn = Connection::open(path).map_err(context)?;
        conn.busy_timeout(busy_timeout).map_err(context)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(context)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(context)?;
        conn.execute_batch(SCHEMA).map_err(context)?;
        let data_version = conn.query_row("PRAGMA data_version", [], |r| r.get(0)).map_err(context)?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            _drain_lock: None,
            watch: None,
            data_version,
            rings_seen: 0,
        })
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

/// `SQLITE_BUSY` or `SQLITE_LOCKED`. SQLite returns these without waiting
/// out `busy_timeout` where waiting could deadlock: two connections opening
/// a new file at once, both switching it to WAL and creating its tables.
fn is_lock_conflict(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
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
        // A plain read: no lock is held while the rows go to the hub.
        let mut stmt = self.conn.prepare_cached(CLAIM_SQL).map_err(|e| Self::error("claim", e))?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(OutboxRow {
                    id: r.get(0)?,
                    message_id: None,
                    defect: None,
                    channel: text(r.get_ref(1)?).unwrap_or_default(),
                    payload: text(r.get_ref(2)?).unwrap_or_default(),
                    target_user: text(r.get_ref(3)?),
                    age_seconds: r.get::<_, Option<f64>>(4)?.unwrap_or(0.0).max(0.0),
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| Self::error("claim", e))?;
        Ok(rows)
    }

    fn complete(&mut self, handed_over: &[i64], dead: &[DeadLetter]) -> Result<(), SourceError> {
        let result = (|| {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
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
            Ok(()) => Ok(()),
            Err(e) => {
                self.abort();
                Err(Self::error("complete", e))
            }
        }
    }

    fn abort(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Returns as soon as another connection committed (the file watch
    /// rings, `PRAGMA data_version` confirms), or after `timeout` (the slow
    /// poll), or when stopped. A ring for the drainer's own commit is
    /// checked and slept through.
    ///
    /// A writer appends its commit to the WAL file (the watch sees that) and
    /// only then publishes it in the WAL index, a shared memory map that no
    /// file event reports. So a ring whose commit is not visible yet is
    /// checked again a few times over [`COMMIT_SETTLE`] before the drainer
    /// goes back to sleep.
    fn wait_for_work(&mut self, timeout: Duration, stop: &Stopper) -> Result<(), SourceError> {
        if self.watch.is_none() {
            self.watch = Some(CommitWatch::start(&self.path, stop.clone()));
        }
        let deadline = Instant::now() + timeout;
        // While a ring is being settled: when it rang and the next recheck.
        // A ring since the last wait (during the pass) is settled too.
        let mut settling: Option<(Instant, Duration)> =
            (stop.rings() != self.rings_seen).then(|| (Instant::now(), Duration::from_micros(100)));
        loop {
            // Read the bell before the version: a commit after the version
            // was read rings after this reading, so it is never slept through.
            let rings = stop.rings();
            self.rings_seen = rings;
            let version: i64 = self
                .conn
                .query_row("PRAGMA data_version", [], |r| r.get(0))
                .map_err(|e| Self::error("data_version", e))?;
            if version != self.data_version {
                self.data_version = version;
                return Ok(());
            }
            let mut left = deadline.saturating_duration_since(Instant::now());
            if let Some((rang, recheck)) = settling {
                if rang.elapsed() < COMMIT_SETTLE {
                    left = left.min(recheck);
                    settling = Some((rang, recheck * 2));
                } else {
                    settling = None;
                }
            }
            match stop.sleep_until_rung(rings, left) {
                Woken::Rung => settling = Some((Instant::now(), Duration::from_micros(100))),
                Woken::TimedOut if Instant::now() < deadline => {}
                Woken::Stopped | Woken::TimedOut => return Ok(()),
            }
        }
    }

    fn stats(&mut self) -> Result<StoreStats, SourceError> {
        let (backlog, oldest_seconds) = self
            .conn
            .query_row(
                "SELECT count(*), coalesce((julianday('now') - julianday(min(created_at))) * 86400.0, 0) \
                 FROM orapush_outbox",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?)),
            )
            .map_err(|e| Self::error("count the backlog", e))?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, channel, reason, strftime('%Y-%m-%dT%H:%M:%SZ', failed_at) FROM orapush_dead_letter \
                 WHERE failed_at >= strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 hour') \
                 ORDER BY failed_at DESC, id DESC LIMIT ?1",
            )
            .map_err(|e| Self::error("list dead letters", e))?;
        let dead_letters = stmt
            .query_map([DEAD_LETTERS_SHOWN as i64], |r| {
                Ok(DeadLetterInfo {
                    id: r.get::<_, i64>(0)?.to_string(),
                    channel: r.get(1)?,
                    reason: r.get(2)?,
                    failed_at: r.get(3)?,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| Self::error("list dead letters", e))?;
        Ok(StoreStats {
            backlog: backlog.max(0) as u64,
            oldest_seconds: Some(oldest_seconds.max(0.0)),
            dead_letters,
        })
    }
}

impl Publisher for SqliteOutbox {
    fn publish(&mut self, channel: &str, payload: &str, user: Option<&str>) -> Result<String, SourceError> {
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
        Ok(id.to_string())
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

    /// Claiming without completing leaves every row in place.
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
        let id: i64 = o.publish("c", "x", None).unwrap().parse().unwrap();
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

    /// A second drainer on the same file stands by; the lock goes with the first.
    #[test]
    fn one_drainer_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SqliteSettings { path: dir.path().join("o.db"), busy_timeout_ms: 1000 };
        let first = SqliteOutbox::open_for_draining(&settings).unwrap();
        let err = SqliteOutbox::open_for_draining(&settings).err().expect("second drainer refused");
        assert!(
            err.class == crate::source::ErrorClass::Standby && err.message.contains("another orapush"),
            "{err}"
        );
        drop(first);
        assert!(SqliteOutbox::open_for_draining(&settings).is_ok());
    }

    /// The claim holds no write lock: a writer with no busy timeout succeeds while rows are claimed.
    #[test]
    fn claim_does_not_block_writers() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(&dir);
        o.publish("c", "x", None).unwrap();
        let rows = o.claim(10).unwrap();
        let other = Connection::open(dir.path().join("o.db")).unwrap();
        other.busy_timeout(Duration::ZERO).unwrap();
        other.execute("INSERT INTO orapush_outbox(channel, payload) VALUES ('c', 'y')", []).unwrap();
        o.complete(&[rows[0].id], &[]).unwrap();
        assert_eq!(o.backlog().unwrap(), 1);
    }

    /// A file another connection holds locked is a transient error (the
    /// drainer retries), and opens once the lock is gone.
    #[test]
    fn a_locked_file_is_transient() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN EXCLUSIVE; CREATE TABLE t(x);").unwrap();
        let err = match SqliteOutbox::open_path(&path, Duration::ZERO) {
            Err(e) => e,
            Ok(_) => panic!("opened a file another connection holds locked"),
        };
        assert!(err.class == crate::source::ErrorClass::Transient && err.message.contains("locked"), "{err}");
        holder.execute_batch("COMMIT").unwrap();
        assert!(SqliteOutbox::open_path(&path, Duration::ZERO).is_ok());
    }

    /// A standby never opens the database: while another holds the drain
    /// lock, a second drainer stands by even if the file cannot be opened.
    #[test]
    fn a_standby_does_not_open_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        std::fs::create_dir(&path).unwrap();
        let held = std::fs::File::create(drain_lock_path(&path)).unwrap();
        held.try_lock().unwrap();
        let settings = SqliteSettings { path, busy_timeout_ms: 0 };
        let err = SqliteOutbox::open_for_draining(&settings).err().expect("a standby, not a drainer");
        assert_eq!(err.class, crate::source::ErrorClass::Standby, "{err}");
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
