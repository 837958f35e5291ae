//! Helpers shared by the black-box tests: a real server on an ephemeral
//! port (in-process or the real binary), a real SQLite file, real
//! WebSocket clients.
#![allow(dead_code)]

pub mod handshake;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use orapush::config::Settings;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound for anything a test waits for; reaching it fails the test.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// orapush running in this process on 127.0.0.1:0 with a fresh SQLite file.
pub struct Server {
    pub addr: SocketAddr,
    pub db: PathBuf,
    pub dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("orapush.db");
        Self::start_in(dir, db, tweak).await
    }

    pub async fn start_in(dir: TempDir, db: PathBuf, tweak: impl FnOnce(&mut Settings)) -> Self {
        let server = Self::start_unready(dir, db, tweak).await;
        let addr = server.addr;
        tokio::task::spawn_blocking(move || wait_ready(addr)).await.unwrap();
        server
    }

    /// Starts without waiting for `/readyz` (for sources that are down).
    pub async fn start_unready(dir: TempDir, db: PathBuf, tweak: impl FnOnce(&mut Settings)) -> Self {
        capture_logs();
        let mut settings = Settings::default();
        settings.sqlite.path = db.clone();
        settings.source.poll_interval_ms = Some(10);
        settings.server.listen = "127.0.0.1:0".into();
        tweak(&mut settings);
        settings.validate().unwrap();
        let listener = TcpListener::bind(&settings.server.listen).await.unwrap();
        // Tests always reach the server over loopback, whatever it binds.
        let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(orapush::run(listener, settings, async move {
            let _ = stopped.await;
        }));
        Self { addr, db, dir, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Triggers the shutdown path and returns run()'s result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(PATIENCE, task).await.expect("server stops in time").unwrap()
    }
}

/// The in-process servers' logs (`RUST_LOG`, `warn` by default) go to the
/// test's captured output, so a failing test shows what its servers said.
pub fn capture_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Fails harmlessly when an earlier test in this binary installed it.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Runs blocking work (std sockets, SQLite) without holding a worker of
/// the test's runtime, which the in-process servers share: on a
/// multi-thread runtime the worker hands its queued tasks to another
/// thread first; elsewhere (a plain or blocking thread) it just runs.
pub fn off_runtime<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// The status code of a plain `GET path` (std only, usable anywhere).
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    off_runtime(|| http_status_blocking(addr, path))
}

