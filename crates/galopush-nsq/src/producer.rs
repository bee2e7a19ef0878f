//! The producer: publishes to one nsqd through a background task that owns the connection
//! (connecting lazily, answering heartbeats, reconnecting with back-off) and coalesces
//! concurrently queued publishes for the same topic into one MPUB.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::ConnectionConfig;
use crate::connection::Connection;
use crate::error::{Error, is_fatal_error_code};
use crate::protocol::{Command, Frame, OK, is_valid_topic_name};

/// Publishes waiting in the handle's queue (beyond it, `publish` waits for room).
const QUEUE_CAPACITY: usize = 4096;
/// At most this many queued publishes are taken for one write.
const MAX_REQUESTS_PER_WRITE: usize = 1024;

/// Where and how a [`Producer`] publishes.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// The nsqd TCP address (`host:port`).
    pub nsqd_tcp_address: String,
    /// Publishes queued together for a topic are coalesced into one MPUB of at most this many
    /// body bytes (a single publish is never split). Keep it below nsqd's `--max-body-size`
    /// (5 MiB by default). Default: 512 KiB.
    pub max_batch_bytes: usize,
    /// Identification, heartbeats, timeouts and back-off.
    pub connection: ConnectionConfig,
}

impl ProducerConfig {
    /// A configuration for the nsqd at `nsqd_tcp_address` with defaults.
    pub fn new(nsqd_tcp_address: impl Into<String>) -> ProducerConfig {
        ProducerConfig {
            nsqd_tcp_address: nsqd_tcp_address.into(),
            max_batch_bytes: 512 * 1024,
            connection: ConnectionConfig::default(),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if self.nsqd_tcp_address.is_empty() {
            return Err(Error::Config("nsqd_tcp_address is empty".to_owned()));
        }
        if self.max_batch_bytes == 0 {
            return Err(Error::Config("max_batch_bytes must not be zero".to_owned()));
        }
        self.connection.validate()
    }
}

type Reply = oneshot::Sender<Result<(), Error>>;

/// One `publish` or `publish_many` call.
struct Publish {
    topic: String,
    bodies: Vec<Bytes>,
    reply: Reply,
}

/// A cloneable handle publishing to one nsqd. The connection is opened on the first publish
/// and kept (with heartbeats) until every handle is dropped.
#[derive(Clone)]
pub struct Producer {
    requests: mpsc::Sender<Publish>,
    addr: Arc<str>,
}

impl Producer {
    /// Starts the background task. Must be called within a tokio runtime; does not connect
    /// yet.
    pub fn new(config: ProducerConfig) -> Result<Producer, Error> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("Producer::new needs a tokio runtime".to_owned()))?;
        let addr: Arc<str> = Arc::from(config.nsqd_tcp_address.as_str());
        let (requests, requests_rx) = mpsc::channel(QUEUE_CAPACITY);
        runtime.spawn(run_producer(Arc::new(config), addr.clone(), requests_rx));
        Ok(Producer { requests, addr })
    }

    /// The nsqd TCP address this producer publishes to.
    pub fn nsqd_address(&self) -> &str {
        &self.addr
    }

    /// Publishes one message and returns once nsqd answered `OK`. Concurrent publishes may
    /// travel together in one MPUB; they then share its outcome.
    pub async fn publish(&self, topic: &str, body: Bytes) -> Result<(), Error> {
        self.publish_many(topic, vec![body]).await
    }

    /// Publishes several messages (one MPUB) and returns once nsqd answered `OK`: all of them
    /// were accepted, or none. An empty list is trivially published.
    pub async fn publish_many(&self, topic: &str, bodies: Vec<Bytes>) -> Result<(), Error> {
        if !is_valid_topic_name(topic) {
            return Err(Error::InvalidTopic(topic.to_owned()));
        }
        if bodies.is_empty() {
            return Ok(());
        }
        for body in &bodies {
            if body.is_empty() {
                return Err(Error::EmptyBody);
            }
            if i32::try_from(body.len()).is_err() {
                return Err(Error::BodyTooLarge(body.len()));
            }
        }
        let (reply, answer) = oneshot::channel();
        let publish = Publish {
            topic: topic.to_owned(),
            bodies,
            reply,
        };
        self.requests
            .send(publish)
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }
}

/// Owns the connection: waits for publishes, connects when needed, reconnects after a
/// failure (not before the back-off delay), ends when every handle is dropped.
async fn run_producer(
    config: Arc<ProducerConfig>,
    addr: Arc<str>,
    mut requests: mpsc::Receiver<Publish>,
) {
    let mut backoff = Backoff::new(
        config.connection.backoff_initial,
        config.connection.backoff_max,
    )
    .retries();
    let mut retry_at: Option<Instant> = None;
    while let Some(first) = requests.recv().await {
        if let Some(at) = retry_at {
            tokio::time::sleep_until(at).await;
        }
        match Connection::open(addr.clone(), &config.connection, None).await {
            Err(error) => {
                tracing::warn!(nsqd = %addr, %error, "producer cannot connect");
                let reason = error.to_string();
                // Ignored send errors here and below: the caller stopped waiting.
                let _ = first.reply.send(Err(error));
                while let Ok(queued) = requests.try_recv() {
                    let _ = queued.reply.send(Err(Error::Unavailable(reason.clone())));
                }
                retry_at = Some(Instant::now() + backoff.next_delay());
            }
            Ok(conn) => {
                backoff.reset();
                tracing::info!(
                    nsqd = %addr,
                    version = %conn.negotiated.version,
                    tls = conn.negotiated.tls,
                    identity = ?conn.negotiated.identity,
                    "producer connected"
                );
                match run_session(&config, conn, first, &mut requests).await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::warn!(nsqd = %addr, %error, "producer connection lost");
                        retry_at = Some(Instant::now() + backoff.next_delay());
                    }
                }
            }
        }
    }
}

