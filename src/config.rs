//! One typed settings tree for the whole process.
//!
//! Layers, later wins: built-in defaults → the TOML file (`--config`) →
//! `ORAPUSH__SECTION__KEY` environment variables → command-line flags.
//! Unknown keys and wrong types are refused by serde (every struct is
//! `deny_unknown_fields`); [`Settings::validate`] then checks ranges and
//! cross-key rules. Every error names the key it is about, so an operator can
//! fix the config without reading code. Secrets are wrapped in [`Secret`] and
//! never print.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::message::{validate_channel, ChannelPattern};

/// Keys that hold lists; from the environment they are comma-separated.
const LIST_KEYS: &[&str] = &["server.allowed_origins", "legacy.channels", "auth.public_channels"];

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub source: SourceSettings,
    pub sqlite: SqliteSettings,
    pub postgres: PostgresSettings,
    pub oracle: OracleSettings,
    pub hub: HubSettings,
    pub broker: BrokerSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub legacy: LegacySettings,
    pub api: ApiSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address the HTTP/WebSocket listener binds.
    pub listen: String,
    /// Origin allow-list for WebSocket upgrades; empty allows any Origin.
    pub allowed_origins: Vec<String>,
    /// Largest payload the outbox may carry and largest client frame.
    pub max_message_bytes: usize,
    /// How often the server pings every WebSocket.
    pub ping_interval_ms: u64,
    /// A peer silent (no frame, no pong) for longer than this is closed.
    pub client_timeout_ms: u64,
    /// A write to one socket that takes longer than this closes that socket.
    pub write_timeout_ms: u64,
    /// Bytes each connection reserves up front for reading frames; the
    /// buffer grows for a larger frame. tungstenite's own default, 128 KiB,
    /// would make 10,000 idle connections cost 1.3 GB.
    pub read_buffer_bytes: usize,
    /// The kernel's send buffer per socket (`SO_SNDBUF`; Linux reserves
    /// twice this for its bookkeeping); 0 leaves it to the kernel's
    /// autotuning. Bounds what a client that stopped reading holds in the
    /// kernel before its queue fills and it is closed as too slow. The
    /// default, 16 KiB (32 KiB once Linux doubles it), is near where the
    /// kernel's autotuning starts (`net.ipv4.tcp_wmem`'s middle value,
    /// 16 KiB), but never grows.
    pub socket_send_buffer_bytes: usize,
    /// How long shutdown waits for sockets to flush and close.
    pub shutdown_timeout_ms: u64,
    /// Open WebSocket connections at most; the next upgrade gets 503.
    pub max_connections: usize,
    /// Open WebSocket connections per client IP at most (behind a reverse
    /// proxy every client has the proxy's IP: raise it there).
    pub max_connections_per_ip: usize,
    /// Channels one connection may subscribe to.
    pub max_subscriptions_per_connection: usize,
    /// Client frames per second per connection (a burst of this many is fine).
    pub max_frames_per_second: u32,
    /// Time a client has to send its request headers (and finish TLS): slowloris.
    pub handshake_timeout_ms: u64,
    /// PEM certificate chain and key: serve HTTPS/WSS directly (both or neither).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            allowed_origins: Vec::new(),
            max_message_bytes: 65536,
            ping_interval_ms: 25_000,
            client_timeout_ms: 60_000,
            write_timeout_ms: 10_000,
            read_buffer_bytes: 1024,
            socket_send_buffer_bytes: 16_384,
            shutdown_timeout_ms: 5_000,
            max_connections: 10_000,
            max_connections_per_ip: 200,
            max_subscriptions_per_connection: 100,
            max_frames_per_second: 50,
            handshake_timeout_ms: 10_000,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// A settings enum named by strings: parsing, and an error that lists every
/// valid value (serde's own says "does not have variant constructor").
pub trait Named: Sized + Copy + 'static {
    /// The names, in the order the error lists them.
    const NAMES: &'static [(&'static str, Self)];

    fn name(self) -> &'static str
    where
        Self: PartialEq,
    {
        Self::NAMES.iter().find(|(_, v)| *v == self).map_or("?", |(n, _)| n)
    }

    fn parse(value: &str) -> Result<Self, String> {
        Self::NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(value.trim())).map(|(_, v)| *v).ok_or_else(
            || {
                let names: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
                format!("{value:?} is not one of: {}", names.join(", "))
            },
        )
    }
}

/// Implements `Deserialize` through [`Named::parse`].
macro_rules! named_enum {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = String::deserialize(d)?;
                <$ty as Named>::parse(&value).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Which database the outbox lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceKind {
    #[default]
    Sqlite,
    Postgres,
    OracleOutbox,
    OracleAq,
}

impl Named for SourceKind {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("sqlite", SourceKind::Sqlite),
        ("postgres", SourceKind::Postgres),
        ("oracle_outbox", SourceKind::OracleOutbox),
        ("oracle_aq", SourceKind::OracleAq),
    ];
}
named_enum!(SourceKind);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSettings {
    pub kind: SourceKind,
    /// Wait between passes that found less than a full batch. Default per
    /// kind when not set: every source is woken on commit, so this is only
    /// the fallback poll (SQLite 1 s, PostgreSQL 500 ms, Oracle outbox 5 s).
    pub poll_interval_ms: Option<u64>,
    /// Rows claimed per pass.
    pub batch_size: usize,
    /// Cap of the exponential backoff after a transient source error.
    pub max_backoff_ms: u64,
    /// How long a pass waits for its frames to reach the subscribers' sockets
    /// before it deletes the rows (see `source::drain`).
    pub flush_wait_ms: u64,
    /// How often a standby instance tries to take the outbox over.
    pub standby_retry_ms: u64,
}

