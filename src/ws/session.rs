//! One WebSocket connection from upgrade to close.
//!
//! A single loop waits on: shutdown, the hub's "too slow" cancel, the
//! token's expiry, the connection's queue of frames from the hub, the
//! client's frames and a ping tick, taken in that order of precedence (a
//! biased select). The queue is polled on every turn; the other waits only
//! when one of them woke the task (see [`super::wake_group`]), so a
//! delivery costs the queue and the write, not six polls. The socket is
//! read in the same loop, so pongs and close replies flush; tungstenite
//! answers pings itself.
//!
//! While the loop waits with nothing of its own to flush, a plain TCP
//! session lends its socket to its queue, and the hub's frames are written
//! to it by the hub's writer without waking this task at all (see
//! [`crate::direct`]). Every turn of the loop takes the socket back before
//! anything else, so whatever woke the task may write or close it. What a
//! lent socket could not take comes back: first the end of the frame its
//! write stopped in (written before anything else), then the queue.
//!
//! The hub's frames come pre-encoded and shared (see [`crate::wire`]): the
//! session writes whatever is queued (up to [`WRITE_BATCH`] frames) from
//! those bytes with vectored writes, so a burst costs one system call per
//! batch (a `sendmsg` straight on a plain TCP socket while it takes them,
//! see [`super::upgrade`]; tokio's writer once the send buffer is full,
//! and always over TLS) and, on plain TCP, no copy and no write buffer of
//! its own. Its own frames (replies,
//! replays, pings, close) go through tungstenite and are flushed at once;
//! the one thing tungstenite may still hold, the pong it answers a client's
//! ping with, is flushed before the next batch, so frames never interleave. Most writes complete on
//! their first poll; a write the socket does not take at once is bounded by
//! `server.write_timeout_ms` and abandoned if the hub cancels the
//! connection, so a peer that stopped reading cannot pin this task. A frame
//! left half-written by a cancel (the hub's, or the end of the shutdown
//! flush), or by a lent write, is finished before the close frame; after a failed or timed-out
//! write, of either kind, nothing more is written. Raw frames are only
//! ever written from the loop, before any close frame.
//!
//! Limits per connection: `server.max_subscriptions_per_connection`
//! (refused with an error frame), `server.max_frames_per_second` (a token
//! bucket; exceeding it closes with 1008), the token's `exp` (closes with
//! 4001), and RFC 6455 violations (1002, 1007, 1009).

use std::collections::HashSet;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message as WsMessage, Utf8Bytes};

use super::protocol::{self, close, ClientFrame, ProtocolError};
use super::upgrade::Socket;
use super::wake_group::{Due, WakeGroup};
use crate::auth::{now_unix, Access, Identity};
use crate::broker::SharedBroker;
use crate::hub::{AlreadySubscribed, ConnId, Hub, Outgoing, Subscriber};
use crate::message::validate_channel;
use crate::metrics::Metrics;
use crate::queue::{frame_queue, QueueReceiver, Wire};

/// Frames written per flush at most.
const WRITE_BATCH: usize = 64;

/// Fixed per-connection limits, from the configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub ping_interval: Duration,
    pub client_timeout: Duration,
    pub write_timeout: Duration,
    pub queue_size: usize,
    pub shutdown_flush: Duration,
    pub max_subscriptions: usize,
    pub frames_per_second: u32,
}

/// Which endpoint the connection came in on.
#[derive(Debug, Clone)]
pub enum Mode {
    /// `/ws`: the orapush protocol, with the `?channel=` subscriptions.
    Protocol { auto_subscribe: Vec<String> },
    /// `/`: the seed server's protocol: bare `data` frames, client frames ignored.
    Legacy,
}

/// Everything a session needs from the process.
pub struct SessionContext {
    pub hub: Hub,
    /// The shared broker (Redis), when the hub does not number itself.
    pub broker: Option<SharedBroker>,
    pub metrics: Metrics,
    pub access: Access,
    pub config: Arc<SessionConfig>,
    pub shutdown: CancellationToken,
}

