//! Source kind `oracle_outbox`: the ORAPUSH_OUTBOX table.
//!
//! Claim: an unlimited `SELECT … ORDER BY id FOR UPDATE SKIP LOCKED` cursor
//! from which exactly `batch_size` rows are fetched. Never `FETCH FIRST` with
//! FOR UPDATE (ORA-02014) nor `ROWNUM <= n` with SKIP LOCKED (ROWNUM applies
//! before the skip: it returns too few or no rows while work exists). With
//! SKIP LOCKED rows are locked as they are fetched; the prefetch may lock a
//! few more, which the commit releases. The `INDEX_ASC(o (id))` hint (an
//! index named by its column, so any primary key name matches) makes the
//! cursor walk the primary key in order and stop after one batch: without
//! it the optimizer may full-scan and sort the whole backlog before it
//! returns the first row.
//!
//! Complete: dead letters move through `ORAPUSH.DEAD_LETTER` (the package
//! owns the dead-letter table, so the runtime user needs no INSERT grant),
//! handed-over rows are deleted in one array DML, then commit. Autocommit is
//! off in the driver; a dropped session rolls back.
//!
//! Wake-up: the install script's statement-level trigger on the outbox calls
//! `DBMS_ALERT.SIGNAL`, which Oracle delivers when the inserting transaction
//! commits (and drops on a rollback). A second session of orapush's waits in
//! `ORAPUSH.WAIT_FOR_OUTBOX` (DBMS_ALERT.WAITONE, `oracle.wait_ms` per call)
//! and ends the drainer's wait at once. WAITONE commits, which is why it
//! never runs on the draining session. The session registers for the alert
//! before the first claim, so no commit falls between a claim and a wait
//! unseen. The poll (`source.poll_interval_ms`, 5 s) stays as the fallback:
//! when the waiter's session fails, or the trigger is disabled. The
//! drainer's own deletes fire no insert trigger, so they never wake it.

use std::time::{Duration, Instant};

use oracle::Connection;
use tracing::{debug, warn};

use super::{classify, drain_lock_name, drop_session, wait_seconds, DrainLock, SessionSource};
use crate::config::OracleSettings;
use crate::message::{validate_channel, OutboxRow};
use crate::source::{
    DeadLetter, DeadLetterInfo, OutboxStore, Publisher, SourceError, Stopper, StoreStats, DEAD_LETTERS_SHOWN,
};

/// SQL text. Names are unqualified: every session sets CURRENT_SCHEMA to
/// `oracle.schema` (see the module doc of [`super`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxSql {
    pub claim: String,
    pub delete: String,
    pub dead_letter: String,
    pub publish: String,
    /// `:1` status out (0 an alert came, 1 timed out), `:2` wait seconds.
    pub wait: String,
    /// The status page's figures: backlog and oldest age; recent dead letters.
    pub backlog: String,
    pub recent_dead: String,
    pub lock_name: String,
}

impl OutboxSql {
    pub fn new(schema: &str) -> Self {
        let age = seconds_since("o.created_at");
        let oldest_age = seconds_since("oldest");
        Self {
            claim: format!(
                "SELECT /*+ INDEX_ASC(o (id)) */ o.id, o.channel, o.payload, o.target_user, {age} \
                 FROM ORAPUSH_OUTBOX o ORDER BY o.id FOR UPDATE SKIP LOCKED"
            ),
            delete: "DELETE FROM ORAPUSH_OUTBOX WHERE id = :1".into(),
            dead_letter: "BEGIN ORAPUSH.DEAD_LETTER(:1, :2); END;".into(),
            publish: "BEGIN :1 := ORAPUSH.PUBLISH_ID(:2, :3, :4); END;".into(),
            wait: "BEGIN :1 := ORAPUSH.WAIT_FOR_OUTBOX(:2); END;".into(),
            backlog: format!(
                "SELECT n, NVL({oldest_age}, 0) FROM (SELECT COUNT(*) n, MIN(created_at) oldest FROM ORAPUSH_OUTBOX)"
            ),
            recent_dead: "SELECT TO_CHAR(id), channel, reason, \
                          TO_CHAR(SYS_EXTRACT_UTC(failed_at), 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                          FROM ORAPUSH_DEAD_LETTER WHERE failed_at > SYSTIMESTAMP - INTERVAL '1' HOUR \
                          ORDER BY failed_at DESC, id DESC FETCH FIRST :1 ROWS ONLY"
                .into(),
            lock_name: drain_lock_name(&format!("{schema}.ORAPUSH_OUTBOX")),
        }
    }
}

