//! The embedded bus of `galopush standalone` (SPEC §7).
//!
//! Inbound: `/pub` and `/mpub` append messages to the inbox in the store and answer once that
//! is durable; one task applies them in the order they were accepted — without waiting for that
//! commit, so a message's deliveries may go out while it is still being made durable — and each
//! is deleted from the inbox when the router retires it, once its append has committed. After a
//! restart the inbox is replayed, in the same order.
//!
//! A message applied before its commit: if the commit succeeds, the message is applied once and
//! retired once (its delete waits for its sequence number); if it fails, `/pub` answers `503`,
//! nothing is kept and nothing retired, and what already went out is a duplicate of what the
//! publisher sends again (at-least-once). A crash before the commit is the same: the publisher
//! had no `200`.
//!
//! A message retired before the store took it for writing ([`Unwritten`]) is done — its effect
//! is durable (delivered and acked, or stored offline), which is what SPEC §7 asks of `200` —
//! so it is not written and nothing is deleted for it; a request all of whose messages are
//! done so is answered `200` at once, whatever its write becomes.
//!
//! Outbound: messages for the business side go to the outbox in the store and are POSTed to
//! `bus.webhook_url` (raw JSON, `?topic=T`), retried with back-off until a 2xx answer, then
//! deleted.
//!
//! Both are bounded (SPEC §10). Every inbox message holds an [`InboxSlot`] from acceptance to
//! retirement, one of `limits.inbox_pending`; when none is free, `/pub` and `/mpub` take
//! nothing and answer `503`. So the apply queue, the messages in flight and the inbox on disk
//! together never hold more than that (a replayed inbox that is larger, from a run with a
//! higher limit, is applied whole and takes new messages once it is under the limit). The
//! outbox takes at most `limits.outbox_pending` messages not yet POSTed; beyond that
//! [`Publisher::publish`] answers [`PublishError::Full`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::Shared;
use galopush_nsq::Backoff;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{AcceptError, Gate, Intake, PublishError, Publisher, Retire, Ticket, Topic};
use crate::config::TopicsConfig;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::router::inbound::Checked;
use crate::store::{QueuedMessage, Store, StoreError, StoreFuture, Unwritten};

/// The wait before trying a failing message again (requeued, or refused by the webhook):
/// 100 ms after its first failure, doubling up to 30 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));

/// Where an inbound message's inbox sequence number comes from.
enum Seq {
    /// Being made durable together with the rest of its `/pub` or `/mpub`; every message of
    /// the request shares the one write and reads its own number from the shared answer, or is
    /// retired before the write takes it.
    Pending(Appending, usize),
    /// Already in the inbox.
    Known(u64),
    /// Not kept (`bus.durable = false`).
    Volatile,
}

/// The write of one request's messages to the inbox.
#[derive(Clone)]
struct Appending {
    durable: Shared<StoreFuture<Arc<[u64]>>>,
    unwritten: Arc<Unwritten>,
}

impl Seq {
    /// What is known now: a pending append whose answer is in becomes `Known`; `None` when it
    /// failed — the request was answered `503`, the message is not in the inbox and is neither
    /// retired nor taken again (the publisher sends it again).
    fn settled(self) -> Option<Seq> {
        let Seq::Pending(appending, i) = self else {
            return Some(self);
        };
        match appending.durable.peek() {
            None => Some(Seq::Pending(appending, i)),
            Some(Ok(seqs)) => Some(seqs.get(i).copied().map_or(Seq::Volatile, Seq::Known)),
            Some(Err(_)) => None,
        }
    }
}

