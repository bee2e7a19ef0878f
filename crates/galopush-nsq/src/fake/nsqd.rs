//! A fake nsqd speaking TCP protocol V2 on 127.0.0.1: IDENTIFY (with and without feature
//! negotiation), the TLS upgrade (`tls_v1`, optionally required), AUTH, SUB, RDY (nsqd ≥ 1.0
//! semantics: at most RDY messages in flight), PUB, MPUB, FIN, REQ, TOUCH, NOP, CLS,
//! heartbeats, per-topic queues with a copy per channel, in-flight timeouts and deferred
//! requeues, with counters for tests and `stop`/`restart` on the same port.
//!
//! TLS and AUTH follow nsqd's `protocol_v2.go`: IDENTIFY with `feature_negotiation` and
//! `tls_v1` on a server with TLS is answered with `"tls_v1": true`, then the server TLS
//! handshake runs on the same connection (5 s deadline) and `OK` is sent over TLS. With
//! `tls_required` (`--tls-required`), every command but IDENTIFY on a connection that has not
//! upgraded is the fatal `E_INVALID cannot <CMD> in current state (TLS required)`. With AUTH
//! on (`--auth-http-address`), IDENTIFY answers `"auth_required": true`, and SUB, PUB and MPUB
//! before a successful AUTH are the fatal `E_AUTH_FIRST AUTH required before <CMD>` (PUB after
//! reading its body, MPUB before, as nsqd does); AUTH is answered with `identity`,
//! `identity_url` and `permission_count`, or the fatal `E_AUTH_FAILED AUTH failed`,
//! `E_AUTH_DISABLED AUTH disabled` or `E_INVALID AUTH already set`.
//!
//! Deliberate differences from nsqd: any positive `heartbeat_interval` and `msg_timeout` are
//! accepted (nsqd wants at least 1 s) so tests can be fast; a disconnecting client's
//! in-flight messages are requeued at once (nsqd waits for their `msg_timeout`; at a restart
//! it persists and redelivers them, which this matches); the secrets are checked against a
//! list instead of an auth server, and an accepted one may use every topic and channel; a
//! failed TLS handshake just closes the connection (nsqd also tries a plaintext
//! `E_IDENTIFY_FAILED` frame, which a client in the middle of a handshake cannot read).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf,
    WriteHalf,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;

use crate::protocol::{
    CLOSE_WAIT, FRAME_TYPE_ERROR, FRAME_TYPE_MESSAGE, FRAME_TYPE_RESPONSE, HEARTBEAT, MAGIC_V2,
    MAX_REQ_DELAY_MS, OK, is_valid_channel_name, is_valid_topic_name,
};

/// How often in-flight timeouts and deferred requeues are checked.
const TICK: Duration = Duration::from_millis(10);
/// Longest accepted command line.
const MAX_LINE: u64 = 1024;
/// Length of a message id.
const ID_LEN: usize = 16;
/// nsqd's deadline for the TLS handshake after IDENTIFY.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of a [`FakeNsqd`], mirroring nsqd's command-line options of the same names.
#[derive(Debug, Clone)]
pub struct FakeNsqdOptions {
    /// Where to listen. Default: `127.0.0.1:0` (any free port).
    pub addr: SocketAddr,
    /// `--msg-timeout`, for clients that do not ask for one in IDENTIFY. Default: 60 s.
    pub msg_timeout: Duration,
    /// The heartbeat interval for clients that do not ask for one. Default: 30 s.
    pub heartbeat_interval: Duration,
    /// `--max-rdy-count`. Default: 2500.
    pub max_rdy_count: u64,
    /// `--max-msg-size`. Default: 1 MiB.
    pub max_msg_size: usize,
    /// `--max-body-size` (MPUB, IDENTIFY and AUTH bodies). Default: 5 MiB.
    pub max_body_size: usize,
    /// `--tls-cert`/`--tls-key`: with a configuration, a client's IDENTIFY asking for
    /// `tls_v1` (with feature negotiation) is answered with `"tls_v1": true` and the
    /// connection upgraded to TLS. Default: `None` (`"tls_v1": false`, plain TCP only).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `--tls-required`: every command but IDENTIFY on a connection that has not upgraded to
    /// TLS is the fatal `E_INVALID cannot <CMD> in current state (TLS required)`. Default:
    /// `false`.
    pub tls_required: bool,
    /// AUTH (nsqd's `--auth-http-address`), with the secrets the auth server would accept:
    /// with `Some`, IDENTIFY answers `"auth_required": true` and SUB/PUB/MPUB need a
    /// successful AUTH first. Default: `None` (AUTH is `E_AUTH_DISABLED`).
    pub auth_secrets: Option<Vec<String>>,
}

impl Default for FakeNsqdOptions {
    fn default() -> FakeNsqdOptions {
        FakeNsqdOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            msg_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(30),
            max_rdy_count: 2500,
            max_msg_size: 1024 * 1024,
            max_body_size: 5 * 1024 * 1024,
            tls: None,
            tls_required: false,
            auth_secrets: None,
        }
    }
}

/// Counters and gauges of one (topic, channel).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Messages waiting for delivery.
    pub depth: usize,
    /// Messages delivered and not yet finished, requeued or timed out.
    pub in_flight: usize,
    /// Messages requeued with a delay that has not passed yet.
    pub deferred: usize,
    /// Connections subscribed to the channel.
    pub clients: usize,
    /// The RDY counts of the subscribed connections, added up.
    pub ready: u64,
    /// FINs accepted.
    pub finished: u64,
    /// REQs accepted.
    pub requeued: u64,
    /// Messages redelivered because their `msg_timeout` passed.
    pub timed_out: u64,
    /// TOUCHes accepted.
    pub touched: u64,
    /// NOPs (heartbeat answers) received from the channel's clients.
    pub heartbeats_answered: u64,
}