/// Seconds since a TIMESTAMP WITH TIME ZONE expression, with fractions,
/// from the INTERVAL DAY TO SECOND that subtracting it gives.
fn seconds_since(at: &str) -> String {
    format!(
        "(EXTRACT(DAY FROM (SYSTIMESTAMP - {at})) * 86400 + EXTRACT(HOUR FROM (SYSTIMESTAMP - {at})) * 3600 \
         + EXTRACT(MINUTE FROM (SYSTIMESTAMP - {at})) * 60 + EXTRACT(SECOND FROM (SYSTIMESTAMP - {at})))"
    )
}

/// The dead letters of the last hour, from a `(id, channel, reason,
/// failed_at)` query whose `:1` is the row limit.
pub(super) fn recent_dead_letters(conn: &Connection, sql: &str) -> oracle::Result<Vec<DeadLetterInfo>> {
    let rows =
        conn.query_as::<(String, Option<String>, String, String)>(sql, &[&(DEAD_LETTERS_SHOWN as i64)])?;
    rows.map(|r| {
        r.map(|(id, channel, reason, failed_at)| DeadLetterInfo {
            id,
            channel: channel.unwrap_or_default(),
            reason,
            failed_at,
        })
    })
    .collect()
}

pub struct OracleOutbox {
    conn: Connection,
    settings: OracleSettings,
    sql: OutboxSql,
    /// Held while draining; None for a publisher.
    lock: Option<DrainLock>,
    /// The wake-up waiter's own session and the way to open another.
    waiter: Option<Connection>,
    waiter_sessions: Option<SessionSource>,
}

impl OracleOutbox {
    /// A session that drains: it holds the outbox's drain lock (or Standby,
    /// after waiting `oracle.wait_ms` for it), plus the wake-up waiter.
    pub fn connect(sessions: &mut SessionSource) -> Result<Self, SourceError> {
        let settings = sessions.settings().clone();
        let sql = OutboxSql::new(&settings.schema);
        let (conn, lock) = DrainLock::take(sessions, sql.lock_name.clone())?;
        let mut store = Self {
            conn,
            settings,
            sql,
            lock: Some(lock),
            waiter: None,
            waiter_sessions: Some(sessions.sibling("wake-up")),
        };
        store.waiter = store.open_waiter();
        Ok(store)
    }

    /// A session that only publishes (`orapush publish`): no lock.
    pub fn connect_publisher(settings: &OracleSettings) -> Result<Self, SourceError> {
        let mut sessions = SessionSource::new(settings, "publish");
        let conn = sessions.session()?;
        Ok(Self {
            conn,
            settings: settings.clone(),
            sql: OutboxSql::new(&settings.schema),
            lock: None,
            waiter: None,
            waiter_sessions: None,
        })
    }

    fn error(&self, e: &oracle::Error, what: &str) -> SourceError {
        classify(e, &self.settings, what)
    }

    /// Opens the waiter's session and registers it for the alert (a wait of
    /// 0 s). None when that fails: the poll then serves alone.
    fn open_waiter(&mut self) -> Option<Connection> {
        let sessions = self.waiter_sessions.as_mut()?;
        let opened = sessions.new_session("wake-up").and_then(|conn| {
            wait_for_alert(&conn, &self.sql.wait, 0)
                .map_err(|e| classify(&e, &self.settings, "register for the outbox alert"))?;
            Ok(conn)
        });
        match opened {
            Ok(conn) => Some(conn),
            Err(e) => {
                warn!(error = %e, "no commit-time wake-up; polling every source.poll_interval_ms");
                None
            }
        }
    }

    fn claim_rows(&self, limit: usize) -> oracle::Result<Vec<OutboxRow>> {
        let size = limit.min(u32::MAX as usize) as u32;
        let mut stmt =
            self.conn.statement(&self.sql.claim).fetch_array_size(size).prefetch_rows(size).build()?;
        let mut rows = Vec::with_capacity(limit);
        for row in stmt.query(&[])?.take(limit) {
            let row = row?;
            rows.push(OutboxRow {
                id: row.get(0)?,
                message_id: None,
                channel: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                payload: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                target_user: row.get(3)?,
                age_seconds: row.get::<_, Option<f64>>(4)?.unwrap_or(0.0).max(0.0),
                defect: None,
            });
        }
        Ok(rows)
    }
}