/// A message's place in the inbox bound (`limits.inbox_pending`), held from acceptance to
/// retirement; `None` for a message replayed when the inbox was over the bound.
struct InboxSlot {
    _permit: Option<OwnedSemaphorePermit>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for InboxSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

struct Accepted {
    topic: Topic,
    body: Bytes,
    /// What `/pub` read when it checked the message, so it is not parsed twice; `None` for
    /// messages replayed from the inbox or requeued, which are parsed again.
    checked: Option<Checked>,
    seq: Seq,
    attempt: u32,
    slot: InboxSlot,
}

/// The inbound side: `/pub` into the inbox, applied in order.
pub struct EmbeddedInbox {
    store: Arc<dyn Store>,
    router: Arc<Router>,
    topics: TopicsConfig,
    durable: bool,
    queue: mpsc::UnboundedSender<Accepted>,
    /// Puts a request's messages in the apply queue in the order the store took them.
    order: parking_lot::Mutex<()>,
    /// Stops the apply loop (shutdown).
    stop: CancellationToken,
    /// A permit per message applied and not yet retired.
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    retired: mpsc::UnboundedSender<Retirement>,
    /// A permit per message accepted and not yet retired (`limits.inbox_pending`).
    pending: Arc<Semaphore>,
    inbox_pending: usize,
    metrics: Arc<Metrics>,
}

/// How the inbox is bounded and applied.
#[derive(Debug, Clone, Copy)]
pub struct InboxSettings {
    /// Keep each accepted message durably before answering (`bus.durable`).
    pub durable: bool,
    /// Messages applied and not yet retired (`bus.max_in_flight`).
    pub max_in_flight: usize,
    /// Messages accepted and not yet retired (`limits.inbox_pending`).
    pub inbox_pending: usize,
}

/// What the retire loop is told.
enum Retirement {
    /// An inbox message is done: delete it (its topic, if still configured, for the metric).
    Done(u64, Option<Topic>),
    /// An inbox message is done while its append is being written: delete it once that commit
    /// answers its sequence number (nothing to delete if the commit failed).
    Committing(Shared<StoreFuture<Arc<[u64]>>>, usize, Topic),
    /// Commit what is gathered now and answer once it is durable.
    Flush(oneshot::Sender<()>),
}

impl EmbeddedInbox {
    /// Replays the inbox, then starts applying.
    pub async fn start(
        store: Arc<dyn Store>,
        router: Arc<Router>,
        settings: InboxSettings,
        gate: Gate,
    ) -> Result<Arc<EmbeddedInbox>, StoreError> {
        let InboxSettings {
            durable,
            max_in_flight,
            inbox_pending,
        } = settings;
        // Unbounded channels whose content is bounded by the slots each message holds.
        let (queue, accepted) = mpsc::unbounded_channel();
        let (retired, retirements) = mpsc::unbounded_channel();
        let topics = router.topics().clone();
        let metrics = router.metrics().clone();
        let pending = Arc::new(Semaphore::new(inbox_pending));
        let replay = store.inbox_load().await?;
        if !replay.is_empty() {
            tracing::info!(messages = replay.len(), "replaying the inbox");
        }
        for m in replay {
            match Topic::from_name(&m.topic, &topics) {
                Some(topic) => {
                    metrics.inbox_pending.inc();
                    let slot = InboxSlot {
                        _permit: pending.clone().try_acquire_owned().ok(),
                        gauge: metrics.inbox_pending.clone(),
                    };
                    let _ = queue.send(Accepted {
                        topic,
                        body: m.body,
                        checked: None,
                        seq: Seq::Known(m.seq),
                        attempt: 0,
                        slot,
                    });
                }
                None => {
                    tracing::warn!(topic = %m.topic, "inbox message for a topic no longer configured; dropped");
                    let _ = retired.send(Retirement::Done(m.seq, None));
                }
            }
        }
        let stop = CancellationToken::new();
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        let inbox = Arc::new(EmbeddedInbox {
            store: store.clone(),
            router: router.clone(),
            topics,
            durable,
            queue: queue.clone(),
            order: parking_lot::Mutex::new(()),
            stop: stop.clone(),
            in_flight: in_flight.clone(),
            max_in_flight,
            retired: retired.clone(),
            pending,
            inbox_pending,
            metrics: metrics.clone(),
        });
        tokio::spawn(apply_loop(
            router,
            ApplyQueues {
                accepted,
                requeue: queue,
                retired,
                in_flight,
            },
            gate,
            stop,
        ));
        tokio::spawn(retire_loop(store, metrics, retirements));
        Ok(inbox)
    }