enum WriteEnd {
    Written,
    Failed,
    /// The hub cancelled the connection (its queue overflowed).
    Kicked,
    /// The shutdown flush's deadline passed.
    OutOfTime,
}

/// The end of a frame a cancelled write left half-sent, and the frame's
/// receipt, held until the end is written too.
struct Torn {
    rest: Bytes,
    _receipt: Option<crate::hub::Receipt>,
}

/// How long a session closed for what the client did keeps reading for its
/// close reply.
const CLOSE_DRAIN: Duration = Duration::from_millis(250);

/// What woke the session's loop, in order of precedence.
enum Event {
    /// The end of a frame a write to the lent socket stopped in: it goes
    /// out before anything else.
    Rest(Outgoing),
    Shutdown,
    Kicked,
    Expired,
    /// The first frame queued by the hub.
    Queued(Outgoing),
    /// The client's next frame, its error, or the end of its stream.
    Incoming(Option<Result<WsMessage, tungstenite::Error>>),
    PingDue,
}

/// What the loop does after handling a client frame.
enum Next {
    Continue,
    Close(u16, &'static str),
    Gone,
}

struct Session {
    conn: ConnId,
    /// The client's address, for the logs.
    peer: SocketAddr,
    socket: Socket,
    /// The unwritten end of a frame a cancelled write left half-sent: it
    /// must go out before anything else, or the stream is corrupt.
    torn: Option<Torn>,
    /// A write failed or timed out: nothing more is written.
    broken: bool,
    /// tungstenite may hold bytes it has not written yet (the pong it
    /// answers a client's ping with): set when a ping is read, cleared once
    /// the next batch of the hub's frames, or a `send_now`, flushed it. The
    /// socket is lent only while it is clear.
    unflushed: bool,
    subscriber: Subscriber,
    channels: HashSet<String>,
    identity: Option<Identity>,
    ctx: Arc<SessionContext>,
    /// Token bucket for client frames: tokens left, and when last refilled.
    frame_tokens: f64,
    refilled: Instant,
}

/// Runs the connection until either side closes it.
pub async fn run(
    socket: Socket,
    conn: ConnId,
    peer: SocketAddr,
    mode: Mode,
    identity: Option<Identity>,
    ctx: Arc<SessionContext>,
) {
    ctx.metrics.connections.inc();
    let (tx, rx) = frame_queue(ctx.config.queue_size);
    let permits = match mode {
        Mode::Legacy => ctx.access.permits(identity.as_ref()).map(Arc::from),
        Mode::Protocol { .. } => None,
    };
    let user = identity.as_ref().and_then(|id| id.sub.as_deref()).map(|sub| ctx.access.user_key(sub));
    let subscriber = Subscriber { conn, tx, kick: CancellationToken::new(), user, permits, floor: 0 };
    let frame_tokens = f64::from(ctx.config.frames_per_second);
    let mut session = Session {
        conn,
        peer,
        socket,
        torn: None,
        broken: false,
        unflushed: false,
        subscriber,
        channels: HashSet::new(),
        identity,
        ctx: ctx.clone(),
        frame_tokens,
        refilled: Instant::now(),
    };
    session.serve(mode, rx).await;
    ctx.hub.remove_connection(conn, session.channels.iter().map(String::as_str));
    ctx.metrics.connections.dec();
}

/// When a token stops being valid, as a timer deadline (far away without one).
fn expiry_deadline(identity: Option<&Identity>) -> Instant {
    match identity {
        Some(id) => Instant::now() + Duration::from_secs(id.expires_at.saturating_sub(now_unix())),
        None => Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600),
    }
}

