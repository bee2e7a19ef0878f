//! The comet: terminal connections (SPEC §1).
//!
//! It listens for binary TCP and WebSocket terminals, runs one task per connection
//! ([`session`]) while the connection is busy (a quiet one is parked without a task:
//! [`idle`]), keeps the table of its connections, asks a router to authenticate each
//! REGISTER and tells every router about the sessions it holds, writes the deliveries and kicks
//! routers send, and settles each delivery back to the router that sent it.

pub mod conn;
pub mod idle;
pub mod session;
pub mod tls_stream;
pub mod transport;
pub mod websocket;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::{join_all, select_ok};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::config::{Config, host_port};
use crate::link::{
    CometCommand, CometInfo, CometLink, ImUp, LinkError, Outcome, Registration, RouterLink,
    SessionId, SessionInfo, Settle,
};
use crate::metrics::{Metrics, Refusal};
use crate::sharded::ShardedMap;
use crate::tls::ReloadingCert;
use conn::{Conn, Outbound, Pushed, RouterIdx};
use rustls::ServerConfig;
use tls_stream::TlsStream;
use transport::{Stream, TcpTransport, WsTransport};

/// How long a REGISTER waits for a router to be joined when none is (see
/// [`CometShared::register`]); well under the terminal's own `comet.register_timeout`.
const JOIN_WAIT: Duration = Duration::from_secs(2);

/// What a comet needs from the configuration.
#[derive(Debug, Clone)]
pub struct CometSettings {
    pub id: String,
    pub tcp_addr: SocketAddr,
    pub ws_addr: SocketAddr,
    pub advertise_tcp: String,
    pub advertise_ws: String,
    pub tls_addr: SocketAddr,
    pub wss_addr: SocketAddr,
    pub advertise_tls: String,
    pub advertise_wss: String,
    pub register_timeout: Duration,
    pub idle_timeout: Duration,
    pub ack_timeout: Duration,
    pub callback_ack_timeout: Duration,
    pub write_timeout: Duration,
    /// `None`: connections are never parked.
    pub park_after: Option<Duration>,
    pub max_body: u32,
    pub max_unregistered_frame: u32,
    pub max_connections: usize,
    pub connections_per_ip: usize,
    pub im_inflight: usize,
    pub conn_queue_bytes: usize,
}

impl CometSettings {
    pub fn from_config(config: &Config) -> CometSettings {
        CometSettings {
            id: config.comet.id.clone(),
            tcp_addr: config.comet.tcp_addr,
            ws_addr: config.comet.ws_addr,
            advertise_tcp: config.comet.advertise_tcp.clone(),
            advertise_ws: config.comet.advertise_ws.clone(),
            tls_addr: config.comet.tls_addr,
            wss_addr: config.comet.wss_addr,
            advertise_tls: config.comet.advertise_tls.clone(),
            advertise_wss: config.comet.advertise_wss.clone(),
            register_timeout: config.comet.register_timeout.get(),
            idle_timeout: config.comet.idle_timeout.get(),
            ack_timeout: config.delivery.ack_timeout.get(),
            callback_ack_timeout: config.delivery.callback_ack_timeout.get(),
            write_timeout: config.comet.write_timeout.get(),
            park_after: Some(config.comet.park_after.get()).filter(|d| !d.is_zero()),
            max_body: config.limits.max_body,
            max_unregistered_frame: config.limits.max_unregistered_frame,
            max_connections: config.limits.max_connections,
            connections_per_ip: config.limits.connections_per_ip,
            im_inflight: config.limits.im_inflight,
            conn_queue_bytes: config.limits.conn_queue_bytes,
        }
    }
}

/// A listener that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub what: &'static str,
    pub source: std::io::Error,
}

