//! Deliveries in flight: what the router sent to a comet and has not seen settled, and what
//! happens when it settles — an ack retires it (or removes the stored message it came from),
//! a failure applies the offline rule (SPEC §6).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use galopush_protocol::TermType;

use super::{CometIdx, Router};
use crate::bus::Ticket;
use crate::link::{CometCommand, Delivery, DeliveryId, DeliveryKind, Outcome, SessionId};
use crate::metrics::Dropped;
use crate::sharded::ShardedMap;
use crate::store::offline::OfflineMessage;
use crate::store::{OfflineKey, OfflineWrite, StoredKey};

/// Where a delivery came from.
pub enum Origin {
    /// A live message; holds its inbound message until it settles.
    Live(Ticket),
    /// A stored message, removed from the store when acked.
    Stored(OfflineKey),
}

/// A delivery the router is waiting to see settled.
pub struct PendingDelivery {
    pub comet: CometIdx,
    pub session: SessionId,
    pub uid: Arc<str>,
    pub term: TermType,
    pub kind: DeliveryKind,
    pub body: Bytes,
    pub origin: Origin,
}

/// The deliveries in flight.
#[derive(Default)]
pub struct Pending {
    next: AtomicU64,
    deliveries: ShardedMap<DeliveryId, PendingDelivery>,
}

impl Pending {
    /// Keeps a delivery until it settles; returns what to send the comet for it, with `flag`.
    pub fn open(&self, delivery: PendingDelivery, flag: u8) -> Delivery {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let out = Delivery {
            id,
            session: delivery.session,
            kind: delivery.kind,
            flag,
            body: delivery.body.clone(),
        };
        self.deliveries.lock(&id).insert(id, delivery);
        out
    }

    pub fn take(&self, id: DeliveryId) -> Option<PendingDelivery> {
        self.deliveries.lock(&id).remove(&id)
    }

    /// Takes every delivery sent to a comet.
    pub fn take_comet(&self, comet: CometIdx) -> Vec<PendingDelivery> {
        let mut out = Vec::new();
        self.deliveries.each_shard(|shard| {
            let ids: Vec<DeliveryId> = shard
                .iter()
                .filter(|(_, p)| p.comet == comet)
                .map(|(id, _)| *id)
                .collect();
            out.extend(ids.into_iter().filter_map(|id| shard.remove(&id)));
        });
        out
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
    /// Settles a delivery.
    pub(super) fn finish(&self, p: PendingDelivery, outcome: Outcome) {
        match p.origin {
            Origin::Live(ticket) => {
                self.metrics.delivery(p.kind, outcome).inc();
                if outcome == Outcome::Failed {
                    self.retry_or_store(p.uid, p.term, p.session, p.kind, p.body, ticket);
                }
            }
            Origin::Stored(item) => {
                if outcome == Outcome::Acked {
                    self.metrics.offline_delivered(p.kind).inc();
                    let key = StoredKey {
                        uid: p.uid,
                        term: p.term,
                        item,
                    };
                    self.hold_until_durable(self.store.remove_offline(vec![key]), None);
                }
            }
        }
    }

    /// A live delivery failed: if the terminal has registered again meanwhile (a new session),
    /// send it there; otherwise apply the offline rule.
    fn retry_or_store(
        &self,
        uid: Arc<str>,
        term: TermType,
        failed: SessionId,
        kind: DeliveryKind,
        body: Bytes,
        ticket: Ticket,
    ) {
        enum Next {
            Redeliver(CometIdx, Delivery),
            Stored,
            Dropped,
        }
        let next = self.sessions.locked(&uid, |slots| {
            let flag = u8::from(slots.web_online());
            match slots.get(term) {
                Some(at) if at.session != failed => {
                    let delivery = self.pending.open(
                        PendingDelivery {
                            comet: at.comet,
                            session: at.session,
                            uid: uid.clone(),
                            term,
                            kind,
                            body: body.clone(),
                            origin: Origin::Live(ticket.clone()),
                        },
                        flag,
                    );
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
                    self.hold_until_durable(
                        self.store.store_offline(vec![write]),
                        Some(ticket.clone()),
                    );
                    Next::Stored
                }
            }
        });
        match next {
            Next::Redeliver(comet, delivery) => {
                self.send(comet, vec![CometCommand::Deliver(delivery)])
            }
            Next::Stored => {
                self.metrics.offline_stored(kind).inc();
            }
            Next::Dropped => {
                self.metrics.dropped(Dropped::WebOffline).inc();
            }
        }
    }
}
