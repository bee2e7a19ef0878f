//! The consumer: one (topic, channel) subscription over every nsqd found through nsqlookupd
//! or configured directly. A supervisor task discovers producers and spreads `max_in_flight`
//! over the subscribed connections; one task per nsqd keeps its connection (reconnecting
//! with back-off), forwards messages and sends FIN/REQ/TOUCH/NOP/RDY/CLS.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::ConnectionConfig;
use crate::connection::Connection;
use crate::error::{Error, is_fatal_error_code};
use crate::lookup::lookup_producers;
use crate::message::{Message, MessageId, Response};
use crate::protocol::{
    CLOSE_WAIT, Command, Frame, MAX_REQ_DELAY_MS, OK, is_valid_channel_name, is_valid_topic_name,
};

/// At most this many queued FIN/REQ/TOUCH are written in one go.
const RESPONSE_BATCH: usize = 256;

/// What a [`Consumer`] subscribes to and how.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The topic.
    pub topic: String,
    /// The channel.
    pub channel: String,
    /// nsqd TCP addresses (`host:port`) to consume from directly, always.
    pub nsqd_tcp_addresses: Vec<String>,
    /// nsqlookupd HTTP addresses (`host:port` or `http://host:port`) asked for the nsqd
    /// producing the topic, at start and every `lookup_interval`.
    pub lookupd_http_addresses: Vec<String>,
    /// How often nsqlookupd is asked. Default: 15 s.
    pub lookup_interval: Duration,
    /// Upper bound for one nsqlookupd query. Default: 5 s.
    pub lookup_timeout: Duration,
    /// Messages in flight over all connections together (each connection gets at least 1).
    /// Default: 32.
    pub max_in_flight: u32,
    /// `msg_timeout` asked for in IDENTIFY; `None` keeps nsqd's `--msg-timeout`. Real nsqd
    /// accepts 1 s ..= `--max-msg-timeout`.
    pub msg_timeout: Option<Duration>,
    /// TOUCH every in-flight message that has gone half of the negotiated `msg_timeout`
    /// without FIN, REQ or TOUCH, so nsqd does not time it out while it is held. Default: off.
    pub auto_touch: bool,
    /// On close (stop, or an nsqd that left nsqlookupd), how long to wait after CLS for the
    /// connection's in-flight messages to be answered. Default: 10 s.
    pub close_timeout: Duration,
    /// Identification, heartbeats, timeouts and back-off.
    pub connection: ConnectionConfig,
}