/// Server-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections open now.
    pub connections: usize,
    /// Connections accepted since start.
    pub connections_accepted: u64,
    /// NOPs received on any connection.
    pub nops_received: u64,
    /// PUB commands received.
    pub pub_commands: u64,
    /// MPUB commands received.
    pub mpub_commands: u64,
    /// CLS commands received.
    pub cls_commands: u64,
    /// Connections upgraded to TLS since start.
    pub tls_connections: u64,
    /// AUTH commands received.
    pub auth_commands: u64,
    /// AUTH commands answered with an identity (right secret).
    pub auth_accepted: u64,
}

#[derive(Debug, Clone)]
struct FakeMessage {
    id: [u8; ID_LEN],
    timestamp: i64,
    attempts: u16,
    body: Bytes,
}

#[derive(Debug)]
struct InFlight {
    message: FakeMessage,
    client: u64,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct Channel {
    queue: VecDeque<FakeMessage>,
    in_flight: HashMap<[u8; ID_LEN], InFlight>,
    deferred: Vec<(Instant, FakeMessage)>,
    clients: Vec<u64>,
    next_client: usize,
    stats: ChannelStats,
}

#[derive(Debug, Default)]
struct Topic {
    published: Vec<Bytes>,
    /// Messages published before the topic had a channel; the first channel gets them.
    backlog: VecDeque<FakeMessage>,
    channels: HashMap<String, Channel>,
}

#[derive(Debug)]
struct Client {
    out: mpsc::UnboundedSender<Outbound>,
    subscription: Option<(String, String)>,
    rdy: u64,
    in_flight: u64,
    msg_timeout: Duration,
}

#[derive(Debug, Default)]
struct State {
    topics: HashMap<String, Topic>,
    clients: HashMap<u64, Client>,
    next_client: u64,
    next_message: u64,
    fail_publishes: bool,
    stats: ServerStats,
}

/// Why FIN/REQ/TOUCH was refused.
const NOT_IN_FLIGHT: &str = "ID not in flight";

impl State {
    fn new_message(&mut self, body: Bytes) -> FakeMessage {
        self.next_message += 1;
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(format!("{:016x}", self.next_message).as_bytes());
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        FakeMessage {
            id,
            timestamp,
            attempts: 0,
            body,
        }
    }

    fn put(&mut self, topic: &str, bodies: Vec<Bytes>, from_client: bool) {
        let messages: Vec<FakeMessage> = bodies.into_iter().map(|b| self.new_message(b)).collect();
        let topic = self.topics.entry(topic.to_owned()).or_default();
        if from_client {
            topic
                .published
                .extend(messages.iter().map(|m| m.body.clone()));
        }
        if topic.channels.is_empty() {
            topic.backlog.extend(messages);
        } else {
            for channel in topic.channels.values_mut() {
                channel.queue.extend(messages.iter().cloned());
            }
        }
        self.pump();
    }

    fn subscribe(&mut self, client_id: u64, topic_name: &str, channel_name: &str) {
        let topic = self.topics.entry(topic_name.to_owned()).or_default();
        let first_channel = topic.channels.is_empty();
        let channel = topic.channels.entry(channel_name.to_owned()).or_default();
        if first_channel {
            channel.queue.extend(topic.backlog.drain(..));
        }
        channel.clients.push(client_id);
        if let Some(client) = self.clients.get_mut(&client_id) {
            client.subscription = Some((topic_name.to_owned(), channel_name.to_owned()));
        }
    }

    /// The channel a client is subscribed to, and the client.
    fn channel_of(&mut self, client_id: u64) -> Option<(&mut Channel, &mut Client)> {
        let (topic, channel) = self.clients.get(&client_id)?.subscription.clone()?;
        let channel = self.topics.get_mut(&topic)?.channels.get_mut(&channel)?;
        let client = self.clients.get_mut(&client_id)?;
        Some((channel, client))
    }

    /// Takes a message the client has in flight out of its channel.
    fn take_in_flight(&mut self, client_id: u64, id: &[u8]) -> Result<FakeMessage, &'static str> {
        let (channel, client) = self.channel_of(client_id).ok_or(NOT_IN_FLIGHT)?;
        let owned = channel
            .in_flight
            .get(id)
            .is_some_and(|entry| entry.client == client_id);
        if !owned {
            return Err(if channel.in_flight.contains_key(id) {
                "client does not own message"
            } else {
                NOT_IN_FLIGHT
            });
        }
        let entry = channel.in_flight.remove(id).ok_or(NOT_IN_FLIGHT)?;
        client.in_flight = client.in_flight.saturating_sub(1);
        Ok(entry.message)
    }

