//! The hub: channel → subscribers, the per-channel offset and history, and the
//! overflow policy.
//!
//! Invariants:
//! - Each channel numbers its messages 1, 2, 3… with no gap, under its own
//!   random `epoch`, made when the channel is: a channel forgotten and made
//!   again (a restart, or no subscriber and no history left) starts a new
//!   epoch, so no client is told it recovered when it did not.
//! - History is bounded three ways: `hub.history_size` messages per
//!   channel; `hub.history_ttl_s` after a channel's last message (then the
//!   history goes, and the channel too when nobody is subscribed); and
//!   `hub.history_max_bytes` for all channels together (the channels
//!   published least recently lose their history first). [`Hub::sweep`]
//!   applies the last two, once a second and when a publish goes over twice
//!   the budget. A `since` inside a dropped range gets `recovered: false`.
//! - A graceful stop saves every channel's epoch, offset and history
//!   ([`Hub::save`]); the next start loads them and deletes the file, so
//!   after a crash there is nothing to load and every epoch is new.
//! - A message is serialised to its frame once; every subscriber gets a
//!   cheap clone of the same bytes.
//! - Publishing never waits on a subscriber. Each connection has one bounded
//!   queue (`hub.subscriber_queue_size`). **Overflow policy:** when a queue
//!   is full the frame is not queued, the connection is cancelled (its
//!   session closes it with 1013 "try again later") and it leaves every
//!   channel; the client reconnects and recovers from history.
//! - A frame pushed into the empty queue of a connection whose session is
//!   idle wakes nobody: the hub hands that queue to its writer's task
//!   ([`crate::direct`]), which writes the frame straight to the socket the
//!   session lent, outside the hub's lock.
//! - Subscribing with `since` and registering the subscriber happen under the
//!   same lock as publishing, so the replay and the live stream meet with no
//!   gap and no duplicate: the replay holds exactly the offsets up to the
//!   channel's latest at that instant, and every later message goes to the
//!   queue, which the session drains only after it has written the replay.
//! - The lock is a std `Mutex`, never held across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;

use crate::config::{HubSettings, UserCase};
use crate::direct::DirectWriter;
use crate::message::{ChannelPattern, Message};
use crate::metrics::Metrics;
use crate::queue::{QueueSender, Sent, Wire};
use crate::wire::WireFrame;

/// Identifies one WebSocket connection.
pub type ConnId = u64;

/// One frame on its way to one connection.
pub struct Outgoing {
    /// The complete frame, encoded once and shared with every other
    /// connection it goes to.
    pub frame: WireFrame,
    /// Held until the frame has been written to the socket (see [`Receipt`]).
    pub receipt: Option<Receipt>,
}

/// Written to a lent socket, a frame is its shared bytes; a write that
/// stopped inside one leaves its end, with the receipt.
impl Wire for Outgoing {
    fn wire(&self) -> &[u8] {
        self.frame.bytes()
    }

    fn rest_after(self, sent: usize) -> Self {
        Self { frame: self.frame.rest_after(sent), receipt: self.receipt }
    }
}

/// Completes when every clone has been dropped: the drainer hands a batch to
/// the hub with one receipt, every queued frame holds a clone, and a session
/// drops its clone once the frame is written to the socket (or the
/// connection is gone). The drainer waits for that, boundedly, before it
/// deletes the rows, so a crash right after the delete loses nothing that a
/// connected client was about to receive.
#[derive(Clone)]
pub struct Receipt(#[allow(dead_code)] Arc<Mutex<Option<oneshot::Sender<()>>>>);

impl Receipt {
    /// A receipt and the receiver that resolves when all its clones are gone.
    pub fn new() -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Self(Arc::new(Mutex::new(Some(tx)))), rx)
    }
}

/// The sending side of one connection, as the hub keeps it.
#[derive(Clone)]
pub struct Subscriber {
    pub conn: ConnId,
    pub tx: QueueSender<Outgoing>,
    /// Cancelled by the hub when the connection's queue overflows.
    pub kick: CancellationToken,
    /// The authenticated user, matched against a message's `target_user`.
    pub user: Option<Arc<str>>,
    /// Legacy `/` connections only: the channels this one may receive
    /// (`None`: every channel in `legacy.channels`).
    pub permits: Option<Arc<[ChannelPattern]>>,
    /// Remote numbering: the offset its replay already covered; live frames
    /// up to it are not sent again (0 otherwise).
    pub floor: u64,
}

/// A client's position in a channel's stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// What `subscribe` answers.
#[derive(Debug)]
pub struct Subscribed {
    pub epoch: String,
    /// The channel's latest offset when the subscription started.
    pub offset: u64,
    /// True when a `since` was given and every missed message is in `replay`.
    pub recovered: bool,
    /// The missed frames, in order, to write before anything queued.
    pub replay: Vec<Utf8Bytes>,
}

/// The outcome of one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub epoch: Arc<str>,
    pub offset: u64,
    /// Connections the frame was queued to.
    pub delivered: usize,
}

/// One frame on its way to a channel's connections (see `Hub::fan_out`).
struct Fanout<'a> {
    channel: &'a str,
    /// A remote frame's offset, checked against each subscriber's floor.
    offset: Option<u64>,
    /// The frame's text; encoded for the wire once, if anyone is subscribed.
    text: &'a str,
    /// The message's `data` alone, for legacy `/` connections.
    data: Option<&'a str>,
    target: Option<&'a str>,
    receipt: Option<&'a Receipt>,
}

/// A frame numbered by the broker, as it reaches this node.
pub struct RemoteFrame<'a> {
    pub channel: &'a str,
    pub epoch: &'a str,
    pub offset: u64,
    pub target_key: Option<&'a str>,
    pub frame: &'a str,
    /// The message's `data` alone, for legacy `/` sockets (None: none here).
    pub data: Option<&'a str>,
}

/// What happened to a remote frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteDelivery {
    /// Queued to this many connections.
    Delivered(usize),
    /// Seen already (a replayed gap, a redelivery).
    Duplicate,
    /// Frames after `last` are missing: fill them from the stream first.
    Gap { last: u64 },
    /// Another epoch: the numbering restarted.
    NewEpoch,
}

