//! The orapush benchmark, run by `scripts/bench.sh` (which builds orapush in
//! release mode and npm-installs the node.js baselines into a temp folder).
//! Every figure is measured in the same run for orapush and the baselines,
//! and reported as a ratio.
//!
//! 1. Memory per idle WebSocket at N connections (RSS growth / N).
//! 2. Broadcast deliveries per second: S subscribers on `/`, M 100-byte
//!    messages fed through `POST /`, timed until every subscriber has all.
//! 3. Insert→receive latency through the SQLite outbox at a fixed rate
//!    (orapush only: the baselines have no outbox), and how often the
//!    drainer reads the outbox while idle.
//! 4. With `--fanout`: fan-out latency (one message at a time, until the
//!    last subscriber has it) and slow consumers; see `bridge/fanout.rs`.
//! 5. With `--soak MINUTES`: connections churning while outbox rows flow
//!    to steady subscribers; RSS and open files sampled every minute.
//!
//! With `--target-ws` it measures an orapush that is already running on
//! Oracle instead (tests/compose/bench.sh, against the compose services):
//! insert→browser latency and orapush's calls to the database while idle,
//! or, with `--backlog N`, how fast a backlog of N rows drains.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

#[path = "bridge/charts.rs"]
mod charts;
#[path = "bridge/fanout.rs"]
mod fanout;
#[path = "../tests/common/handshake.rs"]
mod handshake;
use futures_util::StreamExt;
use tokio::net::TcpSocket;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// The orapush release binary.
    #[arg(long)]
    orapush: PathBuf,
    /// npm-installed copy of shared/baselines/seed-node.
    #[arg(long)]
    seed: PathBuf,
    /// npm-installed copy of shared/baselines/node-ws (optional).
    #[arg(long)]
    node_ws: Option<PathBuf>,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    #[arg(long, default_value_t = 2_000)]
    subscribers: usize,
    #[arg(long, default_value_t = 500)]
    messages: usize,
    /// Messages of the pinned broadcast at `--connections` subscribers.
    #[arg(long, default_value_t = 200)]
    burst_messages: usize,
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Broadcast rounds per server; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Skip the idle-memory measurement.
    #[arg(long)]
    skip_idle: bool,
    /// Skip the broadcast measurement.
    #[arg(long)]
    skip_broadcast: bool,
    /// Skip the latency measurement.
    #[arg(long)]
    skip_latency: bool,
    /// Measure fan-out latency and slow consumers (on with --quick; a full
    /// run takes several minutes more).
    #[arg(long)]
    fanout: bool,
    /// Messages per fan-out run (one message to every subscriber each time).
    #[arg(long, default_value_t = 200)]
    fanout_messages: usize,
    /// Fan-out messages per second.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    fanout_rate: u64,
    /// Phases with slow consumers, and as many without, in the
    /// slow-consumer section (one more with them first warms up).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..))]
    slow_rounds: u64,
    /// Messages per second of the slow-consumer section.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    slow_rate: u64,
    /// Skip the PostgreSQL measurements.
    #[arg(long)]
    skip_postgres: bool,
    /// PostgreSQL for the PostgreSQL measurements (a scratch schema is made and dropped).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// A Redis to measure the Redis broker on (PostgreSQL latency at 500
    /// rows/s and backlog drain with `broker.kind = "redis"`), e.g.
    /// redis://127.0.0.1:6379/0; skipped without it.
    #[arg(long)]
    redis: Option<String>,
    /// Seconds of idleness over which the SQLite drainer's claims are counted.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// Rows in the large backlog.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Run only the soak, for this many minutes: connections churn at 200/s
    /// while 100 outbox rows/s reach 1,000 steady subscribers; RSS and open
    /// file descriptors are sampled every minute.
    #[arg(long)]
    soak: Option<u64>,
    /// Small sizes everywhere, no thresholds: checks that every part of the
    /// bench still runs (CI runs this), in well under a minute.
    #[arg(long)]
    quick: bool,
    /// Where the SVG charts go (latency distributions, the soak's RSS).
    #[arg(long, default_value = "target/bench-charts")]
    charts: PathBuf,
    /// Measure orapush alone, without the node.js baselines (for profiling;
    /// no ratios).
    #[arg(long)]
    only_orapush: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    /// The sizes `--quick` stands for.
    fn quickened(mut self) -> Self {
        if self.quick {
            self.connections = 200;
            self.subscribers = 50;
            self.messages = 20;
            self.rounds = 1;
            self.rate = 200;
            self.latency_seconds = 1;
            self.idle_seconds = 1;
            self.backlog = 2_000;
            self.fanout_messages = 20;
            self.fanout_rate = 50;
            self.slow_rounds = 1;
            self.slow_rate = 50;
            self.fanout = true;
        }
        self
    }

    /// The backlog every drain-rate figure is compared at (100,000 rows).
    fn standard_backlog(&self) -> u64 {
        if self.quick {
            self.backlog
        } else {
            100_000
        }
    }
}