    /// Shutting down: applies no more messages, gives those in flight up to `wait` to settle
    /// (acks arrive, time-outs store what was not acked), and commits the retirements, so that a
    /// clean restart replays only what was truly unfinished. What is cut off is applied again at
    /// the next start (at-least-once).
    pub async fn drain(&self, wait: Duration) {
        self.stop.cancel();
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        match tokio::time::timeout(wait, self.in_flight.acquire_many(all)).await {
            Ok(_) => tracing::info!("inbox drained: every applied message settled"),
            Err(_) => {
                let left = self.max_in_flight - self.in_flight.available_permits();
                tracing::warn!(
                    messages = left,
                    ?wait,
                    "messages still in flight at shutdown; they are applied again at the next start"
                );
            }
        }
        let (done, committed) = oneshot::channel();
        if self.retired.send(Retirement::Flush(done)).is_ok() {
            let _ = committed.await;
        }
    }
}

#[async_trait]
impl Intake for EmbeddedInbox {
    async fn accept(&self, topic_name: &str, bodies: Vec<Bytes>) -> Result<(), AcceptError> {
        let topic = Topic::from_name(topic_name, &self.topics).ok_or_else(|| {
            AcceptError::Malformed(format!(
                "unknown topic {topic_name:?}; inbound topics are {}",
                Topic::ALL
                    .map(|t| t.name(&self.topics).to_owned())
                    .join(", ")
            ))
        })?;
        if bodies.is_empty() {
            return Err(AcceptError::Malformed("no message in the body".into()));
        }
        // Sized once: collecting a `Result` cannot know the count, and would grow the vector
        // of these large values five times for a batch of 100.
        let mut checked = Vec::with_capacity(bodies.len());
        for (i, body) in bodies.iter().enumerate() {
            checked.push(self.router.check(topic, body).map_err(|why| {
                if bodies.len() == 1 {
                    AcceptError::Malformed(why)
                } else {
                    AcceptError::Malformed(format!("line {}: {why}", i + 1))
                }
            })?);
        }
        let mut slots = self.slots(bodies.len())?;
        if !self.durable {
            for (body, checked) in bodies.into_iter().zip(checked) {
                let _ = self.queue.send(Accepted {
                    topic,
                    body,
                    checked: Some(checked),
                    seq: Seq::Volatile,
                    attempt: 0,
                    slot: slots.next_slot(),
                });
            }
            return Ok(());
        }
        let unwritten = Unwritten::new(bodies.len());
        let durable = {
            let _in_order = self.order.lock();
            let entries = bodies
                .iter()
                .map(|b| (topic_name.to_owned(), b.clone()))
                .collect();
            let append = self
                .store
                .inbox_append_unless_retired(entries, unwritten.clone());
            let durable: StoreFuture<Arc<[u64]>> =
                Box::pin(async move { append.await.map(Arc::from) });
            let appending = Appending {
                durable: durable.shared(),
                unwritten: unwritten.clone(),
            };
            for (i, (body, checked)) in bodies.into_iter().zip(checked).enumerate() {
                let _ = self.queue.send(Accepted {
                    topic,
                    body,
                    checked: Some(checked),
                    seq: Seq::Pending(appending.clone(), i),
                    attempt: 0,
                    slot: slots.next_slot(),
                });
            }
            appending.durable
        };
        tokio::select! {
            durable = durable => durable
                .map(drop)
                .map_err(|e| AcceptError::Unavailable(format!("message not stored: {e}"))),
            () = unwritten.all_done() => Ok(()),
        }
    }
}

impl EmbeddedInbox {
    /// Takes `n` inbox slots at once, or none.
    fn slots(&self, n: usize) -> Result<Slots, AcceptError> {
        let limit = self.inbox_pending;
        if n > limit {
            return Err(AcceptError::TooMany { limit });
        }
        let permits = u32::try_from(n).map_err(|_| AcceptError::TooMany { limit })?;
        let permits = self
            .pending
            .clone()
            .try_acquire_many_owned(permits)
            .map_err(|_| AcceptError::Full { limit })?;
        self.metrics.inbox_pending.inc_by(n as i64);
        Ok(Slots {
            permits,
            gauge: self.metrics.inbox_pending.clone(),
        })
    }
}

/// Slots taken together for one request, handed out one per message.
struct Slots {
    permits: OwnedSemaphorePermit,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Slots {
    fn next_slot(&mut self) -> InboxSlot {
        InboxSlot {
            _permit: self.permits.split(1),
            gauge: self.gauge.clone(),
        }
    }
}

/// What the apply loop reads from and writes to.
struct ApplyQueues {
    accepted: mpsc::UnboundedReceiver<Accepted>,
    requeue: mpsc::UnboundedSender<Accepted>,
    retired: mpsc::UnboundedSender<Retirement>,
    in_flight: Arc<Semaphore>,
}

async fn apply_loop(router: Arc<Router>, queues: ApplyQueues, gate: Gate, stop: CancellationToken) {
    let ApplyQueues {
        mut accepted,
        requeue,
        retired,
        in_flight,
    } = queues;
    tokio::select! {
        () = gate.wait() => {}
        () = stop.cancelled() => return,
    }
    loop {
        let m = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            m = accepted.recv() => match m {
                Some(m) => m,
                None => return,
            },
        };
        // Applied without waiting for its append to commit (see the module doc); one whose
        // append is known to have failed was never accepted.
        let Some(seq) = m.seq.settled() else {
            continue;
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let ticket = Ticket::new(InboxEntry {
            topic: m.topic,
            body: m.body.clone(),
            seq,
            attempt: m.attempt,
            requeue: requeue.clone(),
            retired: retired.clone(),
            metrics: router.metrics().clone(),
            _permit: permit,
            slot: m.slot,
        });
        match m.checked {
            Some(checked) => router.apply_checked(m.topic, checked, ticket).await,
            None => router.apply(m.topic, &m.body, ticket).await,
        }
    }
}

/// How long retirements gather before their inbox deletes are committed together. A commit is
/// the dearest thing the embedded store does (callgrind: ~240k instructions, most of a
/// message's cost when deletes committed a few at a time); a crash within the window only
/// replays messages that were already delivered, which at-least-once allows.
const RETIRE_WINDOW: Duration = Duration::from_millis(20);

/// Deletes retired messages from the inbox, gathered over [`RETIRE_WINDOW`]; a message counts
/// as retired (the metric) once its delete is durable.
async fn retire_loop(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    mut retirements: mpsc::UnboundedReceiver<Retirement>,
) {
    let mut batch = Vec::new();
    while retirements.recv_many(&mut batch, 4096).await > 0 {
        let flush = |b: &[Retirement]| b.iter().any(|r| matches!(r, Retirement::Flush(_)));
        if !flush(&batch) {
            tokio::time::sleep(RETIRE_WINDOW).await;
            while !retirements.is_empty() && batch.len() < 65536 && !flush(&batch) {
                retirements.recv_many(&mut batch, 4096).await;
            }
        }
        let mut seqs = Vec::with_capacity(batch.len());
        let mut topics = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        for r in batch.drain(..) {
            match r {
                Retirement::Done(seq, topic) => {
                    seqs.push(seq);
                    topics.extend(topic);
                }
                // The append was queued before anything that retires its message: its commit
                // is due, and a delete is never queued ahead of it.
                Retirement::Committing(durable, i, topic) => {
                    if let Ok(Some(&seq)) = durable.await.as_deref().map(|s| s.get(i)) {
                        seqs.push(seq);
                        topics.push(topic);
                    }
                }
                Retirement::Flush(done) => flushes.push(done),
            }
        }
        if !seqs.is_empty() {
            match store.inbox_remove(seqs).await {
                Ok(()) => {
                    for topic in topics {
                        metrics.topic(topic).retired.inc();
                    }
                }
                // The messages stay in the inbox and are applied again after a restart.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot delete retired messages from the inbox")
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// An applied inbox message waiting to be retired.
struct InboxEntry {
    topic: Topic,
    body: Bytes,
    seq: Seq,
    attempt: u32,
    requeue: mpsc::UnboundedSender<Accepted>,
    retired: mpsc::UnboundedSender<Retirement>,
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
    /// Given back once the message is retired: its inbox delete is then queued, so the inbox on
    /// disk stays within the bound.
    slot: InboxSlot,
}

impl Retire for InboxEntry {
    fn retire(self: Box<Self>) {
        let topic = self.topic;
        if let Seq::Pending(appending, i) = &self.seq
            && appending.unwritten.retire(*i)
        {
            self.metrics.inbox_unwritten.inc();
            self.metrics.topic(topic).retired.inc();
            return;
        }
        let retirement = match self.seq.settled() {
            Some(Seq::Known(seq)) => Retirement::Done(seq, Some(topic)),
            Some(Seq::Pending(appending, i)) => Retirement::Committing(appending.durable, i, topic),
            Some(Seq::Volatile) => {
                self.metrics.topic(topic).retired.inc();
                return;
            }
            None => {
                tracing::debug!(
                    topic = topic.label(),
                    "message applied but not kept (answered 503); nothing to retire"
                );
                return;
            }
        };
        let _ = self.retired.send(retirement);
    }

    fn requeue(self: Box<Self>) {
        let Some(seq) = self.seq.settled() else {
            // Never accepted (answered 503): the publisher sends it again.
            return;
        };
        self.metrics.topic(self.topic).requeued.inc();
        let again = Accepted {
            topic: self.topic,
            body: self.body,
            checked: None,
            seq,
            attempt: self.attempt + 1,
            slot: self.slot,
        };
        let delay = RETRY.delay(self.attempt);
        let queue = self.requeue;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = queue.send(again);
        });
    }
}

/// The outbound side: the outbox and its webhook.
pub struct EmbeddedOutbox {
    store: Arc<dyn Store>,
    /// Bounded by `pending`: a message is sent here only with a place in the count.
    webhook: Option<mpsc::UnboundedSender<QueuedMessage>>,
    metrics: Arc<Metrics>,
    /// Messages taken and not yet POSTed (or, without a webhook, kept).
    pending: Arc<AtomicUsize>,
    outbox_pending: usize,
}

impl EmbeddedOutbox {
    /// Loads what the outbox still holds and starts POSTing to `webhook_url` (if set). At most
    /// `outbox_pending` messages are kept waiting.
    pub async fn start(
        store: Arc<dyn Store>,
        webhook: &Webhook,
        metrics: Arc<Metrics>,
        outbox_pending: usize,
    ) -> Result<Arc<EmbeddedOutbox>, StoreError> {
        let webhook_url = webhook.url.as_str();
        let pending = store.outbox_load().await?;
        metrics.outbox_pending.set(pending.len() as i64);
        let count = Arc::new(AtomicUsize::new(pending.len()));
        let webhook = if webhook_url.is_empty() {
            tracing::warn!(
                pending = pending.len(),
                "bus.webhook_url is not set: outbound messages (msgUpward, sessionTimeout answers) are kept in the store"
            );
            None
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            for m in pending {
                let _ = tx.send(m);
            }
            tokio::spawn(webhook_loop(
                store.clone(),
                webhook.clone(),
                rx,
                metrics.clone(),
                count.clone(),
            ));
            Some(tx)
        };
        Ok(Arc::new(EmbeddedOutbox {
            store,
            webhook,
            metrics,
            pending: count,
            outbox_pending,
        }))
    }
}

#[async_trait]
impl Publisher for EmbeddedOutbox {
    async fn publish(&self, topic: &str, json: Bytes) -> Result<(), PublishError> {
        self.publish_many(topic, vec![json]).await
    }

    /// One outbox write for all of them; refused whole when they do not all fit under
    /// `limits.outbox_pending`.
    async fn publish_many(&self, topic: &str, jsons: Vec<Bytes>) -> Result<(), PublishError> {
        let (limit, count) = (self.outbox_pending, jsons.len());
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n + count <= limit).then_some(n + count)
            })
            .map_err(|_| PublishError::Full { limit })?;
        let rows = jsons
            .iter()
            .map(|json| (topic.to_owned(), json.clone()))
            .collect();
        let seqs = match self.store.outbox_append(rows).await {
            Ok(seqs) => seqs,
            Err(e) => {
                self.pending.fetch_sub(count, Ordering::AcqRel);
                return Err(e.into());
            }
        };
        self.metrics.outbox_pending.inc_by(count as i64);
        if let Some(webhook) = &self.webhook {
            for (seq, body) in seqs.into_iter().zip(jsons) {
                let _ = webhook.send(QueuedMessage {
                    seq,
                    topic: topic.to_owned(),
                    body,
                });
            }
        }
        Ok(())
    }
}

/// Where outbound messages are POSTed (`bus.webhook_url`), with the HTTP client for it.
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    client: reqwest::Client,
}

