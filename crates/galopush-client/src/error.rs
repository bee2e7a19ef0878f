//! What can go wrong for a terminal: the network, TLS, the comet's frames, the dispatcher's
//! answers.

use std::path::PathBuf;
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
    /// An HTTP request failed; the message carries its causes (reqwest keeps the reason, such
    /// as a refused certificate, there).
    #[error("HTTP request failed: {}", with_causes(.0))]
    Http(reqwest::Error),
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
    /// The TLS client could not be set up (e.g. no CA certificate found on the system).
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    /// TLS refused the handshake with the comet at `addr`, e.g. because its certificate is not
    /// signed by a trusted CA or not valid for the name verified.
    #[error("TLS handshake with {addr} failed: {source}")]
    TlsHandshake { addr: String, source: rustls::Error },
    /// The connection to the comet at `addr` broke during the TLS handshake, e.g. because the
    /// listener does not speak TLS and closed it.
    #[error("TLS handshake with {addr} failed: {source}")]
    TlsHandshakeIo {
        addr: String,
        source: std::io::Error,
    },
    /// The name to verify the comet's certificate against is neither a DNS name nor an IP
    /// address.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// The CA file at `path` cannot be used as roots to trust.
    #[error("bad CA file {}: {source}", path.display())]
    CaFile { path: PathBuf, source: CaError },
    /// CA certificates given in memory cannot be used as roots to trust.
    #[error("bad CA certificates: {0}")]
    Ca(CaError),
}

/// Why certificates cannot be used as the roots to trust.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The file cannot be read, or is not PEM.
    #[error(transparent)]
    Pem(rustls_pki_types::pem::Error),
    /// There is no certificate among them.
    #[error("no certificate in it")]
    NoCertificate,
    /// Certificate number `index` (from 0) is not usable as a trust anchor.
    #[error("certificate {index} is not a usable CA certificate: {source}")]
    Certificate { index: usize, source: rustls::Error },
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        ClientError::Http(e)
    }
}

/// `e` followed by each of its causes that says something more, separated by colons.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
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
