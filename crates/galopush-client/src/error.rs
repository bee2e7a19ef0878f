//! What can go wrong for a terminal: the network, the comet's frames, the dispatcher's answers.

use std::time::Duration;

use galopush_protocol::{EncodeError, FrameError, WebError};

/// The result of every fallible SDK call.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Why a terminal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("network I/O failed: {0}")]
    Io(std::io::Error),
    #[error("cannot resolve {0} to an address to connect to")]
    NoAddress(String),
    #[error("the comet sent a frame that cannot be decoded: {0}")]
    Frame(FrameError),
    #[error("cannot encode the frame: {0}")]
    Encode(EncodeError),
    #[error("the comet sent a WebSocket message that cannot be decoded: {0}")]
    Web(#[from] WebError),
    #[error("WebSocket failed: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("no comet is available (the dispatcher answered 503)")]
    NoComet,
    #[error("no answer from the comet within {0:?}")]
    Timeout(Duration),
    #[error("the comet closed the connection before answering")]
    Closed,
    #[error("registration refused with REGRESP code {0}")]
    Rejected(u8),
    #[error("{0} is only possible on a WebSocket terminal")]
    WebOnly(&'static str),
    #[error("unexpected: {0}")]
    Unexpected(String),
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// A failed read from the socket is an I/O error, anything else a bad frame.
impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(io) => ClientError::Io(io),
            other => ClientError::Frame(other),
        }
    }
}

/// A failed write to the socket is an I/O error, anything else a value that does not fit.
impl From<EncodeError> for ClientError {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::Io(io) => ClientError::Io(io),
            other => ClientError::Encode(other),
        }
    }
}
