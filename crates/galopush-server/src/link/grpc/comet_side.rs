//! The comet's end of the gRPC link: a [`RouterLink`] to one router that connects, joins,
//! keeps the stream alive with heartbeats, and rejoins with back-off (re-reporting its
//! sessions) whenever the stream breaks.
//!
//! A join presents `cluster.secret` and, with `cluster.ca`, runs over mutual TLS (SPEC §11). A
//! router that refuses the secret, or that keeps saying the comet's id is taken by another
//! comet for longer than a crashed predecessor could stay joined ([`ID_TAKEN_GRACE`]), makes
//! the comet exit: it reports the reason on its [`Fatal`] channel.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream;
use galopush_nsq::Backoff;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Interval, MissedTickBehavior, timeout};
use tonic::transport::{ClientTlsConfig, Endpoint};

use super::proto::{self, comet_message, router_message};
use super::{
    HEARTBEAT, REQUEST_TIMEOUT, SILENCE, commands_from_proto, delivery_with_body, session_chunks,
    session_to_proto,
};
use crate::link::{
    CometInfo, CometLink, ImUp, LinkError, Outcome, Registration, RouterLink, SessionInfo, Settle,
};

/// The wait between two attempts to reach a router: 100 ms, doubling up to 5 s.
const REJOIN: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// How long a join refused because the id is taken is tried again: a comet restarted right
/// after a crash finds its predecessor still joined until the router notices the silence.
pub const ID_TAKEN_GRACE: Duration = Duration::from_secs(SILENCE.as_secs() + 4);

/// Where a link reports a reason the comet cannot go on; the comet exits with it.
pub type Fatal = mpsc::UnboundedSender<String>;

/// How a comet presents itself to its routers (SPEC §11).
#[derive(Clone)]
pub struct LinkSecurity {
    /// `cluster.secret`.
    pub secret: String,
    /// Mutual TLS: the CA to check routers against and the comet's own certificate.
    pub tls: Option<ClientTlsConfig>,
    /// Random for each comet process, so a router tells a rejoin from a second comet.
    pub incarnation: u64,
    /// The largest message taken or sent ([`super::message_limit`]).
    pub message_limit: usize,
}

/// Why a joined stream ended.
enum LinkEnd {
    /// The router refused the join: it will not change its mind.
    Refused(tonic::Status),
    /// The stream broke or was never made; trying again may work.
    Broken(String),
}

impl From<tonic::Status> for LinkEnd {
    fn from(status: tonic::Status) -> LinkEnd {
        match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::AlreadyExists => LinkEnd::Refused(status),
            _ => LinkEnd::Broken(status.to_string()),
        }
    }
}

/// What goes up the stream.
enum Upward {
    Message(comet_message::Body),
    Settle(Settle),
}

/// A reply to a request, handed to the caller waiting for it.
type Reply = router_message::Body;

struct LinkState {
    /// The router's RPC address, `host:port`.
    addr: String,
    security: LinkSecurity,
    fatal: Fatal,
    /// Where to put upward messages while joined.
    upward: Mutex<Option<mpsc::UnboundedSender<Upward>>>,
    /// Whether `upward` is there, for those waiting for the link to be joined.
    joined: watch::Sender<bool>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_request: AtomicU64,
}

/// A comet's link to one router over gRPC.
pub struct GrpcRouterLink {
    state: Arc<LinkState>,
}

impl GrpcRouterLink {
    /// A link to the router at `addr` (`host:port`); nothing happens until [`RouterLink::join`].
    pub fn new(addr: &str, security: LinkSecurity, fatal: Fatal) -> GrpcRouterLink {
        GrpcRouterLink {
            state: Arc::new(LinkState {
                addr: addr.to_owned(),
                security,
                fatal,
                upward: Mutex::new(None),
                joined: watch::Sender::new(false),
                waiting: Mutex::new(HashMap::new()),
                next_request: AtomicU64::new(1),
            }),
        }
    }

    fn unavailable(&self) -> LinkError {
        LinkError::Unavailable(format!("router {} not joined", self.state.addr))
    }

    fn send(&self, up: Upward) -> bool {
        match &*self.state.upward.lock() {
            Some(tx) => tx.send(up).is_ok(),
            None => false,
        }
    }

    /// Sends a request and waits for its reply.
    async fn request(
        &self,
        body: impl FnOnce(u64) -> comet_message::Body,
    ) -> Result<Reply, LinkError> {
        let id = self.state.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.state.waiting.lock().insert(id, tx);
        if !self.send(Upward::Message(body(id))) {
            self.state.waiting.lock().remove(&id);
            return Err(self.unavailable());
        }
        match timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(LinkError::Unavailable(format!(
                "router {} went away before answering",
                self.state.addr
            ))),
            Err(_) => {
                self.state.waiting.lock().remove(&id);
                Err(LinkError::Unavailable(format!(
                    "router {} did not answer within {REQUEST_TIMEOUT:?}",
                    self.state.addr
                )))
            }
        }
    }
}