struct Server {
    child: Child,
    port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// While set, servers start pinned to core 0 (`taskset -c 0`).
static PIN_SERVERS: AtomicBool = AtomicBool::new(false);

/// The command that starts a server under test, pinned when [`PIN_SERVERS`] is set.
fn server_command(program: &std::ffi::OsStr) -> Command {
    if PIN_SERVERS.load(Ordering::SeqCst) {
        let mut command = Command::new("taskset");
        command.args(["-c", "0"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Pins every thread of this process (the load client) to core 1, or lets
/// them run anywhere again; servers started meanwhile go to core 0.
///
/// The cores are those online, not `available_parallelism`: that follows
/// the calling thread's own affinity, so once pinned to core 1 it saw one
/// core, "anywhere" became core 0 alone, and the next pinning asked for an
/// empty set, which the kernel refused: every section after the first
/// pinned one ran the client on the server's core.
fn pin(pinned: bool) {
    PIN_SERVERS.store(pinned, Ordering::SeqCst);
    // SAFETY: sysconf only reads a system value.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let cores = usize::try_from(online).unwrap_or(2).max(2);
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for core in 0..cores {
        if !pinned || core == 1 {
            unsafe { libc::CPU_SET(core, &mut set) };
        }
    }
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<libc::pid_t>() else { continue };
        // SAFETY: sets the affinity of one of this process's own threads.
        let set_ok =
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } == 0;
        // A thread may end between the listing and the call (ESRCH); any
        // other failure leaves the client where it should not be.
        let error = std::io::Error::last_os_error();
        assert!(set_ok || error.raw_os_error() == Some(libc::ESRCH), "pinning thread {tid}: {error}");
    }
}

/// This process's CPU time so far (user + system), in microseconds.
fn cpu_micros() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

fn start_orapush(binary: &Path) -> Server {
    start_orapush_with(binary, &[])
}

/// Starts orapush with extra environment and waits until it is ready.
fn start_orapush_with(binary: &Path, env: &[(String, String)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = server_command(binary.as_os_str())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--sqlite"])
        .arg(dir.path().join("bench.db"))
        .env("RUST_LOG", "warn")
        // 10,000 connections from 16 loopback addresses: like clients
        // behind one proxy, far over the per-IP default of 200.
        .env("ORAPUSH__SERVER__MAX_CONNECTIONS", "100000")
        .env("ORAPUSH__SERVER__MAX_CONNECTIONS_PER_IP", "100000")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .spawn()
        .expect("start orapush");
    wait_listening(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    // Ready and draining (with the Redis broker, ready means Redis is there,
    // not that the source is up yet).
    let draining = |r: String| r.starts_with("HTTP/1.1 200") && r.contains("\"role\":\"active\"");
    while !draining(http_get(port, "/readyz")) {
        assert!(Instant::now() < deadline, "orapush on {port} never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child, port, _dir: Some(dir) }
}

/// A plain HTTP GET; the whole response as text ("" when it fails).
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// A counter's value from orapush's `/metrics`.
fn metric(port: u16, name: &str) -> f64 {
    http_get(port, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn start_node(dir: &Path) -> Server {
    let port = free_port();
    let child = server_command("node".as_ref())
        .arg(dir.join("server.js"))
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("start node");
    wait_listening(port);
    Server { child, port, _dir: None }
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server on {port} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rss_kib(pid: u32) -> u64 {
    read_rss_kib(pid).unwrap_or_else(|| panic!("no RSS for process {pid}"))
}

/// The RSS of a process, if it is still running.
fn read_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects from 127.0.0.x, spread over 16 source addresses so ephemeral
/// ports never run short.
async fn connect_from(port: u16, i: usize) -> tokio::net::TcpStream {
    source_socket(i).connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap()
}

/// A socket bound to connection `i`'s source address, 127.0.0.(1 + i % 16)
/// (see [`connect_from`]).
fn source_socket(i: usize) -> TcpSocket {
    let source = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1 + (i % 16) as u8), 0));
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(source).unwrap();
    socket
}

/// Opens a WebSocket with tungstenite.
async fn open(port: u16, path: &str, i: usize) -> Ws {
    let stream = connect_from(port, i).await;
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    ws
}

/// Opens a WebSocket by hand and returns the raw socket: the broadcast
/// readers then only count frames, so the client costs far less than any
/// server under test and the figure measures the server.
async fn open_raw(port: u16, path: &str, i: usize) -> (tokio::net::TcpStream, FrameCounter) {
    // Opening thousands of sockets at once can overflow a loopback accept
    // queue, and the kernel may then reset a connection mid-handshake:
    // that is the setup failing, not the server, so it is tried again.
    for attempt in 1.. {
        let mut stream = connect_from(port, i).await;
        match handshake::try_upgrade_raw(&mut stream, &format!("127.0.0.1:{port}"), path).await {
            Ok(()) => return (stream, FrameCounter::default()),
            Err(e) if attempt < 3 => eprintln!("connection {i}: handshake failed ({e}); trying again"),
            Err(e) => panic!("connection {i}: handshake failed three times: {e}"),
        }
    }
    unreachable!("the loop returns or panics")
}

/// Counts unmasked server text frames of exactly `body_bytes` payload
/// (`BODY_BYTES` by default) in a byte stream, skipping every other frame
/// (warm-up), and answers pings as a browser would: the seed server's
/// `websocket` module closes a connection that leaves its pings unanswered.
struct FrameCounter {
    body_bytes: usize,
    skip: usize,
    header: [u8; 4],
    header_len: usize,
    count: usize,
    /// The payload of the ping being read, while one is.
    ping: Option<Vec<u8>>,
    /// Pong frames (masked) still to be written.
    pongs: Vec<u8>,
}

impl Default for FrameCounter {
    fn default() -> Self {
        Self {
            body_bytes: BODY_BYTES,
            skip: 0,
            header: [0; 4],
            header_len: 0,
            count: 0,
            ping: None,
            pongs: Vec::new(),
        }
    }
}

/// Reads what the socket has, counts it, and answers pings; the bytes read
/// (0 when the server closed the connection).
async fn read_counting(
    stream: &mut tokio::net::TcpStream,
    counter: &mut FrameCounter,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = stream.read(buf).await?;
    counter.feed(&buf[..n]);
    if !counter.pongs.is_empty() {
        stream.write_all(&counter.pongs).await?;
        counter.pongs.clear();
    }
    Ok(n)
}

impl FrameCounter {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                if let Some(ping) = &mut self.ping {
                    ping.extend_from_slice(&data[..n]);
                }
                data = &data[n..];
                if self.skip == 0 {
                    self.answer_ping();
                }
                continue;
            }
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if self.header_len == 1 {
                continue;
            }
            let len = match (self.header_len, self.header[1] & 0x7f) {
                (2, short) if short < 126 => short as usize,
                (2, 126) | (3, _) => continue,
                (4, _) => u16::from_be_bytes([self.header[2], self.header[3]]) as usize,
                (_, other) => panic!("bench frames are under 64 KiB (length code {other})"),
            };
            if self.header[0] == 0x81 && len == self.body_bytes {
                self.count += 1;
            }
            if self.header[0] == 0x89 {
                self.ping = Some(Vec::with_capacity(len));
            }
            self.skip = len;
            self.header_len = 0;
            if len == 0 {
                self.answer_ping();
            }
        }
    }

    /// Queues the pong for the ping just read (a zero mask leaves its
    /// payload as it is).
    fn answer_ping(&mut self) {
        if let Some(payload) = self.ping.take() {
            self.pongs.extend_from_slice(&[0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0]);
            self.pongs.extend_from_slice(&payload);
        }
    }
}

/// Opens `n` raw counting sockets on `/`, 500 handshakes at a time.
async fn open_raw_many(port: u16, n: usize) -> Vec<(tokio::net::TcpStream, FrameCounter)> {
    let mut conns = Vec::with_capacity(n);
    for chunk_start in (0..n).step_by(500) {
        let end = (chunk_start + 500).min(n);
        conns
            .extend(futures_util::future::join_all((chunk_start..end).map(|i| open_raw(port, "/", i))).await);
    }
    conns
}

async fn open_many(port: u16, path: &str, n: usize) -> Vec<Ws> {
    let mut all = Vec::with_capacity(n);
    for chunk_start in (0..n).step_by(500) {
        let end = (chunk_start + 500).min(n);
        let opened = futures_util::future::join_all((chunk_start..end).map(|i| open(port, path, i))).await;
        all.extend(opened);
    }
    all
}

/// KiB of server RSS per idle connection.
async fn idle_memory(server: &Server, n: usize) -> f64 {
    // Warm up allocator and runtime with a few connections first.
    drop(open_many(server.port, "/", 50).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(server.child.id());
    let conns = open_many(server.port, "/", n).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(server.child.id());
    drop(conns);
    (after.saturating_sub(before)) as f64 / n as f64
}

/// Size of each broadcast message; the readers count frames of this size.
const BODY_BYTES: usize = 100;

/// What one broadcast run measured.
struct Broadcast {
    /// Deliveries per second.
    rate: f64,
    /// The server's CPU time per delivery, in µs (all its threads).
    server_us: f64,
    /// The load client's CPU time per delivery, in µs.
    client_us: f64,
    /// The server's peak RSS during the burst, in KiB (sampled every 20 ms).
    peak_rss_kib: u64,
}

/// What the kernel counted of lost packets and their recovery, system-wide:
/// a run's figure is the difference of two readings.
#[derive(Clone, Copy, Default)]
struct LossCounters {
    /// TCP retransmission timeouts (`TcpExt: TCPTimeouts`).
    rto_timeouts: u64,
    /// TCP tail-loss probes (`TcpExt: TCPLossProbes`): a lost last segment
    /// with one segment in flight is probed after at least 200 ms.
    loss_probes: u64,
    /// Packets dropped because a core's input backlog was full
    /// (`/proc/net/softnet_stat`, second column, summed over cores). On
    /// loopback every packet sent goes through the sending core's backlog.
    backlog_drops: u64,
}

impl LossCounters {
    /// Now; zeros where /proc cannot be read.
    fn read() -> Self {
        let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
        let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
        let tcp_ext: Vec<(&str, u64)> = match (lines.next(), lines.next()) {
            (Some(names), Some(values)) => names
                .split_whitespace()
                .zip(values.split_whitespace())
                .filter_map(|(name, value)| Some((name, value.parse().ok()?)))
                .collect(),
            _ => Vec::new(),
        };
        let field = |wanted: &str| tcp_ext.iter().find(|(name, _)| *name == wanted).map_or(0, |(_, v)| *v);
        let backlog_drops = std::fs::read_to_string("/proc/net/softnet_stat")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok())
            .sum();
        Self { rto_timeouts: field("TCPTimeouts"), loss_probes: field("TCPLossProbes"), backlog_drops }
    }

    /// Both counts together.
    fn plus(self, other: Self) -> Self {
        Self {
            rto_timeouts: self.rto_timeouts + other.rto_timeouts,
            loss_probes: self.loss_probes + other.loss_probes,
            backlog_drops: self.backlog_drops + other.backlog_drops,
        }
    }

    /// What was counted since `earlier`.
    fn since(self, earlier: Self) -> Self {
        Self {
            rto_timeouts: self.rto_timeouts.saturating_sub(earlier.rto_timeouts),
            loss_probes: self.loss_probes.saturating_sub(earlier.loss_probes),
            backlog_drops: self.backlog_drops.saturating_sub(earlier.backlog_drops),
        }
    }
}

impl std::fmt::Display for LossCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} / {} / {}", self.backlog_drops, self.loss_probes, self.rto_timeouts)
    }
}

/// A process's CPU time so far (user + system, every thread), in µs.
fn process_cpu_micros(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // SAFETY: sysconf only reads a constant.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 1_000_000 / ticks_per_second
}

/// Samples a process's RSS every 20 ms until dropped; gives the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !stopped.load(Ordering::SeqCst) {
                peak = peak.max(read_rss_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak.max(read_rss_kib(pid).unwrap_or(0))
        });
        Self { stop, thread: Some(thread) }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// `messages` 100-byte POSTs to `subscribers` sockets on `/`, timed until
