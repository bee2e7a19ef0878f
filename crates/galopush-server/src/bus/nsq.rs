//! The NSQ bus (SPEC §7, `bus.kind = "nsq"`): galopush in place of the original's router on
//! an existing NSQ deployment.
//!
//! Inbound: one [`Consumer`] per inbound topic on channel `bus.channel`, finding nsqd through
//! every `bus.nsqlookupd_http` (or consuming from `bus.nsqd_tcp` directly when that list is
//! empty). The router applies each message with a [`Ticket`] that FINishes it once every effect
//! is durable and REQueues it, with a delay growing with its attempts, if one was not. Messages
//! are held (and TOUCHed) while their effects settle, e.g. a callback waiting for its ack. While
//! messages keep being requeued (the store is failing, the outbox is full), consumption pauses
//! with a growing back-off instead of spinning, and resumes once the pause is over.
//!
//! What the router holds from NSQ is bounded by RDY (SPEC §10): at most `bus.max_in_flight`
//! messages are in flight over the five topics, and a paused consumer sends RDY 0, so nsqd keeps
//! the backlog rather than this process. There is no inbox to fill: `limits.inbox_pending`
//! applies to the embedded bus only.
//!
//! Outbound: msgUpward and the sessionTimeout answers are PUBlished to `bus.nsqd_tcp`, as base64
//! of the JSON when `bus.base64` is set and as raw JSON otherwise. `/pub` and `/mpub` publish to
//! the same nsqd, after checking inbound-topic bodies as the embedded bus does.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose;
use bytes::Bytes;
use galopush_nsq::{
    Backoff, ConnectionConfig, Consumer, ConsumerConfig, Error as NsqError, Message, Producer,
    ProducerConfig, is_valid_topic_name,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{AcceptError, Gate, Intake, PublishError, Publisher, Retire, Ticket, Topic};
use crate::config::BusConfig;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::tls::{self, TlsError};

/// A message's REQ delay: 500 ms after its first failed attempt, doubling with every further
/// one up to a minute, jittered so that requeued messages spread out.
const REQUEUE: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
/// The consumption pause after requeues in a row: 100 ms after the first, doubling up to 10 s.
const PAUSE: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

/// How galopush's connections to nsqd identify themselves, keep alive, and (SPEC §11) upgrade
/// to TLS and authenticate.
#[derive(Clone)]
pub struct NsqConnection(ConnectionConfig);

impl NsqConnection {
    /// Reads `bus.nsq_ca` when TLS is on; a CA that cannot be used stops the start.
    pub fn from_config(bus: &BusConfig) -> Result<NsqConnection, TlsError> {
        let tls = if bus.nsq_tls {
            let ca = (!bus.nsq_ca.as_os_str().is_empty()).then_some(bus.nsq_ca.as_path());
            Some(tls::client_config(ca)?)
        } else {
            None
        };
        Ok(NsqConnection(ConnectionConfig {
            user_agent: concat!("galopush/", env!("CARGO_PKG_VERSION")).to_owned(),
            heartbeat_interval: bus.heartbeat_interval.get(),
            tls,
            auth_secret: (!bus.nsq_auth_secret.is_empty()).then(|| bus.nsq_auth_secret.clone()),
            ..ConnectionConfig::default()
        }))
    }
}

/// The producer publishing to `bus.nsqd_tcp` (connects on the first publish).
pub fn producer(bus: &BusConfig, connection: &NsqConnection) -> Result<Producer, NsqError> {
    Producer::new(ProducerConfig {
        connection: connection.0.clone(),
        ..ProducerConfig::new(bus.nsqd_tcp.as_str())
    })
}

/// Starts consuming every inbound topic for `router`. The consumers run for the life of the
/// runtime.
pub fn consume(
    router: Arc<Router>,
    bus: &BusConfig,
    connection: &NsqConnection,
    gate: Gate,
    close_timeout: Duration,
) -> Result<NsqDrain, NsqError> {
    let topics = router.topics().clone();
    // With no nsqlookupd to ask, the nsqd galopush publishes to is the one it consumes from.
    let direct = if bus.nsqlookupd_http.is_empty() {
        vec![bus.nsqd_tcp.clone()]
    } else {
        Vec::new()
    };
    let per_topic =
        u32::try_from((bus.max_in_flight / Topic::ALL.len()).max(1)).unwrap_or(u32::MAX);
    let connection = &connection.0;
    let mut consumers = Vec::with_capacity(Topic::ALL.len());
    for topic in Topic::ALL {
        let consumer = Consumer::new(ConsumerConfig {
            nsqd_tcp_addresses: direct.clone(),
            lookupd_http_addresses: bus.nsqlookupd_http.clone(),
            max_in_flight: per_topic,
            // Effects may take long to settle: a callback waits for its ack for up to
            // `delivery.callback_ack_timeout` (60 s), the default msg_timeout of nsqd.
            auto_touch: true,
            close_timeout,
            connection: connection.clone(),
            ..ConsumerConfig::new(topic.name(&topics), bus.channel.as_str())
        })?;
        consumers.push((topic, consumer));
    }
    let pause = Arc::new(Pause::default());
    let stop = CancellationToken::new();
    let mut loops = Vec::with_capacity(consumers.len());
    for (topic, consumer) in consumers {
        tracing::info!(
            topic = topic.name(&topics),
            channel = %bus.channel,
            nsqlookupd = ?bus.nsqlookupd_http,
            nsqd = ?direct,
            max_in_flight = per_topic,
            "consuming from NSQ"
        );
        loops.push(tokio::spawn(apply_loop(
            topic,
            consumer,
            router.clone(),
            pause.clone(),
            gate.clone(),
            stop.clone(),
        )));
    }
    Ok(NsqDrain { stop, loops })
}

/// Shutting down the NSQ consumers: no more messages are taken, CLS goes to every nsqd, and
/// the messages in flight get until the consumers' `close_timeout` to settle (FIN or REQ);
/// what is cut off nsqd redelivers.
pub struct NsqDrain {
    stop: CancellationToken,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl NsqDrain {
    pub async fn run(self) {
        self.stop.cancel();
        for consumer in self.loops {
            let _ = consumer.await;
        }
    }
}

/// Hands one topic's messages to the router, one at a time; their effects settle
/// concurrently, up to the topic's share of `bus.max_in_flight`.
async fn apply_loop(
    topic: Topic,
    mut consumer: Consumer,
    router: Arc<Router>,
    pause: Arc<Pause>,
    gate: Gate,
    stop: CancellationToken,
) {
    tokio::select! {
        () = gate.wait() => {}
        () = stop.cancelled() => {}
    }
    loop {
        let next = async {
            if pause.in_force() {
                // nsqd holds the topic's messages meanwhile: RDY 0 instead of a buffer here.
                consumer.set_paused(true);
                pause.wait().await;
                consumer.set_paused(false);
            }
            consumer.recv().await
        };
        let message = tokio::select! {
            biased;
            () = stop.cancelled() => None,
            message = next => match message {
                Some(message) => Some(message),
                None => break,
            },
        };
        let Some(message) = message else {
            tracing::info!(topic = topic.label(), "closing the NSQ consumer");
            consumer.stop().await;
            return;
        };
        let body = message.body.clone();
        tracing::trace!(
            topic = topic.label(),
            id = %message.id,
            attempts = message.attempts,
            nsqd = message.nsqd_address(),
            "bus message"
        );
        let ticket = Ticket::new(NsqRetire {
            topic,
            message,
            metrics: router.metrics().clone(),
            pause: pause.clone(),
        });
        router.apply(topic, &body, ticket).await;
    }
    tracing::error!(topic = topic.label(), "NSQ consumer stopped");
}

/// An inbound message's fate on nsqd.
struct NsqRetire {
    topic: Topic,
    message: Message,
    metrics: Arc<Metrics>,
    pause: Arc<Pause>,
}

impl Retire for NsqRetire {
    fn retire(self: Box<Self>) {
        self.metrics.topic(self.topic).retired.inc();
        self.pause.retired();
        self.message.fin();
    }

    fn requeue(self: Box<Self>) {
        self.metrics.topic(self.topic).requeued.inc();
        self.pause.requeued();
        let delay = requeue_delay(self.message.attempts);
        tracing::debug!(
            topic = self.topic.label(),
            id = %self.message.id,
            attempts = self.message.attempts,
            ?delay,
            "bus message requeued"
        );
        self.message.req(delay);
    }
}

/// The REQ delay after the `attempts`-th delivery failed (nsqd counts attempts from 1).
fn requeue_delay(attempts: u16) -> Duration {
    REQUEUE.delay(u32::from(attempts.saturating_sub(1)))
}

/// Consumption back-off shared by every inbound topic: each requeue starts or lengthens a
/// pause in taking new messages; a retirement resets the count.
#[derive(Default)]
struct Pause {
    state: parking_lot::Mutex<PauseState>,
}

#[derive(Default)]
struct PauseState {
    /// Requeues since the last retirement.
    requeues: u32,
    /// No new message is applied before this.
    until: Option<Instant>,
}

/// The pause after the `requeues`-th requeue in a row (counted from 1), without jitter: the
/// pause is one for the whole router, not one per client.
fn pause_after(requeues: u32) -> Duration {
    PAUSE.ceiling(requeues.saturating_sub(1))
}

impl Pause {
    fn requeued(&self) {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.requeues = state.requeues.saturating_add(1);
        let delay = pause_after(state.requeues);
        let was_paused = state.until.is_some_and(|until| until > now);
        if state.until.is_none_or(|until| until < now + delay) {
            state.until = Some(now + delay);
        }
        if !was_paused {
            tracing::warn!(
                requeues = state.requeues,
                ?delay,
                "bus messages are being requeued; pausing consumption"
            );
        }
    }

    fn retired(&self) {
        self.state.lock().requeues = 0;
    }

    /// Whether consumption is paused now.
    fn in_force(&self) -> bool {
        self.state
            .lock()
            .until
            .is_some_and(|until| until > Instant::now())
    }

    /// Returns once no pause is in force.
    async fn wait(&self) {
        loop {
            let until = self.state.lock().until;
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }
}

/// The router's outbound messages, published to nsqd.
pub struct NsqPublisher {
    producer: Producer,
    base64: bool,
    /// A permit per publish waiting for nsqd's answer (`limits.outbox_pending`).
    waiting: Semaphore,
    outbox_pending: usize,
}

impl NsqPublisher {
    /// Publishes through `producer`, as base64 of the JSON when `base64` is set, with at most
    /// `outbox_pending` publishes waiting for nsqd.
    pub fn new(producer: Producer, base64: bool, outbox_pending: usize) -> NsqPublisher {
        NsqPublisher {
            producer,
            base64,
            waiting: Semaphore::new(outbox_pending),
            outbox_pending,
        }
    }
}

#[async_trait]
impl Publisher for NsqPublisher {
    async fn publish(&self, topic: &str, json: Bytes) -> Result<(), PublishError> {
        let Ok(_waiting) = self.waiting.try_acquire() else {
            return Err(PublishError::Full {
                limit: self.outbox_pending,
            });
        };
        self.producer
            .publish(topic, self.encode(json))
            .await
            .map_err(|e| self.nsqd_error(e))
    }

    /// One MPUB (nsqd takes it whole or not at all).
    async fn publish_many(&self, topic: &str, jsons: Vec<Bytes>) -> Result<(), PublishError> {
        let full = PublishError::Full {
            limit: self.outbox_pending,
        };
        let count = u32::try_from(jsons.len()).map_err(|_| full.clone())?;
        let Ok(_waiting) = self.waiting.try_acquire_many(count) else {
            return Err(full);
        };
        let bodies = jsons.into_iter().map(|json| self.encode(json)).collect();
        self.producer
            .publish_many(topic, bodies)
            .await
            .map_err(|e| self.nsqd_error(e))
    }
}

impl NsqPublisher {
    /// The body as nsqd gets it: base64 of the JSON when `bus.base64` is set.
    fn encode(&self, json: Bytes) -> Bytes {
        if self.base64 {
            Bytes::from(general_purpose::STANDARD.encode(&json))
        } else {
            json
        }
    }

    fn nsqd_error(&self, e: galopush_nsq::Error) -> PublishError {
        PublishError::Nsqd {
            address: self.producer.nsqd_address().to_owned(),
            source: Arc::new(e),
        }
    }
}

/// `/pub` and `/mpub` with the NSQ bus: checked, then published to nsqd as they are.
pub struct NsqIntake {
    producer: Producer,
    router: Arc<Router>,
}

impl NsqIntake {
    /// Publishes through `producer`, checking inbound-topic bodies with `router`.
    pub fn new(producer: Producer, router: Arc<Router>) -> NsqIntake {
        NsqIntake { producer, router }
    }

    /// Why nsqd or the router would refuse `body` on `topic` (`None` for other topics).
    fn check(&self, topic: Option<Topic>, body: &[u8]) -> Result<(), String> {
        if body.is_empty() {
            return Err("empty message body".into());
        }
        match topic {
            Some(topic) => self.router.validate(topic, body),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Intake for NsqIntake {
    async fn accept(&self, topic_name: &str, bodies: Vec<Bytes>) -> Result<(), AcceptError> {
        if !is_valid_topic_name(topic_name) {
            return Err(AcceptError::Malformed(format!(
                "{topic_name:?} is not a valid NSQ topic name"
            )));
        }
        if bodies.is_empty() {
            return Err(AcceptError::Malformed("no message in the body".into()));
        }
        let topic = Topic::from_name(topic_name, self.router.topics());
        for (i, body) in bodies.iter().enumerate() {
            self.check(topic, body).map_err(|why| {
                if bodies.len() == 1 {
                    AcceptError::Malformed(why)
                } else {
                    AcceptError::Malformed(format!("line {}: {why}", i + 1))
                }
            })?;
        }
        self.producer
            .publish_many(topic_name, bodies)
            .await
            .map_err(|e| match e {
                NsqError::InvalidTopic(_) | NsqError::EmptyBody | NsqError::BodyTooLarge(_) => {
                    AcceptError::Malformed(e.to_string())
                }
                NsqError::Nsqd { ref code, .. } if code.starts_with("E_BAD_") => {
                    AcceptError::Malformed(e.to_string())
                }
                e => AcceptError::Unavailable(format!(
                    "nsqd {} did not take the message: {e}",
                    self.producer.nsqd_address()
                )),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_delays_grow_with_attempts_up_to_the_cap() {
        let (first, max) = (Duration::from_millis(500), Duration::from_secs(60));
        let delay = requeue_delay(1);
        assert!(delay >= first / 2 && delay <= first, "{delay:?}");
        let third = requeue_delay(3);
        assert!(third >= first * 2 && third <= first * 4, "{third:?}");
        for attempts in [20, 1000, u16::MAX] {
            let late = requeue_delay(attempts);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
    }

    #[test]
    fn pauses_grow_with_requeues_in_a_row_up_to_the_cap() {
        assert_eq!(pause_after(1), Duration::from_millis(100));
        assert_eq!(pause_after(2), Duration::from_millis(200));
        assert_eq!(pause_after(u32::MAX), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn requeues_pause_consumption_and_retirements_reset_the_count() {
        let pause = Pause::default();
        // Not paused: returns at once.
        pause.wait().await;
        pause.requeued();
        pause.requeued();
        let until = pause.state.lock().until.expect("paused");
        assert!(
            until > Instant::now() + pause_after(1),
            "the second requeue lengthens the pause"
        );
        assert!(until <= Instant::now() + pause_after(2));
        pause.retired();
        assert_eq!(pause.state.lock().requeues, 0);
        pause.wait().await;
        assert!(
            Instant::now() >= until,
            "wait returns once the pause is over"
        );
    }
}
