//! A connection's queue of frames from the hub: bounded, and holding no
//! memory while it is empty.
//!
//! The hub pushes (under its own lock, never waiting on the connection; at
//! most on one write to a lent socket, see below) and the connection's
//! task takes what is queued, a batch at a time. Only a push into an empty
//! queue wakes the task, so a burst wakes it once, not once per frame.
//! tokio's `mpsc` would do, but it allocates a block of 32 slots up front,
//! about 1.8 KiB with its channel, for every connection, most of which sit
//! idle: a plain `VecDeque` behind a mutex allocates on the first
//! frame, and gives a large buffer back once a burst has been written.
//!
//! The receiver's task usually waits on other things too (see
//! `ws::wake_group`). [`QueueReceiver::side_waker`] gives those a waker
//! for the same task that records that it fired. It lives in the queue's
//! allocation, beside its lock, so that a turn of a task with thousands
//! of siblings fetches one piece of memory to learn both what is queued
//! and whether anything else woke it.
//!
//! A connection whose task is idle lends its socket to the queue
//! ([`QueueReceiver::lend`]): a push into the empty queue then wakes
//! nobody and tells the hub to have the frames written straight to that
//! socket ([`QueueSender::write_lent`], see [`crate::direct`]), so a
//! message to thousands of idle connections costs a `sendmsg` each, not a
//! task's turn each. Whatever a lent socket does not take at once goes
//! back to the task: the queue hands its socket back and wakes it, and
//! the task writes the unsent end of the frame the write stopped in
//! ([`QueueReceiver::reclaim`]) before anything else.
//!
//! **Overflow policy:** [`QueueSender::try_send`] refuses a frame when the
//! queue holds `capacity` frames (`hub.subscriber_queue_size`); the hub then
//! closes that connection as too slow (1013). Nothing else waits or drops.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

/// A queue that has written a burst keeps at most this many slots once it
/// is empty again.
const KEEP_WHEN_EMPTY: usize = 16;

/// Frames written to a lent socket per `sendmsg` at most.
const LENT_WRITE_BATCH: usize = 64;

/// `sendmsg`s to one lent socket per [`QueueSender::write_lent`] at most,
/// so a queue that a publisher keeps refilling does not hold the writer.
const LENT_WRITES_PER_CALL: usize = 4;

/// What one [`QueueSender::write_lent`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct LentWrite {
    /// Items the socket took whole.
    pub frames: usize,
    /// The socket is still lent and items are left: call again later.
    pub more: bool,
}

/// What a queue's items are, for writing them to a lent socket.
pub trait Wire {
    /// The item's bytes on the wire.
    fn wire(&self) -> &[u8];
    /// The item without its first `sent` bytes (a write stopped inside it).
    fn rest_after(self, sent: usize) -> Self;
}

/// A bounded queue of `capacity` items (see the module doc).
pub fn frame_queue<T>(capacity: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            receiver_gone: false,
            waker: None,
            lent: None,
            rest: None,
        }),
        capacity,
        side_woken: AtomicBool::new(false),
    });
    (QueueSender { shared: shared.clone() }, QueueReceiver { shared, registered: None, lent: false })
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// [`QueueReceiver::side_waker`] fired since the receiver last looked.
    side_woken: AtomicBool,
}

/// The side waker: records that it fired, then wakes the receiver's task.
impl<T: Send + 'static> Wake for Shared<T> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Recorded before the task is woken, so its next turn sees it.
        self.side_woken.store(true, Ordering::Release);
        if let Some(task) = &self.state().waker {
            task.wake_by_ref();
        }
    }
}

