//! Sources: where messages come from, behind one narrow contract.
//!
//! Every outbox database implements [`OutboxStore`]: claim a batch in id
//! order inside a transaction, then delete exactly the rows that were handed
//! to the hub (and move the undeliverable ones to the dead-letter table) and
//! commit. The pass itself, the waiting, the backoff and the hand-over to the
//! async side live once, in [`drain`], for every store.
//!
//! | file | source kind |
//! |---|---|
//! | [`sqlite`] | `sqlite`: the embedded outbox, the default |
//! | [`postgres`] | `postgres`: LISTEN/NOTIFY wake-up, advisory-lock single drainer |
//! | [`oracle::outbox`] | `oracle_outbox`: SKIP LOCKED cursor, DBMS_LOCK single drainer |
//! | [`oracle::aq`] | `oracle_aq`: AQ dequeue of RAW JSON envelopes, exception queue for poison |
//!
//! One active drainer per outbox: a store's `connect` takes the outbox's
//! drain lock, or answers [`ErrorClass::Standby`]; the drainer then waits as
//! a standby and tries again every `source.standby_retry_ms`, or at once
//! when the store waited for the lock itself (Oracle waits inside
//! `DBMS_LOCK.REQUEST`, so it takes over the moment the lock is free).

pub mod drain;
pub mod oracle;
pub mod postgres;
pub mod sqlite;

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Settings, SourceKind};
use crate::message::OutboxRow;

/// The outbox contract. Implementations are blocking and live on the
/// source's own thread.
pub trait OutboxStore {
    /// Claims up to `limit` rows, lowest id first. Stores whose database
    /// can have several drainers lock the rows here (in a transaction that
    /// `complete` commits); a store with one drainer may simply read.
    fn claim(&mut self, limit: usize) -> Result<Vec<OutboxRow>, SourceError>;

    /// Deletes `handed_over`, moves `dead` to the dead-letter table, commits,
    /// all in one transaction.
    fn complete(&mut self, handed_over: &[i64], dead: &[DeadLetter]) -> Result<(), SourceError>;

    /// Gives the claim up (rolls back, if a transaction is open); nothing is deleted.
    fn abort(&mut self);

    /// Returns when new rows may be there: after `timeout`, or sooner when
    /// the database can signal (or `stop` fires).
    fn wait_for_work(&mut self, timeout: Duration, stop: &Stopper) -> Result<(), SourceError> {
        stop.sleep(timeout);
        Ok(())
    }

    /// The backlog and the recent dead letters, for `/api/status` (asked
    /// for only while someone looks, between passes; see [`drain`]).
    fn stats(&mut self) -> Result<StoreStats, SourceError>;
}

/// What `/api/status` shows of the outbox itself.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StoreStats {
    /// Rows (or queued messages) waiting.
    pub backlog: u64,
    /// Age of the oldest waiting row, in seconds (0 when none; None when
    /// the store cannot tell).
    pub oldest_seconds: Option<f64>,
    /// Dead letters of the last hour, newest first, at most [`DEAD_LETTERS_SHOWN`].
    pub dead_letters: Vec<DeadLetterInfo>,
}

/// How many recent dead letters the status shows.
pub const DEAD_LETTERS_SHOWN: usize = 50;

/// One dead letter as the status page lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetterInfo {
    pub id: String,
    pub channel: String,
    pub reason: String,
    /// RFC 3339, UTC.
    pub failed_at: String,
}

/// A row that can never be delivered, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub row: OutboxRow,
    pub reason: String,
}

/// Writes one message into the configured source (`orapush publish`).
pub trait Publisher {
    /// Returns the new message's id (a row id, or an AQ message id in hex).
    fn publish(&mut self, channel: &str, payload: &str, user: Option<&str>) -> Result<String, SourceError>;
}

