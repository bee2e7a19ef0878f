//! The router ↔ comet link over gRPC (tonic), for a cluster.
//!
//! One bidirectional stream per (comet, router): the comet opens it with `Join` and the
//! sessions it holds; then register/opened/IM requests (with ids the replies echo), closes and
//! settles go up, deliveries and kicks come down. Consecutive settles and consecutive command
//! batches are merged into one message each. Both sides send a heartbeat every
//! [`HEARTBEAT`]; a side that hears nothing for [`SILENCE`] takes the other as gone: the router
//! forgets the comet's sessions and stores what it had not settled, the comet reconnects with
//! back-off and re-reports its sessions.
//!
//! No message approaches a size limit, whatever the fan-out, the body or the number of
//! sessions: deliveries go in `Commands` of about [`BATCH_BYTES`], each body once per message
//! however many deliveries share it; a join's sessions follow the `Join` in `Sessions` chunks of
//! the same size; a terminal's stored messages go as `Commands` before its `RegisterReply`. The
//! limit both sides set ([`message_limit`]) is then only what one body can need.

pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("galopush.link.v1");
}

pub mod comet_side;
pub mod router_side;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_protocol::message::KickReason;

use super::{CometCommand, Delivery, DeliveryId, DeliveryKind, SessionInfo};
use crate::config::LimitsConfig;

/// How often each side says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a side waits without hearing anything before it takes the other as gone.
pub const SILENCE: Duration = Duration::from_secs(6);
/// How long a comet waits for a router's answer to a request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn session_to_proto(s: &SessionInfo) -> proto::Session {
    proto::Session {
        id: s.session,
        uid: s.uid.to_string(),
        term: u32::from(s.term.bit()),
        token: s.token.to_string(),
    }
}

fn session_from_proto(s: proto::Session) -> Option<SessionInfo> {
    let term = u8::try_from(s.term).ok().and_then(TermType::from_bit)?;
    Some(SessionInfo {
        session: s.id,
        uid: Arc::from(s.uid),
        term,
        token: Arc::from(s.token),
    })
}

/// About how many bytes of deliveries and bodies one `Commands` (or `Sessions`) message holds.
pub const BATCH_BYTES: usize = 1 << 20;

/// The largest message either side of the link takes: one body as big as the business side may
/// send (a `/mpub` line, `limits.max_mpub`; a `/pub`, `limits.max_body`) with a batch's room
/// besides. Set explicitly on both sides, because tonic's default (4 MiB) is smaller than a
/// body may be.
pub fn message_limit(limits: &LimitsConfig) -> usize {
    limits.max_mpub.max(limits.max_body as usize) + 4 * BATCH_BYTES
}

/// What a delivery adds to a `Commands` message besides its body: its fields and tags.
const DELIVERY_BYTES: usize = 40;

/// Cuts commands into `Commands` messages of about [`BATCH_BYTES`], each body carried once per
/// message and named by the deliveries sharing it.
pub struct Batcher<'a> {
    /// Body ids, unique on the link, so that batches can be merged without renumbering.
    next_body: &'a AtomicU64,
    done: Vec<(proto::Commands, usize)>,
    current: proto::Commands,
    size: usize,
    /// The bodies of `current`, by the address and length of their bytes.
    bodies: HashMap<(usize, usize), u64>,
}

