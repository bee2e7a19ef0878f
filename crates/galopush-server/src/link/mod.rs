//! The router ↔ comet link: what each side asks of the other, as two traits with two
//! implementations — in-process calls for standalone ([`local`]) and gRPC streams for a cluster.
//! The router and comet code never know which one they run over.
//!
//! A comet joins every router it is configured with and reports each session it opens and
//! closes to all of them; exactly one router (the one the comet asks to register a terminal)
//! authenticates it. A router sends deliveries and kicks to the comet holding a session; the
//! comet settles every delivery (acked or failed) back to the router that sent it.

pub mod grpc;
pub mod local;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_protocol::message::KickReason;

/// A connection's id, unique within its comet for the comet's lifetime.
pub type SessionId = u64;
/// A delivery's id, unique within the router that made it.
pub type DeliveryId = u64;

/// How a comet introduces itself to a router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CometInfo {
    pub id: String,
    /// `host:port` handed to TCP terminals.
    pub tcp: String,
    /// `host:port` handed to Web terminals.
    pub ws: String,
    /// `host:port` handed to TCP terminals that ask for TLS, when the comet has TLS.
    pub tls: Option<String>,
    /// `host:port` handed to Web terminals that ask for TLS (`wss://`).
    pub wss: Option<String>,
}

/// A terminal on a connection: who it is and the token it registered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub session: SessionId,
    pub uid: Arc<str>,
    pub term: TermType,
    pub token: Arc<str>,
}

/// What a delivery carries, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    /// A PUSH; `offline` is the coalesced count of a stored push, 0 when live.
    Push {
        offline: u16,
    },
    Callback,
    Im,
}

impl DeliveryKind {
    pub fn name(self) -> &'static str {
        match self {
            DeliveryKind::Push { .. } => "push",
            DeliveryKind::Callback => "callback",
            DeliveryKind::Im => "im",
        }
    }
}

/// One message for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: DeliveryId,
    pub session: SessionId,
    pub kind: DeliveryKind,
    /// The Web-online flag of PUSH and IM.
    pub flag: u8,
    pub body: Bytes,
}

/// What a router asks of a comet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CometCommand {
    Deliver(Delivery),
    Kick {
        session: SessionId,
        reason: KickReason,
    },
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    /// Not live, write failed, connection closed, or no ack in time.
    Failed,
}

/// A delivery's end, reported to the router that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settle {
    pub id: DeliveryId,
    pub outcome: Outcome,
}

/// A router's answer to a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Registered; the stored messages to send right after REGRESP 0, in order.
    Accepted {
        stored: Vec<Delivery>,
    },
    Refused,
}

/// An IM a terminal sent, for the business side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImUp {
    pub uid: Arc<str>,
    pub term: TermType,
    pub body: Bytes,
}

/// The link to a router is down or the router failed to answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    #[error("router link unavailable: {0}")]
    Unavailable(String),
}

/// A comet's view of one router.
#[async_trait]
pub trait RouterLink: Send + Sync + 'static {
    /// Joins the router: announces the comet and its live sessions. From then on the router
    /// hands commands for this comet to `comet`. A link that can break keeps rejoining by
    /// itself, re-reporting `comet.live_sessions()`.
    async fn join(&self, info: CometInfo, comet: Arc<dyn CometLink>) -> Result<(), LinkError>;

    /// Whether the link is joined now, so that requests can go out.
    fn is_joined(&self) -> bool;

    /// Waits up to `within` for the link to be joined; false if it is not by then.
    async fn wait_joined(&self, within: Duration) -> bool;

    /// Asks the router to authenticate a terminal and take it as live.
    async fn register(&self, session: SessionInfo) -> Result<Registration, LinkError>;

    /// Tells a router (other than the one that authenticated) that a session is live; returns
    /// once the router has recorded it.
    async fn opened(&self, session: SessionInfo) -> Result<(), LinkError>;

    /// A session ended.
    fn closed(&self, session: SessionInfo);

    /// A delivery this router made has ended.
    fn settled(&self, settle: Settle);

    /// Hands an IM to the business side; true once the bus has it durably.
    async fn im_up(&self, im: ImUp) -> Result<bool, LinkError>;
}

/// A router's view of one comet.
pub trait CometLink: Send + Sync + 'static {
    /// Hands commands to the comet, in order.
    fn send(&self, commands: Vec<CometCommand>);

    /// The comet's registered sessions, re-reported when a link rejoins.
    fn live_sessions(&self) -> Vec<SessionInfo>;
}