/// A channel's history as the broker read it (see `broker::redis::History`).
pub struct RemoteHistory {
    pub epoch: Option<String>,
    pub offset: u64,
    pub recovered: bool,
    pub frames: Vec<(u64, Option<String>, String)>,
}

/// How much history the hub keeps (see the module doc).
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub history_size: usize,
    pub history_ttl: Duration,
    pub history_max_bytes: usize,
    pub user_case: UserCase,
}

impl HubConfig {
    pub fn from_settings(hub: &HubSettings, user_case: UserCase) -> Self {
        Self {
            history_size: hub.history_size,
            history_ttl: Duration::from_secs(hub.history_ttl_s),
            history_max_bytes: hub.history_max_bytes,
            user_case,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("already subscribed to this channel")]
pub struct AlreadySubscribed;

#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    state: Mutex<State>,
    config: HubConfig,
    legacy_patterns: Vec<ChannelPattern>,
    metrics: Metrics,
    /// Writes frames to the sockets idle sessions lend their queues (none
    /// outside a tokio runtime: sessions then do not lend them).
    direct: Option<DirectWriter>,
}

#[derive(Default)]
struct State {
    channels: HashMap<String, Channel>,
    /// Connections on the legacy `/` endpoint: they get the bare `data`.
    legacy: HashMap<ConnId, Subscriber>,
    /// All channels' history together: frames and their bytes.
    history_messages: usize,
    history_bytes: usize,
    /// Channels were resumed from a saved state (see [`Hub::forget_resumed`]).
    resumed: bool,
}

impl State {
    /// Forgets a channel's history (its numbering stays).
    fn drop_history(&mut self, name: &str) {
        if let Some(channel) = self.channels.get_mut(name) {
            self.history_messages -= channel.history.len();
            self.history_bytes -= channel.history.iter().map(|k| k.frame.len()).sum::<usize>();
            channel.history = VecDeque::new();
        }
    }
}

/// A live frame held for a subscriber whose history is being read:
/// `(offset, target user key, frame)`.
type Buffered = (u64, Option<Arc<str>>, Utf8Bytes);

/// A subscriber whose history is being read, and what came meanwhile.
/// **Overflow policy:** past the limit the connection is kicked (closed with
/// 1013, like a full queue) rather than given a gap.
struct Pending {
    kick: CancellationToken,
    frames: Vec<Buffered>,
    /// The channel's numbering was reset while the history was read: what
    /// was read may not join up with what comes next.
    reset: bool,
}

struct Channel {
    /// Empty while a remote-numbered channel has no numbering seen yet.
    epoch: Arc<str>,
    last_offset: u64,
    /// Remote numbering: subscribers whose history is being read, and the
    /// live frames that came meanwhile (see [`Hub::finish_remote_subscribe`]).
    pending: HashMap<ConnId, Pending>,
    /// When the last message was published (history lives `history_ttl` past it).
    last_publish: Instant,
    history: VecDeque<Kept>,
    subscribers: HashMap<ConnId, Subscriber>,
}

impl Channel {
    fn new() -> Self {
        Self::resumed(new_epoch(), 0)
    }

    fn resumed(epoch: Arc<str>, last_offset: u64) -> Self {
        Self {
            epoch,
            last_offset,
            pending: HashMap::new(),
            last_publish: Instant::now(),
            history: VecDeque::new(),
            subscribers: HashMap::new(),
        }
    }
}

fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:08x}", rand::rng().random::<u32>()))
}

/// A published frame kept for recovery.
struct Kept {
    offset: u64,
    target_user: Option<String>,
    frame: Utf8Bytes,
}

/// What [`Hub::save`] writes.
#[derive(Serialize, serde::Deserialize)]
struct SavedState {
    version: u32,
    channels: Vec<SavedChannel>,
}

impl SavedState {
    const VERSION: u32 = 1;
}

#[derive(Serialize, serde::Deserialize)]
struct SavedChannel {
    name: String,
    epoch: String,
    last_offset: u64,
    history: Vec<SavedFrame>,
}

#[derive(Serialize, serde::Deserialize)]
struct SavedFrame {
    offset: u64,
    target_user: Option<String>,
    frame: String,
}

#[derive(Serialize)]
struct MessageFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    epoch: &'a str,
    offset: u64,
    id: &'a str,
    data: &'a RawValue,
}

