//! Oracle plumbing shared by the two Oracle sources: connections, error
//! classification and the single-drainer lock. The Oracle-specific code is
//! kept thin (SQL text, driver calls, error classes); the drain algorithm is
//! [`crate::source::drain`], the one PostgreSQL proves live.
//!
//! - Connections come from the `oracle` crate's native (OCI session) pool:
//!   the drainer's session and, for the outbox, the wake-up waiter's, each
//!   with a call timeout on every round trip. Not r2d2: its `get()` retries
//!   failed logins in the background until its timeout, and a retried
//!   ORA-01017 locks accounts.
//! - Every session runs `ALTER SESSION SET CURRENT_SCHEMA = <oracle.schema>`
//!   and names orapush's objects unqualified. `ORAPUSH.ORAPUSH.X` breaks when
//!   the service logs in as the owner (the first `ORAPUSH` then resolves to
//!   the package: PLS-00302); with the current schema set, `ORAPUSH.X`
//!   resolves to the package for the owner and the service user alike.
//! - One active drainer per outbox or queue: the drainer's session holds an
//!   exclusive DBMS_LOCK lock ([`DrainLock`], `ORAPUSH.LOCK_DRAINER`). A
//!   standby keeps its session and waits inside `DBMS_LOCK.REQUEST`
//!   (`oracle.wait_ms` per call), so it takes over the moment the lock is
//!   free, without a logon per try. Oracle frees the lock when the holding
//!   session ends: at once when the session is killed, its process exits or
//!   its connection is closed; after a host loss or a network partition only
//!   once the server notices the dead connection (Dead Connection Detection,
//!   `SQLNET.EXPIRE_TIME` in the server's sqlnet.ora, off by default: see
//!   the README). A drainer that drops its session after an error drops it
//!   from the pool (not back into it), so its lock goes with it.
//! - Errors are classified on their DPI and ORA codes ([`classify_codes`]):
//!   dead sessions reconnect with backoff, contention retries, and
//!   configuration errors (no Instant Client, bad or empty password, locked
//!   account, a connect string that does not resolve, missing or invalid
//!   objects or grants) stop orapush at once with the fix. A bad password is
//!   never retried: that locks accounts.

pub mod aq;
pub mod outbox;

use std::time::{Duration, Instant};

use oracle::pool::{GetMode, Pool, PoolBuilder};
use oracle::Connection;

use super::{ErrorClass, SourceError};
use crate::config::OracleSettings;