/// Whole seconds of the next alert wait, at most `slice`; None when less
/// than one second remains.
fn alert_wait_seconds(remaining: Duration, slice: i64) -> Option<i64> {
    let whole = remaining.as_secs() as i64;
    (whole >= 1).then(|| whole.min(slice))
}

/// One `ORAPUSH.WAIT_FOR_OUTBOX` call: true when an alert came.
fn wait_for_alert(conn: &Connection, sql: &str, seconds: i64) -> oracle::Result<bool> {
    let stmt = conn.execute(sql, &[&oracle::sql_type::OracleType::Number(0, 0), &seconds])?;
    let status: i32 = stmt.bind_value(1)?;
    Ok(status == 0)
}

impl Drop for OracleOutbox {
    fn drop(&mut self) {
        if self.lock.is_some() {
            drop_session(&self.conn);
        }
        if let Some(waiter) = self.waiter.take() {
            drop_session(&waiter);
        }
    }
}

impl OutboxStore for OracleOutbox {
    fn claim(&mut self, limit: usize) -> Result<Vec<OutboxRow>, SourceError> {
        if let Some(lock) = self.lock.as_mut() {
            lock.refresh_if_due(&self.conn, &self.settings)?;
        }
        // An empty claim locked nothing and opened no transaction: no
        // rollback round trip while idle.
        self.claim_rows(limit).map_err(|e| self.error(&e, "claim rows"))
    }

    fn complete(&mut self, handed_over: &[i64], dead: &[DeadLetter]) -> Result<(), SourceError> {
        let result = (|| {
            for d in dead {
                self.conn.execute(&self.sql.dead_letter, &[&d.row.id, &d.reason])?;
            }
            if !handed_over.is_empty() {
                let mut delete = self.conn.batch(&self.sql.delete, handed_over.len()).build()?;
                for id in handed_over {
                    delete.append_row(&[id])?;
                }
                delete.execute()?;
            }
            self.conn.commit()
        })();
        result.map_err(|e| {
            self.abort();
            self.error(&e, "delete delivered rows")
        })
    }

    fn abort(&mut self) {
        let _ = self.conn.rollback();
    }

    fn stats(&mut self) -> Result<StoreStats, SourceError> {
        let result = (|| {
            let (backlog, oldest_seconds) = self.conn.query_row_as::<(i64, f64)>(&self.sql.backlog, &[])?;
            let dead_letters = recent_dead_letters(&self.conn, &self.sql.recent_dead)?;
            Ok(StoreStats {
                backlog: backlog.max(0) as u64,
                oldest_seconds: Some(oldest_seconds.max(0.0)),
                dead_letters,
            })
        })();
        result.map_err(|e: oracle::Error| self.error(&e, "read the status figures"))
    }

    /// Waits for the outbox alert in slices of `oracle.wait_ms` (so a stop
    /// is seen within one slice), until `timeout` (the fallback poll).
    fn wait_for_work(&mut self, timeout: Duration, stop: &Stopper) -> Result<(), SourceError> {
        let deadline = Instant::now() + timeout;
        let slice = wait_seconds(self.settings.wait_ms);
        let mut reopened = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || stop.is_stopped() {
                return Ok(());
            }
            let Some(waiter) = self.waiter.as_ref() else {
                if reopened {
                    // Still no waiter: the poll interval bounds the delay.
                    stop.sleep(remaining);
                    return Ok(());
                }
                reopened = true;
                self.waiter = self.open_waiter();
                if self.waiter.is_some() {
                    // Alerts signalled while nobody was registered are gone: look now.
                    return Ok(());
                }
                continue;
            };
            // WAITONE takes whole seconds: a remainder under one second (or a
            // poll interval under one second) is slept here instead.
            let Some(seconds) = alert_wait_seconds(remaining, slice) else {
                stop.sleep(remaining);
                return Ok(());
            };
            match wait_for_alert(waiter, &self.sql.wait, seconds) {
                Ok(true) => return Ok(()),
                Ok(false) => continue,
                Err(e) => {
                    debug!(error = %e, "outbox wake-up session lost; reopening");
                    if let Some(waiter) = self.waiter.take() {
                        drop_session(&waiter);
                    }
                }
            }
        }
    }
}

