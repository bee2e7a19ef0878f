//! A connection's shared handle: the bounded queue through which routers (deliveries, kicks)
//! and IM tasks (their answers) reach the task that owns the socket.
//!
//! The queue is bounded in bytes (`limits.conn_queue_bytes`, SPEC §10): a terminal that does
//! not read while messages arrive fills it, and is then marked slow and closed; what the queue
//! held settles as failed, so it goes to the offline rule. An idle connection's queue holds no
//! allocation.

use std::collections::VecDeque;
use std::sync::OnceLock;

use galopush_protocol::Encoding;
use galopush_protocol::message::KickReason;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

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
}

/// The handle on one connection.
pub struct Conn {
    pub id: SessionId,
    registered: OnceLock<SessionInfo>,
    outbox: Mutex<Outbox>,
    notify: Notify,
}

impl Conn {
    pub fn new(id: SessionId) -> Conn {
        Conn {
            id,
            registered: OnceLock::new(),
            outbox: Mutex::default(),
            notify: Notify::new(),
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
            drop(outbox);
            self.notify.notify_one();
            return Pushed::Overflowed(item);
        }
        outbox.bytes += weight;
        outbox.items.push_back(item);
        drop(outbox);
        self.notify.notify_one();
        Pushed::Queued
    }

    /// Takes everything queued; `true` if the terminal was marked slow.
    pub fn take(&self) -> (VecDeque<Outbound>, bool) {
        let mut outbox = self.outbox.lock();
        outbox.bytes = 0;
        let slow = outbox.slow;
        (std::mem::take(&mut outbox.items), slow)
    }

    /// Whether the terminal was marked slow.
    pub fn is_slow(&self) -> bool {
        self.outbox.lock().slow
    }

    /// Completes when something is queued (or the connection is marked slow). A connection's
    /// task keeps one of these across its loop and makes a new one after each completion, so
    /// it does not join and leave the waiters' list on every turn.
    pub fn queued(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Ends the connection's queue and returns what was left in it.
    pub fn close(&self) -> VecDeque<Outbound> {
        let mut outbox = self.outbox.lock();
        outbox.closed = true;
        outbox.bytes = 0;
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
        let (items, slow) = conn.take();
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