/// What to do about an Oracle error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OracleClass {
    /// No Instant Client library (DPI-1047).
    ClientMissing,
    /// Bad or empty credentials, or a locked/expired account: never retried.
    Login,
    /// The connect string names no database that can be found.
    Address,
    /// orapush's objects or grants are missing or invalid.
    Setup,
    /// The queue has several consumers and `oracle.consumer_name` is not set.
    ConsumerName,
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
        // 1005 empty password, 1017 bad credentials, 28000 locked, 28001
        // expired, 1045 no CREATE SESSION.
        (_, Some(1005 | 1017 | 28000 | 28001 | 1045)) => OracleClass::Login,
        // 12154 alias not resolved, 12545 host unknown: the connect string.
        (_, Some(12154 | 12545)) => OracleClass::Address,
        // 942 table/view, 4043 object, 6550 PL/SQL (PLS-00201: package or
        // grant missing; PLS-00302: a component missing, an old install),
        // 1031 privileges, 24010 queue missing, 25226 queue not enabled for
        // dequeue, 24033 no recipients, 4063 and 6508 a package that
        // compiled with errors or is invalid, 1435 no such user (the
        // `oracle.schema` of ALTER SESSION SET CURRENT_SCHEMA).
        (_, Some(942 | 4043 | 6550 | 1031 | 24010 | 25226 | 24033 | 4063 | 6508 | 1435)) => {
            OracleClass::Setup
        }
        (_, Some(25231)) => OracleClass::ConsumerName,
        (
            _,
            Some(
                28 | 1012 | 1033 | 1034 | 1089 | 1092 | 2396 | 3113 | 3114 | 3135 | 3156 | 12153 | 12170
                | 12514 | 12537 | 12541 | 12547 | 12570 | 12571,
            ),
        ) => OracleClass::Reconnect,
        // 54 busy, 30006 wait expired, 60 deadlock, 8177 serialisation:
        // retry. (25263, a dequeue by message id of a message that is gone,
        // cannot arise: orapush never dequeues by id.)
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
        OracleClass::Address => SourceError::fatal(format!(
            "`oracle.connect_string` ({}) names no database orapush can find: {e}. \
             Use Easy Connect (//host:1521/SERVICE), or a TNS alias defined in the tnsnames.ora \
             of TNS_ADMIN, and check that the host name resolves",
            settings.connect_string
        )),
        OracleClass::Setup => SourceError::fatal(format!(
            "Oracle objects or grants of schema {} are missing or invalid for {target} while trying \
             to {what}: {e}. Run sql/oracle/grants.sql as a DBA and sql/oracle/install.sql as the \
             schema owner (it stops on compilation errors), then check oracle.schema",
            settings.schema
        )),
        OracleClass::ConsumerName => SourceError::fatal(format!(
            "queue {} has several consumers (ORA-25231): set oracle.consumer_name to the \
             subscriber orapush dequeues as: {e}",
            settings.qualified_queue()
        )),
        OracleClass::Reconnect | OracleClass::Retry => {
            SourceError::transient(format!("Oracle error during {what} at {target}: {e}"))
        }
    }
}

/// Sessions for one source, from a small native pool built on first use (a
/// failed build is retried on the next call): the drainer's session, the
/// outbox's wake-up waiter, and the standby session kept between tries.
pub struct SessionSource {
    settings: OracleSettings,
    pool: Option<Pool>,
    action: &'static str,
    /// A standby's session and its lock handle, kept to wait for the drain
    /// lock again.
    standby: Option<(Connection, DrainLock)>,
}

impl SessionSource {
    /// The drainer's session plus the wake-up waiter's.
    const SESSIONS: u32 = 2;

    pub fn new(settings: &OracleSettings, action: &'static str) -> Self {
        Self { settings: settings.clone(), pool: None, action, standby: None }
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
                .max_connections(Self::SESSIONS)
                .get_mode(GetMode::TimedWait(wait))
                .ping_interval(Some(Duration::from_secs(60)))
                .and_then(|b| b.build())
                .map_err(|e| classify(&e, s, "connect"))?;
            self.pool = Some(pool);
        }
        Ok(self.pool.as_ref().expect("built above"))
    }

    /// A session that publishes (no lock).
    pub fn session(&mut self) -> Result<Connection, SourceError> {
        self.new_session(self.action)
    }

    /// A fresh session tagged with `action` (for `v$session`).
    pub fn new_session(&mut self, action: &'static str) -> Result<Connection, SourceError> {
        let conn = match self.pool()?.get() {
            Ok(conn) => conn,
            Err(e) => {
                // A pool whose sessions cannot be had is rebuilt next time.
                self.pool = None;
                return Err(classify(&e, &self.settings, "get a session"));
            }
        };
        prepare_session(&conn, &self.settings, action)
            .map_err(|e| classify(&e, &self.settings, "set up the session"))?;
        Ok(conn)
    }

    /// Another handle on the same pool (no standby session), for a second
    /// session of the same source: the outbox's wake-up waiter.
    pub fn sibling(&self, action: &'static str) -> SessionSource {
        SessionSource { settings: self.settings.clone(), pool: self.pool.clone(), action, standby: None }
    }
}

/// The SQL every orapush session runs first (one round trip).
pub fn current_schema_sql(schema: &str) -> String {
    format!("ALTER SESSION SET CURRENT_SCHEMA = {}", schema.to_uppercase())
}

