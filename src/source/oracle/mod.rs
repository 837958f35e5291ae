//! Oracle plumbing shared by the two Oracle sources: connections, error
//! classification and the single-drainer lock. The Oracle-specific code is
//! kept thin (SQL text, driver calls, error classes); the drain algorithm is
//! [`crate::source::drain`], the one PostgreSQL proves live.
//!
//! - Connections come from the `oracle` crate's native (OCI session) pool,
//!   one session per drainer, with a ping interval and a call timeout on
//!   every round trip. Not r2d2: its `get()` retries failed logins in the
//!   background until its timeout, and a retried ORA-01017 locks accounts.
//! - One active drainer per outbox or queue: the drainer's session takes an
//!   exclusive DBMS_LOCK lock through `ORAPUSH.TRY_LOCK_DRAINER`. Oracle
//!   releases it when the session ends (crash, kill, network loss), so a
//!   standby takes over; a lease row would need clocks and renewals. When a
//!   drainer drops its session after an error, the session is dropped from
//!   the pool (not returned), so its lock goes with it.
//! - Errors are classified on their DPI and ORA codes ([`classify_codes`]):
//!   dead sessions reconnect with backoff, contention retries, and
//!   configuration errors (no Instant Client, bad password, locked account,
//!   missing objects or grants) stop orapush at once with the fix. A bad
//!   password is never retried: that locks accounts.

pub mod aq;
pub mod outbox;

use std::time::Duration;

use oracle::pool::{GetMode, Pool, PoolBuilder};
use oracle::Connection;

use super::SourceError;
use crate::config::OracleSettings;

/// What to do about an Oracle error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OracleClass {
    /// No Instant Client library (DPI-1047).
    ClientMissing,
    /// Bad credentials or a locked/expired account: never retried.
    Login,
    /// orapush's objects or grants are missing.
    Setup,
    /// The session is dead or the call timed out: drop it, reconnect with backoff.
    Reconnect,
    /// Contention or anything else: roll back and retry with backoff.
    Retry,
}

/// Classifies on the codes alone, so it is testable without a database.
/// `dpi` is the DPI-nnnn code, `ora` the ORA-nnnnn code.
pub fn classify_codes(dpi: Option<i32>, ora: Option<i32>) -> OracleClass {
    match (dpi, ora) {
        (Some(1047), _) => OracleClass::ClientMissing,
        // Dead session (ODPI-C rewrites ORA-03113 & co. to DPI-1080, then
        // DPI-1010 on every later call) or a call timeout (DPI-1067).
        (Some(1080 | 1010 | 1067), _) => OracleClass::Reconnect,
        (_, Some(1017 | 28000 | 28001 | 1045)) => OracleClass::Login,
        // 942 table/view, 4043 object, 6550 PL/SQL (PLS-00201: package or
        // grant missing), 1031 privileges, 24010 queue missing, 25226 queue
        // not enabled for dequeue, 24033 no recipients.
        (_, Some(942 | 4043 | 6550 | 1031 | 24010 | 25226 | 24033)) => OracleClass::Setup,
        (
            _,
            Some(
                28 | 1012 | 1033 | 1034 | 1089 | 1092 | 2396 | 3113 | 3114 | 3135 | 3156 | 12153 | 12170
                | 12514 | 12537 | 12541 | 12547 | 12570 | 12571,
            ),
        ) => OracleClass::Reconnect,
        // 54 busy, 30006 wait expired, 60 deadlock, 8177 serialisation: retry.
        _ => OracleClass::Retry,
    }
}

/// The ORA code of an error: from the DbError, or from the message text
/// (ODPI-C appends the original ORA error to DPI-1080).
fn ora_code(e: &oracle::Error) -> Option<i32> {
    e.oci_code().or_else(|| code_in_text(&e.to_string(), "ORA-"))
}

/// The DPI code of an error: from the DbError, or from the message text.
fn dpi_code(e: &oracle::Error) -> Option<i32> {
    e.dpi_code().or_else(|| code_in_text(&e.to_string(), "DPI-"))
}

