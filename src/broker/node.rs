//! One node's link to Redis (`broker.kind = "redis"`): publishing batches,
//! listening to the channels this node has subscribers for, filling gaps,
//! recovering, surviving Redis outages, and reporting subscriber counts.
//!
//! - **Publishing** goes through [`RedisBroker::publish`]; nothing is
//!   delivered locally until it comes back from Redis, so every node (this
//!   one too) sees one order.
//! - **Listening.** One pub/sub connection, owned by [`listen`]. A channel
//!   is SUBSCRIBEd while it has a local subscriber ([`RedisNode::want`]
//!   waits for the SUBSCRIBE to take effect), and UNSUBSCRIBEd by the
//!   listener's reconcile (every report interval) once it has none. Legacy `/` sockets want every channel: the
//!   node PSUBSCRIBEs to all live channels while it has any.
//! - **No silent gap.** Frames reach the hub in offset order; when one
//!   arrives after a gap, the missing ones are read from the stream first.
//!   When the stream cannot fill it (trimmed, or Redis lost its data and the
//!   epoch changed), the channel's subscribers get `recovered: false`.
//! - **Outages.** Sockets stay open. The listener reconnects with capped
//!   backoff, subscribes again, and brings every channel up to date from its
//!   stream as above. Publishing fails meanwhile and the drainer keeps the
//!   rows in the outbox.
//! - **Reports.** Every `redis.report_interval_ms` the node writes its
//!   subscriber counts to `<prefix>:node:<id>` (expiring after three
//!   intervals); `POST /` answers "Send to N clients" with their sum, at
//!   most one interval old.
//!
//! Control messages to the listener go over a bounded channel (64); a
//! sender waits while it is full (subscribes are rare next to frames).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::redis::{
    decode_live, BrokerError, History, Keys, LiveFrame, Numbered, Publication, Published, RedisBroker,
};
use crate::config::{RedisSettings, SourceKind, UserCase};
use crate::hub::{Hub, Position, RemoteDelivery, RemoteFrame, RemoteHistory};
use crate::message::Message;
use crate::metrics::Metrics;

const CONTROL_QUEUE: usize = 64;

enum Control {
    Want(String, oneshot::Sender<bool>),
    /// Unsubscribe what no local subscriber wants any more, and retry the
    /// catch-ups that failed (sent by the reporter every interval).
    Reconcile,
    Legacy(bool),
}

/// A connection that lived this long was healthy: the next failure starts
/// again from the shortest backoff. One that dropped sooner keeps growing
/// it, so a Redis that accepts and then drops connections is not hammered.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(5);

/// This node's side of the Redis broker. Cheap to clone.
#[derive(Clone)]
pub struct RedisNode {
    inner: Arc<Inner>,
}

struct Inner {
    broker: RedisBroker,
    control: mpsc::Sender<Control>,
    hub: Hub,
    keys: Keys,
    node_id: String,
    /// The row-key prefix: the source kind, so two sources never share keys.
    source: &'static str,
    user_case: UserCase,
    connected: AtomicBool,
    metrics: Metrics,
    /// Channels whose catch-up from the stream failed (Redis answered an
    /// error): retried on the next reconcile, or by the next live frame.
    behind: std::sync::Mutex<HashSet<String>>,
}