/// Call timeout, `v$session` tags, and the schema orapush's names resolve in.
fn prepare_session(conn: &Connection, settings: &OracleSettings, action: &str) -> oracle::Result<()> {
    conn.set_call_timeout(Some(Duration::from_millis(settings.call_timeout_ms)))?;
    conn.set_module("orapush")?;
    conn.set_action(action)?;
    // The schema is checked to be a plain identifier by the configuration.
    conn.execute(&current_schema_sql(&settings.schema), &[])?;
    Ok(())
}

/// Whole seconds of one server-side wait: `wait_ms` rounded down, at least 1
/// (the configuration keeps it at least 1 s below the call timeout).
pub fn wait_seconds(wait_ms: u64) -> i64 {
    (wait_ms / 1000).max(1) as i64
}

/// The name of the drain lock of an outbox table or queue, `SCHEMA.OBJECT`
/// (upper-cased: `orapush` and `ORAPUSH` are one drainer).
pub fn drain_lock_name(qualified_object: &str) -> String {
    format!("orapush:{}", qualified_object.to_uppercase())
}

/// The single-drainer lock of one session: the lock name's handle and when
/// it was allocated.
#[derive(Debug)]
pub struct DrainLock {
    name: String,
    handle: String,
    allocated: Instant,
}

impl DrainLock {
    /// `:1` handle out, `:2` lock name.
    pub const HANDLE_SQL: &'static str = "BEGIN :1 := ORAPUSH.DRAINER_LOCK_HANDLE(:2); END;";
    /// `:1` status out, `:2` handle, `:3` wait seconds.
    pub const REQUEST_SQL: &'static str = "BEGIN :1 := ORAPUSH.REQUEST_DRAINER_LOCK(:2, :3); END;";
    /// DBMS_LOCK forgets names allocated more than 10 days ago; a name
    /// forgotten while held would let a second drainer in. Allocating again
    /// well within that keeps it. Each allocation is an autonomous commit,
    /// so it happens this often, not on every standby wait.
    pub const REFRESH_EVERY: Duration = Duration::from_secs(3600);

    fn allocate(conn: &Connection, settings: &OracleSettings, name: String) -> Result<Self, SourceError> {
        let stmt = conn
            .execute(Self::HANDLE_SQL, &[&oracle::sql_type::OracleType::Varchar2(128), &name])
            .map_err(|e| classify(&e, settings, "allocate the drain lock"))?;
        let handle: String =
            stmt.bind_value(1).map_err(|e| classify(&e, settings, "read the drain lock handle"))?;
        Ok(Self { name, handle, allocated: Instant::now() })
    }

    fn due(&self) -> bool {
        self.allocated.elapsed() >= Self::REFRESH_EVERY
    }

    /// Takes the lock `name`, waiting up to `oracle.wait_ms` in the database,
    /// on the standby's kept session or a new one. A standby keeps its
    /// session (and handle) in `sessions` for the next wait and answers
    /// Standby at once (it already waited); any other failure drops the
    /// session.
    pub fn take(sessions: &mut SessionSource, name: String) -> Result<(Connection, DrainLock), SourceError> {
        let settings = sessions.settings().clone();
        let (conn, kept) = match sessions.standby.take() {
            Some((conn, lock)) => (conn, Some(lock)),
            None => (sessions.new_session(sessions.action)?, None),
        };
        let lock = match kept {
            Some(lock) if lock.name == name && !lock.due() => Ok(lock),
            _ => Self::allocate(&conn, &settings, name),
        };
        let outcome = lock.map(|lock| {
            let answer = request(&conn, &settings, &lock, wait_seconds(settings.wait_ms));
            (lock, answer)
        });
        match outcome {
            Ok((lock, Ok(()))) => Ok((conn, lock)),
            Ok((lock, Err(e))) if e.class == ErrorClass::Standby => {
                sessions.standby = Some((conn, lock));
                Err(SourceError::standby_after_wait(e.message))
            }
            Ok((_, Err(e))) | Err(e) => {
                drop_session(&conn);
                Err(e)
            }
        }
    }