    fn finish(&mut self, client_id: u64, id: &[u8]) -> Result<(), &'static str> {
        self.take_in_flight(client_id, id)?;
        if let Some((channel, _)) = self.channel_of(client_id) {
            channel.stats.finished += 1;
        }
        self.pump();
        Ok(())
    }

    fn requeue(&mut self, client_id: u64, id: &[u8], delay: Duration) -> Result<(), &'static str> {
        let message = self.take_in_flight(client_id, id)?;
        if let Some((channel, _)) = self.channel_of(client_id) {
            channel.stats.requeued += 1;
            if delay.is_zero() {
                channel.queue.push_back(message);
            } else {
                channel.deferred.push((Instant::now() + delay, message));
            }
        }
        self.pump();
        Ok(())
    }

    fn touch(&mut self, client_id: u64, id: &[u8]) -> Result<(), &'static str> {
        let (channel, client) = self.channel_of(client_id).ok_or(NOT_IN_FLIGHT)?;
        match channel.in_flight.get_mut(id) {
            Some(entry) if entry.client == client_id => {
                entry.deadline = Instant::now() + client.msg_timeout;
                channel.stats.touched += 1;
                Ok(())
            }
            Some(_) => Err("client does not own message"),
            None => Err(NOT_IN_FLIGHT),
        }
    }

    fn set_rdy(&mut self, client_id: u64, count: u64) {
        if let Some(client) = self.clients.get_mut(&client_id) {
            client.rdy = count;
        }
        self.pump();
    }

    fn nop(&mut self, client_id: u64) {
        self.stats.nops_received += 1;
        if let Some((channel, _)) = self.channel_of(client_id) {
            channel.stats.heartbeats_answered += 1;
        }
    }

    /// Forgets a disconnected client and requeues what it had in flight.
    fn remove_client(&mut self, client_id: u64) {
        if let Some((channel, _)) = self.channel_of(client_id) {
            channel.clients.retain(|&c| c != client_id);
            let owned: Vec<[u8; ID_LEN]> = channel
                .in_flight
                .iter()
                .filter(|(_, entry)| entry.client == client_id)
                .map(|(id, _)| *id)
                .collect();
            for id in owned {
                if let Some(entry) = channel.in_flight.remove(&id) {
                    channel.queue.push_front(entry.message);
                }
            }
        }
        self.clients.remove(&client_id);
        self.stats.connections = self.clients.len();
        self.pump();
    }

    /// Requeues timed-out in-flight messages and due deferred ones.
    fn expire(&mut self, now: Instant) {
        let State {
            topics, clients, ..
        } = self;
        for channel in topics.values_mut().flat_map(|t| t.channels.values_mut()) {
            let expired: Vec<[u8; ID_LEN]> = channel
                .in_flight
                .iter()
                .filter(|(_, entry)| entry.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                if let Some(entry) = channel.in_flight.remove(&id) {
                    if let Some(client) = clients.get_mut(&entry.client) {
                        client.in_flight = client.in_flight.saturating_sub(1);
                    }
                    channel.stats.timed_out += 1;
                    channel.queue.push_back(entry.message);
                }
            }
            let (due, later): (Vec<_>, Vec<_>) =
                channel.deferred.drain(..).partition(|(at, _)| *at <= now);
            channel.deferred = later;
            channel.queue.extend(due.into_iter().map(|(_, m)| m));
        }
        self.pump();
    }

    /// Delivers queued messages to subscribed clients with room under their RDY count,
    /// round-robin.
    fn pump(&mut self) {
        let now = Instant::now();
        let State {
            topics, clients, ..
        } = self;
        for channel in topics.values_mut().flat_map(|t| t.channels.values_mut()) {
            'messages: while !channel.queue.is_empty() {
                let count = channel.clients.len();
                for step in 0..count {
                    let index = (channel.next_client + step) % count;
                    let client_id = channel.clients[index];
                    let Some(client) = clients.get_mut(&client_id) else {
                        continue;
                    };
                    if client.in_flight >= client.rdy {
                        continue;
                    }
                    let Some(mut message) = channel.queue.pop_front() else {
                        break 'messages;
                    };
                    message.attempts = message.attempts.saturating_add(1);
                    if client
                        .out
                        .send(Outbound::Frame(message_frame(&message)))
                        .is_err()
                    {
                        message.attempts -= 1;
                        channel.queue.push_front(message);
                        continue;
                    }
                    client.in_flight += 1;
                    channel.next_client = (index + 1) % count;
                    channel.in_flight.insert(
                        message.id,
                        InFlight {
                            message,
                            client: client_id,
                            deadline: now + client.msg_timeout,
                        },
                    );
                    continue 'messages;
                }
                break;
            }
        }
    }
}

/// The byte stream of a connection: TCP, or TLS over it after IDENTIFY.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

type Io = Box<dyn Stream>;

/// What a connection's writer sends.
enum Outbound {
    /// A complete frame.
    Frame(Bytes),
    /// Arbitrary bytes (for tests of malformed input).
    Raw(Bytes),
    /// The heartbeat interval changed (`None`: heartbeats disabled).
    Heartbeat(Option<Duration>),
    /// Close the connection after what was queued before.
    Close,
    /// After writing what was queued before, hand the write half over through `give` (for
    /// the TLS handshake) and go on with the one that comes back through `take`.
    Upgrade {
        give: oneshot::Sender<WriteHalf<Io>>,
        take: oneshot::Receiver<WriteHalf<Io>>,
    },
}

fn frame(frame_type: u32, data: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(8 + data.len());
    buf.put_u32(u32::try_from(4 + data.len()).unwrap_or(u32::MAX));
    buf.put_u32(frame_type);
    buf.put_slice(data);
    buf.freeze()
}

fn message_frame(message: &FakeMessage) -> Bytes {
    let mut data = BytesMut::with_capacity(26 + message.body.len());
    data.put_i64(message.timestamp);
    data.put_u16(message.attempts);
    data.put_slice(&message.id);
    data.put_slice(&message.body);
    frame(FRAME_TYPE_MESSAGE, &data)
}

struct Shared {
    options: FakeNsqdOptions,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Running {
    token: CancellationToken,
    accept: JoinHandle<()>,
}

/// A fake nsqd on 127.0.0.1. Dropping it closes the listener and every connection.
pub struct FakeNsqd {
    addr: SocketAddr,
    shared: Arc<Shared>,
    root: CancellationToken,
    running: Mutex<Option<Running>>,
}

impl FakeNsqd {
    /// Starts a fake nsqd on a free port of 127.0.0.1 with default options.
    pub async fn start() -> std::io::Result<FakeNsqd> {
        FakeNsqd::start_with(FakeNsqdOptions::default()).await
    }