/// What the connection tasks share.
pub struct CometShared {
    pub settings: CometSettings,
    pub metrics: Arc<Metrics>,
    routers: Vec<Arc<dyn RouterLink>>,
    hasher: RandomState,
    conns: ShardedMap<SessionId, Arc<Conn>>,
    next_session: AtomicU64,
    /// Connections open, within `limits.max_connections`.
    open: AtomicUsize,
    /// Connections open per source address, when `limits.connections_per_ip` is set.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Where quiet connections are handed over, with `comet.park_after` set.
    parking: Option<idle::Parking>,
}

/// A comet with its listeners bound.
pub struct Comet {
    shared: Arc<CometShared>,
    tcp: TcpListener,
    ws: TcpListener,
    /// The TLS twins of `tcp` and `ws`, with what they serve, when `[tls]` is set.
    tls: Option<TlsListeners>,
    info: CometInfo,
    watcher: Option<idle::Watcher>,
}

struct TlsListeners {
    tls: TcpListener,
    wss: TcpListener,
    config: Arc<ServerConfig>,
}

/// Where a comet's listeners are bound.
#[derive(Debug, Clone, Copy)]
pub struct CometAddrs {
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
}

impl std::fmt::Display for CometAddrs {
    /// `tcp=… ws=…` and, with TLS, ` tls=… wss=…`, as the ready line prints them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tcp={} ws={}", self.tcp, self.ws)?;
        if let (Some(tls), Some(wss)) = (self.tls, self.wss) {
            write!(f, " tls={tls} wss={wss}")?;
        }
        Ok(())
    }
}

/// Replaces port 0 in an advertised `host:port` with the port actually bound.
fn advertised(configured: &str, bound: SocketAddr) -> String {
    match host_port(configured) {
        Some((host, 0)) => format!("{host}:{}", bound.port()),
        _ => configured.to_owned(),
    }
}

fn bound(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

impl Comet {
    /// Binds the terminal listeners, and their TLS twins when `tls` is given.
    pub async fn bind(
        settings: CometSettings,
        routers: Vec<Arc<dyn RouterLink>>,
        metrics: Arc<Metrics>,
        tls: Option<Arc<ReloadingCert>>,
    ) -> Result<Comet, BindError> {
        let bind = |addr: SocketAddr, what: &'static str| {
            let listener =
                crate::listener::bind(addr).map_err(|source| BindError { addr, what, source })?;
            listener
                .local_addr()
                .map(|at| (listener, at))
                .map_err(|source| BindError { addr, what, source })
        };
        let (tcp, tcp_bound) = bind(settings.tcp_addr, "comet.tcp_addr")?;
        let (ws, ws_bound) = bind(settings.ws_addr, "comet.ws_addr")?;
        let mut info = CometInfo {
            id: settings.id.clone(),
            tcp: advertised(&settings.advertise_tcp, tcp_bound),
            ws: advertised(&settings.advertise_ws, ws_bound),
            tls: None,
            wss: None,
        };
        let tls = match tls {
            Some(cert) => {
                let (tls, tls_bound) = bind(settings.tls_addr, "comet.tls_addr")?;
                let (wss, wss_bound) = bind(settings.wss_addr, "comet.wss_addr")?;
                info.tls = Some(advertised(&settings.advertise_tls, tls_bound));
                info.wss = Some(advertised(&settings.advertise_wss, wss_bound));
                Some(TlsListeners {
                    tls,
                    wss,
                    config: cert.server_config(&[]),
                })
            }
            None => None,
        };
        let next_session = AtomicU64::new(fastrand::u64(1..u64::MAX / 2));
        let mut settings = settings;
        let (parking, watcher) = match settings.park_after.map(|_| idle::parking()) {
            Some(Ok((parking, watcher))) => (Some(parking), Some(watcher)),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot watch quiet connections; they keep their tasks");
                settings.park_after = None;
                (None, None)
            }
            None => (None, None),
        };
        let shared = Arc::new(CometShared {
            settings,
            metrics,
            routers,
            hasher: RandomState::new(),
            conns: ShardedMap::default(),
            next_session,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            parking,
        });
        Ok(Comet {
            shared,
            tcp,
            ws,
            tls,
            info,
            watcher,
        })
    }

    /// Where the terminal listeners are bound.
    pub fn local_addrs(&self) -> CometAddrs {
        CometAddrs {
            tcp: bound(&self.tcp),
            ws: bound(&self.ws),
            tls: self.tls.as_ref().map(|t| bound(&t.tls)),
            wss: self.tls.as_ref().map(|t| bound(&t.wss)),
        }
    }

    pub fn info(&self) -> &CometInfo {
        &self.info
    }

    /// Joins the routers and starts accepting terminals.
    pub async fn start(self) -> Arc<CometShared> {
        let shared = self.shared;
        for (i, router) in shared.routers.iter().enumerate() {
            let link: Arc<dyn CometLink> = Arc::new(RouterBound {
                comet: shared.clone(),
                router: i,
            });
            if let Err(e) = router.join(self.info.clone(), link).await {
                tracing::warn!(error = %e, "cannot join router yet");
            }
        }
        if let Some(watcher) = self.watcher {
            tokio::spawn(watcher.run(shared.clone()));
        }
        tokio::spawn(accept_loop(shared.clone(), self.tcp, Listener::Tcp));
        tokio::spawn(accept_loop(shared.clone(), self.ws, Listener::Ws));
        if let Some(tls) = self.tls {
            let config = tls.config;
            tokio::spawn(accept_loop(
                shared.clone(),
                tls.tls,
                Listener::Tls(config.clone()),
            ));
            tokio::spawn(accept_loop(shared.clone(), tls.wss, Listener::Wss(config)));
        }
        tracing::info!(comet = %self.info.id, tcp = %self.info.tcp, ws = %self.info.ws, tls = ?self.info.tls, wss = ?self.info.wss, "comet accepting terminals");
        shared
    }
}

