//! The drain algorithm, written once for every outbox store.
//!
//! One pass: claim a batch in id order → turn each row into a [`Message`]
//! (rows that can never be delivered become dead letters and never block the
//! rows behind them) → hand the messages to the hub, in order, over a bounded
//! channel and wait until the hub has queued them → delete exactly what was
//! handed over, move the dead letters, commit. A crash anywhere before the
//! commit rolls back and the rows are delivered again: at-least-once.
//!
//! Between passes: no wait while batches come back full; otherwise wait
//! `source.poll_interval_ms` (or less, when the store can signal new rows).
//! Transient errors drop the connection and retry after a capped
//! exponential backoff; fatal ones end the drainer and the process.
//!
//! The hand-over channel holds [`HANDOFF_QUEUE`] batches; the drainer waits
//! for each batch's acknowledgement, so at most one batch is ever in flight
//! and the channel can never overflow.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::{DeadLetter, ErrorClass, OutboxStore, SourceError, SourceStatus, Stopper};
use crate::broker::SharedBroker;
use crate::hub::{Hub, Receipt};
use crate::message::Message;
use crate::metrics::Metrics;

/// Batches that may wait in the hand-over channel.
pub const HANDOFF_QUEUE: usize = 1;

/// Limits of one pass.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    pub batch_size: usize,
    pub max_message_bytes: usize,
    pub poll_interval: Duration,
    pub max_backoff: Duration,
    /// How often a standby tries to take the outbox over.
    pub standby_retry: Duration,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOutcome {
    /// The outbox was empty.
    Empty,
    /// Rows were handed over (`delivered`) or dead-lettered (`dead`).
    Drained { delivered: usize, dead: usize, full: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The hub side is gone (shutdown); nothing was deleted.
    #[error("the hub stopped accepting messages")]
    HubClosed,
    /// The broker (Redis) did not take the batch; nothing was deleted.
    #[error("the broker did not take the batch: {0}")]
    Broker(String),
}

/// A batch on its way to the hub, with the channel to acknowledge it on
/// (an error: the broker did not take it, so its rows must stay).
pub struct Batch {
    pub messages: Vec<Message>,
    pub ack: oneshot::Sender<Result<(), String>>,
    pub kind: BatchKind,
}

/// What a hand-over carries: messages, or a change of the drainer's role
/// that the async side acts on before the drainer goes on (the hub's saved
/// state is only true while nobody else drained since it was saved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    Messages,
    /// This instance took the drain lock: a state file another instance
    /// saved meanwhile is stale.
    Active,
    /// Another instance drains: what this hub resumed is stale.
    Standby,
    /// The drainer stops while it still holds the lock: nothing is numbered
    /// after this and nobody else drains yet, so the state can be saved.
    Stopping,
    /// The last batch's rows are deleted from the outbox: they can no
    /// longer be handed over again (the broker forgets their numbers). Not
    /// acknowledged: the drainer goes on at once.
    Committed,
}

/// The drainer's end of the hand-over channel.
#[derive(Clone)]
pub struct Handoff {
    tx: mpsc::Sender<Batch>,
}

impl Handoff {
    pub fn channel() -> (Self, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
        (Self { tx }, rx)
    }

    /// Hands the messages over and blocks until the hub has queued them.
    pub fn hand_over(&self, messages: Vec<Message>) -> Result<(), PassError> {
        let (ack, acked) = oneshot::channel();
        let batch = Batch { messages, ack, kind: BatchKind::Messages };
        self.tx.blocking_send(batch).map_err(|_| PassError::HubClosed)?;
        acked.blocking_recv().map_err(|_| PassError::HubClosed)?.map_err(PassError::Broker)
    }

    /// Tells the async side that the last batch's rows left the outbox.
    pub fn committed(&self) {
        let (ack, _) = oneshot::channel();
        let _ = self.tx.blocking_send(Batch { messages: Vec::new(), ack, kind: BatchKind::Committed });
    }