/// every subscriber has counted all of them.
async fn broadcast(server: &Server, subscribers: usize, messages: usize) -> Broadcast {
    let conns = open_raw_many(server.port, subscribers).await;
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    let mut readers = Vec::new();
    for (mut stream, mut counter) in conns {
        let (done, all_done) = (done.clone(), all_done.clone());
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while counter.count < messages {
                if let Ok(0) | Err(_) = read_counting(&mut stream, &mut counter, &mut buf).await {
                    panic!("subscriber lost its connection after {} messages", counter.count)
                }
            }
            if done.fetch_add(1, Ordering::SeqCst) + 1 == subscribers {
                all_done.notify_one();
            }
            // Kept open until the run's CPU time is read: closing is not delivering.
            stream
        }));
    }
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/", server.port);
    let frame = |pad: &str| format!(r#"{{"message":"REFRESH","pad":"{pad}"}}"#);
    let body = frame(&"x".repeat(BODY_BYTES - frame("").len()));
    assert_eq!(body.len(), BODY_BYTES);
    // Every subscriber is registered once a POST reaches all of them.
    loop {
        let reply: serde_json::Value =
            http.post(&url).body("warmup").send().await.unwrap().json().await.unwrap();
        if reply["message"] == format!("Send to {subscribers} clients") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = server.child.id();
    let rss = RssSampler::start(pid);
    let (server_before, client_before) = (process_cpu_micros(pid), cpu_micros());
    let start = Instant::now();
    for _ in 0..messages {
        let r = http.post(&url).body(body.clone()).send().await.unwrap();
        assert!(r.status().is_success());
    }
    tokio::time::timeout(Duration::from_secs(300), all_done.notified()).await.expect("all delivered");
    let elapsed = start.elapsed();
    let deliveries = (subscribers * messages) as f64;
    let server_us = (process_cpu_micros(pid) - server_before) as f64 / deliveries;
    let client_us = (cpu_micros() - client_before) as f64 / deliveries;
    for r in readers {
        r.abort();
    }
    Broadcast { rate: deliveries / elapsed.as_secs_f64(), server_us, client_us, peak_rss_kib: rss.peak() }
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// Inserts one payload per call into an outbox (built on the writer thread).
type Inserter = Box<dyn FnMut(&str)>;

fn sqlite_inserter(db: PathBuf) -> impl FnOnce() -> Inserter + Send + 'static {
    move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        Box::new(move |payload: &str| {
            conn.execute("INSERT INTO orapush_outbox(channel, payload) VALUES ('lat', ?1)", [payload])
                .unwrap();
        })
    }
}

