//! The PostgreSQL outbox.
//!
//! - Claim: `SELECT … ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED` in a
//!   transaction; `complete` deletes what was handed over (and moves the
//!   dead letters) in that same transaction and commits. A crash before the
//!   commit rolls back: the rows are claimed again. There is no "last seen
//!   id" cursor, so a row whose transaction commits after rows with higher
//!   ids is still delivered.
//! - One active drainer: the drain connection holds a session-level advisory
//!   lock keyed on the outbox's schema-qualified name. PostgreSQL releases it
//!   the moment that connection ends (crash, `pg_terminate_backend`, network
//!   loss), and a standby takes over on its next try.
//! - Wake-up: a second, dedicated connection LISTENs on
//!   `postgres.notify_channel`, which the outbox's AFTER INSERT trigger
//!   signals. It reconnects by itself; while it is down, and for any
//!   notification missed, the poll interval still bounds the delay.
//!
//! The driver is the blocking `postgres` crate; everything here runs on the
//! source's own thread.

use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use tracing::{debug, warn};

use super::{
    DeadLetter, DeadLetterInfo, OutboxStore, Publisher, SourceError, Stopper, StoreStats, DEAD_LETTERS_SHOWN,
};
use crate::config::PostgresSettings;
use crate::message::{validate_channel, OutboxRow};

/// The install script; orapush runs it when `postgres.create_schema` is set.
pub const INSTALL_SQL: &str = include_str!("../../sql/postgres/install.sql");
/// The trigger call in [`INSTALL_SQL`] that names the default NOTIFY channel.
const DEFAULT_TRIGGER_CALL: &str = "orapush_notify('orapush_outbox')";

/// Longest single wait on the LISTEN connection, so a stop is seen quickly.
const LISTEN_SLICE: Duration = Duration::from_millis(100);

pub struct PgOutbox {
    client: Client,
    /// The LISTEN connection; `None` while it is down (then: poll only).
    listener: Option<Client>,
    settings: PostgresSettings,
    sql: Statements,
    in_transaction: bool,
}

/// SQL text with the configured schema filled in (validated as a plain
/// identifier by the configuration, so it is safe to splice).
struct Statements {
    claim: String,
    dead_letter: String,
    delete: String,
    publish: String,
    backlog: String,
    recent_dead: String,
}

impl Statements {
    fn new(schema: &str) -> Self {
        let outbox = format!("\"{schema}\".orapush_outbox");
        let dead = format!("\"{schema}\".orapush_dead_letter");
        Self {
            // Casts make any text-like column type readable.
            claim: format!(
                "SELECT id, channel::text, payload::text, target_user::text, \
                 EXTRACT(EPOCH FROM (now() - created_at))::float8 \
                 FROM {outbox} ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            dead_letter: format!(
                "INSERT INTO {dead} (id, channel, payload, target_user, created_at, reason) \
                 SELECT o.id, o.channel, o.payload, o.target_user, o.created_at, r.reason \
                 FROM {outbox} o JOIN unnest($1::bigint[], $2::text[]) AS r(id, reason) ON r.id = o.id \
                 ON CONFLICT (id) DO UPDATE SET reason = EXCLUDED.reason, failed_at = now()"
            ),
            delete: format!("DELETE FROM {outbox} WHERE id = ANY($1)"),
            publish: format!(
                "INSERT INTO {outbox} (channel, payload, target_user) VALUES ($1, $2, $3) RETURNING id"
            ),
            backlog: format!(
                "SELECT count(*), coalesce(EXTRACT(EPOCH FROM (now() - min(created_at))), 0)::float8 FROM {outbox}"
            ),
            recent_dead: format!(
                "SELECT id::text, channel::text, reason::text, \
                 to_char(failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                 FROM {dead} WHERE failed_at > now() - interval '1 hour' \
                 ORDER BY failed_at DESC, id DESC LIMIT $1"
            ),
        }
    }
}

impl PgOutbox {
    /// `user@host:port/db` of the configured URL, never the password.
    pub fn describe(settings: &PostgresSettings) -> String {
        match settings.url.expose().parse::<postgres::Config>() {
            Ok(c) => {
                let host = match c.get_hosts().first() {
                    Some(postgres::config::Host::Tcp(h)) => h.clone(),
                    Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
                    None => "localhost".into(),
                };
                let port = c.get_ports().first().copied().unwrap_or(5432);
                format!("{}@{host}:{port}/{}", c.get_user().unwrap_or("?"), c.get_dbname().unwrap_or("?"))
            }
            Err(_) => "(unparsable postgres.url)".into(),
        }
    }

    /// The advisory-lock key text: one active drainer per outbox table.
    pub fn lock_key(settings: &PostgresSettings) -> String {
        format!("orapush:{}.orapush_outbox", settings.schema)
    }

    fn open_client(settings: &PostgresSettings, application_name: &str) -> Result<Client, SourceError> {
        let mut config: postgres::Config = settings.url.expose().parse().map_err(|e| {
            SourceError::fatal(format!("`postgres.url` is not a valid connection string: {e}"))
        })?;
        config
            .application_name(application_name)
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            // Notice a dead peer (network cut) in seconds, not hours.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(30));
        config.connect(NoTls).map_err(|e| classify(&e, settings, "connect"))
    }

