//! Source kind `oracle_aq`: an Advanced Queuing queue of RAW messages.
//!
//! Each message is a JSON envelope `{"channel": "...", "payload": "...",
//! "user": null}` in UTF-8, as `ORAPUSH.PUBLISH_AQ` enqueues it (converted
//! with `UTL_I18N.STRING_TO_RAW(…, 'AL32UTF8')` whatever the database
//! character set): RAW is the one payload type rust-oracle's AQ API reads
//! reliably (no JSON or JMS queues there), and an envelope keeps channel and
//! user with the payload in one commit-bound enqueue. `"data"` (any JSON)
//! may stand for `"payload"`. RAW caps a message at 32,767 bytes; larger
//! bodies belong in the outbox.
//!
//! Claim: `dequeue_many` in REMOVE mode with on-commit visibility and an
//! explicit wait (`oracle.aq_wait_ms`, below the call timeout; the default
//! wait is forever). Never `dequeue()`: on an empty queue it returns a NULL
//! handle that fails on first use. The messages leave the queue only when
//! the drainer commits after the hand-over; a crash rolls back.
//!
//! Poison messages (not an envelope, bad channel, too large) never cost the
//! good ones a rollback. A rollback raises the RETRY_COUNT of every message
//! dequeued in the transaction, and after `max_retries` AQ parks a message
//! in the exception queue, good or not. So a poison message is dequeued
//! with its batch like any other and, in the same transaction that commits
//! the good ones, kept in ORAPUSH_AQ_DEAD_LETTER (`ORAPUSH.DEAD_LETTER_AQ`,
//! one call per poison message; none for a good batch). AQ's exception
//! queue cannot take it directly: exception queues allow dequeues only
//! (ORA-24017). What still reaches the exception queue (rollbacks after a
//! lost session or a failed commit, expiry) is counted once a minute into
//! `orapush_aq_exception_queue_messages` and logged when it grows; a message
//! dequeued again after a rollback is logged with its attempt count. A
//! killed or crashed session does not raise RETRY_COUNT (Oracle's
//! DBMS_AQADM.CREATE_QUEUE reference, `max_retries`).
//!
//! Lag: AQ returns the enqueue time without a time zone (ODPI-C
//! `dpiMsgProps_getEnqTime` reads an OCIDate and sets the offset to 0), and
//! queue tables store it at a fixed offset that is usually, not always,
//! UTC. The drainer reads the database's clock once per session, in local
//! time and in UTC, and takes the reading that gives the smallest
//! non-negative age: right under both readings while the lag is below the
//! database's UTC offset, and without a round trip per batch.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oracle::aq::{DeqMode, DeqNavigation, MsgProps, Queue, Visibility};
use oracle::sql_type::Timestamp;
use oracle::Connection;
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{info, warn};

use super::{classify, drain_lock_name, drop_session, hex, DrainLock, SessionSource};
use crate::config::OracleSettings;
use crate::message::{validate_channel, OutboxRow};
use crate::metrics::Metrics;
use crate::source::{DeadLetter, OutboxStore, Publisher, SourceError, Stopper, StoreStats};

/// How often the drainer counts the exception queue and reads the
/// database's clock again (a daylight-saving change moves its local time).
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// SQL text; names resolve through CURRENT_SCHEMA (see [`super`]).
pub const DEAD_LETTER_SQL: &str = "BEGIN ORAPUSH.DEAD_LETTER_AQ(:1, :2, :3); END;";
pub const EXCEPTION_COUNT_SQL: &str = "BEGIN :1 := ORAPUSH.EXCEPTION_QUEUE_COUNT; END;";
pub const PUBLISH_SQL: &str = "BEGIN :1 := ORAPUSH.PUBLISH_AQ_ID(:2, :3, :4); END;";
pub const BACKLOG_SQL: &str = "BEGIN :1 := ORAPUSH.QUEUE_BACKLOG; END;";
pub const RECENT_DEAD_SQL: &str = "SELECT LOWER(RAWTOHEX(msgid)), NULL, reason, \
     TO_CHAR(SYS_EXTRACT_UTC(failed_at), 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
     FROM ORAPUSH_AQ_DEAD_LETTER WHERE failed_at > SYSTIMESTAMP - INTERVAL '1' HOUR \
     ORDER BY failed_at DESC FETCH FIRST :1 ROWS ONLY";
pub const CLOCK_SQL: &str = "SELECT CAST(SYSTIMESTAMP AS TIMESTAMP), SYS_EXTRACT_UTC(SYSTIMESTAMP) FROM dual";