impl Hub {
    pub fn new(config: HubConfig, legacy_patterns: Vec<ChannelPattern>, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(HubInner {
                state: Mutex::new(State::default()),
                config,
                legacy_patterns,
                direct: DirectWriter::start(metrics.direct_writes.clone()),
                metrics,
            }),
        }
    }

    /// Whether a session may lend its socket to its queue (see
    /// [`crate::direct`]): the hub has a writer for lent sockets.
    pub fn writes_lent_sockets(&self) -> bool {
        self.inner.direct.as_ref().is_some_and(DirectWriter::is_running)
    }

    /// Has the frames just pushed to lent sockets written.
    fn hand_to_writer(&self, queues: Vec<QueueSender<Outgoing>>) {
        if let Some(direct) = &self.inner.direct {
            direct.hand_over(queues);
        }
    }

    /// Subscribers per channel, by name, for the status page (channels
    /// without subscribers left out).
    pub fn channel_subscribers(&self) -> Vec<(String, usize)> {
        let state = self.state();
        let mut counts: Vec<(String, usize)> = state
            .channels
            .iter()
            .filter(|(_, c)| !c.subscribers.is_empty())
            .map(|(name, c)| (name.clone(), c.subscribers.len()))
            .collect();
        counts.sort();
        counts
    }

    /// The epoch of a channel, when the hub has it.
    pub fn epoch_of(&self, channel: &str) -> Option<String> {
        self.state().channels.get(channel).map(|c| c.epoch.to_string())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps consistent (every
        // mutation is a single insert/remove), so poisoning is not fatal.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers the message, keeps it for recovery and queues its frame to
    /// every matching subscriber, without ever waiting on one.
    pub fn publish(&self, msg: &Message, receipt: Option<&Receipt>) -> Published {
        let mut state = self.state();
        let State { channels, legacy, history_messages, history_bytes, .. } = &mut *state;
        let channel = channels.entry(msg.channel.clone()).or_insert_with(Channel::new);
        channel.last_offset += 1;
        channel.last_publish = Instant::now();
        let offset = channel.last_offset;
        let frame: Utf8Bytes = serde_json::to_string(&MessageFrame {
            kind: "message",
            channel: &msg.channel,
            epoch: &channel.epoch,
            offset,
            id: &msg.id,
            data: &msg.data,
        })
        .expect("a frame of strings and raw JSON serialises")
        .into();

        // Compared in the form `auth.user_case` gives (subscribers' users are
        // kept in that form too).
        let target_key = msg.target_user.as_deref().map(|u| self.inner.config.user_case.key(u));
        let target = target_key.as_deref();
        let out = Fanout {
            channel: &msg.channel,
            offset: None,
            text: &frame,
            data: Some(msg.data.get()),
            target,
            receipt,
        };
        let delivered = self.fan_out(&mut channel.subscribers, legacy, &out);

        let config = &self.inner.config;
        if config.history_size > 0 {
            *history_bytes += frame.len();
            *history_messages += 1;
            channel.history.push_back(Kept { offset, target_user: target_key, frame });
            while channel.history.len() > config.history_size {
                if let Some(old) = channel.history.pop_front() {
                    *history_bytes -= old.frame.len();
                    *history_messages -= 1;
                }
            }
        }
        let published = Published { epoch: channel.epoch.clone(), offset, delivered };
        if *history_bytes > config.history_max_bytes.saturating_mul(2) {
            let _ = self.sweep_locked(&mut state, Instant::now());
        }
        self.update_gauges(&state);
        published
    }

    /// Drops history past its time (`history_ttl`) and, over the memory
    /// budget, the history of the channels published least recently; then
    /// the channels left with no history and no subscriber. Run once a
    /// second by the server.
    pub fn sweep(&self) {
        let mut state = self.state();
        let freed = self.sweep_locked(&mut state, Instant::now());
        self.update_gauges(&state);
        drop(state);
        if freed {
            give_memory_back();
        }
    }

    /// True when it freed anything (channels or history).
    fn sweep_locked(&self, state: &mut State, now: Instant) -> bool {
        let bytes_before = state.history_bytes;
        let config = &self.inner.config;
        let expired: Vec<String> = state
            .channels
            .iter()
            .filter(|(_, c)| {
                !c.history.is_empty() && now.duration_since(c.last_publish) >= config.history_ttl
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &expired {
            state.drop_history(name);
        }
        if state.history_bytes > config.history_max_bytes {
            let mut by_age: Vec<(Instant, String)> = state
                .channels
                .iter()
                .filter(|(_, c)| !c.history.is_empty())
                .map(|(name, c)| (c.last_publish, name.clone()))
                .collect();
            by_age.sort();
            for (_, name) in by_age {
                if state.history_bytes <= config.history_max_bytes {
                    break;
                }
                state.drop_history(&name);
            }
        }
        let channels = &mut state.channels;
        let before = channels.len();
        channels.retain(|_, c| !(c.history.is_empty() && c.subscribers.is_empty() && c.pending.is_empty()));
        if channels.len() < channels.capacity() / 4 {
            // Most of the table is empty: give its memory back too.
            channels.shrink_to_fit();
        }
        // Any sweep that freed something gives the pages back: at most once
        // a second, and cheap next to what it returns.
        bytes_before > state.history_bytes || before > state.channels.len()
    }

    fn update_gauges(&self, state: &State) {
        let metrics = &self.inner.metrics;
        metrics.hub_channels.set(state.channels.len() as i64);
        metrics.hub_history_messages.set(state.history_messages as i64);
        metrics.hub_history_bytes.set(state.history_bytes as i64);
    }

    /// Adds a subscriber to a channel and, when `since` is given, returns the
    /// frames it missed (all of them, or none with `recovered: false`).
    pub fn subscribe(
        &self,
        channel_name: &str,
        sub: Subscriber,
        since: Option<&Position>,
    ) -> Result<Subscribed, AlreadySubscribed> {
        let mut state = self.state();
        let channel = state.channels.entry(channel_name.to_owned()).or_insert_with(Channel::new);
        if channel.subscribers.contains_key(&sub.conn) {
            return Err(AlreadySubscribed);
        }
        let (recovered, replay) = match since {
            None => (false, Vec::new()),
            Some(pos) => self.recover(channel, pos, sub.user.as_deref()),
        };
        channel.subscribers.insert(sub.conn, sub);
        let subscribed =
            Subscribed { epoch: channel.epoch.to_string(), offset: channel.last_offset, recovered, replay };
        self.inner.metrics.subscriptions.inc();
        self.update_gauges(&state);
        Ok(subscribed)
    }

    fn recover(&self, channel: &Channel, since: &Position, user: Option<&str>) -> (bool, Vec<Utf8Bytes>) {
        if *since.epoch != *channel.epoch || since.offset > channel.last_offset {
            return (false, Vec::new());
        }
        if since.offset == channel.last_offset {
            return (true, Vec::new());
        }
        let first_missed = since.offset + 1;
        match channel.history.front() {
            Some(oldest) if oldest.offset <= first_missed => {
                let replay = channel
                    .history
                    .iter()
                    .filter(|k| k.offset >= first_missed)
                    .filter(|k| k.target_user.is_none() || k.target_user.as_deref() == user)
                    .map(|k| k.frame.clone())
                    .collect();
                (true, replay)
            }
            _ => (false, Vec::new()),
        }
    }

    /// Removes one subscription; false when there was none.
    pub fn unsubscribe(&self, channel_name: &str, conn: ConnId) -> bool {
        let mut state = self.state();
        let removed = match state.channels.get_mut(channel_name) {
            Some(channel) => channel.subscribers.remove(&conn).is_some(),
            None => false,
        };
        if removed {
            self.inner.metrics.subscriptions.dec();
            drop_if_idle(&mut state.channels, channel_name);
            self.update_gauges(&state);
        }
        removed
    }

    /// Removes a connection from the channels it was on (when it closes).
    pub fn remove_connection<'a>(&self, conn: ConnId, channels: impl IntoIterator<Item = &'a str>) {
        let mut state = self.state();
        for name in channels {
            if let Some(channel) = state.channels.get_mut(name) {
                if channel.subscribers.remove(&conn).is_some() {
                    self.inner.metrics.subscriptions.dec();
                }
                drop_if_idle(&mut state.channels, name);
            }
        }
        state.legacy.remove(&conn);
        self.update_gauges(&state);
    }

    /// Sets the user of a connection's subscriptions (after an `auth`
    /// frame), in place, so no message is missed in between.
    pub fn set_user<'a>(
        &self,
        conn: ConnId,
        channels: impl IntoIterator<Item = &'a str>,
        user: Option<Arc<str>>,
    ) {
        let mut state = self.state();
        for name in channels {
            if let Some(sub) = state.channels.get_mut(name).and_then(|c| c.subscribers.get_mut(&conn)) {
                sub.user = user.clone();
            }
        }
    }

    /// Saves every channel's epoch, offset and history to `path` (written
    /// to a temporary file, then renamed); returns how many channels.
    pub fn save(&self, path: &Path) -> std::io::Result<usize> {
        let saved = {
            let state = self.state();
            SavedState {
                version: SavedState::VERSION,
                channels: state
                    .channels
                    .iter()
                    .filter(|(_, c)| c.last_offset > 0)
                    .map(|(name, c)| SavedChannel {
                        name: name.clone(),
                        epoch: c.epoch.to_string(),
                        last_offset: c.last_offset,
                        history: c
                            .history
                            .iter()
                            .map(|k| SavedFrame {
                                offset: k.offset,
                                target_user: k.target_user.clone(),
                                frame: k.frame.as_str().to_owned(),
                            })
                            .collect(),
                    })
                    .collect(),
            }
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&saved).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(saved.channels.len())
    }

    /// When this hub resumed saved channels ([`Hub::load`]) and has not
    /// numbered anything since: gives every channel a new epoch and drops
    /// its history, since what was resumed no longer describes what clients
    /// can get. True when it did.
    pub fn forget_resumed(&self) -> bool {
        let mut state = self.state();
        if !std::mem::take(&mut state.resumed) {
            return false;
        }
        let names: Vec<String> = state.channels.keys().cloned().collect();
        for name in &names {
            state.drop_history(name);
            if let Some(channel) = state.channels.get_mut(name) {
                channel.epoch = new_epoch();
                channel.last_offset = 0;
            }
        }
        state.channels.retain(|_, c| !(c.subscribers.is_empty() && c.pending.is_empty()));
        self.update_gauges(&state);
        true
    }

    /// Loads what [`Hub::save`] wrote, then deletes the file: a crash after
    /// this start must not resume these epochs. Returns how many channels
    /// (0 without a file).
    pub fn load(&self, path: &Path) -> std::io::Result<usize> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        std::fs::remove_file(path)?;
        let saved: SavedState = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
        if saved.version != SavedState::VERSION {
            return Err(std::io::Error::other(format!("unknown state version {}", saved.version)));
        }
        let mut state = self.state();
        let count = saved.channels.len();
        let history_size = self.inner.config.history_size;
        for c in saved.channels {
            let mut channel = Channel::resumed(Arc::from(c.epoch), c.last_offset);
            let skip = c.history.len().saturating_sub(history_size);
            for f in c.history.into_iter().skip(skip) {
                state.history_bytes += f.frame.len();
                state.history_messages += 1;
                channel.history.push_back(Kept {
                    offset: f.offset,
                    target_user: f.target_user,
                    frame: f.frame.into(),
                });
            }
            state.channels.insert(c.name, channel);
        }
        state.resumed = count > 0;
        self.update_gauges(&state);
        Ok(count)
    }

    // --- Remote numbering (the Redis broker) -------------------------------
    //
    // With a shared broker the hub numbers nothing: frames arrive numbered
    // from Redis and the hub fans them out, in offset order, with no gap
    // (the broker fills gaps from its stream before it hands a frame over)
    // and no duplicate. A channel's `epoch`/`last_offset` then mean the last
    // frame delivered here.

    /// Delivers a frame numbered elsewhere to this node's subscribers.
    pub fn deliver_remote(&self, frame: RemoteFrame<'_>) -> RemoteDelivery {
        let mut state = self.state();
        let State { channels, legacy, .. } = &mut *state;
        let channel =
            channels.entry(frame.channel.to_owned()).or_insert_with(|| Channel::resumed(Arc::from(""), 0));
        if channel.epoch.is_empty() {
            // The first frame seen here sets the baseline.
            channel.epoch = Arc::from(frame.epoch);
            channel.last_offset = frame.offset.saturating_sub(1);
        }
        if *channel.epoch != *frame.epoch {
            return RemoteDelivery::NewEpoch;
        }
        if frame.offset <= channel.last_offset {
            return RemoteDelivery::Duplicate;
        }
        if frame.offset > channel.last_offset + 1 {
            return RemoteDelivery::Gap { last: channel.last_offset };
        }
        channel.last_offset = frame.offset;
        channel.last_publish = Instant::now();
        let bytes: Utf8Bytes = frame.frame.into();
        let target = frame.target_key;
        let queue_limit = self.inner.config.history_size.max(1024);
        for pending in channel.pending.values_mut() {
            if pending.frames.len() >= queue_limit {
                pending.kick.cancel();
            } else if !pending.kick.is_cancelled() {
                pending.frames.push((frame.offset, target.map(Arc::from), bytes.clone()));
            }
        }
        let out = Fanout {
            channel: frame.channel,
            offset: Some(frame.offset),
            text: frame.frame,
            data: frame.data,
            target,
            receipt: None,
        };
        let delivered = self.fan_out(&mut channel.subscribers, legacy, &out);
        RemoteDelivery::Delivered(delivered)
    }

    /// Queues a frame to a channel's subscribers that may receive it
    /// (dropping those whose queue overflowed) and its bare `data` to the
    /// legacy `/` connections that want the channel. Returns how many
    /// connections got it.
    fn fan_out(
        &self,
        subscribers: &mut HashMap<ConnId, Subscriber>,
        legacy: &mut HashMap<ConnId, Subscriber>,
        out: &Fanout<'_>,
    ) -> usize {
        let metrics = &self.inner.metrics;
        let mut delivered = 0;
        let mut lent = Vec::new();
        if !subscribers.is_empty() {
            let frame = WireFrame::text(out.text);
            subscribers.values().for_each(|sub| sub.tx.prefetch());
            subscribers.retain(|_, sub| {
                if !may_receive(sub, out.target) || out.offset.is_some_and(|o| o <= sub.floor) {
                    return true;
                }
                let kept = deliver(sub, &frame, out.receipt, metrics, &mut lent);
                delivered += usize::from(kept);
                if !kept {
                    metrics.subscriptions.dec();
                }
                kept
            });
            // Counted once per message, not once per subscriber.
            metrics.deliveries.inc_by(delivered as u64);
        }
        let wants_bare = |channel| self.inner.legacy_patterns.iter().any(|p| p.matches(channel));
        let mut delivered_bare = 0;
        if let Some(data) = out.data.filter(|_| !legacy.is_empty() && wants_bare(out.channel)) {
            let bare = WireFrame::text(data);
            legacy.values().for_each(|sub| sub.tx.prefetch());
            legacy.retain(|_, sub| {
                let permitted = sub.permits.as_ref().is_none_or(|p| p.iter().any(|p| p.matches(out.channel)));
                if !permitted || !may_receive(sub, out.target) {
                    return true;
                }
                let kept = deliver(sub, &bare, out.receipt, metrics, &mut lent);
                delivered_bare += usize::from(kept);
                kept
            });
            metrics.deliveries.inc_by(delivered_bare as u64);
        }
        self.hand_to_writer(lent);
        delivered + delivered_bare
    }

    /// The channel's numbering restarted (Redis lost its data) or could not
    /// be followed: its subscribers are told they did not recover (a
    /// `subscribed` frame with `recovered: false`, as on a fresh subscribe),
    /// and the channel follows the new numbering from `epoch`/`last_offset`.
    pub fn reset_remote(&self, channel_name: &str, epoch: &str, last_offset: u64) {
        let metrics = &self.inner.metrics;
        let mut state = self.state();
        let Some(channel) = state.channels.get_mut(channel_name) else { return };
        channel.epoch = Arc::from(epoch);
        channel.last_offset = last_offset;
        // Subscribers still reading their history join at the new position.
        for pending in channel.pending.values_mut() {
            pending.reset = true;
            pending.frames.clear();
        }
        let notice = WireFrame::text(&crate::ws::protocol::subscribed(
            channel_name,
            &Subscribed {
                epoch: epoch.to_owned(),
                offset: last_offset,
                recovered: false,
                replay: Vec::new(),
            },
        ));
        let mut delivered = 0;
        let mut lent = Vec::new();
        channel.subscribers.retain(|_, sub| {
            // The subscriber starts over from the notice's position: frames
            // of the new numbering after it are all new to it.
            sub.floor = last_offset;
            let kept = deliver(sub, &notice, None, metrics, &mut lent);
            delivered += u64::from(kept);
            if !kept {
                metrics.subscriptions.dec();
            }
            kept
        });
        metrics.deliveries.inc_by(delivered);
        self.hand_to_writer(lent);
    }

    /// The last frame delivered here for a channel, when the channel has
    /// local subscribers and a numbering.
    pub fn remote_position(&self, channel_name: &str) -> Option<Position> {
        let state = self.state();
        let channel = state.channels.get(channel_name)?;
        (!channel.epoch.is_empty())
            .then(|| Position { epoch: channel.epoch.to_string(), offset: channel.last_offset })
    }

    /// Channels with local subscribers (the broker's wanted set).
    pub fn subscribed_channels(&self) -> Vec<String> {
        let state = self.state();
        state
            .channels
            .iter()
            .filter(|(_, c)| !c.subscribers.is_empty() || !c.pending.is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Legacy `/` connections on this node.
    pub fn legacy_connections(&self) -> usize {
        self.state().legacy.len()
    }

    /// First step of a remote subscribe, once the node listens to the
    /// channel: live frames for `sub` are buffered from now on, while its
    /// history is read. False when `sub` is subscribed already.
    pub fn start_remote_subscribe(&self, channel_name: &str, sub: &Subscriber) -> bool {
        let mut state = self.state();
        let channel = state
            .channels
            .entry(channel_name.to_owned())
            .or_insert_with(|| Channel::resumed(Arc::from(""), 0));
        if channel.subscribers.contains_key(&sub.conn) || channel.pending.contains_key(&sub.conn) {
            return false;
        }
        channel
            .pending
            .insert(sub.conn, Pending { kick: sub.kick.clone(), frames: Vec::new(), reset: false });
        true
    }

    /// Second step: the replay is the history read after `since` plus the
    /// frames buffered meanwhile, each offset once, in order; the
    /// subscriber then receives live frames. `history` is None when Redis
    /// could not be read: the subscription starts with `recovered: false`.
    pub fn finish_remote_subscribe(
        &self,
        channel_name: &str,
        sub: Subscriber,
        history: Option<RemoteHistory>,
    ) -> Subscribed {
        let mut state = self.state();
        let channel = state
            .channels
            .entry(channel_name.to_owned())
            .or_insert_with(|| Channel::resumed(Arc::from(""), 0));
        let (buffered, reset) =
            channel.pending.remove(&sub.conn).map_or((Vec::new(), false), |p| (p.frames, p.reset));
        let user = sub.user.as_deref();
        let visible = |target: Option<&str>| target.is_none() || target == user;
        // A history of another numbering than the one this node follows (the
        // channel was reset meanwhile, or Redis restarted its numbering and
        // no live frame told this node yet) cannot be joined to the live
        // frames: the subscriber starts where the node is, not recovered
        // (and hears of a newer numbering as every subscriber does).
        let other_numbering = |h: &RemoteHistory| {
            !channel.epoch.is_empty() && h.epoch.as_deref().is_some_and(|e| e != &*channel.epoch)
        };
        let history = match history {
            Some(h) if reset || other_numbering(&h) => None,
            other => other,
        };
        let (epoch, read_offset, recovered, mut replay) = match history {
            Some(h) => {
                if let (true, Some(epoch)) = (channel.epoch.is_empty(), &h.epoch) {
                    channel.epoch = Arc::from(epoch.as_str());
                    channel.last_offset = h.offset;
                }
                let frames: Vec<(u64, Utf8Bytes)> = if h.recovered {
                    h.frames
                        .into_iter()
                        .filter(|(_, target, _)| visible(target.as_deref()))
                        .map(|(o, _, f)| (o, f.into()))
                        .collect()
                } else {
                    Vec::new()
                };
                (h.epoch.unwrap_or_else(|| channel.epoch.to_string()), h.offset, h.recovered, frames)
            }
            None => (channel.epoch.to_string(), channel.last_offset, false, Vec::new()),
        };
        // Frames that came while the history was read: those after what it
        // covered follow the replay, each offset once.
        let mut covered = read_offset.max(replay.last().map_or(0, |(o, _)| *o));
        for (o, target, frame) in buffered {
            if o > covered && *channel.epoch == *epoch {
                covered = o;
                if visible(target.as_deref()) {
                    replay.push((o, frame));
                }
            }
        }
        let offset = covered;
        // Frames up to what the replay covered may still be on their way
        // here live (this node's pub/sub can lag the history read).
        let mut sub = sub;
        sub.floor = covered;
        channel.subscribers.insert(sub.conn, sub);
        self.inner.metrics.subscriptions.inc();
        let replay = replay.into_iter().map(|(_, f)| f).collect();
        let subscribed = Subscribed { epoch, offset, recovered, replay };
        self.update_gauges(&state);
        subscribed
    }

    /// Adds a connection of the legacy `/` endpoint.
    pub fn add_legacy(&self, sub: Subscriber) {
        self.state().legacy.insert(sub.conn, sub);
    }

    /// The channel's latest offset (0 when nothing was published yet).
    pub fn last_offset(&self, channel_name: &str) -> u64 {
        self.state().channels.get(channel_name).map_or(0, |c| c.last_offset)
    }
}

/// Returns freed heap pages to the system. glibc's allocator keeps them in
/// its arenas after a mass free (200,000 channels dropped at once), so the
/// RSS would never come back down.
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A targeted message reaches only its user; an untargeted one everybody.
fn may_receive(sub: &Subscriber, target: Option<&str>) -> bool {
    match target {
        None => true,
        Some(user) => sub.user.as_deref() == Some(user),
    }
}

/// Queues a frame; false when the subscriber must be dropped (full or gone).
/// A queue whose socket is lent, and that the frame made non-empty, is
/// added to `lent`, for the caller to hand to the writer (see
/// [`crate::direct`]). The caller counts the deliveries (once per
/// message, not per subscriber).
fn deliver(
    sub: &Subscriber,
    frame: &WireFrame,
    receipt: Option<&Receipt>,
    metrics: &Metrics,
    lent: &mut Vec<QueueSender<Outgoing>>,
) -> bool {
    let outgoing = Outgoing { frame: frame.clone(), receipt: receipt.cloned() };
    match sub.tx.try_send(outgoing) {
        Ok(Sent::Queued) => true,
        Ok(Sent::ToLentSocket) => {
            lent.push(sub.tx.clone());
            true
        }
        Err(crate::queue::TrySendError::Full(_)) => {
            metrics.dropped.inc();
            metrics.slow_consumers.inc();
            sub.kick.cancel();
            false
        }
        Err(crate::queue::TrySendError::Closed(_)) => false,
    }
}

/// A channel with no subscribers and no history holds nothing worth keeping.
fn drop_if_idle(channels: &mut HashMap<String, Channel>, name: &str) {
    if channels
        .get(name)
        .is_some_and(|c| c.subscribers.is_empty() && c.history.is_empty() && c.pending.is_empty())
    {
        channels.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(history_size: usize) -> HubConfig {
        HubConfig {
            history_size,
            history_ttl: Duration::from_secs(300),
            history_max_bytes: 64 << 20,
            user_case: UserCase::Insensitive,
        }
    }

    fn hub(history: usize) -> Hub {
        Hub::new(config(history), vec![ChannelPattern::Any], Metrics::new())
    }

    fn subscriber(
        conn: ConnId,
        queue: usize,
        user: Option<&str>,
    ) -> (Subscriber, crate::queue::QueueReceiver<Outgoing>) {
        let (tx, rx) = crate::queue::frame_queue(queue);
        (
            Subscriber {
                conn,
                tx,
                kick: CancellationToken::new(),
                user: user.map(Arc::from),
                permits: None,
                floor: 0,
            },
            rx,
        )
    }

    fn msg(channel: &str, payload: &str) -> Message {
        Message::from_payload("1", channel, None, payload, 1 << 20).unwrap()
    }

    fn offsets(frames: &[Utf8Bytes]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| serde_json::from_str::<serde_json::Value>(f).unwrap()["offset"].as_u64().unwrap())
            .collect()
    }

    /// Offsets count up from 1 per channel, independently.
    #[test]
    fn offsets_are_per_channel_and_gap_free() {
        let h = hub(10);
        assert_eq!(h.publish(&msg("a", "x"), None).offset, 1);
        assert_eq!(h.publish(&msg("a", "x"), None).offset, 2);
        assert_eq!(h.publish(&msg("b", "x"), None).offset, 1);
        assert_eq!(h.last_offset("a"), 2);
    }

    /// The frame carries type, channel, epoch, offset, id and data.
    #[test]
    fn frame_shape() {
        let h = hub(10);
        let (sub, mut rx) = subscriber(1, 16, None);
        h.subscribe("emp", sub, None).unwrap();
        h.publish(&msg("emp", r#"{"message":"REFRESH"}"#), None);
        let out = rx.try_recv().unwrap();
        let v: serde_json::Value = serde_json::from_str(out.frame.payload_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"message","channel":"emp","epoch":h.epoch_of("emp").unwrap(),"offset":1,"id":"1","data":{"message":"REFRESH"}})
        );
    }

    /// `since` inside the history replays exactly the missed offsets.
    #[test]
    fn recovery_replays_exactly_the_gap() {
        let h = hub(10);
        for _ in 0..7 {
            h.publish(&msg("c", "x"), None);
        }
        let (sub, _rx) = subscriber(1, 16, None);
        let pos = Position { epoch: h.epoch_of("c").unwrap(), offset: 3 };
        let s = h.subscribe("c", sub, Some(&pos)).unwrap();
        assert!(s.recovered);
        assert_eq!(s.offset, 7);
        assert_eq!(offsets(&s.replay), vec![4, 5, 6, 7]);
    }

    /// A wrong epoch, a future offset or a gap beyond the history are not recoverable.
    #[test]
    fn recovery_refuses_what_it_cannot_replay() {
        let h = hub(3);
        for _ in 0..10 {
            h.publish(&msg("c", "x"), None);
        }
        let cases = [
            Position { epoch: "other".into(), offset: 9 },
            Position { epoch: h.epoch_of("c").unwrap(), offset: 11 },
            Position { epoch: h.epoch_of("c").unwrap(), offset: 6 },
        ];
        for (i, pos) in cases.iter().enumerate() {
            let (sub, _rx) = subscriber(i as u64, 16, None);
            let s = h.subscribe("c", sub, Some(pos)).unwrap();
            assert!(!s.recovered, "{pos:?}");
            assert!(s.replay.is_empty());
        }
        let (sub, _rx) = subscriber(99, 16, None);
        let s =
            h.subscribe("c", sub, Some(&Position { epoch: h.epoch_of("c").unwrap(), offset: 7 })).unwrap();
        assert!(s.recovered);
        assert_eq!(offsets(&s.replay), vec![8, 9, 10]);
    }

    /// A full queue cancels that subscriber only; the others keep receiving.
    #[test]
    fn slow_subscriber_is_kicked_alone() {
        let h = hub(0);
        let (slow, _slow_rx) = subscriber(1, 2, None);
        let kick = slow.kick.clone();
        let (fast, mut fast_rx) = subscriber(2, 100, None);
        h.subscribe("c", slow, None).unwrap();
        h.subscribe("c", fast, None).unwrap();
        for _ in 0..5 {
            h.publish(&msg("c", "x"), None);
        }
        assert!(kick.is_cancelled());
        let mut got = 0;
        while fast_rx.try_recv().is_some() {
            got += 1;
        }
        assert_eq!(got, 5);
        assert_eq!(h.publish(&msg("c", "x"), None).delivered, 1);
    }

    /// A targeted message reaches only its user, live and in replay.
    #[test]
    fn targeted_messages_reach_only_their_user() {
        let h = hub(10);
        let (alice, mut alice_rx) = subscriber(1, 16, Some("alice"));
        let (bob, mut bob_rx) = subscriber(2, 16, Some("bob"));
        let (anon, mut anon_rx) = subscriber(3, 16, None);
        for s in [alice, bob, anon] {
            h.subscribe("c", s, None).unwrap();
        }
        let mut m = msg("c", "secret");
        m.target_user = Some("alice".into());
        assert_eq!(h.publish(&m, None).delivered, 1);
        assert!(alice_rx.try_recv().is_some());
        assert!(bob_rx.try_recv().is_none() && anon_rx.try_recv().is_none());
        let (late_bob, _rx) = subscriber(4, 16, Some("bob"));
        let s = h
            .subscribe("c", late_bob, Some(&Position { epoch: h.epoch_of("c").unwrap(), offset: 0 }))
            .unwrap();
        assert!(s.recovered && s.replay.is_empty());
    }

    fn channel_count(h: &Hub) -> usize {
        h.state().channels.len()
    }

    /// Each channel has its own epoch, and a channel forgotten and made again gets a new one.
    #[test]
    fn epochs_are_per_channel_and_change_when_the_numbering_restarts() {
        let h = hub(0);
        h.publish(&msg("a", "x"), None);
        let (sub, _rx) = subscriber(1, 16, None);
        let first = h.subscribe("a", sub, None).unwrap();
        let (sub, _rx) = subscriber(2, 16, None);
        let other = h.subscribe("b", sub, None).unwrap();
        assert_ne!(first.epoch, other.epoch);
        h.unsubscribe("a", 1);
        // No subscriber and no history: forgotten, so its numbering restarts…
        assert_eq!(h.epoch_of("a"), None);
        let again = h.publish(&msg("a", "x"), None);
        assert_eq!(again.offset, 1);
        // …under a new epoch: a client's old position cannot pass for this one.
        assert_ne!(&*again.epoch, first.epoch.as_str());
    }

    /// History past its time goes, and the channel with it when nobody listens; a `since` into it is not recovered.
    #[test]
    fn history_expires_after_its_ttl() {
        let h = Hub::new(
            HubConfig { history_ttl: Duration::from_millis(0), ..config(10) },
            vec![ChannelPattern::Any],
            Metrics::new(),
        );
        for name in ["quiet", "kept"] {
            h.publish(&msg(name, "x"), None);
        }
        let epoch = h.epoch_of("kept").unwrap();
        let (sub, _rx) = subscriber(1, 16, None);
        h.subscribe("kept", sub, None).unwrap();
        h.sweep();
        assert_eq!(h.epoch_of("quiet"), None, "no subscriber, no history: gone");
        assert_eq!(h.epoch_of("kept").as_deref(), Some(epoch.as_str()), "subscribed: kept, numbering too");
        assert_eq!(h.inner.metrics.hub_history_messages.get(), 0);
        assert_eq!(channel_count(&h), 1);
        let (sub, _rx) = subscriber(2, 16, None);
        let s = h.subscribe("kept", sub, Some(&Position { epoch, offset: 0 })).unwrap();
        assert!(!s.recovered, "the missed message's history was dropped");
    }

    /// Over the memory budget, the channels published least recently lose their history first.
    #[test]
    fn history_stays_within_its_byte_budget() {
        let h = Hub::new(
            HubConfig { history_max_bytes: 2_000, ..config(100) },
            vec![ChannelPattern::Any],
            Metrics::new(),
        );
        let payload = "y".repeat(200);
        for i in 0..20 {
            h.publish(&msg(&format!("c{i}"), &payload), None);
        }
        h.sweep();
        let bytes = h.inner.metrics.hub_history_bytes.get();
        assert!(bytes > 0 && bytes <= 2_000, "{bytes} bytes kept");
        assert!(h.epoch_of("c19").is_some(), "the newest channel keeps its history");
        assert_eq!(h.epoch_of("c0"), None, "the oldest went");
    }

    /// What save writes, load brings back (epochs, offsets, history), and the file is gone after.
    #[test]
    fn save_and_load_keep_the_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let h = hub(10);
        for _ in 0..3 {
            h.publish(&msg("c", "x"), None);
        }
        let epoch = h.epoch_of("c").unwrap();
        assert_eq!(h.save(&path).unwrap(), 1);
        let resumed = hub(10);
        assert_eq!(resumed.load(&path).unwrap(), 1);
        assert!(!path.exists(), "a crash after this start must not resume again");
        assert_eq!(resumed.epoch_of("c").as_deref(), Some(epoch.as_str()));
        assert_eq!(resumed.publish(&msg("c", "x"), None).offset, 4);
        let (sub, _rx) = subscriber(1, 16, None);
        let s = resumed.subscribe("c", sub, Some(&Position { epoch, offset: 1 })).unwrap();
        assert!(s.recovered);
        assert_eq!(offsets(&s.replay), vec![2, 3, 4]);
        assert_eq!(hub(10).load(&path).unwrap(), 0, "no file, nothing to load");
    }

    /// The receipt completes only when every queued frame is gone.
    #[test]
    fn receipt_completes_when_frames_are_dropped() {
        let h = hub(0);
        let (a, mut a_rx) = subscriber(1, 16, None);
        h.subscribe("c", a, None).unwrap();
        let (receipt, mut done) = Receipt::new();
        h.publish(&msg("c", "x"), Some(&receipt));
        drop(receipt);
        assert!(matches!(done.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        drop(a_rx.try_recv().unwrap());
        assert!(matches!(done.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
    }

    fn remote(h: &Hub, epoch: &str, offset: u64) -> RemoteDelivery {
        let frame = format!(
            r#"{{"type":"message","channel":"c","epoch":"{epoch}","offset":{offset},"id":"1","data":{{}}}}"#
        );
        h.deliver_remote(RemoteFrame {
            channel: "c",
            epoch,
            offset,
            target_key: None,
            frame: &frame,
            data: None,
        })
    }

    fn history(epoch: &str, from: u64, to: u64) -> RemoteHistory {
        RemoteHistory {
            epoch: Some(epoch.into()),
            offset: to,
            recovered: true,
            frames: (from..=to).map(|o| (o, None, format!(r#"{{"offset":{o}}}"#))).collect(),
        }
    }

    /// A remote subscribe joins the history read and the frames that came
    /// meanwhile, each offset once, in order.
    #[test]
    fn remote_subscribe_joins_history_and_live_frames() {
        let h = hub(10);
        assert!(matches!(remote(&h, "e1", 1), RemoteDelivery::Delivered(_)));
        let (a, _rx) = subscriber(1, 16, None);
        assert!(h.start_remote_subscribe("c", &a));
        for o in 2..=4 {
            assert!(matches!(remote(&h, "e1", o), RemoteDelivery::Delivered(_)));
        }
        // The history was read when offset 3 was the last.
        let s = h.finish_remote_subscribe("c", a, Some(history("e1", 2, 3)));
        assert!(s.recovered);
        assert_eq!((s.epoch.as_str(), s.offset), ("e1", 4));
        assert_eq!(offsets(&s.replay), vec![2, 3, 4]);
    }

    /// A reset while the history is read (the stream could not fill a gap,
    /// or the numbering restarted) makes the read useless: the subscriber
    /// joins at the node's new position, not recovered, with no gap hidden.
    #[test]
    fn remote_subscribe_across_a_reset_is_not_recovered() {
        let h = hub(10);
        assert!(matches!(remote(&h, "e1", 1), RemoteDelivery::Delivered(_)));
        let (a, _rx) = subscriber(1, 16, None);
        assert!(h.start_remote_subscribe("c", &a));
        h.reset_remote("c", "e1", 50);
        assert!(matches!(remote(&h, "e1", 51), RemoteDelivery::Delivered(_)));
        let s = h.finish_remote_subscribe("c", a, Some(history("e1", 1, 1)));
        assert!(!s.recovered);
        assert_eq!((s.epoch.as_str(), s.offset), ("e1", 51));
        assert!(s.replay.is_empty());

        // A history of another numbering than the node follows.
        let (b, _rx) = subscriber(2, 16, None);
        assert!(h.start_remote_subscribe("c", &b));
        let s = h.finish_remote_subscribe("c", b, Some(history("e2", 1, 2)));
        assert!(!s.recovered);
        assert_eq!((s.epoch.as_str(), s.offset), ("e1", 51));
    }

    /// A subscriber told its channel restarted (a new epoch, or a jump the
    /// stream could not fill) gets every frame of the new numbering after
    /// the notice, however far it had read in the old one.
    #[test]
    fn a_reset_subscriber_receives_the_new_numbering() {
        let h = hub(10);
        for o in 1..=5 {
            remote(&h, "e1", o);
        }
        let (a, mut rx) = subscriber(1, 64, None);
        assert!(h.start_remote_subscribe("c", &a));
        let s = h.finish_remote_subscribe("c", a, Some(history("e1", 5, 5)));
        assert_eq!(s.offset, 5);
        h.reset_remote("c", "e2", 0);
        for o in 1..=2 {
            assert!(matches!(remote(&h, "e2", o), RemoteDelivery::Delivered(1)));
        }
        let mut frames = Vec::new();
        while let Some(out) = rx.try_recv() {
            frames.push(serde_json::from_str::<serde_json::Value>(out.frame.payload_str()).unwrap());
        }
        assert_eq!(frames[0]["type"], "subscribed");
        assert_eq!(frames[0]["recovered"], false);
        let offsets: Vec<u64> = frames[1..].iter().map(|f| f["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, vec![1, 2]);
    }

    /// Subscribing twice to one channel is refused.
    #[test]
    fn double_subscribe_is_refused() {
        let h = hub(10);
        let (a, _rx) = subscriber(1, 16, None);
        h.subscribe("c", a.clone(), None).unwrap();
        assert_eq!(h.subscribe("c", a, None).unwrap_err(), AlreadySubscribed);
    }
}