impl Default for SourceSettings {
    fn default() -> Self {
        Self {
            kind: SourceKind::Sqlite,
            poll_interval_ms: None,
            batch_size: 500,
            max_backoff_ms: 30_000,
            flush_wait_ms: 200,
            standby_retry_ms: 1000,
        }
    }
}

impl SourceSettings {
    pub fn poll_interval(&self) -> Duration {
        // PostgreSQL wakes orapush with NOTIFY, SQLite with a watch on its
        // file; their polls are only the fallback.
        let default_ms = match self.kind {
            SourceKind::Sqlite => 1_000,
            SourceKind::Postgres => 500,
            // The outbox trigger's DBMS_ALERT wakes orapush on commit; this
            // poll only catches what an alert could not (trigger disabled).
            SourceKind::OracleOutbox => 5_000,
            // The dequeue itself waits (oracle.aq_wait_ms); this is the pause
            // after an empty dequeue, kept short so a stop is seen quickly.
            SourceKind::OracleAq => 10,
        };
        Duration::from_millis(self.poll_interval_ms.unwrap_or(default_ms))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteSettings {
    pub path: PathBuf,
    /// How long a writer waits for the database lock before failing.
    pub busy_timeout_ms: u64,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        Self { path: PathBuf::from("orapush.db"), busy_timeout_ms: 5_000 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// libpq-style URL or key=value string; may hold a password, so it is a secret.
    pub url: Secret,
    /// Schema holding `orapush_outbox` and `orapush_dead_letter`.
    pub schema: String,
    /// Create the schema, tables and NOTIFY trigger at start (off for production).
    pub create_schema: bool,
    /// The NOTIFY channel the outbox trigger signals and orapush LISTENs on.
    pub notify_channel: String,
    pub connect_timeout_ms: u64,
    /// Shown in `pg_stat_activity`; the LISTEN connection adds `-listen`.
    pub application_name: String,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/test"),
            schema: "public".into(),
            create_schema: false,
            notify_channel: "orapush_outbox".into(),
            connect_timeout_ms: 5_000,
            application_name: "orapush".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OracleSettings {
    /// The runtime user orapush logs in as (see sql/oracle/grants.sql).
    pub user: String,
    pub password: Secret,
    /// Easy Connect (`//host:1521/SERVICE`), a TNS alias, or a descriptor.
    pub connect_string: String,
    /// Owner of ORAPUSH_OUTBOX, ORAPUSH_DEAD_LETTER, the ORAPUSH package and the queue.
    pub schema: String,
    /// The AQ queue (`oracle_aq`); qualified with `schema` unless it has a dot.
    pub queue: String,
    /// Subscriber name, for multi-consumer queues only.
    pub consumer_name: Option<String>,
    /// Upper bound of every round trip (OCI call timeout).
    pub call_timeout_ms: u64,
    /// How long one AQ dequeue waits for a message; below call_timeout_ms.
    pub aq_wait_ms: u64,
    /// How long one server-side wait lasts: the outbox's wake-up wait
    /// (DBMS_ALERT) and a standby's wait for the drain lock (DBMS_LOCK).
    /// Whole seconds, below call_timeout_ms; a stop waits at most this long.
    pub wait_ms: u64,
    /// Instant Client directory when it is not on the loader path.
    pub client_lib_dir: Option<PathBuf>,
}

impl Default for OracleSettings {
    fn default() -> Self {
        Self {
            user: "orapush_app".into(),
            password: Secret::new(""),
            connect_string: "//localhost:1521/FREEPDB1".into(),
            schema: "ORAPUSH".into(),
            queue: "ORAPUSH_Q".into(),
            consumer_name: None,
            call_timeout_ms: 10_000,
            aq_wait_ms: 2_000,
            wait_ms: 2_000,
            client_lib_dir: None,
        }
    }
}

impl OracleSettings {
    /// The queue name as AQ resolves it: `SCHEMA.QUEUE`.
    pub fn qualified_queue(&self) -> String {
        if self.queue.contains('.') {
            self.queue.to_uppercase()
        } else {
            format!("{}.{}", self.schema, self.queue).to_uppercase()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubSettings {
    /// Messages kept per channel for recovery after a reconnect; 0 disables it.
    pub history_size: usize,
    /// Frames queued per connection before it counts as too slow and is closed.
    pub subscriber_queue_size: usize,
    /// A channel's history is dropped this long after its last message (and
    /// the channel itself, when nobody is subscribed).
    pub history_ttl_s: u64,
    /// Cap of all channels' history together, in bytes of frames; the
    /// channels published least recently lose their history first.
    pub history_max_bytes: usize,
    /// Where a graceful stop saves the channels' epochs, offsets and history
    /// for the next start (default: `<sqlite.path>.hub-state` for the SQLite
    /// source; none for the others unless set).
    pub state_path: Option<PathBuf>,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            history_size: 1000,
            subscriber_queue_size: 1024,
            history_ttl_s: 300,
            history_max_bytes: 64 * 1024 * 1024,
            state_path: None,
        }
    }
}

/// Whether WebSocket clients must present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Everyone may subscribe to everything (targeted messages reach nobody).
    #[default]
    None,
    /// JWTs decide who may subscribe to what (docs/PROTOCOL.md, "Authentication").
    Jwt,
}

impl Named for AuthMode {
    const NAMES: &'static [(&'static str, Self)] = &[("none", AuthMode::None), ("jwt", AuthMode::Jwt)];
}
named_enum!(AuthMode);

/// How a message's `target_user` is matched against a token's `sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserCase {
    /// `scott` reaches `SCOTT` (APEX's `:APP_USER` is upper-case).
    #[default]
    Insensitive,
    Sensitive,
}

impl Named for UserCase {
    const NAMES: &'static [(&'static str, Self)] =
        &[("insensitive", UserCase::Insensitive), ("sensitive", UserCase::Sensitive)];
}
named_enum!(UserCase);

