//! A connection's queue of frames from the hub: bounded, and holding no
//! memory while it is empty.
//!
//! The hub pushes (under its own lock, never waiting) and the connection's
//! task takes what is queued, a batch at a time. Only a push into an empty
//! queue wakes the task, so a burst wakes it once, not once per frame.
//! tokio's `mpsc` would do, but it allocates a block of 32 slots up front,
//! about 1.8 KiB with its channel, for every connection, most of which sit
//! idle: a plain `VecDeque` behind a mutex allocates on the first
//! frame, and gives a large buffer back once a burst has been written.
//!
//! **Overflow policy:** [`QueueSender::try_send`] refuses a frame when the
//! queue holds `capacity` frames (`hub.subscriber_queue_size`); the hub then
//! closes that connection as too slow (1013). Nothing else waits or drops.
//!
//! **Direct writes.** A lone message to thousands of idle connections
//! would cost each of them a task wake and a turn of its loop, only to
//! write one frame. So the queue also says who may write to the socket
//! ([`Writer`]), and the hub may write a frame to an idle socket itself:
//!
//! - The session **parks** the socket ([`QueueReceiver::poll_recv`] or
//!   [`QueueReceiver::park`]) only when it waits with nothing unwritten
//!   anywhere: its queue empty, tungstenite holding no bytes, no frame
//!   half-written.
//! - The hub may then **claim** it, under this lock, as it queues a frame
//!   into the empty queue ([`QueueSender::try_send_or_claim`]), and write
//!   the queue's frames itself once it has let go of its own lock
//!   ([`QueueSender::write_claimed`]), each with one non-blocking `send`.
//!   Frames queued meanwhile (by another publish) queue behind and are
//!   written by the same hub, in order.
//! - If the socket takes everything, it is parked again and the task is
//!   not woken (unless it was turned away meanwhile). If it takes part of
//!   a frame, or nothing, the rest stays at the head of the queue and the
//!   session is woken to write it, with its write timeout and its 1013
//!   policy, as for any queued frame; a rest is marked as such, so that the
//!   session finishes it even when it closes instead.
//! - While the hub holds the socket, the session neither takes frames nor
//!   touches the socket ([`QueueReceiver::take_socket`]); the hub wakes it
//!   when it lets go.
//! - A session ends by taking the socket back for good
//!   ([`QueueSender::revoke_direct`]), under the same lock the hub writes
//!   under, before its socket is closed: the hub never writes to a
//!   descriptor that could have been closed and reused.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A queue that has written a burst keeps at most this many slots once it
/// is empty again.
const KEEP_WHEN_EMPTY: usize = 16;

/// Frames the hub writes to a claimed socket per `sendmsg` at most (as the
/// session's batches).
pub const DIRECT_BATCH: usize = 64;

/// A bounded queue of `capacity` items (see the module doc).
pub fn frame_queue<T>(capacity: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            receiver_gone: false,
            waker: None,
            writer: Writer::Session,
            turned_away: false,
        }),
        capacity,
    });
    (QueueSender { shared: shared.clone() }, QueueReceiver { shared })
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    receiver_gone: bool,
    /// The receiver's task, woken by a push into the empty queue. Kept
    /// across wakes, and set under the lock the pushes take: the receiver
    /// stores it once and then only compares it, so waiting costs no
    /// more than the lock it takes to look anyway.
    waker: Option<Waker>,
    /// Who may write to the socket (see "Direct writes" in the module doc).
    writer: Writer,
    /// The session found the socket held by the hub: the hub wakes it when
    /// it lets go.
    turned_away: bool,
}

/// Who may write to a connection's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// The session: the hub queues frames and wakes it.
    Session,
    /// The session waits with nothing unwritten: the hub may claim the
    /// socket, this descriptor, for a frame it queues into the empty queue.
    Parked(RawFd),
    /// The hub claimed it and writes what is queued; the session waits.
    Hub(RawFd),
}

/// An item the hub can write straight to a socket: one complete frame.
pub trait DirectItem: Sized {
    /// The bytes to write.
    fn wire_bytes(&self) -> &[u8];
    /// The same item, holding only its bytes from `written` on (a socket
    /// took the first `written`).
    fn rest(self, written: usize) -> Self;
}

