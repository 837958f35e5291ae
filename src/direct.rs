//! Writes the hub's frames straight to idle connections' sockets, without
//! waking their tasks.
//!
//! A session with nothing to do lends its socket to its queue (see
//! [`crate::queue`]). When the hub pushes a frame into such a queue, the
//! push wakes nobody; the hub hands the queue to the [`DirectWriter`],
//! whose one task writes what each queue holds with one non-blocking
//! `sendmsg`. A message to 10,000 idle connections then costs 10,000
//! `sendmsg` calls from one loop, rather than 10,000 task wake-ups, turns
//! and writes (the turns were most of orapush's own share of a fan-out).
//! What a socket does not take at once goes back to its session, which
//! waits for room as before, under its write timeout and the hub's kick.
//!
//! The writer's task runs outside the hub's lock, yields every
//! [`YIELD_EVERY`] connections (so a fan-out to thousands of connections
//! lets the worker's other tasks run), and ends when the hub is dropped.
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
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    /// Queues with frames to write, in the order they were handed over.
    due: Mutex<Vec<QueueSender<Outgoing>>>,
    /// Rung when `due` gains queues, and when the hub goes.
    ring: Notify,
    /// The hub is gone: the task ends.
    closed: AtomicBool,
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
        let task = runtime.spawn(write_due(shared.clone(), written));
        Some(Self { shared, task })
    }

    /// Whether the task still runs (it ends only with the hub, or if it
    /// panicked: sessions must then not lend their sockets).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Has the queues' frames written (queues whose receiver took its
    /// socket back meanwhile are skipped: their task writes them).
    pub fn hand_over(&self, queues: Vec<QueueSender<Outgoing>>) {
        if queues.is_empty() {
            return;
        }
        let mut due = self.shared.due.lock().unwrap_or_else(PoisonError::into_inner);
        if due.is_empty() {
            *due = queues;
        } else {
            due.extend(queues);
        }
        drop(due);
        self.shared.ring.notify_one();
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.ring.notify_one();
    }
}

/// The writer's task: writes every queue handed over, in order.
async fn write_due(shared: Arc<Shared>, written: IntCounter) {
    loop {
        shared.ring.notified().await;
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let due = std::mem::take(&mut *shared.due.lock().unwrap_or_else(PoisonError::into_inner));
        for (n, queue) in due.into_iter().enumerate() {
            if n % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
            written.inc_by(queue.write_lent() as u64);
        }
    }
}