/// The message body `ORAPUSH.PUBLISH_AQ` enqueues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub channel: String,
    pub payload: String,
    pub user: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope<'a> {
    channel: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    user: Option<String>,
}

/// Decodes a RAW payload; the error says why it is not an envelope.
pub fn decode_envelope(raw: &[u8]) -> Result<Envelope, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("AQ payload is not UTF-8: {e}"))?;
    let wire: WireEnvelope<'_> = serde_json::from_str(text).map_err(|e| {
        format!(
            "AQ payload is not an orapush envelope {{\"channel\", \"payload\" or \"data\", \"user\"}}: {e}"
        )
    })?;
    let payload = match (wire.payload, wire.data) {
        (Some(p), None) => p,
        (None, Some(d)) => d.get().to_owned(),
        (Some(_), Some(_)) => return Err("AQ envelope has both \"payload\" and \"data\"".into()),
        (None, None) => return Err("AQ envelope has neither \"payload\" nor \"data\"".into()),
    };
    Ok(Envelope { channel: wire.channel, payload, user: wire.user })
}

/// Turns a dequeued message into a row (or a defective one), by batch index.
pub fn envelope_row(index: usize, message_id: &[u8], raw: &[u8]) -> OutboxRow {
    let mut row = OutboxRow::new(index as i64, "", "", None);
    row.message_id = Some(hex(message_id));
    match decode_envelope(raw) {
        Ok(env) => {
            row.channel = env.channel;
            row.payload = env.payload;
            row.target_user = env.user;
        }
        Err(why) => row.defect = Some(why),
    }
    row
}

/// One dequeued message of the current claim.
struct Dequeued {
    message_id: Vec<u8>,
    raw: Vec<u8>,
}

/// The database's clock against ours, read once per session: how far the
/// database's local time and its UTC time are ahead of this host's UTC.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbClock {
    pub local_ahead: f64,
    pub utc_ahead: f64,
}

impl DbClock {
    /// The age of a message enqueued at `enqueued` (a zone-less reading) at
    /// `now` (this host's UTC seconds): the smallest non-negative age of the
    /// two readings (the enqueue time in the database's local time, or in
    /// UTC), 0 when both are negative (clock jitter).
    pub fn age_seconds(&self, enqueued: f64, now: f64) -> f64 {
        [now + self.local_ahead - enqueued, now + self.utc_ahead - enqueued]
            .into_iter()
            .filter(|age| *age >= 0.0)
            .fold(None, |min: Option<f64>, age| Some(min.map_or(age, |m| m.min(age))))
            .unwrap_or(0.0)
    }
}

