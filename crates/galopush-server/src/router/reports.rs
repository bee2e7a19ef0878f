//! Delivery reports (SPEC §12): for each receiving terminal of a down-message, what became of
//! it — acked, stored offline, or dropped — published on `topics.delivery_report` through the
//! bus's outbound path, at least once.
//!
//! A report of a live message holds the message's ticket until the bus has the report
//! durably; a report the bus refuses (`limits.outbox_pending`, a failing outbox or nsqd) fails
//! the ticket, so the message is applied again and reported again. A report of a stored
//! message acked after a REGISTER is published before the stored copy is removed; a refused
//! one leaves the copy stored, to be delivered and reported at the next REGISTER.

use std::sync::Arc;

use bytes::Bytes;
use galopush_protocol::bus::{self, DeliveryReport};

use crate::bus::{PublishError, Publisher, Ticket};
use crate::link::DeliveryKind;
use crate::metrics::{Metrics, Refusal};
use crate::store::StoreFuture;

/// What became of a message for one terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The terminal acked it (live, or later from the store).
    Acked,
    /// It was kept offline for the terminal.
    Stored,
    /// Nothing was kept: no login record, or a Web terminal that is not live.
    Dropped,
}

impl ReportOutcome {
    pub const ALL: [ReportOutcome; 3] = [
        ReportOutcome::Acked,
        ReportOutcome::Stored,
        ReportOutcome::Dropped,
    ];

    /// The `outcome` of the report, and its metric label.
    pub fn label(self) -> &'static str {
        match self {
            ReportOutcome::Acked => "acked",
            ReportOutcome::Stored => "stored",
            ReportOutcome::Dropped => "dropped",
        }
    }
}

/// The report of one terminal, before it is written.
pub struct Report<'a> {
    pub id: Option<&'a str>,
    pub uid: &'a str,
    pub termtype: u8,
    pub kind: DeliveryKind,
    pub outcome: ReportOutcome,
}

/// What a report's publication keeps waiting, and what it lets go once the bus has it.
pub enum Hold {
    /// A live message: its ticket is held until the report is durable and failed if not.
    Ticket(Ticket),
    /// A stored message acked: removed from the store only once the report is durable.
    Unstore(Box<dyn FnOnce() -> StoreFuture + Send>),
}

/// The publishing side of delivery reports; does nothing when `topics.delivery_report` is
/// empty.
pub struct Reports {
    topic: Option<Arc<str>>,
    publisher: Arc<dyn Publisher>,
    metrics: Arc<Metrics>,
}

impl Reports {
    pub fn new(topic: &str, publisher: Arc<dyn Publisher>, metrics: Arc<Metrics>) -> Reports {
        Reports {
            topic: (!topic.is_empty()).then(|| Arc::from(topic)),
            publisher,
            metrics,
        }
    }

    /// Whether reports are published at all.
    pub fn enabled(&self) -> bool {
        self.topic.is_some()
    }

    /// Publishes `report` from a task of its own, keeping `hold` as its kind says. Without a
    /// report topic, an `Unstore` runs at once and a ticket is let go.
    pub fn publish(&self, report: Report<'_>, hold: Hold) {
        let Some(topic) = &self.topic else {
            if let Hold::Unstore(remove) = hold {
                spawn_removal(remove(), self.metrics.clone());
            }
            return;
        };
        let json = Bytes::from(bus::encode(
            &DeliveryReport {
                id: report.id,
                uid: report.uid,
                termtype: report.termtype,
                kind: kind_label(report.kind),
                outcome: report.outcome.label(),
                at: super::unix_ms(),
            },
            false,
        ));
        let outcome = report.outcome;
        let topic = topic.clone();
        let publisher = self.publisher.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            match publisher.publish(&topic, json).await {
                Ok(()) => {
                    metrics.report(outcome).inc();
                    if let Hold::Unstore(remove) = hold {
                        spawn_removal(remove(), metrics);
                    }
                }
                Err(e) => {
                    match e {
                        PublishError::Full { .. } => metrics.refused(Refusal::OutboxPending),
                        _ => {
                            metrics.store_errors.inc();
                            tracing::warn!(error = %e, "delivery report not taken by the bus; the message will be reported again");
                        }
                    }
                    if let Hold::Ticket(ticket) = hold {
                        ticket.fail();
                    }
                }
            }
        });
    }
}

/// Removes an acked stored message, counting a failure (the message stays stored).
fn spawn_removal(removal: StoreFuture, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        if let Err(e) = removal.await {
            metrics.store_errors.inc();
            tracing::warn!(error = %e, "cannot remove an acked stored message; it will be sent again");
        }
    });
}

/// The `kind` of a report.
pub fn kind_label(kind: DeliveryKind) -> &'static str {
    match kind {
        DeliveryKind::Push { .. } => "push",
        DeliveryKind::Callback => "callback",
        DeliveryKind::Im => "im",
    }
}
