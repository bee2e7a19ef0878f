//! Deliveries in flight: what the router sent to a comet and has not seen settled, and what
//! happens when it settles — an ack retires it (or removes the stored message it came from),
//! a failure applies the offline rule (SPEC §6).
//!
//! The deliveries of one message are kept together, as one group: the message's body, kind
//! and origin once, and a slot per receiving session. A delivery's id is its group's number and
//! its index in the group, so settling it finds its slot without a table entry of its own, and
//! the acks of a broadcast to 10000 terminals touch one group instead of 10000 entries of a
//! table that grows with everything in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use galopush_protocol::TermType;

use super::reports::{Hold, Report, ReportOutcome};
use super::{CometIdx, Router};
use crate::bus::Ticket;
use crate::link::{CometCommand, Delivery, DeliveryId, DeliveryKind, Outcome, SessionId};
use crate::metrics::Dropped;
use crate::sharded::ShardedMap;
use crate::store::offline::OfflineMessage;
use crate::store::{OfflineKey, OfflineWrite, StoredKey};

/// Where a group's deliveries came from.
#[derive(Clone)]
pub enum Origin {
    /// A live message; holds its inbound message until its deliveries settle.
    Live(Ticket),
    /// A stored message, removed from the store when acked.
    Stored(OfflineKey),
}

/// The session a delivery went to.
#[derive(Clone)]
pub struct Target {
    pub comet: CometIdx,
    pub session: SessionId,
    pub uid: Arc<str>,
    pub term: TermType,
}

/// Bits of a delivery id that number it within its group.
const INDEX_BITS: u32 = 24;
const GROUP_CAPACITY: usize = 1 << INDEX_BITS;

fn delivery_id(group: u64, index: usize) -> DeliveryId {
    (group << INDEX_BITS) | index as u64
}

fn split_id(id: DeliveryId) -> (u64, usize) {
    (
        id >> INDEX_BITS,
        (id & (GROUP_CAPACITY as u64 - 1)) as usize,
    )
}

/// The deliveries of one message still in flight.
struct Group {
    kind: DeliveryKind,
    body: Bytes,
    /// The message's `id`, for its delivery reports.
    id: Option<Arc<str>>,
    /// Whether its acks are reported (`topics.delivery_report` is set).
    reported: bool,
    origin: Origin,
    targets: Vec<Target>,
    /// A bit per delivery, set when it settles: an ack touches only this, not its target.
    settled: Vec<u64>,
    open: usize,
}

impl Group {
    fn push(&mut self, target: Target) -> usize {
        let index = self.targets.len();
        if index.is_multiple_of(64) {
            self.settled.push(0);
        }
        self.targets.push(target);
        self.open += 1;
        index
    }

    /// Marks a delivery settled; `None` if it had settled already.
    fn settle(&mut self, index: usize, outcome: Outcome) -> Option<Taken> {
        let bit = 1u64 << (index % 64);
        let word = self.settled.get_mut(index / 64)?;
        if *word & bit != 0 || index >= self.targets.len() {
            return None;
        }
        *word |= bit;
        self.open -= 1;
        let then = match (&self.origin, outcome) {
            (Origin::Live(_), Outcome::Acked) if !self.reported => Then::Count,
            (Origin::Live(ticket), Outcome::Acked) => Then::Report {
                target: self.targets[index].clone(),
                id: self.id.clone(),
                ticket: ticket.clone(),
            },
            (Origin::Live(ticket), Outcome::Failed) => Then::Retry {
                target: self.targets[index].clone(),
                body: self.body.clone(),
                id: self.id.clone(),
                ticket: ticket.clone(),
            },
            (Origin::Stored(key), Outcome::Acked) => Then::Unstore {
                target: self.targets[index].clone(),
                key: key.clone(),
            },
            (Origin::Stored(_), Outcome::Failed) => Then::Keep,
        };
        Some(Taken {
            kind: self.kind,
            outcome,
            then,
        })
    }
}

/// A comet settled a delivery that was sent to another comet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotItsOwn;

/// A settled delivery, with what settling it leaves to do.
pub struct Taken {
    pub kind: DeliveryKind,
    pub outcome: Outcome,
    pub then: Then,
}