    /// Allocates the name again when due (so it never ages out), and
    /// checks that this session still holds the lock (answer 4); Standby
    /// when it does not.
    pub fn refresh_if_due(
        &mut self,
        conn: &Connection,
        settings: &OracleSettings,
    ) -> Result<(), SourceError> {
        if !self.due() {
            return Ok(());
        }
        *self = Self::allocate(conn, settings, self.name.clone())?;
        request(conn, settings, self, 0)
    }
}

fn request(
    conn: &Connection,
    settings: &OracleSettings,
    lock: &DrainLock,
    wait_seconds: i64,
) -> Result<(), SourceError> {
    let stmt = conn
        .execute(
            DrainLock::REQUEST_SQL,
            &[&oracle::sql_type::OracleType::Number(0, 0), &lock.handle, &wait_seconds],
        )
        .map_err(|e| classify(&e, settings, "take the drain lock"))?;
    let status: i32 = stmt.bind_value(1).map_err(|e| classify(&e, settings, "read the drain lock status"))?;
    lock_outcome(status, &lock.name)
}

/// DBMS_LOCK.REQUEST's answer: 0 granted, 4 already ours, 1 held elsewhere
/// (the wait timed out).
pub fn lock_outcome(status: i32, name: &str) -> Result<(), SourceError> {
    match status {
        0 | 4 => Ok(()),
        1 => Err(SourceError::standby(format!("another orapush holds the drain lock {name}"))),
        other => Err(SourceError::transient(format!("DBMS_LOCK.REQUEST on {name} answered {other}"))),
    }
}

/// Ends a drainer's session for good, so the DBMS_LOCK lock goes with it.
/// The rollback undoes a claim in hand (rows stay in the outbox).
pub fn drop_session(conn: &Connection) {
    let _ = conn.rollback();
    let _ = conn.close_with_mode(oracle::conn::CloseMode::Drop);
}