#[async_trait]
impl RouterLink for GrpcRouterLink {
    async fn join(&self, info: CometInfo, comet: Arc<dyn CometLink>) -> Result<(), LinkError> {
        tokio::spawn(keep_joined(self.state.clone(), info, comet));
        Ok(())
    }

    fn is_joined(&self) -> bool {
        *self.state.joined.borrow()
    }

    async fn wait_joined(&self, within: Duration) -> bool {
        let mut joined = self.state.joined.subscribe();
        matches!(
            timeout(within, joined.wait_for(|joined| *joined)).await,
            Ok(Ok(_))
        )
    }

    async fn register(&self, session: SessionInfo) -> Result<Registration, LinkError> {
        let s = session_to_proto(&session);
        let reply = self
            .request(|request| {
                comet_message::Body::Register(proto::Register {
                    request,
                    session: Some(s),
                })
            })
            .await?;
        match reply {
            router_message::Body::RegisterReply(r) if !r.error.is_empty() => {
                Err(LinkError::Unavailable(r.error))
            }
            router_message::Body::RegisterReply(r) if r.accepted => Ok(Registration::Accepted {
                stored: r.stored.into_iter().map(delivery_with_body).collect(),
            }),
            router_message::Body::RegisterReply(_) => Ok(Registration::Refused),
            _ => Err(LinkError::Unavailable("router answered out of turn".into())),
        }
    }

    async fn opened(&self, session: SessionInfo) -> Result<(), LinkError> {
        let s = session_to_proto(&session);
        self.request(|request| {
            comet_message::Body::Opened(proto::Opened {
                request,
                session: Some(s),
            })
        })
        .await
        .map(drop)
    }

    fn closed(&self, session: SessionInfo) {
        self.send(Upward::Message(comet_message::Body::Closed(
            proto::Closed {
                session: Some(session_to_proto(&session)),
            },
        )));
    }

    fn settled(&self, settle: Settle) {
        self.send(Upward::Settle(settle));
    }

    async fn im_up(&self, im: ImUp) -> Result<bool, LinkError> {
        let reply = self
            .request(|request| {
                comet_message::Body::ImUp(proto::ImUp {
                    request,
                    uid: im.uid.to_string(),
                    term: u32::from(im.term.bit()),
                    body: im.body,
                })
            })
            .await?;
        match reply {
            router_message::Body::ImUpReply(r) if !r.error.is_empty() => {
                Err(LinkError::Unavailable(r.error))
            }
            router_message::Body::ImUpReply(r) => Ok(r.accepted),
            _ => Err(LinkError::Unavailable("router answered out of turn".into())),
        }
    }
}

/// Connects and joins, again and again, for as long as the comet runs or until the router
/// refuses it for good.
async fn keep_joined(state: Arc<LinkState>, info: CometInfo, comet: Arc<dyn CometLink>) {
    let mut retries = REJOIN.retries();
    let mut taken_since: Option<tokio::time::Instant> = None;
    loop {
        match joined_session(&state, &info, &comet).await {
            Ok(()) => {
                tracing::warn!(router = %state.addr, "router link closed; rejoining");
                retries.reset();
                taken_since = None;
            }
            Err(LinkEnd::Refused(status)) if status.code() == tonic::Code::AlreadyExists => {
                let since = *taken_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= ID_TAKEN_GRACE {
                    let _ = state.fatal.send(format!(
                        "comet id taken: router {} has another comet joined as comet.id {:?}",
                        state.addr, info.id
                    ));
                    return;
                }
                tracing::warn!(router = %state.addr, comet = %info.id, "comet id taken by another comet; trying again in case it is this one's crashed predecessor");
            }
            Err(LinkEnd::Refused(status)) => {
                let _ = state.fatal.send(format!(
                    "router {} refused the join: {} (check cluster.secret)",
                    state.addr,
                    status.message()
                ));
                return;
            }
            Err(LinkEnd::Broken(e)) => {
                taken_since = None;
                tracing::warn!(router = %state.addr, error = %e, "router link failed; retrying")
            }
        }
        *state.upward.lock() = None;
        state.joined.send_replace(false);
        // Requests in flight will never be answered on this stream.
        state.waiting.lock().clear();
        tokio::time::sleep(retries.next_delay()).await;
    }
}