impl UserCase {
    /// The form of a user name that matching compares.
    pub fn key(self, user: &str) -> String {
        match self {
            UserCase::Insensitive => user.to_lowercase(),
            UserCase::Sensitive => user.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// The HS256 key: these bytes (UTF-8), exactly what APEX_JWT signs with.
    pub hs256_secret: Option<Secret>,
    /// A PEM public key file for RS256 (RSA) or ES256 (P-256) tokens.
    pub public_key_pem: Option<PathBuf>,
    /// When set, a token's `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, a token's `aud` must contain it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` (tokens minted by the database's clock).
    pub leeway_seconds: u64,
    /// Channel patterns anyone may subscribe to without a token.
    pub public_channels: Vec<String>,
    /// How `target_user` matches a token's `sub`.
    pub user_case: UserCase,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            hs256_secret: None,
            public_key_pem: None,
            issuer: None,
            audience: None,
            leeway_seconds: 30,
            public_channels: Vec::new(),
            user_case: UserCase::Insensitive,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LegacySettings {
    /// Channels whose messages a WebSocket on `/` receives (`*` = all).
    pub channels: Vec<String>,
    /// Channel that `POST /` publishes on.
    pub publish_channel: String,
}

impl Default for LegacySettings {
    fn default() -> Self {
        Self { channels: vec!["*".into()], publish_channel: "default".into() }
    }
}

/// Where channels are numbered and their history kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BrokerKind {
    /// In this process (one node).
    #[default]
    Memory,
    /// In Redis, shared by every node (see README "Scaling out").
    Redis,
}

impl Named for BrokerKind {
    const NAMES: &'static [(&'static str, Self)] =
        &[("memory", BrokerKind::Memory), ("redis", BrokerKind::Redis)];
}
named_enum!(BrokerKind);

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    pub kind: BrokerKind,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port/db`, `rediss://` for TLS, or
    /// `redis+unix:///path`; may hold a password, so it is a secret.
    pub url: Secret,
    /// Prefix of every key and channel, so deployments can share a Redis.
    pub prefix: String,
    /// How often each node reports its subscriber counts (for `POST /`'s
    /// "Send to N clients" summed over the nodes).
    pub report_interval_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("redis://127.0.0.1:6379/0"),
            prefix: "orapush".into(),
            report_interval_ms: 1000,
        }
    }
}

impl RedisSettings {
    /// `host:port/db` (or the socket path) of the URL, never the password.
    pub fn describe(&self) -> String {
        match redis::IntoConnectionInfo::into_connection_info(self.url.expose()) {
            Ok(info) => format!("{}/{}", info.addr(), info.redis_settings().db()),
            Err(_) => "an invalid URL".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Key that `POST /` and `POST /api/publish` require when set.
    pub publish_key: Option<Secret>,
}

/// A string that never appears in `Debug` output or logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Command-line values that override every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub sqlite_path: Option<PathBuf>,
}

/// A configuration problem, always naming the key (or the file) at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub fn key(key: &str, problem: impl fmt::Display) -> Self {
        Self(format!("`{key}` {problem}"))
    }
}

