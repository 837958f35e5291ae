//! Source kind `oracle_aq`: an Advanced Queuing queue of RAW messages.
//!
//! Each message is a JSON envelope `{"channel": "...", "payload": "...",
//! "user": null}` in UTF-8, as `ORAPUSH.PUBLISH_AQ` enqueues it: RAW is the
//! one payload type rust-oracle's AQ API reads reliably (no JSON or JMS
//! queues there), and an envelope keeps channel and user with the payload in
//! one commit-bound enqueue. `"data"` (any JSON) may stand for `"payload"`.
//! RAW caps a message at 32,767 bytes; larger bodies belong in the outbox.
//!
//! Claim: `dequeue_many` in REMOVE mode with on-commit visibility and an
//! explicit wait (`oracle.aq_wait_ms`, below the call timeout; the default
//! wait is forever). Never `dequeue()`: on an empty queue it returns a NULL
//! handle that fails on first use. The messages leave the queue only when
//! the drainer commits after the hand-over; a crash rolls back.
//!
//! Poison messages (not an envelope, bad channel, too large) go to the
//! queue's exception queue, the dead-letter queue AQ users know. When a
//! batch holds one, the batch is rolled back before anything is handed over;
//! the good messages are then dequeued again one by one (by message id) and
//! handed over, and each poison message is dequeued and rolled back until
//! AQ's `max_retries` moves it to the exception queue. So a poison message
//! never blocks the ones behind it, and none is lost.

use std::time::Duration;

use oracle::aq::{DeqMode, DeqNavigation, MsgProps, Queue, Visibility};
use oracle::Connection;
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::warn;

use super::{classify, drop_session, hex, take_drain_lock, SessionSource};
use crate::config::OracleSettings;
use crate::message::{validate_channel, OutboxRow};
use crate::source::{DeadLetter, OutboxStore, Publisher, SourceError, Stopper};

/// At most this many dequeue-and-rollback rounds to push one poison message
/// to the exception queue (AQ's max_retries is usually 5).
const MAX_POISON_ROUNDS: usize = 50;

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

/// True when a row can go to the hub (same rules as the drain pass).
fn deliverable(row: &OutboxRow, max_bytes: usize) -> bool {
    row.defect.is_none() && validate_channel(&row.channel).is_ok() && row.payload.len() <= max_bytes
}

pub struct OracleAq {
    conn: Connection,
    settings: OracleSettings,
    queue_name: String,
    /// Message ids of the rows of the current claim, by row id (index).
    batch: Vec<Vec<u8>>,
    max_message_bytes: usize,
    drains: bool,
}

impl OracleAq {
    pub fn connect(sessions: &mut SessionSource, max_message_bytes: usize) -> Result<Self, SourceError> {
        let settings = sessions.settings().clone();
        let conn = sessions.session()?;
        let queue_name = settings.qualified_queue();
        if let Err(e) = take_drain_lock(&conn, &settings, &format!("orapush:{queue_name}")) {
            drop_session(&conn);
            return Err(e);
        }
        Ok(Self { conn, settings, queue_name, batch: Vec::new(), max_message_bytes, drains: true })
    }

    pub fn connect_publisher(settings: &OracleSettings) -> Result<Self, SourceError> {
        let mut sessions = SessionSource::new(settings, "publish");
        let conn = sessions.session()?;
        let queue_name = settings.qualified_queue();
        Ok(Self {
            conn,
            settings: settings.clone(),
            queue_name,
            batch: Vec::new(),
            max_message_bytes: 0,
            drains: false,
        })
    }

    fn error(&self, e: &oracle::Error, what: &str) -> SourceError {
        classify(e, &self.settings, what)
    }

    /// A queue handle with the dequeue options set (`Queue` is not `Send`:
    /// it lives only inside one call).
    fn queue(&self, wait: Duration, message_id: Option<&[u8]>) -> oracle::Result<Queue<[u8]>> {
        let mut queue = Queue::<[u8]>::new(&self.conn, &self.queue_name, &())?;
        let options = queue.deq_options()?;
        options.set_mode(&DeqMode::Remove)?;
        options.set_visibility(&Visibility::OnCommit)?;
        options.set_navigation(&DeqNavigation::FirstMessage)?;
        options.set_wait(&wait)?;
        if let Some(consumer) = &self.settings.consumer_name {
            options.set_consumer_name(consumer)?;
        }
        if let Some(id) = message_id {
            options.set_message_id(id)?;
        }
        Ok(queue)
    }

    fn read(props: &MsgProps<[u8]>) -> oracle::Result<(Vec<u8>, Vec<u8>)> {
        Ok((props.message_id()?, props.payload()?))
    }

