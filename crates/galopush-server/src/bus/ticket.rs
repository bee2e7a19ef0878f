//! The retirement of an inbound bus message. Every delivery and store write that a message
//! causes holds a clone of its [`Ticket`]; when the last clone is dropped the message is
//! retired (FIN on NSQ, deleted from the embedded inbox) — or requeued if anything along the way
//! failed to become durable. A crash before that replays the message: duplicates are possible,
//! loss is not.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What to do with a message once its effects are settled.
pub trait Retire: Send + Sync + 'static {
    /// Every effect is durable: the message is done.
    fn retire(self: Box<Self>);
    /// Some effect could not be made durable: take the message again later.
    fn requeue(self: Box<Self>);
}

struct TicketState {
    retire: Option<Box<dyn Retire>>,
    failed: AtomicBool,
}

impl Drop for TicketState {
    fn drop(&mut self) {
        if let Some(r) = self.retire.take() {
            if self.failed.load(Ordering::Acquire) {
                r.requeue();
            } else {
                r.retire();
            }
        }
    }
}

/// A shared handle on an inbound message's fate.
#[derive(Clone)]
pub struct Ticket(Arc<TicketState>);

impl Ticket {
    /// A ticket that runs `retire` when its last clone is dropped.
    pub fn new(retire: impl Retire) -> Ticket {
        Ticket(Arc::new(TicketState {
            retire: Some(Box::new(retire)),
            failed: AtomicBool::new(false),
        }))
    }

    /// A ticket with nothing to retire (a message not kept anywhere).
    pub fn detached() -> Ticket {
        Ticket(Arc::new(TicketState {
            retire: None,
            failed: AtomicBool::new(false),
        }))
    }

    /// Marks an effect as not durable: the message is requeued instead of retired.
    pub fn fail(&self) {
        self.0.failed.store(true, Ordering::Release);
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("failed", &self.0.failed.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Record(Arc<Mutex<Vec<&'static str>>>);

    impl Retire for Record {
        fn retire(self: Box<Self>) {
            self.0.lock().expect("lock").push("retired");
        }
        fn requeue(self: Box<Self>) {
            self.0.lock().expect("lock").push("requeued");
        }
    }

    #[test]
    fn retires_when_the_last_clone_drops() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let t = Ticket::new(Record(log.clone()));
        let t2 = t.clone();
        drop(t);
        assert!(log.lock().expect("lock").is_empty());
        drop(t2);
        assert_eq!(*log.lock().expect("lock"), vec!["retired"]);
    }

    #[test]
    fn requeues_after_a_failure() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let t = Ticket::new(Record(log.clone()));
        t.clone().fail();
        drop(t);
        assert_eq!(*log.lock().expect("lock"), vec!["requeued"]);
    }
}