impl ConsumerConfig {
    /// A configuration for `topic`/`channel` with defaults; add addresses before use.
    pub fn new(topic: impl Into<String>, channel: impl Into<String>) -> ConsumerConfig {
        ConsumerConfig {
            topic: topic.into(),
            channel: channel.into(),
            nsqd_tcp_addresses: Vec::new(),
            lookupd_http_addresses: Vec::new(),
            lookup_interval: Duration::from_secs(15),
            lookup_timeout: Duration::from_secs(5),
            max_in_flight: 32,
            msg_timeout: None,
            auto_touch: false,
            close_timeout: Duration::from_secs(10),
            connection: ConnectionConfig::default(),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if !is_valid_topic_name(&self.topic) {
            return Err(Error::InvalidTopic(self.topic.clone()));
        }
        if !is_valid_channel_name(&self.channel) {
            return Err(Error::InvalidChannel(self.channel.clone()));
        }
        if self.nsqd_tcp_addresses.is_empty() && self.lookupd_http_addresses.is_empty() {
            return Err(Error::Config(
                "a consumer needs nsqd_tcp_addresses or lookupd_http_addresses".to_owned(),
            ));
        }
        if self.max_in_flight == 0 {
            return Err(Error::Config("max_in_flight must be at least 1".to_owned()));
        }
        if self.lookup_interval.is_zero() || self.lookup_timeout.is_zero() {
            return Err(Error::Config(
                "lookup_interval and lookup_timeout must not be zero".to_owned(),
            ));
        }
        if self.msg_timeout.is_some_and(|t| t.as_millis() == 0) {
            return Err(Error::Config(
                "msg_timeout must be at least 1 ms".to_owned(),
            ));
        }
        self.connection.validate()
    }
}

/// Consumes one (topic, channel) from every nsqd that has it.
///
/// Dropping the consumer closes its connections in the background (CLS, then close once
/// the in-flight messages are answered or `close_timeout` passed); [`Consumer::stop`] does
/// the same and waits for it.
pub struct Consumer {
    /// Bounded by RDY: nsqd sends no more than the RDY counts allow in flight.
    messages: mpsc::UnboundedReceiver<Message>,
    stop: CancellationToken,
    paused: watch::Sender<bool>,
    supervisor: Option<tokio::task::JoinHandle<()>>,
}

impl Consumer {
    /// Starts consuming: connects to the configured nsqd, asks nsqlookupd, and keeps doing
    /// so in background tasks. Must be called within a tokio runtime.
    pub fn new(config: ConsumerConfig) -> Result<Consumer, Error> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("Consumer::new needs a tokio runtime".to_owned()))?;
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let (paused, paused_rx) = watch::channel(false);
        let supervisor = runtime.spawn(supervise(
            Arc::new(config),
            messages_tx,
            paused_rx,
            stop.clone(),
        ));
        Ok(Consumer {
            messages,
            stop,
            paused,
            supervisor: Some(supervisor),
        })
    }

    /// Pauses (`true`) or resumes taking messages: every connection sends RDY 0, so nsqd
    /// sends nothing more until the consumer resumes and RDY goes back to its share of
    /// `max_in_flight`. Messages already in flight stay in flight.
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_if_modified(|current| {
            let changed = *current != paused;
            *current = paused;
            changed
        });
    }

    /// The next message from any connection. `None` only once the consumer has stopped.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<Message> {
        self.messages.recv().await
    }

    /// Closes every connection cleanly (CLS, then close once in-flight messages are
    /// answered or `close_timeout` passed) and waits for that. Messages received but not
    /// yet taken with [`Consumer::recv`] are left to nsqd to redeliver.
    pub async fn stop(mut self) {
        self.stop.cancel();
        self.messages.close();
        while self.messages.try_recv().is_ok() {}
        if let Some(supervisor) = self.supervisor.take()
            && let Err(error) = supervisor.await
        {
            tracing::error!(%error, "NSQ consumer supervisor failed");
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Where a connection's nsqd address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Direct,
    Lookup,
}

/// What a connection task tells the supervisor.
#[derive(Debug)]
enum ConnEvent {
    Subscribed(u64),
    Lost(u64),
}

struct ConnEntry {
    addr: Arc<str>,
    origin: Origin,
    close: CancellationToken,
    rdy: watch::Sender<u64>,
    subscribed: bool,
}

struct Supervisor {
    config: Arc<ConsumerConfig>,
    /// While set, every connection's RDY is 0.
    paused: bool,
    messages: mpsc::UnboundedSender<Message>,
    events: mpsc::UnboundedSender<ConnEvent>,
    stop: CancellationToken,
    conns: BTreeMap<u64, ConnEntry>,
    tasks: JoinSet<()>,
    next_id: u64,
}

async fn supervise(
    config: Arc<ConsumerConfig>,
    messages: mpsc::UnboundedSender<Message>,
    mut paused: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let (events, mut events_rx) = mpsc::unbounded_channel();
    let mut supervisor = Supervisor {
        config: config.clone(),
        paused: false,
        messages,
        events,
        stop: stop.clone(),
        conns: BTreeMap::new(),
        tasks: JoinSet::new(),
        next_id: 0,
    };
    for addr in &config.nsqd_tcp_addresses {
        supervisor.spawn_connection(addr, Origin::Direct);
    }
    let use_lookup = !config.lookupd_http_addresses.is_empty();
    let mut lookup_tick = tokio::time::interval(config.lookup_interval);
    lookup_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = lookup_tick.tick(), if use_lookup => {
                let found = tokio::select! {
                    found = poll_lookupds(&config) => found,
                    _ = stop.cancelled() => break,
                };
                if let Some(found) = found {
                    supervisor.reconcile(&found);
                }
            }
            Some(event) = events_rx.recv() => supervisor.on_event(event),
            Ok(()) = paused.changed() => {
                supervisor.paused = *paused.borrow_and_update();
                tracing::debug!(topic = %config.topic, paused = supervisor.paused, "consumption paused or resumed");
                supervisor.rebalance();
            }
            Some(joined) = supervisor.tasks.join_next(), if !supervisor.tasks.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!(%error, "NSQ consumer connection task failed");
                }
            }
        }
    }
    // Every connection's token is a child of `stop`: they are all closing now.
    let Supervisor {
        messages,
        mut tasks,
        ..
    } = supervisor;
    drop(messages);
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "NSQ consumer connection task failed");
        }
    }
    tracing::debug!(topic = %config.topic, channel = %config.channel, "NSQ consumer stopped");
}