    fn claim_messages(&mut self, limit: usize) -> oracle::Result<Vec<OutboxRow>> {
        let wait = Duration::from_millis(self.settings.aq_wait_ms);
        let queue = self.queue(wait, None)?;
        let messages = queue.dequeue_many(limit.min(u32::MAX as usize) as u32)?;
        let mut read = Vec::with_capacity(messages.len());
        for m in &messages {
            read.push(Self::read(m)?);
        }
        drop(messages);
        drop(queue);
        let rows: Vec<OutboxRow> =
            read.iter().enumerate().map(|(i, (id, raw))| envelope_row(i, id, raw)).collect();
        if rows.iter().all(|r| deliverable(r, self.max_message_bytes)) {
            self.batch = read.into_iter().map(|(id, _)| id).collect();
            return Ok(rows);
        }
        // A poison message in the batch: give the batch back before anything
        // is handed over, then take the good ones again by id.
        self.conn.rollback()?;
        let mut kept = Vec::with_capacity(rows.len());
        self.batch.clear();
        for (row, (id, _)) in rows.into_iter().zip(read) {
            let mut row = row;
            if deliverable(&row, self.max_message_bytes) {
                let again = self.queue(Duration::ZERO, Some(&id))?.dequeue_many(1)?;
                if again.is_empty() {
                    continue; // delayed by the queue's retry_delay: it comes back later
                }
            }
            row.id = self.batch.len() as i64;
            self.batch.push(id);
            kept.push(row);
        }
        Ok(kept)
    }

    /// Dequeues and rolls back until AQ moves the message to the exception queue.
    fn push_to_exception_queue(&self, message_id: &[u8]) -> oracle::Result<()> {
        for _ in 0..MAX_POISON_ROUNDS {
            let found = self.queue(Duration::ZERO, Some(message_id))?.dequeue_many(1)?;
            if found.is_empty() {
                return Ok(());
            }
            drop(found);
            self.conn.rollback()?;
        }
        Ok(())
    }
}

impl Drop for OracleAq {
    fn drop(&mut self) {
        if self.drains {
            drop_session(&self.conn);
        }
    }
}

impl OutboxStore for OracleAq {
    fn claim(&mut self, limit: usize) -> Result<Vec<OutboxRow>, SourceError> {
        self.claim_messages(limit).map_err(|e| {
            let _ = self.conn.rollback();
            self.error(&e, "dequeue")
        })
    }

    fn complete(&mut self, _handed_over: &[i64], dead: &[DeadLetter]) -> Result<(), SourceError> {
        // The handed-over messages were dequeued in this transaction; the
        // poison ones were not (see the module doc).
        self.conn.commit().map_err(|e| {
            let _ = self.conn.rollback();
            self.error(&e, "commit the dequeue")
        })?;
        for d in dead {
            let id = &self.batch[d.row.id as usize];
            warn!(message_id = %hex(id), reason = %d.reason, queue = %self.queue_name, "moving message to the exception queue");
            self.push_to_exception_queue(id).map_err(|e| self.error(&e, "move a poison message"))?;
        }
        self.batch.clear();
        Ok(())
    }

    fn abort(&mut self) {
        let _ = self.conn.rollback();
        self.batch.clear();
    }

    /// The dequeue itself waited for messages; come straight back to it.
    fn wait_for_work(&mut self, _timeout: Duration, _stop: &Stopper) -> Result<(), SourceError> {
        Ok(())
    }
}

impl Publisher for OracleAq {
    fn publish(&mut self, channel: &str, payload: &str, user: Option<&str>) -> Result<String, SourceError> {
        validate_channel(channel).map_err(|e| SourceError::fatal(e.to_string()))?;
        let sql = format!("BEGIN :1 := {}.ORAPUSH.PUBLISH_AQ_ID(:2, :3, :4); END;", self.settings.schema);
        let result = (|| {
            let stmt = self
                .conn
                .execute(&sql, &[&oracle::sql_type::OracleType::Raw(16), &channel, &payload, &user])?;
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
        let row = envelope_row(3, &[0xab, 0x01], br#"{"channel":"emp","payload":"x"}"#);
        assert_eq!((row.id, row.message_id.as_deref(), row.channel.as_str()), (3, Some("ab01"), "emp"));
        assert!(deliverable(&row, 10));
        let m = crate::message::Message::from_row(&row, 10).unwrap();
        assert_eq!((m.id.as_str(), m.data.get()), ("ab01", r#"{"message":"x"}"#));
        let bad = envelope_row(0, &[1], b"nope");
        assert!(bad.defect.is_some() && !deliverable(&bad, 10));
        let big = envelope_row(0, &[1], br#"{"channel":"emp","payload":"0123456789A"}"#);
        assert!(!deliverable(&big, 10));
    }
}