fn http_status_blocking(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// The body of a plain `GET path` (std only, usable in sync conditions).
pub fn http_body(addr: SocketAddr, path: &str) -> Option<String> {
    off_runtime(|| http_body_blocking(addr, path))
}

fn http_body_blocking(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// Waits until `/metrics` contains `line` (a gauge or counter with its value).
pub async fn wait_for_metric(addr: SocketAddr, line: &str) {
    wait_until(&format!("/metrics shows {line:?}"), || {
        http_body(addr, "/metrics").is_some_and(|m| m.contains(line))
    })
    .await;
}

/// Blocks until `/readyz` answers 200 (the source is connected, tables exist).
pub fn wait_ready(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while http_status(addr, "/readyz") != Some(200) {
        assert!(std::time::Instant::now() < deadline, "orapush on {addr} never became ready");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Inserts rows `(channel, payload)` in one transaction; returns their ids.
pub fn insert(db: &Path, rows: &[(&str, &str)]) -> Vec<i64> {
    insert_targeted(db, &rows.iter().map(|(c, p)| (*c, *p, None)).collect::<Vec<_>>())
}

pub fn insert_targeted(db: &Path, rows: &[(&str, &str, Option<&str>)]) -> Vec<i64> {
    off_runtime(|| insert_targeted_blocking(db, rows))
}

fn insert_targeted_blocking(db: &Path, rows: &[(&str, &str, Option<&str>)]) -> Vec<i64> {
    let mut conn = open_db(db);
    let tx = conn.transaction().unwrap();
    let mut ids = Vec::new();
    for (channel, payload, user) in rows {
        tx.execute(
            "INSERT INTO orapush_outbox(channel, payload, target_user) VALUES (?1, ?2, ?3)",
            rusqlite::params![channel, payload, user],
        )
        .unwrap();
        ids.push(tx.last_insert_rowid());
    }
    tx.commit().unwrap();
    ids
}

pub fn open_db(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

pub fn outbox_count(db: &Path) -> i64 {
    off_runtime(|| open_db(db).query_row("SELECT count(*) FROM orapush_outbox", [], |r| r.get(0)).unwrap())
}

/// Polls a condition every 10 ms until it holds; panics after PATIENCE.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(what, || if condition() { Ok(()) } else { Err("not yet") }).await
}

/// Polls `probe` every 10 ms until it gives `Ok`, and returns that; panics
/// after PATIENCE with what its last `Err` said.
pub async fn wait_for<T, E: std::fmt::Debug>(what: &str, mut probe: impl FnMut() -> Result<T, E>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match off_runtime(&mut probe) {
            Ok(found) => return found,
            Err(last) => assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}; last seen: {last:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn connect(url: &str) -> Ws {
    let (ws, _) =
        tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
}

pub async fn send_json(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

/// The next text frame as JSON, skipping pings; panics on close or timeout.
pub async fn next_json(ws: &mut Ws) -> Value {
    let text = next_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {text}: {e}"))
}

pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next()).await.expect("a frame in time");
        match frame {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Subscribes and returns the `subscribed` reply.
pub async fn subscribe(ws: &mut Ws, channel: &str) -> Value {
    send_json(ws, serde_json::json!({"op": "subscribe", "channel": channel})).await;
    let reply = next_json(ws).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    reply
}

/// A ping/pong round trip: proves the connection is open and that nothing
/// else was queued before the pong.
pub async fn expect_pong_next(ws: &mut Ws) {
    send_json(ws, serde_json::json!({"op": "ping"})).await;
    let reply = next_json(ws).await;
    assert_eq!(reply, serde_json::json!({"type": "pong"}));
}

/// Collects the row ids of `message` frames until `done` holds; false if
/// the socket ended first.
pub async fn collect_ids(ws: &mut Ws, seen: &mut Vec<i64>, mut done: impl FnMut(&[i64]) -> bool) -> bool {
    while !done(seen) {
        match tokio::time::timeout(PATIENCE, ws.next()).await.expect("frames keep coming") {
            Some(Ok(Message::Text(t))) => {
                let f: Value = serde_json::from_str(&t).unwrap();
                if f["type"] == "message" {
                    seen.push(f["id"].as_str().unwrap().parse().unwrap());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return false,
        }
    }
    true
}

/// Reads until the server closes; returns the close code (None: no close frame).
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// The real `orapush` binary, started on 127.0.0.1:0.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Binary {
    pub fn spawn(db: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_on(db, "127.0.0.1:0", env)
    }

    pub fn spawn_on(db: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        let binary = Self::spawn_unready(db, listen, env);
        wait_ready(binary.addr);
        binary
    }

    /// Starts without waiting for `/readyz` (a standby, or a source that is down).
    pub fn spawn_unready(db: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orapush"));
        cmd.args(["serve", "--listen", listen, "--sqlite"]).arg(db);
        cmd.env("RUST_LOG", "warn").env("ORAPUSH__SOURCE__POLL_INTERVAL_MS", "10");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn orapush");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("orapush listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit (bounded) and returns its status.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + PATIENCE;
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status;
                }
                assert!(std::time::Instant::now() < deadline, "orapush did not exit");
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .await
        .unwrap()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket opened by hand on a plain TCP socket, for peers that must
/// misbehave (never answer pings, ...). Returns the socket after the 101.
pub async fn raw_websocket(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    handshake::upgrade_raw(&mut stream, &addr.to_string(), path).await;
    stream
}

/// Reads server frames from a raw socket (never answering anything) until
/// a close frame; returns its code and how many pings came before it.
pub async fn raw_read_until_close(stream: &mut TcpStream) -> (u16, usize) {
    use tokio::io::AsyncReadExt;
    let mut pings = 0;
    loop {
        let mut header = [0u8; 2];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut header))
            .await
            .expect("a frame in time")
            .unwrap();
        let len = (header[1] & 0x7f) as usize;
        assert!(len < 126, "small control or text frames only");
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.unwrap();
        match header[0] & 0x0f {
            0x9 => pings += 1,
            0x8 => return (u16::from_be_bytes([payload[0], payload[1]]), pings),
            _ => {}
        }
    }
}

/// The local PostgreSQL test database; each test gets its own schema,
/// NOTIFY channel and application name, so tests run in parallel.
pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub struct PgSchema {
    pub name: String,
}

impl PgSchema {
    pub fn new() -> Self {
        Self { name: format!("orapush_t_{:016x}", rand::random::<u64>()) }
    }

    /// Points a settings tree at this schema (created by orapush at start).
    pub fn apply(&self, s: &mut Settings) {
        s.source.kind = orapush::config::SourceKind::Postgres;
        s.postgres.url = orapush::config::Secret::new(PG_URL);
        s.postgres.schema = self.name.clone();
        s.postgres.create_schema = true;
        s.postgres.notify_channel = self.name.clone();
        s.postgres.application_name = self.name.clone();
        s.source.standby_retry_ms = 100;
    }

    /// The same, as environment variables for the binary.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("ORAPUSH__SOURCE__KIND".into(), "postgres".into()),
            ("ORAPUSH__POSTGRES__URL".into(), PG_URL.into()),
            ("ORAPUSH__POSTGRES__SCHEMA".into(), self.name.clone()),
            ("ORAPUSH__POSTGRES__CREATE_SCHEMA".into(), "true".into()),
            ("ORAPUSH__POSTGRES__NOTIFY_CHANNEL".into(), self.name.clone()),
            ("ORAPUSH__POSTGRES__APPLICATION_NAME".into(), self.name.clone()),
            ("ORAPUSH__SOURCE__STANDBY_RETRY_MS".into(), "100".into()),
        ]
    }

    /// An async client whose search_path is this schema.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (scripts/setup.sh starts it)");
        tokio::spawn(connection);
        client.batch_execute(&format!("SET search_path TO \"{}\"", self.name)).await.unwrap();
        client
    }

    /// The advisory lock key orapush's drainer takes for this outbox.
    pub fn lock_key(&self) -> String {
        format!("orapush:{}.orapush_outbox", self.name)
    }

    pub async fn insert(&self, client: &tokio_postgres::Client, rows: &[(&str, &str)]) -> Vec<i64> {
        let mut ids = Vec::new();
        client.batch_execute("BEGIN").await.unwrap();
        for (channel, payload) in rows {
            let row = client
                .query_one(
                    "INSERT INTO orapush_outbox(channel, payload) VALUES ($1, $2) RETURNING id",
                    &[channel, payload],
                )
                .await
                .unwrap();
            ids.push(row.get(0));
        }
        client.batch_execute("COMMIT").await.unwrap();
        ids
    }

    pub async fn count(&self, client: &tokio_postgres::Client) -> i64 {
        client.query_one("SELECT count(*) FROM orapush_outbox", &[]).await.unwrap().get(0)
    }

    /// Waits (with a deadline) until the outbox is empty. A client has its
    /// rows before the drainer deletes them and commits, so "delivered"
    /// never implies "deleted yet".
    pub async fn wait_until_empty(&self, client: &tokio_postgres::Client) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let left = self.count(client).await;
            if left == 0 {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{left} rows still in the outbox");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // The sync client runs its own runtime: keep it off the test's.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(PG_URL, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"));
            }
        })
        .join();
    }
}

/// A private `redis-server` on a Unix socket in a temporary directory
/// (no port to pick, so none can be taken before it binds), stopped on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub socket: PathBuf,
    _dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = Self::not_started();
        server.restart();
        server
    }

    /// Its socket path, with no server yet ([`RedisServer::restart`] starts it).
    pub fn not_started() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        Self { child: None, socket, _dir: dir }
    }

    /// Starts it again after [`RedisServer::kill`] (empty: it keeps nothing).
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocketperm", "700"])
            .arg("--unixsocket")
            .arg(&self.socket)
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
