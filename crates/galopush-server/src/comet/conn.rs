//! A connection's shared handle: the bounded queue through which routers (deliveries, kicks)
//! and IM tasks (their answers) reach the task that owns the socket.
//!
//! The queue is bounded in bytes (`limits.conn_queue_bytes`, SPEC §10): a terminal that does
//! not read while messages arrive fills it, and is then marked slow and closed; what the queue
//! held settles as failed, so it goes to the offline rule. An idle connection's queue holds no
//! allocation.
//!
//! The connection's task waits on the queue through [`Conn::poll_queued`], which keeps the
//! task's waker under the queue's lock: no `Notify` in the handle and no `Notified` in the task
//! (together about 100 bytes of every idle connection).

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use galopush_protocol::Encoding;
use galopush_protocol::message::KickReason;
use parking_lot::Mutex;

use crate::link::{Delivery, SessionId, SessionInfo};

/// Which of the comet's routers a delivery came from.
pub type RouterIdx = usize;

/// Something to write to a terminal.
#[derive(Debug)]
pub enum Outbound {
    Deliver {
        router: RouterIdx,
        delivery: Delivery,
    },
    Kick(KickReason),
    /// The answer to an IM the terminal sent.
    ImResult {
        tid: u32,
        encoding: Encoding,
        code: u8,
    },
}

impl Outbound {
    /// At least the bytes of the item's frame on the wire (SPEC §3): the 9-byte header, at most
    /// 3 bytes before a body, and the body.
    pub fn frame_len(&self) -> usize {
        const HEADER: usize = 12;
        match self {
            Outbound::Deliver { delivery, .. } => delivery.body.len() + HEADER,
            Outbound::Kick(_) | Outbound::ImResult { .. } => HEADER,
        }
    }

    /// What the item counts for against `limits.conn_queue_bytes`: a delivery its body and
    /// about what its frame and transaction add; anything else a little.
    fn weight(&self) -> usize {
        const OVERHEAD: usize = 64;
        match self {
            Outbound::Deliver { delivery, .. } => delivery.body.len() + OVERHEAD,
            Outbound::Kick(_) | Outbound::ImResult { .. } => OVERHEAD,
        }
    }
}

/// Room a queue makes when it gets its second item: a fan-out batch's deliveries to a terminal
/// then need two allocations instead of growing the queue 4 → 8 → 16 (by callgrind, the
/// allocator's work was a tenth of a fan-out delivery). Not at the first item: a unicast
/// delivery, alone in its queue, is cheaper in the allocator's smallest size classes. Given back
/// when the task takes the items.
pub const BURST: usize = 16;

/// Whether [`Conn::push`] queued an item.
#[derive(Debug)]
pub enum Pushed {
    Queued,
    /// The connection has ended, or is closing as slow: the item is given back.
    Closed(Outbound),
    /// This item would have taken the queue over its bound: the connection is now marked slow
    /// (it closes) and the item is given back.
    Overflowed(Outbound),
}

#[derive(Default)]
struct Outbox {
    items: VecDeque<Outbound>,
    /// What `items` weigh together.
    bytes: usize,
    /// The terminal stopped reading: close it.
    slow: bool,
    /// The connection task has ended; nothing more is taken.
    closed: bool,
    /// The connection's task, waiting for something to be queued.
    waiter: Option<Waker>,
}

impl Outbox {
    /// Wakes the connection's task, after the lock is given back.
    fn wake(mut outbox: parking_lot::MutexGuard<'_, Outbox>) {
        let waiter = outbox.waiter.take();
        drop(outbox);
        if let Some(waker) = waiter {
            waker.wake();
        }
    }
}

/// The handle on one connection.
pub struct Conn {
    pub id: SessionId,
    registered: OnceLock<SessionInfo>,
    outbox: Mutex<Outbox>,
}

impl Conn {
    pub fn new(id: SessionId) -> Conn {
        Conn {
            id,
            registered: OnceLock::new(),
            outbox: Mutex::default(),
        }
    }

    /// The terminal, once registered.
    pub fn session(&self) -> Option<&SessionInfo> {
        self.registered.get()
    }

    pub fn set_registered(&self, info: SessionInfo) {
        let _ = self.registered.set(info);
    }

    /// Queues an item for the connection, unless the connection has ended or the queue would
    /// weigh more than `limit` bytes with it (then the connection is marked slow). A kick is
    /// always taken, and so is any item when the queue is empty: one message bigger than the
    /// bound still reaches a terminal that reads.
    pub fn push(&self, item: Outbound, limit: usize) -> Pushed {
        let mut outbox = self.outbox.lock();
        if outbox.closed || outbox.slow {
            return Pushed::Closed(item);
        }
        let weight = item.weight();
        if !outbox.items.is_empty()
            && outbox.bytes + weight > limit
            && !matches!(item, Outbound::Kick(_))
        {
            outbox.slow = true;
            Outbox::wake(outbox);
            return Pushed::Overflowed(item);
        }
        outbox.bytes += weight;
        if outbox.items.len() == 1 {
            outbox.items.reserve(BURST - 1);
        }
        outbox.items.push_back(item);
        Outbox::wake(outbox);
        Pushed::Queued
    }

    /// Takes everything queued into `into`, which must be empty: its room becomes the queue's,
    /// so a task that hands back the room it was given allocates nothing per item for a terminal
    /// sent one at a time. `true` if the terminal was marked slow.
    pub fn take_into(&self, into: &mut VecDeque<Outbound>) -> bool {
        debug_assert!(into.is_empty());
        let mut outbox = self.outbox.lock();
        outbox.bytes = 0;
        std::mem::swap(&mut outbox.items, into);
        outbox.slow
    }

