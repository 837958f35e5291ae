//! The hub: channel → subscribers, the per-channel offset and history, and the
//! overflow policy.
//!
//! Invariants:
//! - Each channel numbers its messages 1, 2, 3… with no gap, under one
//!   per-process random `epoch` (a restart starts a new epoch).
//! - A message is serialised to its frame once; every subscriber gets a
//!   cheap clone of the same bytes.
//! - Publishing never waits on a subscriber. Each connection has one bounded
//!   queue (`hub.subscriber_queue_size`). **Overflow policy:** when a queue
//!   is full the frame is not queued, the connection is cancelled (its
//!   session closes it with 1013 "try again later") and it leaves every
//!   channel; the client reconnects and recovers from history.
//! - Subscribing with `since` and registering the subscriber happen under the
//!   same lock as publishing, so the replay and the live stream meet with no
//!   gap and no duplicate: the replay holds exactly the offsets up to the
//!   channel's latest at that instant, and every later message goes to the
//!   queue, which the session drains only after it has written the replay.
//! - The lock is a std `Mutex`, never held across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use rand::Rng;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::UserCase;
use crate::message::{ChannelPattern, Message};
use crate::metrics::Metrics;

/// Identifies one WebSocket connection.
pub type ConnId = u64;

/// One frame on its way to one connection.
pub struct Outgoing {
    pub frame: Utf8Bytes,
    /// Held until the frame has been written to the socket (see [`Receipt`]).
    pub receipt: Option<Receipt>,
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
    pub tx: mpsc::Sender<Outgoing>,
    /// Cancelled by the hub when the connection's queue overflows.
    pub kick: CancellationToken,
    /// The authenticated user, matched against a message's `target_user`.
    pub user: Option<Arc<str>>,
    /// Legacy `/` connections only: the channels this one may receive
    /// (`None`: every channel in `legacy.channels`).
    pub permits: Option<Arc<[ChannelPattern]>>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub offset: u64,
    /// Connections the frame was queued to.
    pub delivered: usize,
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
    epoch: String,
    history_size: usize,
    legacy_patterns: Vec<ChannelPattern>,
    user_case: UserCase,
    metrics: Metrics,
}

#[derive(Default)]
struct State {
    channels: HashMap<String, Channel>,
    /// Connections on the legacy `/` endpoint: they get the bare `data`.
    legacy: HashMap<ConnId, Subscriber>,
}

#[derive(Default)]
struct Channel {
    last_offset: u64,
    history: VecDeque<Kept>,
    subscribers: HashMap<ConnId, Subscriber>,
}

/// A published frame kept for recovery.
struct Kept {
    offset: u64,
    target_user: Option<String>,
    frame: Utf8Bytes,
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
    pub fn new(
        history_size: usize,
        legacy_patterns: Vec<ChannelPattern>,
        user_case: UserCase,
        metrics: Metrics,
    ) -> Self {
        let epoch = format!("{:08x}", rand::rng().random::<u32>());
        Self {
            inner: Arc::new(HubInner {
                state: Mutex::new(State::default()),
                epoch,
                history_size,
                legacy_patterns,
                user_case,
                metrics,
            }),
        }
    }