/// How the drainer reacts to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Reconnect (or retry) with capped exponential backoff.
    Transient,
    /// Configuration or environment is wrong; retrying cannot help. Stop.
    Fatal,
    /// Another instance drains this outbox; wait and try to take over.
    Standby,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub class: ErrorClass,
    pub message: String,
    /// A standby answer given after the store already waited for the lock
    /// (in the database): the drainer asks again at once instead of
    /// sleeping `source.standby_retry_ms`.
    pub waited: bool,
}

impl SourceError {
    fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self { class, message: message.into(), waited: false }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Fatal, message)
    }
    pub fn standby(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Standby, message)
    }
    /// Standby, after a wait for the lock that the store did itself.
    pub fn standby_after_wait(message: impl Into<String>) -> Self {
        Self { waited: true, ..Self::standby(message) }
    }
    pub fn is_fatal(&self) -> bool {
        self.class == ErrorClass::Fatal
    }
}

/// A stop flag that a blocking thread can also sleep on, and the drainer's
/// doorbell: a store whose database can tell it about commits from outside
/// (SQLite's file watch) rings it from another thread, and
/// [`Stopper::sleep_until_rung`] returns at once.
#[derive(Clone, Default)]
pub struct Stopper(Arc<(Mutex<Bell>, Condvar)>);

#[derive(Default)]
struct Bell {
    stopped: bool,
    /// Times rung so far; a sleeper compares it with what it saw before.
    rung: u64,
}

/// Why [`Stopper::sleep_until_rung`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    Stopped,
    Rung,
    TimedOut,
}

impl Stopper {
    fn bell(&self) -> std::sync::MutexGuard<'_, Bell> {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stop(&self) {
        self.bell().stopped = true;
        self.0 .1.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        self.bell().stopped
    }

    /// Sleeps for `timeout` or until stopped; true when stopped.
    pub fn sleep(&self, timeout: Duration) -> bool {
        let guard = self.bell();
        let (guard, _) =
            self.0 .1.wait_timeout_while(guard, timeout, |b| !b.stopped).unwrap_or_else(|p| p.into_inner());
        guard.stopped
    }

    /// Rings the bell (from any thread).
    pub fn ring(&self) {
        self.bell().rung += 1;
        self.0 .1.notify_all();
    }

    /// How often the bell has rung so far (pass it to
    /// [`Stopper::sleep_until_rung`]: a ring after this reading is not missed).
    pub fn rings(&self) -> u64 {
        self.bell().rung
    }

    /// Sleeps until the bell rings after `seen` rings, `timeout` passes, or
    /// the drainer is stopped.
    pub fn sleep_until_rung(&self, seen: u64, timeout: Duration) -> Woken {
        let guard = self.bell();
        let (guard, result) = self
            .0
             .1
            .wait_timeout_while(guard, timeout, |b| !b.stopped && b.rung == seen)
            .unwrap_or_else(|p| p.into_inner());
        if guard.stopped {
            Woken::Stopped
        } else if guard.rung != seen {
            Woken::Rung
        } else {
            debug_assert!(result.timed_out());
            Woken::TimedOut
        }
    }
}

/// Readiness as `/readyz` and `/metrics` report it, plus what `/api/status`
/// shows of the source: its last stats and its last errors.
#[derive(Clone, Default)]
pub struct SourceStatus(Arc<Mutex<StatusInner>>);

#[derive(Clone, Debug, Default)]
pub struct StatusInner {
    pub role: Role,
    /// Why the source is not active, when it is not.
    pub reason: Option<String>,
    /// The last stats the drainer collected, and when (RFC 3339).
    pub stats: Option<(StoreStats, String)>,
    /// The last source errors, oldest first: (RFC 3339 time, message).
    pub errors: VecDeque<(String, String)>,
    /// When `/api/status` last asked for stats; the drainer collects them
    /// only while someone looks.
    wanted: Option<Instant>,
    collected: Option<Instant>,
}

/// Errors kept for the status page.
pub const ERRORS_KEPT: usize = 20;

/// Stats are collected at most this often, and only while asked for
/// within [`STATS_WANTED_FOR`].
const STATS_EVERY: Duration = Duration::from_secs(2);
const STATS_WANTED_FOR: Duration = Duration::from_secs(30);

