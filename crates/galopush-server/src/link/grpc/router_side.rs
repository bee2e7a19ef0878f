//! The router's end of the gRPC link: the `Link` service comets connect to. Each stream is one
//! joined comet, handed to the [`Router`] as a [`CometLink`]; when the stream ends or goes
//! silent the comet leaves.
//!
//! A join must carry `cluster.secret` when the router has one (compared in constant time), and
//! a comet id that no other comet process holds (SPEC §11); what a joined comet says about
//! deliveries and sessions is taken only for its own.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::proto::{self, comet_message, router_message};
use super::{HEARTBEAT, SILENCE, commands_to_proto, delivery_to_proto, session_from_proto};
use crate::link::{
    CometCommand, CometInfo, CometLink, ImUp, Outcome, Registration, SessionInfo, Settle,
};
use crate::metrics::LinkRefusal;
use crate::router::{CometIdx, Router};
use subtle::ConstantTimeEq;

/// The `Link` service.
pub struct LinkService {
    router: Arc<Router>,
    /// `cluster.secret`; empty: joins are not checked (a loopback `router.rpc_addr` only).
    secret: Arc<str>,
}

impl LinkService {
    pub fn new(router: Arc<Router>, secret: &str) -> LinkService {
        LinkService {
            router,
            secret: Arc::from(secret),
        }
    }

    /// Whether a join presents the secret.
    fn admits(&self, presented: &str) -> bool {
        self.secret.is_empty() || bool::from(presented.as_bytes().ct_eq(self.secret.as_bytes()))
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> proto::router_server::RouterServer<LinkService> {
        proto::router_server::RouterServer::new(self)
    }
}

type Downward = mpsc::UnboundedSender<router_message::Body>;

/// A joined comet as the router sees it: commands go down its stream.
struct GrpcCometLink {
    downward: Downward,
    /// The sessions reported with the join, handed over once.
    joined_with: Mutex<Vec<SessionInfo>>,
}

impl CometLink for GrpcCometLink {
    fn send(&self, commands: Vec<CometCommand>) {
        let _ = self
            .downward
            .send(router_message::Body::Commands(proto::Commands {
                commands: commands_to_proto(commands),
            }));
    }

    fn live_sessions(&self) -> Vec<SessionInfo> {
        std::mem::take(&mut self.joined_with.lock())
    }
}

#[tonic::async_trait]
impl proto::router_server::Router for LinkService {
    type LinkStream = Pin<Box<dyn Stream<Item = Result<proto::RouterMessage, Status>> + Send>>;