impl Supervisor {
    fn spawn_connection(&mut self, addr: &str, origin: Origin) {
        let id = self.next_id;
        self.next_id += 1;
        let addr: Arc<str> = Arc::from(addr);
        let close = self.stop.child_token();
        let (rdy, rdy_rx) = watch::channel(if self.paused { 0 } else { 1 });
        tracing::info!(
            nsqd = %addr,
            topic = %self.config.topic,
            channel = %self.config.channel,
            ?origin,
            "adding NSQ connection"
        );
        self.tasks.spawn(run_connection(ConnTask {
            id,
            addr: addr.clone(),
            config: self.config.clone(),
            messages: self.messages.clone(),
            events: self.events.clone(),
            rdy: rdy_rx,
            close: close.clone(),
        }));
        self.conns.insert(
            id,
            ConnEntry {
                addr,
                origin,
                close,
                rdy,
                subscribed: false,
            },
        );
    }

    /// Joins producers nsqlookupd now lists and closes those it no longer lists.
    fn reconcile(&mut self, found: &BTreeSet<String>) {
        let vanished: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.origin == Origin::Lookup && !found.contains(&*c.addr))
            .map(|(id, _)| *id)
            .collect();
        for id in vanished {
            if let Some(entry) = self.conns.remove(&id) {
                tracing::info!(
                    nsqd = %entry.addr,
                    topic = %self.config.topic,
                    "nsqd no longer listed by nsqlookupd; closing its connection"
                );
                entry.close.cancel();
            }
        }
        for addr in found {
            if !self.conns.values().any(|c| &*c.addr == addr.as_str()) {
                self.spawn_connection(addr, Origin::Lookup);
            }
        }
        self.rebalance();
    }

    fn on_event(&mut self, event: ConnEvent) {
        let (id, subscribed) = match event {
            ConnEvent::Subscribed(id) => (id, true),
            ConnEvent::Lost(id) => (id, false),
        };
        if let Some(entry) = self.conns.get_mut(&id) {
            entry.subscribed = subscribed;
            self.rebalance();
        }
    }

    /// Spreads `max_in_flight` over the subscribed connections, at least 1 each; 0 each while
    /// paused.
    fn rebalance(&self) {
        let subscribed: Vec<&ConnEntry> = self.conns.values().filter(|c| c.subscribed).collect();
        let count = subscribed.len() as u64;
        if count == 0 {
            return;
        }
        let total = u64::from(self.config.max_in_flight);
        let (base, extra) = (total / count, total % count);
        for (index, entry) in subscribed.into_iter().enumerate() {
            let share = if self.paused {
                0
            } else {
                (base + u64::from((index as u64) < extra)).max(1)
            };
            entry.rdy.send_if_modified(|current| {
                let changed = *current != share;
                *current = share;
                changed
            });
        }
    }
}

/// Asks every nsqlookupd; the union of the producers of those that answered, or `None` if
/// none did (then nothing changes).
async fn poll_lookupds(config: &ConsumerConfig) -> Option<BTreeSet<String>> {
    let lookups = config
        .lookupd_http_addresses
        .iter()
        .map(|lookupd| async move {
            let result = lookup_producers(
                lookupd,
                &config.topic,
                &config.connection.user_agent,
                config.lookup_timeout,
            )
            .await;
            (lookupd, result)
        });
    let mut found = BTreeSet::new();
    let mut answered = false;
    for (lookupd, result) in join_all(lookups).await {
        match result {
            Ok(producers) => {
                answered = true;
                found.extend(producers);
            }
            Err(error) => {
                tracing::warn!(%lookupd, topic = %config.topic, %error, "nsqlookupd query failed");
            }
        }
    }
    answered.then_some(found)
}