struct State<T> {
    items: VecDeque<T>,
    receiver_gone: bool,
    /// The receiver's task, woken by a push into the empty queue and by
    /// the side waker. Kept across wakes, and set under the lock the
    /// pushes take: the receiver stores it once and then compares its own
    /// copy (`QueueReceiver::registered`), so waiting costs no more than
    /// the lock it takes to look anyway. (The side waker must never be
    /// stored here: a push would wake it under this lock, and it takes
    /// the lock.)
    waker: Option<Waker>,
    /// The receiver's socket while it lends it ([`QueueReceiver::lend`]):
    /// written only under this lock, and only while it is here.
    lent: Option<RawFd>,
    /// The unsent end of the item a write to the lent socket stopped in:
    /// the receiver must write it before anything else
    /// ([`QueueReceiver::reclaim`] gives it).
    rest: Option<T>,
}

impl<T> Shared<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T> State<T> {
    /// The first item, if any; the queue shrinks if that emptied it.
    fn pop_front(&mut self) -> Option<T> {
        let item = self.items.pop_front();
        self.shrink_if_empty();
        item
    }

    /// An emptied queue keeps at most [`KEEP_WHEN_EMPTY`] slots.
    fn shrink_if_empty(&mut self) {
        if self.items.is_empty() && self.items.capacity() > KEEP_WHEN_EMPTY {
            self.items.shrink_to(KEEP_WHEN_EMPTY);
        }
    }

    /// The lent socket did not take everything: the receiver's task gets
    /// its socket back and is woken to write the rest itself.
    fn hand_back(&mut self) {
        self.lent = None;
        if let Some(task) = &self.waker {
            task.wake_by_ref();
        }
    }
}

/// What [`QueueSender::try_send`] did with an item it took.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Queued; the receiver's task was woken if it had to be.
    Queued,
    /// Queued into the empty queue of a lent socket: nobody was woken, and
    /// the caller must have [`QueueSender::write_lent`] called for it.
    ToLentSocket,
}

/// Why [`QueueSender::try_send`] did not take an item (which it gives back).
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue holds `capacity` items: the receiver is too slow.
    Full(T),
    /// The receiver is gone (the connection ended).
    Closed(T),
}

/// The hub's end. Cheap to clone.
pub struct QueueSender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<T> std::fmt::Debug for QueueSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSender").field("capacity", &self.shared.capacity).finish()
    }
}

impl<T> QueueSender<T> {
    /// Asks the CPU to fetch the queue's lock and state into its cache,
    /// without waiting. The hub calls it for every subscriber of a message
    /// before it pushes to any: the fetches of thousands of queues then
    /// overlap, instead of each push waiting for its own (they were most of
    /// the cost of a push at 10,000 subscribers).
    pub fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is only a hint: it reads nothing the program
        // sees and cannot fault, whatever the address.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(Arc::as_ptr(&self.shared).cast());
        }
    }

    /// Queues `item` without waiting.
    pub fn try_send(&self, item: T) -> Result<Sent, TrySendError<T>> {
        let mut state = self.shared.state();
        if state.receiver_gone {
            return Err(TrySendError::Closed(item));
        }
        if state.items.len() >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        let was_empty = state.items.is_empty();
        state.items.push_back(item);
        if !was_empty {
            return Ok(Sent::Queued);
        }
        // Only the push into an empty queue wakes the receiver: it waits
        // only after finding the queue empty, and takes everything queued
        // once awake, so a burst costs one wake-up, not one per item. While
        // its socket is lent, the items are written without it.
        if state.lent.is_some() {
            return Ok(Sent::ToLentSocket);
        }
        if let Some(waker) = &state.waker {
            waker.wake_by_ref();
        }
        Ok(Sent::Queued)
    }
}

