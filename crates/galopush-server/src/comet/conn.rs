//! A connection's shared handle: the bounded queue through which routers (deliveries, kicks)
//! and IM tasks (their answers) reach the task that owns the socket.
//!
//! An idle connection's queue holds no allocation. A full queue means a terminal that does not
//! read: the connection is marked slow and closed, and what it held settles as failed.

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

#[derive(Default)]
struct Outbox {
    items: VecDeque<Outbound>,
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

    /// Queues an item for the connection. Gives it back if the connection has ended, or if the
    /// queue holds `limit` items already (the connection is then marked slow).
    pub fn push(&self, item: Outbound, limit: usize) -> Result<(), Outbound> {
        let mut outbox = self.outbox.lock();
        if outbox.closed || outbox.slow {
            return Err(item);
        }
        if outbox.items.len() >= limit && !matches!(item, Outbound::Kick(_)) {
            outbox.slow = true;
            drop(outbox);
            self.notify.notify_one();
            return Err(item);
        }
        outbox.items.push_back(item);
        drop(outbox);
        self.notify.notify_one();
        Ok(())
    }

    /// Takes everything queued; `true` if the terminal was marked slow.
    pub fn take(&self) -> (VecDeque<Outbound>, bool) {
        let mut outbox = self.outbox.lock();
        let slow = outbox.slow;
        (std::mem::take(&mut outbox.items), slow)
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
        std::mem::take(&mut outbox.items)
    }
}