    /// Starts a fake nsqd with these options.
    pub async fn start_with(options: FakeNsqdOptions) -> std::io::Result<FakeNsqd> {
        let listener = TcpListener::bind(options.addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            options,
            state: Mutex::new(State::default()),
        });
        let root = CancellationToken::new();
        tokio::spawn(expire_loop(shared.clone(), root.clone()));
        let fake = FakeNsqd {
            addr,
            shared,
            root,
            running: Mutex::new(None),
        };
        fake.serve(listener);
        Ok(fake)
    }

    fn serve(&self, listener: TcpListener) {
        let token = self.root.child_token();
        let accept = tokio::spawn(accept_loop(listener, self.shared.clone(), token.clone()));
        *self.running() = Some(Running { token, accept });
    }

    fn running(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The TCP address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TCP address as `host:port`.
    pub fn tcp_address(&self) -> String {
        self.addr.to_string()
    }

    /// Puts a message on `topic` as if a client had published it (not recorded in
    /// [`FakeNsqd::published`]).
    pub fn publish(&self, topic: &str, body: impl Into<Bytes>) {
        self.shared.state().put(topic, vec![body.into()], false);
    }

    /// Every body clients published to `topic` with PUB or MPUB, in order of arrival.
    pub fn published(&self, topic: &str) -> Vec<Bytes> {
        self.shared
            .state()
            .topics
            .get(topic)
            .map(|t| t.published.clone())
            .unwrap_or_default()
    }

    /// The counters of (`topic`, `channel`); all zero if the channel does not exist.
    pub fn stats(&self, topic: &str, channel: &str) -> ChannelStats {
        let state = self.shared.state();
        let Some(channel) = state
            .topics
            .get(topic)
            .and_then(|t| t.channels.get(channel))
        else {
            return ChannelStats::default();
        };
        let ready = channel
            .clients
            .iter()
            .filter_map(|id| state.clients.get(id))
            .map(|c| c.rdy)
            .sum();
        ChannelStats {
            depth: channel.queue.len(),
            in_flight: channel.in_flight.len(),
            deferred: channel.deferred.len(),
            clients: channel.clients.len(),
            ready,
            ..channel.stats.clone()
        }
    }

    /// Server-wide counters.
    pub fn server_stats(&self) -> ServerStats {
        self.shared.state().stats.clone()
    }

    /// When `true`, PUB and MPUB are answered with the fatal `E_PUB_FAILED` /
    /// `E_MPUB_FAILED` (and the connection closed), as nsqd does when it cannot store.
    pub fn set_fail_publishes(&self, fail: bool) {
        self.shared.state().fail_publishes = fail;
    }

    /// Writes `bytes` as they are to every open connection (to test malformed input).
    pub fn send_raw_to_clients(&self, bytes: impl Into<Bytes>) {
        let bytes = bytes.into();
        for client in self.shared.state().clients.values() {
            // Ignored: a client that is going away needs no garbage.
            let _ = client.out.send(Outbound::Raw(bytes.clone()));
        }
    }

    /// Closes the listener and every connection (their in-flight messages are requeued);
    /// topics, channels and queued messages are kept for [`FakeNsqd::restart`].
    pub async fn stop(&self) {
        let running = self.running().take();
        if let Some(running) = running {
            running.token.cancel();
            if let Err(error) = running.accept.await {
                tracing::error!(%error, "fake nsqd accept task failed");
            }
        }
    }

    /// Listens again on the same port after [`FakeNsqd::stop`]. Does nothing if running.
    pub async fn restart(&self) -> std::io::Result<()> {
        if self.running().is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }
}

impl Drop for FakeNsqd {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

async fn expire_loop(shared: Arc<Shared>, root: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = root.cancelled() => return,
            now = tick.tick() => shared.state().expire(now),
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, token: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(shared.clone(), stream, token.clone()));
                }
                Err(error) => tracing::warn!(%error, "fake nsqd accept failed"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, token: CancellationToken) {
    // Ignored: Nagle only delays the fake's frames.
    let _ = stream.set_nodelay(true);
    let (out, out_rx) = mpsc::unbounded_channel();
    let client_id = {
        let mut state = shared.state();
        state.next_client += 1;
        let id = state.next_client;
        state.clients.insert(
            id,
            Client {
                out: out.clone(),
                subscription: None,
                rdy: 0,
                in_flight: 0,
                msg_timeout: shared.options.msg_timeout,
            },
        );
        state.stats.connections = state.clients.len();
        state.stats.connections_accepted += 1;
        id
    };
    let io: Io = Box::new(stream);
    let (read, write) = tokio::io::split(io);
    let heartbeat = shared.options.heartbeat_interval;
    let mut session = Session {
        shared: shared.clone(),
        client_id,
        out,
        phase: Phase::Init,
        heartbeat: Some(heartbeat),
        tls: false,
        upgrade_pending: false,
        authenticated: false,
    };
    tokio::select! {
        biased;
        _ = token.cancelled() => {}
        _ = write_loop(write, out_rx, heartbeat) => {}
        _ = session.read_loop(read) => {}
    }
    shared.state().remove_client(client_id);
}

async fn write_loop(
    mut write: WriteHalf<Io>,
    mut out: mpsc::UnboundedReceiver<Outbound>,
    heartbeat: Duration,
) {
    let mut heartbeats = Some(heartbeat_interval(heartbeat));
    loop {
        let next = tokio::select! {
            next = out.recv() => next,
            _ = next_heartbeat(&mut heartbeats) => {
                Some(Outbound::Frame(frame(FRAME_TYPE_RESPONSE, HEARTBEAT)))
            }
        };
        let written = match next {
            None | Some(Outbound::Close) => {
                // Ignored: the connection is closed either way.
                let _ = write.shutdown().await;
                return;
            }
            Some(Outbound::Heartbeat(interval)) => {
                heartbeats = interval.map(heartbeat_interval);
                Ok(())
            }
            Some(Outbound::Upgrade { give, take }) => {
                if give.send(write).is_err() {
                    return;
                }
                match take.await {
                    Ok(upgraded) => {
                        write = upgraded;
                        Ok(())
                    }
                    // The handshake failed: the connection is gone.
                    Err(_) => return,
                }
            }
            Some(Outbound::Frame(bytes) | Outbound::Raw(bytes)) => {
                match write.write_all(&bytes).await {
                    // TLS keeps records until flushed; for TCP this does nothing.
                    Ok(()) => write.flush().await,
                    Err(error) => Err(error),
                }
            }
        };
        if written.is_err() {
            return;
        }
    }
}

fn heartbeat_interval(period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

async fn next_heartbeat(heartbeats: &mut Option<Interval>) {
    match heartbeats {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Init,
    Subscribed,
    Closing,
}

/// A protocol error: nsqd sends it as an error frame and closes the connection.
struct Fatal {
    code: &'static str,
    description: String,
}

fn fatal(code: &'static str, description: impl Into<String>) -> Fatal {
    Fatal {
        code,
        description: description.into(),
    }
}

type Reader = BufReader<ReadHalf<Io>>;

/// The reading side of one connection and its protocol state.
struct Session {
    shared: Arc<Shared>,
    client_id: u64,
    out: mpsc::UnboundedSender<Outbound>,
    phase: Phase,
    heartbeat: Option<Duration>,
    /// Whether the connection was upgraded to TLS.
    tls: bool,
    /// IDENTIFY agreed to TLS: upgrade before reading the next command.
    upgrade_pending: bool,
    /// Whether AUTH succeeded.
    authenticated: bool,
}

impl Session {
    /// Reads and executes commands until the client leaves, goes silent for two heartbeat
    /// intervals, or commits a fatal error (then waits for the writer to close).
    async fn read_loop(&mut self, read: ReadHalf<Io>) {
        let mut reader = BufReader::new(read);
        let mut magic = [0u8; 4];
        match self.timed(reader.read_exact(&mut magic)).await {
            Some(Ok(_)) => {}
            _ => return,
        }
        if &magic != MAGIC_V2 {
            return self
                .fail(fatal(
                    "E_BAD_PROTOCOL",
                    format!("unsupported protocol {magic:?}"),
                ))
                .await;
        }
        loop {
            let mut line = Vec::new();
            let read = self
                .timed((&mut reader).take(MAX_LINE).read_until(b'\n', &mut line))
                .await;
            match read {
                Some(Ok(0)) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
            if line.last() != Some(&b'\n') {
                if line.len() as u64 >= MAX_LINE {
                    return self.fail(fatal("E_INVALID", "command line too long")).await;
                }
                return;
            }
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Err(error) = self.execute(&mut reader, &line).await {
                return self.fail(error).await;
            }
            if std::mem::take(&mut self.upgrade_pending) {
                match self.upgrade_tls(reader).await {
                    Some(upgraded) => reader = upgraded,
                    None => return,
                }
            }
        }
    }

    /// Upgrades the connection to TLS as nsqd does after answering IDENTIFY with `tls_v1`:
    /// takes the write half back once the answer is written, runs the server handshake, and
    /// sends `OK` over TLS. `None` if the connection is gone.
    async fn upgrade_tls(&mut self, reader: Reader) -> Option<Reader> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.shared.options.tls.clone()?);
        if !reader.buffer().is_empty() {
            // nsqd would lose these bytes: they were read before the TLS reader existed.
            self.fail(fatal(
                "E_IDENTIFY_FAILED",
                "IDENTIFY failed data sent before the TLS handshake",
            ))
            .await;
            return None;
        }
        let (give, given) = oneshot::channel();
        let (hand_back, take) = oneshot::channel();
        self.out.send(Outbound::Upgrade { give, take }).ok()?;
        let write = given.await.ok()?;
        let read = reader.into_inner();
        if !read.is_pair_of(&write) {
            return None;
        }
        let stream = read.unsplit(write);
        let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::debug!(client = self.client_id, %error, "fake nsqd TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(client = self.client_id, "fake nsqd TLS handshake timed out");
                return None;
            }
        };
        let io: Io = Box::new(tls);
        let (read, write) = tokio::io::split(io);
        hand_back.send(write).ok()?;
        self.tls = true;
        self.shared.state().stats.tls_connections += 1;
        self.respond(OK);
        Some(BufReader::new(read))
    }

    async fn fail(&self, error: Fatal) {
        let text = format!("{} {}", error.code, error.description);
        tracing::debug!(client = self.client_id, error = %text, "fake nsqd closes a connection");
        // Ignored: the writer may already be gone.
        let _ = self
            .out
            .send(Outbound::Frame(frame(FRAME_TYPE_ERROR, text.as_bytes())));
        let _ = self.out.send(Outbound::Close);
        std::future::pending::<()>().await;
    }

    /// Runs `future` within two heartbeat intervals (nsqd's read deadline); `None` on
    /// timeout.
    async fn timed<F: Future>(&self, future: F) -> Option<F::Output> {
        match self.heartbeat {
            Some(interval) => tokio::time::timeout(interval * 2, future).await.ok(),
            None => Some(future.await),
        }
    }

    fn respond(&self, data: &[u8]) {
        // Ignored: the writer may already be gone.
        let _ = self
            .out
            .send(Outbound::Frame(frame(FRAME_TYPE_RESPONSE, data)));
    }

    fn refuse(&self, code: &str, description: &str) {
        let text = format!("{code} {description}");
        let _ = self
            .out
            .send(Outbound::Frame(frame(FRAME_TYPE_ERROR, text.as_bytes())));
    }

    async fn execute(&mut self, reader: &mut Reader, line: &[u8]) -> Result<(), Fatal> {
        let params: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let name = params.first().copied().unwrap_or_default();
        if name == b"IDENTIFY" {
            return self.identify(reader).await;
        }
        // nsqd's enforceTLSPolicy: everything but IDENTIFY needs TLS under --tls-required.
        if self.shared.options.tls_required && !self.tls {
            return Err(fatal(
                "E_INVALID",
                format!(
                    "cannot {} in current state (TLS required)",
                    String::from_utf8_lossy(name)
                ),
            ));
        }
        match name {
            b"AUTH" => self.auth(reader, &params).await,
            b"SUB" => self.sub(&params),
            b"RDY" => self.rdy(&params),
            b"FIN" => self.fin(&params),
            b"REQ" => self.req(&params),
            b"TOUCH" => self.touch(&params),
            b"NOP" => {
                self.shared.state().nop(self.client_id);
                Ok(())
            }
            b"CLS" => self.cls(),
            b"PUB" => self.publish(reader, &params).await,
            b"MPUB" => self.mpublish(reader, &params).await,
            other => Err(fatal(
                "E_INVALID",
                format!("invalid command {}", String::from_utf8_lossy(other)),
            )),
        }
    }

    async fn read_size(&self, reader: &mut Reader, code: &'static str) -> Result<i32, Fatal> {
        match self.timed(reader.read_i32()).await {
            Some(Ok(size)) => Ok(size),
            _ => Err(fatal(code, "failed to read body size")),
        }
    }

    async fn read_body(
        &self,
        reader: &mut Reader,
        size: usize,
        code: &'static str,
    ) -> Result<Vec<u8>, Fatal> {
        let mut body = vec![0u8; size];
        match self.timed(reader.read_exact(&mut body)).await {
            Some(Ok(_)) => Ok(body),
            _ => Err(fatal(code, "failed to read body")),
        }
    }

    async fn identify(&mut self, reader: &mut Reader) -> Result<(), Fatal> {
        if self.phase != Phase::Init {
            return Err(fatal("E_INVALID", "cannot IDENTIFY in current state"));
        }
        let size = self.read_size(reader, "E_BAD_BODY").await?;
        let max = self.shared.options.max_body_size;
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s > 0 && s <= max)
            .ok_or_else(|| fatal("E_BAD_BODY", format!("IDENTIFY invalid body size {size}")))?;
        let body = self.read_body(reader, size, "E_BAD_BODY").await?;
        let data: Value = serde_json::from_slice(&body)
            .map_err(|_| fatal("E_BAD_BODY", "IDENTIFY failed to decode JSON body"))?;
        let number = |field: &str| data.get(field).and_then(Value::as_i64).unwrap_or(0);
        let heartbeat_ms = number("heartbeat_interval");
        let msg_timeout_ms = number("msg_timeout");
        let flag = |field: &str| data.get(field).and_then(Value::as_bool).unwrap_or(false);
        let negotiate = flag("feature_negotiation");
        match heartbeat_ms {
            -1 => self.heartbeat = None,
            0 => {}
            ms if ms > 0 => self.heartbeat = Some(Duration::from_millis(ms.unsigned_abs())),
            ms => {
                return Err(fatal(
                    "E_BAD_BODY",
                    format!("IDENTIFY heartbeat interval ({ms}) is invalid"),
                ));
            }
        }
        let msg_timeout = match msg_timeout_ms {
            0 => self.shared.options.msg_timeout,
            ms if ms > 0 => Duration::from_millis(ms.unsigned_abs()),
            ms => {
                return Err(fatal(
                    "E_BAD_BODY",
                    format!("IDENTIFY msg timeout ({ms}) is invalid"),
                ));
            }
        };
        if let Some(client) = self.shared.state().clients.get_mut(&self.client_id) {
            client.msg_timeout = msg_timeout;
        }
        // Ignored: the writer may already be gone.
        let _ = self.out.send(Outbound::Heartbeat(self.heartbeat));
        if !negotiate {
            self.respond(OK);
            return Ok(());
        }
        let options = &self.shared.options;
        let tls_v1 = options.tls.is_some() && flag("tls_v1");
        if tls_v1 && self.tls {
            return Err(fatal(
                "E_IDENTIFY_FAILED",
                "IDENTIFY failed the connection already uses TLS",
            ));
        }
        let answer = serde_json::json!({
            "max_rdy_count": options.max_rdy_count,
            "version": "1.3.0-fake",
            "max_msg_timeout": 15 * 60 * 1000,
            "msg_timeout": u64::try_from(msg_timeout.as_millis()).unwrap_or(u64::MAX),
            "tls_v1": tls_v1,
            "deflate": false,
            "deflate_level": 0,
            "max_deflate_level": 6,
            "snappy": false,
            "sample_rate": 0,
            "auth_required": options.auth_secrets.is_some(),
            "output_buffer_size": 16384,
            "output_buffer_timeout": 250,
        });
        self.respond(answer.to_string().as_bytes());
        self.upgrade_pending = tls_v1;
        Ok(())
    }