impl<T: Wire> QueueSender<T> {
    /// Writes what is queued to the lent socket with non-blocking
    /// `sendmsg`s, each under the queue's lock (so a push waits for one
    /// write at most). Each item is dropped once the socket has taken all
    /// of it. When the socket does not take everything at once (its send
    /// buffer is full, or the write failed), the receiver gets its socket
    /// back and is woken, with what is left still queued and the unsent
    /// end of the item the write stopped in set aside for it to write
    /// first. Does nothing once the receiver has taken its socket back.
    /// Makes at most [`LENT_WRITES_PER_CALL`] writes.
    pub fn write_lent(&self) -> LentWrite {
        let mut taken = 0;
        let done = |frames| LentWrite { frames, more: false };
        for _ in 0..LENT_WRITES_PER_CALL {
            let mut state = self.shared.state();
            let Some(fd) = state.lent else { return done(taken) };
            if state.items.is_empty() {
                state.shrink_if_empty();
                return done(taken);
            }
            let mut slices = [IoSlice::new(&[]); LENT_WRITE_BATCH];
            let (mut total, mut count) = (0, 0);
            for (slice, item) in slices.iter_mut().zip(&state.items) {
                *slice = IoSlice::new(item.wire());
                total += slice.len();
                count += 1;
            }
            // SAFETY: the receiver keeps `fd` open, and writes nothing to
            // it, for as long as it is lent: it clears `lent` under this
            // lock before it uses or closes its socket (`reclaim`, and its
            // drop), and this lock is held until the write is done.
            let socket = unsafe { BorrowedFd::borrow_raw(fd) };
            let sent = match crate::wire::send_nonblocking(socket, &slices[..count]) {
                Ok(sent) => sent,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Full, or failed: the receiver's own write waits for room
                // or meets the error.
                Err(_) => {
                    state.hand_back();
                    return done(taken);
                }
            };
            let mut left = sent;
            while let Some(front) = state.items.front() {
                let len = front.wire().len();
                if left < len {
                    break;
                }
                left -= len;
                state.items.pop_front();
                taken += 1;
            }
            if left > 0 {
                let cut = state.items.pop_front().expect("a write stopped inside this item");
                state.rest = Some(cut.rest_after(left));
            }
            if sent < total {
                state.hand_back();
                return done(taken);
            }
        }
        let more = {
            let state = self.shared.state();
            state.lent.is_some() && !state.items.is_empty()
        };
        LentWrite { frames: taken, more }
    }

    /// Gives the receiver its socket back and wakes it, if it is lent: for
    /// a writer that can no longer write it.
    pub fn give_back_lent(&self) {
        let mut state = self.shared.state();
        if state.lent.is_some() {
            state.hand_back();
        }
    }
}

/// The connection's end.
pub struct QueueReceiver<T> {
    shared: Arc<Shared<T>>,
    /// The task waker last stored in the shared state: while the task's
    /// waker does not change, registering it again costs no lock.
    registered: Option<Waker>,
    /// The socket may be lent (the senders may have handed it back since).
    lent: bool,
}

impl<T: Send + 'static> QueueReceiver<T> {
    /// A waker for the receiver task's other waits: it wakes the task that
    /// last registered ([`Self::register`] or [`Self::poll_recv`]) and
    /// records that it fired, for [`Self::take_side_woken`].
    pub fn side_waker(&self) -> Waker {
        Waker::from(self.shared.clone())
    }
}

impl<T> QueueReceiver<T> {
    /// Makes the task whose context is `cx` the one pushes and the side
    /// waker wake (taking the lock only if its waker changed).
    pub fn register(&mut self, cx: &Context<'_>) {
        if !self.has_stored(cx) {
            let mut state = self.shared.state();
            store_task(&mut self.registered, &mut state.waker, cx);
        }
    }

    /// Whether `cx`'s waker is the one last stored in the shared state.
    fn has_stored(&self, cx: &Context<'_>) -> bool {
        self.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
    }

    /// Lends the receiver's socket `fd` to the senders while the queue is
    /// empty: the items pushed from now on are written to it by
    /// [`QueueSender::write_lent`] without waking the task. Not lent if
    /// something is queued already (the task was woken for it).
    ///
    /// # Safety
    /// `fd` must stay open, and nothing else may write to it, until
    /// [`Self::reclaim`] has returned or this receiver is dropped: the
    /// senders write to it in the meantime.
    pub unsafe fn lend(&mut self, fd: RawFd) {
        let mut state = self.shared.state();
        debug_assert!(state.rest.is_none(), "the end of a lent write was not reclaimed");
        if state.items.is_empty() {
            state.lent = Some(fd);
            self.lent = true;
        }
    }