    async fn link(
        &self,
        request: Request<Streaming<proto::CometMessage>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let mut upward = request.into_inner();
        let join = match timeout(SILENCE, upward.message()).await {
            Ok(Ok(Some(proto::CometMessage {
                body: Some(comet_message::Body::Join(join)),
            }))) => join,
            Ok(Err(status)) => return Err(status),
            _ => return Err(Status::invalid_argument("a link starts with Join")),
        };
        // What waits here for the comet's stream is bounded by what the router has in flight
        // for the comet (each delivery belongs to a bus message, and those are bounded: SPEC
        // §10); a comet that stops reading goes silent and leaves after `SILENCE`.
        if !self.admits(&join.secret) {
            self.router
                .metrics()
                .link_refused(LinkRefusal::Secret)
                .inc();
            tracing::warn!(comet = %join.comet_id, "join refused: wrong or missing cluster.secret");
            return Err(Status::unauthenticated("wrong or missing cluster.secret"));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let present = |s: String| (!s.is_empty()).then_some(s);
        let info = CometInfo {
            id: join.comet_id,
            tcp: join.tcp,
            ws: join.ws,
            tls: present(join.tls),
            wss: present(join.wss),
        };
        let link = Arc::new(GrpcCometLink {
            downward: tx.clone(),
            joined_with: Mutex::new(
                join.sessions
                    .into_iter()
                    .filter_map(session_from_proto)
                    .collect(),
            ),
        });
        let idx = match self.router.join(info, link, join.incarnation) {
            Ok(idx) => idx,
            Err(taken) => {
                self.router
                    .metrics()
                    .link_refused(LinkRefusal::IdTaken)
                    .inc();
                tracing::warn!(error = %taken, "join refused");
                return Err(Status::already_exists(taken.to_string()));
            }
        };
        let _ = tx.send(router_message::Body::Joined(proto::Joined {}));
        tokio::spawn(serve_comet(self.router.clone(), idx, upward, tx));
        let downward = merged(UnboundedReceiverStream::new(rx))
            .map(|body| Ok(proto::RouterMessage { body: Some(body) }));
        Ok(Response::new(Box::pin(downward)))
    }
}

/// Merges consecutive command batches that are ready together into one message.
fn merged(
    rx: UnboundedReceiverStream<router_message::Body>,
) -> impl Stream<Item = router_message::Body> + Send {
    rx.ready_chunks(256).flat_map(|chunk| {
        let mut out: Vec<router_message::Body> = Vec::with_capacity(chunk.len());
        for body in chunk {
            match (out.last_mut(), body) {
                (
                    Some(router_message::Body::Commands(batch)),
                    router_message::Body::Commands(more),
                ) => batch.commands.extend(more.commands),
                (_, body) => out.push(body),
            }
        }
        futures_util::stream::iter(out)
    })
}

/// Reads a comet's stream, sending heartbeats down, until it ends or goes silent; then makes
/// the comet leave.
async fn serve_comet(
    router: Arc<Router>,
    comet: CometIdx,
    mut upward: Streaming<proto::CometMessage>,
    tx: Downward,
) {
    let mut ticker = tokio::time::interval(HEARTBEAT);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    loop {
        let received = tokio::select! {
            received = upward.message() => received,
            _ = ticker.tick() => {
                if heard.elapsed() > SILENCE {
                    tracing::warn!(comet, "comet silent for {SILENCE:?}");
                    break;
                }
                let _ = tx.send(router_message::Body::Heartbeat(proto::Heartbeat {}));
                continue;
            }
        };
        heard = Instant::now();
        let message = match received {
            Err(status) => {
                tracing::warn!(comet, error = %status, "comet link failed");
                break;
            }
            Ok(None) => break,
            Ok(Some(m)) => m,
        };
        let Some(body) = message.body else {
            continue;
        };
        match body {
            comet_message::Body::Register(r) => {
                let Some(session) = r.session.and_then(session_from_proto) else {
                    let _ = tx.send(router_message::Body::RegisterReply(proto::RegisterReply {
                        request: r.request,
                        accepted: false,
                        ..Default::default()
                    }));
                    continue;
                };
                let (router, tx) = (router.clone(), tx.clone());
                tokio::spawn(async move {
                    let reply = match router.register(comet, session).await {
                        Ok(Registration::Accepted { stored }) => proto::RegisterReply {
                            request: r.request,
                            accepted: true,
                            stored: stored.into_iter().map(delivery_to_proto).collect(),
                            error: String::new(),
                        },
                        Ok(Registration::Refused) => proto::RegisterReply {
                            request: r.request,
                            ..Default::default()
                        },
                        Err(e) => proto::RegisterReply {
                            request: r.request,
                            error: e.to_string(),
                            ..Default::default()
                        },
                    };
                    let _ = tx.send(router_message::Body::RegisterReply(reply));
                });
            }
            comet_message::Body::Opened(o) => {
                if let Some(session) = o.session.and_then(session_from_proto) {
                    router.opened(comet, &session);
                }
                let _ = tx.send(router_message::Body::OpenedReply(proto::OpenedReply {
                    request: o.request,
                }));
            }
            comet_message::Body::Closed(c) => {
                if let Some(session) = c.session.and_then(session_from_proto) {
                    router.closed(comet, &session);
                }
            }
            comet_message::Body::Settles(s) => {
                for settle in s.settles {
                    router.settled(
                        comet,
                        Settle {
                            id: settle.delivery,
                            outcome: if settle.acked {
                                Outcome::Acked
                            } else {
                                Outcome::Failed
                            },
                        },
                    );
                }
            }
            comet_message::Body::ImUp(im) => {
                let term = u8::try_from(im.term)
                    .ok()
                    .and_then(galopush_protocol::TermType::from_bit);
                let (router, tx) = (router.clone(), tx.clone());
                tokio::spawn(async move {
                    let reply = match term {
                        Some(term) => proto::ImUpReply {
                            request: im.request,
                            accepted: router
                                .im_up(
                                    comet,
                                    ImUp {
                                        uid: Arc::from(im.uid),
                                        term,
                                        body: im.body.into(),
                                    },
                                )
                                .await,
                            error: String::new(),
                        },
                        None => proto::ImUpReply {
                            request: im.request,
                            accepted: false,
                            error: "bad terminal type".into(),
                        },
                    };
                    let _ = tx.send(router_message::Body::ImUpReply(reply));
                });
            }
            comet_message::Body::Heartbeat(_) | comet_message::Body::Join(_) => {}
        }
    }
    router.leave(comet);
}