    /// Connects to drain: checks (or creates) the tables, takes the drain
    /// lock (or answers Standby), and opens the LISTEN connection.
    pub fn connect(settings: &PostgresSettings) -> Result<Self, SourceError> {
        let mut client = Self::open_client(settings, &settings.application_name)?;
        if settings.create_schema {
            install(&mut client, settings)?;
        }
        check_tables(&mut client, settings)?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&Self::lock_key(settings)])
            .map_err(|e| classify(&e, settings, "take the drain lock"))?
            .get(0);
        if !locked {
            return Err(SourceError::standby(format!(
                "another orapush drains {}.orapush_outbox on {}",
                settings.schema,
                Self::describe(settings)
            )));
        }
        let listener = open_listener(settings);
        Ok(Self {
            client,
            listener,
            settings: settings.clone(),
            sql: Statements::new(&settings.schema),
            in_transaction: false,
        })
    }

    /// Connects only to publish (`orapush publish`): no lock, no LISTEN.
    pub fn connect_publisher(settings: &PostgresSettings) -> Result<Self, SourceError> {
        let mut client = Self::open_client(settings, &format!("{}-publish", settings.application_name))?;
        check_tables(&mut client, settings)?;
        Ok(Self {
            client,
            listener: None,
            settings: settings.clone(),
            sql: Statements::new(&settings.schema),
            in_transaction: false,
        })
    }

    fn error(&self, e: &postgres::Error, what: &str) -> SourceError {
        classify(e, &self.settings, what)
    }
}

/// Runs the install script in `postgres.schema`, with the configured NOTIFY
/// channel, serialised against other instances doing the same.
fn install(client: &mut Client, settings: &PostgresSettings) -> Result<(), SourceError> {
    let script =
        INSTALL_SQL.replace(DEFAULT_TRIGGER_CALL, &format!("orapush_notify('{}')", settings.notify_channel));
    let schema = &settings.schema;
    let batch = format!(
        "BEGIN;\nSELECT pg_advisory_xact_lock(hashtext('orapush:install'));\n\
         CREATE SCHEMA IF NOT EXISTS \"{schema}\";\nSET LOCAL search_path TO \"{schema}\";\n{script}\nCOMMIT;"
    );
    client.batch_execute(&batch).map_err(|e| {
        let _ = client.batch_execute("ROLLBACK");
        classify(&e, settings, "create the outbox tables (postgres.create_schema)")
    })
}

fn check_tables(client: &mut Client, settings: &PostgresSettings) -> Result<(), SourceError> {
    for table in ["orapush_outbox", "orapush_dead_letter"] {
        let name = format!("\"{}\".{table}", settings.schema);
        let found: Option<String> = client
            .query_one("SELECT to_regclass($1)::text", &[&name])
            .map_err(|e| classify(&e, settings, "look up the outbox tables"))?
            .get(0);
        if found.is_none() {
            return Err(SourceError::fatal(format!(
                "table {}.{table} does not exist in {}: run sql/postgres/install.sql in schema {} \
                 (or set postgres.create_schema = true)",
                settings.schema,
                PgOutbox::describe(settings),
                settings.schema
            )));
        }
    }
    Ok(())
}

fn open_listener(settings: &PostgresSettings) -> Option<Client> {
    let name = format!("{}-listen", settings.application_name);
    let result = PgOutbox::open_client(settings, &name).and_then(|mut c| {
        c.batch_execute(&format!("LISTEN \"{}\"", settings.notify_channel))
            .map_err(|e| classify(&e, settings, "LISTEN"))?;
        Ok(c)
    });
    match result {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "LISTEN connection unavailable; polling only until it is back");
            None
        }
    }
}

/// Turns a driver error into a transient or fatal [`SourceError`] whose
/// message names the key to fix.
fn classify(e: &postgres::Error, settings: &PostgresSettings, what: &str) -> SourceError {
    let target = PgOutbox::describe(settings);
    let Some(db) = e.as_db_error() else {
        // No SQLSTATE: the connection itself (refused, reset, timed out).
        return SourceError::transient(format!(
            "cannot {what} on PostgreSQL at `postgres.url` = {target}: {e} (is the server up and reachable?)"
        ));
    };
    let code = db.code();
    let message = db.message();
    if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
        SourceError::fatal(format!(
            "PostgreSQL refused the login for `postgres.url` = {target}: {message}; fix the user or password"
        ))
    } else if *code == SqlState::INVALID_CATALOG_NAME {
        SourceError::fatal(format!(
            "`postgres.url` = {target} names a database that does not exist: {message}"
        ))
    } else if *code == SqlState::UNDEFINED_TABLE {
        SourceError::fatal(format!(
            "{message} in {target}: run sql/postgres/install.sql in schema {} (or set postgres.create_schema = true)",
            settings.schema
        ))
    } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        SourceError::fatal(format!(
            "{message} in {target}: orapush's user needs USAGE on the schema, SELECT, UPDATE, DELETE on \
             orapush_outbox and SELECT, INSERT, UPDATE on orapush_dead_letter to drain; `orapush \
             publish` needs INSERT on orapush_outbox (see README, PostgreSQL)"
        ))
    } else {
        SourceError::transient(format!(
            "PostgreSQL error during {what} at {target}: {message} (SQLSTATE {})",
            code.code()
        ))
    }
}