    /// Takes the socket back from the senders, if it was lent: once this
    /// returns, none of them is writing to it or will. Gives the unsent
    /// end of the item their last write stopped in, if it stopped inside
    /// one: it must go out before anything else, or the stream is corrupt.
    pub fn reclaim(&mut self) -> Option<T> {
        if !std::mem::take(&mut self.lent) {
            return None;
        }
        let mut state = self.shared.state();
        state.lent = None;
        state.rest.take()
    }

    /// Whether the side waker fired since the last call.
    pub fn take_side_woken(&self) -> bool {
        self.shared.side_woken.swap(false, Ordering::AcqRel)
    }

    /// The next item, if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        self.shared.state().pop_front()
    }

    /// Moves up to `max` queued items to the end of `into`, under one lock.
    pub fn take_into(&mut self, into: &mut Vec<T>, max: usize) {
        let mut state = self.shared.state();
        let n = max.min(state.items.len());
        into.extend(state.items.drain(..n));
        state.shrink_if_empty();
    }

    /// The next item, or `Pending` with the task registered to be woken by
    /// the next push into the empty queue (under the same lock, so no push
    /// can come between the look and the registration).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = self.shared.state();
        if let Some(item) = state.pop_front() {
            return Poll::Ready(item);
        }
        if !self.has_stored(cx) {
            store_task(&mut self.registered, &mut state.waker, cx);
        }
        Poll::Pending
    }

    /// Waits for the next item (the hub keeps a sender for as long as the
    /// connection is subscribed, so this only ever ends with an item).
    pub async fn recv(&mut self) -> T {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

/// Stores `cx`'s waker in the shared `slot` (under the queue's lock) and
/// keeps a copy in the receiver's `registered`, to compare with later.
fn store_task(registered: &mut Option<Waker>, slot: &mut Option<Waker>, cx: &Context<'_>) {
    let task = cx.waker().clone();
    *slot = Some(task.clone());
    *registered = Some(task);
}

impl<T> Drop for QueueReceiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.receiver_gone = true;
        state.lent = None;
        state.rest = None;
        // Frames still queued release their receipts now; the task's waker
        // is not kept past its task.
        state.items.clear();
        state.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items come out in order; a full queue refuses; a gone receiver closes it.
    #[tokio::test]
    async fn bounded_in_order_and_closed_when_the_receiver_goes() {
        let (tx, mut rx) = frame_queue(2);
        assert_eq!(tx.try_send(1), Ok(Sent::Queued));
        assert_eq!(tx.clone().try_send(2), Ok(Sent::Queued));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(rx.recv().await, 1);
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), None);
        drop(rx);
        assert_eq!(tx.try_send(4), Err(TrySendError::Closed(4)));
    }

    /// A burst is taken in order, `max` at a time; a receiver that took a
    /// burst and waits again wakes for the next push into the empty queue.
    /// (One thread: `yield_now` runs the waiter until it waits.)
    #[tokio::test(flavor = "current_thread")]
    async fn bursts_are_taken_whole_and_the_next_push_wakes() {
        let (tx, mut rx) = frame_queue(16);
        for i in 0..5 {
            tx.try_send(i).unwrap();
        }
        let mut taken = vec![rx.recv().await];
        rx.take_into(&mut taken, 3);
        assert_eq!(taken, [0, 1, 2, 3]);
        rx.take_into(&mut taken, 3);
        assert_eq!(taken, [0, 1, 2, 3, 4]);
        rx.take_into(&mut taken, 3);
        assert_eq!(taken.len(), 5);
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.try_send(5).unwrap();
        assert_eq!(
            tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await.unwrap().unwrap(),
            5
        );
    }

    /// A receiver waiting on an empty queue wakes for an item sent later.
    /// (One thread: `yield_now` runs the waiter until it waits.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_receiver_wakes() {
        let (tx, mut rx) = frame_queue(4);
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.try_send("frame").unwrap();
        assert_eq!(waiter.await.unwrap(), "frame");
    }

    impl Wire for Vec<u8> {
        fn wire(&self) -> &[u8] {
            self
        }

        fn rest_after(self, sent: usize) -> Self {
            self[sent..].to_vec()
        }
    }

    /// Counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A receiver registered with a counting waker, and that waker's count.
    fn waiting(rx: &mut QueueReceiver<Vec<u8>>) -> Arc<Count> {
        let count = Arc::new(Count(0.into()));
        let waker = Waker::from(count.clone());
        assert!(rx.poll_recv(&mut Context::from_waker(&waker)).is_pending());
        count
    }

    /// A queue whose receiver waits (its wakes counted) and has lent one
    /// end of a socket pair; `peer` reads what was written to it.
    struct LentQueue {
        tx: QueueSender<Vec<u8>>,
        rx: QueueReceiver<Vec<u8>>,
        wakes: Arc<Count>,
        peer: std::os::unix::net::UnixStream,
        socket: std::os::unix::net::UnixStream,
    }

    fn lent_queue(capacity: usize) -> LentQueue {
        use std::os::fd::AsRawFd;
        let (socket, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx, mut rx) = frame_queue(capacity);
        let wakes = waiting(&mut rx);
        // SAFETY: the tests keep `socket` open while `rx` lives, and write
        // to it only through the queue.
        unsafe { rx.lend(socket.as_raw_fd()) };
        LentQueue { tx, rx, wakes, peer, socket }
    }

    /// What the peer can read now, without waiting.
    fn readable(peer: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
        use std::io::Read;
        peer.set_nonblocking(true).unwrap();
        let (mut all, mut buf) = (Vec::new(), [0u8; 4096]);
        loop {
            match peer.read(&mut buf) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return all,
                Err(e) => panic!("reading the peer: {e}"),
            }
        }
    }

    /// While the socket is lent, the push into the empty queue wakes
    /// nobody and asks for a write; the write sends everything queued, in
    /// order, and leaves the socket lent for the next push.
    #[test]
    fn a_lent_socket_is_written_without_waking_the_receiver() {
        let LentQueue { tx, mut rx, wakes, mut peer, socket: _socket } = lent_queue(16);
        assert_eq!(tx.try_send(b"one ".to_vec()), Ok(Sent::ToLentSocket));
        assert_eq!(tx.try_send(b"two ".to_vec()), Ok(Sent::Queued));
        assert_eq!(tx.write_lent(), LentWrite { frames: 2, more: false });
        assert_eq!(readable(&mut peer), b"one two ");
        assert_eq!(rx.try_recv(), None);
        assert_eq!(tx.try_send(b"three".to_vec()), Ok(Sent::ToLentSocket));
        assert_eq!(tx.write_lent(), LentWrite { frames: 1, more: false });
        assert_eq!(readable(&mut peer), b"three");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        rx.reclaim();
    }

    /// A socket that takes only part of what is queued: the receiver gets
    /// its socket back and is woken, with the unsent end of the frame the
    /// write stopped in (from `reclaim`) and then the rest of the queue,
    /// so nothing is lost or repeated.
    #[test]
    fn a_full_socket_hands_the_rest_back_to_the_receiver() {
        let LentQueue { tx, mut rx, wakes, mut peer, socket } = lent_queue(16);
        socket2::SockRef::from(&socket).set_send_buffer_size(4096).unwrap();
        let frames: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 100_000]).collect();
        for frame in &frames {
            tx.try_send(frame.clone()).unwrap();
        }
        let taken = tx.write_lent().frames;
        assert!(taken < frames.len(), "a 4 KiB buffer took {taken} frames of 100 KB");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // Handed back: nothing more is written until it is lent again.
        assert_eq!(tx.write_lent(), LentWrite { frames: 0, more: false });
        let mut arrived = readable(&mut peer);
        assert!(!arrived.is_empty());
        let cut = rx.reclaim().expect("100 KB frames in a 4 KiB buffer: the write stopped inside one");
        arrived.extend(cut);
        while let Some(rest) = rx.try_recv() {
            arrived.extend(rest);
        }
        assert_eq!(arrived, frames.concat());
    }

    /// More than one `sendmsg`'s worth of frames all go out, in order; a
    /// call stops after [`LENT_WRITES_PER_CALL`] writes and says more is left.
    #[test]
    fn a_long_queue_goes_out_in_several_writes() {
        let LentQueue { tx, mut rx, wakes, mut peer, socket: _socket } = lent_queue(1024);
        let per_call = LENT_WRITES_PER_CALL * LENT_WRITE_BATCH;
        let frames: Vec<Vec<u8>> = (0..per_call + 10).map(|i| format!("{i},").into_bytes()).collect();
        for frame in &frames {
            tx.try_send(frame.clone()).unwrap();
        }
        assert_eq!(tx.write_lent(), LentWrite { frames: per_call, more: true });
        assert_eq!(tx.write_lent(), LentWrite { frames: 10, more: false });
        assert_eq!(readable(&mut peer), frames.concat());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        assert_eq!(rx.reclaim(), None);
    }

    /// A writer that can no longer write gives the socket back: the
    /// receiver is woken and finds the frame queued.
    #[test]
    fn a_socket_given_back_is_the_receivers_again() {
        let LentQueue { tx, mut rx, wakes, mut peer, socket: _socket } = lent_queue(16);
        assert_eq!(tx.try_send(b"frame".to_vec()), Ok(Sent::ToLentSocket));
        tx.give_back_lent();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(tx.write_lent(), LentWrite { frames: 0, more: false });
        assert_eq!(rx.reclaim(), None);
        assert_eq!(rx.try_recv(), Some(b"frame".to_vec()));
        assert_eq!(readable(&mut peer), b"");
    }

    /// A write that fails (the peer is gone) hands the socket back with
    /// everything still queued, for the receiver to meet the error itself.
    #[test]
    fn a_failed_write_hands_the_socket_back() {
        let LentQueue { tx, mut rx, wakes, peer, socket: _socket } = lent_queue(16);
        drop(peer);
        assert_eq!(tx.try_send(b"lost?".to_vec()), Ok(Sent::ToLentSocket));
        assert_eq!(tx.write_lent(), LentWrite { frames: 0, more: false });
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(rx.reclaim(), None);
        assert_eq!(rx.try_recv(), Some(b"lost?".to_vec()));
    }

    /// A reclaimed socket is not written: the push wakes the receiver as
    /// usual. Neither is the socket of a receiver that is gone.
    #[test]
    fn a_reclaimed_socket_is_not_written() {
        let LentQueue { tx, mut rx, wakes, mut peer, socket } = lent_queue(16);
        rx.reclaim();
        assert_eq!(tx.try_send(b"frame".to_vec()), Ok(Sent::Queued));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(tx.write_lent(), LentWrite { frames: 0, more: false });
        assert_eq!(rx.try_recv(), Some(b"frame".to_vec()));
        // SAFETY: as in `lent_queue`.
        unsafe { rx.lend(std::os::fd::AsRawFd::as_raw_fd(&socket)) };
        drop(rx);
        assert_eq!(tx.try_send(b"late".to_vec()), Err(TrySendError::Closed(b"late".to_vec())));
        assert_eq!(tx.write_lent(), LentWrite { frames: 0, more: false });
        assert_eq!(readable(&mut peer), b"");
    }

    /// An empty queue holds no memory; after a burst it keeps a little.
    #[test]
    fn memory_is_given_back_after_a_burst() {
        let (tx, mut rx) = frame_queue(1024);
        assert_eq!(rx.shared.state().items.capacity(), 0);
        for i in 0..500 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert!(rx.shared.state().items.capacity() <= KEEP_WHEN_EMPTY);
    }
}