/// What [`QueueSender::try_send_or_claim`] did with an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Queued for the session (woken if the queue was empty).
    Queued,
    /// Queued, and the socket claimed: the caller must call
    /// [`QueueSender::write_claimed`] (after letting go of its own locks).
    Claimed,
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
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.try_send_or_claim(item, false).map(|_| ())
    }

    /// Queues `item` without waiting; with `claim`, and if the session
    /// parked its socket, claims the socket instead of waking the session
    /// (see "Direct writes" in the module doc).
    pub fn try_send_or_claim(&self, item: T, claim: bool) -> Result<Sent, TrySendError<T>> {
        let mut state = self.shared.state();
        if state.receiver_gone {
            return Err(TrySendError::Closed(item));
        }
        if state.items.len() >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        let was_empty = state.items.is_empty();
        state.items.push_back(item);
        match state.writer {
            // What was queued before (unclaimed) goes first, in order.
            Writer::Parked(fd) if claim => {
                state.writer = Writer::Hub(fd);
                return Ok(Sent::Claimed);
            }
            // The hub that holds it writes this too, after what it holds.
            Writer::Hub(_) => return Ok(Sent::Queued),
            Writer::Parked(_) | Writer::Session => {}
        }
        // Only the push into an empty queue wakes the receiver: it waits
        // only after finding the queue empty, and takes everything queued
        // once awake, so a burst costs one wake-up, not one per item.
        if was_empty {
            if let Some(waker) = &state.waker {
                waker.wake_by_ref();
            }
        }
        Ok(Sent::Queued)
    }

    /// Hands a claimed socket back to its session unwritten (the hub's
    /// writes were dropped): the session is woken to write what is queued.
    pub fn release_claim(&self) {
        let mut state = self.shared.state();
        if let Writer::Hub(_) = state.writer {
            state.writer = Writer::Session;
            state.turned_away = false;
            if let Some(waker) = &state.waker {
                waker.wake_by_ref();
            }
        }
    }

    /// The session ends: the hub may no longer write to its socket. Called
    /// before the socket is closed (the hub writes under the same lock).
    pub fn revoke_direct(&self) {
        self.shared.state().writer = Writer::Session;
    }
}