/// One joined stream, from connect to break.
async fn joined_session(
    state: &LinkState,
    info: &CometInfo,
    comet: &Arc<dyn CometLink>,
) -> Result<(), LinkEnd> {
    let broken = |e: &dyn std::fmt::Display| LinkEnd::Broken(e.to_string());
    let security = &state.security;
    let scheme = if security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", state.addr))
        .map_err(|e| broken(&format!("bad router address: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(HEARTBEAT)
        .keep_alive_timeout(SILENCE)
        .keep_alive_while_idle(true);
    if let Some(tls) = &security.tls {
        let host = crate::config::host_port(&state.addr).map_or("", |(host, _)| host);
        endpoint = endpoint
            .tls_config(tls.clone().domain_name(host))
            .map_err(|e| broken(&e))?;
    }
    let channel = endpoint.connect().await.map_err(|e| broken(&e))?;
    let mut client = proto::router_client::RouterClient::new(channel)
        .max_decoding_message_size(security.message_limit)
        .max_encoding_message_size(security.message_limit);
    let (tx, rx) = mpsc::unbounded_channel();
    // The join, then the rest of the sessions in chunks: no message grows with the sessions.
    let mut chunks = session_chunks(&comet.live_sessions()).into_iter();
    let join = comet_message::Body::Join(proto::Join {
        comet_id: info.id.clone(),
        tcp: info.tcp.clone(),
        ws: info.ws.clone(),
        sessions: chunks.next().unwrap_or_default(),
        tls: info.tls.clone().unwrap_or_default(),
        wss: info.wss.clone().unwrap_or_default(),
        secret: security.secret.clone(),
        incarnation: security.incarnation,
    });
    let first = std::iter::once(join)
        .chain(chunks.map(|sessions| comet_message::Body::Sessions(proto::Sessions { sessions })))
        .collect();
    let mut ticker = tokio::time::interval(HEARTBEAT);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let upward = Outgoing {
        first,
        rx,
        carry: None,
        ticker,
    };
    let response = client.link(stream::unfold(upward, Outgoing::next)).await?;
    let mut downward = response.into_inner();
    match timeout(SILENCE, downward.message()).await {
        Ok(Ok(Some(proto::RouterMessage {
            body: Some(router_message::Body::Joined(_)),
        }))) => {}
        Ok(Ok(other)) => {
            return Err(broken(&format!(
                "router did not accept the join: {other:?}"
            )));
        }
        Ok(Err(status)) => return Err(status.into()),
        Err(_) => return Err(broken(&"router did not answer the join")),
    }
    *state.upward.lock() = Some(tx);
    state.joined.send_replace(true);
    tracing::info!(router = %state.addr, "joined router");
    loop {
        let message = match timeout(SILENCE, downward.message()).await {
            Err(_) => return Err(broken(&format!("router silent for {SILENCE:?}"))),
            Ok(Err(status)) => return Err(status.into()),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(m))) => m,
        };
        match message.body {
            Some(router_message::Body::Commands(batch)) => {
                let (commands, orphans) = commands_from_proto(batch);
                comet.send(commands);
                for id in orphans {
                    tracing::warn!(router = %state.addr, delivery = id, "delivery without its body; settled as failed");
                    if let Some(upward) = &*state.upward.lock() {
                        let _ = upward.send(Upward::Settle(Settle {
                            id,
                            outcome: Outcome::Failed,
                        }));
                    }
                }
            }
            Some(reply @ router_message::Body::RegisterReply(_)) => answer(state, reply),
            Some(reply @ router_message::Body::OpenedReply(_)) => answer(state, reply),
            Some(reply @ router_message::Body::ImUpReply(_)) => answer(state, reply),
            Some(router_message::Body::Heartbeat(_) | router_message::Body::Joined(_)) | None => {}
        }
    }
}

fn answer(state: &LinkState, reply: Reply) {
    let id = match &reply {
        router_message::Body::RegisterReply(r) => r.request,
        router_message::Body::OpenedReply(r) => r.request,
        router_message::Body::ImUpReply(r) => r.request,
        _ => return,
    };
    if let Some(waiter) = state.waiting.lock().remove(&id) {
        let _ = waiter.send(reply);
    }
}

/// The upward stream: the join, then queued messages (consecutive settles merged into one)
/// and a heartbeat every [`HEARTBEAT`].
struct Outgoing {
    /// What opens the stream: the join and the rest of its sessions.
    first: VecDeque<comet_message::Body>,
    rx: mpsc::UnboundedReceiver<Upward>,
    carry: Option<Upward>,
    ticker: Interval,
}

impl Outgoing {
    async fn next(mut self) -> Option<(proto::CometMessage, Outgoing)> {
        let body = match self.first.pop_front() {
            Some(opening) => opening,
            None => {
                let up = match self.carry.take() {
                    Some(up) => up,
                    None => tokio::select! {
                        up = self.rx.recv() => up?,
                        _ = self.ticker.tick() => Upward::Message(comet_message::Body::Heartbeat(proto::Heartbeat {})),
                    },
                };
                match up {
                    Upward::Message(body) => body,
                    Upward::Settle(first) => {
                        let mut settles = vec![first];
                        while let Ok(next) = self.rx.try_recv() {
                            match next {
                                Upward::Settle(s) => settles.push(s),
                                other => {
                                    self.carry = Some(other);
                                    break;
                                }
                            }
                        }
                        comet_message::Body::Settles(proto::Settles {
                            settles: settles
                                .into_iter()
                                .map(|s| proto::Settle {
                                    delivery: s.id,
                                    acked: s.outcome == Outcome::Acked,
                                })
                                .collect(),
                        })
                    }
                }
            }
        };
        Some((proto::CometMessage { body: Some(body) }, self))
    }
}