/// What a settled delivery leaves to do.
pub enum Then {
    /// A live delivery was acked: count it.
    Count,
    /// A live delivery was acked with reports on: count and report it.
    Report {
        target: Target,
        id: Option<Arc<str>>,
        ticket: Ticket,
    },
    /// A live delivery failed: try the terminal's new session, or store it.
    Retry {
        target: Target,
        body: Bytes,
        id: Option<Arc<str>>,
        ticket: Ticket,
    },
    /// A stored message was acked: remove it from the store.
    Unstore { target: Target, key: OfflineKey },
    /// A stored message's delivery failed: it stays stored.
    Keep,
}

/// The deliveries in flight.
#[derive(Default)]
pub struct Pending {
    next_group: AtomicU64,
    groups: ShardedMap<u64, Group>,
    /// Whether acks are reported: only then does a settled ack carry its target and ticket.
    reported: bool,
}

impl Pending {
    /// No delivery in flight; `reported` when `topics.delivery_report` is set.
    pub fn new(reported: bool) -> Pending {
        Pending {
            reported,
            ..Pending::default()
        }
    }

    /// Starts the deliveries of one message, to about `receivers` sessions; none is kept until
    /// [`Planned::open`]. `id` is the message's, for its delivery reports.
    pub fn plan(
        &self,
        kind: DeliveryKind,
        body: &Bytes,
        id: Option<Arc<str>>,
        origin: Origin,
        receivers: usize,
    ) -> Planned<'_> {
        Planned {
            pending: self,
            kind,
            body: body.clone(),
            id,
            origin,
            receivers: receivers.min(GROUP_CAPACITY),
            full: Vec::new(),
            current: None,
        }
    }

    /// Settles a delivery as `comet` reports it; `None` if it is not in flight (settled
    /// already, or never kept), [`NotItsOwn`] if it was sent to another comet.
    pub fn take(
        &self,
        id: DeliveryId,
        outcome: Outcome,
        comet: CometIdx,
    ) -> Result<Option<Taken>, NotItsOwn> {
        let (number, index) = split_id(id);
        let mut shard = self.groups.lock(&number);
        let Some(group) = shard.get_mut(&number) else {
            return Ok(None);
        };
        match group.targets.get(index) {
            Some(target) if target.comet != comet => return Err(NotItsOwn),
            Some(_) => {}
            None => return Ok(None),
        }
        let taken = group.settle(index, outcome);
        let done = (group.open == 0).then(|| shard.remove(&number));
        drop(shard);
        // The last delivery of a live message drops its ticket here, outside the lock.
        drop(done);
        Ok(taken)
    }

    /// Takes every delivery sent to a comet, as failed.
    pub fn take_comet(&self, comet: CometIdx) -> Vec<Taken> {
        let mut out = Vec::new();
        let mut done = Vec::new();
        self.groups.each_shard(|shard| {
            for group in shard.values_mut() {
                for index in 0..group.targets.len() {
                    if group.targets[index].comet == comet
                        && let Some(taken) = group.settle(index, Outcome::Failed)
                    {
                        out.push(taken);
                    }
                }
            }
            done.extend(shard.extract_if(|_, group| group.open == 0));
        });
        drop(done);
        out
    }
}

/// The deliveries of one message being planned; kept by [`Planned::open`].
pub struct Planned<'a> {
    pending: &'a Pending,
    kind: DeliveryKind,
    body: Bytes,
    id: Option<Arc<str>>,
    origin: Origin,
    /// How many deliveries a group is sized for.
    receivers: usize,
    /// Groups filled to capacity, for a message with more receivers than one group numbers.
    full: Vec<(u64, Group)>,
    current: Option<(u64, Group)>,
}

