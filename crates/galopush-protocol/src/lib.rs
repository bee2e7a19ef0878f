//! The galopush wire format, with no I/O of its own.
//!
//! - [`encoding`]: the four body encodings of the binary protocol (SPEC §3).
//! - [`frame`] and [`message`]: the binary frames and the twelve message types, split by
//!   direction ([`Up`] is what terminals send, [`Down`] what the comet sends).
//! - [`codec`]: a `tokio_util::codec` Decoder/Encoder for a TCP stream of frames.
//! - [`web`]: the WebSocket JSON messages, in the compatible (base64 + ring-xor) and plain framings
//!   (SPEC §4).
//! - [`bus`]: the business messages on the bus, raw or base64 JSON (SPEC §7).
//! - [`term`]: terminal types and termtype masks (SPEC §2).
//! - `fuzzing` (cargo feature `fuzzing`): the properties the fuzz targets in `fuzz/` check.
#![forbid(unsafe_code)]

pub mod bus;
pub mod codec;
pub mod encoding;
pub mod error;
pub mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod message;
pub mod term;
pub mod web;

pub use codec::{ClientCodec, FrameCodec, ServerCodec};
pub use encoding::Encoding;
pub use error::{BusError, EncodeError, FrameError, WebError};
pub use frame::Frame;
pub use message::{Down, MessageType, Register, Up};
pub use term::{TermMask, TermType};

/// Default cap on a frame's body length (SPEC §9 `limits.max_body`).
pub const DEFAULT_MAX_BODY: u32 = 1024 * 1024;