impl RedisNode {
    /// Connects (the first connection may fail: the node then starts
    /// anyway, reports not ready, and keeps trying) and starts the listener
    /// and the reporter, which stop with `stop`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        settings: &RedisSettings,
        source: SourceKind,
        hub: Hub,
        history_size: usize,
        history_ttl: Duration,
        user_case: UserCase,
        metrics: Metrics,
        stop: CancellationToken,
    ) -> Result<Self, BrokerError> {
        let broker =
            RedisBroker::connect(settings.url.expose(), &settings.prefix, history_size, history_ttl).await?;
        let (control, requests) = mpsc::channel(CONTROL_QUEUE);
        let node = Self {
            inner: Arc::new(Inner {
                broker,
                control,
                hub,
                keys: Keys::new(&settings.prefix),
                node_id: format!("{:016x}", rand::random::<u64>()),
                source: source_key(source),
                user_case,
                connected: AtomicBool::new(false),
                metrics,
                behind: std::sync::Mutex::new(HashSet::new()),
            }),
        };
        let client = redis::Client::open(settings.url.expose())?;
        tokio::spawn(listen(node.clone(), client, requests, stop.clone()));
        tokio::spawn(report(node.clone(), Duration::from_millis(settings.report_interval_ms), stop));
        Ok(node)
    }

    /// True while the pub/sub connection is up.
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// Publishes a drained batch; Ok once Redis has every message.
    pub async fn publish_batch(&self, messages: &[Message]) -> Result<Published, BrokerError> {
        let publications: Vec<Publication<'_>> = messages
            .iter()
            .map(|m| Publication {
                message: m,
                row: Some(self.row_id(m)),
                target_key: m.target_user.as_deref().map(|u| self.inner.user_case.key(u)),
            })
            .collect();
        self.inner.broker.clone().publish(&publications).await
    }

    /// Forgets a published batch's rows once the outbox deleted them (see
    /// [`RedisBroker::forget`]). False when Redis could not be told: the
    /// caller tries again with the next batch (and a record nobody forgets
    /// is dropped by the script a day after it was written).
    pub async fn forget(&self, records: &[(String, String)]) -> bool {
        match self.inner.broker.clone().forget(records).await {
            Ok(()) => true,
            Err(e) => {
                debug!(error = %e, "could not forget a delivered batch's rows; trying again with the next batch");
                false
            }
        }
    }

    fn row_id(&self, message: &Message) -> String {
        format!("{}:{}", self.inner.source, message.id)
    }

    /// Publishes one message from HTTP (no source row).
    pub async fn publish_one(&self, message: &Message) -> Result<Numbered, BrokerError> {
        let publication = Publication {
            message,
            row: None,
            target_key: message.target_user.as_deref().map(|u| self.inner.user_case.key(u)),
        };
        let mut published = self.inner.broker.clone().publish(&[publication]).await?;
        published.numbers.pop().ok_or_else(|| BrokerError::Protocol("no reply".into()))
    }

    /// Listens to `channel` (returns once the SUBSCRIBE took effect, or
    /// false when Redis is down: the channel is listened to when it is back).
    pub async fn want(&self, channel: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.inner.control.send(Control::Want(channel.to_owned(), tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Legacy `/` sockets are (or are no longer) on this node.
    pub async fn legacy_wanted(&self, wanted: bool) {
        let _ = self.inner.control.send(Control::Legacy(wanted)).await;
    }

    /// The channel's history after `since` (None when Redis cannot be read).
    pub async fn history(&self, channel: &str, since: Option<&Position>) -> Option<RemoteHistory> {
        match self.inner.broker.clone().history(channel, since).await {
            Ok(h) => Some(remote_history(h)),
            Err(e) => {
                debug!(error = %e, channel, "could not read the channel's history");
                None
            }
        }
    }

    /// Subscribers of `channel` (plus legacy sockets, for `POST /`) on
    /// every node, from the nodes' last reports.
    pub async fn reach(&self, channel: &str, with_legacy: bool) -> Result<u64, BrokerError> {
        let mut conn = self.inner.broker.connection();
        let now = unix_ms();
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.nodes_key())
            .arg(now.saturating_sub(self.report_ttl_ms()))
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = ids.iter().map(|id| self.node_key(id)).collect();
        let reports: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut total = 0;
        for report in reports.into_iter().flatten() {
            let report: NodeReport = serde_json::from_str(&report).unwrap_or_default();
            total += report.channels.get(channel).copied().unwrap_or(0);
            if with_legacy {
                total += report.legacy;
            }
        }
        Ok(total)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.inner.keys.prefix())
    }

    fn node_key(&self, id: &str) -> String {
        format!("{}:node:{id}", self.inner.keys.prefix())
    }

    fn report_ttl_ms(&self) -> u64 {
        3 * REPORT_TTL_INTERVALS_MS.load(Ordering::Relaxed)
    }

    /// Hands a live message's frames to the hub in order (see
    /// [`Self::on_live_frame`]).
    async fn on_live(&self, channel: &str, payload: &[u8]) {
        let Some(frames) = decode_live(channel, payload) else {
            warn!(channel, "malformed message on a live channel; ignored");
            return;
        };
        for live in frames {
            self.on_live_frame(channel, live).await;
        }
    }

    /// Hands a live frame to the hub in order: a gap is filled from the
    /// stream first; a new epoch, or a gap the stream cannot fill, resets
    /// the channel's subscribers (`recovered: false`).
    async fn on_live_frame(&self, channel: &str, live: LiveFrame<'_>) {
        let data = extract_data(&live.frame);
        let frame = || RemoteFrame {
            channel,
            epoch: live.epoch,
            offset: live.offset,
            target_key: live.target_key,
            frame: &live.frame,
            data: data.as_deref(),
        };
        match self.inner.hub.deliver_remote(frame()) {
            RemoteDelivery::Delivered(_) | RemoteDelivery::Duplicate => {}
            RemoteDelivery::Gap { last } => {
                let since = Position { epoch: live.epoch.to_owned(), offset: last };
                self.catch_up(channel, Some(&since)).await;
                let _ = self.inner.hub.deliver_remote(frame());
            }
            RemoteDelivery::NewEpoch => {
                warn!(channel, "the channel's numbering restarted in Redis; its subscribers reload");
                self.inner.hub.reset_remote(channel, live.epoch, live.offset.saturating_sub(1));
                let _ = self.inner.hub.deliver_remote(frame());
            }
        }
    }

    /// Delivers what the stream holds after `since`; resets the channel
    /// when it cannot. A channel this node has no numbering for yet (its
    /// subscribers joined while Redis was out of reach) is told where the
    /// numbering stands, not recovered. A failed read is retried later.
    async fn catch_up(&self, channel: &str, since: Option<&Position>) {
        let history = match self.inner.broker.clone().history(channel, since).await {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, channel, "could not fill a gap from the stream; retrying shortly");
                self.behind().insert(channel.to_owned());
                return;
            }
        };
        self.behind().remove(channel);
        if since.is_none() {
            if let Some(epoch) = &history.epoch {
                self.inner.hub.reset_remote(channel, epoch, history.offset);
            }
            return;
        }
        if !history.recovered {
            warn!(channel, "missed messages are no longer in Redis; the channel's subscribers reload");
            match (&history.epoch, since) {
                // A new numbering (Redis lost its data, and rows were
                // published again before this node listened): the
                // subscribers reload, and still get what it holds so far.
                (Some(epoch), Some(since)) if *epoch != since.epoch => {
                    self.inner.hub.reset_remote(channel, epoch, 0);
                    let start = Position { epoch: epoch.clone(), offset: 0 };
                    Box::pin(self.catch_up(channel, Some(&start))).await;
                }
                (Some(epoch), _) => self.inner.hub.reset_remote(channel, epoch, history.offset),
                // Redis lost the channel's numbering: the next frame sets it.
                (None, _) => self.inner.hub.reset_remote(channel, "", 0),
            }
            return;
        }
        let epoch = history.epoch.clone().unwrap_or_default();
        for (offset, target, frame) in &history.frames {
            let data = extract_data(frame);
            let _ = self.inner.hub.deliver_remote(RemoteFrame {
                channel,
                epoch: &epoch,
                offset: *offset,
                target_key: target.as_deref(),
                frame,
                data: data.as_deref(),
            });
        }
    }

    /// After a reconnect: every listened channel catches up from its stream.
    async fn catch_up_all(&self) {
        for channel in self.inner.hub.subscribed_channels() {
            let position = self.inner.hub.remote_position(&channel);
            self.catch_up(&channel, position.as_ref()).await;
        }
    }

    /// Retries the catch-ups that failed.
    async fn catch_up_behind(&self) {
        let behind: Vec<String> = self.behind().drain().collect();
        let listened: HashSet<String> = self.inner.hub.subscribed_channels().into_iter().collect();
        for channel in behind.into_iter().filter(|c| listened.contains(c)) {
            let position = self.inner.hub.remote_position(&channel);
            self.catch_up(&channel, position.as_ref()).await;
        }
    }

    fn behind(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner.behind.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn channel_of<'a>(&self, live_channel: &'a str) -> Option<&'a str> {
        let rest = live_channel.strip_prefix(self.inner.keys.prefix())?.strip_prefix(":{")?;
        rest.strip_suffix("}:live")
    }
}