    async fn auth(&mut self, reader: &mut Reader, params: &[&[u8]]) -> Result<(), Fatal> {
        self.shared.state().stats.auth_commands += 1;
        if self.phase != Phase::Init {
            return Err(fatal("E_INVALID", "cannot AUTH in current state"));
        }
        if params.len() != 1 {
            return Err(fatal("E_INVALID", "AUTH invalid number of parameters"));
        }
        let size = self.read_size(reader, "E_BAD_BODY").await?;
        let max = self.shared.options.max_body_size;
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| fatal("E_BAD_BODY", format!("AUTH invalid body size {size}")))?;
        if size > max {
            return Err(fatal(
                "E_BAD_BODY",
                format!("AUTH body too big {size} > {max}"),
            ));
        }
        let body = self.read_body(reader, size, "E_BAD_BODY").await?;
        if self.authenticated {
            return Err(fatal("E_INVALID", "AUTH already set"));
        }
        let Some(secrets) = &self.shared.options.auth_secrets else {
            return Err(fatal("E_AUTH_DISABLED", "AUTH disabled"));
        };
        let Some(index) = secrets.iter().position(|s| s.as_bytes() == body) else {
            return Err(fatal("E_AUTH_FAILED", "AUTH failed"));
        };
        self.authenticated = true;
        self.shared.state().stats.auth_accepted += 1;
        let answer = serde_json::json!({
            "identity": format!("fake-identity-{index}"),
            "identity_url": "",
            "permission_count": 1,
        });
        self.respond(answer.to_string().as_bytes());
        Ok(())
    }

    /// nsqd's CheckAuth: with AUTH on, `command` needs a successful AUTH first.
    fn check_auth(&self, command: &str) -> Result<(), Fatal> {
        if self.shared.options.auth_secrets.is_some() && !self.authenticated {
            return Err(fatal(
                "E_AUTH_FIRST",
                format!("AUTH required before {command}"),
            ));
        }
        Ok(())
    }

    fn sub(&mut self, params: &[&[u8]]) -> Result<(), Fatal> {
        if self.phase != Phase::Init {
            return Err(fatal("E_INVALID", "cannot SUB in current state"));
        }
        if self.heartbeat.is_none() {
            return Err(fatal("E_INVALID", "cannot SUB with heartbeats disabled"));
        }
        let [_, topic, channel, ..] = params else {
            return Err(fatal("E_INVALID", "SUB insufficient number of parameters"));
        };
        let topic = String::from_utf8_lossy(topic);
        if !is_valid_topic_name(&topic) {
            return Err(fatal(
                "E_BAD_TOPIC",
                format!("SUB topic name {topic:?} is not valid"),
            ));
        }
        let channel = String::from_utf8_lossy(channel);
        if !is_valid_channel_name(&channel) {
            return Err(fatal(
                "E_BAD_CHANNEL",
                format!("SUB channel name {channel:?} is not valid"),
            ));
        }
        self.check_auth("SUB")?;
        self.shared
            .state()
            .subscribe(self.client_id, &topic, &channel);
        self.phase = Phase::Subscribed;
        self.respond(OK);
        Ok(())
    }

    fn rdy(&mut self, params: &[&[u8]]) -> Result<(), Fatal> {
        if self.phase == Phase::Closing {
            return Ok(());
        }
        if self.phase != Phase::Subscribed {
            return Err(fatal("E_INVALID", "cannot RDY in current state"));
        }
        let count = match params.get(1) {
            None => 1,
            Some(text) => parse_number(text).ok_or_else(|| {
                fatal(
                    "E_INVALID",
                    format!(
                        "RDY could not parse count {}",
                        String::from_utf8_lossy(text)
                    ),
                )
            })?,
        };
        let max = self.shared.options.max_rdy_count;
        if count > max {
            return Err(fatal(
                "E_INVALID",
                format!("RDY count {count} out of range 0-{max}"),
            ));
        }
        self.shared.state().set_rdy(self.client_id, count);
        Ok(())
    }

    /// The id parameter of FIN/REQ/TOUCH, in a state where they are allowed.
    fn message_id<'a>(
        &self,
        verb: &str,
        params: &[&'a [u8]],
        arity: usize,
    ) -> Result<&'a [u8], Fatal> {
        if !matches!(self.phase, Phase::Subscribed | Phase::Closing) {
            return Err(fatal(
                "E_INVALID",
                format!("cannot {verb} in current state"),
            ));
        }
        if params.len() < arity {
            return Err(fatal(
                "E_INVALID",
                format!("{verb} insufficient number of params"),
            ));
        }
        let id = params[1];
        if id.len() != ID_LEN {
            return Err(fatal("E_INVALID", "Invalid Message ID"));
        }
        Ok(id)
    }

    fn fin(&mut self, params: &[&[u8]]) -> Result<(), Fatal> {
        let id = self.message_id("FIN", params, 2)?;
        if let Err(reason) = self.shared.state().finish(self.client_id, id) {
            let id = String::from_utf8_lossy(id);
            self.refuse("E_FIN_FAILED", &format!("FIN {id} failed {reason}"));
        }
        Ok(())
    }

    fn req(&mut self, params: &[&[u8]]) -> Result<(), Fatal> {
        let id = self.message_id("REQ", params, 3)?;
        let text = params[2];
        let delay_ms = parse_number(text).ok_or_else(|| {
            fatal(
                "E_INVALID",
                format!(
                    "REQ could not parse timeout {}",
                    String::from_utf8_lossy(text)
                ),
            )
        })?;
        if delay_ms > MAX_REQ_DELAY_MS {
            return Err(fatal(
                "E_INVALID",
                format!("REQ timeout {delay_ms} out of range 0-{MAX_REQ_DELAY_MS}"),
            ));
        }
        let delay = Duration::from_millis(delay_ms);
        if let Err(reason) = self.shared.state().requeue(self.client_id, id, delay) {
            let id = String::from_utf8_lossy(id);
            self.refuse("E_REQ_FAILED", &format!("REQ {id} failed {reason}"));
        }
        Ok(())
    }

    fn touch(&mut self, params: &[&[u8]]) -> Result<(), Fatal> {
        let id = self.message_id("TOUCH", params, 2)?;
        if let Err(reason) = self.shared.state().touch(self.client_id, id) {
            let id = String::from_utf8_lossy(id);
            self.refuse("E_TOUCH_FAILED", &format!("TOUCH {id} failed {reason}"));
        }
        Ok(())
    }

    fn cls(&mut self) -> Result<(), Fatal> {
        if self.phase != Phase::Subscribed {
            return Err(fatal("E_INVALID", "cannot CLS in current state"));
        }
        self.phase = Phase::Closing;
        {
            let mut state = self.shared.state();
            state.stats.cls_commands += 1;
            state.set_rdy(self.client_id, 0);
        }
        self.respond(CLOSE_WAIT);
        Ok(())
    }

    fn topic_param(&self, verb: &str, params: &[&[u8]]) -> Result<String, Fatal> {
        let Some(topic) = params.get(1) else {
            return Err(fatal(
                "E_INVALID",
                format!("{verb} insufficient number of parameters"),
            ));
        };
        let topic = String::from_utf8_lossy(topic).into_owned();
        if !is_valid_topic_name(&topic) {
            return Err(fatal(
                "E_BAD_TOPIC",
                format!("{verb} topic name {topic:?} is not valid"),
            ));
        }
        Ok(topic)
    }

    async fn publish(&mut self, reader: &mut Reader, params: &[&[u8]]) -> Result<(), Fatal> {
        self.shared.state().stats.pub_commands += 1;
        let topic = self.topic_param("PUB", params)?;
        let size = self.read_size(reader, "E_BAD_MESSAGE").await?;
        let max = self.shared.options.max_msg_size;
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| {
                fatal(
                    "E_BAD_MESSAGE",
                    format!("PUB invalid message body size {size}"),
                )
            })?;
        if size > max {
            return Err(fatal(
                "E_BAD_MESSAGE",
                format!("PUB message too big {size} > {max}"),
            ));
        }
        let body = self.read_body(reader, size, "E_BAD_MESSAGE").await?;
        self.check_auth("PUB")?;
        let mut state = self.shared.state();
        if state.fail_publishes {
            return Err(fatal("E_PUB_FAILED", "PUB failed exiting"));
        }
        state.put(&topic, vec![Bytes::from(body)], true);
        drop(state);
        self.respond(OK);
        Ok(())
    }

    async fn mpublish(&mut self, reader: &mut Reader, params: &[&[u8]]) -> Result<(), Fatal> {
        self.shared.state().stats.mpub_commands += 1;
        let topic = self.topic_param("MPUB", params)?;
        self.check_auth("MPUB")?;
        let size = self.read_size(reader, "E_BAD_BODY").await?;
        let max_body = self.shared.options.max_body_size;
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| fatal("E_BAD_BODY", format!("MPUB invalid body size {size}")))?;
        if size > max_body {
            return Err(fatal(
                "E_BAD_BODY",
                format!("MPUB body too big {size} > {max_body}"),
            ));
        }
        let body = self.read_body(reader, size, "E_BAD_BODY").await?;
        let bodies = split_mpub(&body, self.shared.options.max_msg_size)?;
        let mut state = self.shared.state();
        if state.fail_publishes {
            return Err(fatal("E_MPUB_FAILED", "MPUB failed exiting"));
        }
        state.put(&topic, bodies, true);
        drop(state);
        self.respond(OK);
        Ok(())
    }
}