/// Everything one connection task needs.
struct ConnTask {
    id: u64,
    addr: Arc<str>,
    config: Arc<ConsumerConfig>,
    messages: mpsc::UnboundedSender<Message>,
    events: mpsc::UnboundedSender<ConnEvent>,
    rdy: watch::Receiver<u64>,
    close: CancellationToken,
}

/// Keeps one nsqd connection subscribed until closed, reconnecting with back-off.
async fn run_connection(mut task: ConnTask) {
    let connection = &task.config.connection;
    let mut backoff = Backoff::new(connection.backoff_initial, connection.backoff_max).retries();
    loop {
        let subscribed = tokio::select! {
            subscribed = subscribe(&task) => subscribed,
            _ = task.close.cancelled() => break,
        };
        match subscribed {
            Ok(conn) => {
                backoff.reset();
                tracing::info!(
                    nsqd = %task.addr,
                    topic = %task.config.topic,
                    channel = %task.config.channel,
                    version = %conn.negotiated.version,
                    msg_timeout = ?conn.negotiated.msg_timeout,
                    tls = conn.negotiated.tls,
                    identity = ?conn.negotiated.identity,
                    "subscribed"
                );
                // Ignored send errors: the supervisor has stopped and so will this task.
                let _ = task.events.send(ConnEvent::Subscribed(task.id));
                let ended = run_session(&mut task, conn).await;
                let _ = task.events.send(ConnEvent::Lost(task.id));
                match ended {
                    Ok(()) => {
                        tracing::info!(
                            nsqd = %task.addr,
                            topic = %task.config.topic,
                            "connection closed"
                        );
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(
                            nsqd = %task.addr,
                            topic = %task.config.topic,
                            %error,
                            "connection lost"
                        );
                    }
                }
            }
            Err(error) => {
                tracing::warn!(
                    nsqd = %task.addr,
                    topic = %task.config.topic,
                    %error,
                    "cannot subscribe"
                );
            }
        }
        let delay = backoff.next_delay();
        tracing::info!(
            nsqd = %task.addr,
            topic = %task.config.topic,
            ?delay,
            "reconnecting after back-off"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = task.close.cancelled() => break,
        }
    }
}

/// Connects, identifies and subscribes.
async fn subscribe(task: &ConnTask) -> Result<Connection, Error> {
    let config = &task.config;
    let mut conn =
        Connection::open(task.addr.clone(), &config.connection, config.msg_timeout).await?;
    let sub = Command::Sub {
        topic: &config.topic,
        channel: &config.channel,
    };
    let timeout = config.connection.connect_timeout;
    let answer = match tokio::time::timeout(timeout, conn.request(sub)).await {
        Ok(answer) => answer?,
        Err(_) => {
            return Err(Error::Timeout(format!(
                "SUB on nsqd {} took more than {timeout:?}",
                task.addr
            )));
        }
    };
    if answer.as_ref() != OK {
        return Err(Error::Protocol(format!(
            "unexpected answer to SUB: {:?}",
            String::from_utf8_lossy(&answer)
        )));
    }
    Ok(conn)
}

