//! The router's end of the gRPC link: the `Link` service comets connect to. Each stream is one
//! joined comet, handed to the [`Router`] as a [`CometLink`]; when the stream ends or goes
//! silent the comet leaves.
//!
//! A join must carry `cluster.secret` when the router has one (compared in constant time), and
//! a comet id that no other comet process holds (SPEC §11); what a joined comet says about
//! deliveries and sessions is taken only for its own.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use futures_util::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::proto::{self, comet_message, router_message};
use super::{BATCH_BYTES, Batcher, HEARTBEAT, SILENCE, session_from_proto};
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
    /// The largest message taken or sent ([`super::message_limit`]).
    message_limit: usize,
}

impl LinkService {
    pub fn new(router: Arc<Router>, secret: &str, message_limit: usize) -> LinkService {
        LinkService {
            router,
            secret: Arc::from(secret),
            message_limit,
        }
    }

    /// Whether a join presents the secret.
    fn admits(&self, presented: &str) -> bool {
        self.secret.is_empty() || bool::from(presented.as_bytes().ct_eq(self.secret.as_bytes()))
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> proto::router_server::RouterServer<LinkService> {
        let limit = self.message_limit;
        proto::router_server::RouterServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }
}

/// A message for a comet's stream, with about how many bytes of deliveries it holds.
struct Outbound {
    body: router_message::Body,
    size: usize,
}

/// What goes down a comet's stream, in order.
#[derive(Clone)]
struct Downward {
    tx: mpsc::UnboundedSender<Outbound>,
    /// Numbers the bodies of `Commands`, unique on the stream.
    next_body: Arc<AtomicU64>,
}

impl Downward {
    fn send(&self, body: router_message::Body) {
        let _ = self.tx.send(Outbound { body, size: 0 });
    }

    /// Sends commands as `Commands` messages of about [`BATCH_BYTES`].
    fn commands(&self, commands: Vec<CometCommand>) {
        let mut batcher = Batcher::new(&self.next_body);
        for command in commands {
            batcher.push(command);
        }
        for (batch, size) in batcher.finish() {
            let _ = self.tx.send(Outbound {
                body: router_message::Body::Commands(batch),
                size,
            });
        }
    }
}

/// A joined comet as the router sees it: commands go down its stream.
struct GrpcCometLink {
    downward: Downward,
    /// The sessions reported with the join, handed over once.
    joined_with: Mutex<Vec<SessionInfo>>,
}

impl CometLink for GrpcCometLink {
    fn send(&self, commands: Vec<CometCommand>) {
        self.downward.commands(commands);
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
        let tx = Downward {
            tx,
            next_body: Arc::new(AtomicU64::new(0)),
        };
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
        tx.send(router_message::Body::Joined(proto::Joined {}));
        tokio::spawn(serve_comet(self.router.clone(), idx, upward, tx));
        let downward = merged(UnboundedReceiverStream::new(rx))
            .map(|body| Ok(proto::RouterMessage { body: Some(body) }));
        Ok(Response::new(Box::pin(downward)))
    }
}

/// Merges consecutive command batches that are ready together into one message, up to about
/// [`BATCH_BYTES`].
fn merged(
    rx: UnboundedReceiverStream<Outbound>,
) -> impl Stream<Item = router_message::Body> + Send {
    rx.ready_chunks(256).flat_map(|chunk| {
        let mut out: Vec<(router_message::Body, usize)> = Vec::with_capacity(chunk.len());
        for Outbound { body, size } in chunk {
            match (out.last_mut(), body) {
                (
                    Some((router_message::Body::Commands(batch), merged_size)),
                    router_message::Body::Commands(more),
                ) if *merged_size + size <= BATCH_BYTES => {
                    batch.commands.extend(more.commands);
                    batch.bodies.extend(more.bodies);
                    *merged_size += size;
                }
                (_, body) => out.push((body, size)),
            }
        }
        futures_util::stream::iter(out.into_iter().map(|(body, _)| body))
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
                tx.send(router_message::Body::Heartbeat(proto::Heartbeat {}));
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
                    tx.send(router_message::Body::RegisterReply(proto::RegisterReply {
                        request: r.request,
                        accepted: false,
                        ..Default::default()
                    }));
                    continue;
                };
                let (router, tx) = (router.clone(), tx.clone());
                tokio::spawn(async move {
                    let reply = match router.register(comet, session).await {
                        Ok(Registration::Accepted { stored }) => {
                            // Ahead of the reply on the same stream: the comet queues them for
                            // the connection, which writes them after REGRESP 0, in order.
                            tx.commands(stored.into_iter().map(CometCommand::Deliver).collect());
                            proto::RegisterReply {
                                request: r.request,
                                accepted: true,
                                ..Default::default()
                            }
                        }
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
                    tx.send(router_message::Body::RegisterReply(reply));
                });
            }
            comet_message::Body::Opened(o) => {
                if let Some(session) = o.session.and_then(session_from_proto) {
                    router.opened(comet, &session);
                }
                tx.send(router_message::Body::OpenedReply(proto::OpenedReply {
                    request: o.request,
                }));
            }
            // The rest of the sessions the comet joined with.
            comet_message::Body::Sessions(more) => {
                for session in more.sessions.into_iter().filter_map(session_from_proto) {
                    router.opened(comet, &session);
                }
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
                                        body: im.body,
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
                    tx.send(router_message::Body::ImUpReply(reply));
                });
            }
            comet_message::Body::Heartbeat(_) | comet_message::Body::Join(_) => {}
        }
    }
    router.leave(comet);
}