/// The messages of an MPUB body: count, then (size, bytes) per message.
fn split_mpub(body: &[u8], max_msg_size: usize) -> Result<Vec<Bytes>, Fatal> {
    let mut rest = body;
    let take_i32 = |rest: &mut &[u8]| -> Option<i32> {
        let (head, tail) = rest.split_first_chunk::<4>()?;
        *rest = tail;
        Some(i32::from_be_bytes(*head))
    };
    let count = take_i32(&mut rest)
        .and_then(|c| usize::try_from(c).ok())
        .filter(|&c| c > 0)
        .ok_or_else(|| fatal("E_BAD_BODY", "MPUB invalid message count"))?;
    let mut bodies = Vec::with_capacity(count.min(1024));
    for index in 0..count {
        let size = take_i32(&mut rest).ok_or_else(|| {
            fatal(
                "E_BAD_MESSAGE",
                format!("MPUB failed to read message({index}) body size"),
            )
        })?;
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| {
                fatal(
                    "E_BAD_MESSAGE",
                    format!("MPUB invalid message({index}) body size {size}"),
                )
            })?;
        if size > max_msg_size {
            return Err(fatal(
                "E_BAD_MESSAGE",
                format!("MPUB message too big {size} > {max_msg_size}"),
            ));
        }
        if rest.len() < size {
            return Err(fatal("E_BAD_MESSAGE", "MPUB failed to read message body"));
        }
        let (message, tail) = rest.split_at(size);
        bodies.push(Bytes::copy_from_slice(message));
        rest = tail;
    }
    Ok(bodies)
}

fn parse_number(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}