/// Why the webhook's HTTP client cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("bus.webhook_ca {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("cannot build the webhook's HTTP client: {0}")]
    Client(reqwest::Error),
}

impl Webhook {
    /// The webhook at `url`; over https it trusts the system's roots and, when given, the CAs
    /// of the PEM file `ca` (a private CA, SPEC §11).
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Webhook, WebhookError> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(path) = ca {
            let ca_error = |message: String| WebhookError::Ca {
                path: path.to_owned(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let certificates =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?;
            if certificates.is_empty() {
                return Err(ca_error("holds no certificate".into()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(Webhook {
            url: url.to_owned(),
            client: builder.build().map_err(WebhookError::Client)?,
        })
    }
}

/// POSTs outbox messages one at a time, in order, each until it gets a 2xx answer.
async fn webhook_loop(
    store: Arc<dyn Store>,
    webhook: Webhook,
    mut queue: mpsc::UnboundedReceiver<QueuedMessage>,
    metrics: Arc<Metrics>,
    pending: Arc<AtomicUsize>,
) {
    let Webhook { url, client } = webhook;
    while let Some(m) = queue.recv().await {
        let mut attempt = 0;
        loop {
            let sent = client
                .post(&url)
                .query(&[("topic", m.topic.as_str())])
                .header("content-type", "application/json")
                .body(m.body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => {
                    tracing::warn!(topic = %m.topic, status = %r.status(), attempt, "webhook refused an outbound message; retrying")
                }
                Err(e) => {
                    tracing::warn!(topic = %m.topic, error = %e, attempt, "webhook unreachable; retrying")
                }
            }
            metrics.webhook_failures.inc();
            tokio::time::sleep(RETRY.delay(attempt)).await;
            attempt += 1;
        }
        metrics.webhook_delivered.inc();
        metrics.outbox_pending.dec();
        pending.fetch_sub(1, Ordering::AcqRel);
        if let Err(e) = store.outbox_remove(m.seq).await {
            // It is sent again after a restart: a duplicate, not a loss.
            tracing::warn!(error = %e, "cannot delete a delivered message from the outbox");
        }
    }
}