impl Planned<'_> {
    pub fn kind(&self) -> DeliveryKind {
        self.kind
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The message's `id`.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The message's `id`, shared.
    pub fn id_arc(&self) -> Option<&Arc<str>> {
        self.id.as_ref()
    }

    /// The ticket of a live message.
    pub fn ticket(&self) -> Option<&Ticket> {
        match &self.origin {
            Origin::Live(ticket) => Some(ticket),
            Origin::Stored(_) => None,
        }
    }

    /// How many deliveries a group is sized for.
    pub fn receivers(&self) -> usize {
        self.receivers
    }

    /// Adds a delivery to `target`; returns what to send its comet, with `flag`.
    pub fn add(&mut self, target: Target, flag: u8) -> Delivery {
        if let Some((_, group)) = &self.current
            && group.targets.len() == GROUP_CAPACITY
        {
            self.full.extend(self.current.take());
        }
        let (number, group) = self.current.get_or_insert_with(|| {
            // Numbers wrap within the bits a delivery id leaves them; a group is long settled
            // before its number comes round again.
            let number = self.pending.next_group.fetch_add(1, Ordering::Relaxed) + 1;
            let group = Group {
                kind: self.kind,
                body: self.body.clone(),
                id: self.id.clone(),
                reported: self.pending.reported,
                origin: self.origin.clone(),
                targets: Vec::with_capacity(self.receivers),
                settled: Vec::with_capacity(self.receivers.div_ceil(64)),
                open: 0,
            };
            (number & (u64::MAX >> INDEX_BITS), group)
        });
        let session = target.session;
        let id = delivery_id(*number, group.push(target));
        Delivery {
            id,
            session,
            kind: self.kind,
            flag,
            body: self.body.clone(),
        }
    }

    /// Keeps the planned deliveries until they settle; call it before sending any of them.
    pub fn open(self) {
        for (number, mut group) in self.full.into_iter().chain(self.current) {
            // Sized for every receiver, a group of a broadcast that reached few of them gives
            // the rest back before it waits for acks.
            if group.targets.capacity() > 2 * group.targets.len() {
                group.targets.shrink_to_fit();
                group.settled.shrink_to_fit();
            }
            self.pending.groups.lock(&number).insert(number, group);
        }
    }
}

/// The offline form of a message of `kind`.
pub fn offline_message(kind: DeliveryKind, flag: u8, body: Bytes) -> OfflineMessage {
    match kind {
        DeliveryKind::Push { .. } => OfflineMessage::Push { body },
        DeliveryKind::Callback => OfflineMessage::Callback { body },
        DeliveryKind::Im => OfflineMessage::Im { flag, body },
    }
}

impl Router {
    /// Does what a settled delivery leaves to do.
    pub(super) fn finish(&self, taken: Taken) {
        let Taken {
            kind,
            outcome,
            then,
        } = taken;
        match then {
            Then::Count => {
                self.metrics.delivery(kind, outcome).inc();
            }
            Then::Report { target, id, ticket } => {
                self.metrics.delivery(kind, outcome).inc();
                self.reports.publish(
                    Report {
                        id: id.as_deref(),
                        uid: &target.uid,
                        termtype: target.term.bit(),
                        kind,
                        outcome: ReportOutcome::Acked,
                    },
                    Hold::Ticket(ticket),
                );
            }
            Then::Retry {
                target,
                body,
                id,
                ticket,
            } => {
                self.metrics.delivery(kind, outcome).inc();
                self.retry_or_store(target, kind, body, id, ticket);
            }
            Then::Unstore { target, key } => {
                self.metrics.offline_delivered(kind).inc();
                let uid = target.uid.clone();
                let key = StoredKey {
                    uid: target.uid,
                    term: target.term,
                    item: key,
                };
                let store = self.store.clone();
                // A stored message carries no id: its report says `null`.
                self.reports.publish(
                    Report {
                        id: None,
                        uid: &uid,
                        termtype: target.term.bit(),
                        kind,
                        outcome: ReportOutcome::Acked,
                    },
                    Hold::Unstore(Box::new(move || store.remove_offline(vec![key]))),
                );
            }
            Then::Keep => {}
        }
    }