/// What a listener speaks.
enum Listener {
    /// Binary frames (SPEC §3).
    Tcp,
    /// WebSocket (SPEC §4).
    Ws,
    /// Binary frames inside TLS (SPEC §11).
    Tls(Arc<ServerConfig>),
    /// WebSocket inside TLS.
    Wss(Arc<ServerConfig>),
}

async fn accept_loop(shared: Arc<CometShared>, listener: TcpListener, kind: Listener) {
    loop {
        let Some((stream, slot)) = accept(&shared, &listener).await else {
            continue;
        };
        // The handshakes and the REGISTER share one `comet.register_timeout`.
        let deadline = Instant::now() + shared.settings.register_timeout;
        let comet = shared.clone();
        match &kind {
            Listener::Tcp => {
                let transport = TcpTransport::new(stream, shared.settings.max_unregistered_frame);
                // The session's future itself is the task, not wrapped in a block that would
                // keep its arguments a second time: a task is an idle terminal's largest
                // allocation, and a few dozen bytes more move it into jemalloc's next size
                // class (1280 -> 1536 bytes).
                tokio::spawn(session::serve(comet, transport, slot, deadline));
            }
            Listener::Ws => {
                tokio::spawn(serve_ws(comet, stream, slot, deadline));
            }
            Listener::Tls(config) => {
                tokio::spawn(serve_tls(
                    comet,
                    config.clone(),
                    stream,
                    slot,
                    deadline,
                    false,
                ));
            }
            Listener::Wss(config) => {
                tokio::spawn(serve_tls(
                    comet,
                    config.clone(),
                    stream,
                    slot,
                    deadline,
                    true,
                ));
            }
        }
    }
}

/// A WebSocket terminal: the upgrade, then the session in a task of its own (the handshake's
/// state is not kept for the connection's life).
async fn serve_ws<S: Stream>(
    comet: Arc<CometShared>,
    mut stream: S,
    slot: ConnSlot,
    deadline: Instant,
) {
    let mut read = BytesMut::new();
    let handshake = websocket::accept(&mut stream, &mut read);
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(())) => {
            let max = comet.settings.max_unregistered_frame;
            let transport = WsTransport::new(stream, read, max);
            tokio::spawn(session::serve(comet, transport, slot, deadline));
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "websocket handshake failed"),
        Err(_) => tracing::debug!("websocket handshake not done within comet.register_timeout"),
    }
}