impl Session {
    async fn serve(&mut self, mode: Mode, mut rx: QueueReceiver<Outgoing>) {
        let legacy = matches!(mode, Mode::Legacy);
        match mode {
            Mode::Legacy => {
                self.ctx.hub.add_legacy(self.subscriber.clone());
                if let Some(node) = self.ctx.broker.as_ref().and_then(SharedBroker::node) {
                    node.legacy_wanted(true).await;
                }
            }
            Mode::Protocol { auto_subscribe } => {
                for channel in auto_subscribe {
                    let frame = ClientFrame::Subscribe { channel, since: None };
                    if !matches!(Box::pin(self.answer(Ok(frame))).await, Next::Continue) {
                        return;
                    }
                }
            }
        }
        let config = self.ctx.config.clone();
        // Both waits are registered once, not on every turn of the loop: the
        // shutdown token is shared by every session, so re-registering on
        // each message would make all of them contend for its lock.
        let shutdown_token = self.ctx.shutdown.clone();
        let kick_token = self.subscriber.kick.clone();
        let shutdown = shutdown_token.cancelled();
        let kicked = kick_token.cancelled();
        let expiry = tokio::time::sleep_until(expiry_deadline(self.identity.as_ref()));
        tokio::pin!(shutdown, kicked, expiry);
        let mut ping = tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();

        // The queue is polled with the task's own waker, everything else
        // with the group's, and only when it woke the task (see `wake_group`).
        let mut group = WakeGroup::new(&rx);
        // A plain TCP socket is lent to the queue while the task waits with
        // nothing to flush, so the hub's frames are written to it without
        // a turn of this task (see `crate::direct`).
        let lendable = self.socket.plain_fd();
        let close_with = loop {
            let event = std::future::poll_fn(|cx| {
                // Whatever woke the task may write: the socket comes back
                // first, and the end of a frame its last lent write stopped
                // in goes out before anything else.
                if let Some(rest) = rx.reclaim() {
                    return Poll::Ready(Event::Rest(rest));
                }
                let due = group.due(&mut rx, cx);
                let others = &mut Context::from_waker(group.waker());
                // In order of precedence, as a biased select.
                let event = 'ready: {
                    if due == Due::All {
                        if shutdown.as_mut().poll(others).is_ready() {
                            break 'ready Event::Shutdown;
                        }
                        if kicked.as_mut().poll(others).is_ready() {
                            break 'ready Event::Kicked;
                        }
                        if expiry.as_mut().poll(others).is_ready() {
                            break 'ready Event::Expired;
                        }
                    }
                    if let Poll::Ready(first) = rx.poll_recv(cx) {
                        // Those before the queue still wait; those after
                        // it were not polled if they were due.
                        if due != Due::Nothing {
                            group.poll_after_queue_next();
                        }
                        return Poll::Ready(Event::Queued(first));
                    }
                    if due != Due::Nothing {
                        if let Poll::Ready(incoming) = self.socket.stream.poll_next_unpin(others) {
                            break 'ready Event::Incoming(incoming);
                        }
                        if ping.poll_tick(others).is_ready() {
                            break 'ready Event::PingDue;
                        }
                    }
                    // Every wait is registered: the queue with the task's
                    // waker, the others with the group's.
                    let writer_runs = self.ctx.hub.writes_lent_sockets();
                    if let Some(fd) = lendable.filter(|_| writer_runs && !self.unflushed && !self.broken) {
                        // SAFETY: the socket stays open and unwritten until
                        // the next turn reclaims it (every path that writes
                        // or closes it starts with a turn), or until `rx` is
                        // dropped, which happens before the socket is
                        // (`rx` lives in this call; the socket in the session).
                        unsafe { rx.lend(fd) };
                    }
                    return Poll::Pending;
                };
                // One of the group's waits completed (or came before one
                // that did, unpolled): all of them again on the next turn.
                group.poll_all_next();
                Poll::Ready(event)
            })
            .await;
            // tungstenite answers a ping by queueing a pong, which its next
            // read or flush writes: until then it may hold bytes. (Its
            // other writes are `send_now`'s, which flush, or the close's.)
            self.unflushed |= matches!(event, Event::Incoming(Some(Ok(WsMessage::Ping(_)))));
            let started = matches!(event, Event::Rest(_));
            match event {
                Event::Shutdown => {
                    Box::pin(self.flush_queue(&mut rx)).await;
                    break Some((close::GOING_AWAY, "server shutting down"));
                }
                Event::Kicked => break Some((close::TRY_AGAIN_LATER, "too slow: message queue full")),
                Event::Expired => {
                    let e =
                        ProtocolError::new("token_expired", "the token expired; reconnect with a fresh one");
                    let _ = Box::pin(self.send_now(vec![WsMessage::Text(protocol::error(&e).into())])).await;
                    break Some((close::TOKEN_EXPIRED, "token expired"));
                }
                // Boxed: the write is live only while frames go out, and an
                // idle connection should not carry its state.
                Event::Rest(first) | Event::Queued(first) => {
                    match Box::pin(self.write_queued(first, started, &mut rx, None)).await {
                        WriteEnd::Written => {}
                        WriteEnd::Failed | WriteEnd::OutOfTime => break None,
                        WriteEnd::Kicked => {
                            break Some((close::TRY_AGAIN_LATER, "too slow: message queue full"))
                        }
                    }
                }
                Event::Incoming(incoming) => {
                    last_heard = Instant::now();
                    let message = match incoming {
                        None => break None,
                        Some(Err(e)) => break read_error_close(e),
                        Some(Ok(message)) => message,
                    };
                    let next = match message {
                        WsMessage::Close(_) => Next::Gone,
                        // (Raw frames are only ever sent, never read.)
                        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => Next::Continue,
                        _ if !self.take_frame_token() => {
                            self.ctx.metrics.limit_hit("frame_rate");
                            let e = ProtocolError::new(
                                "rate_limited",
                                "more than server.max_frames_per_second frames",
                            );
                            let _ =
                                Box::pin(self.send_now(vec![WsMessage::Text(protocol::error(&e).into())]))
                                    .await;
                            Next::Close(close::POLICY, "too many frames")
                        }
                        _ if legacy => Next::Continue,
                        WsMessage::Text(text) => {
                            Box::pin(self.answer(protocol::parse_client_frame(&text))).await
                        }
                        WsMessage::Binary(_) => {
                            let refusal =
                                ProtocolError::bad_request("binary frames are not supported; send JSON text");
                            Box::pin(self.answer(Err(refusal))).await
                        }
                    };
                    match next {
                        Next::Continue => {}
                        Next::Gone => break None,
                        Next::Close(code, reason) => break Some((code, reason)),
                    }
                    // A new token moves the expiry.
                    expiry.as_mut().reset(expiry_deadline(self.identity.as_ref()));
                }
                Event::PingDue => {
                    if last_heard.elapsed() > config.client_timeout {
                        break Some((
                            close::IDLE_TIMEOUT,
                            "no frame or pong within server.client_timeout_ms",
                        ));
                    }
                    if !Box::pin(self.send_now(vec![WsMessage::Ping(Default::default())])).await {
                        break None;
                    }
                }
            }
        };
        if let Some((code, reason)) = close_with {
            self.close(code, reason).await;
        }
        if !self.broken {
            let _ = tokio::time::timeout(config.write_timeout, self.socket.stream.close(None)).await;
        }
    }

    /// Sends the close frame (after the end of a half-written frame, if a
    /// cancel left one) and reads what the client still sends, up to its
    /// close reply.
    async fn close(&mut self, code: u16, reason: &'static str) {
        debug!(conn = self.conn, code, reason, "closing connection");
        let timeout = self.ctx.config.write_timeout;
        if let Some(torn) = self.torn.take() {
            let finish = async {
                self.socket.stream.get_mut().write_all(&torn.rest).await?;
                self.socket.stream.get_mut().flush().await
            };
            if !matches!(tokio::time::timeout(timeout, finish).await, Ok(Ok(()))) {
                self.broken = true;
            }
        }
        if self.broken {
            return;
        }
        let frame =
            WsMessage::Close(Some(CloseFrame { code: code.into(), reason: Utf8Bytes::from_static(reason) }));
        let _ = tokio::time::timeout(timeout, self.socket.stream.send(frame)).await;
        // Read (and drop) what the client still sends, up to its close
        // reply: a socket closed with unread bytes sends a reset, which
        // can destroy our error and close frames before the client reads
        // them (a flooding client would see 1006 instead of 1008).
        // (Not on shutdown: the process is going away and has its own deadline.)
        if code == close::GOING_AWAY {
            return;
        }
        let socket = &mut self.socket.stream;
        let drain = async {
            while let Some(Ok(message)) = socket.next().await {
                if matches!(message, WsMessage::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_DRAIN.min(timeout), drain).await;
    }

    /// One token per client data frame; refills at `max_frames_per_second`.
    fn take_frame_token(&mut self) -> bool {
        let rate = f64::from(self.ctx.config.frames_per_second);
        let now = Instant::now();
        self.frame_tokens =
            (self.frame_tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate);
        self.refilled = now;
        if self.frame_tokens >= 1.0 {
            self.frame_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Writes `first` and whatever else is queued (up to [`WRITE_BATCH`]
    /// frames) from their shared bytes, giving up at `deadline` if one is
    /// set (the shutdown flush). `first` is `started` when it is the end of
    /// a frame a lent write stopped in: cut short, it is finished before
    /// the close even if none of it went out. The receipts are released
    /// only once the socket has taken every byte.
    async fn write_queued(
        &mut self,
        first: Outgoing,
        started: bool,
        rx: &mut QueueReceiver<Outgoing>,
        deadline: Option<Instant>,
    ) -> WriteEnd {
        // A write that the socket takes at once spends no budget in tokio
        // (it bypasses tokio's writer): spend one unit per batch here, so a
        // session whose queue the hub keeps refilling still lets the
        // worker's other tasks run (tokio yields once the budget is gone).
        // A lent socket's rest must go out first: the socket is lent only
        // while tungstenite holds nothing, and nothing was written since.
        debug_assert!(!started || !self.unflushed, "tungstenite bytes before a lent write's rest");
        tokio::task::coop::consume_budget().await;
        // Sized by what is queued (`take_into` reserves): a lone frame, the
        // common case between bursts, costs a small allocation.
        let mut batch = vec![first];
        rx.take_into(&mut batch, WRITE_BATCH - 1);
        let timeout = self.ctx.config.write_timeout;
        let conn = self.conn;
        let kick = &self.subscriber.kick;
        let mut written = 0;
        let result = {
            let write = write_frames(&mut self.socket, &mut self.unflushed, &batch, &mut written);
            tokio::pin!(write);
            let first_poll = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
            match first_poll {
                Poll::Ready(result) => Ok(result),
                Poll::Pending => {
                    // The socket's send buffer is full: the client reads
                    // slower than the hub sends.
                    self.ctx.metrics.send_buffer_full.inc();
                    let out_of_time = async {
                        match deadline {
                            Some(deadline) => tokio::time::sleep_until(deadline).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        _ = kick.cancelled() => Err(WriteEnd::Kicked),
                        _ = out_of_time => Err(WriteEnd::OutOfTime),
                        result = tokio::time::timeout(timeout, write) => result.map_err(|_| WriteEnd::Failed),
                    }
                }
            }
        };
        match result {
            Ok(Ok(())) => WriteEnd::Written,
            Ok(Err(e)) => {
                debug!(conn, error = %e, "write failed");
                self.broken = true;
                WriteEnd::Failed
            }
            Err(end @ (WriteEnd::Kicked | WriteEnd::OutOfTime)) => {
                self.torn = torn_rest(batch, written, started);
                end
            }
            Err(_) => {
                debug!(conn, "write timed out");
                self.ctx.metrics.limit_hit("write_timeout");
                self.broken = true;
                WriteEnd::Failed
            }
        }
    }

    /// On shutdown: write what the hub already queued, within the flush
    /// budget (a frame half-written when it runs out is finished by the
    /// close, like a kicked one).
    async fn flush_queue(&mut self, rx: &mut QueueReceiver<Outgoing>) {
        let deadline = Instant::now() + self.ctx.config.shutdown_flush;
        while let Some(first) = rx.try_recv() {
            if Instant::now() >= deadline
                || !matches!(self.write_queued(first, false, rx, Some(deadline)).await, WriteEnd::Written)
            {
                return;
            }
        }
    }

    fn refuse(code: &'static str, message: String) -> Vec<Utf8Bytes> {
        vec![protocol::error(&ProtocolError::new(code, message)).into()]
    }

    fn refuse_channel(code: &'static str, channel: &str, message: String) -> Vec<Utf8Bytes> {
        vec![protocol::error(&ProtocolError::new(code, message).on_channel(channel)).into()]
    }

    /// Acts on a client frame and writes the answer.
    async fn answer(&mut self, frame: Result<ClientFrame, ProtocolError>) -> Next {
        let mut next = Next::Continue;
        let replies = match frame {
            Err(e) => vec![protocol::error(&e).into()],
            Ok(ClientFrame::Ping) => vec![protocol::pong().into()],
            Ok(ClientFrame::Auth { token }) => {
                let (replies, outcome) = self.authenticate(&token);
                next = outcome;
                replies
            }
            Ok(ClientFrame::Unsubscribe { channel }) => {
                if self.channels.remove(&channel) {
                    self.ctx.hub.unsubscribe(&channel, self.conn);
                    vec![protocol::unsubscribed(&channel).into()]
                } else {
                    Self::refuse_channel("not_subscribed", &channel, format!("not subscribed to {channel:?}"))
                }
            }
            Ok(ClientFrame::Subscribe { channel, since }) => self.subscribe(channel, since).await,
        };
        if !self.send_now(replies.into_iter().map(WsMessage::Text).collect()).await {
            return Next::Gone;
        }
        next
    }

    /// Every way to subscribe (frame, `?channel=`) comes here, so one
    /// channel rule applies, with one error.
    async fn subscribe(&mut self, channel: String, since: Option<crate::hub::Position>) -> Vec<Utf8Bytes> {
        if let Err(e) = validate_channel(&channel) {
            return Self::refuse_channel("bad_request", &channel, e.to_string());
        }
        if !self.ctx.access.may_subscribe(self.identity.as_ref(), &channel) {
            return Self::refuse_channel(
                "forbidden",
                &channel,
                format!("not allowed to subscribe to {channel:?}"),
            );
        }
        if self.channels.len() >= self.ctx.config.max_subscriptions && !self.channels.contains(&channel) {
            self.ctx.metrics.limit_hit("subscriptions");
            return Self::refuse_channel(
                "limit",
                &channel,
                format!("at most {} subscriptions per connection", self.ctx.config.max_subscriptions),
            );
        }
        let subscribed = match &self.ctx.broker {
            None => self.ctx.hub.subscribe(&channel, self.subscriber.clone(), since.as_ref()),
            Some(broker) => self.subscribe_remote(broker.clone(), &channel, since.as_ref()).await,
        };
        match subscribed {
            Ok(subscribed) => {
                let mut replies: Vec<Utf8Bytes> = Vec::with_capacity(1 + subscribed.replay.len());
                replies.push(protocol::subscribed(&channel, &subscribed).into());
                replies.extend(subscribed.replay);
                self.channels.insert(channel);
                replies
            }
            Err(AlreadySubscribed) => Self::refuse_channel(
                "already_subscribed",
                &channel,
                format!("already subscribed to {channel:?}"),
            ),
        }
    }

    /// Subscribing when Redis numbers the channel: listen to it first, then
    /// read its history while live frames are buffered, then join (see
    /// `Hub::finish_remote_subscribe`). Without Redis the subscription starts
    /// with `recovered: false` and catches up once Redis is back.
    async fn subscribe_remote(
        &mut self,
        broker: SharedBroker,
        channel: &str,
        since: Option<&crate::hub::Position>,
    ) -> Result<crate::hub::Subscribed, AlreadySubscribed> {
        // Registered first, so the node's reconcile never releases the
        // channel between the SUBSCRIBE and the registration.
        if !self.ctx.hub.start_remote_subscribe(channel, &self.subscriber) {
            return Err(AlreadySubscribed);
        }
        let node = broker.node();
        let listening = match node {
            Some(node) => node.want(channel).await,
            None => false,
        };
        let history = match (listening, node) {
            (true, Some(node)) => node.history(channel, since).await,
            _ => None,
        };
        Ok(self.ctx.hub.finish_remote_subscribe(channel, self.subscriber.clone(), history))
    }

    /// An `auth` frame: a first token, or a fresh one for the same user.
    fn authenticate(&mut self, token: &str) -> (Vec<Utf8Bytes>, Next) {
        if !self.ctx.access.enabled() {
            // Nothing to protect: say so, but keep a client that sends
            // tokens anyway (orapush.js with getToken) connected.
            let why = "tokens are not checked here: auth.mode is \"none\"".to_string();
            return (Self::refuse("bad_request", why), Next::Continue);
        }
        let identity = match self.ctx.access.verify(token) {
            Ok(identity) => identity,
            Err(e) => {
                self.ctx.metrics.limit_hit("bad_token");
                self.ctx.access.log_refusal(self.peer, &e);
                return (
                    Self::refuse("unauthorized", e.to_string()),
                    Next::Close(close::POLICY, "bad token"),
                );
            }
        };
        if let Some(current) = &self.identity {
            let key = |id: &Identity| id.sub.as_deref().map(|sub| self.ctx.access.user_key(sub));
            if key(current) != key(&identity) {
                let why = "a connection's user cannot change; reconnect instead".to_string();
                return (Self::refuse("unauthorized", why), Next::Close(close::POLICY, "user changed"));
            }
        }
        let mut replies = vec![protocol::authenticated(identity.sub.as_deref(), identity.expires_at).into()];
        // Subscriptions the new token no longer allows end here.
        let revoked: Vec<String> = self
            .channels
            .iter()
            .filter(|c| !self.ctx.access.may_subscribe(Some(&identity), c))
            .cloned()
            .collect();
        for channel in revoked {
            self.channels.remove(&channel);
            self.ctx.hub.unsubscribe(&channel, self.conn);
            replies.push(protocol::unsubscribed(&channel).into());
        }
        let user: Option<Arc<str>> = identity.sub.as_deref().map(|sub| self.ctx.access.user_key(sub));
        if self.subscriber.user != user {
            self.subscriber.user = user.clone();
            self.ctx.hub.set_user(self.conn, self.channels.iter().map(String::as_str), user);
        }
        self.identity = Some(identity);
        (replies, Next::Continue)
    }

    /// Writes frames directly (ahead of the queue), bounded by the write timeout.
    /// A write that fails or times out leaves the socket broken: nothing
    /// more is written to it.
    async fn send_now(&mut self, frames: Vec<WsMessage>) -> bool {
        let socket = &mut self.socket.stream;
        let write = async move {
            for frame in frames {
                socket.feed(frame).await?;
            }
            socket.flush().await
        };
        let written = matches!(tokio::time::timeout(self.ctx.config.write_timeout, write).await, Ok(Ok(())));
        self.broken |= !written;
        // Flushed: tungstenite holds nothing more.
        self.unflushed &= !written;
        written
    }
}

/// Writes a batch of pre-encoded frames: first whatever tungstenite may
/// still hold (a pong: when `unflushed`), then the
/// frames' shared bytes with vectored writes: straight to a plain TCP
/// socket while it takes them, through the stream's writer (which waits
/// for room) once it does not, and always over TLS. `written` counts the
/// batch's bytes the socket took, so a cancelled write knows where it
/// stopped.
async fn write_frames(
    socket: &mut Socket,
    unflushed: &mut bool,
    batch: &[Outgoing],
    written: &mut usize,
) -> io::Result<()> {
    if *unflushed {
        socket.stream.flush().await.map_err(io::Error::other)?;
        *unflushed = false;
    }
    // A lone frame's slice lives on the stack; a batch's in a Vec.
    let (mut lone, mut slices);
    let mut unwritten: &mut [IoSlice] = match batch {
        [out] => {
            lone = [IoSlice::new(out.frame.bytes())];
            &mut lone
        }
        _ => {
            slices = batch.iter().map(|out| IoSlice::new(out.frame.bytes())).collect::<Vec<_>>();
            &mut slices
        }
    };
    while !unwritten.is_empty() {
        match socket.try_send_vectored(unwritten) {
            Some(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Some(Ok(n)) => {
                *written += n;
                IoSlice::advance_slices(&mut unwritten, n);
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Some(Err(e)) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            // The send buffer is full (or TLS): the writer waits for room.
            Some(Err(_)) | None => break,
        }
    }
    if unwritten.is_empty() {
        return Ok(());
    }
    let io = socket.stream.get_mut();
    while !unwritten.is_empty() {
        match io.write_vectored(unwritten).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => {
                *written += n;
                IoSlice::advance_slices(&mut unwritten, n);
            }
        }
    }
    io.flush().await
}

/// The unwritten end of the frame a write stopped inside, with its
/// receipt, if it stopped inside one (`written` bytes of `batch` went
/// out). The batch's first item is already inside a frame when
/// `first_started` (it is the end of one), so it is torn even if none of
/// it went out.
fn torn_rest(batch: Vec<Outgoing>, written: usize, first_started: bool) -> Option<Torn> {
    let mut start = 0;
    for (i, out) in batch.into_iter().enumerate() {
        let end = start + out.frame.len();
        if written < end {
            let started = written > start || (i == 0 && first_started);
            let rest = out.rest_after(written - start);
            return started.then(|| Torn { rest: rest.frame.bytes().clone(), _receipt: rest.receipt });
        }
        start = end;
    }
    None
}

/// The RFC 6455 close code for a failed read, if the peer is still there.
fn read_error_close(e: tungstenite::Error) -> Option<(u16, &'static str)> {
    match e {
        tungstenite::Error::Capacity(_) => Some((close::TOO_BIG, "frame exceeds server.max_message_bytes")),
        tungstenite::Error::Protocol(_) => Some((close::PROTOCOL_ERROR, "protocol error")),
        tungstenite::Error::Utf8(_) => Some((close::INVALID_DATA, "text frame is not UTF-8")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WireFrame;

    fn batch(texts: &[&str]) -> Vec<Outgoing> {
        texts.iter().map(|t| Outgoing { frame: WireFrame::text(t), receipt: None }).collect()
    }

    /// A write that stopped inside a frame leaves that frame's end to
    /// send; one that stopped between frames leaves nothing.
    #[test]
    fn the_torn_rest_is_the_end_of_the_frame_a_write_stopped_in() {
        let rest = |written| torn_rest(batch(&["abc", "defgh"]), written, false).map(|t| t.rest); // 5 and 7 bytes on the wire
        assert_eq!(rest(0), None);
        assert_eq!(rest(2).as_deref(), Some(&b"abc"[..]));
        assert_eq!(rest(4).as_deref(), Some(&b"c"[..]));
        assert_eq!(rest(5), None);
        assert_eq!(rest(6).as_deref(), Some(&WireFrame::text("defgh").bytes()[1..]));
        assert_eq!(rest(12), None);
        // The end of a frame a lent write stopped in is torn from its first byte.
        let started = |written| torn_rest(batch(&["abc", "defgh"]), written, true).map(|t| t.rest);
        assert_eq!(started(0).as_deref(), Some(&WireFrame::text("abc").bytes()[..]));
        assert_eq!(started(5), None);
        assert_eq!(started(6).as_deref(), Some(&WireFrame::text("defgh").bytes()[1..]));
    }
}
