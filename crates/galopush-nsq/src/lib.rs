//! A small async NSQ client written from NSQ's TCP protocol V2 and nsqlookupd's HTTP API.
//!
//! - [`Consumer`]: one (topic, channel) subscription over every nsqd that nsqlookupd lists
//!   (polled every `lookup_interval`) plus directly configured nsqd addresses, with
//!   `max_in_flight` spread over the connections, heartbeats, reconnection with back-off and
//!   optional auto-touch of long-held messages.
//! - [`Message`]: a delivered message with fire-and-forget `fin`, `req` and `touch`.
//! - [`Producer`]: publishes to one nsqd (PUB/MPUB), coalescing concurrent publishes for the
//!   same topic into one MPUB.
//! - `fake` (cargo feature `fake`): a protocol-level fake nsqd and nsqlookupd for tests.
#![forbid(unsafe_code)]

mod backoff;
mod config;
mod connection;
mod consumer;
mod error;
mod lookup;
mod message;
mod producer;
mod protocol;

#[cfg(feature = "fake")]
pub mod fake;

pub use config::ConnectionConfig;
pub use consumer::{Consumer, ConsumerConfig};
pub use error::Error;
pub use message::{Message, MessageId};
pub use producer::{Producer, ProducerConfig};
pub use protocol::{is_valid_channel_name, is_valid_topic_name};