/// Runs a subscribed connection: `Ok` after a clean close (CLS), `Err` when it broke.
async fn run_session(task: &mut ConnTask, mut conn: Connection) -> Result<(), Error> {
    let (responses_tx, mut responses) = mpsc::unbounded_channel();
    let mut in_flight: HashMap<MessageId, InFlight> = HashMap::new();
    let mut deliveries: u64 = 0;
    let max_rdy = conn.negotiated.max_rdy_count;
    let touch_after = conn.negotiated.msg_timeout / 2;
    let mut touch_tick =
        tokio::time::interval((conn.negotiated.msg_timeout / 4).max(Duration::from_millis(10)));
    touch_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut rdy_open = true;
    let mut closing: Option<Instant> = None;

    let share = *task.rdy.borrow_and_update();
    conn.queue(&Command::Rdy(share.min(max_rdy)))?;
    conn.flush().await?;

    loop {
        if closing.is_some() && in_flight.is_empty() {
            conn.close().await;
            return Ok(());
        }
        let close_deadline = closing.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            frame = conn.next_frame() => match frame? {
                frame if frame.is_heartbeat() => conn.queue(&Command::Nop)?,
                Frame::Response(data) if data.as_ref() == CLOSE_WAIT => {
                    tracing::debug!(nsqd = %task.addr, "CLS acknowledged");
                }
                Frame::Response(data) => {
                    tracing::debug!(
                        nsqd = %task.addr,
                        response = ?String::from_utf8_lossy(&data),
                        "unexpected response"
                    );
                }
                Frame::Error(data) => {
                    let error = Error::from_error_frame(&data);
                    if error.nsqd_code().is_some_and(is_fatal_error_code) {
                        return Err(error);
                    }
                    tracing::warn!(
                        nsqd = %task.addr,
                        topic = %task.config.topic,
                        %error,
                        "nsqd refused a command"
                    );
                }
                Frame::Message(raw) => {
                    deliveries += 1;
                    let entry = InFlight { delivery: deliveries, touched: Instant::now() };
                    in_flight.insert(raw.id, entry);
                    let message = Message::new(
                        raw.id,
                        raw.attempts,
                        raw.timestamp,
                        raw.body,
                        task.addr.clone(),
                        deliveries,
                        responses_tx.clone(),
                    );
                    if task.messages.send(message).is_err() {
                        // The consumer is gone; the dropped message told us to forget it.
                        tracing::debug!(
                            nsqd = %task.addr,
                            id = %raw.id,
                            "message arrived after the consumer stopped"
                        );
                    }
                }
            },
            Some(response) = responses.recv() => {
                queue_response(&mut conn, &mut in_flight, response)?;
                for _ in 1..RESPONSE_BATCH {
                    match responses.try_recv() {
                        Ok(response) => queue_response(&mut conn, &mut in_flight, response)?,
                        Err(_) => break,
                    }
                }
            }
            changed = task.rdy.changed(), if rdy_open && closing.is_none() => match changed {
                Ok(()) => {
                    let share = *task.rdy.borrow_and_update();
                    tracing::debug!(nsqd = %task.addr, rdy = share, "RDY changed");
                    conn.queue(&Command::Rdy(share.min(max_rdy)))?;
                }
                Err(_) => rdy_open = false,
            },
            _ = touch_tick.tick(), if task.config.auto_touch => {
                let now = Instant::now();
                for (id, entry) in in_flight.iter_mut() {
                    if now.duration_since(entry.touched) >= touch_after {
                        conn.queue(&Command::Touch(id))?;
                        entry.touched = now;
                    }
                }
            }
            _ = task.close.cancelled(), if closing.is_none() => {
                tracing::debug!(nsqd = %task.addr, in_flight = in_flight.len(), "sending CLS");
                conn.queue(&Command::Cls)?;
                closing = Some(Instant::now() + task.config.close_timeout);
            }
            _ = tokio::time::sleep_until(close_deadline), if closing.is_some() => {
                tracing::warn!(
                    nsqd = %task.addr,
                    in_flight = in_flight.len(),
                    "closing with messages still in flight; nsqd will redeliver them"
                );
                conn.close().await;
                return Ok(());
            }
        }
        if conn.has_queued() {
            conn.flush().await?;
        }
    }
}

/// A message delivered on this connection and not answered yet.
struct InFlight {
    /// The connection's sequence number of the delivery (a redelivery of the same id on
    /// the same connection gets a new one).
    delivery: u64,
    /// When it was delivered or last touched.
    touched: Instant,
}

fn queue_response(
    conn: &mut Connection,
    in_flight: &mut HashMap<MessageId, InFlight>,
    response: Response,
) -> Result<(), Error> {
    match response {
        Response::Fin(id) => {
            in_flight.remove(&id);
            conn.queue(&Command::Fin(&id))
        }
        Response::Req(id, delay) => {
            in_flight.remove(&id);
            let delay_ms = u64::try_from(delay.as_millis())
                .unwrap_or(u64::MAX)
                .min(MAX_REQ_DELAY_MS);
            conn.queue(&Command::Req(&id, delay_ms))
        }
        Response::Touch(id) => {
            if let Some(entry) = in_flight.get_mut(&id) {
                entry.touched = Instant::now();
            }
            conn.queue(&Command::Touch(&id))
        }
        Response::Forget(id, delivery) => {
            if in_flight.get(&id).is_some_and(|e| e.delivery == delivery) {
                in_flight.remove(&id);
            }
            Ok(())
        }
    }
}