    /// Tells the async side the drainer's role changed (or that it stops
    /// while holding the lock), and waits until it has acted on that.
    pub fn announce(&self, kind: BatchKind) {
        let (ack, acked) = oneshot::channel();
        if self.tx.blocking_send(Batch { messages: Vec::new(), ack, kind }).is_ok() {
            let _ = acked.blocking_recv();
        }
    }
}

/// The async side of the hand-over: publishes each batch into the hub, waits
/// (at most `flush_wait`) until its frames left the process, acknowledges.
/// With a shared broker the batch goes to Redis instead (every node, this
/// one too, delivers it from there), and is acknowledged once Redis has
/// every message: an error keeps the rows in the outbox. When the drainer
/// stops while draining, the hub's state is saved to `save_to` (a graceful
/// stop: the next start resumes it), before the drain lock is released.
pub async fn dispatch(
    mut batches: mpsc::Receiver<Batch>,
    hub: Hub,
    broker: Option<SharedBroker>,
    metrics: Metrics,
    flush_wait: Duration,
    save_to: Option<std::path::PathBuf>,
) {
    // The records of the last batch Redis took, until the outbox deleted its rows.
    let mut unconfirmed: Vec<(String, String)> = Vec::new();
    // Records of deleted rows that a forget could not remove (Redis was
    // out of reach): retried after the next commit.
    let mut unforgotten: Vec<(String, String)> = Vec::new();
    while let Some(batch) = batches.recv().await {
        if batch.kind == BatchKind::Committed {
            let node = broker.as_ref().and_then(SharedBroker::node);
            if let (Some(node), false) = (node, unconfirmed.is_empty()) {
                // Awaited: the next batch's call must not find these
                // records (it would read them for nothing).
                let records = std::mem::take(&mut unconfirmed);
                if !node.forget(&records).await {
                    unforgotten.extend(records);
                }
            }
            continue;
        }
        if batch.kind != BatchKind::Messages {
            if let Some(path) = &save_to {
                saved_state(batch.kind, &hub, path);
            }
            let _ = batch.ack.send(Ok(()));
            continue;
        }
        if let Some(broker) = &broker {
            // What Redis could not be told last time is retried with this
            // batch's records (deleted rows; their records only cost reads).
            // (A batch published but never committed keeps its records:
            // its rows are still in the outbox and may come again.)
            unconfirmed = std::mem::take(&mut unforgotten);
            let result = match broker.node() {
                Some(node) => match node.publish_batch(&batch.messages).await {
                    Ok(published) => {
                        unconfirmed.extend(published.records);
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                },
                None => Err("Redis has not been reached yet".to_string()),
            };
            if result.is_err() {
                unforgotten = std::mem::take(&mut unconfirmed);
            }
            if result.is_ok() {
                metrics.messages_drained.inc_by(batch.messages.len() as u64);
            }
            let _ = batch.ack.send(result);
            continue;
        }
        let (receipt, flushed) = Receipt::new();
        metrics.messages_drained.inc_by(batch.messages.len() as u64);
        for message in &batch.messages {
            hub.publish(message, Some(&receipt));
        }
        drop(receipt);
        // A slow socket must not hold the outbox back for long; the rows are
        // in the hub already, which is the guarantee. This wait only narrows
        // the window in which a crash loses frames still in our buffers.
        let _ = tokio::time::timeout(flush_wait, flushed).await;
        let _ = batch.ack.send(Ok(()));
    }
}

/// Keeps the hub's saved state honest when several instances share an
/// outbox: what a stopped instance saved is only true for the instance that
/// drains right after it. No client is then told it recovered when it did
/// not.
fn saved_state(kind: BatchKind, hub: &Hub, path: &std::path::Path) {
    match kind {
        BatchKind::Stopping => match hub.save(path) {
            Ok(channels) => info!(path = %path.display(), channels, "saved the channels for the next start"),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "could not save the channels; the next start begins new epochs")
            }
        },
        BatchKind::Active => match std::fs::remove_file(path) {
            Ok(()) => info!(path = %path.display(), "removed channel state another instance saved"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %path.display(), error = %e, "could not remove stale channel state"),
        },
        BatchKind::Standby => {
            if hub.forget_resumed() {
                info!("another instance drains the outbox: the resumed channels start new epochs");
            }
        }
        BatchKind::Messages | BatchKind::Committed => {}
    }
}