/// Publishes over one connection: `Ok` when every handle is gone, `Err` when the connection
/// broke (every publish awaiting an answer has been failed).
async fn run_session(
    config: &ProducerConfig,
    mut conn: Connection,
    first: Publish,
    requests: &mut mpsc::Receiver<Publish>,
) -> Result<(), Error> {
    let mut awaiting: VecDeque<Vec<Reply>> = VecDeque::new();
    let mut batch = vec![first];
    take_queued(requests, &mut batch);
    let result = async {
        queue_publishes(config, &mut conn, &mut awaiting, batch);
        conn.flush().await?;
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    None => return Ok(()),
                    Some(request) => {
                        let mut batch = vec![request];
                        take_queued(requests, &mut batch);
                        queue_publishes(config, &mut conn, &mut awaiting, batch);
                    }
                },
                frame = conn.next_frame() => match frame? {
                    frame if frame.is_heartbeat() => conn.queue(&Command::Nop)?,
                    Frame::Response(data) if data.as_ref() == OK => match awaiting.pop_front() {
                        Some(replies) => {
                            for reply in replies {
                                let _ = reply.send(Ok(()));
                            }
                        }
                        None => {
                            return Err(Error::Protocol("OK without a pending publish".to_owned()));
                        }
                    },
                    Frame::Response(data) => {
                        return Err(Error::Protocol(format!(
                            "unexpected response {:?}",
                            String::from_utf8_lossy(&data)
                        )));
                    }
                    Frame::Error(data) => {
                        let error = Error::from_error_frame(&data);
                        let Error::Nsqd { code, description } = &error else {
                            return Err(error);
                        };
                        if let Some(replies) = awaiting.pop_front() {
                            for reply in replies {
                                let _ = reply.send(Err(Error::Nsqd {
                                    code: code.clone(),
                                    description: description.clone(),
                                }));
                            }
                        }
                        if is_fatal_error_code(code) {
                            return Err(Error::Disconnected(format!(
                                "nsqd {} closed the connection after {code} {description}",
                                conn.addr
                            )));
                        }
                    }
                    Frame::Message(_) => {
                        let error = "message frame on a producer connection";
                        return Err(Error::Protocol(error.to_owned()));
                    }
                },
            }
            conn.flush().await?;
        }
    }
    .await;
    match result {
        Ok(()) => {
            conn.close().await;
            Ok(())
        }
        Err(error) => {
            let reason = error.to_string();
            for reply in awaiting.into_iter().flatten() {
                let _ = reply.send(Err(Error::Disconnected(reason.clone())));
            }
            conn.close().await;
            Err(error)
        }
    }
}

fn take_queued(requests: &mut mpsc::Receiver<Publish>, batch: &mut Vec<Publish>) {
    while batch.len() < MAX_REQUESTS_PER_WRITE {
        match requests.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}

/// Groups the publishes by topic (keeping their order within a topic), cuts each group into
/// MPUBs of at most `max_batch_bytes` (a lone single message goes as PUB) and queues them,
/// remembering whom each answer is for.
fn queue_publishes(
    config: &ProducerConfig,
    conn: &mut Connection,
    awaiting: &mut VecDeque<Vec<Reply>>,
    batch: Vec<Publish>,
) {
    let mut topics: Vec<(String, Vec<Publish>)> = Vec::new();
    for publish in batch {
        match topics.iter_mut().find(|(topic, _)| *topic == publish.topic) {
            Some((_, group)) => group.push(publish),
            None => topics.push((publish.topic.clone(), vec![publish])),
        }
    }
    for (topic, group) in topics {
        let mut bodies: Vec<Bytes> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        let mut bytes = 0usize;
        for publish in group {
            let size: usize = publish.bodies.iter().map(Bytes::len).sum();
            if !replies.is_empty() && bytes + size > config.max_batch_bytes {
                queue_command(
                    conn,
                    awaiting,
                    &topic,
                    std::mem::take(&mut bodies),
                    std::mem::take(&mut replies),
                );
                bytes = 0;
            }
            bytes += size;
            bodies.extend(publish.bodies);
            replies.push(publish.reply);
        }
        if !replies.is_empty() {
            queue_command(conn, awaiting, &topic, bodies, replies);
        }
    }
}

fn queue_command(
    conn: &mut Connection,
    awaiting: &mut VecDeque<Vec<Reply>>,
    topic: &str,
    bodies: Vec<Bytes>,
    replies: Vec<Reply>,
) {
    let queued = match bodies.as_slice() {
        [body] => conn.queue(&Command::Pub { topic, body }),
        bodies => conn.queue(&Command::Mpub { topic, bodies }),
    };
    match queued {
        Ok(()) => awaiting.push_back(replies),
        Err(error) => {
            let reason = error.to_string();
            for reply in replies {
                let _ = reply.send(Err(match error {
                    Error::BodyTooLarge(size) => Error::BodyTooLarge(size),
                    _ => Error::Protocol(reason.clone()),
                }));
            }
        }
    }
}