impl<T: DirectItem> QueueSender<T> {
    /// Writes the frames of a socket this sender claimed, and any queued
    /// behind them meanwhile, [`DIRECT_BATCH`] at a time with one
    /// non-blocking `sendmsg` each, under the queue's lock. What the socket
    /// does not take at once stays queued, and the session is woken to
    /// write it. Does nothing if the socket was not claimed or was taken
    /// back. Returns how many frames the socket took whole.
    pub fn write_claimed(&self) -> usize {
        let mut state = self.shared.state();
        let Writer::Hub(fd) = state.writer else { return 0 };
        let mut written = 0;
        let complete = loop {
            if state.items.is_empty() {
                break true;
            }
            let batch = state.items.len().min(DIRECT_BATCH);
            let mut slices = [IoSlice::new(&[]); DIRECT_BATCH];
            for (slice, item) in slices.iter_mut().zip(state.items.iter()) {
                *slice = IoSlice::new(item.wire_bytes());
            }
            let offered: usize = slices[..batch].iter().map(|s| s.len()).sum();
            // Full, or failing (the session's own write then meets the
            // error and ends the connection): the session takes over.
            let Ok(sent) = send_now(fd, &slices[..batch]) else { break false };
            // Whole frames taken: their receipts go now.
            let mut left = sent;
            while let Some(len) = state.items.front().map(|item| item.wire_bytes().len()) {
                if left < len {
                    break;
                }
                left -= len;
                state.items.pop_front();
                written += 1;
            }
            // The end of a frame must go out before anything else.
            if left > 0 {
                let torn = state.items.pop_front().expect("the frame the socket took part of");
                state.items.push_front(torn.rest(left));
            }
            if sent < offered {
                break false;
            }
        };
        state.shrink_if_empty();
        // Woken if it has frames to write, or found the socket held.
        let wake = !complete || state.turned_away;
        state.turned_away = false;
        state.writer = if complete { Writer::Parked(fd) } else { Writer::Session };
        if wake {
            if let Some(waker) = &state.waker {
                waker.wake_by_ref();
            }
        }
        written
    }
}
/// One non-blocking `sendmsg` of `slices` to the socket `fd`.
fn send_now(fd: RawFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: `fd` is the socket of a session that parked it and has not
    // revoked it; the caller holds the queue's lock, which the session
    // takes to revoke it before its socket is closed, so `fd` is open and
    // still that socket. `IoSlice` is ABI-compatible with `iovec` on Unix,
    // and the slices live across the call; the kernel only reads them.
    // MSG_NOSIGNAL: a peer that went away gives EPIPE, not SIGPIPE.
    let sent = unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = slices.as_ptr().cast_mut().cast();
        message.msg_iovlen = slices.len() as _;
        libc::sendmsg(fd, &message, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// The connection's end.
pub struct QueueReceiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> QueueReceiver<T> {
    /// The next item, if one is queued (none while the hub writes them).
    /// Taking one takes the socket back from a park.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut state = self.shared.state();
        if matches!(state.writer, Writer::Hub(_)) {
            return None;
        }
        let item = state.pop_front()?;
        state.writer = Writer::Session;
        Some(item)
    }

    /// The first item, if one is queued and `wanted` (and the hub does not
    /// hold the socket). Taking one takes the socket back from a park.
    pub fn try_recv_if(&mut self, wanted: impl FnOnce(&T) -> bool) -> Option<T> {
        let mut state = self.shared.state();
        if matches!(state.writer, Writer::Hub(_)) || !state.items.front().is_some_and(wanted) {
            return None;
        }
        let item = state.pop_front()?;
        state.writer = Writer::Session;
        Some(item)
    }

    /// Moves up to `max` queued items to the end of `into`, under one lock
    /// (called after an item was taken, so the session holds the socket).
    pub fn take_into(&mut self, into: &mut Vec<T>, max: usize) {
        let mut state = self.shared.state();
        if matches!(state.writer, Writer::Hub(_)) {
            return;
        }
        let n = max.min(state.items.len());
        into.extend(state.items.drain(..n));
        state.shrink_if_empty();
    }

    /// The next item, or `Pending` with the task registered to be woken by
    /// the next push into the empty queue (under the same lock, so no push
    /// can come between the look and the registration). With `park`, an
    /// empty queue also parks the socket `park` for the hub to write to
    /// (see "Direct writes" in the module doc): pass it only when nothing
    /// is left unwritten and the task will not touch the socket before its
    /// next call. While the hub holds the socket, nothing is taken.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>, park: Option<RawFd>) -> Poll<T> {
        let mut state = self.shared.state();
        if let Writer::Hub(_) = state.writer {
            state.turned_away = true;
        } else if let Some(item) = state.pop_front() {
            state.writer = Writer::Session;
            return Poll::Ready(item);
        } else if let Some(fd) = park {
            state.writer = Writer::Parked(fd);
        }
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Takes the socket back from a park, before the task touches it for
    /// anything else than the queue's frames (a read, a reply, a ping). False
    /// while the hub writes to it: the task must wait (it is woken when the
    /// hub lets go).
    pub fn take_socket(&mut self, cx: &mut Context<'_>) -> bool {
        let mut state = self.shared.state();
        match state.writer {
            Writer::Hub(_) => {
                state.turned_away = true;
                if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    state.waker = Some(cx.waker().clone());
                }
                false
            }
            Writer::Parked(_) | Writer::Session => {
                state.writer = Writer::Session;
                true
            }
        }
    }

    /// Parks the socket `fd` for the hub (see [`Self::poll_recv`]'s `park`)
    /// if the queue is still empty; a queued item has woken the task.
    pub fn park(&mut self, fd: RawFd) {
        let mut state = self.shared.state();
        if state.items.is_empty() && state.writer == Writer::Session {
            state.writer = Writer::Parked(fd);
        }
    }

    /// Waits for the next item (the hub keeps a sender for as long as the
    /// connection is subscribed, so this only ever ends with an item).
    pub async fn recv(&mut self) -> T {
        std::future::poll_fn(|cx| self.poll_recv(cx, None)).await
    }
}

