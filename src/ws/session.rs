//! One WebSocket connection from upgrade to close.
//!
//! A single `select!` loop over: shutdown, the hub's "too slow" cancel, the
//! connection's queue of frames from the hub, the client's frames and a ping
//! tick. The read half is polled in the same loop, so pongs and close
//! replies flush; tungstenite answers pings itself.
//!
//! Writes batch whatever is queued (up to [`WRITE_BATCH`] frames) into one
//! flush. A write is bounded by `server.write_timeout_ms` and abandoned at
//! once if the hub cancels the connection, so a peer that stopped reading
//! cannot pin this task.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::protocol::{self, close, ClientFrame, ProtocolError};
use crate::hub::{AlreadySubscribed, ConnId, Hub, Outgoing, Subscriber};
use crate::metrics::Metrics;

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
    pub metrics: Metrics,
    pub config: Arc<SessionConfig>,
    pub shutdown: CancellationToken,
}

enum WriteEnd {
    Written,
    Failed,
    Kicked,
}

struct Session {
    conn: ConnId,
    sink: SplitSink<WebSocket, WsMessage>,
    subscriber: Subscriber,
    channels: HashSet<String>,
    ctx: Arc<SessionContext>,
}

/// Runs the connection until either side closes it.
pub async fn run(socket: WebSocket, conn: ConnId, mode: Mode, ctx: Arc<SessionContext>) {
    ctx.metrics.connections.inc();
    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::channel(ctx.config.queue_size);
    let subscriber = Subscriber { conn, tx, kick: CancellationToken::new(), user: None };
    let mut session = Session { conn, sink, subscriber, channels: HashSet::new(), ctx: ctx.clone() };
    session.serve(mode, stream, rx).await;
    ctx.hub.remove_connection(conn, session.channels.iter().map(String::as_str));
    ctx.metrics.connections.dec();
}