impl<'a> Batcher<'a> {
    pub fn new(next_body: &'a AtomicU64) -> Batcher<'a> {
        Batcher {
            next_body,
            done: Vec::new(),
            current: proto::Commands::default(),
            size: 0,
            bodies: HashMap::new(),
        }
    }

    fn cut(&mut self) {
        if !self.current.commands.is_empty() {
            let batch = std::mem::take(&mut self.current);
            self.done.push((batch, self.size));
        }
        self.size = 0;
        self.bodies.clear();
    }

    pub fn push(&mut self, command: CometCommand) {
        let command = match command {
            CometCommand::Deliver(d) => {
                let key = (d.body.as_ptr() as usize, d.body.len());
                let known = self.bodies.contains_key(&key);
                let adds = DELIVERY_BYTES + if known { 0 } else { d.body.len() };
                if self.size + adds > BATCH_BYTES && !self.current.commands.is_empty() {
                    self.cut();
                }
                let body_ref = match self.bodies.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = self.next_body.fetch_add(1, Ordering::Relaxed) + 1;
                        self.bodies.insert(key, id);
                        self.size += d.body.len();
                        self.current.bodies.push(proto::Body {
                            id,
                            data: d.body.clone(),
                        });
                        id
                    }
                };
                self.size += DELIVERY_BYTES;
                proto::command::Body::Deliver(delivery_to_proto(d, body_ref))
            }
            CometCommand::Kick { session, reason } => {
                self.size += DELIVERY_BYTES;
                proto::command::Body::Kick(proto::Kick {
                    session,
                    reason: reason as u32,
                })
            }
        };
        self.current.commands.push(proto::Command {
            body: Some(command),
        });
    }

    /// The messages, with about how many bytes each holds.
    pub fn finish(mut self) -> Vec<(proto::Commands, usize)> {
        self.cut();
        self.done
    }
}

/// A delivery as sent: its body named by `body_ref` (a `Body` of the same message).
fn delivery_to_proto(d: Delivery, body_ref: u64) -> proto::Delivery {
    let (kind, offline) = match d.kind {
        DeliveryKind::Push { offline } => (proto::Kind::Push, u32::from(offline)),
        DeliveryKind::Callback => (proto::Kind::Callback, 0),
        DeliveryKind::Im => (proto::Kind::Im, 0),
    };
    proto::Delivery {
        id: d.id,
        session: d.session,
        kind: kind as i32,
        offline,
        flag: u32::from(d.flag),
        body: Bytes::new(),
        body_ref,
    }
}

fn delivery_from_proto(d: proto::Delivery, body: Bytes) -> Delivery {
    let kind = match proto::Kind::try_from(d.kind) {
        Ok(proto::Kind::Callback) => DeliveryKind::Callback,
        Ok(proto::Kind::Im) => DeliveryKind::Im,
        _ => DeliveryKind::Push {
            offline: u16::try_from(d.offline).unwrap_or(u16::MAX),
        },
    };
    Delivery {
        id: d.id,
        session: d.session,
        kind,
        flag: u8::try_from(d.flag).unwrap_or(1),
        body,
    }
}

/// A delivery carrying its own body (a `RegisterReply`'s stored messages, from older routers).
fn delivery_with_body(mut d: proto::Delivery) -> Delivery {
    let body = std::mem::take(&mut d.body);
    delivery_from_proto(d, body)
}

fn kick_reason(n: u32) -> Option<KickReason> {
    Some(match n {
        1 => KickReason::RepeatLogin,
        2 => KickReason::MutualExclusion,
        3 => KickReason::SessionTimeout,
        4 => KickReason::LoggedOut,
        _ => return None,
    })
}

/// The commands of a received `Commands`, and the deliveries that name a body the message does
/// not carry (a peer's bug; they settle as failed).
fn commands_from_proto(batch: proto::Commands) -> (Vec<CometCommand>, Vec<DeliveryId>) {
    let bodies: HashMap<u64, Bytes> = batch.bodies.into_iter().map(|b| (b.id, b.data)).collect();
    let mut orphans = Vec::new();
    let commands = batch
        .commands
        .into_iter()
        .filter_map(|c| match c.body? {
            proto::command::Body::Deliver(d) if d.body_ref == 0 => {
                Some(CometCommand::Deliver(delivery_with_body(d)))
            }
            proto::command::Body::Deliver(d) => match bodies.get(&d.body_ref) {
                Some(body) => Some(CometCommand::Deliver(delivery_from_proto(d, body.clone()))),
                None => {
                    orphans.push(d.id);
                    None
                }
            },
            proto::command::Body::Kick(k) => Some(CometCommand::Kick {
                session: k.session,
                reason: kick_reason(k.reason)?,
            }),
        })
        .collect();
    (commands, orphans)
}