    pub fn epoch(&self) -> &str {
        &self.inner.epoch
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

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps consistent (every
        // mutation is a single insert/remove), so poisoning is not fatal.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers the message, keeps it for recovery and queues its frame to
    /// every matching subscriber, without ever waiting on one.
    pub fn publish(&self, msg: &Message, receipt: Option<&Receipt>) -> Published {
        let metrics = &self.inner.metrics;
        let mut state = self.state();
        let State { channels, legacy } = &mut *state;
        let channel = channels.entry(msg.channel.clone()).or_default();
        channel.last_offset += 1;
        let offset = channel.last_offset;
        let frame: Utf8Bytes = serde_json::to_string(&MessageFrame {
            kind: "message",
            channel: &msg.channel,
            epoch: &self.inner.epoch,
            offset,
            id: &msg.id,
            data: &msg.data,
        })
        .expect("a frame of strings and raw JSON serialises")
        .into();

        // Compared in the form `auth.user_case` gives (subscribers' users are
        // kept in that form too).
        let target_key = msg.target_user.as_deref().map(|u| self.inner.user_case.key(u));
        let target = target_key.as_deref();
        let mut delivered = 0;
        channel.subscribers.retain(|_, sub| {
            if !may_receive(sub, target) {
                return true;
            }
            let kept = deliver(sub, &frame, receipt, metrics);
            delivered += usize::from(kept);
            if !kept {
                metrics.subscriptions.dec();
            }
            kept
        });

        if !legacy.is_empty() && self.inner.legacy_patterns.iter().any(|p| p.matches(&msg.channel)) {
            let bare: Utf8Bytes = msg.data.get().into();
            legacy.retain(|_, sub| {
                let permitted =
                    sub.permits.as_ref().is_none_or(|p| p.iter().any(|p| p.matches(&msg.channel)));
                if !permitted || !may_receive(sub, target) {
                    return true;
                }
                let kept = deliver(sub, &bare, receipt, metrics);
                delivered += usize::from(kept);
                kept
            });
        }

        if self.inner.history_size > 0 {
            channel.history.push_back(Kept { offset, target_user: target_key, frame });
            while channel.history.len() > self.inner.history_size {
                channel.history.pop_front();
            }
        }
        Published { offset, delivered }
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
        let channel = state.channels.entry(channel_name.to_owned()).or_default();
        if channel.subscribers.contains_key(&sub.conn) {
            return Err(AlreadySubscribed);
        }
        let (recovered, replay) = match since {
            None => (false, Vec::new()),
            Some(pos) => self.recover(channel, pos, sub.user.as_deref()),
        };
        channel.subscribers.insert(sub.conn, sub);
        self.inner.metrics.subscriptions.inc();
        Ok(Subscribed { epoch: self.inner.epoch.clone(), offset: channel.last_offset, recovered, replay })
    }

    fn recover(&self, channel: &Channel, since: &Position, user: Option<&str>) -> (bool, Vec<Utf8Bytes>) {
        if since.epoch != self.inner.epoch || since.offset > channel.last_offset {
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

    /// Adds a connection of the legacy `/` endpoint.
    pub fn add_legacy(&self, sub: Subscriber) {
        self.state().legacy.insert(sub.conn, sub);
    }

    /// The channel's latest offset (0 when nothing was published yet).
    pub fn last_offset(&self, channel_name: &str) -> u64 {
        self.state().channels.get(channel_name).map_or(0, |c| c.last_offset)
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
fn deliver(sub: &Subscriber, frame: &Utf8Bytes, receipt: Option<&Receipt>, metrics: &Metrics) -> bool {
    let outgoing = Outgoing { frame: frame.clone(), receipt: receipt.cloned() };
    match sub.tx.try_send(outgoing) {
        Ok(()) => {
            metrics.deliveries.inc();
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics.dropped.inc();
            metrics.slow_consumers.inc();
            sub.kick.cancel();
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// A channel with no subscribers and no history holds nothing worth keeping.
fn drop_if_idle(channels: &mut HashMap<String, Channel>, name: &str) {
    if channels.get(name).is_some_and(|c| c.subscribers.is_empty() && c.history.is_empty()) {
        channels.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(history: usize) -> Hub {
        Hub::new(history, vec![ChannelPattern::Any], UserCase::Insensitive, Metrics::new())
    }

    fn subscriber(conn: ConnId, queue: usize, user: Option<&str>) -> (Subscriber, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(queue);
        (
            Subscriber { conn, tx, kick: CancellationToken::new(), user: user.map(Arc::from), permits: None },
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
        let v: serde_json::Value = serde_json::from_str(&out.frame).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"message","channel":"emp","epoch":h.epoch(),"offset":1,"id":"1","data":{"message":"REFRESH"}})
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
        let pos = Position { epoch: h.epoch().into(), offset: 3 };
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
            Position { epoch: h.epoch().into(), offset: 11 },
            Position { epoch: h.epoch().into(), offset: 6 },
        ];
        for (i, pos) in cases.iter().enumerate() {
            let (sub, _rx) = subscriber(i as u64, 16, None);
            let s = h.subscribe("c", sub, Some(pos)).unwrap();
            assert!(!s.recovered, "{pos:?}");
            assert!(s.replay.is_empty());
        }
        let (sub, _rx) = subscriber(99, 16, None);
        let s = h.subscribe("c", sub, Some(&Position { epoch: h.epoch().into(), offset: 7 })).unwrap();
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
        while fast_rx.try_recv().is_ok() {
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
        assert!(alice_rx.try_recv().is_ok());
        assert!(bob_rx.try_recv().is_err() && anon_rx.try_recv().is_err());
        let (late_bob, _rx) = subscriber(4, 16, Some("bob"));
        let s = h.subscribe("c", late_bob, Some(&Position { epoch: h.epoch().into(), offset: 0 })).unwrap();
        assert!(s.recovered && s.replay.is_empty());
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

    /// Subscribing twice to one channel is refused.
    #[test]
    fn double_subscribe_is_refused() {
        let h = hub(10);
        let (a, _rx) = subscriber(1, 16, None);
        h.subscribe("c", a.clone(), None).unwrap();
        assert_eq!(h.subscribe("c", a, None).unwrap_err(), AlreadySubscribed);
    }
}