/// Redis ids of the sources' rows: the kind, so two sources never collide.
fn source_key(kind: SourceKind) -> &'static str {
    use crate::config::Named;
    kind.name()
}

/// The `data` of a message frame, for legacy `/` sockets.
fn extract_data(frame: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
    }
    serde_json::from_str::<Frame<'_>>(frame).ok().map(|f| f.data.get().to_owned())
}

fn remote_history(h: History) -> RemoteHistory {
    RemoteHistory { epoch: h.epoch, offset: h.offset, recovered: h.recovered, frames: h.frames }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The report interval, for readers of the reports (set by the reporter).
static REPORT_TTL_INTERVALS_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct NodeReport {
    legacy: u64,
    channels: HashMap<String, u64>,
}

/// The pub/sub connection's life: connect, subscribe to what is wanted,
/// catch up, then serve frames and control requests until the connection
/// drops (then again, with backoff) or `stop` fires.
async fn listen(
    node: RedisNode,
    client: redis::Client,
    mut requests: mpsc::Receiver<Control>,
    stop: CancellationToken,
) {
    let mut wanted: HashSet<String> = HashSet::new();
    let mut legacy = false;
    let mut backoff = Duration::from_millis(100);
    let pattern = format!("{}:{{*}}:live", node.inner.keys.prefix());
    loop {
        let pubsub = tokio::select! {
            _ = stop.cancelled() => return,
            p = client.get_async_pubsub() => p,
        };
        let (mut sink, mut stream) = match pubsub {
            Ok(p) => p.split(),
            Err(e) => {
                debug!(error = %e, "Redis pub/sub unreachable; retrying");
                // Requests that came meanwhile are remembered for later.
                let wait = tokio::time::sleep(backoff);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = &mut wait => break,
                        request = requests.recv() => match request {
                            Some(Control::Want(channel, ack)) => { wanted.insert(channel); let _ = ack.send(false); }
                            Some(Control::Reconcile) => {}
                            Some(Control::Legacy(on)) => legacy = on,
                            None => return,
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // Channels subscribed to while Redis was out of reach are wanted too.
        wanted.extend(node.inner.hub.subscribed_channels());
        let mut ok = true;
        for channel in &wanted {
            ok &= sink.subscribe(node.inner.keys.live(channel)).await.is_ok();
        }
        if legacy {
            ok &= sink.psubscribe(&pattern).await.is_ok();
        }
        if !ok {
            // Connected but refused: wait like any failure, never spin.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        let connected_at = tokio::time::Instant::now();
        node.inner.connected.store(true, Ordering::Relaxed);
        node.inner.metrics.broker_connected.set(1);
        info!("Redis pub/sub connected");
        node.catch_up_all().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                request = requests.recv() => match request {
                    Some(Control::Want(channel, ack)) => {
                        let done = wanted.contains(&channel) || sink.subscribe(node.inner.keys.live(&channel)).await.is_ok();
                        // Only a SUBSCRIBE that took effect is remembered:
                        // the next subscriber asks Redis again.
                        if done {
                            wanted.insert(channel);
                        }
                        let _ = ack.send(done);
                    }
                    Some(Control::Reconcile) => {
                        // Read now: a subscriber registers before it asks
                        // for its channel, so none is released under it.
                        let listened: HashSet<String> = node.inner.hub.subscribed_channels().into_iter().collect();
                        let unwanted: Vec<String> = wanted.difference(&listened).cloned().collect();
                        for channel in unwanted {
                            wanted.remove(&channel);
                            let _ = sink.unsubscribe(node.inner.keys.live(&channel)).await;
                        }
                        node.catch_up_behind().await;
                    }
                    Some(Control::Legacy(on)) if on != legacy => {
                        legacy = on;
                        let _ = if on { sink.psubscribe(&pattern).await } else { sink.punsubscribe(&pattern).await };
                    }
                    Some(Control::Legacy(_)) => {}
                    None => return,
                },
                message = stream.next() => match message {
                    Some(msg) => {
                        let live_channel = msg.get_channel_name().to_owned();
                        let Some(channel) = node.channel_of(&live_channel) else { continue };
                        // A pattern message for a channel also subscribed
                        // directly arrives twice: the hub drops the second.
                        node.on_live(channel, msg.get_payload_bytes()).await;
                    }
                    None => break,
                },
            }
        }
        node.inner.connected.store(false, Ordering::Relaxed);
        node.inner.metrics.broker_connected.set(0);
        node.inner.metrics.broker_disconnects.inc();
        warn!("Redis pub/sub connection lost; reconnecting");
        if connected_at.elapsed() >= HEALTHY_CONNECTION {
            backoff = Duration::from_millis(100);
        } else {
            // Dropped soon after it came up: wait before the next attempt.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Reports this node's counts, and has the listener release channels nobody
/// here wants (and retry failed catch-ups).
async fn report(node: RedisNode, interval: Duration, stop: CancellationToken) {
    REPORT_TTL_INTERVALS_MS.store(interval.as_millis() as u64, Ordering::Relaxed);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let hub = &node.inner.hub;
        let counts: HashMap<String, u64> =
            hub.channel_subscribers().into_iter().map(|(c, n)| (c, n as u64)).collect();
        let _ = node.inner.control.send(Control::Reconcile).await;
        node.legacy_wanted(hub.legacy_connections() > 0).await;
        let report = NodeReport { legacy: hub.legacy_connections() as u64, channels: counts };
        let ttl = 3 * interval.as_millis() as u64;
        let mut conn = node.inner.broker.connection();
        let written: Result<(), redis::RedisError> = redis::pipe()
            .cmd("SET")
            .arg(node.node_key(&node.inner.node_id))
            .arg(serde_json::to_string(&report).unwrap_or_default())
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("ZADD")
            .arg(node.nodes_key())
            .arg(unix_ms())
            .arg(&node.inner.node_id)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(node.nodes_key())
            .arg("-inf")
            .arg(unix_ms().saturating_sub(ttl))
            .ignore()
            .query_async(&mut conn)
            .await;
        if let Err(e) = written {
            debug!(error = %e, "could not write this node's report");
        }
    }
}
