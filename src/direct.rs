//! Writes the hub's frames straight to idle connections' sockets, without
//! waking their tasks.
//!
//! A session with nothing to do lends its socket to its queue (see
//! [`crate::queue`]). When the hub pushes a frame into such a queue, the
//! push wakes nobody; the hub hands the queue to the [`DirectWriter`],
//! whose one task writes what each queue holds with non-blocking
//! `sendmsg`s (one per 64 frames; one, between bursts). A message to 10,000 idle connections then costs 10,000
//! `sendmsg` calls from one loop, rather than 10,000 task wake-ups, turns
//! and writes (the turns were most of orapush's own share of a fan-out).
//! What a socket does not take at once goes back to its session, which
//! waits for room as before, under its write timeout and the hub's kick.
//!
//! The writer's task runs outside the hub's lock, yields every
//! [`YIELD_EVERY`] connections (so a fan-out to thousands of connections
//! lets the worker's other tasks run), writes at most a few batches to one
//! connection before it moves on (one a publisher keeps refilling goes
//! back at the end of the list), and ends when the hub is dropped. Should
//! it end otherwise (a panic), every queue handed to it, then or later,
//! is handed back to its session, and sessions stop lending.
//!
//! **Overflow policy:** none is needed. A queue is handed over only by a
//! push that found it empty and lent: at most once per message it gets,
//! and about once per pass of the writer (it stays non-empty until the
//! writer has written it or handed the socket back). A queue handed over
//! again meanwhile, or whose session took its socket back, is skipped at
//! the cost of a lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::IntCounter;
use tokio::sync::Notify;

use crate::hub::Outgoing;
use crate::queue::QueueSender;

/// Connections written between two yields of the writer's task. Each
/// yield lets the worker poll its sockets and run what they woke: a
/// publish among them queues its frame behind the connections not yet
/// written, which then take both in one write. In a burst of publishes,
/// the fewer connections between yields, the more frames each write
/// carries (at 128, tokio's budget, writes carried half as many).
const YIELD_EVERY: usize = 32;

/// The hub's handle on the writer task (see the module doc).
pub struct DirectWriter {
    shared: Arc<Shared>,
}

struct Shared {
    /// Queues with frames to write, in the order they were handed over.
    due: Mutex<Vec<QueueSender<Outgoing>>>,
    /// Rung when `due` gains queues, and when the hub goes.
    ring: Notify,
    /// The task has ended, or is to end (the hub is gone): nothing more is
    /// written, and what is handed over goes back to its session.
    closed: AtomicBool,
}

impl Shared {
    fn due(&self) -> std::sync::MutexGuard<'_, Vec<QueueSender<Outgoing>>> {
        self.due.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `queues` to the end of the list and rings the task.
    fn add(&self, queues: Vec<QueueSender<Outgoing>>) {
        let mut due = self.due();
        if due.is_empty() {
            *due = queues;
        } else {
            due.extend(queues);
        }
        drop(due);
        self.ring.notify_one();
    }

    /// Once closed: gives every queue in the list its socket back (its
    /// session then writes it).
    fn give_back_if_closed(&self) {
        if self.closed.load(Ordering::SeqCst) {
            for queue in std::mem::take(&mut *self.due()) {
                queue.give_back_lent();
            }
        }
    }
}

impl DirectWriter {
    /// Starts the writer's task on the current tokio runtime, counting the
    /// frames it writes in `written`; `None` outside a runtime (sessions
    /// then never lend their sockets).
    pub fn start(written: IntCounter) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let shared = Arc::new(Shared {
            due: Mutex::new(Vec::new()),
            ring: Notify::new(),
            closed: AtomicBool::new(false),
        });
        runtime.spawn(write_due(shared.clone(), written));
        Some(Self { shared })
    }

    /// Whether the task still writes (it ends with the hub, or if it
    /// panicked): sessions lend their sockets only while it does.
    pub fn is_running(&self) -> bool {
        !self.shared.closed.load(Ordering::SeqCst)
    }

    /// Has the queues' frames written (queues whose receiver took its
    /// socket back meanwhile are skipped: their task writes them).
    pub fn hand_over(&self, queues: Vec<QueueSender<Outgoing>>) {
        if queues.is_empty() {
            return;
        }
        self.shared.add(queues);
        // Checked after the add: a task that ended before it gave back
        // what it had, and this gives back the rest.
        self.shared.give_back_if_closed();
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.ring.notify_one();
    }
}

/// Ends the writer: marks it closed, then gives back what is due. Dropped
/// with the task's future, whether it returned, panicked or the runtime
/// went away.
struct OnEnd(Arc<Shared>);

impl Drop for OnEnd {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.give_back_if_closed();
    }
}

/// The writer's task: writes every queue handed over, in order; a queue
/// with more left after its turn goes to the end of the list.
async fn write_due(shared: Arc<Shared>, written: IntCounter) {
    let _on_end = OnEnd(shared.clone());
    loop {
        shared.ring.notified().await;
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let due = std::mem::take(&mut *shared.due());
        let mut again = Vec::new();
        for (n, queue) in due.into_iter().enumerate() {
            if n % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
            let write = queue.write_lent();
            written.inc_by(write.frames as u64);
            if write.more {
                again.push(queue);
            }
        }
        if !again.is_empty() {
            shared.add(again);
        }
    }
}
