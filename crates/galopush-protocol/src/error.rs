//! Typed errors of the wire format: what was wrong with a frame, a web message or a value to
//! encode.

use crate::message::MessageType;

/// A binary frame that cannot be accepted. The comet closes the connection that sent it.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("message type 0 is not a message")]
    ZeroType,
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("message type {0:?} is not sent in this direction")]
    WrongDirection(MessageType),
    #[error("body length {len} is above the limit of {max} bytes")]
    BodyTooLong { len: u32, max: u32 },
    #[error("{ty:?} body of {len} bytes is shorter than the {need} it needs")]
    BodyTooShort {
        ty: MessageType,
        len: usize,
        need: usize,
    },
    #[error("REGISTER {field} is not valid UTF-8")]
    InvalidText { field: &'static str },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A value that cannot be put on the wire as asked.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("REGISTER {field} is {len} bytes, more than the {max} the field holds")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("body of {0} bytes does not fit a u32 length")]
    BodyTooLong(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A WebSocket text frame that cannot be accepted (SPEC §4).
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("frame is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("frame is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("message lacks the required field `{0}`")]
    MissingEnvelopeField(&'static str),
    #[error("cmd {0} is not a message type")]
    UnknownCmd(u8),
    #[error("cmd {0:?} is not sent in this direction")]
    WrongDirection(MessageType),
    #[error("{cmd:?} message lacks the required field `{field}`")]
    MissingField {
        cmd: MessageType,
        field: &'static str,
    },
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// A bus message that cannot be read (SPEC §7).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("body is neither JSON nor base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("body is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
}
