//! The business message bus (SPEC §7): inbound topics the router applies, outbound topics it
//! publishes. Two kinds: [`embedded`] (HTTP `/pub` into a durable inbox, outbound topics POSTed
//! to a webhook) and [`nsq`] (consumers and a producer on an existing NSQ deployment).

pub mod embedded;
pub mod nsq;
pub mod ticket;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::TopicsConfig;
use crate::store::StoreError;
pub use ticket::{Retire, Ticket};

/// The inbound topics, by meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    UserOnlineState,
    Push,
    Callback,
    MsgDownward,
    SessionTimeout,
}

impl Topic {
    pub const ALL: [Topic; 5] = [
        Topic::UserOnlineState,
        Topic::Push,
        Topic::Callback,
        Topic::MsgDownward,
        Topic::SessionTimeout,
    ];

    /// A short name for logs and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Topic::UserOnlineState => "userOnlineState",
            Topic::Push => "push",
            Topic::Callback => "callback",
            Topic::MsgDownward => "msgDownward",
            Topic::SessionTimeout => "sessionTimeout",
        }
    }

    /// The configured topic name.
    pub fn name(self, topics: &TopicsConfig) -> &str {
        match self {
            Topic::UserOnlineState => &topics.user_online_state,
            Topic::Push => &topics.push,
            Topic::Callback => &topics.callback,
            Topic::MsgDownward => &topics.msg_downward,
            Topic::SessionTimeout => &topics.session_timeout,
        }
    }

    /// The inbound topic with this configured name.
    pub fn from_name(name: &str, topics: &TopicsConfig) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name(topics) == name)
    }
}

/// Opens when the router may start applying inbound messages: at once in standalone; in a
/// cluster, once the comets have had a moment to rejoin a starting router (so it knows where
/// terminals are before it routes to them). Messages arriving before wait.
#[derive(Clone)]
pub struct Gate(tokio::sync::watch::Receiver<bool>);

impl Gate {
    /// A gate that is already open.
    pub fn opened() -> Gate {
        Gate(tokio::sync::watch::channel(true).1)
    }

    /// A closed gate and the way to open it.
    pub fn closed() -> (tokio::sync::watch::Sender<bool>, Gate) {
        let (open, gate) = tokio::sync::watch::channel(false);
        (open, Gate(gate))
    }

    /// Waits until the gate is open (or its opener is gone, which also lets traffic through).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|open| *open).await;
    }
}

/// Why an outbound message was not taken.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// `limits.outbox_pending` outbound messages are waiting already (SPEC §10): the caller
    /// may try again later.
    #[error("the outbox holds {limit} messages not yet sent on (limits.outbox_pending)")]
    Full { limit: usize },
    /// The outbox could not keep the message.
    #[error("outbox: {0}")]
    Store(#[from] StoreError),
    /// nsqd did not take the message.
    #[error("nsqd {address}: {source}")]
    Nsqd {
        address: String,
        source: Arc<galopush_nsq::Error>,
    },
}

/// Where the router sends outbound messages (msgUpward, sessionTimeout answers).
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes raw JSON to `topic`; returns once the bus has it durably. The bus applies its
    /// own body encoding (base64 on NSQ when configured).
    async fn publish(&self, topic: &str, json: Bytes) -> Result<(), PublishError>;

    /// Publishes several messages to `topic`, all or none: returns once the bus has them all
    /// durably. A bus that can write them at once (one outbox write, one MPUB) overrides this.
    async fn publish_many(&self, topic: &str, jsons: Vec<Bytes>) -> Result<(), PublishError> {
        for json in jsons {
            self.publish(topic, json).await?;
        }
        Ok(())
    }
}

/// Why `/pub` or `/mpub` refused a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AcceptError {
    /// Malformed input (HTTP 400).
    #[error("{0}")]
    Malformed(String),
    /// `limits.inbox_pending` messages are accepted and not yet retired (HTTP 503 with
    /// `Retry-After`); nothing of the request was taken.
    #[error("the inbox is full ({limit} messages, limits.inbox_pending)")]
    Full { limit: usize },
    /// More messages in one request than the inbox ever holds (HTTP 413).
    #[error("more messages than the inbox holds ({limit}, limits.inbox_pending)")]
    TooMany { limit: usize },
    /// Could not be made durable (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
}

/// What `/pub` and `/mpub` hand messages to.
#[async_trait]
pub trait Intake: Send + Sync + 'static {
    /// Takes messages for `topic`; returns once all are durable, or takes none.
    async fn accept(&self, topic: &str, bodies: Vec<Bytes>) -> Result<(), AcceptError>;
}