/// One pass of the outbox contract.
pub fn drain_pass(
    store: &mut dyn OutboxStore,
    handoff: &Handoff,
    config: &DrainConfig,
    metrics: &Metrics,
) -> Result<PassOutcome, PassError> {
    metrics.outbox_claims.inc();
    let rows = store.claim(config.batch_size)?;
    if rows.is_empty() {
        metrics.outbox_lag_seconds.set(0.0);
        return Ok(PassOutcome::Empty);
    }
    let full = rows.len() >= config.batch_size;
    let oldest_age = rows.iter().map(|r| r.age_seconds).fold(0.0, f64::max);
    metrics.outbox_lag_seconds.set(oldest_age);

    let mut messages = Vec::with_capacity(rows.len());
    let mut handed_ids = Vec::with_capacity(rows.len());
    let mut dead = Vec::new();
    for row in rows {
        match Message::from_row(&row, config.max_message_bytes) {
            Ok(message) => {
                handed_ids.push(row.id);
                messages.push(message);
            }
            Err(reason) => {
                warn!(id = row.id, channel = %row.channel, %reason, "moving row to the dead-letter table");
                dead.push(DeadLetter { row, reason: reason.to_string() });
            }
        }
    }

    if !messages.is_empty() {
        if let Err(e) = handoff.hand_over(messages) {
            store.abort();
            return Err(e);
        }
    }
    store.complete(&handed_ids, &dead)?;
    if !handed_ids.is_empty() {
        handoff.committed();
    }
    metrics.dead_lettered.inc_by(dead.len() as u64);
    Ok(PassOutcome::Drained { delivered: handed_ids.len(), dead: dead.len(), full })
}

/// Capped exponential backoff: 100 ms, 200 ms, … up to the cap.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    const START: Duration = Duration::from_millis(100);

    pub fn new(cap: Duration) -> Self {
        Self { next: Self::START, cap }
    }
    pub fn reset(&mut self) {
        self.next = Self::START;
    }
    /// The delay to wait now; doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next.min(self.cap);
        self.next = (self.next * 2).min(self.cap);
        delay
    }
}

/// The drainer's loop, run on its own thread until `stop` fires, the hub
/// closes, or a fatal error happens (returned). It connects (and reconnects)
/// through `connect`; transient connection errors are retried with backoff.
pub fn run_drainer<S, F>(
    mut connect: F,
    handoff: Handoff,
    config: DrainConfig,
    status: SourceStatus,
    metrics: Metrics,
    stop: Stopper,
) -> Result<(), SourceError>
where
    S: OutboxStore,
    F: FnMut() -> Result<S, SourceError>,
{
    let mut store: Option<S> = None;
    let mut backoff = Backoff::new(config.max_backoff);
    let mut standing_by = false;
    while !stop.is_stopped() {
        let current = match store.as_mut() {
            Some(s) => s,
            None => match connect() {
                Ok(s) => {
                    info!("source connected; this instance drains the outbox");
                    handoff.announce(BatchKind::Active);
                    standing_by = false;
                    status.set_active();
                    metrics.source_active.set(1);
                    metrics.source_connected.set(1);
                    store.insert(s)
                }
                Err(e) if e.class == ErrorClass::Standby => {
                    if !standing_by {
                        info!(reason = %e, "standing by");
                        handoff.announce(BatchKind::Standby);
                        standing_by = true;
                    }
                    status.set_standby(&e.message);
                    metrics.source_active.set(0);
                    metrics.source_connected.set(1);
                    backoff.reset();
                    if !e.waited {
                        stop.sleep(config.standby_retry);
                    }
                    continue;
                }
                Err(e) => {
                    fail(&e, &status, &metrics);
                    if e.is_fatal() {
                        return Err(e);
                    }
                    stop.sleep(backoff.next_delay());
                    continue;
                }
            },
        };
        let waited = match drain_pass(current, &handoff, &config, &metrics) {
            Ok(PassOutcome::Drained { full: true, .. }) => {
                backoff.reset();
                collect_stats(current, &status);
                continue;
            }
            Ok(outcome) => {
                backoff.reset();
                debug!(?outcome, "pass done");
                collect_stats(current, &status);
                current.wait_for_work(config.poll_interval, &stop)
            }
            Err(PassError::HubClosed) => break,
            Err(PassError::Broker(why)) => {
                // The database is fine; the rows wait in it until the broker
                // takes them again.
                metrics.source_errors.inc();
                warn!(error = %why, "the broker did not take a batch; its rows stay in the outbox");
                stop.sleep(backoff.next_delay());
                continue;
            }
            Err(PassError::Source(e)) => Err(e),
        };
        if let Err(e) = waited {
            fail(&e, &status, &metrics);
            if e.is_fatal() {
                return Err(e);
            }
            // Dropping the store closes the connection; an open transaction
            // rolls back, so the claimed rows stay in the outbox.
            store = None;
            stop.sleep(backoff.next_delay());
        }
    }
    if store.is_some() {
        // Still holding the drain lock: the last word on the numbering.
        handoff.announce(BatchKind::Stopping);
    }
    metrics.source_active.set(0);
    info!("drainer stopped");
    Ok(())
}