/// The TLS handshake of a terminal's connection, within `deadline`.
async fn tls_handshake(
    config: Arc<ServerConfig>,
    stream: TcpStream,
    deadline: Instant,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout_at(deadline, TlsStream::accept(stream, config)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake not done within comet.register_timeout");
            None
        }
    }
}

/// A terminal inside TLS: binary frames, or WebSocket (`wss://`) when `web`.
async fn serve_tls(
    comet: Arc<CometShared>,
    config: Arc<ServerConfig>,
    stream: TcpStream,
    slot: ConnSlot,
    deadline: Instant,
    web: bool,
) {
    let Some(tls) = tls_handshake(config, stream, deadline).await else {
        return;
    };
    if web {
        serve_ws(comet, tls, slot, deadline).await;
    } else {
        let transport = TcpTransport::new(tls, comet.settings.max_unregistered_frame);
        // A task of its own: the handshake's state is not kept for the connection's life.
        tokio::spawn(session::serve(comet, transport, slot, deadline));
    }
}

/// A connection's place within `limits.max_connections` and `limits.connections_per_ip`,
/// given back when it is dropped (when the connection's task ends, however it ends).
pub struct ConnSlot {
    comet: Arc<CometShared>,
    /// The source address, when connections per address are counted.
    ip: Option<IpAddr>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.comet.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut per_ip = self.comet.per_ip.lock();
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Takes one connection if the limits let it in; one over them is closed at once (dropped).
async fn accept(
    shared: &Arc<CometShared>,
    listener: &TcpListener,
) -> Option<(TcpStream, ConnSlot)> {
    let (stream, peer) = match listener.accept().await {
        Ok(accepted) => accepted,
        Err(e) => {
            // Out of file descriptors and the like: back off instead of spinning.
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            return None;
        }
    };
    let settings = &shared.settings;
    if shared.open.fetch_add(1, Ordering::Relaxed) >= settings.max_connections {
        shared.open.fetch_sub(1, Ordering::Relaxed);
        shared.metrics.refused(Refusal::MaxConnections);
        return None;
    }
    let mut slot = ConnSlot {
        comet: shared.clone(),
        ip: None,
    };
    if settings.connections_per_ip > 0 {
        let ip = peer.ip();
        let mut per_ip = shared.per_ip.lock();
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= settings.connections_per_ip {
            drop(per_ip);
            shared.metrics.refused(Refusal::ConnectionsPerIp);
            return None;
        }
        *n += 1;
        slot.ip = Some(ip);
    }
    let _ = stream.set_nodelay(true);
    Some((stream, slot))
}

impl CometShared {
    /// A new connection's handle, in the table.
    pub fn open_conn(&self) -> Arc<Conn> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(id));
        self.conns.lock(&id).insert(id, conn.clone());
        conn
    }

    /// Hands a quiet connection to the watcher ([`idle`]); given back when parking is off or
    /// the watcher has ended.
    pub fn park(&self, parked: idle::Parked) -> Result<(), idle::Parked> {
        match &self.parking {
            Some(parking) => parking.park(parked),
            None => Err(parked),
        }
    }

    /// Removes a connection from the table (its task is ending).
    pub fn close_conn(&self, id: SessionId) {
        self.conns.lock(&id).remove(&id);
    }

    /// Queues an item for a connection; `None` if there is no such connection. Under the
    /// table's lock, so a delivery costs no reference count of the connection.
    fn push(&self, id: SessionId, item: Outbound) -> Option<Pushed> {
        let limit = self.settings.conn_queue_bytes;
        self.conns
            .lock(&id)
            .get(&id)
            .map(|conn| conn.push(item, limit))
    }

    /// The router that authenticates a uid: spread by uid, so one user's registrations go to
    /// the same router while it is reachable.
    fn first_router(&self, uid: &str) -> usize {
        self.hasher.hash_one(uid) as usize % self.routers.len().max(1)
    }

    /// Has a router authenticate a terminal, then tells the other routers it is live. Returns
    /// the router that authenticated it (its stored messages settle there) and its answer.
    ///
    /// With no router joined, it first waits up to [`JOIN_WAIT`] for one: a router lists a
    /// comet (and the dispatcher sends terminals to it) as soon as it has the comet's join,
    /// before the comet has heard back; and a comet rejoins a restarted router within a few
    /// hundred milliseconds. A router that is down while another is joined costs no wait.
    pub async fn register(
        &self,
        info: &SessionInfo,
    ) -> Result<(RouterIdx, Registration), LinkError> {
        if !self.routers.iter().any(|r| r.is_joined()) {
            let any_joined = self.routers.iter().map(|r| {
                Box::pin(async move {
                    if r.wait_joined(JOIN_WAIT).await {
                        Ok(())
                    } else {
                        Err(())
                    }
                })
            });
            let _ = select_ok(any_joined).await;
        }
        let n = self.routers.len();
        let start = self.first_router(&info.uid);
        let mut last = LinkError::Unavailable("no router configured".into());
        for i in 0..n {
            let at = (start + i) % n;
            match self.routers[at].register(info.clone()).await {
                Ok(reg) => {
                    if matches!(reg, Registration::Accepted { .. }) {
                        let others = self
                            .routers
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| *j != at)
                            .map(|(_, r)| r.opened(info.clone()));
                        for result in join_all(others).await {
                            if let Err(e) = result {
                                tracing::debug!(error = %e, "router did not record the session");
                            }
                        }
                    }
                    return Ok((at, reg));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Hands an IM to the business side through the first router that takes it.
    pub async fn im_up(&self, im: ImUp) -> bool {
        let n = self.routers.len();
        let start = self.first_router(&im.uid);
        for i in 0..n {
            match self.routers[(start + i) % n].im_up(im.clone()).await {
                Ok(accepted) => return accepted,
                Err(e) => tracing::debug!(error = %e, "router unavailable for IM"),
            }
        }
        false
    }

    /// Reports a closed session to every router.
    pub fn closed(&self, info: &SessionInfo) {
        for r in &self.routers {
            r.closed(info.clone());
        }
    }

    /// Settles a delivery with the router that sent it.
    pub fn settle(&self, router: RouterIdx, settle: Settle) {
        if let Some(r) = self.routers.get(router) {
            r.settled(settle);
        }
    }

    fn live_sessions(&self) -> Vec<SessionInfo> {
        let mut out = Vec::new();
        self.conns
            .each_shard(|shard| out.extend(shard.values().filter_map(|c| c.session().cloned())));
        out
    }
}

/// The comet as one router sees it: commands from that router land here.
struct RouterBound {
    comet: Arc<CometShared>,
    router: RouterIdx,
}

impl CometLink for RouterBound {
    fn send(&self, commands: Vec<CometCommand>) {
        let comet = &self.comet;
        for command in commands {
            match command {
                CometCommand::Deliver(delivery) => {
                    let (id, session) = (delivery.id, delivery.session);
                    let item = Outbound::Deliver {
                        router: self.router,
                        delivery,
                    };
                    let taken = match comet.push(session, item) {
                        Some(Pushed::Queued) => true,
                        Some(Pushed::Overflowed(_)) => {
                            comet.metrics.refused(Refusal::ConnQueueBytes);
                            false
                        }
                        Some(Pushed::Closed(_)) | None => false,
                    };
                    if !taken {
                        comet.settle(
                            self.router,
                            Settle {
                                id,
                                outcome: Outcome::Failed,
                            },
                        );
                    }
                }
                CometCommand::Kick { session, reason } => {
                    let _ = comet.push(session, Outbound::Kick(reason));
                }
            }
        }
    }

    fn live_sessions(&self) -> Vec<SessionInfo> {
        self.comet.live_sessions()
    }
}
