//! The router ↔ comet link over gRPC (tonic), for a cluster.
//!
//! One bidirectional stream per (comet, router): the comet opens it with `Join` and the
//! sessions it holds; then register/opened/IM requests (with ids the replies echo), closes and
//! settles go up, deliveries and kicks come down. Consecutive settles and consecutive command
//! batches are merged into one message each. Both sides send a heartbeat every
//! [`HEARTBEAT`]; a side that hears nothing for [`SILENCE`] takes the other as gone: the router
//! forgets the comet's sessions and stores what it had not settled, the comet reconnects with
//! back-off and re-reports its sessions.

pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("galopush.link.v1");
}

pub mod comet_side;
pub mod router_side;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_protocol::message::KickReason;

use super::{CometCommand, Delivery, DeliveryKind, SessionInfo};

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

fn delivery_to_proto(d: Delivery) -> proto::Delivery {
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
        body: d.body.to_vec(),
    }
}

fn delivery_from_proto(d: proto::Delivery) -> Delivery {
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
        body: Bytes::from(d.body),
    }
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

fn commands_to_proto(commands: Vec<CometCommand>) -> Vec<proto::Command> {
    commands
        .into_iter()
        .map(|c| proto::Command {
            body: Some(match c {
                CometCommand::Deliver(d) => proto::command::Body::Deliver(delivery_to_proto(d)),
                CometCommand::Kick { session, reason } => proto::command::Body::Kick(proto::Kick {
                    session,
                    reason: reason as u32,
                }),
            }),
        })
        .collect()
}

fn commands_from_proto(commands: Vec<proto::Command>) -> Vec<CometCommand> {
    commands
        .into_iter()
        .filter_map(|c| match c.body? {
            proto::command::Body::Deliver(d) => Some(CometCommand::Deliver(delivery_from_proto(d))),
            proto::command::Body::Kick(k) => Some(CometCommand::Kick {
                session: k.session,
                reason: kick_reason(k.reason)?,
            }),
        })
        .collect()
}