/// Sessions in chunks of about [`BATCH_BYTES`].
fn session_chunks(sessions: &[SessionInfo]) -> Vec<Vec<proto::Session>> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut size = 0;
    for s in sessions {
        let adds = s.uid.len() + s.token.len() + DELIVERY_BYTES;
        if size + adds > BATCH_BYTES && !chunk.is_empty() {
            chunks.push(std::mem::take(&mut chunk));
            size = 0;
        }
        size += adds;
        chunk.push(session_to_proto(s));
    }
    chunks.push(chunk);
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn delivery(id: u64, body: &Bytes) -> CometCommand {
        CometCommand::Deliver(Delivery {
            id,
            session: id,
            kind: DeliveryKind::Push { offline: 0 },
            flag: 0,
            body: body.clone(),
        })
    }

    #[test]
    fn a_broadcast_carries_its_body_once_per_message_and_each_message_stays_small() {
        let next = AtomicU64::new(0);
        let body = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut batcher = Batcher::new(&next);
        for id in 0..50_000 {
            batcher.push(delivery(id, &body));
        }
        let batches = batcher.finish();
        assert!(batches.len() >= 2, "cut by size");
        let mut ids = Vec::new();
        for (batch, _) in &batches {
            let bytes = batch.encoded_len();
            assert!(bytes <= BATCH_BYTES + 64 * 1024, "{bytes} bytes");
            assert_eq!(batch.bodies.len(), 1, "the body once per message");
            let per_delivery = (bytes - 64 * 1024) / batch.commands.len();
            assert!(
                per_delivery < 40,
                "{per_delivery} bytes of link per delivery"
            );
            let (commands, orphans) = commands_from_proto(batch.clone());
            assert!(orphans.is_empty());
            for c in commands {
                let CometCommand::Deliver(d) = c else {
                    panic!("a delivery")
                };
                assert_eq!(d.body, body);
                ids.push(d.id);
            }
        }
        assert_eq!(ids, (0..50_000).collect::<Vec<_>>(), "all, in order");
    }

    #[test]
    fn a_body_bigger_than_a_batch_goes_alone_and_kicks_keep_their_place() {
        let next = AtomicU64::new(0);
        let big = Bytes::from(vec![b'y'; 3 * BATCH_BYTES]);
        let small = Bytes::from_static(b"s");
        let mut batcher = Batcher::new(&next);
        batcher.push(delivery(1, &small));
        batcher.push(delivery(2, &big));
        batcher.push(CometCommand::Kick {
            session: 9,
            reason: KickReason::RepeatLogin,
        });
        batcher.push(delivery(3, &small));
        let batches = batcher.finish();
        let order: Vec<Vec<String>> = batches
            .into_iter()
            .map(|(batch, _)| {
                commands_from_proto(batch)
                    .0
                    .iter()
                    .map(|c| match c {
                        CometCommand::Deliver(d) => format!("d{}", d.id),
                        CometCommand::Kick { session, .. } => format!("k{session}"),
                    })
                    .collect()
            })
            .collect();
        // The big body goes in a message of its own (over the batch size, under the limit);
        // the order of commands is kept across messages.
        assert_eq!(order, [vec!["d1"], vec!["d2", "k9"], vec!["d3"]]);
    }

    #[test]
    fn a_delivery_naming_a_missing_body_is_returned_to_settle() {
        let batch = proto::Commands {
            commands: vec![proto::Command {
                body: Some(proto::command::Body::Deliver(proto::Delivery {
                    id: 77,
                    body_ref: 5,
                    ..Default::default()
                })),
            }],
            bodies: Vec::new(),
        };
        let (commands, orphans) = commands_from_proto(batch);
        assert!(commands.is_empty());
        assert_eq!(orphans, [77]);
    }

    #[test]
    fn many_sessions_go_in_chunks() {
        let sessions: Vec<SessionInfo> = (0..60_000)
            .map(|i| SessionInfo {
                session: i,
                uid: Arc::from(format!("user-{i:08}")),
                term: TermType::Android,
                token: Arc::from("a-login-code"),
            })
            .collect();
        let chunks = session_chunks(&sessions);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 60_000);
        for chunk in &chunks {
            let message = proto::Sessions {
                sessions: chunk.clone(),
            };
            assert!(message.encoded_len() <= BATCH_BYTES + 1024);
        }
        assert_eq!(session_chunks(&[]).len(), 1, "a join without sessions");
    }
}