impl OutboxStore for PgOutbox {
    fn claim(&mut self, limit: usize) -> Result<Vec<OutboxRow>, SourceError> {
        self.abort();
        self.client.batch_execute("BEGIN").map_err(|e| self.error(&e, "begin"))?;
        self.in_transaction = true;
        let rows =
            self.client.query(&self.sql.claim, &[&(limit as i64)]).map_err(|e| self.error(&e, "claim"))?;
        let rows: Vec<OutboxRow> = rows
            .iter()
            .map(|r| OutboxRow {
                id: r.get(0),
                message_id: None,
                defect: None,
                channel: r.get::<_, Option<String>>(1).unwrap_or_default(),
                payload: r.get::<_, Option<String>>(2).unwrap_or_default(),
                target_user: r.get(3),
                age_seconds: r.get::<_, Option<f64>>(4).unwrap_or(0.0).max(0.0),
            })
            .collect();
        if rows.is_empty() {
            self.abort();
        }
        Ok(rows)
    }

    fn complete(&mut self, handed_over: &[i64], dead: &[DeadLetter]) -> Result<(), SourceError> {
        let result = (|| {
            if !dead.is_empty() {
                let ids: Vec<i64> = dead.iter().map(|d| d.row.id).collect();
                let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
                self.client.execute(&self.sql.dead_letter, &[&ids, &reasons])?;
            }
            let all: Vec<i64> = handed_over.iter().copied().chain(dead.iter().map(|d| d.row.id)).collect();
            self.client.execute(&self.sql.delete, &[&all])?;
            self.client.batch_execute("COMMIT")
        })();
        self.in_transaction = false;
        result.map_err(|e| self.error(&e, "delete delivered rows"))
    }

    fn abort(&mut self) {
        if self.in_transaction {
            let _ = self.client.batch_execute("ROLLBACK");
            self.in_transaction = false;
        }
    }

    fn stats(&mut self) -> Result<StoreStats, SourceError> {
        let row =
            self.client.query_one(&self.sql.backlog, &[]).map_err(|e| self.error(&e, "count the backlog"))?;
        let (backlog, oldest_seconds): (i64, f64) = (row.get(0), row.get(1));
        let dead_letters = self
            .client
            .query(&self.sql.recent_dead, &[&(DEAD_LETTERS_SHOWN as i64)])
            .map_err(|e| self.error(&e, "list dead letters"))?
            .iter()
            .map(|r| DeadLetterInfo {
                id: r.get(0),
                channel: r.get(1),
                reason: r.get(2),
                failed_at: r.get(3),
            })
            .collect();
        Ok(StoreStats {
            backlog: backlog.max(0) as u64,
            oldest_seconds: Some(oldest_seconds.max(0.0)),
            dead_letters,
        })
    }

    fn wait_for_work(&mut self, timeout: Duration, stop: &Stopper) -> Result<(), SourceError> {
        let deadline = Instant::now() + timeout;
        let mut reconnected = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || stop.is_stopped() {
                return Ok(());
            }
            if self.listener.as_ref().is_none_or(|l| l.is_closed()) {
                if reconnected {
                    // Still down: the poll interval bounds the delay.
                    stop.sleep(remaining);
                    return Ok(());
                }
                reconnected = true;
                self.listener = open_listener(&self.settings);
                if self.listener.is_some() {
                    // Notifications sent while nobody listened are gone: look now.
                    return Ok(());
                }
                continue;
            }
            let listener = self.listener.as_mut().expect("checked above");
            let next = listener.notifications().timeout_iter(remaining.min(LISTEN_SLICE)).next();
            match next {
                Ok(None) => continue,
                Ok(Some(_)) => {
                    // Several inserts may have signalled: one pass serves them all.
                    let mut pending = listener.notifications();
                    let mut queued = pending.iter();
                    while let Ok(Some(_)) = queued.next() {}
                    return Ok(());
                }
                Err(e) => {
                    debug!(error = %e, "LISTEN connection lost; reconnecting");
                    self.listener = None;
                }
            }
        }
    }
}

impl Publisher for PgOutbox {
    fn publish(&mut self, channel: &str, payload: &str, user: Option<&str>) -> Result<String, SourceError> {
        validate_channel(channel).map_err(|e| SourceError::fatal(e.to_string()))?;
        let row = self
            .client
            .query_one(&self.sql.publish, &[&channel, &payload, &user])
            .map_err(|e| self.error(&e, "insert"))?;
        Ok(row.get::<_, i64>(0).to_string())
    }
}