impl Settings {
    /// Loads defaults → file → environment → overrides, then validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, vars, overrides)
    }

    /// As [`Settings::load`] with an explicit environment (tests use this).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!("config file {} does not exist", path.display())));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        // ORAPUSH__SECTION__KEY variables, applied as text: the typed fields
        // convert them, and a digits-only secret keeps every digit (the
        // config crate's own parsing would turn it into a number and back).
        // List keys are comma-separated.
        let mut vars: Vec<(String, String)> =
            env.into_iter().filter(|(k, _)| k.starts_with("ORAPUSH__")).collect();
        vars.sort();
        for (name, value) in vars {
            let key = name["ORAPUSH__".len()..].to_lowercase().replace("__", ".");
            builder = if LIST_KEYS.contains(&key.as_str()) {
                let items: Vec<String> =
                    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
                builder.set_override(key, items)
            } else {
                builder.set_override(key, value)
            }
            .map_err(|e| ConfigError(format!("environment variable {name}: {e}")))?;
        }
        if let Some(listen) = &overrides.listen {
            builder = builder.set_override("server.listen", listen.as_str()).map_err(config_error)?;
        }
        if let Some(path) = &overrides.sqlite_path {
            let path = path.to_string_lossy().into_owned();
            builder = builder.set_override("sqlite.path", path).map_err(config_error)?;
        }
        let settings: Settings = builder.build().and_then(|c| c.try_deserialize()).map_err(config_error)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges and cross-key rules; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        self.listen_addr()?;
        if !(1024..=16 * 1024 * 1024).contains(&s.max_message_bytes) {
            return Err(ConfigError::key("server.max_message_bytes", "must be between 1024 and 16777216"));
        }
        if s.ping_interval_ms == 0 || s.client_timeout_ms <= s.ping_interval_ms {
            return Err(ConfigError::key(
                "server.client_timeout_ms",
                "must be greater than server.ping_interval_ms (and both above 0)",
            ));
        }
        if s.write_timeout_ms == 0 {
            return Err(ConfigError::key("server.write_timeout_ms", "must be above 0"));
        }
        if !(256..=1024 * 1024).contains(&s.read_buffer_bytes) {
            return Err(ConfigError::key("server.read_buffer_bytes", "must be between 256 and 1048576"));
        }
        let send_buffer = s.socket_send_buffer_bytes;
        if send_buffer != 0 && !(4096..=64 * 1024 * 1024).contains(&send_buffer) {
            return Err(ConfigError::key(
                "server.socket_send_buffer_bytes",
                "must be 0 (the kernel's autotuning) or between 4096 and 67108864",
            ));
        }
        for origin in &s.allowed_origins {
            if origin.is_empty() || origin.ends_with('/') {
                return Err(ConfigError::key(
                    "server.allowed_origins",
                    format!(
                        "entry {origin:?} must be a scheme://host[:port] origin without a trailing slash"
                    ),
                ));
            }
        }
        let src = &self.source;
        if src.poll_interval_ms == Some(0) {
            return Err(ConfigError::key("source.poll_interval_ms", "must be above 0"));
        }
        if !(1..=10_000).contains(&src.batch_size) {
            return Err(ConfigError::key("source.batch_size", "must be between 1 and 10000"));
        }
        if src.max_backoff_ms < 100 {
            return Err(ConfigError::key("source.max_backoff_ms", "must be at least 100"));
        }
        if src.standby_retry_ms == 0 {
            return Err(ConfigError::key("source.standby_retry_ms", "must be above 0"));
        }
        if src.kind == SourceKind::Sqlite && self.sqlite.path.as_os_str().is_empty() {
            return Err(ConfigError::key("sqlite.path", "must not be empty"));
        }
        if src.kind == SourceKind::Postgres {
            let pg = &self.postgres;
            // The URL may carry a password: the message never repeats it.
            pg.url.expose().parse::<postgres::Config>().map_err(|e| {
                ConfigError::key("postgres.url", format!("is not a valid PostgreSQL connection string: {e}"))
            })?;
            if !is_sql_identifier(&pg.schema) {
                return Err(ConfigError::key(
                    "postgres.schema",
                    "must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*, at most 63)",
                ));
            }
            if !is_sql_identifier(&pg.notify_channel) {
                return Err(ConfigError::key(
                    "postgres.notify_channel",
                    "must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*, at most 63)",
                ));
            }
            if pg.connect_timeout_ms == 0 {
                return Err(ConfigError::key("postgres.connect_timeout_ms", "must be above 0"));
            }
        }
        if matches!(src.kind, SourceKind::OracleOutbox | SourceKind::OracleAq) {
            self.validate_oracle()?;
        }
        if self.hub.subscriber_queue_size < 16 {
            return Err(ConfigError::key("hub.subscriber_queue_size", "must be at least 16"));
        }
        if self.hub.history_size > 1_000_000 {
            return Err(ConfigError::key("hub.history_size", "must be at most 1000000"));
        }
        if self.hub.history_ttl_s == 0 {
            return Err(ConfigError::key("hub.history_ttl_s", "must be above 0"));
        }
        if self.hub.history_max_bytes < 64 * 1024 {
            return Err(ConfigError::key("hub.history_max_bytes", "must be at least 65536"));
        }
        if s.max_connections == 0 || s.max_connections_per_ip == 0 {
            return Err(ConfigError::key(
                "server.max_connections",
                "and server.max_connections_per_ip must be above 0",
            ));
        }
        if s.max_subscriptions_per_connection == 0 {
            return Err(ConfigError::key("server.max_subscriptions_per_connection", "must be above 0"));
        }
        if s.max_frames_per_second == 0 {
            return Err(ConfigError::key("server.max_frames_per_second", "must be above 0"));
        }
        if s.handshake_timeout_ms == 0 {
            return Err(ConfigError::key("server.handshake_timeout_ms", "must be above 0"));
        }
        match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => {
                for (name, path) in [("server.tls_cert", cert), ("server.tls_key", key)] {
                    if !path.is_file() {
                        return Err(ConfigError::key(
                            name,
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                }
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError::key(
                    "server.tls_cert",
                    "and server.tls_key go together: set both or neither",
                ))
            }
        }
        self.validate_auth()?;
        if self.broker.kind == BrokerKind::Redis {
            let redis = &self.redis;
            // The URL may carry a password: the message never repeats it.
            if let Err(e) = redis::Client::open(redis.url.expose()) {
                return Err(ConfigError::key("redis.url", format!("is not a Redis URL ({:?})", e.kind())));
            }
            let prefix_ok = !redis.prefix.is_empty()
                && redis.prefix.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
            if !prefix_ok {
                return Err(ConfigError::key(
                    "redis.prefix",
                    "must be letters, digits and _ . : - (no braces)",
                ));
            }
            if redis.report_interval_ms < 100 {
                return Err(ConfigError::key("redis.report_interval_ms", "must be at least 100"));
            }
        }
        validate_channel(&self.legacy.publish_channel)
            .map_err(|e| ConfigError::key("legacy.publish_channel", e))?;
        for pattern in &self.legacy.channels {
            ChannelPattern::parse(pattern).map_err(|e| ConfigError::key("legacy.channels", e))?;
        }
        // What `POST /` publishes must reach the sockets on `/`, or every
        // old page gets "Send to 0 clients" forever.
        if !self.legacy_patterns().iter().any(|p| p.matches(&self.legacy.publish_channel)) {
            return Err(ConfigError::key(
                "legacy.publish_channel",
                format!(
                    "{:?} is not matched by `legacy.channels` ({:?}): POST / would reach no socket on /; \
                     add it to legacy.channels or pick a channel they match",
                    self.legacy.publish_channel, self.legacy.channels
                ),
            ));
        }
        if let Some(key) = &self.api.publish_key {
            if key.expose().len() < 8 {
                return Err(ConfigError::key("api.publish_key", "must be at least 8 characters"));
            }
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        for pattern in &auth.public_channels {
            ChannelPattern::parse(pattern).map_err(|e| ConfigError::key("auth.public_channels", e))?;
        }
        if auth.mode == AuthMode::None {
            return Ok(());
        }
        match (&auth.hs256_secret, &auth.public_key_pem) {
            (Some(secret), None) => {
                if secret.expose().len() < 16 {
                    return Err(ConfigError::key(
                        "auth.hs256_secret",
                        "must be at least 16 bytes (32 or more is better)",
                    ));
                }
            }
            (None, Some(path)) => {
                if !path.is_file() {
                    return Err(ConfigError::key(
                        "auth.public_key_pem",
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::key(
                    "auth.hs256_secret",
                    "and auth.public_key_pem exclude each other: one key decides the algorithm",
                ))
            }
            (None, None) => {
                return Err(ConfigError::key(
                    "auth.mode",
                    "= \"jwt\" needs auth.hs256_secret or auth.public_key_pem",
                ))
            }
        }
        Ok(())
    }

    fn validate_oracle(&self) -> Result<(), ConfigError> {
        let ora = &self.oracle;
        if ora.user.trim().is_empty() {
            return Err(ConfigError::key("oracle.user", "must be set"));
        }
        // An empty password is ORA-01005 at every logon; say so before trying.
        if ora.password.expose().is_empty() {
            return Err(ConfigError::key(
                "oracle.password",
                "must be set (in the config file or ORAPUSH__ORACLE__PASSWORD)",
            ));
        }
        if ora.connect_string.trim().is_empty() {
            return Err(ConfigError::key("oracle.connect_string", "must be set (e.g. //host:1521/FREEPDB1)"));
        }
        if !is_oracle_identifier(&ora.schema) {
            return Err(ConfigError::key(
                "oracle.schema",
                "must be a plain identifier ([A-Za-z][A-Za-z0-9_$#]*)",
            ));
        }
        let queue_ok = match ora.queue.split_once('.') {
            Some((owner, name)) => is_oracle_identifier(owner) && is_oracle_identifier(name),
            None => is_oracle_identifier(&ora.queue),
        };
        if !queue_ok {
            return Err(ConfigError::key("oracle.queue", "must be QUEUE or OWNER.QUEUE, plain identifiers"));
        }
        if ora.consumer_name.as_deref().is_some_and(|c| !is_oracle_identifier(c)) {
            return Err(ConfigError::key("oracle.consumer_name", "must be a plain identifier"));
        }
        if ora.call_timeout_ms < 1000 {
            return Err(ConfigError::key("oracle.call_timeout_ms", "must be at least 1000"));
        }
        // AQ waits in whole seconds; the wait must end well before the call
        // timeout, or every idle dequeue becomes a DPI-1067 error.
        for (key, wait) in [("oracle.aq_wait_ms", ora.aq_wait_ms), ("oracle.wait_ms", ora.wait_ms)] {
            if wait < 1000 || wait + 1000 > ora.call_timeout_ms {
                return Err(ConfigError::key(
                    key,
                    "must be at least 1000 and at least 1000 below oracle.call_timeout_ms",
                ));
            }
        }
        Ok(())
    }

    /// `server.listen` as an address: `IP:port`, or `host:port` resolved now
    /// (the first address the resolver gives, IPv4 first).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        use std::net::ToSocketAddrs;
        let listen = self.server.listen.trim();
        if let Ok(addr) = listen.parse() {
            return Ok(addr);
        }
        let not_an_address = |why: String| {
            ConfigError::key("server.listen", format!("{listen:?} is not a HOST:PORT address: {why}"))
        };
        let mut addrs: Vec<SocketAddr> =
            listen.to_socket_addrs().map_err(|e| not_an_address(e.to_string()))?.collect();
        addrs.sort_by_key(|a| !a.is_ipv4());
        addrs.into_iter().next().ok_or_else(|| not_an_address("the name resolves to no address".into()))
    }

    /// Where a graceful stop saves the hub's state: `hub.state_path`, or
    /// beside the SQLite outbox; None (no saving) for other sources unless set.
    pub fn hub_state_path(&self) -> Option<PathBuf> {
        if self.broker.kind == BrokerKind::Redis {
            // Redis keeps the numbering and the history.
            return None;
        }
        match (&self.hub.state_path, self.source.kind) {
            (Some(path), _) => Some(path.clone()),
            (None, SourceKind::Sqlite) => {
                Some(PathBuf::from(format!("{}.hub-state", self.sqlite.path.display())))
            }
            (None, _) => None,
        }
    }

    /// The legacy `/` channel filter, parsed (validated at load).
    pub fn legacy_patterns(&self) -> Vec<ChannelPattern> {
        self.legacy.channels.iter().filter_map(|p| ChannelPattern::parse(p).ok()).collect()
    }
}

/// An identifier that needs no quoting: safe to put into SQL text.
pub fn is_sql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

/// An Oracle identifier that needs no quoting (at most 128 bytes).
pub fn is_oracle_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_$#".contains(c))
        && name.len() <= 128
}