/// Seconds since 1970-01-01 of a zone-less timestamp read as UTC.
pub fn naive_epoch_seconds(t: &Timestamp) -> f64 {
    let days = days_from_civil(t.year() as i64, t.month() as i64, t.day() as i64);
    (days * 86_400 + t.hour() as i64 * 3600 + t.minute() as i64 * 60 + t.second() as i64) as f64
        + t.nanosecond() as f64 / 1e9
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn now_epoch_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Counts what AQ moved to the exception queue, and logs its growth.
struct ExceptionWatch {
    last_count: Option<i64>,
}

pub struct OracleAq {
    conn: Connection,
    settings: OracleSettings,
    queue_name: String,
    /// Held while draining; None for a publisher.
    lock: Option<DrainLock>,
    /// The messages of the current claim, by row id (index).
    batch: Vec<Dequeued>,
    clock: DbClock,
    /// Only for the install script's queue (its count function covers it).
    exceptions: Option<ExceptionWatch>,
    next_housekeeping: Instant,
    metrics: Metrics,
}

impl OracleAq {
    /// A session that dequeues: it holds the queue's drain lock (or Standby,
    /// after waiting `oracle.wait_ms` for it).
    pub fn connect(sessions: &mut SessionSource, metrics: Metrics) -> Result<Self, SourceError> {
        let settings = sessions.settings().clone();
        let queue_name = settings.qualified_queue();
        let (conn, lock) = DrainLock::take(sessions, drain_lock_name(&queue_name))?;
        // The install script's exception-queue count covers its own queue.
        let exceptions = (queue_name == format!("{}.ORAPUSH_Q", settings.schema.to_uppercase()))
            .then_some(ExceptionWatch { last_count: None });
        Ok(Self {
            conn,
            settings,
            queue_name,
            lock: Some(lock),
            batch: Vec::new(),
            // Read by the first claim's housekeeping, before any dequeue.
            clock: DbClock { local_ahead: 0.0, utc_ahead: 0.0 },
            exceptions,
            next_housekeeping: Instant::now(),
            metrics,
        })
    }

    pub fn connect_publisher(settings: &OracleSettings) -> Result<Self, SourceError> {
        let mut sessions = SessionSource::new(settings, "publish");
        let conn = sessions.session()?;
        Ok(Self {
            conn,
            settings: settings.clone(),
            queue_name: settings.qualified_queue(),
            lock: None,
            batch: Vec::new(),
            clock: DbClock { local_ahead: 0.0, utc_ahead: 0.0 },
            exceptions: None,
            next_housekeeping: Instant::now(),
            metrics: Metrics::new(),
        })
    }

    fn error(&self, e: &oracle::Error, what: &str) -> SourceError {
        classify(e, &self.settings, what)
    }

    /// A queue handle with the dequeue options set (`Queue` is not `Send`:
    /// it lives only inside one call).
    fn queue(&self, wait: Duration) -> oracle::Result<Queue<[u8]>> {
        let mut queue = Queue::<[u8]>::new(&self.conn, &self.queue_name, &())?;
        let options = queue.deq_options()?;
        options.set_mode(&DeqMode::Remove)?;
        options.set_visibility(&Visibility::OnCommit)?;
        options.set_navigation(&DeqNavigation::FirstMessage)?;
        options.set_wait(&wait)?;
        if let Some(consumer) = &self.settings.consumer_name {
            options.set_consumer_name(consumer)?;
        }
        Ok(queue)
    }

    fn claim_messages(&mut self, limit: usize) -> oracle::Result<Vec<OutboxRow>> {
        let wait = Duration::from_millis(self.settings.aq_wait_ms);
        let queue = self.queue(wait)?;
        let messages = queue.dequeue_many(limit.min(u32::MAX as usize) as u32)?;
        let now = now_epoch_seconds();
        let mut rows = Vec::with_capacity(messages.len());
        self.batch.clear();
        for (index, m) in messages.iter().enumerate() {
            let message = read(m)?;
            let mut row = envelope_row(index, &message.message_id, &message.raw);
            row.age_seconds = self.clock.age_seconds(naive_epoch_seconds(&m.enq_time()?), now);
            let attempts = m.num_attempts()?;
            if attempts > 0 {
                warn!(
                    message_id = %hex(&message.message_id), attempts, queue = %self.queue_name,
                    "message dequeued again after a rollback; AQ parks it in the exception queue after max_retries"
                );
            }
            rows.push(row);
            self.batch.push(message);
        }
        Ok(rows)
    }

    /// Once a minute: the database's clock again, and the exception queue's
    /// count (logged when it grew).
    fn housekeeping(&mut self) -> Result<(), SourceError> {
        if Instant::now() < self.next_housekeeping {
            return Ok(());
        }
        self.next_housekeeping = Instant::now() + HOUSEKEEPING_EVERY;
        self.clock =
            read_clock(&self.conn).map_err(|e| classify(&e, &self.settings, "read the database clock"))?;
        let Some(watch) = self.exceptions.as_mut() else { return Ok(()) };
        let count = self
            .conn
            .execute(EXCEPTION_COUNT_SQL, &[&oracle::sql_type::OracleType::Number(0, 0)])
            .and_then(|stmt| stmt.bind_value::<_, i64>(1))
            .map_err(|e| classify(&e, &self.settings, "count the exception queue"))?;
        self.metrics.aq_exception_messages.set(count);
        match watch.last_count {
            Some(last) if count > last => warn!(
                new = count - last,
                total = count,
                queue = "AQ$_ORAPUSH_QT_E",
                "messages reached the AQ exception queue (rolled back max_retries times, or expired)"
            ),
            None if count > 0 => {
                info!(total = count, queue = "AQ$_ORAPUSH_QT_E", "the AQ exception queue holds messages")
            }
            _ => {}
        }
        watch.last_count = Some(count);
        Ok(())
    }
}

fn read(props: &MsgProps<[u8]>) -> oracle::Result<Dequeued> {
    Ok(Dequeued { message_id: props.message_id()?, raw: props.payload()? })
}

fn read_clock(conn: &Connection) -> oracle::Result<DbClock> {
    let (local, utc) = conn.query_row_as::<(Timestamp, Timestamp)>(CLOCK_SQL, &[])?;
    let now = now_epoch_seconds();
    Ok(DbClock { local_ahead: naive_epoch_seconds(&local) - now, utc_ahead: naive_epoch_seconds(&utc) - now })
}

impl Drop for OracleAq {
    fn drop(&mut self) {
        if self.lock.is_some() {
            drop_session(&self.conn);
        }
    }
}

impl OutboxStore for OracleAq {
    fn claim(&mut self, limit: usize) -> Result<Vec<OutboxRow>, SourceError> {
        if let Some(lock) = self.lock.as_mut() {
            lock.refresh_if_due(&self.conn, &self.settings)?;
        }
        self.housekeeping()?;
        self.claim_messages(limit).map_err(|e| {
            self.abort();
            self.error(&e, "dequeue")
        })
    }

    /// The handed-over messages were dequeued in this transaction; the
    /// poison ones too, and are kept in ORAPUSH_AQ_DEAD_LETTER before the
    /// one commit (see the module doc).
    fn complete(&mut self, _handed_over: &[i64], dead: &[DeadLetter]) -> Result<(), SourceError> {
        let result = (|| {
            for d in dead {
                let message = &self.batch[d.row.id as usize];
                warn!(
                    message_id = %hex(&message.message_id), reason = %d.reason, queue = %self.queue_name,
                    "moving message to ORAPUSH_AQ_DEAD_LETTER"
                );
                self.conn.execute(DEAD_LETTER_SQL, &[&message.message_id, &message.raw, &d.reason])?;
            }
            self.conn.commit()
        })();
        result.map_err(|e| {
            self.abort();
            self.error(&e, "commit the dequeue")
        })?;
        self.batch.clear();
        Ok(())
    }

    fn abort(&mut self) {
        let _ = self.conn.rollback();
        self.batch.clear();
    }

    /// The backlog of the install script's queue (a queue of your own is
    /// not counted: the status shows no backlog then), and the poison
    /// messages of the last hour.
    fn stats(&mut self) -> Result<StoreStats, SourceError> {
        if self.exceptions.is_none() {
            return Err(SourceError::transient(format!(
                "{} is not the install script's queue",
                self.queue_name
            )));
        }
        let result = (|| {
            let backlog = self
                .conn
                .execute(BACKLOG_SQL, &[&oracle::sql_type::OracleType::Number(0, 0)])?
                .bind_value::<_, i64>(1)?;
            let dead_letters = super::outbox::recent_dead_letters(&self.conn, RECENT_DEAD_SQL)?;
            Ok(StoreStats { backlog: backlog.max(0) as u64, oldest_seconds: None, dead_letters })
        })();
        result.map_err(|e: oracle::Error| self.error(&e, "read the status figures"))
    }

    /// The dequeue itself waited for messages; come straight back to it.
    fn wait_for_work(&mut self, _timeout: Duration, _stop: &Stopper) -> Result<(), SourceError> {
        Ok(())
    }
}

impl Publisher for OracleAq {
    fn publish(&mut self, channel: &str, payload: &str, user: Option<&str>) -> Result<String, SourceError> {
        validate_channel(channel).map_err(|e| SourceError::fatal(e.to_string()))?;
        let result = (|| {
            let stmt = self
                .conn
                .execute(PUBLISH_SQL, &[&oracle::sql_type::OracleType::Raw(16), &channel, &payload, &user])?;
            let id: Vec<u8> = stmt.bind_value(1)?;
            self.conn.commit()?;
            Ok(hex(&id))
        })();
        result.map_err(|e: oracle::Error| self.error(&e, "enqueue"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The envelope PUBLISH_AQ writes decodes to channel, payload and user.
    #[test]
    fn envelopes_decode() {
        let env = decode_envelope(br#"{"channel":"emp","payload":"{\"message\":\"REFRESH\"}","user":null}"#)
            .unwrap();
        assert_eq!(
            env,
            Envelope { channel: "emp".into(), payload: r#"{"message":"REFRESH"}"#.into(), user: None }
        );
        let env = decode_envelope(br#"{"channel":"emp","data":{"a":[1,2]},"user":"SCOTT"}"#).unwrap();
        assert_eq!((env.payload.as_str(), env.user.as_deref()), (r#"{"a":[1,2]}"#, Some("SCOTT")));
    }

    /// Anything else is refused with the reason the exception-queue log shows.
    #[test]
    fn bad_envelopes_say_why() {
        let cases: &[(&[u8], &str)] = &[
            (b"\xff\xfe", "not UTF-8"),
            (b"REFRESH", "not an orapush envelope"),
            (br#"{"payload":"x"}"#, "not an orapush envelope"),
            (br#"{"channel":"emp"}"#, "neither"),
            (br#"{"channel":"emp","payload":"x","data":1}"#, "both"),
            (br#"{"channel":"emp","payload":"x","extra":1}"#, "not an orapush envelope"),
        ];
        for (raw, why) in cases {
            let err = decode_envelope(raw).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    /// A dequeued message becomes a row whose message id is the AQ msgid, or a defective row.
    #[test]
    fn messages_become_rows() {
        use crate::message::Message;
        let row = envelope_row(3, &[0xab, 0x01], br#"{"channel":"emp","payload":"x"}"#);
        assert_eq!((row.id, row.message_id.as_deref(), row.channel.as_str()), (3, Some("ab01"), "emp"));
        let m = Message::from_row(&row, 10).unwrap();
        assert_eq!((m.id.as_str(), m.data.get()), ("ab01", r#"{"message":"x"}"#));
        let bad = envelope_row(0, &[1], b"nope");
        assert!(bad.defect.is_some() && Message::from_row(&bad, 10).is_err());
        let big = envelope_row(0, &[1], br#"{"channel":"emp","payload":"0123456789A"}"#);
        assert!(Message::from_row(&big, 10).is_err());
    }

    /// The UTF-8 bytes UTL_I18N.STRING_TO_RAW(…, 'AL32UTF8') gives decode; the
    /// same text in WE8MSWIN1252 bytes (what CAST_TO_RAW gave there) does not.
    #[test]
    fn envelopes_are_utf8_whatever_the_database_charset() {
        let text = r#"{"channel":"emp","payload":"Zürich café 5 €","user":null}"#;
        let env = decode_envelope(text.as_bytes()).unwrap();
        assert_eq!(env.payload, "Zürich café 5 €");
        let cp1252: Vec<u8> = text
            .chars()
            .map(|c| match c {
                'ü' => 0xfc,
                'é' => 0xe9,
                '€' => 0x80,
                c => c as u8,
            })
            .collect();
        assert!(decode_envelope(&cp1252).unwrap_err().contains("not UTF-8"));
        let install = include_str!("../../../sql/oracle/install.sql");
        assert!(install.contains("UTL_I18N.STRING_TO_RAW(l_envelope.to_string, 'AL32UTF8')"));
        assert!(!install.contains("UTL_RAW.CAST_TO_RAW(l_envelope"));
    }

    /// The age of a message is right whether AQ gave its enqueue time in the database's local time or in UTC.
    #[test]
    fn message_age_under_both_time_readings() {
        let now = 1_800_000_000.0;
        // The database's clock is 0.5 s ahead of ours; its zone is UTC+2.
        let clock = DbClock { local_ahead: 7200.5, utc_ahead: 0.5 };
        let db_utc = now + 0.5;
        // Enqueued 3 s ago, read as UTC or as the local time.
        assert!((clock.age_seconds(db_utc - 3.0, now) - 3.0).abs() < 1e-6);
        assert!((clock.age_seconds(db_utc + 7200.0 - 3.0, now) - 3.0).abs() < 1e-6);
        // A zone west of UTC (UTC-5).
        let west = DbClock { local_ahead: -18_000.0, utc_ahead: 0.0 };
        assert!((west.age_seconds(now - 2.0, now) - 2.0).abs() < 1e-6);
        assert!((west.age_seconds(now - 18_000.0 - 2.0, now) - 2.0).abs() < 1e-6);
        // Jitter into the future is no age.
        assert_eq!(DbClock { local_ahead: 0.0, utc_ahead: 0.0 }.age_seconds(now + 1.0, now), 0.0);
    }

    /// Zone-less timestamps convert to epoch seconds.
    #[test]
    fn timestamps_to_epoch_seconds() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 30), 20_787);
        let t = Timestamp::new(2026, 11, 30, 1, 2, 3, 500_000_000).unwrap();
        assert_eq!(naive_epoch_seconds(&t), 20_787.0 * 86_400.0 + 3723.5);
    }

    /// The SQL names what the install script defines.
    #[test]
    fn sql_matches_the_install_script() {
        let install = include_str!("../../../sql/oracle/install.sql");
        for needle in [
            "PROCEDURE dead_letter_aq(p_msgid IN RAW, p_payload IN RAW, p_reason IN VARCHAR2)",
            "FUNCTION exception_queue_count RETURN NUMBER",
            "FUNCTION publish_aq_id(p_channel IN VARCHAR2, p_payload IN VARCHAR2, p_user IN VARCHAR2 DEFAULT NULL) RETURN RAW",
            "CREATE TABLE orapush_aq_dead_letter",
        ] {
            assert!(install.contains(needle), "install.sql lacks {needle:?}");
        }
        assert_eq!(DEAD_LETTER_SQL, "BEGIN ORAPUSH.DEAD_LETTER_AQ(:1, :2, :3); END;");
    }
}
