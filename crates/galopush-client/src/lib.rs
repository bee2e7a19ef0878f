//! The galopush terminal SDK: what a device does to reach the push gateway.
//!
//! - [`dispatch()`] / [`Dispatcher`]: ask the router's HTTP dispatcher which comet to use
//!   (SPEC §8) and, for demos, log a user in through the embedded bus.
//! - [`Terminal`]: one connection to a comet, over the binary TCP protocol (SPEC §3) in any of
//!   the four body encodings, or over WebSocket (SPEC §4) in either framing; either one plain
//!   or inside TLS ([`Terminal::connect_tls`]).
//! - [`Trust`] and [`Tls`]: which certificates to trust (the system's roots or a CA file), for
//!   the comet's TLS and WSS listeners and for `https://` dispatchers and APIs.
//! - [`shell`]: the logic of the `galopush client` command.
//!
//! Used by the server's tests, the bench tool and `galopush client`.
#![forbid(unsafe_code)]

pub mod dispatch;
pub mod error;
pub mod shell;
pub mod terminal;
pub mod tls;

pub use dispatch::{BusinessApi, Dispatcher, dispatch, dispatch_get};
pub use error::{CaError, ClientError, Result};
pub use terminal::{Terminal, Transport};
pub use tls::{Tls, Trust};

pub use galopush_protocol::web::WebFraming;
pub use galopush_protocol::{Down, Encoding, TermType, Up};