fn config_error(e: config::ConfigError) -> ConfigError {
    ConfigError(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// With nothing configured the SPEC defaults apply.
    #[test]
    fn defaults_match_spec() {
        let s = Settings::load_from(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert_eq!(s.server.max_message_bytes, 65536);
        assert_eq!(s.server.socket_send_buffer_bytes, 16_384);
        assert_eq!(s.source.poll_interval(), Duration::from_millis(1_000));
        assert_eq!(s.sqlite.path, PathBuf::from("orapush.db"));
        assert_eq!(s.hub.history_size, 1000);
        assert_eq!(s.legacy.channels, vec!["*".to_string()]);
        assert_eq!(s.legacy.publish_channel, "default");
    }

    /// An unknown value of an enum key names the key and lists the valid values.
    #[test]
    fn enum_keys_list_their_values() {
        let err = refusal(&[("ORAPUSH__SOURCE__KIND", "mysql")]);
        assert!(
            err.contains("source.kind") && err.contains("sqlite, postgres, oracle_outbox, oracle_aq"),
            "{err}"
        );
        let err = refusal(&[("ORAPUSH__AUTH__MODE", "oauth")]);
        assert!(err.contains("auth.mode") && err.contains("none, jwt"), "{err}");
        let err = refusal(&[("ORAPUSH__AUTH__USER_CASE", "upper")]);
        assert!(err.contains("auth.user_case") && err.contains("insensitive, sensitive"), "{err}");
        let s = Settings::load_from(
            None,
            env(&[("ORAPUSH__AUTH__USER_CASE", "sensitive")]),
            &Overrides::default(),
        );
        assert_eq!(s.unwrap().auth.user_case, UserCase::Sensitive);
        assert_eq!(Settings::default().auth.user_case, UserCase::Insensitive);
        assert_eq!(UserCase::Insensitive.key("SCOTT"), UserCase::Insensitive.key("scott"));
        assert_ne!(UserCase::Sensitive.key("SCOTT"), UserCase::Sensitive.key("scott"));
    }

    /// `POST /` must publish on a channel that `/` sockets receive.
    #[test]
    fn legacy_publish_channel_must_be_received() {
        let err = refusal(&[("ORAPUSH__LEGACY__CHANNELS", "emp,dept.*")]);
        assert!(err.contains("legacy.publish_channel") && err.contains("legacy.channels"), "{err}");
        let ok =
            env(&[("ORAPUSH__LEGACY__CHANNELS", "emp,dept.*"), ("ORAPUSH__LEGACY__PUBLISH_CHANNEL", "emp")]);
        assert!(Settings::load_from(None, ok, &Overrides::default()).is_ok());
    }

    /// `server.listen` takes a host name and resolves it; nonsense names the key.
    #[test]
    fn listen_accepts_host_names() {
        let overrides = Overrides { listen: Some("localhost:8080".into()), sqlite_path: None };
        let s = Settings::load_from(None, env(&[]), &overrides).unwrap();
        let addr = s.listen_addr().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() == 8080, "{addr}");
        let overrides = Overrides { listen: Some("no port here".into()), sqlite_path: None };
        let err = Settings::load_from(None, env(&[]), &overrides).unwrap_err().to_string();
        assert!(err.contains("server.listen"), "{err}");
    }

    /// File, then environment, then flags: each later layer wins.
    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("o.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:9000\"\nmax_message_bytes = 2048\n[hub]\nhistory_size = 5\n",
        )
        .unwrap();
        let vars = env(&[
            ("ORAPUSH__HUB__HISTORY_SIZE", "7"),
            ("ORAPUSH__LEGACY__CHANNELS", "emp,dept.*"),
            ("ORAPUSH__LEGACY__PUBLISH_CHANNEL", "dept.refresh"),
            ("ORAPUSH__SERVER__ALLOWED_ORIGINS", "https://a.example,https://b.example"),
        ]);
        let overrides = Overrides { listen: Some("127.0.0.1:0".into()), sqlite_path: Some("x.db".into()) };
        let s = Settings::load_from(Some(&file), vars, &overrides).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:0");
        assert_eq!(s.server.max_message_bytes, 2048);
        assert_eq!(s.hub.history_size, 7);
        assert_eq!(s.legacy.channels, vec!["emp".to_string(), "dept.*".to_string()]);
        assert_eq!(s.server.allowed_origins.len(), 2);
        assert_eq!(s.sqlite.path, PathBuf::from("x.db"));
    }

    /// An unknown key is refused and the message names it.
    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("o.toml");
        std::fs::write(&file, "[server]\nlisten_port = 80\n").unwrap();
        let err = Settings::load_from(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    /// A wrong type is refused and the message names the key.
    #[test]
    fn wrong_type_is_named() {
        let vars = env(&[("ORAPUSH__HUB__HISTORY_SIZE", "lots")]);
        let err = Settings::load_from(None, vars, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("history_size"), "{err}");
    }

    /// An unknown source kind is refused naming the key.
    #[test]
    fn unknown_source_kind_is_named() {
        let vars = env(&[("ORAPUSH__SOURCE__KIND", "mysql")]);
        let err = Settings::load_from(None, vars, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("kind"), "{err}");
    }

    fn refusal(vars: &[(&str, &str)]) -> String {
        Settings::load_from(None, env(vars), &Overrides::default()).unwrap_err().to_string()
    }

    /// validate() names the key for out-of-range values.
    #[test]
    fn validate_names_keys() {
        let cases: &[(&str, &str, &str)] = &[
            ("ORAPUSH__SERVER__LISTEN", "nowhere", "server.listen"),
            ("ORAPUSH__SERVER__MAX_MESSAGE_BYTES", "10", "server.max_message_bytes"),
            ("ORAPUSH__SOURCE__BATCH_SIZE", "0", "source.batch_size"),
            ("ORAPUSH__SOURCE__POLL_INTERVAL_MS", "0", "source.poll_interval_ms"),
            ("ORAPUSH__LEGACY__PUBLISH_CHANNEL", "bad channel", "legacy.publish_channel"),
            ("ORAPUSH__API__PUBLISH_KEY", "short", "api.publish_key"),
            ("ORAPUSH__SERVER__CLIENT_TIMEOUT_MS", "1000", "server.client_timeout_ms"),
            ("ORAPUSH__SERVER__SOCKET_SEND_BUFFER_BYTES", "100", "server.socket_send_buffer_bytes"),
        ];
        for (key, value, named) in cases {
            let err = refusal(&[(key, value)]);
            assert!(err.contains(named), "{key}={value}: {err}");
        }
    }

    /// PostgreSQL keys are checked when that source is chosen; the URL's password never shows.
    #[test]
    fn postgres_keys_are_validated() {
        let cases: &[(&str, &str, &str)] = &[
            ("ORAPUSH__POSTGRES__URL", "postgres://u:hunter2@[bad", "postgres.url"),
            ("ORAPUSH__POSTGRES__SCHEMA", "drop table;", "postgres.schema"),
            ("ORAPUSH__POSTGRES__NOTIFY_CHANNEL", "a-b", "postgres.notify_channel"),
        ];
        for (key, value, named) in cases {
            let err = refusal(&[("ORAPUSH__SOURCE__KIND", "postgres"), (key, value)]);
            assert!(err.contains(named), "{key}={value}: {err}");
            assert!(!err.contains("hunter2"), "the password leaked: {err}");
        }
        let s =
            Settings::load_from(None, env(&[("ORAPUSH__SOURCE__KIND", "postgres")]), &Overrides::default())
                .unwrap();
        assert_eq!(s.source.poll_interval(), Duration::from_millis(500));
    }

    /// Oracle keys are checked when an Oracle source is chosen; the password never shows.
    #[test]
    fn oracle_keys_are_validated() {
        let cases: &[(&str, &str, &str)] = &[
            ("ORAPUSH__ORACLE__USER", " ", "oracle.user"),
            ("ORAPUSH__ORACLE__SCHEMA", "a b", "oracle.schema"),
            ("ORAPUSH__ORACLE__QUEUE", "A.B.C", "oracle.queue"),
            ("ORAPUSH__ORACLE__AQ_WAIT_MS", "9500", "oracle.aq_wait_ms"),
            ("ORAPUSH__ORACLE__WAIT_MS", "500", "oracle.wait_ms"),
            ("ORAPUSH__ORACLE__CALL_TIMEOUT_MS", "500", "oracle.call_timeout_ms"),
            ("ORAPUSH__ORACLE__CONSUMER_NAME", "x-y", "oracle.consumer_name"),
        ];
        for kind in ["oracle_outbox", "oracle_aq"] {
            for (key, value, named) in cases {
                let err = refusal(&[
                    ("ORAPUSH__SOURCE__KIND", kind),
                    ("ORAPUSH__ORACLE__PASSWORD", "tiger-secret"),
                    (key, value),
                ]);
                assert!(err.contains(named), "{key}={value}: {err}");
                assert!(!err.contains("tiger-secret"));
            }
        }
        let vars =
            env(&[("ORAPUSH__SOURCE__KIND", "oracle_outbox"), ("ORAPUSH__ORACLE__PASSWORD", "tiger-secret")]);
        let s = Settings::load_from(None, vars, &Overrides::default()).unwrap();
        assert_eq!(s.source.poll_interval(), Duration::from_millis(5_000));
        assert_eq!(s.oracle.wait_ms, 2_000);
        // No password at all would be ORA-01005 at every logon.
        let err = refusal(&[("ORAPUSH__SOURCE__KIND", "oracle_aq")]);
        assert!(err.contains("oracle.password"), "{err}");
        assert_eq!(s.oracle.qualified_queue(), "ORAPUSH.ORAPUSH_Q");
        assert!(!format!("{s:?}").contains("tiger-secret"));
    }

    /// Auth, TLS and limit keys are validated and named.
    #[test]
    fn auth_and_limit_keys_are_validated() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("ORAPUSH__AUTH__MODE", "jwt")], "auth.mode"),
            (
                &[("ORAPUSH__AUTH__MODE", "jwt"), ("ORAPUSH__AUTH__HS256_SECRET", "short")],
                "auth.hs256_secret",
            ),
            (
                &[("ORAPUSH__AUTH__MODE", "jwt"), ("ORAPUSH__AUTH__PUBLIC_KEY_PEM", "/nonexistent.pem")],
                "auth.public_key_pem",
            ),
            (&[("ORAPUSH__AUTH__MODE", "basic")], "mode"),
            (&[("ORAPUSH__AUTH__PUBLIC_CHANNELS", "ok,bad name")], "auth.public_channels"),
            (&[("ORAPUSH__SERVER__TLS_CERT", "/etc/hostname")], "server.tls_cert"),
            (&[("ORAPUSH__SERVER__MAX_CONNECTIONS", "0")], "server.max_connections"),
            (&[("ORAPUSH__SERVER__MAX_FRAMES_PER_SECOND", "0")], "server.max_frames_per_second"),
        ];
        for (vars, named) in cases {
            let err = refusal(vars);
            assert!(err.contains(named), "{vars:?}: {err}");
        }
        let vars = env(&[
            ("ORAPUSH__AUTH__MODE", "jwt"),
            ("ORAPUSH__AUTH__HS256_SECRET", "0123456789abcdef0123"),
            ("ORAPUSH__AUTH__PUBLIC_CHANNELS", "news,public.*"),
        ]);
        let s = Settings::load_from(None, vars, &Overrides::default()).unwrap();
        assert_eq!(s.auth.public_channels, vec!["news".to_string(), "public.*".to_string()]);
        assert!(!format!("{s:?}").contains("0123456789abcdef0123"));
    }

    /// The publish key never shows in Debug output.
    #[test]
    fn secrets_do_not_print() {
        let vars = env(&[("ORAPUSH__API__PUBLISH_KEY", "supersecretkey")]);
        let s = Settings::load_from(None, vars, &Overrides::default()).unwrap();
        assert!(!format!("{s:?}").contains("supersecretkey"));
    }
}

