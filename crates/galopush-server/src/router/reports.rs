//! Delivery reports (SPEC §12): for each receiving terminal of a down-message, what became of
//! it — acked, stored offline, accepted by a phone's push service, or dropped — published on
//! `topics.delivery_report` through the bus's outbound path, at least once.
//!
//! A report of a live message holds the message's ticket until the bus has the report
//! durably; a report the bus refuses (`limits.outbox_pending`, a failing outbox or nsqd) fails
//! the ticket, so the message is applied again and reported again. A report of a stored
//! message acked after a REGISTER is published before the stored copy is removed; a refused
//! one leaves the copy stored, to be delivered and reported at the next REGISTER. A report that
//! a push service accepted a notification is written by the notification's sender itself
//! ([`Reports::write`]), which tries again until the bus has it.
//!
//! Reports are written by one task, as many at a time as have come in while the last write
//! was in flight: one outbox write (one MPUB on NSQ) for a batch, instead of a write and a task
//! per report.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use galopush_protocol::bus::{self, DeliveryReport};
use tokio::sync::mpsc;

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
    /// Apple's push service accepted it for the phone.
    Apns,
    /// Google's push service accepted it for the phone.
    Fcm,
    /// Nothing was kept: no login record, or a Web terminal that is not live.
    Dropped,
}

impl ReportOutcome {
    pub const ALL: [ReportOutcome; 5] = [
        ReportOutcome::Acked,
        ReportOutcome::Stored,
        ReportOutcome::Apns,
        ReportOutcome::Fcm,
        ReportOutcome::Dropped,
    ];

