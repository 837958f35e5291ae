//! Fan-out latency and slow consumers: one message at a time to thousands
//! of subscribers, timed until the last of them has it, for orapush and the
//! node.js baselines; then orapush's readers with and without subscribers
//! that never read. The readers are read from one thread and one epoll set
//! ([`read_fanout`]), so the client costs the same for every server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    charts, cpu_micros, handshake, metric, open_raw_many, percentiles, pin, process_cpu_micros,
    source_socket, start_orapush_with, Args, FrameCounter, LossCounters, RssSampler, Server, StartServer,
    BODY_BYTES,
};

/// What one fan-out run measured.
struct Fanout {
    /// Per message: ms from its POST (or from when it fell due, if the
    /// server's late answer to the previous POST held it back) until the
    /// last reading subscriber had it.
    latencies: Vec<f64>,
    /// The rate the POSTs kept (below the schedule's when a server answers
    /// them late).
    posts_per_second: f64,
    /// POSTs that went out late because the previous one's answer was late.
    held_back: usize,
    /// The load client's CPU time per delivery, in µs (its own cost).
    client_us_per_delivery: f64,
    /// The server's CPU time per delivery, in µs.
    server_us_per_delivery: f64,
    /// Packets the kernel lost during the run and its TCP recoveries
    /// (system-wide; see [`LossCounters`]).
    losses: LossCounters,
}

/// What the fan-out readers' thread hands back.
struct ReadersDone {
    /// Per message: µs since the run's start when its last reader had it.
    done_at: Vec<Option<u64>>,
    /// Readers whose connection the server closed or broke.
    lost: usize,
    /// Kept open until the run's CPU time is read: closing is not delivering.
    sockets: Vec<mio::net::TcpStream>,
    /// Every delivery, when asked for: the message's index and µs since
    /// the run's start when the read that completed it returned.
    each_delivery: Vec<(u32, u32)>,
}

/// Reads every fan-out subscriber on this one thread, from one epoll set,
/// until each of the first `expected` messages (at most `capacity`; the
/// sender lowers it from `usize::MAX` once it knows) has reached every
/// reader, a reader is lost (the run then has no figure), or `stop` is set.
///
/// One tokio task per subscriber made the client the slowest part of the
/// run: each delivery woke a task and gave it a turn on the client's one
/// worker. This loop reads each ready socket (one `recv`, unless it fills
/// the buffer) and does nothing else, so more of the figure is the
/// server's. It is the same for every server under test.
fn read_fanout(
    streams: Vec<(std::net::TcpStream, FrameCounter)>,
    capacity: usize,
    expected: &AtomicUsize,
    record_each: bool,
    start: Instant,
    stop: &AtomicBool,
) -> ReadersDone {
    use std::io::{Read, Write};
    let mut poll = mio::Poll::new().expect("create the readers' epoll set");
    let mut readers: Vec<(mio::net::TcpStream, FrameCounter)> = streams
        .into_iter()
        .enumerate()
        .map(|(i, (stream, counter))| {
            let mut stream = mio::net::TcpStream::from_std(stream);
            poll.registry()
                .register(&mut stream, mio::Token(i), mio::Interest::READABLE)
                .expect("register a reader's socket");
            (stream, counter)
        })
        .collect();
    let reader_count = readers.len();
    let mut arrived = vec![0usize; capacity];
    let mut done_at = vec![None; capacity];
    let mut complete = 0;
    let mut lost = 0;
    let mut each_delivery = Vec::new();
    let mut events = mio::Events::with_capacity(1024);
    let mut buf = vec![0u8; 16 * 1024];
    while complete < expected.load(Ordering::SeqCst).min(capacity)
        && lost == 0
        && !stop.load(Ordering::SeqCst)
    {
        match poll.poll(&mut events, Some(Duration::from_millis(100))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("waiting on the readers' sockets: {e}"),
        }
        for event in &events {
            let (stream, counter) = &mut readers[event.token().0];
            // A close raises no further edge: read on to its end (0 or an
            // error) rather than stop at a short read, or a lost reader
            // would go unnoticed until the run's time limit.
            let closing = event.is_read_closed() || event.is_error();
            loop {
                let before = counter.count;
                let n = match stream.read(&mut buf) {
                    Ok(0) => {
                        lost += 1;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        lost += 1;
                        break;
                    }
                };
                counter.feed(&buf[..n]);
                // A pong the socket does not take at once waits for the
                // next read: it is a few bytes, and pings are seconds apart.
                if !counter.pongs.is_empty() {
                    if let Ok(written) = stream.write(&counter.pongs) {
                        counter.pongs.drain(..written);
                    }
                }
                // (Only when asked: the fan-out's client cost stays as it was.)
                let read_at = if record_each { start.elapsed().as_micros() as u32 } else { 0 };
                for k in before..counter.count.min(capacity) {
                    if record_each {
                        each_delivery.push((k as u32, read_at));
                    }
                    arrived[k] += 1;
                    if arrived[k] == reader_count {
                        done_at[k] = Some(start.elapsed().as_micros() as u64);
                        complete += 1;
                    }
                }
                // A short read emptied the socket; anything that arrives
                // later raises a new edge (tokio's readiness makes the same
                // use of a short read on Linux), so no second `recv` to
                // see WouldBlock.
                if n < buf.len() && !closing {
                    break;
                }
            }
        }
    }
    let sockets = readers.into_iter().map(|(stream, _)| stream).collect();
    ReadersDone { done_at, lost, sockets, each_delivery }
}