#[cfg(test)]
mod env_text {
    use super::*;

    /// Digits-only secrets from the environment keep their exact text.
    #[test]
    fn numeric_looking_secrets_stay_text() {
        let vars = vec![
            ("ORAPUSH__API__PUBLISH_KEY".to_string(), "12345678901234567890123".to_string()),
            ("ORAPUSH__AUTH__MODE".to_string(), "jwt".to_string()),
            ("ORAPUSH__AUTH__HS256_SECRET".to_string(), "00001234567890123456".to_string()),
        ];
        let s = Settings::load_from(None, vars, &Overrides::default()).unwrap();
        assert_eq!(s.api.publish_key.unwrap().expose(), "12345678901234567890123");
        assert_eq!(s.auth.hs256_secret.unwrap().expose(), "00001234567890123456");
    }

    /// Numbers, booleans and optional numbers still come from environment text.
    #[test]
    fn typed_values_convert_from_text() {
        let vars = vec![
            ("ORAPUSH__SOURCE__KIND".to_string(), "postgres".to_string()),
            ("ORAPUSH__POSTGRES__CREATE_SCHEMA".to_string(), "true".to_string()),
            ("ORAPUSH__SOURCE__POLL_INTERVAL_MS".to_string(), "15".to_string()),
            ("ORAPUSH__HUB__HISTORY_SIZE".to_string(), "12".to_string()),
        ];
        let s = Settings::load_from(None, vars, &Overrides::default()).unwrap();
        assert!(s.postgres.create_schema);
        assert_eq!((s.source.poll_interval_ms, s.hub.history_size), (Some(15), 12));
    }
}