    /// A live delivery failed: if the terminal has registered again meanwhile (a new session),
    /// send it there; otherwise apply the offline rule.
    fn retry_or_store(
        &self,
        failed: Target,
        kind: DeliveryKind,
        body: Bytes,
        id: Option<Arc<str>>,
        ticket: Ticket,
    ) {
        enum Next {
            Redeliver(CometIdx, Delivery),
            Stored,
            Dropped,
        }
        let Target { uid, term, .. } = failed;
        let next = self.sessions.locked(&uid, |slots| {
            let flag = u8::from(slots.web_online());
            match slots.get(term) {
                Some(at) if at.session != failed.session => {
                    let mut planned =
                        self.pending
                            .plan(kind, &body, id.clone(), Origin::Live(ticket.clone()), 1);
                    let delivery = planned.add(
                        Target {
                            comet: at.comet,
                            session: at.session,
                            uid: uid.clone(),
                            term,
                        },
                        flag,
                    );
                    planned.open();
                    Next::Redeliver(at.comet, delivery)
                }
                _ if term == TermType::Web => Next::Dropped,
                _ => {
                    // An IM stored now keeps the Web-online flag of now.
                    let write = OfflineWrite {
                        uid: uid.clone(),
                        term,
                        message: offline_message(kind, flag, body.clone()),
                    };
                    self.stored_for(&uid, term);
                    self.hold_until_durable(
                        self.store.store_offline(vec![write]),
                        Some(ticket.clone()),
                    );
                    self.phones.notify(&uid, term, kind, &body, id.as_ref());
                    Next::Stored
                }
            }
        });
        let outcome = match next {
            Next::Redeliver(comet, delivery) => {
                self.send(comet, vec![CometCommand::Deliver(delivery)]);
                return;
            }
            Next::Stored => {
                self.metrics.offline_stored(kind).inc();
                ReportOutcome::Stored
            }
            Next::Dropped => {
                self.metrics.dropped(Dropped::WebOffline).inc();
                ReportOutcome::Dropped
            }
        };
        if self.reports.enabled() {
            self.reports.publish(
                Report {
                    id: id.as_deref(),
                    uid: &uid,
                    termtype: term.bit(),
                    kind,
                    outcome,
                },
                Hold::Ticket(ticket),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::ticket::Retire;
    use std::sync::atomic::AtomicBool;

    struct Retired(Arc<AtomicBool>);

    impl Retire for Retired {
        fn retire(self: Box<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
        fn requeue(self: Box<Self>) {}
    }

    fn target(comet: CometIdx, session: SessionId) -> Target {
        Target {
            comet,
            session,
            uid: Arc::from(format!("u{session}")),
            term: TermType::Android,
        }
    }

    fn broadcast(pending: &Pending, targets: Vec<Target>) -> (Vec<Delivery>, Arc<AtomicBool>) {
        let retired = Arc::new(AtomicBool::new(false));
        let origin = Origin::Live(Ticket::new(Retired(retired.clone())));
        let mut planned = pending.plan(
            DeliveryKind::Im,
            &Bytes::from_static(b"hi"),
            None,
            origin,
            3,
        );
        let deliveries = targets.into_iter().map(|t| planned.add(t, 0)).collect();
        planned.open();
        (deliveries, retired)
    }

    #[test]
    fn a_message_retires_when_its_last_delivery_settles() {
        let pending = Pending::default();
        let (d, retired) = broadcast(&pending, vec![target(0, 1), target(0, 2), target(1, 3)]);
        let ids: Vec<DeliveryId> = d.iter().map(|d| d.id).collect();
        assert_eq!(d.iter().map(|d| d.session).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(ids.windows(2).all(|w| w[0] != w[1]), "ids are distinct");

        let acked = pending
            .take(ids[0], Outcome::Acked, 0)
            .expect("its comet")
            .expect("in flight");
        assert!(matches!(acked.then, Then::Count));
        assert!(
            matches!(pending.take(ids[0], Outcome::Acked, 0), Ok(None)),
            "settled once"
        );

        let failed = pending
            .take(ids[2], Outcome::Failed, 1)
            .expect("its comet")
            .expect("in flight");
        let Then::Retry {
            target,
            body,
            ticket,
            ..
        } = failed.then
        else {
            panic!("a failed live delivery is retried or stored");
        };
        assert_eq!(&body[..], b"hi");
        assert_eq!((&*target.uid, target.session), ("u3", 3));
        drop(ticket);
        assert!(
            !retired.load(Ordering::SeqCst),
            "one delivery still in flight"
        );

        pending
            .take(ids[1], Outcome::Acked, 0)
            .expect("its comet")
            .expect("in flight");
        assert!(
            retired.load(Ordering::SeqCst),
            "retired with its last delivery"
        );
        assert!(matches!(pending.take(ids[1], Outcome::Failed, 0), Ok(None)));
    }

    #[test]
    fn only_the_comet_a_delivery_went_to_settles_it() {
        let pending = Pending::default();
        let (d, retired) = broadcast(&pending, vec![target(1, 1)]);
        assert_eq!(
            pending.take(d[0].id, Outcome::Acked, 2).err(),
            Some(NotItsOwn)
        );
        assert!(
            !retired.load(Ordering::SeqCst),
            "a forged ack retires nothing"
        );
        let failed = pending
            .take(d[0].id, Outcome::Failed, 1)
            .expect("its comet");
        assert!(matches!(
            failed,
            Some(Taken {
                then: Then::Retry { .. },
                ..
            })
        ));
    }

    #[test]
    fn a_broadcast_that_reached_few_keeps_room_for_few() {
        let pending = Pending::default();
        let origin = Origin::Live(Ticket::detached());
        let mut planned = pending.plan(DeliveryKind::Im, &Bytes::new(), None, origin, 100_000);
        let d = planned.add(target(0, 1), 0);
        planned.open();
        let (number, _) = split_id(d.id);
        let shard = pending.groups.lock(&number);
        let group = shard.get(&number).expect("kept");
        assert!(
            group.targets.capacity() < 100,
            "{}",
            group.targets.capacity()
        );
        assert!(
            group.settled.capacity() < 100,
            "{}",
            group.settled.capacity()
        );
    }

    #[test]
    fn planned_deliveries_not_opened_are_not_in_flight() {
        let pending = Pending::default();
        let retired = Arc::new(AtomicBool::new(false));
        let origin = Origin::Live(Ticket::new(Retired(retired.clone())));
        let mut planned = pending.plan(DeliveryKind::Callback, &Bytes::new(), None, origin, 1);
        let d = planned.add(target(0, 1), 0);
        drop(planned);
        assert!(matches!(pending.take(d.id, Outcome::Acked, 0), Ok(None)));
        assert!(retired.load(Ordering::SeqCst));
    }

    #[test]
    fn a_comet_that_leaves_fails_only_its_own_deliveries() {
        let pending = Pending::default();
        let (first, _) = broadcast(&pending, vec![target(0, 1), target(1, 2)]);
        let (second, retired) = broadcast(&pending, vec![target(1, 3)]);
        let mut gone: Vec<SessionId> = pending
            .take_comet(1)
            .into_iter()
            .map(|t| match t.then {
                Then::Retry { target, .. } => target.session,
                _ => panic!("a live delivery on a comet that left is retried or stored"),
            })
            .collect();
        gone.sort_unstable();
        assert_eq!(gone, [2, 3]);
        assert!(
            retired.load(Ordering::SeqCst),
            "the second message had only comet 1"
        );
        assert!(matches!(
            pending.take(second[0].id, Outcome::Acked, 1),
            Ok(None)
        ));
        assert!(matches!(
            pending.take(first[1].id, Outcome::Acked, 1),
            Ok(None)
        ));
        assert!(matches!(
            pending.take(first[0].id, Outcome::Acked, 0),
            Ok(Some(_))
        ));
    }

    #[test]
    fn a_stored_message_is_removed_only_when_acked() {
        let pending = Pending::default();
        let open = |id| {
            let key = OfflineKey::Callback { id };
            let mut planned = pending.plan(
                DeliveryKind::Callback,
                &Bytes::new(),
                None,
                Origin::Stored(key),
                1,
            );
            let d = planned.add(target(0, 1), 0);
            planned.open();
            d.id
        };
        let (a, b) = (open(7), open(8));
        let acked = pending
            .take(a, Outcome::Acked, 0)
            .expect("its comet")
            .expect("in flight");
        let Then::Unstore { target, key } = acked.then else {
            panic!("an acked stored message is removed");
        };
        assert_eq!((target.session, key), (1, OfflineKey::Callback { id: 7 }));
        let failed = pending
            .take(b, Outcome::Failed, 0)
            .expect("its comet")
            .expect("in flight");
        assert!(matches!(failed.then, Then::Keep));
    }
}
