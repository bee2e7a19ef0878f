//! The crate's error type, returned at the edges (configuration, publishing, lookups).

use std::io;

/// What went wrong talking to nsqd or nsqlookupd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A topic name nsqd would reject (1–64 chars of `[.a-zA-Z0-9_-]`, optional `#ephemeral`).
    #[error("invalid NSQ topic name {0:?}")]
    InvalidTopic(String),
    /// A channel name nsqd would reject (same rule as topics).
    #[error("invalid NSQ channel name {0:?}")]
    InvalidChannel(String),
    /// nsqd rejects empty message bodies (`E_BAD_MESSAGE`), so they are refused before sending.
    #[error("empty message body: nsqd rejects it")]
    EmptyBody,
    /// A message or MPUB body does not fit the protocol's 32-bit size field.
    #[error("message body of {0} bytes is too large for the NSQ protocol")]
    BodyTooLarge(usize),
    /// The configuration cannot work (no address, zero interval, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Could not open a TCP connection to nsqd.
    #[error("cannot connect to nsqd {addr}: {source}")]
    Connect {
        /// The nsqd TCP address.
        addr: String,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// An I/O error on an established connection.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// Something did not happen in time (connect, handshake, response).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The peer sent something that is not valid NSQ protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// nsqd answered with an error frame, e.g. `E_PUB_FAILED`.
    #[error("nsqd error {code}: {description}")]
    Nsqd {
        /// The error code, e.g. `E_PUB_FAILED`.
        code: String,
        /// The rest of the error frame.
        description: String,
    },
    /// nsqd requires AUTH (it runs with `--auth-http-address`) and no
    /// [`auth_secret`](crate::ConnectionConfig::auth_secret) is configured. Holds the nsqd
    /// address.
    #[error("nsqd {0} requires AUTH and no auth_secret is configured")]
    AuthRequired(String),
    /// TLS could not be set up with nsqd: it did not agree to `tls_v1` (it runs without
    /// `--tls-cert`/`--tls-key`), the server name is unusable, or the handshake failed (e.g.
    /// the certificate is not trusted).
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection went away before nsqd answered.
    #[error("connection to nsqd lost before it answered: {0}")]
    Disconnected(String),
    /// nsqd could not be reached for this publish (the connection attempt failed).
    #[error("nsqd unavailable: {0}")]
    Unavailable(String),
    /// An nsqlookupd query failed.
    #[error("nsqlookupd {addr}: {reason}")]
    Lookup {
        /// The nsqlookupd HTTP address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The producer's background task has stopped (the runtime is shutting down).
    #[error("the producer has stopped")]
    Closed,
}

impl Error {
    /// Builds [`Error::Nsqd`] from the text of an error frame (`"E_XXX description"`).
    pub(crate) fn from_error_frame(data: &[u8]) -> Error {
        let text = String::from_utf8_lossy(data);
        let (code, description) = match text.split_once(' ') {
            Some((code, rest)) => (code.to_owned(), rest.to_owned()),
            None => (text.into_owned(), String::new()),
        };
        Error::Nsqd { code, description }
    }

    /// The nsqd error code when this is an error frame from nsqd.
    pub fn nsqd_code(&self) -> Option<&str> {
        match self {
            Error::Nsqd { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Whether nsqd closes the connection after sending this error code. Only the failures of
/// FIN, REQ and TOUCH (an id that is not in flight on the connection) leave it open.
pub(crate) fn is_fatal_error_code(code: &str) -> bool {
    !matches!(code, "E_FIN_FAILED" | "E_REQ_FAILED" | "E_TOUCH_FAILED")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_frame_splits_code_and_description() {
        let error = Error::from_error_frame(b"E_PUB_FAILED PUB failed exiting");
        assert_eq!(error.nsqd_code(), Some("E_PUB_FAILED"));
        assert_eq!(
            error.to_string(),
            "nsqd error E_PUB_FAILED: PUB failed exiting"
        );
        let bare = Error::from_error_frame(b"E_INVALID");
        assert_eq!(bare.nsqd_code(), Some("E_INVALID"));
    }

    #[test]
    fn only_fin_req_touch_failures_are_not_fatal() {
        assert!(!is_fatal_error_code("E_FIN_FAILED"));
        assert!(!is_fatal_error_code("E_REQ_FAILED"));
        assert!(!is_fatal_error_code("E_TOUCH_FAILED"));
        for code in [
            "E_INVALID",
            "E_BAD_TOPIC",
            "E_BAD_CHANNEL",
            "E_BAD_BODY",
            "E_BAD_MESSAGE",
            "E_PUB_FAILED",
            "E_MPUB_FAILED",
            "E_AUTH_FIRST",
            "E_AUTH_FAILED",
            "E_UNAUTHORIZED",
        ] {
            assert!(is_fatal_error_code(code), "{code}");
        }
    }
}