/// The fan-out readers' thread ([`read_fanout`]) on its way.
struct ReadersThread {
    expected: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    finished: tokio::sync::oneshot::Receiver<ReadersDone>,
    thread: std::thread::JoinHandle<()>,
}

impl ReadersThread {
    /// Starts reading `conns`, counting frames of `body_bytes`, for at most
    /// `capacity` messages (and keeping every delivery if `record_each`);
    /// times are µs since `start`.
    fn start(
        conns: Vec<(tokio::net::TcpStream, FrameCounter)>,
        body_bytes: usize,
        capacity: usize,
        record_each: bool,
        start: Instant,
    ) -> Self {
        let streams = conns
            .into_iter()
            .map(|(stream, mut counter)| {
                counter.body_bytes = body_bytes;
                (stream.into_std().expect("take a reader's socket from tokio"), counter)
            })
            .collect();
        let expected = Arc::new(AtomicUsize::new(usize::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let (finished_tx, finished) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("fanout-readers".into())
            .spawn({
                let (expected, stop) = (expected.clone(), stop.clone());
                move || {
                    let done = read_fanout(streams, capacity, &expected, record_each, start, &stop);
                    let _ = finished_tx.send(done);
                }
            })
            .expect("start the fan-out readers' thread");
        Self { expected, stop, finished, thread }
    }

    /// Waits (at most 120 s) until the first `messages` have reached every
    /// reader, or a reader is lost.
    async fn finish(mut self, messages: usize) -> ReadersDone {
        self.expected.store(messages, Ordering::SeqCst);
        let done = match tokio::time::timeout(Duration::from_secs(120), &mut self.finished).await {
            Ok(done) => done,
            Err(_) => {
                self.stop.store(true, Ordering::SeqCst);
                self.finished.await
            }
        }
        .expect("the fan-out readers' thread ends with a result");
        self.thread.join().expect("the fan-out readers' thread does not panic");
        done
    }
}

/// Sends one message at a time by `POST /` on a fixed schedule, and keeps
/// what each message's latency counts from: its POST, unless the answer to
/// the previous POST came after the message fell due, then from when it
/// fell due. seed-node and node-ws answer a POST only after handing it to
/// every socket, so a server that falls behind would otherwise hold back its
/// own next message, and its queue would never show in the figure
/// (coordinated omission). The client's own timer lag is not counted either
/// way.
struct Poster {
    http: reqwest::Client,
    url: String,
    body: String,
    period: Duration,
    start: Instant,
    /// Per message sent: µs since `start` that its latency counts from.
    counted_from: Vec<u64>,
    /// POSTs that went out late because the previous one's answer was late.
    held_back: usize,
    /// When the first message of the current schedule fell due.
    first_due: Instant,
    /// Messages sent on the current schedule.
    on_schedule: u32,
    last_post: Instant,
    previous_answer: Instant,
}

impl Poster {
    /// A poster of `body` to `port`'s `POST /`, `per_second` messages a
    /// second, counting from `start`; its schedule begins now.
    fn new(port: u16, body: String, per_second: u64, start: Instant) -> Self {
        let now = Instant::now();
        Self {
            http: reqwest::Client::new(),
            url: format!("http://127.0.0.1:{port}/"),
            body,
            period: Duration::from_micros(1_000_000 / per_second),
            start,
            counted_from: Vec::new(),
            held_back: 0,
            first_due: now,
            on_schedule: 0,
            last_post: now,
            previous_answer: now,
        }
    }

    /// Begins a new schedule now.
    fn restart_schedule(&mut self) {
        self.first_due = Instant::now();
        self.on_schedule = 0;
        self.previous_answer = self.first_due;
    }

    /// Sends the next message when it falls due; the number of clients the
    /// server says it sent it to.
    async fn post(&mut self) -> usize {
        let due = self.first_due + self.period * self.on_schedule;
        self.on_schedule += 1;
        tokio::time::sleep_until(due.into()).await;
        self.last_post = Instant::now();
        if self.previous_answer > due {
            self.held_back += 1;
            self.counted_from.push(due.duration_since(self.start).as_micros() as u64);
        } else {
            self.counted_from.push(self.last_post.duration_since(self.start).as_micros() as u64);
        }
        let reached = send_to_clients(&self.http, &self.url, self.body.clone()).await;
        self.previous_answer = Instant::now();
        reached
    }

    /// The rate the current schedule's POSTs kept.
    fn posts_per_second(&self) -> f64 {
        let spent = self.last_post.duration_since(self.first_due).as_secs_f64();
        (self.on_schedule.max(2) - 1) as f64 / spent.max(1e-6)
    }

    /// Posts small frames (which the readers do not count) until the server
    /// says it reaches exactly `clients` clients; `Err` after 30 s.
    async fn wait_for_clients(&self, clients: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reached = send_to_clients(&self.http, &self.url, "warmup".into()).await;
            if reached == clients {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the server still reached {reached} clients after 30 s, not {clients}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `POST /` of `body`; N from the seed-compatible answer "Send to N clients".
async fn send_to_clients(http: &reqwest::Client, url: &str, body: String) -> usize {
    let reply: serde_json::Value = http.post(url).body(body).send().await.unwrap().json().await.unwrap();
    let message = reply["message"].as_str().unwrap_or_default();
    message
        .strip_prefix("Send to ")
        .and_then(|rest| rest.strip_suffix(" clients"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("POST / answered {reply}, not \"Send to N clients\""))
}

/// A message of exactly `body_bytes` bytes, as the seed's page sends them.
fn padded_message(body_bytes: usize) -> String {
    let frame = |pad: &str| format!(r#"{{"message":"REFRESH","pad":"{pad}"}}"#);
    frame(&"x".repeat(body_bytes - frame("").len()))
}

/// Fan-out latency: `messages` messages of `body_bytes` bytes, one every
/// `1 / per_second` s, via `POST /` to `readers` subscribers on `/` that
/// count frames (see [`Poster`] for what a latency counts from).
async fn fanout(
    server: &Server,
    readers: usize,
    messages: usize,
    per_second: u64,
    body_bytes: usize,
) -> Result<Fanout, String> {
    let conns = open_raw_many(server.port, readers).await;
    let start = Instant::now();
    let readers_thread = ReadersThread::start(conns, body_bytes, messages, false, start);
    let mut poster = Poster::new(server.port, padded_message(body_bytes), per_second, start);
    poster.wait_for_clients(readers).await?;
    let cpu_before = cpu_micros();
    let server_cpu_before = process_cpu_micros(server.child.id());
    let losses_before = LossCounters::read();
    poster.restart_schedule();
    for _ in 0..messages {
        poster.post().await;
    }
    let ReadersDone { done_at, lost, sockets, .. } = readers_thread.finish(messages).await;
    let client_us = (cpu_micros() - cpu_before) as f64;
    let losses = LossCounters::read().since(losses_before);
    let server_us = (process_cpu_micros(server.child.id()) - server_cpu_before) as f64;
    let incomplete = done_at.iter().filter(|d| d.is_none()).count();
    if lost > 0 || incomplete > 0 {
        return Err(format!(
            "{lost} readers lost their connection, {incomplete} messages never reached every reader"
        ));
    }
    drop(sockets);
    Ok(Fanout {
        latencies: latencies_ms(&done_at, &poster.counted_from),
        posts_per_second: poster.posts_per_second(),
        held_back: poster.held_back,
        client_us_per_delivery: client_us / (readers * messages) as f64,
        server_us_per_delivery: server_us / (readers * messages) as f64,
        losses,
    })
}

/// Per message: ms from what its latency counts from until its last reader
/// had it.
fn latencies_ms(done_at: &[Option<u64>], counted_from: &[u64]) -> Vec<f64> {
    done_at
        .iter()
        .zip(counted_from)
        .map(|(done, from)| done.unwrap_or_default().saturating_sub(*from) as f64 / 1000.0)
        .collect()
}

/// Connects `n` subscribers on `/` that never read: a 4 KiB receive buffer,
/// so their sockets fill early. They come from 16 loopback addresses, like
/// the readers.
async fn connect_sleepers(port: u16, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut sleepers = Vec::with_capacity(n);
    for i in 0..n {
        let socket = source_socket(i);
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
        handshake::upgrade_raw(&mut stream, &format!("127.0.0.1:{port}"), "/").await;
        sleepers.push(stream);
    }
    sleepers
}

/// KiB of free memory the kernel has given back to the hypervisor so far
/// (free page reporting, as `/sys/module/page_reporting/parameters/reported_kib`
/// counts it on kernels that do), or `None`.
///
/// On such a machine memory a process or the kernel frees goes back to the
/// host, and the next use of it waits for the host to back it again. The
/// slow ones' socket buffers (up to 32 KiB each at orapush's default, and
/// bookkeeping) are freed when they close and taken anew in the next
/// phase. With 128 KiB each (the default before the eleventh session),
/// that cost about 75 ms of the server's core at the moment those buffers
/// filled on the tenth session's machine, which the section counts as
/// theirs.
fn reported_to_host_kib() -> Option<u64> {
    std::fs::read_to_string("/sys/module/page_reporting/parameters/reported_kib").ok()?.trim().parse().ok()
}

/// What the slow-consumer section measured on one orapush: the same
/// readers' latencies in phases without slow ones and in phases with them.
struct SlowConsumers {
    /// Per round, ms per message (see [`Poster`]): its phase without slow
    /// ones, its phase with them, and the latter until the server reached
    /// none of them (without the second after).
    rounds: Vec<[Vec<f64>; 3]>,
    /// Per phase with slow ones: messages sent until the server reached
    /// none of them any more.
    messages_until_gone: Vec<usize>,
    /// ms per message sent while the slow ones connected (counted on
    /// neither side; the first phase's left out).
    while_connecting: Vec<f64>,
    /// KiB of free memory this machine's kernel gave back to its host
    /// during the section, if it says (see [`reported_to_host_kib`]).
    reported_to_host_kib: Option<u64>,
    /// p50 and p99 in ms of every reader's every delivery (not only the
    /// last reader's), `[without, with]`.
    each_delivery_p50_p99: [(f64, f64); 2],
    /// The server's CPU time per reader delivery, in µs: `[without, with]`.
    server_us_per_delivery: [f64; 2],
    /// Slow ones the server closed with 1013, and by the write timeout.
    closed_1013: f64,
    closed_by_write_timeout: f64,
    /// The server's open connections at the end (the readers').
    connections_at_end: f64,
    peak_rss_kib: u64,
    /// The server's RSS after the first phase, and at the end.
    rss_after_warm_up_kib: u64,
    rss_at_end_kib: u64,
    /// The kernel's losses during the phases `[without, with]`.
    losses: [LossCounters; 2],
}

/// Slow consumers: `readers` subscribers read all along while phases
/// without slow ones alternate with phases in which `slow` more subscribers
/// are there and never read, `rounds` of each, all on one orapush, on one
/// unbroken schedule of messages.
///
/// Before a phase with slow ones, they connect; the messages sent until
/// the server reaches every one of them count on neither side (what is
/// measured is their being there, not their handshakes), and the first of
/// those goes out before they start. The phase then sends until the server
/// reaches none of them any more (it dropped each as too slow and is
/// closing it with 1013), and one second more. As soon as the server
/// reaches none of them, the bench closes their sockets, which hold unread
/// data, so the kernel resets them: orapush's own wait to write the close
/// frame to a full socket (up to `server.write_timeout_ms`) is not part of
/// the section. A phase
/// without sends as many messages as the phase with slow ones before it; a
/// first phase with slow ones, not counted, warms the server up and sets
/// the first length.
///
/// Alternating phases on one server and one schedule, rather than separate
/// runs, gives both sides the same machine, the same connections and the
/// same moments' disturbances: two separate runs without slow ones
/// differed by up to a third at p99 on the ninth session's machine. The
/// schedule never pauses: after a pause of half a second, the first ten
/// messages of any phase cost the server a third to a half more, and those
/// set the p99.
async fn slow_consumer_rounds(
    server: &Server,
    readers: usize,
    slow: usize,
    rounds: usize,
    per_second: u64,
    body_bytes: usize,
) -> Result<SlowConsumers, String> {
    let (pid, port) = (server.child.id(), server.port);
    let max_phase = 60 * per_second as usize;
    let conns = open_raw_many(port, readers).await;
    let start = Instant::now();
    // Each phase with slow ones sends at most `max_phase` while they
    // connect and `max_phase` more; each phase without, as many.
    let capacity = (4 * rounds + 2) * max_phase;
    let readers_thread = ReadersThread::start(conns, body_bytes, capacity, true, start);
    let mut poster = Poster::new(port, padded_message(body_bytes), per_second, start);
    poster.wait_for_clients(readers).await?;
    let rss = RssSampler::start(pid);
    let reported_before = reported_to_host_kib();
    poster.restart_schedule();

    // Per round, the messages of its phase without slow ones, of its phase
    // with them, and of the latter until the server reached none of them.
    let mut ranges: Vec<[std::ops::Range<usize>; 3]> = Vec::with_capacity(rounds);
    let mut cpu_us = [0u64; 2];
    let mut losses = [LossCounters::default(); 2];
    let mut messages_until_gone = Vec::with_capacity(rounds + 1);
    let mut connecting_ranges = Vec::with_capacity(rounds + 1);
    let mut rss_after_warm_up_kib = 0;
    let mut length = 0;
    for phase in 0..=2 * rounds {
        let with_slow = phase % 2 == 0;
        let mut sleepers = None;
        if with_slow {
            // The messages sent while they connect count on neither side:
            // what is measured is their being there, not their handshakes.
            // The first goes out before they start, so that the last
            // message of the phase before is written before any handshake.
            let connecting_from = poster.counted_from.len();
            poster.post().await;
            let mut connecting = Some(tokio::spawn(connect_sleepers(port, slow)));
            loop {
                let reached = poster.post().await;
                if let Some(done) = connecting.take_if(|c| c.is_finished()) {
                    sleepers = Some(done.await.map_err(|e| format!("connecting the slow ones: {e}"))?);
                }
                if sleepers.is_some() && reached == readers + slow {
                    break;
                }
                if poster.counted_from.len() - connecting_from >= max_phase {
                    return Err(format!("the server reached {reached} clients, not {}", readers + slow));
                }
            }
            connecting_ranges.push(connecting_from..poster.counted_from.len());
        }
        let cpu_before = process_cpu_micros(pid);
        let losses_before = LossCounters::read();
        let first = poster.counted_from.len();
        let mut gone_after = 0;
        if with_slow {
            let mut sent = 0;
            while gone_after == 0 || sent < gone_after + per_second as usize {
                let reached = poster.post().await;
                sent += 1;
                if reached < readers {
                    return Err(format!(
                        "message {sent} of a phase with slow ones reached only {reached} clients"
                    ));
                }
                if reached == readers && gone_after == 0 {
                    gone_after = sent;
                    // The server has dropped them and is closing them; their
                    // unread data makes the close a reset.
                    drop(sleepers.take());
                }
                if sent >= max_phase {
                    return Err(format!(
                        "{sent} messages in, the server still reached some of the slow ones"
                    ));
                }
            }
            messages_until_gone.push(gone_after);
            length = sent;
        } else {
            for k in 0..length {
                let reached = poster.post().await;
                if reached != readers {
                    return Err(format!(
                        "message {k} of a phase without slow ones reached {reached} clients"
                    ));
                }
            }
        }
        let sent = first..poster.counted_from.len();
        // The first phase (with slow ones) only warms up.
        if phase == 0 {
            rss_after_warm_up_kib = super::rss_kib(pid);
        } else {
            let side = usize::from(with_slow);
            cpu_us[side] += process_cpu_micros(pid) - cpu_before;
            losses[side] = losses[side].plus(LossCounters::read().since(losses_before));
            if with_slow {
                let round = ranges.last_mut().expect("a phase without slow ones came first");
                round[1] = sent.clone();
                round[2] = sent.start..sent.start + gone_after;
            } else {
                ranges.push([sent, 0..0, 0..0]);
            }
        }
    }
    let total = poster.counted_from.len();
    let ReadersDone { done_at, lost, sockets, each_delivery } = readers_thread.finish(total).await;
    let reported_to_host_kib = reported_to_host_kib().zip(reported_before).map(|(now, then)| now - then);
    let rss_at_end_kib = super::rss_kib(pid);
    let incomplete = done_at[..total].iter().filter(|d| d.is_none()).count();
    if lost > 0 || incomplete > 0 {
        return Err(format!(
            "{lost} readers lost their connection, {incomplete} messages never reached every reader"
        ));
    }
    let latencies = latencies_ms(&done_at[..total], &poster.counted_from);
    // Another reading of the target, beside the figure: every delivery's
    // own latency, not only the last reader's.
    let mut side_of = vec![None; total];
    for round in &ranges {
        for (side, range) in round[..2].iter().enumerate() {
            side_of[range.clone()].fill(Some(side));
        }
    }
    let mut each = [Vec::new(), Vec::new()];
    for (k, read_at) in each_delivery {
        if let Some(side) = side_of.get(k as usize).copied().flatten() {
            let from = poster.counted_from[k as usize];
            each[side].push(u64::from(read_at).saturating_sub(from) as f64 / 1000.0);
        }
    }
    let each_delivery_p50_p99 = each.map(|latencies| {
        let (p50, p99, _) = percentiles(latencies);
        (p50, p99)
    });
    let connections_at_end = metric(server.port, "orapush_connections ");
    drop(sockets);
    let deliveries =
        |side: usize| (readers * ranges.iter().map(|r| r[side].len()).sum::<usize>()).max(1) as f64;
    Ok(SlowConsumers {
        rounds: ranges.iter().map(|round| round.clone().map(|range| latencies[range].to_vec())).collect(),
        messages_until_gone,
        while_connecting: connecting_ranges
            .iter()
            .skip(1)
            .flat_map(|r| latencies[r.clone()].to_vec())
            .collect(),
        reported_to_host_kib,
        each_delivery_p50_p99,
        server_us_per_delivery: [cpu_us[0] as f64 / deliveries(0), cpu_us[1] as f64 / deliveries(1)],
        closed_1013: metric(server.port, "orapush_slow_consumers_disconnected_total"),
        closed_by_write_timeout: metric(server.port, r#"orapush_limits_hit_total{limit="write_timeout"}"#),
        connections_at_end,
        peak_rss_kib: rss.peak(),
        rss_after_warm_up_kib,
        rss_at_end_kib,
        losses,
    })
}

/// The slow-consumer section's queue: small enough that a subscriber that
/// never reads overflows it (1013) before its stalled write reaches
/// `server.write_timeout_ms` (10 s), which would close it too. At 20/s
/// about 8 messages fill a never-read socket's kernel buffers and 64 more
/// its queue: about 3.6 s.
const SLOW_RUN_QUEUE: usize = 64;

/// The slow-consumer section's message size: large enough that a socket that
/// is never read fills its kernel buffers (`server.socket_send_buffer_bytes`,
/// 16 KiB, which Linux doubles) within about 8 messages (up to
/// `tcp_wmem`'s 4 MiB with that key at 0, a thousand), so orapush's own
/// limits are what the section tests.
const SLOW_RUN_BODY_BYTES: usize = 4 * 1024;

/// Fan-out latency for every server at two sizes, then slow consumers
/// (orapush), pinned like the pinned broadcast.
pub async fn fanout_section(args: &Args, servers: &[(String, StartServer)]) {
    let sizes = if args.quick { vec![args.subscribers] } else { vec![args.subscribers, args.connections] };
    println!(
        "\n## Fan-out latency: one {BODY_BYTES}-byte message at a time, {}/s, {} messages, until the last subscriber has it, counted from its POST or, if held back by the previous POST's late answer, from when it fell due (pinned)\n",
        args.fanout_rate, args.fanout_messages
    );
    println!("| subscribers | server | p50 ms | p99 ms | max ms | POSTs/s kept; held back | server CPU µs per delivery | client CPU µs per delivery | loopback backlog drops / TCP loss probes / TCP RTOs |");
    println!("|---|---|---|---|---|---|---|---|---|");
    pin(true);
    let mut distributions = Vec::new();
    for &n in &sizes {
        let mut runs = Vec::new();
        for (name, start) in servers {
            let server = start();
            match fanout(&server, n, args.fanout_messages, args.fanout_rate, BODY_BYTES).await {
                Ok(run) => {
                    runs.push((name.clone(), run.latencies.clone()));
                    let (p50, p99, max) = percentiles(run.latencies);
                    println!(
                        "| {n} | {name} | {p50:.2} | {p99:.2} | {max:.1} | {:.1}; {} | {:.2} | {:.2} | {} |",
                        run.posts_per_second,
                        run.held_back,
                        run.server_us_per_delivery,
                        run.client_us_per_delivery,
                        run.losses
                    );
                }
                Err(why) => println!("| {n} | {name} | failed: {why} | | | | | | |"),
            }
        }
        distributions.push((n, runs));
    }
    println!();
    for (n, runs) in &distributions {
        charts::latency_distribution(
            &args.charts.join(format!("fanout-{n}.svg")),
            &format!("Fan-out: until the last of {n} subscribers has the message ({}/s)", args.fanout_rate),
            runs,
        );
    }

    let readers = args.subscribers - args.subscribers / 10;
    let slow = args.subscribers / 10;
    println!(
        "\n## Slow consumers: {readers} reading subscribers; phases without slow ones alternate with phases in which {slow} more are there and never read, {} of each (one orapush, messages of {SLOW_RUN_BODY_BYTES} bytes at {}/s, `hub.subscriber_queue_size` = {SLOW_RUN_QUEUE}, pinned)\n",
        args.slow_rounds, args.slow_rate
    );
    let queue = [("ORAPUSH__HUB__SUBSCRIBER_QUEUE_SIZE".to_string(), SLOW_RUN_QUEUE.to_string())];
    let server = start_orapush_with(&args.orapush, &queue);
    let run = match slow_consumer_rounds(
        &server,
        readers,
        slow,
        args.slow_rounds as usize,
        args.slow_rate,
        SLOW_RUN_BODY_BYTES,
    )
    .await
    {
        Ok(run) => run,
        Err(why) => {
            println!("- failed: {why}");
            pin(false);
            return;
        }
    };
    drop(server);
    pin(false);
    let pool = |side: usize, keep: &dyn Fn(usize) -> bool| -> Vec<f64> {
        run.rounds.iter().enumerate().filter(|(i, _)| keep(*i)).flat_map(|(_, r)| r[side].clone()).collect()
    };
    let (alone, with_slow) = (pool(0, &|_| true), pool(1, &|_| true));
    let p99_of = |latencies: &[f64]| percentiles(latencies.to_vec()).1;
    let round_p99s = |side: usize| {
        run.rounds.iter().map(|r| format!("{:.1}", p99_of(&r[side]))).collect::<Vec<_>>().join(", ")
    };
    for (side, name, latencies) in [(0, "without slow ones", &alone), (1, "with slow ones", &with_slow)] {
        let (p50, p99, max) = percentiles(latencies.clone());
        println!(
            "- {name}: {} messages; readers' p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms; server CPU {:.2} µs per reader delivery; loopback backlog drops / TCP loss probes / RTOs: {}; each phase's p99: {}",
            latencies.len(),
            run.server_us_per_delivery[side],
            run.losses[side],
            round_p99s(side)
        );
    }
    let (min_gone, max_gone) = (
        run.messages_until_gone.iter().min().copied().unwrap_or_default(),
        run.messages_until_gone.iter().max().copied().unwrap_or_default(),
    );
    println!(
        "- slow ones: {} connected in all, closed with 1013: {}, by the write timeout: {}; the server reached none of a phase's slow ones after {min_gone}–{max_gone} messages (the bench then closed their sockets); open at the end: {}; RSS after the first phase {:.1} MiB, at the end {:.1} MiB, peak {:.1} MiB",
        slow * run.messages_until_gone.len(),
        run.closed_1013,
        run.closed_by_write_timeout,
        run.connections_at_end,
        run.rss_after_warm_up_kib as f64 / 1024.0,
        run.rss_at_end_kib as f64 / 1024.0,
        run.peak_rss_kib as f64 / 1024.0,
    );
    if !run.while_connecting.is_empty() {
        let (p50, p99, max) = percentiles(run.while_connecting.clone());
        println!(
            "- while the slow ones connected (counted on neither side): {} messages; readers' p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms",
            run.while_connecting.len()
        );
    }
    if let Some(kib) = run.reported_to_host_kib {
        println!(
            "- free memory this machine's kernel gave back to its host during the section (free page reporting): {:.0} MiB",
            kib as f64 / 1024.0
        );
    }
    println!(
        "- the readers' p99 with slow ones is {:.1}% of their p99 without (target ≤ 110%; a phase with them runs from when every one is connected until a second after the server reached none)",
        100.0 * p99_of(&with_slow) / p99_of(&alone)
    );
    let while_there = pool(2, &|_| true);
    println!(
        "- until the server reached none of them (that second left out: {} messages): {:.1}%",
        while_there.len(),
        100.0 * p99_of(&while_there) / p99_of(&alone)
    );
    let [(each_p50_without, each_p99_without), (each_p50_with, each_p99_with)] = run.each_delivery_p50_p99;
    println!(
        "- another reading, not the figure: every reader's every delivery (not only the last reader's): p50 {each_p50_without:.2} ms, p99 {each_p99_without:.2} ms without slow ones; p50 {each_p50_with:.2} ms, p99 {each_p99_with:.2} ms with them: {:.1}%",
        100.0 * each_p99_with / each_p99_without
    );
    // The same comparison between two halves of the phases without slow
    // ones: how far the figure moves when nothing differs (half as many
    // messages a side as the figure's, so it moves somewhat more).
    let (even, odd) = (pool(0, &|i| i % 2 == 0), pool(0, &|i| i % 2 == 1));
    if !even.is_empty() && !odd.is_empty() {
        println!(
            "- the noise: the p99 of the odd rounds' phases without slow ones is {:.1}% of the even rounds'",
            100.0 * p99_of(&odd) / p99_of(&even)
        );
    }
    let slow_runs = [
        (format!("{readers} readers, {slow} slow ({} phases)", run.rounds.len()), with_slow),
        (format!("{readers} readers alone ({} phases)", run.rounds.len()), alone),
    ];
    charts::latency_distribution(
        &args.charts.join("slow-consumers.svg"),
        "Slow consumers: the reading subscribers' latency, with and without slow ones",
        &slow_runs,
    );
}
