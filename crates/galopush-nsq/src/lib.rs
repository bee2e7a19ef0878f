//! A small async NSQ client written from NSQ's TCP protocol V2 and nsqlookupd's HTTP API.
//!
//! - [`Consumer`]: one (topic, channel) subscription over every nsqd that nsqlookupd lists
//!   (polled every `lookup_interval`) plus directly configured nsqd addresses, with
//!   `max_in_flight` spread over the connections, heartbeats, reconnection with back-off and
//!   optional auto-touch of long-held messages.
//! - [`Message`]: a delivered message with fire-and-forget `fin`, `req` and `touch`.
//! - [`Producer`]: publishes to one nsqd (PUB/MPUB), coalescing concurrent publishes for the
//!   same topic into one MPUB.
//! - [`ConnectionConfig`]: what both share per connection, including TLS and AUTH:
//!   - TLS (`tls`, a rustls `ClientConfig`): IDENTIFY asks for `tls_v1` and the connection is
//!     upgraded to TLS over the same TCP connection as soon as nsqd (run with `--tls-cert` and
//!     `--tls-key`, optionally `--tls-required`) agrees; an nsqd that does not agree is an
//!     error, never a plaintext fallback.
//!   - AUTH (`auth_secret`): sent when nsqd's IDENTIFY answer says `auth_required` (nsqd run
//!     with `--auth-http-address`), after the TLS upgrade if any; nsqd's refusals
//!     (`E_AUTH_FAILED`, `E_UNAUTHORIZED`) are [`Error::Nsqd`], a missing secret is
//!     [`Error::AuthRequired`].
//! - [`Backoff`]: the exponential back-off with jitter used here and by the server.
//! - `fake` (cargo feature `fake`): a protocol-level fake nsqd (with TLS, `--tls-required` and
//!   AUTH) and nsqlookupd for tests.
//! - `fuzzing` (cargo feature `fuzzing`): the property the frame decoder's fuzz target checks.
#![forbid(unsafe_code)]

pub mod backoff;
mod config;
mod connection;
mod consumer;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod lookup;
mod message;
mod producer;
mod protocol;
mod transport;

#[cfg(feature = "fake")]
pub mod fake;

pub use backoff::{Backoff, Retries};
pub use config::ConnectionConfig;
pub use consumer::{Consumer, ConsumerConfig};
pub use error::Error;
pub use message::{Message, MessageId};
pub use producer::{Producer, ProducerConfig};
pub use protocol::{is_valid_channel_name, is_valid_topic_name};