    /// Whether the terminal was marked slow.
    pub fn is_slow(&self) -> bool {
        self.outbox.lock().slow
    }

    /// Ready when something is queued or the connection is marked slow; otherwise the task of
    /// `cx` is woken by the next [`Conn::push`]. Only the connection's own task waits here.
    pub fn poll_queued(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut outbox = self.outbox.lock();
        if !outbox.items.is_empty() || outbox.slow {
            return Poll::Ready(());
        }
        match &outbox.waiter {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => outbox.waiter = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Hands the wake-up of the next [`Conn::push`] to `waker` instead of a task, if nothing is
    /// queued and the connection is open; `false` otherwise. For a parked connection
    /// ([`super::idle`]), whose task has ended; the queue's room is given back.
    pub fn park(&self, waker: Waker) -> bool {
        let mut outbox = self.outbox.lock();
        if !outbox.items.is_empty() || outbox.slow || outbox.closed {
            return false;
        }
        outbox.items = VecDeque::new();
        outbox.waiter = Some(waker);
        true
    }

    /// Completes when something is queued or the connection is marked slow.
    pub fn queued(&self) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(|cx| self.poll_queued(cx))
    }

    /// Ends the connection's queue and returns what was left in it.
    pub fn close(&self) -> VecDeque<Outbound> {
        let mut outbox = self.outbox.lock();
        outbox.closed = true;
        outbox.bytes = 0;
        outbox.waiter = None;
        std::mem::take(&mut outbox.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{Delivery, DeliveryKind};
    use bytes::Bytes;

    fn delivery(id: u64, size: usize) -> Outbound {
        Outbound::Deliver {
            router: 0,
            delivery: Delivery {
                id,
                session: 1,
                kind: DeliveryKind::Im,
                flag: 0,
                body: Bytes::from(vec![b'x'; size]),
            },
        }
    }

    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let conn = Conn::new(1);
        let limit = 1000;
        // One message over the bound is taken when nothing is queued.
        assert!(matches!(
            conn.push(delivery(1, 5000), limit),
            Pushed::Queued
        ));
        let mut items = VecDeque::new();
        let slow = conn.take_into(&mut items);
        assert_eq!((items.len(), slow), (1, false));
        // Small ones up to the bound, then the connection is slow and takes nothing more.
        for id in 0..3 {
            assert!(matches!(
                conn.push(delivery(id, 200), limit),
                Pushed::Queued
            ));
        }
        assert!(matches!(
            conn.push(delivery(3, 200), limit),
            Pushed::Overflowed(_)
        ));
        assert!(matches!(
            conn.push(delivery(4, 1), limit),
            Pushed::Closed(_)
        ));
        assert!(conn.is_slow());
        assert!(
            matches!(
                conn.push(Outbound::Kick(KickReason::RepeatLogin), limit),
                Pushed::Closed(_)
            ),
            "a slow connection is closing already"
        );
        let left = conn.close();
        assert_eq!(
            left.len(),
            3,
            "what was queued is handed back to settle as failed"
        );
    }

    /// Counts its wake-ups.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_push_wakes_the_waiting_task_once_and_a_closed_queue_keeps_no_waker() {
        let wakes = std::sync::Arc::new(Wakes(Default::default()));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let count = || wakes.0.load(std::sync::atomic::Ordering::SeqCst);
        let conn = Conn::new(1);
        assert!(conn.poll_queued(&mut cx).is_pending());
        assert!(conn.poll_queued(&mut cx).is_pending(), "waiting again");
        assert!(matches!(conn.push(delivery(1, 10), 1000), Pushed::Queued));
        assert_eq!(count(), 1);
        assert!(matches!(conn.push(delivery(2, 10), 1000), Pushed::Queued));
        assert_eq!(count(), 1, "woken once until it waits again");
        assert!(conn.poll_queued(&mut cx).is_ready());
        let mut items = VecDeque::new();
        conn.take_into(&mut items);
        assert_eq!(items.len(), 2);
        assert!(conn.poll_queued(&mut cx).is_pending());
        conn.close();
        assert!(matches!(
            conn.push(delivery(3, 10), 1000),
            Pushed::Closed(_)
        ));
        assert_eq!(count(), 1, "a closed queue wakes no one");
    }

    #[test]
    fn the_room_handed_to_the_queue_is_used_and_given_back_when_parked() {
        let conn = Conn::new(1);
        let mut room = VecDeque::with_capacity(BURST);
        conn.take_into(&mut room);
        assert_eq!(room.capacity(), 0, "the queue's own (none) came back");
        assert!(conn.outbox.lock().items.capacity() >= BURST);
        assert!(matches!(conn.push(delivery(1, 10), 1000), Pushed::Queued));
        let mut items = VecDeque::new();
        conn.take_into(&mut items);
        assert_eq!(items.len(), 1);
        assert!(
            items.capacity() >= BURST,
            "the item came in the room handed over"
        );
        // The room goes back to the queue at the next take, as a session hands it back.
        items.clear();
        conn.take_into(&mut items);
        assert!(conn.outbox.lock().items.capacity() >= BURST);
        assert!(conn.park(Waker::noop().clone()));
        assert_eq!(
            conn.outbox.lock().items.capacity(),
            0,
            "a parked connection's queue keeps no room"
        );
    }

    #[test]
    fn a_kick_goes_in_whatever_the_queue_holds() {
        let conn = Conn::new(1);
        assert!(matches!(conn.push(delivery(1, 900), 1000), Pushed::Queued));
        assert!(matches!(
            conn.push(Outbound::Kick(KickReason::RepeatLogin), 1000),
            Pushed::Queued
        ));
        assert!(!conn.is_slow());
    }
}
