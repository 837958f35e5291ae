//! Source kind `oracle_outbox`: the ORAPUSH_OUTBOX table.
//!
//! Claim: an unlimited `SELECT … ORDER BY id FOR UPDATE SKIP LOCKED` cursor
//! from which exactly `batch_size` rows are fetched. Never `FETCH FIRST` with
//! FOR UPDATE (ORA-02014) nor `ROWNUM <= n` with SKIP LOCKED (ROWNUM applies
//! before the skip: it returns too few or no rows while work exists). With
//! SKIP LOCKED rows are locked as they are fetched; the prefetch may lock a
//! few more, which the commit releases.
//!
//! Complete: dead letters move through `ORAPUSH.DEAD_LETTER` (the package
//! owns the dead-letter table, so the runtime user needs no INSERT grant),
//! handed-over rows are deleted in one array DML, then commit. Autocommit is
//! off in the driver; a dropped session rolls back.

use oracle::Connection;

use super::{classify, drop_session, take_drain_lock, SessionSource};
use crate::config::OracleSettings;
use crate::message::{validate_channel, OutboxRow};
use crate::source::{DeadLetter, OutboxStore, Publisher, SourceError};

/// SQL text for one schema (validated as a plain identifier by the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxSql {
    pub claim: String,
    pub delete: String,
    pub dead_letter: String,
    pub publish: String,
    pub lock_name: String,
}

impl OutboxSql {
    pub fn new(schema: &str) -> Self {
        // Seconds since created_at, with fractions, from an INTERVAL DAY TO SECOND.
        let age = "(EXTRACT(DAY FROM (SYSTIMESTAMP - created_at)) * 86400 \
                   + EXTRACT(HOUR FROM (SYSTIMESTAMP - created_at)) * 3600 \
                   + EXTRACT(MINUTE FROM (SYSTIMESTAMP - created_at)) * 60 \
                   + EXTRACT(SECOND FROM (SYSTIMESTAMP - created_at)))";
        Self {
            claim: format!(
                "SELECT id, channel, payload, target_user, {age} FROM {schema}.ORAPUSH_OUTBOX \
                 ORDER BY id FOR UPDATE SKIP LOCKED"
            ),
            delete: format!("DELETE FROM {schema}.ORAPUSH_OUTBOX WHERE id = :1"),
            dead_letter: format!("BEGIN {schema}.ORAPUSH.DEAD_LETTER(:1, :2); END;"),
            publish: format!("BEGIN :1 := {schema}.ORAPUSH.PUBLISH_ID(:2, :3, :4); END;"),
            lock_name: format!("orapush:{schema}.ORAPUSH_OUTBOX"),
        }
    }
}

pub struct OracleOutbox {
    conn: Connection,
    settings: OracleSettings,
    sql: OutboxSql,
    drains: bool,
}

impl OracleOutbox {
    /// A session that drains: it holds the outbox's drain lock (or Standby).
    pub fn connect(sessions: &mut SessionSource) -> Result<Self, SourceError> {
        let settings = sessions.settings().clone();
        let conn = sessions.session()?;
        let sql = OutboxSql::new(&settings.schema);
        if let Err(e) = take_drain_lock(&conn, &settings, &sql.lock_name) {
            drop_session(&conn);
            return Err(e);
        }
        Ok(Self { conn, settings, sql, drains: true })
    }

    /// A session that only publishes (`orapush publish`): no lock.
    pub fn connect_publisher(settings: &OracleSettings) -> Result<Self, SourceError> {
        let mut sessions = SessionSource::new(settings, "publish");
        let conn = sessions.session()?;
        Ok(Self { conn, settings: settings.clone(), sql: OutboxSql::new(&settings.schema), drains: false })
    }

    fn error(&self, e: &oracle::Error, what: &str) -> SourceError {
        classify(e, &self.settings, what)
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

impl Drop for OracleOutbox {
    fn drop(&mut self) {
        if self.drains {
            drop_session(&self.conn);
        }
    }
}

impl OutboxStore for OracleOutbox {
    fn claim(&mut self, limit: usize) -> Result<Vec<OutboxRow>, SourceError> {
        let rows = self.claim_rows(limit).map_err(|e| self.error(&e, "claim rows"))?;
        if rows.is_empty() {
            // Nothing locked, but end the transaction the SELECT began.
            self.abort();
        }
        Ok(rows)
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

    /// The claim is an unlimited SKIP LOCKED cursor in id order, never FETCH FIRST or ROWNUM.
    #[test]
    fn claim_sql_avoids_the_oracle_pitfalls() {
        let sql = OutboxSql::new("ORAPUSH");
        let claim = sql.claim.to_uppercase();
        assert!(claim.starts_with("SELECT ID, CHANNEL, PAYLOAD, TARGET_USER, "));
        assert!(claim.contains("FROM ORAPUSH.ORAPUSH_OUTBOX ORDER BY ID FOR UPDATE SKIP LOCKED"));
        assert!(!claim.contains("FETCH FIRST") && !claim.contains("ROWNUM"));
        assert!(claim.ends_with("SKIP LOCKED"));
    }

    /// Deletes by id, dead letters and publishing go through the schema's objects.
    #[test]
    fn complete_and_publish_sql() {
        let sql = OutboxSql::new("APP");
        assert_eq!(sql.delete, "DELETE FROM APP.ORAPUSH_OUTBOX WHERE id = :1");
        assert_eq!(sql.dead_letter, "BEGIN APP.ORAPUSH.DEAD_LETTER(:1, :2); END;");
        assert_eq!(sql.publish, "BEGIN :1 := APP.ORAPUSH.PUBLISH_ID(:2, :3, :4); END;");
        assert_eq!(sql.lock_name, "orapush:APP.ORAPUSH_OUTBOX");
    }
}
