//! Which of a session's waits woke it: the queue, or one of the others.
//!
//! A session waits on its queue of frames from the hub and on five other
//! things (shutdown, the hub's kick, the token's expiry, the client's
//! frames, the ping tick). A delivery the session writes itself (the
//! hub's writer writes to idle sessions' sockets without waking them, see
//! [`crate::direct`]) wakes it through the queue alone, yet
//! a `select!` polls every wait again, on the wake and once more to wait
//! again, and each of those polls touches memory of its own (a lock, a
//! timer entry, the socket's registration). At 10,000 subscribers of a
//! fan-out that was a third of the server's user time.
//!
//! So the session polls the other waits with a [`WakeGroup`]'s waker. It
//! wakes the task like the task's own waker, and records that it did, so
//! the session polls the group only after such a wake ([`WakeGroup::due`])
//! or after one of its waits completed (which must be polled again before
//! it waits again: [`WakeGroup::poll_all_next`]). A turn that stops at the
//! queue leaves the waits after it to the next turn
//! ([`WakeGroup::poll_after_queue_next`]), not the whole group: a burst
//! after a wake does not poll the shared shutdown token on every batch.
//! Between those, each wait keeps the group's waker from its last poll, so
//! no wake is missed.
//!
//! The group's waker and its "fired" flag are the session's queue's (see
//! [`QueueReceiver::side_waker`]): a turn then looks at one piece of
//! memory, the queue's, to learn what woke it. (With a flag of its own,
//! that second fetch was the session's largest user-space cost per
//! delivery in a fan-out to 10,000.)

use std::task::{Context, Waker};

use crate::queue::QueueReceiver;

/// A waker for a group of waits, whose queue remembers that it fired (see the module doc).
pub struct WakeGroup {
    /// The queue's side waker, made once.
    waker: Waker,
    /// What the next turn owes, woken or not: the whole group after one
    /// of its waits completed (and on the first turn), the waits after the
    /// queue after a turn that polled the whole group stopped at it.
    owed: Due,
}

/// Which of the group's waits a turn must poll.
/// (Ordered: a turn owing more polls more.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Due {
    /// None: only the queue woke the task.
    Nothing,
    /// Those after the queue (in the session's order of precedence): the
    /// others were polled on an earlier turn and still wait.
    AfterQueue,
    /// All of them.
    All,
}

impl WakeGroup {
    /// A group that wakes `queue`'s task, whose waits are all polled on
    /// the first turn.
    pub fn new<T: Send + 'static>(queue: &QueueReceiver<T>) -> Self {
        Self { waker: queue.side_waker(), owed: Due::All }
    }

    /// Which of the group's waits must be polled on this turn of the task
    /// whose context is `cx`: all of them if one woke it since the last
    /// turn or [`Self::poll_all_next`] asked for it, those after the queue
    /// if [`Self::poll_after_queue_next`] did. Registers the task with
    /// `queue` first (if its waker changed), so a wake that comes while
    /// the group is being polled wakes it again.
    pub fn due<T>(&mut self, queue: &mut QueueReceiver<T>, cx: &Context<'_>) -> Due {
        queue.register(cx);
        let woken = queue.take_side_woken();
        let owed = std::mem::replace(&mut self.owed, Due::Nothing);
        if woken {
            Due::All
        } else {
            owed
        }
    }

    /// The waker the group's waits are polled with.
    pub fn waker(&self) -> &Waker {
        &self.waker
    }

    /// One of the group's waits completed: poll them all on the next turn
    /// (the one that completed must be polled again to wait again).
    pub fn poll_all_next(&mut self) {
        self.owed = Due::All;
    }

    /// The turn stopped at the queue before the waits after it were
    /// polled: poll those on the next turn.
    pub fn poll_after_queue_next(&mut self) {
        self.owed = self.owed.max(Due::AfterQueue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::frame_queue;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Due on the first turn; then only after the group's waker fired (which
    /// also wakes the task) or when asked; a turn asked to poll after the
    /// queue polls those waits once.
    #[test]
    fn due_after_its_waker_fired_or_when_asked() {
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let cx = Context::from_waker(&task_waker);
        let (_tx, mut queue) = frame_queue::<()>(4);
        let mut group = WakeGroup::new(&queue);
        assert_eq!(group.due(&mut queue, &cx), Due::All, "the first turn polls everything");
        assert_eq!(group.due(&mut queue, &cx), Due::Nothing);
        group.waker().wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the group's wake wakes the task");
        assert_eq!(group.due(&mut queue, &cx), Due::All);
        assert_eq!(group.due(&mut queue, &cx), Due::Nothing, "a wake is seen once");
        group.poll_all_next();
        assert_eq!(group.due(&mut queue, &cx), Due::All);
        group.poll_after_queue_next();
        assert_eq!(group.due(&mut queue, &cx), Due::AfterQueue);
        assert_eq!(group.due(&mut queue, &cx), Due::Nothing);
        // A wake outranks a turn owed after the queue.
        group.poll_after_queue_next();
        group.waker().wake_by_ref();
        assert_eq!(group.due(&mut queue, &cx), Due::All);
        assert_eq!(group.due(&mut queue, &cx), Due::Nothing);
        // The task's waker is kept across wakes: each one wakes the task.
        group.waker().wake_by_ref();
        group.waker().wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 4);
        assert_eq!(group.due(&mut queue, &cx), Due::All);
        // A task whose waker changed is woken through the new one.
        let moved = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let moved_waker = Waker::from(moved.clone());
        assert_eq!(group.due(&mut queue, &Context::from_waker(&moved_waker)), Due::Nothing);
        group.waker().wake_by_ref();
        assert_eq!((task.0.load(Ordering::SeqCst), moved.0.load(Ordering::SeqCst)), (4, 1));
    }
}