/// Collects the status page's figures between passes, when someone looks.
fn collect_stats(store: &mut dyn OutboxStore, status: &SourceStatus) {
    if !status.stats_due() {
        return;
    }
    match store.stats() {
        Ok(stats) => status.set_stats(stats),
        Err(e) => {
            debug!(error = %e, "could not collect the status figures");
            status.stats_failed();
        }
    }
}

fn fail(e: &SourceError, status: &SourceStatus, metrics: &Metrics) {
    metrics.source_errors.inc();
    metrics.source_connected.set(0);
    metrics.source_active.set(0);
    status.set_down(&e.message);
    if e.is_fatal() {
        error!(error = %e, "source failed; stopping");
    } else {
        warn!(error = %e, "source error; retrying");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NeverConnected;

    impl OutboxStore for NeverConnected {
        fn claim(&mut self, _: usize) -> Result<Vec<crate::message::OutboxRow>, SourceError> {
            unreachable!("never connected")
        }
        fn complete(&mut self, _: &[i64], _: &[DeadLetter]) -> Result<(), SourceError> {
            unreachable!("never connected")
        }
        fn abort(&mut self) {}
        fn stats(&mut self) -> Result<crate::source::StoreStats, SourceError> {
            unreachable!("never connected")
        }
    }

    /// A standby answer given after the store waited itself is asked again at once, not after standby_retry.
    #[test]
    fn a_waited_standby_retries_at_once() {
        let (handoff, mut batches) = Handoff::channel();
        // The async side: acknowledges whatever comes (role announcements).
        let acks = std::thread::spawn(move || {
            while let Some(batch) = batches.blocking_recv() {
                let _ = batch.ack.send(Ok(()));
            }
        });
        let config = DrainConfig {
            batch_size: 10,
            max_message_bytes: 1024,
            poll_interval: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            standby_retry: Duration::from_secs(3600),
        };
        let stop = Stopper::default();
        let status = SourceStatus::default();
        let mut calls = 0;
        let connect = || -> Result<NeverConnected, SourceError> {
            calls += 1;
            if calls == 5 {
                stop.stop();
            }
            Err(SourceError::standby_after_wait("another drainer"))
        };
        let started = std::time::Instant::now();
        run_drainer(connect, handoff, config, status.clone(), Metrics::new(), stop.clone()).unwrap();
        acks.join().unwrap();
        assert_eq!(calls, 5);
        assert!(started.elapsed() < Duration::from_secs(60), "it slept standby_retry");
        assert_eq!(status.snapshot().role, crate::source::Role::Standby);
    }

    /// Backoff doubles from 100 ms and stays at the cap; reset starts over.
    #[test]
    fn backoff_is_capped_exponential() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