impl Publisher for OracleOutbox {
    fn publish(&mut self, channel: &str, payload: &str, user: Option<&str>) -> Result<String, SourceError> {
        validate_channel(channel).map_err(|e| SourceError::fatal(e.to_string()))?;
        let result = (|| {
            let stmt = self.conn.execute(
                &self.sql.publish,
                &[&oracle::sql_type::OracleType::Number(0, 0), &channel, &payload, &user],
            )?;
            let id: i64 = stmt.bind_value(1)?;
            self.conn.commit()?;
            Ok(id.to_string())
        })();
        result.map_err(|e: oracle::Error| self.error(&e, "publish"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claim walks the primary key in order with an unlimited SKIP LOCKED cursor, never FETCH FIRST or ROWNUM.
    #[test]
    fn claim_sql_avoids_the_oracle_pitfalls() {
        let sql = OutboxSql::new("ORAPUSH");
        let claim = sql.claim.to_uppercase();
        assert!(
            claim.starts_with("SELECT /*+ INDEX_ASC(O (ID)) */ O.ID, O.CHANNEL, O.PAYLOAD, O.TARGET_USER, ")
        );
        assert!(claim.contains("FROM ORAPUSH_OUTBOX O ORDER BY O.ID FOR UPDATE SKIP LOCKED"));
        assert!(!claim.contains("FETCH FIRST") && !claim.contains("ROWNUM"));
        assert!(claim.ends_with("SKIP LOCKED"));
    }

    /// Deletes by id, dead letters, publishing and the wake-up wait use unqualified names; the lock name is upper-case.
    #[test]
    fn complete_and_publish_sql() {
        let sql = OutboxSql::new("app");
        assert_eq!(sql.delete, "DELETE FROM ORAPUSH_OUTBOX WHERE id = :1");
        assert_eq!(sql.dead_letter, "BEGIN ORAPUSH.DEAD_LETTER(:1, :2); END;");
        assert_eq!(sql.publish, "BEGIN :1 := ORAPUSH.PUBLISH_ID(:2, :3, :4); END;");
        assert_eq!(sql.wait, "BEGIN :1 := ORAPUSH.WAIT_FOR_OUTBOX(:2); END;");
        assert_eq!(sql.lock_name, "orapush:APP.ORAPUSH_OUTBOX");
        assert_eq!(sql.lock_name, OutboxSql::new("APP").lock_name);
    }

    /// Alert waits are whole seconds within the remaining poll time; under a second is slept instead.
    #[test]
    fn alert_waits_fit_the_poll() {
        assert_eq!(alert_wait_seconds(Duration::from_millis(5000), 2), Some(2));
        assert_eq!(alert_wait_seconds(Duration::from_millis(1999), 2), Some(1));
        assert_eq!(alert_wait_seconds(Duration::from_millis(999), 2), None);
        assert_eq!(alert_wait_seconds(Duration::from_millis(200), 2), None);
    }

    /// The package the SQL calls defines what the SQL names, with the same arguments.
    #[test]
    fn sql_matches_the_install_script() {
        let install = include_str!("../../../sql/oracle/install.sql");
        for needle in [
            "FUNCTION lock_drainer(p_name IN VARCHAR2, p_wait_seconds IN NUMBER) RETURN NUMBER",
            "FUNCTION wait_for_outbox(p_wait_seconds IN NUMBER) RETURN NUMBER",
            "PROCEDURE dead_letter(p_id IN NUMBER, p_reason IN VARCHAR2)",
            "FUNCTION publish_id(p_channel IN VARCHAR2, p_payload IN CLOB, p_user IN VARCHAR2 DEFAULT NULL) RETURN NUMBER",
            "FUNCTION drainer_lock_handle(p_name IN VARCHAR2) RETURN VARCHAR2",
            "FUNCTION request_drainer_lock(p_handle IN VARCHAR2, p_wait_seconds IN NUMBER) RETURN NUMBER",
            // One alert per owner, named in the trigger as a literal.
            "SELECT SUBSTRB('ORAPUSH_OUTBOX$' || USER, 1, 30) AS outbox_alert FROM dual;",
            "outbox_alert CONSTANT VARCHAR2(30) := '&&outbox_alert';",
            "DBMS_ALERT.SIGNAL('&&outbox_alert', NULL)",
            // Created disabled, enabled once it compiled (an invalid trigger fails every INSERT).
            "AFTER INSERT ON orapush_outbox\n  DISABLE\nBEGIN",
            "ALTER TRIGGER orapush_outbox_wakeup ENABLE;",
            "DBMS_LOCK.ALLOCATE_UNIQUE_AUTONOMOUS(lockname => UPPER(p_name)",
        ] {
            assert!(install.contains(needle), "install.sql lacks {needle:?}");
        }
        // Statement level (no FOR EACH ROW): a bulk insert signals once.
        assert!(!install.contains("FOR EACH ROW"));
    }
}
