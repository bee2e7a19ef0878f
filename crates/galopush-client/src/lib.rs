//! The galopush terminal SDK: what a device does to reach the push gateway.
//!
//! - [`dispatch()`] / [`Dispatcher`]: ask the router's HTTP dispatcher which comet to use
//!   (SPEC §8) and, for demos, log a user in through the embedded bus.
//! - [`Terminal`]: one connection to a comet, over the binary TCP protocol (SPEC §3) in any of
//!   the four body encodings, or over WebSocket (SPEC §4) in either framing.
//! - [`shell`]: the logic of the `galopush client` command.
//!
//! Used by the server's tests, the bench tool and `galopush client`.
#![forbid(unsafe_code)]

pub mod dispatch;
pub mod error;
pub mod shell;
pub mod terminal;

pub use dispatch::{BusinessApi, Dispatcher, dispatch, dispatch_get};
pub use error::{ClientError, Result};
pub use terminal::{Terminal, Transport};

pub use galopush_protocol::web::WebFraming;
pub use galopush_protocol::{Down, Encoding, TermType, Up};