fn pg_inserter(url: String, schema: String) -> impl FnOnce() -> Inserter + Send + 'static {
    move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let sql = format!("INSERT INTO \"{schema}\".orapush_outbox(channel, payload) VALUES ('lat', $1)");
        Box::new(move |payload: &str| {
            client.execute(sql.as_str(), &[&payload]).unwrap();
        })
    }
}

/// Insert→receive latency (ms) at `rate` rows/s, each row its own transaction.
async fn outbox_latency(
    server: &Server,
    rate: u64,
    seconds: u64,
    inserter: impl FnOnce() -> Inserter + Send + 'static,
) -> Vec<f64> {
    let mut ws = open(server.port, "/ws?channel=lat", 0).await;
    let total = (rate * seconds) as usize;
    // The first frame is the subscription confirmation.
    let _ = ws.next().await;
    timed_rows(&mut ws, rate, total, inserter).await
}

/// A scratch schema on the benchmark's PostgreSQL, dropped afterwards.
struct PgScratch {
    url: String,
    schema: String,
}

impl PgScratch {
    fn new(url: &str) -> Self {
        Self { url: url.into(), schema: format!("orapush_bench_{:08x}", rand::random::<u32>()) }
    }

    /// Runs SQL on a sync client, off the async runtime's threads.
    fn run(&self, sql: String) {
        let url = self.url.clone();
        std::thread::spawn(move || {
            let mut client =
                postgres::Client::connect(&url, postgres::NoTls).expect("PostgreSQL for the bench");
            client.batch_execute(&sql).unwrap();
        })
        .join()
        .unwrap();
    }

    fn env(&self, create_schema: bool) -> Vec<(String, String)> {
        vec![
            ("ORAPUSH__SOURCE__KIND".into(), "postgres".into()),
            ("ORAPUSH__POSTGRES__URL".into(), self.url.clone()),
            ("ORAPUSH__POSTGRES__SCHEMA".into(), self.schema.clone()),
            ("ORAPUSH__POSTGRES__CREATE_SCHEMA".into(), create_schema.to_string()),
            ("ORAPUSH__POSTGRES__NOTIFY_CHANNEL".into(), self.schema.clone()),
        ]
    }
}

impl Drop for PgScratch {
    fn drop(&mut self) {
        self.run(format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema));
    }
}

/// The environment that puts orapush on the Redis broker, under a prefix of
/// its own (so runs never see each other's keys).
fn redis_env(url: &str) -> Vec<(String, String)> {
    vec![
        ("ORAPUSH__BROKER__KIND".into(), "redis".into()),
        ("ORAPUSH__REDIS__URL".into(), url.into()),
        ("ORAPUSH__REDIS__PREFIX".into(), format!("orapush-bench-{:08x}", rand::random::<u32>())),
    ]
}