impl<T> Drop for QueueReceiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.receiver_gone = true;
        // Frames still queued release their receipts now; the task's waker
        // is not kept past its task.
        state.items.clear();
        state.waker = None;
        state.writer = Writer::Session;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items come out in order; a full queue refuses; a gone receiver closes it.
    #[tokio::test]
    async fn bounded_in_order_and_closed_when_the_receiver_goes() {
        let (tx, mut rx) = frame_queue(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.clone().try_send(2), Ok(()));
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

    // --- Direct writes, against a real socket pair -----------------------

    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;

    impl DirectItem for Bytes {
        fn wire_bytes(&self) -> &[u8] {
            self
        }

        fn rest(self, written: usize) -> Self {
            self.slice(written..)
        }
    }

    /// A task waker that counts its wakes.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl futures_util::task::ArcWake for Wakes {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Wakes {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A queue, the session's waker, and a socket pair: the session's end
    /// (whose descriptor it parks) and the client's (which the test reads).
    fn direct_setup() -> (QueueSender<Bytes>, QueueReceiver<Bytes>, Arc<Wakes>, Waker, UnixStream, UnixStream)
    {
        let (tx, rx) = frame_queue(8);
        let wakes = Arc::new(Wakes::default());
        let waker = futures_util::task::waker(wakes.clone());
        let (server, client) = UnixStream::pair().unwrap();
        client.set_nonblocking(true).unwrap();
        (tx, rx, wakes, waker, server, client)
    }

    /// Everything the client's end can read now.
    fn read_now(client: &mut UnixStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match client.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// A parked socket is claimed, written by the hub and parked again, with
    /// the task never woken; frames queued behind a claim go out after it,
    /// in order, from the same write.
    #[test]
    fn a_parked_socket_is_written_by_the_hub_without_a_wake() {
        let (tx, mut rx, wakes, waker, server, mut client) = direct_setup();
        let cx = &mut Context::from_waker(&waker);
        assert!(rx.poll_recv(cx, Some(server.as_raw_fd())).is_pending());
        assert_eq!(tx.try_send_or_claim(Bytes::from_static(b"one"), true), Ok(Sent::Claimed));
        assert_eq!(tx.try_send_or_claim(Bytes::from_static(b"two"), true), Ok(Sent::Queued));
        assert_eq!(tx.write_claimed(), 2);
        assert_eq!(read_now(&mut client), b"onetwo");
        assert_eq!(wakes.count(), 0);
        // Parked again: the next frame is claimed too.
        assert_eq!(tx.try_send_or_claim(Bytes::from_static(b"three"), true), Ok(Sent::Claimed));
        assert_eq!(tx.write_claimed(), 1);
        assert_eq!(read_now(&mut client), b"three");
        assert_eq!(wakes.count(), 0);
        assert!(rx.poll_recv(cx, None).is_pending(), "nothing left queued");
    }

    /// Without `claim`, or when the session did not park, frames are queued
    /// and the session woken; taking a frame takes the socket back.
    #[test]
    fn frames_are_queued_when_not_claimed_or_not_parked() {
        let (tx, mut rx, wakes, waker, server, mut client) = direct_setup();
        let cx = &mut Context::from_waker(&waker);
        assert!(rx.poll_recv(cx, Some(server.as_raw_fd())).is_pending());
        assert_eq!(tx.try_send_or_claim(Bytes::from_static(b"a"), false), Ok(Sent::Queued));
        assert_eq!(wakes.count(), 1);
        assert_eq!(rx.poll_recv(cx, None), Poll::Ready(Bytes::from_static(b"a")));
        // The session holds the socket now (it did not park it again).
        assert!(rx.poll_recv(cx, None).is_pending());
        assert_eq!(tx.try_send_or_claim(Bytes::from_static(b"b"), true), Ok(Sent::Queued));
        assert_eq!(tx.write_claimed(), 0, "not claimed: nothing written");
        assert_eq!(wakes.count(), 2);
        assert!(read_now(&mut client).is_empty());
        assert_eq!(rx.try_recv(), Some(Bytes::from_static(b"b")));
    }

    /// A socket that takes nothing leaves the frame whole at the head of the
    /// queue; one that takes part leaves exactly the rest; either way the
    /// session is woken to write it and holds the socket.
    #[test]
    fn what_the_socket_does_not_take_is_left_to_the_session() {
        let (tx, mut rx, wakes, waker, server, mut client) = direct_setup();
        let cx = &mut Context::from_waker(&waker);
        // Larger than any socket buffer: the socket takes part of it.
        let big = Bytes::from((0..4 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        assert!(rx.poll_recv(cx, Some(server.as_raw_fd())).is_pending());
        assert_eq!(tx.try_send_or_claim(big.clone(), true), Ok(Sent::Claimed));
        assert_eq!(tx.write_claimed(), 0);
        assert_eq!(wakes.count(), 1);
        let Poll::Ready(rest) = rx.poll_recv(cx, None) else { panic!("the rest is queued") };
        let taken = read_now(&mut client);
        assert!(!taken.is_empty() && !rest.is_empty());
        assert_eq!([taken.as_slice(), &rest].concat(), big, "the rest follows what the socket took");
        // Now fill the socket: the next claimed frame is left whole.
        server.set_nonblocking(true).unwrap();
        while io::Write::write(&mut &server, &[0u8; 65536]).is_ok() {}
        rx.park(server.as_raw_fd());
        assert_eq!(tx.try_send_or_claim(Bytes::from_static(b"whole"), true), Ok(Sent::Claimed));
        assert_eq!(tx.write_claimed(), 0);
        assert_eq!(wakes.count(), 2);
        assert_eq!(rx.try_recv(), Some(Bytes::from_static(b"whole")));
    }

    /// While the hub holds the socket, the session takes neither it nor its
    /// frames, and is woken when the hub lets go.
    #[test]
    fn the_session_waits_while_the_hub_writes() {
        let (tx, mut rx, wakes, waker, server, mut client) = direct_setup();
        let cx = &mut Context::from_waker(&waker);
        assert!(rx.poll_recv(cx, Some(server.as_raw_fd())).is_pending());
        assert_eq!(tx.try_send_or_claim(Bytes::from_static(b"x"), true), Ok(Sent::Claimed));
        assert!(!rx.take_socket(cx));
        assert!(rx.poll_recv(cx, None).is_pending(), "the hub's frame is not taken");
        assert_eq!(rx.try_recv(), None);
        assert_eq!(wakes.count(), 0);
        assert_eq!(tx.write_claimed(), 1);
        assert_eq!(wakes.count(), 1, "woken when the hub let go");
        assert_eq!(read_now(&mut client), b"x");
        assert!(rx.take_socket(cx));
        // Taken back: the next frame is queued, not claimed.
        assert_eq!(tx.try_send_or_claim(Bytes::from_static(b"y"), true), Ok(Sent::Queued));
    }

    /// A revoked socket (the session ending) is never claimed again, and a
    /// claim revoked before its write is not written.
    #[test]
    fn a_revoked_socket_is_not_written() {
        let (tx, mut rx, _wakes, waker, server, mut client) = direct_setup();
        let cx = &mut Context::from_waker(&waker);
        assert!(rx.poll_recv(cx, Some(server.as_raw_fd())).is_pending());
        assert_eq!(tx.try_send_or_claim(Bytes::from_static(b"1"), true), Ok(Sent::Claimed));
        tx.revoke_direct();
        assert_eq!(tx.write_claimed(), 0);
        assert_eq!(tx.try_send_or_claim(Bytes::from_static(b"2"), true), Ok(Sent::Queued));
        assert!(read_now(&mut client).is_empty());
        drop(rx);
        assert!(matches!(tx.try_send_or_claim(Bytes::from_static(b"3"), true), Err(TrySendError::Closed(_))));
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