/// What this instance is doing with its outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Not connected yet, or reconnecting after an error.
    #[default]
    Down,
    /// Connected and draining.
    Active,
    /// Connected, but another instance drains the outbox.
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Down => "down",
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

/// Now, as RFC 3339 in UTC with whole seconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl SourceStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn set(&self, role: Role, reason: Option<&str>) {
        let mut s = self.lock();
        s.role = role;
        s.reason = reason.map(str::to_owned);
        if role != Role::Active {
            // A standby's or a broken source's figures would be stale.
            s.stats = None;
        }
    }
    pub fn set_active(&self) {
        self.set(Role::Active, None);
    }
    pub fn set_standby(&self, why: &str) {
        self.set(Role::Standby, Some(why));
    }
    pub fn set_down(&self, error: &str) {
        self.set(Role::Down, Some(error));
        let mut s = self.lock();
        s.errors.push_back((now_rfc3339(), error.to_owned()));
        while s.errors.len() > ERRORS_KEPT {
            s.errors.pop_front();
        }
    }
    pub fn snapshot(&self) -> StatusInner {
        self.lock().clone()
    }
    /// `/api/status` asks for fresh stats (collected by the drainer).
    pub fn want_stats(&self) {
        self.lock().wanted = Some(Instant::now());
    }
    /// True when the drainer should collect stats now.
    pub fn stats_due(&self) -> bool {
        let s = self.lock();
        s.wanted.is_some_and(|w| w.elapsed() < STATS_WANTED_FOR)
            && s.collected.is_none_or(|c| c.elapsed() >= STATS_EVERY)
    }
    pub fn set_stats(&self, stats: StoreStats) {
        let mut s = self.lock();
        s.stats = Some((stats, now_rfc3339()));
        s.collected = Some(Instant::now());
    }
    /// A failed collection waits its turn like a good one.
    pub fn stats_failed(&self) {
        self.lock().collected = Some(Instant::now());
    }
}

/// Opens a publisher on the configured source (for `orapush publish`).
pub fn open_publisher(settings: &Settings) -> Result<Box<dyn Publisher>, SourceError> {
    match settings.source.kind {
        SourceKind::Sqlite => Ok(Box::new(sqlite::SqliteOutbox::open(&settings.sqlite)?)),
        SourceKind::Postgres => Ok(Box::new(postgres::PgOutbox::connect_publisher(&settings.postgres)?)),
        SourceKind::OracleOutbox => {
            Ok(Box::new(oracle::outbox::OracleOutbox::connect_publisher(&settings.oracle)?))
        }
        SourceKind::OracleAq => Ok(Box::new(oracle::aq::OracleAq::connect_publisher(&settings.oracle)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bell wakes a sleeper rung after its reading, not before; a stop
    /// wakes it too; otherwise it sleeps its time out.
    #[test]
    fn the_bell_wakes_the_drainer() {
        let stopper = Stopper::default();
        let seen = stopper.rings();
        stopper.ring();
        assert_eq!(stopper.sleep_until_rung(seen, Duration::from_secs(30)), Woken::Rung);
        let seen = stopper.rings();
        assert_eq!(stopper.sleep_until_rung(seen, Duration::from_millis(1)), Woken::TimedOut);

        let ringer = stopper.clone();
        let thread = std::thread::spawn(move || ringer.ring());
        assert_eq!(stopper.sleep_until_rung(seen, Duration::from_secs(30)), Woken::Rung);
        thread.join().unwrap();

        let seen = stopper.rings();
        let stopping = stopper.clone();
        let thread = std::thread::spawn(move || stopping.stop());
        assert_eq!(stopper.sleep_until_rung(seen, Duration::from_secs(30)), Woken::Stopped);
        thread.join().unwrap();
        assert!(stopper.sleep(Duration::from_secs(30)), "a stopped drainer never sleeps");
    }
}