/// Lower-case hex of raw bytes (AQ message ids).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads Instant Client the way the sources will (`orapush check-client`,
/// and the Docker image's build check): its version, or the DPI-1047 fix.
pub fn check_client(settings: &OracleSettings) -> Result<String, SourceError> {
    let mut params = oracle::InitParams::new();
    if let Some(dir) = &settings.client_lib_dir {
        params.oracle_client_lib_dir(dir).map_err(|e| classify(&e, settings, "set oracle.client_lib_dir"))?;
    }
    params.init().map_err(|e| classify(&e, settings, "load Instant Client"))?;
    let version = oracle::Version::client().map_err(|e| classify(&e, settings, "load Instant Client"))?;
    Ok(version.to_string())
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
            (None, Some(1005), Login),
            (None, Some(12154), Address),
            (None, Some(12545), Address),
            (None, Some(4063), Setup),
            (None, Some(6508), Setup),
            (None, Some(25231), ConsumerName),
            (None, Some(25263), Retry),
            (None, Some(1435), Setup),
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

    /// Setup-class errors stop orapush with the fix, naming the key or the script.
    #[test]
    fn setup_errors_say_the_fix() {
        let settings = OracleSettings { queue: "jobs".into(), ..OracleSettings::default() };
        let cases = [
            ("ORA-12154: TNS:could not resolve the connect identifier specified", "oracle.connect_string"),
            ("ORA-12545: Connect failed because target host or object does not exist", "resolves"),
            ("ORA-04063: package body \"ORAPUSH.ORAPUSH\" has errors", "install.sql"),
            ("ORA-06508: PL/SQL: could not find program unit being called", "install.sql"),
            ("ORA-25231: cannot dequeue because CONSUMER_NAME not specified", "oracle.consumer_name"),
            ("ORA-01005: null password given; logon denied", "oracle.password"),
        ];
        for (text, fix) in cases {
            let e = oracle::Error::new(oracle::ErrorKind::OciError, text);
            let err = classify(&e, &settings, "claim");
            assert!(err.is_fatal(), "{text}");
            assert!(err.message.contains(fix), "{text}: {err}");
        }
        let e = oracle::Error::new(oracle::ErrorKind::OciError, "ORA-25231: x");
        assert!(classify(&e, &settings, "dequeue").message.contains("ORAPUSH.JOBS"));
    }

    /// Lock names are upper-cased, so `orapush` and `ORAPUSH` are one drainer.
    #[test]
    fn lock_names_ignore_case() {
        assert_eq!(drain_lock_name("orapush.orapush_outbox"), "orapush:ORAPUSH.ORAPUSH_OUTBOX");
        assert_eq!(drain_lock_name("ORAPUSH.ORAPUSH_OUTBOX"), drain_lock_name("Orapush.Orapush_Outbox"));
        // The SQL calls the package unqualified: CURRENT_SCHEMA resolves it
        // for the owner and the service user alike (no ORAPUSH.ORAPUSH.X).
        assert_eq!(DrainLock::HANDLE_SQL, "BEGIN :1 := ORAPUSH.DRAINER_LOCK_HANDLE(:2); END;");
        assert_eq!(DrainLock::REQUEST_SQL, "BEGIN :1 := ORAPUSH.REQUEST_DRAINER_LOCK(:2, :3); END;");
        assert_eq!(current_schema_sql("app"), "ALTER SESSION SET CURRENT_SCHEMA = APP");
        assert!(DrainLock::REFRESH_EVERY < Duration::from_secs(10 * 86_400));
    }

    /// Server-side waits are whole seconds, rounded down, at least one.
    #[test]
    fn waits_are_whole_seconds() {
        assert_eq!(wait_seconds(1000), 1);
        assert_eq!(wait_seconds(2999), 2);
        assert_eq!(wait_seconds(9000), 9);
    }

    /// Without Instant Client (as on this project's machines) the check says how to install it.
    #[test]
    fn check_client_explains_a_missing_library() {
        match check_client(&OracleSettings::default()) {
            Ok(version) => assert!(!version.is_empty()),
            Err(e) => assert!(e.is_fatal() && e.message.contains("DPI-1047"), "{e}"),
        }
    }

    /// The SQL*Plus scripts stop with a failure status on any error, compilation errors included.
    #[test]
    fn install_scripts_stop_on_errors() {
        let install = include_str!("../../../sql/oracle/install.sql");
        let grants = include_str!("../../../sql/oracle/grants.sql");
        let uninstall = include_str!("../../../sql/oracle/uninstall.sql");
        for (name, script) in [("install", install), ("grants", grants), ("uninstall", uninstall)] {
            assert!(script.contains("WHENEVER SQLERROR EXIT FAILURE"), "{name}.sql");
            // SQL.SQLCODE exits mod 256: ORA-01536 would exit 0.
            assert!(!script.contains("SQL.SQLCODE"), "{name}.sql");
        }
        // Every compiled unit is followed by a USER_ERRORS check that raises.
        let compiled = install.matches("CREATE OR REPLACE ").count();
        assert_eq!(compiled, 3, "package, package body, trigger");
        assert_eq!(install.matches("FROM user_errors").count(), compiled);
        for unit in ["type = 'PACKAGE'", "type = 'PACKAGE BODY'", "type = 'TRIGGER'"] {
            assert!(install.contains(unit), "no USER_ERRORS check for {unit}");
        }
        // The owner's tablespace is an argument, its default tablespace, and DBMS_ALERT is granted.
        assert!(grants.contains("NVL(UPPER(TRIM('&3')), 'USERS')"));
        assert!(
            grants.contains("DEFAULT TABLESPACE &&owner_tablespace QUOTA UNLIMITED ON &&owner_tablespace")
        );
        assert!(grants.contains("GRANT EXECUTE ON SYS.DBMS_ALERT TO &&owner_user"));
    }

    #[test]
    fn hex_of_message_ids() {
        assert_eq!(hex(&[0x0a, 0xff, 0x00]), "0aff00");
    }
}