/// The number after the first `prefix` (`ORA-`, `DPI-`) in a message.
fn code_in_text(text: &str, prefix: &str) -> Option<i32> {
    let at = text.find(prefix)?;
    text[at + prefix.len()..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

/// Turns a driver error into a [`SourceError`] whose message says the fix.
pub fn classify(e: &oracle::Error, settings: &OracleSettings, what: &str) -> SourceError {
    let class = classify_codes(dpi_code(e), ora_code(e));
    let target = format!("{}@{}", settings.user, settings.connect_string);
    match class {
        OracleClass::ClientMissing => SourceError::fatal(format!(
            "Oracle Instant Client is missing (DPI-1047): install Instant Client Basic or Basic Light \
             (19c or later, with libaio), then put its directory on the loader path \
             (LD_LIBRARY_PATH=/opt/oracle/instantclient, or ldconfig) or set oracle.client_lib_dir. \
             The driver said: {e}"
        )),
        OracleClass::Login => SourceError::fatal(format!(
            "Oracle refused the login of `oracle.user` at `oracle.connect_string` ({target}): {e}. \
             Fix oracle.user / oracle.password (not retried: retries lock accounts)"
        )),
        OracleClass::Setup => SourceError::fatal(format!(
            "Oracle objects or grants are missing for {target} while trying to {what}: {e}. \
             Run sql/oracle/grants.sql as a DBA and sql/oracle/install.sql as the schema owner \
             (oracle.schema = {})",
            settings.schema
        )),
        OracleClass::Reconnect | OracleClass::Retry => {
            SourceError::transient(format!("Oracle error during {what} at {target}: {e}"))
        }
    }
}

/// Hands out the drainer's session from a one-session native pool, built on
/// first use (a failed build is retried on the next call).
pub struct SessionSource {
    settings: OracleSettings,
    pool: Option<Pool>,
    action: &'static str,
}

impl SessionSource {
    pub fn new(settings: &OracleSettings, action: &'static str) -> Self {
        Self { settings: settings.clone(), pool: None, action }
    }

    pub fn settings(&self) -> &OracleSettings {
        &self.settings
    }

    fn pool(&mut self) -> Result<&Pool, SourceError> {
        if self.pool.is_none() {
            let s = &self.settings;
            if let Some(dir) = &s.client_lib_dir {
                oracle::InitParams::new()
                    .oracle_client_lib_dir(dir)
                    .and_then(|p| p.init())
                    .map_err(|e| classify(&e, s, "load Instant Client from oracle.client_lib_dir"))?;
            }
            let wait = Duration::from_millis(s.call_timeout_ms);
            let pool = PoolBuilder::new(s.user.as_str(), s.password.expose(), s.connect_string.as_str())
                .min_connections(1)
                .max_connections(1)
                .get_mode(GetMode::TimedWait(wait))
                .ping_interval(Some(Duration::from_secs(60)))
                .and_then(|b| b.build())
                .map_err(|e| classify(&e, s, "connect"))?;
            self.pool = Some(pool);
        }
        Ok(self.pool.as_ref().expect("built above"))
    }

    /// A session with the call timeout set and tagged for `v$session`.
    pub fn session(&mut self) -> Result<Connection, SourceError> {
        let action = self.action;
        let timeout = Duration::from_millis(self.settings.call_timeout_ms);
        let conn = match self.pool()?.get() {
            Ok(conn) => conn,
            Err(e) => {
                // A pool whose sessions cannot be had is rebuilt next time.
                self.pool = None;
                return Err(classify(&e, &self.settings, "get a session"));
            }
        };
        let tag = || -> oracle::Result<()> {
            conn.set_call_timeout(Some(timeout))?;
            conn.set_module("orapush")?;
            conn.set_action(action)
        };
        tag().map_err(|e| classify(&e, &self.settings, "set up the session"))?;
        Ok(conn)
    }
}

/// Takes the drain lock `name` for this session, or answers Standby.
pub fn take_drain_lock(conn: &Connection, settings: &OracleSettings, name: &str) -> Result<(), SourceError> {
    let sql = format!("BEGIN :1 := {}.ORAPUSH.TRY_LOCK_DRAINER(:2); END;", settings.schema);
    let stmt = conn
        .execute(&sql, &[&oracle::sql_type::OracleType::Number(0, 0), &name])
        .map_err(|e| classify(&e, settings, "take the drain lock"))?;
    let status: i32 = stmt.bind_value(1).map_err(|e| classify(&e, settings, "read the drain lock status"))?;
    lock_outcome(status, name)
}

/// DBMS_LOCK.REQUEST's answer: 0 granted, 4 already ours, 1 held elsewhere.
pub fn lock_outcome(status: i32, name: &str) -> Result<(), SourceError> {
    match status {
        0 | 4 => Ok(()),
        1 => Err(SourceError::standby(format!("another orapush holds the drain lock {name}"))),
        other => Err(SourceError::transient(format!("DBMS_LOCK.REQUEST on {name} answered {other}"))),
    }
}

/// Ends a drainer's session for good, so the DBMS_LOCK lock goes with it.
pub fn drop_session(conn: &Connection) {
    let _ = conn.rollback();
    let _ = conn.close_with_mode(oracle::conn::CloseMode::Drop);
}

/// Lower-case hex of raw bytes (AQ message ids).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code oracle.md lists lands in its class.
    #[test]
    fn classifier_on_real_codes() {
        use OracleClass::*;
        let cases: &[(Option<i32>, Option<i32>, OracleClass)] = &[
            (Some(1047), None, ClientMissing),
            (Some(1080), None, Reconnect),
            (Some(1080), Some(3113), Reconnect),
            (Some(1010), None, Reconnect),
            (Some(1067), Some(3156), Reconnect),
            (None, Some(3113), Reconnect),
            (None, Some(3114), Reconnect),
            (None, Some(3135), Reconnect),
            (None, Some(2396), Reconnect),
            (None, Some(12541), Reconnect),
            (None, Some(12514), Reconnect),
            (None, Some(1033), Reconnect),
            (None, Some(1017), Login),
            (None, Some(28000), Login),
            (None, Some(942), Setup),
            (None, Some(6550), Setup),
            (None, Some(24010), Setup),
            (None, Some(54), Retry),
            (None, Some(60), Retry),
            (None, Some(30006), Retry),
            (None, None, Retry),
        ];
        for (dpi, ora, want) in cases {
            assert_eq!(classify_codes(*dpi, *ora), *want, "DPI {dpi:?} ORA {ora:?}");
        }
    }

    /// A real driver error without Instant Client gives the install guidance, fatal.
    #[test]
    fn dpi_1047_says_how_to_install_instant_client() {
        let e = oracle::Error::new(
            oracle::ErrorKind::DpiError,
            "DPI-1047: Cannot locate a 64-bit Oracle Client library: \"libclntsh.so: cannot open shared object file\"",
        );
        let err = classify(&e, &OracleSettings::default(), "connect");
        assert!(err.is_fatal());
        assert!(
            err.message.contains("LD_LIBRARY_PATH") && err.message.contains("oracle.client_lib_dir"),
            "{err}"
        );
    }

    /// A dead session reported as DPI-1080 with the ORA code only in the text reconnects.
    #[test]
    fn dead_session_text_is_understood() {
        let e = oracle::Error::new(
            oracle::ErrorKind::DpiError,
            "DPI-1080: connection was closed by ORA-3113\nORA-03113: end-of-file on communication channel",
        );
        assert_eq!(ora_code(&e), Some(3113));
        assert!(!classify(&e, &OracleSettings::default(), "claim").is_fatal());
    }

    /// DBMS_LOCK answers map to active, standby or retry.
    #[test]
    fn lock_answers() {
        assert!(lock_outcome(0, "l").is_ok());
        assert!(lock_outcome(4, "l").is_ok());
        assert_eq!(lock_outcome(1, "l").unwrap_err().class, crate::source::ErrorClass::Standby);
        assert_eq!(lock_outcome(2, "l").unwrap_err().class, crate::source::ErrorClass::Transient);
    }

    #[test]
    fn hex_of_message_ids() {
        assert_eq!(hex(&[0x0a, 0xff, 0x00]), "0aff00");
    }
}