impl Session {
    async fn serve(
        &mut self,
        mode: Mode,
        mut stream: SplitStream<WebSocket>,
        mut rx: mpsc::Receiver<Outgoing>,
    ) {
        let legacy = matches!(mode, Mode::Legacy);
        match mode {
            Mode::Legacy => self.ctx.hub.add_legacy(self.subscriber.clone()),
            Mode::Protocol { auto_subscribe } => {
                for channel in auto_subscribe {
                    let frame = ClientFrame::Subscribe { channel, since: None };
                    if !self.answer(Ok(frame)).await {
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
        tokio::pin!(shutdown, kicked);
        let mut ping = tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();

        let close_with = loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    self.flush_queue(&mut rx).await;
                    break Some((close::GOING_AWAY, "server shutting down"));
                }
                _ = &mut kicked => break Some((close::TRY_AGAIN_LATER, "too slow: message queue full")),
                Some(first) = rx.recv() => match self.write_queued(first, &mut rx).await {
                    WriteEnd::Written => {}
                    WriteEnd::Failed => break None,
                    WriteEnd::Kicked => break Some((close::TRY_AGAIN_LATER, "too slow: message queue full")),
                },
                incoming = stream.next() => {
                    last_heard = Instant::now();
                    match incoming {
                        None => break None,
                        Some(Err(e)) => {
                            if is_too_big(e) {
                                break Some((close::TOO_BIG, "frame exceeds server.max_message_bytes"));
                            }
                            break None;
                        }
                        Some(Ok(WsMessage::Close(_))) => break None,
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                        Some(Ok(_)) if legacy => {}
                        Some(Ok(WsMessage::Text(text))) => {
                            if !self.answer(protocol::parse_client_frame(&text)).await {
                                break None;
                            }
                        }
                        Some(Ok(WsMessage::Binary(_))) => {
                            let refusal = ProtocolError::bad_request("binary frames are not supported; send JSON text");
                            if !self.answer(Err(refusal)).await {
                                break None;
                            }
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > config.client_timeout {
                        break Some((close::IDLE_TIMEOUT, "no frame or pong within server.client_timeout_ms"));
                    }
                    if !self.send_now(vec![WsMessage::Ping(Default::default())]).await {
                        break None;
                    }
                }
            }
        };
        if let Some((code, reason)) = close_with {
            debug!(conn = self.conn, code, reason, "closing connection");
            let frame = WsMessage::Close(Some(CloseFrame { code, reason: reason.into() }));
            let _ = tokio::time::timeout(config.write_timeout, self.sink.send(frame)).await;
        }
        let _ = tokio::time::timeout(config.write_timeout, self.sink.close()).await;
    }

    /// Writes `first` and whatever else is queued, then flushes. The
    /// receipts are released only after the flush.
    ///
    /// Most writes complete on their first poll; only a write the socket
    /// does not accept at once gets the timeout and the "too slow" watch.
    async fn write_queued(&mut self, first: Outgoing, rx: &mut mpsc::Receiver<Outgoing>) -> WriteEnd {
        let timeout = self.ctx.config.write_timeout;
        let conn = self.conn;
        let kick = &self.subscriber.kick;
        let sink = &mut self.sink;
        let write = async move {
            let mut receipts = Vec::with_capacity(WRITE_BATCH);
            let mut next = Some(first);
            while let Some(out) = next.take() {
                sink.feed(WsMessage::Text(out.frame)).await?;
                receipts.push(out.receipt);
                if receipts.len() < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            sink.flush().await?;
            drop(receipts);
            Ok::<(), axum::Error>(())
        };
        tokio::pin!(write);
        let first_poll = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        let result = match first_poll {
            Poll::Ready(result) => Ok(result),
            Poll::Pending => tokio::select! {
                biased;
                _ = kick.cancelled() => return WriteEnd::Kicked,
                result = tokio::time::timeout(timeout, write) => result,
            },
        };
        match result {
            Ok(Ok(())) => WriteEnd::Written,
            Ok(Err(e)) => {
                debug!(conn, error = %e, "write failed");
                WriteEnd::Failed
            }
            Err(_) => {
                debug!(conn, "write timed out");
                WriteEnd::Failed
            }
        }
    }

    /// On shutdown: write what the hub already queued, within the flush budget.
    async fn flush_queue(&mut self, rx: &mut mpsc::Receiver<Outgoing>) {
        let deadline = Instant::now() + self.ctx.config.shutdown_flush;
        while let Ok(first) = rx.try_recv() {
            let write = self.write_queued(first, rx);
            match tokio::time::timeout_at(deadline, write).await {
                Ok(WriteEnd::Written) => {}
                _ => return,
            }
        }
    }

    /// Acts on a client frame and writes the answer; false when the socket failed.
    async fn answer(&mut self, frame: Result<ClientFrame, ProtocolError>) -> bool {
        let replies = match frame {
            Err(e) => vec![protocol::error(&e).into()],
            Ok(ClientFrame::Ping) => vec![protocol::pong().into()],
            Ok(ClientFrame::Unsubscribe { channel }) => {
                if self.channels.remove(&channel) {
                    self.ctx.hub.unsubscribe(&channel, self.conn);
                    vec![protocol::unsubscribed(&channel).into()]
                } else {
                    let e = ProtocolError::new("not_subscribed", format!("not subscribed to {channel:?}"));
                    vec![protocol::error(&e).into()]
                }
            }
            Ok(ClientFrame::Subscribe { channel, since }) => {
                match self.ctx.hub.subscribe(&channel, self.subscriber.clone(), since.as_ref()) {
                    Ok(subscribed) => {
                        let mut replies: Vec<Utf8Bytes> = Vec::with_capacity(1 + subscribed.replay.len());
                        replies.push(protocol::subscribed(&channel, &subscribed).into());
                        replies.extend(subscribed.replay);
                        self.channels.insert(channel);
                        replies
                    }
                    Err(AlreadySubscribed) => {
                        let e = ProtocolError::new(
                            "already_subscribed",
                            format!("already subscribed to {channel:?}"),
                        );
                        vec![protocol::error(&e).into()]
                    }
                }
            }
        };
        self.send_now(replies.into_iter().map(WsMessage::Text).collect()).await
    }

    /// Writes frames directly (ahead of the queue), bounded by the write timeout.
    async fn send_now(&mut self, frames: Vec<WsMessage>) -> bool {
        let sink = &mut self.sink;
        let write = async move {
            for frame in frames {
                sink.feed(frame).await?;
            }
            sink.flush().await
        };
        matches!(tokio::time::timeout(self.ctx.config.write_timeout, write).await, Ok(Ok(())))
    }
}

/// True when the read failed because a frame or message was over the limit.
fn is_too_big(e: axum::Error) -> bool {
    let inner = e.into_inner();
    matches!(inner.downcast_ref::<tungstenite::Error>(), Some(tungstenite::Error::Capacity(_)))
}