/// Drains a backlog of `rows` rows: rows/s and orapush's peak RSS (KiB).
async fn pg_backlog(binary: &Path, url: &str, rows: u64, extra_env: &[(String, String)]) -> (f64, u64) {
    let scratch = PgScratch::new(url);
    let schema = &scratch.schema;
    scratch.run(format!(
        "CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\"; {}\n\
         INSERT INTO orapush_outbox(channel, payload) \
         SELECT 'backlog', '{{\"n\":' || g || ',\"pad\":\"' || repeat('x', 60) || '\"}}' FROM generate_series(1, {rows}) g;",
        orapush::source::postgres::INSTALL_SQL
    ));
    let started = Instant::now();
    let mut env = scratch.env(false);
    env.extend_from_slice(extra_env);
    let server = start_orapush_with(binary, &env);
    let mut peak = 0;
    while metric(server.port, "orapush_messages_drained_total") < rows as f64 {
        peak = peak.max(rss_kib(server.child.id()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    peak = peak.max(rss_kib(server.child.id()));
    (rows as f64 / elapsed.as_secs_f64(), peak)
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Least-squares slope of `samples` (per sample step).
fn slope(samples: &[f64]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = samples.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in samples.iter().enumerate() {
        num += (i as f64 - mean_x) * (y - mean_y);
        den += (i as f64 - mean_x).powi(2);
    }
    num / den
}

/// The soak (`--soak MINUTES`): 1,000 steady subscribers on `/` count every
/// row; 100 outbox rows/s of exactly `BODY_BYTES`; 200 connections a second
/// connect to `/ws`, subscribe, receive one message and leave. RSS and open
/// file descriptors are printed every minute, with their slopes at the end,
/// and every steady subscriber must have every row.
async fn soak(binary: &Path, minutes: u64, charts_dir: &Path) {
    const STEADY: usize = 1_000;
    const ROWS_PER_SECOND: u64 = 100;
    const CHURN_PER_SECOND: u64 = 200;
    let server = start_orapush(binary);
    let pid = server.child.id();
    let db = server._dir.as_ref().unwrap().path().join("bench.db");
    // tungstenite clients, not raw counters: over half an hour the server
    // pings, and a subscriber that never answers would be closed as idle.
    let steady = open_many(server.port, "/", STEADY).await;
    let counts: Arc<Vec<AtomicUsize>> = Arc::new((0..STEADY).map(|_| AtomicUsize::new(0)).collect());
    for (k, mut ws) in steady.into_iter().enumerate() {
        let counts = counts.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = ws.next().await {
                if frame.is_text() && frame.len() == BODY_BYTES {
                    counts[k].fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let inserted = Arc::new(AtomicUsize::new(0));
    let inserter = {
        let (stop, inserted) = (stop.clone(), inserted.clone());
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            let frame = |pad: &str| format!(r#"{{"message":"REFRESH","pad":"{pad}"}}"#);
            let body = frame(&"x".repeat(BODY_BYTES - frame("").len()));
            let start = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                conn.execute("INSERT INTO orapush_outbox(channel, payload) VALUES ('soak', ?1)", [&body])
                    .unwrap();
                let n = inserted.fetch_add(1, Ordering::SeqCst) as u64 + 1;
                let due = start + Duration::from_micros(n * 1_000_000 / ROWS_PER_SECOND);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        })
    };
    let churned = Arc::new(AtomicUsize::new(0));
    let churn = {
        let (stop, churned, port) = (stop.clone(), churned.clone(), server.port);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / CHURN_PER_SECOND));
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                i += 1;
                let churned = churned.clone();
                tokio::spawn(async move {
                    let mut ws = open(port, "/ws?channel=soak", i).await;
                    let deadline = Duration::from_secs(10);
                    while let Ok(Some(Ok(frame))) = tokio::time::timeout(deadline, ws.next()).await {
                        if frame.to_text().is_ok_and(|t| t.contains(r#""type":"message""#)) {
                            churned.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                    let _ = ws.close(None).await;
                });
            }
        })
    };
    println!("## Soak: {minutes} min, {CHURN_PER_SECOND} connections/s churning, {ROWS_PER_SECOND} rows/s to {STEADY} steady subscribers\n");
    println!("| minute | RSS MiB | open fds | rows | churned connections |");
    println!("|---|---|---|---|---|");
    let (mut rss, mut fds) = (Vec::new(), Vec::new());
    for minute in 0..=minutes {
        if minute > 0 {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        let (r, f) = (rss_kib(pid) as f64 / 1024.0, open_fds(pid) as f64);
        println!(
            "| {minute} | {r:.1} | {f} | {} | {} |",
            inserted.load(Ordering::SeqCst),
            churned.load(Ordering::SeqCst)
        );
        rss.push(r);
        fds.push(f);
    }
    stop.store(true, Ordering::SeqCst);
    inserter.join().unwrap();
    churn.abort();
    let rows = inserted.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    let behind = || counts.iter().filter(|c| c.load(Ordering::SeqCst) < rows).count();
    while behind() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first minute is warm-up (allocator arenas, the first WAL); the slope is over the rest.
    let from = usize::from(rss.len() > 2);
    println!(
        "\n- RSS slope {:+.3} MiB/min, open fds slope {:+.2}/min (minutes {from}–{minutes})",
        slope(&rss[from..]),
        slope(&fds[from..])
    );
    println!("- {rows} rows inserted; steady subscribers missing rows: {} of {STEADY}", behind());
    let per_minute =
        |values: &[f64]| values.iter().enumerate().map(|(m, &v)| (m as f64, v)).collect::<Vec<_>>();
    charts::over_time(
        &charts_dir.join("soak-rss.svg"),
        &format!("Soak: orapush RSS over {minutes} minutes"),
        "RSS (MiB)",
        &[("RSS".to_string(), per_minute(&rss))],
    );
    charts::over_time(
        &charts_dir.join("soak-fds.svg"),
        &format!("Soak: orapush open file descriptors over {minutes} minutes"),
        "open file descriptors",
        &[("open fds".to_string(), per_minute(&fds))],
    );
}

/// Starts one server under test (a fresh process each call).
type StartServer = Box<dyn Fn() -> Server>;

/// The median (by rate) of `rounds` broadcast runs, each on a fresh server.
async fn broadcast_rounds(
    start: &StartServer,
    subscribers: usize,
    messages: usize,
    rounds: usize,
) -> Broadcast {
    let mut runs = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let server = start();
        runs.push(broadcast(&server, subscribers, messages).await);
    }
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    runs.swap_remove(runs.len() / 2)
}

/// Broadcast with each server pinned to core 0 and the client to core 1,
/// at `--subscribers` (all `--messages`) and at `--connections` (
/// `--burst-messages`): per-core rates, CPU per delivery and peak RSS.
async fn pinned_broadcast_section(
    args: &Args,
    servers: &[(String, StartServer)],
    unpinned: &[(String, f64)],
) {
    let sizes = if args.quick {
        vec![(args.subscribers, args.messages)]
    } else {
        vec![(args.subscribers, args.messages), (args.connections, args.burst_messages)]
    };
    println!("\n## Broadcast pinned: each server on core 0, the load client on core 1 (per-core figures, median of {})\n", args.rounds);
    println!("| subscribers × messages | server | deliveries/s | server CPU µs per delivery | client CPU µs per delivery | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    pin(true);
    let mut ratios = Vec::new();
    for &(subscribers, messages) in &sizes {
        let mut runs = Vec::new();
        for (name, start) in servers {
            let run = broadcast_rounds(start, subscribers, messages, args.rounds).await;
            println!(
                "| {subscribers} × {messages} | {name} | {:.0} | {:.2} | {:.2} | {:.1} |",
                run.rate,
                run.server_us,
                run.client_us,
                run.peak_rss_kib as f64 / 1024.0
            );
            runs.push(run);
        }
        ratios.push((subscribers, runs));
    }
    pin(false);
    println!();
    for (subscribers, runs) in &ratios {
        for i in 1..servers.len() {
            let unpinned_ratio = if *subscribers == args.subscribers {
                format!(", {:.2}x unpinned", unpinned[0].1 / unpinned[i].1)
            } else {
                String::new()
            };
            println!(
                "- {subscribers} subscribers, vs {}: {:.2}x pinned{unpinned_ratio}; peak RSS {:.2}x of theirs",
                servers[i].0,
                runs[0].rate / runs[i].rate,
                runs[0].peak_rss_kib as f64 / runs[i].peak_rss_kib as f64
            );
        }
    }
}

fn main() {
    // The compose bench's mode has options of its own (OracleArgs), so the
    // local modes' required options stay required.
    if std::env::args().any(|a| a == "--target-ws" || a.starts_with("--target-ws=")) {
        return oracle_target(OracleArgs::parse());
    }
    let args = Args::parse().quickened();
    std::fs::create_dir_all(&args.charts).expect("create the charts directory (--charts)");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if let Some(minutes) = args.soak {
        return runtime.block_on(soak(&args.orapush, minutes, &args.charts));
    }
    runtime.block_on(async {
        let mut servers: Vec<(String, StartServer)> = vec![
            ("orapush".into(), Box::new({ let b = args.orapush.clone(); move || start_orapush(&b) })),
            ("seed-node".into(), Box::new({ let d = args.seed.clone(); move || start_node(&d) })),
        ];
        if let Some(dir) = args.node_ws.clone() {
            servers.push(("node-ws".into(), Box::new(move || start_node(&dir))));
        }
        if args.only_orapush {
            servers.truncate(1);
        }

        println!("## Memory per idle connection ({} connections)\n", args.connections);
        let mut idle = Vec::new();
        for (name, start) in servers.iter().filter(|_| !args.skip_idle) {
            let server = start();
            let kib = idle_memory(&server, args.connections).await;
            println!("- {name}: {kib:.1} KiB per connection");
            idle.push((name.clone(), kib));
            drop(server);
        }

        println!("\n## Broadcast: {} subscribers, {} messages of 100 bytes via POST /\n", args.subscribers, args.messages);
        let mut rates = Vec::new();
        for (name, start) in servers.iter().filter(|_| !args.skip_broadcast) {
            let run = broadcast_rounds(start, args.subscribers, args.messages, args.rounds).await;
            println!("- {name}: {:.0} deliveries/s (median of {})", run.rate, args.rounds);
            rates.push((name.clone(), run.rate));
        }

        println!("\n## Ratios (orapush vs baseline, same run)\n");
        for i in (1..servers.len()).filter(|_| !args.skip_broadcast) {
            if args.skip_idle {
                println!("- vs {}: broadcast {:.2}x faster", rates[i].0, rates[0].1 / rates[i].1);
                continue;
            }
            println!(
                "- vs {}: idle memory {:.2}x smaller, broadcast {:.2}x faster",
                idle[i].0,
                idle[i].1 / idle[0].1,
                rates[0].1 / rates[i].1
            );
        }

        // Pinned, the load client has one core. The broadcast's readers run
        // on one worker thread (two workers on one core would only take
        // turns), the fan-out's on a thread of their own (`read_fanout`),
        // and the POST loop (the section itself) on this thread; the HTTP
        // client's connection I/O still runs on the worker.
        let on_one_thread = |section: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>| {
            tokio::task::block_in_place(|| {
                let runtime =
                    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
                runtime.block_on(section);
            });
        };
        if !args.skip_broadcast {
            on_one_thread(Box::pin(pinned_broadcast_section(&args, &servers, &rates)));
        }

        if args.fanout {
            on_one_thread(Box::pin(fanout::fanout_section(&args, &servers)));
        }

        if args.skip_latency {
            return;
        }
        let server = start_orapush(&args.orapush);
        let db = server._dir.as_ref().unwrap().path().join("bench.db");
        let latencies = outbox_latency(&server, args.rate, args.latency_seconds, sqlite_inserter(db)).await;
        let n = latencies.len();
        let sqlite_latencies = latencies.clone();
        let (p50, p99, max) = percentiles(latencies);
        // Idle: how often the drainer reads the outbox with nothing to do.
        let idle_window = Duration::from_secs(args.idle_seconds);
        let claims_before = metric(server.port, "orapush_outbox_claims_total");
        tokio::time::sleep(idle_window).await;
        let idle_claims = (metric(server.port, "orapush_outbox_claims_total") - claims_before) / idle_window.as_secs_f64();
        drop(server);
        println!(
            "\n## Insert→receive through the SQLite outbox at {} rows/s ({n} rows, default configuration: woken on commit)\n\n- p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms (target p50 ≤ 2, p99 ≤ 10)\n- idle: {idle_claims:.2} outbox claims/s over {} s (target ≤ 1)",
            args.rate,
            idle_window.as_secs()
        );
        charts::latency_distribution(
            &args.charts.join("sqlite-latency.svg"),
            &format!("Insert→receive through the SQLite outbox, {} rows/s", args.rate),
            &[("orapush, default configuration".to_string(), sqlite_latencies)],
        );

        if args.skip_postgres {
            return;
        }
        println!("\n## Insert→receive through PostgreSQL with LISTEN/NOTIFY (each row its own transaction)\n");
        let mut pg_latencies = Vec::new();
        for rate in [50, 500] {
            let scratch = PgScratch::new(&args.pg_url);
            let server = start_orapush_with(&args.orapush, &scratch.env(true));
            let inserter = pg_inserter(args.pg_url.clone(), scratch.schema.clone());
            let latencies = outbox_latency(&server, rate, args.latency_seconds, inserter).await;
            drop(server);
            pg_latencies.push((format!("{rate} rows/s"), latencies.clone()));
            let n = latencies.len();
            let (p50, p99, max) = percentiles(latencies);
            println!("- {rate} rows/s ({n} rows): p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms");
        }
        charts::latency_distribution(
            &args.charts.join("postgres-latency.svg"),
            "Insert→receive through PostgreSQL LISTEN/NOTIFY",
            &pg_latencies,
        );
        println!("\n## PostgreSQL backlog drained with no subscriber (batch 500)\n");
        for rows in [args.standard_backlog(), args.backlog] {
            let (rate, peak) = pg_backlog(&args.orapush, &args.pg_url, rows, &[]).await;
            println!("- {rows} rows: {rate:.0} rows/s, peak RSS {:.1} MiB", peak as f64 / 1024.0);
        }

        let Some(redis) = args.redis.clone() else { return };
        println!("\n## The Redis broker (PostgreSQL NOTIFY source, `broker.kind` memory against redis, same run)\n");
        let mut p50s = Vec::new();
        for broker in ["memory", "redis"] {
            let scratch = PgScratch::new(&args.pg_url);
            let mut env = scratch.env(true);
            if broker == "redis" {
                env.extend(redis_env(&redis));
            }
            let server = start_orapush_with(&args.orapush, &env);
            let inserter = pg_inserter(args.pg_url.clone(), scratch.schema.clone());
            let latencies = outbox_latency(&server, 500, args.latency_seconds, inserter).await;
            let n = latencies.len();
            let (p50, p99, max) = percentiles(latencies);
            drop(server);
            println!("- {broker}: 500 rows/s ({n} rows): p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms");
            p50s.push(p50);
        }
        println!("- the Redis hop adds {:.2} ms at p50 (target: under 1 ms)", p50s[1] - p50s[0]);
        let rows = args.standard_backlog();
        let (rate, peak) = pg_backlog(&args.orapush, &args.pg_url, rows, &redis_env(&redis)).await;
        println!(
            "- backlog of {rows} rows through Redis (one script call per channel and batch of 500): {rate:.0} rows/s (target ≥ 50000), peak RSS {:.1} MiB",
            peak as f64 / 1024.0
        );
    });
}

// The compose bench (tests/compose/bench.sh): an orapush already running on
// Oracle, reached over the compose network from the contract-tests image,
// with rows inserted as the outbox owner through the `oracle` crate.

/// Options of the `--target-ws` mode.
#[derive(Parser)]
struct OracleArgs {
    /// WebSocket endpoint of the running orapush (plain ws://), e.g. ws://orapush:8080/ws.
    #[arg(long)]
    target_ws: String,
    /// Connect string of the database orapush drains.
    #[arg(long, default_value = "//oracle:1521/FREEPDB1")]
    oracle: String,
    /// Owner of the outbox: the bench inserts as this user.
    #[arg(long, default_value = "orapush")]
    owner: String,
    #[arg(long, env = "ORAPUSH_BENCH_OWNER_PASSWORD", hide_env_values = true)]
    owner_password: String,
    /// SYSTEM's password, to read orapush's calls from V$SESSTAT while idle (skipped without it).
    #[arg(long, env = "ORAPUSH_BENCH_SYSTEM_PASSWORD", hide_env_values = true)]
    system_password: Option<String>,
    /// The user orapush logs in as.
    #[arg(long, default_value = "ORAPUSH_APP")]
    service_user: String,
    /// Count only sessions from this client host (V$SESSION.MACHINE, the
    /// orapush container's hostname), so another orapush on the same
    /// database (orapush-aq) is left out.
    #[arg(long)]
    machine: Option<String>,
    /// Rows per second for the latency measurement, each its own transaction.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// Length of the idle window in which orapush's calls are counted.
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    /// Backlog mode: hold the drain lock (orapush must be stopped), print
    /// "LOCK HELD", wait for orapush to come up as a standby, fill the
    /// outbox with this many rows, release the lock, and time the drain.
    #[arg(long)]
    backlog: Option<u64>,
    /// The drain lock the backlog mode holds while it fills the outbox.
    #[arg(long, default_value = "orapush:ORAPUSH.ORAPUSH_OUTBOX")]
    lock_name: String,
    /// Where the SVG charts go (latency distributions, the soak's RSS).
    #[arg(long, default_value = "target/bench-charts")]
    charts: PathBuf,
    /// Measure orapush alone, without the node.js baselines (for profiling;
    /// no ratios).
    #[arg(long)]
    only_orapush: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// host:port and path of a ws:// URL.
fn split_ws_url(url: &str) -> (String, String) {
    let rest =
        url.strip_prefix("ws://").unwrap_or_else(|| panic!("--target-ws takes a ws:// URL, not {url}"));
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, format!("/{path}")),
        None => (rest, "/".to_string()),
    };
    let authority = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    (authority, path)
}

/// A plain HTTP GET to host:port; the whole response ("" while nothing answers).
fn http_get_at(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// Opens a WebSocket to the running orapush, subscribed to `channel`, past
/// its subscription confirmation.
async fn open_target(addr: &str, path: &str, channel: &str) -> Ws {
    let stream =
        tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("orapush at {addr}: {e}"));
    let url = format!("ws://{addr}{path}?channel={channel}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let _ = ws.next().await;
    ws
}

fn owner_connection(args: &OracleArgs) -> oracle::Connection {
    oracle::Connection::connect(&args.owner, &args.owner_password, &args.oracle)
        .unwrap_or_else(|e| panic!("log in as {} at {}: {e}", args.owner, args.oracle))
}

/// Inserts each payload into the outbox as the owner, committed by the same
/// round trip (autocommit), like an application's INSERT and COMMIT.
fn oracle_inserter(
    connect: String,
    user: String,
    password: String,
) -> impl FnOnce() -> Inserter + Send + 'static {
    move || {
        let mut conn =
            oracle::Connection::connect(&user, &password, &connect).expect("log in as the outbox owner");
        conn.set_autocommit(true);
        Box::new(move |payload: &str| {
            conn.execute("INSERT INTO orapush_outbox (channel, payload) VALUES ('lat', :1)", &[&payload])
                .unwrap();
        })
    }
}

/// Inserts `total` rows at `rate` rows/s on a thread of their own, each
/// carrying its send time, and returns each one's insert→receive latency
/// (ms) as it arrives on `ws`.
async fn timed_rows<S>(
    ws: &mut S,
    rate: u64,
    total: usize,
    inserter: impl FnOnce() -> Inserter + Send + 'static,
) -> Vec<f64>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let writer = std::thread::spawn(move || {
        let mut insert = inserter();
        let start = Instant::now();
        for i in 0..total {
            let due = start + Duration::from_micros(i as u64 * 1_000_000 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            insert(&format!(r#"{{"t":{}}}"#, now_micros()));
        }
    });
    let mut latencies = Vec::with_capacity(total);
    while latencies.len() < total {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("messages keep coming") {
            Some(Ok(Message::Text(t))) => {
                let f: serde_json::Value = serde_json::from_str(&t).unwrap();
                if let Some(sent) = f["data"]["t"].as_u64() {
                    latencies.push((now_micros().saturating_sub(sent)) as f64 / 1000.0);
                }
            }
            Some(Ok(_)) => {}
            other => panic!("latency socket ended: {other:?}"),
        }
    }
    writer.join().unwrap();
    latencies
}

/// p50, p99 and max of a set of latencies.
fn percentiles(mut latencies: Vec<f64>) -> (f64, f64, f64) {
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    (pct(0.50), pct(0.99), latencies[latencies.len() - 1])
}

/// Insert→receive latency (ms) at `rate` rows/s through the running orapush.
async fn target_latency(args: &OracleArgs, addr: &str, path: &str) -> (f64, f64, f64, usize) {
    let mut ws = open_target(addr, path, "lat").await;
    let (rate, total) = (args.rate, (args.rate * args.latency_seconds) as usize);
    let inserter = oracle_inserter(args.oracle.clone(), args.owner.clone(), args.owner_password.clone());
    let latencies = timed_rows(&mut ws, rate, total, inserter).await;
    let n = latencies.len();
    let (p50, p99, max) = percentiles(latencies);
    (p50, p99, max, n)
}

/// Per session of the service user: (module / action, user calls, executions).
type SessionCalls = std::collections::BTreeMap<(i64, i64), (String, i64, i64)>;

/// Reads the service user's sessions' call counters from V$SESSTAT.
/// "user calls" are the client's calls (OCI round trips that do work);
/// "execute count" adds the SQL that PL/SQL runs inside them.
fn session_calls(conn: &oracle::Connection, user: &str, machine: Option<&str>) -> SessionCalls {
    let mut sql = String::from(
        "SELECT s.sid, s.serial#, NVL(s.module, '-') || ' / ' || NVL(s.action, '-'), \
                SUM(DECODE(n.name, 'user calls', st.value, 0)), SUM(DECODE(n.name, 'execute count', st.value, 0)) \
           FROM v$session s JOIN v$sesstat st ON st.sid = s.sid JOIN v$statname n ON n.statistic# = st.statistic# \
          WHERE s.username = UPPER(:1) AND n.name IN ('user calls', 'execute count')",
    );
    let mut params: Vec<&dyn oracle::sql_type::ToSql> = vec![&user];
    if let Some(machine) = &machine {
        sql.push_str(" AND s.machine = :2");
        params.push(machine);
    }
    sql.push_str(" GROUP BY s.sid, s.serial#, s.module, s.action");
    let rows = conn.query_as::<(i64, i64, String, i64, i64)>(&sql, &params).expect("V$SESSTAT as SYSTEM");
    rows.map(|row| {
        let (sid, serial, what, calls, executions) = row.unwrap();
        ((sid, serial), (what, calls, executions))
    })
    .collect()
}

/// orapush's calls per second over an idle window, per session.
fn idle_calls(args: &OracleArgs, system_password: &str) {
    let conn =
        oracle::Connection::connect("system", system_password, &args.oracle).expect("log in as SYSTEM");
    // Let the last deliveries' deletes and commits settle first.
    std::thread::sleep(Duration::from_secs(3));
    let machine = args.machine.as_deref();
    let before = session_calls(&conn, &args.service_user, machine);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(args.idle_seconds));
    let after = session_calls(&conn, &args.service_user, machine);
    let seconds = started.elapsed().as_secs_f64();
    // No session at all would read as "zero calls": say so instead.
    assert!(
        !after.is_empty(),
        "no session of {} from {} in V$SESSION: is orapush running, and is --machine its host name?",
        args.service_user,
        machine.unwrap_or("any host")
    );
    println!(
        "\n## Oracle outbox, idle for {seconds:.0} s: orapush's calls to the database (V$SESSTAT, user {})\n",
        args.service_user
    );
    let (mut calls, mut executions) = (0, 0);
    for (key, (what, c1, e1)) in &after {
        let (c0, e0) = before.get(key).map_or((0, 0), |(_, c, e)| (*c, *e));
        let new = if before.contains_key(key) { "" } else { " (logged on during the window)" };
        println!(
            "- sid {} ({what}): {:.2} user calls/s, {:.2} executions/s{new}",
            key.0,
            (c1 - c0) as f64 / seconds,
            (e1 - e0) as f64 / seconds
        );
        calls += c1 - c0;
        executions += e1 - e0;
    }
    let gone = before.keys().filter(|k| !after.contains_key(k)).count();
    println!(
        "- all: {:.2} user calls/s, {:.2} executions/s; sessions ended during the window: {gone}",
        calls as f64 / seconds,
        executions as f64 / seconds
    );
    println!("- target: nothing but the commit wake-up's wait (one call per 2 s) and the fallback poll (every 5 s)");
}

/// Takes the drain lock in a session of its own, retrying while it is busy.
fn hold_drain_lock(args: &OracleArgs) -> oracle::Connection {
    let conn = owner_connection(args);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stmt = conn.statement("BEGIN :1 := orapush.try_lock_drainer(:2); END;").build().unwrap();
        stmt.execute(&[&oracle::sql_type::OracleType::Int64, &args.lock_name])
            .expect("orapush.try_lock_drainer");
        let status: i64 = stmt.bind_value(1).unwrap();
        match status {
            0 | 4 => return conn,
            1 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            1 => panic!("{} stays taken: stop orapush first (tests/compose/bench.sh does)", args.lock_name),
            other => panic!("orapush.try_lock_drainer({}) returned {other}", args.lock_name),
        }
    }
}

/// Drains a backlog of `rows` rows through the running orapush: rows/s
/// from the lock's release to the last message at a subscriber.
async fn target_backlog(args: &OracleArgs, addr: &str, path: &str, rows: u64) {
    // The bench holds the drain lock while orapush (re)starts, so orapush
    // comes up as a standby: a subscriber can connect and the backlog can be
    // filled before anything drains, and releasing the lock starts the
    // drain at a known instant.
    let lock = hold_drain_lock(args);
    println!("LOCK HELD: start orapush now");
    let deadline = Instant::now() + Duration::from_secs(300);
    while http_get_at(addr, "/healthz").is_empty() {
        assert!(Instant::now() < deadline, "orapush at {addr} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ws = open_target(addr, path, "backlog").await;

    let filler = owner_connection(args);
    filler.execute("DELETE FROM orapush_outbox WHERE channel = 'backlog'", &[]).unwrap();
    let filled = Instant::now();
    // One statement: the outbox trigger signals once, and the rows are
    // numbered so the subscriber can check that it got each one.
    filler
        .execute(
            "INSERT INTO orapush_outbox (channel, payload) \
             SELECT 'backlog', '{\"n\":' || LEVEL || ',\"pad\":\"' || RPAD('x', 60, 'x') || '\"}' \
               FROM dual CONNECT BY LEVEL <= :1",
            &[&(rows as i64)],
        )
        .unwrap();
    filler.commit().unwrap();
    println!("filled {rows} rows in {:.1} s", filled.elapsed().as_secs_f64());

    let reader = tokio::spawn(async move {
        let mut seen = vec![false; rows as usize];
        let (mut count, mut first) = (0u64, None);
        while count < rows {
            match tokio::time::timeout(Duration::from_secs(60), ws.next())
                .await
                .expect("messages keep coming")
            {
                Some(Ok(Message::Text(t))) => {
                    let f: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if let Some(n) = f["data"]["n"].as_u64().filter(|n| (1..=rows).contains(n)) {
                        first.get_or_insert_with(Instant::now);
                        if !std::mem::replace(&mut seen[n as usize - 1], true) {
                            count += 1;
                        }
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("backlog socket ended after {count} of {rows} rows: {other:?}"),
            }
        }
        (first.unwrap(), Instant::now())
    });
    let released = Instant::now();
    lock.close().expect("log off, releasing the drain lock");
    let (first, last) = reader.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = filler
            .query_row_as("SELECT COUNT(*) FROM orapush_outbox WHERE channel = 'backlog'", &[])
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} backlog rows are still in the outbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = last.duration_since(released).as_secs_f64();
    println!("\n## Oracle outbox backlog drained to a subscriber (default configuration)\n");
    println!(
        "- {rows} rows: {:.0} rows/s ({total:.1} s from the drain lock's release to the last row at the \
         subscriber; the standby took over and delivered the first row after {:.0} ms); the outbox ended empty",
        rows as f64 / total,
        first.duration_since(released).as_secs_f64() * 1000.0
    );
}

/// The `--target-ws` mode.
fn oracle_target(args: OracleArgs) {
    let (addr, path) = split_ws_url(&args.target_ws);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        if let Some(rows) = args.backlog {
            target_backlog(&args, &addr, &path, rows).await;
            return;
        }
        let (p50, p99, max, n) = target_latency(&args, &addr, &path).await;
        println!(
            "\n## Insert→browser through the Oracle outbox at {} rows/s ({n} rows, each its own transaction, default configuration)\n\n\
             - p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (target: p50 under 10 ms)",
            args.rate
        );
        match &args.system_password {
            Some(password) => idle_calls(&args, password),
            None => println!("\n(idle calls not measured: no --system-password)"),
        }
    });
}