    /// The `outcome` of the report, and its metric label.
    pub fn label(self) -> &'static str {
        match self {
            ReportOutcome::Acked => "acked",
            ReportOutcome::Stored => "stored",
            ReportOutcome::Apns => "apns",
            ReportOutcome::Fcm => "fcm",
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

/// Reports waiting for the writer, at most: a report that finds the queue full fails as one
/// the outbox refused (its message is reported again). Beyond it the outbox's own bound,
/// `limits.outbox_pending`, applies.
const WAITING: usize = 65_536;
/// Reports in one outbox write, at most.
const BATCH: usize = 4096;

/// A report on its way to the bus, with what it holds.
struct Waiting {
    json: Bytes,
    outcome: ReportOutcome,
    hold: Hold,
}

/// The publishing side of delivery reports; does nothing when `topics.delivery_report` is
/// empty.
#[derive(Clone)]
pub struct Reports {
    topic: Option<Arc<str>>,
    publisher: Arc<dyn Publisher>,
    metrics: Arc<Metrics>,
    /// The writer's queue, started with the first report (inside the runtime).
    writer: OnceLock<mpsc::Sender<Waiting>>,
}

impl Reports {
    pub fn new(topic: &str, publisher: Arc<dyn Publisher>, metrics: Arc<Metrics>) -> Reports {
        Reports {
            topic: (!topic.is_empty()).then(|| Arc::from(topic)),
            publisher,
            metrics,
            writer: OnceLock::new(),
        }
    }

    /// Whether reports are published at all.
    pub fn enabled(&self) -> bool {
        self.topic.is_some()
    }

    /// Hands `report` to the writer, which keeps `hold` as its kind says until the bus has the
    /// report. Without a report topic, an `Unstore` runs at once and a ticket is let go.
    pub fn publish(&self, report: Report<'_>, hold: Hold) {
        let Some(topic) = &self.topic else {
            if let Hold::Unstore(remove) = hold {
                spawn_removal(remove(), self.metrics.clone());
            }
            return;
        };
        let json = encode(&report);
        let writer = self.writer.get_or_init(|| {
            let (queue, waiting) = mpsc::channel(WAITING);
            tokio::spawn(write_reports(
                topic.clone(),
                self.publisher.clone(),
                self.metrics.clone(),
                waiting,
            ));
            queue
        });
        let waiting = Waiting {
            json,
            outcome: report.outcome,
            hold,
        };
        if let Err(refused) = writer.try_send(waiting) {
            let waiting = match refused {
                mpsc::error::TrySendError::Full(w) | mpsc::error::TrySendError::Closed(w) => w,
            };
            self.metrics.refused(Refusal::OutboxPending);
            if let Hold::Ticket(ticket) = waiting.hold {
                ticket.fail();
            }
        }
    }
}

impl Reports {
    /// Publishes `report` now and returns once the bus has it (or refused it), for a caller
    /// that tries again itself. Does nothing without a report topic.
    pub async fn write(&self, report: Report<'_>) -> Result<(), PublishError> {
        let Some(topic) = &self.topic else {
            return Ok(());
        };
        let written = self.publisher.publish(topic, encode(&report)).await;
        match &written {
            Ok(()) => {
                self.metrics.report(report.outcome).inc();
            }
            Err(PublishError::Full { .. }) => self.metrics.refused(Refusal::OutboxPending),
            Err(_) => {
                self.metrics.store_errors.inc();
            }
        }
        written
    }
}

/// The report's JSON, as published.
fn encode(report: &Report<'_>) -> Bytes {
    Bytes::from(bus::encode(
        &DeliveryReport {
            id: report.id,
            uid: report.uid,
            termtype: report.termtype,
            kind: kind_label(report.kind),
            outcome: report.outcome.label(),
            at: super::unix_ms(),
        },
        false,
    ))
}

/// Writes the reports of `waiting` in batches until the router is gone, then lets go of what
/// each held: a ticket released (or failed, when the bus refused), a stored copy removed.
async fn write_reports(
    topic: Arc<str>,
    publisher: Arc<dyn Publisher>,
    metrics: Arc<Metrics>,
    mut waiting: mpsc::Receiver<Waiting>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while waiting.recv_many(&mut batch, BATCH).await > 0 {
        let jsons = batch.iter().map(|w| w.json.clone()).collect();
        let written = publisher.publish_many(&topic, jsons).await;
        if let Err(e) = &written {
            match e {
                PublishError::Full { .. } => metrics.refused(Refusal::OutboxPending),
                _ => {
                    metrics.store_errors.inc();
                    tracing::warn!(error = %e, reports = batch.len(), "delivery reports not taken by the bus; their messages will be reported again");
                }
            }
        }
        for Waiting { outcome, hold, .. } in batch.drain(..) {
            match (&written, hold) {
                (Ok(()), Hold::Unstore(remove)) => {
                    metrics.report(outcome).inc();
                    spawn_removal(remove(), metrics.clone());
                }
                (Ok(()), Hold::Ticket(_)) => {
                    metrics.report(outcome).inc();
                }
                (Err(_), Hold::Ticket(ticket)) => ticket.fail(),
                (Err(_), Hold::Unstore(_)) => {}
            }
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::store::resolved;

    /// A bus that records the size of each write and holds the first one until let go.
    struct GatedBus {
        writes: Mutex<Vec<usize>>,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl Publisher for GatedBus {
        async fn publish(&self, topic: &str, json: Bytes) -> Result<(), PublishError> {
            self.publish_many(topic, vec![json]).await
        }

        async fn publish_many(&self, _: &str, jsons: Vec<Bytes>) -> Result<(), PublishError> {
            let first = {
                let mut writes = self.writes.lock().expect("writes");
                writes.push(jsons.len());
                writes.len() == 1
            };
            if first {
                let _ = self.gate.acquire().await.expect("gate").forget();
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn reports_that_come_in_during_a_write_go_out_in_one_write() {
        let bus = Arc::new(GatedBus {
            writes: Mutex::default(),
            gate: tokio::sync::Semaphore::new(0),
        });
        let metrics = Arc::new(Metrics::new());
        let reports = Reports::new("deliveryReport", bus.clone(), metrics.clone());
        let removed = Arc::new(AtomicUsize::new(0));
        let report = |n: usize| {
            let removed = removed.clone();
            reports.publish(
                Report {
                    id: None,
                    uid: &format!("u{n}"),
                    termtype: 1,
                    kind: DeliveryKind::Callback,
                    outcome: ReportOutcome::Acked,
                },
                Hold::Unstore(Box::new(move || {
                    removed.fetch_add(1, Ordering::SeqCst);
                    resolved(Ok(()))
                })),
            );
        };
        report(0);
        while bus.writes.lock().expect("writes").is_empty() {
            tokio::task::yield_now().await;
        }
        for n in 1..1000 {
            report(n);
        }
        bus.gate.add_permits(1);
        while removed.load(Ordering::SeqCst) < 1000 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*bus.writes.lock().expect("writes"), [1, 999]);
        assert_eq!(metrics.report(ReportOutcome::Acked).get(), 1000);
    }

    #[tokio::test]
    async fn a_report_beyond_the_writers_queue_is_refused_and_its_stored_copy_kept() {
        let bus = Arc::new(GatedBus {
            writes: Mutex::default(),
            gate: tokio::sync::Semaphore::new(0),
        });
        let metrics = Arc::new(Metrics::new());
        let reports = Reports::new("deliveryReport", bus.clone(), metrics.clone());
        let removed = Arc::new(AtomicUsize::new(0));
        let report = || {
            let removed = removed.clone();
            reports.publish(
                Report {
                    id: None,
                    uid: "u",
                    termtype: 1,
                    kind: DeliveryKind::Im,
                    outcome: ReportOutcome::Acked,
                },
                Hold::Unstore(Box::new(move || {
                    removed.fetch_add(1, Ordering::SeqCst);
                    resolved(Ok(()))
                })),
            );
        };
        // The writer holds the first report in a write that does not end; the queue fills.
        report();
        while bus.writes.lock().expect("writes").is_empty() {
            tokio::task::yield_now().await;
        }
        for _ in 0..WAITING {
            report();
        }
        assert_eq!(metrics.refusals(Refusal::OutboxPending), 0);
        report();
        assert_eq!(metrics.refusals(Refusal::OutboxPending), 1);
        // Once the bus takes them, every report the queue held is written; the refused one's
        // stored copy was never removed.
        bus.gate.add_permits(1);
        while removed.load(Ordering::SeqCst) < 1 + WAITING {
            tokio::task::yield_now().await;
        }
        assert_eq!(removed.load(Ordering::SeqCst), 1 + WAITING);
        assert_eq!(
            metrics.report(ReportOutcome::Acked).get(),
            1 + WAITING as u64
        );
    }
}
