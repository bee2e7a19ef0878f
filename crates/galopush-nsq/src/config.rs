//! Settings shared by consumer and producer connections: how the client identifies itself,
//! TLS and AUTH, heartbeats, timeouts and reconnection back-off.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

/// How a connection to nsqd is opened, secured, identified and kept alive.
///
/// `Debug` shows whether an `auth_secret` is set, never the secret.
#[derive(Clone)]
pub struct ConnectionConfig {
    /// `client_id` sent in IDENTIFY (nsqd shows it in its stats). Default: the short host name.
    pub client_id: String,
    /// `hostname` sent in IDENTIFY. Default: the host name.
    pub hostname: String,
    /// `user_agent` sent in IDENTIFY. Default: `galopush-nsq/<version>`.
    pub user_agent: String,
    /// How often nsqd sends a heartbeat (`heartbeat_interval`). Real nsqd accepts
    /// 1 s ..= `--max-heartbeat-interval` (60 s by default). A connection on which nothing
    /// arrives for two intervals is considered dead. Default: 30 s.
    pub heartbeat_interval: Duration,
    /// Upper bound for connecting plus the IDENTIFY (and SUB) handshake. Default: 5 s.
    pub connect_timeout: Duration,
    /// First reconnection delay after a failure; doubles on each further failure, with
    /// jitter, and resets after a successful connection. Default: 100 ms.
    pub backoff_initial: Duration,
    /// The longest reconnection delay. Default: 10 s.
    pub backoff_max: Duration,
    /// Frames announcing more than this many bytes are treated as garbage and the connection
    /// is dropped. Must exceed nsqd's `--max-msg-size` plus 30 bytes. Default: 16 MiB.
    pub max_frame_size: u32,
    /// TLS for the connection: `None` is plain TCP. When set, IDENTIFY asks for `tls_v1` and
    /// the connection is upgraded to TLS right after nsqd's answer, with this configuration
    /// and the host part of the nsqd address as the server name (a host name or an IP
    /// address, which the certificate must name). nsqd must run with `--tls-cert` and
    /// `--tls-key`; one that does not agree to TLS is an [`Error::Tls`], never a plaintext
    /// fallback. Default: `None`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The secret sent with AUTH when nsqd requires it (nsqd runs with
    /// `--auth-http-address`, which checks the secret). Not sent to an nsqd that does not
    /// require AUTH; without it, an nsqd that does is an [`Error::AuthRequired`]. Use it
    /// with `tls`, or the secret crosses the network in clear. Default: `None`.
    pub auth_secret: Option<String>,
}

impl fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field("client_id", &self.client_id)
            .field("hostname", &self.hostname)
            .field("user_agent", &self.user_agent)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("max_frame_size", &self.max_frame_size)
            .field("tls", &self.tls.is_some())
            .field(
                "auth_secret",
                &self.auth_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Default for ConnectionConfig {
    fn default() -> ConnectionConfig {
        let hostname = local_hostname();
        ConnectionConfig {
            client_id: hostname.split('.').next().unwrap_or("galopush").to_owned(),
            hostname,
            user_agent: concat!("galopush-nsq/", env!("CARGO_PKG_VERSION")).to_owned(),
            heartbeat_interval: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_frame_size: 16 * 1024 * 1024,
            tls: None,
            auth_secret: None,
        }
    }
}

impl ConnectionConfig {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.heartbeat_interval.as_millis() == 0 {
            return Err(Error::Config(
                "heartbeat_interval must be at least 1 ms".to_owned(),
            ));
        }
        if i64::try_from(self.heartbeat_interval.as_millis()).is_err() {
            return Err(Error::Config("heartbeat_interval is too large".to_owned()));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::Config("connect_timeout must not be zero".to_owned()));
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return Err(Error::Config(
                "backoff_initial must be non-zero and not above backoff_max".to_owned(),
            ));
        }
        if self.max_frame_size < 64 {
            return Err(Error::Config(
                "max_frame_size must be at least 64 bytes".to_owned(),
            ));
        }
        if self
            .auth_secret
            .as_ref()
            .is_some_and(|secret| secret.is_empty() || i32::try_from(secret.len()).is_err())
        {
            return Err(Error::Config(
                "auth_secret must be non-empty (nsqd refuses an empty AUTH body) and under 2 GiB"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// How long a connection may stay silent before it is considered dead: nsqd sends a
    /// heartbeat every interval, so two missed ones (plus a little slack) mean trouble.
    pub(crate) fn read_timeout(&self) -> Duration {
        self.heartbeat_interval * 2 + Duration::from_millis(500)
    }
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = ConnectionConfig::default();
        assert!(config.validate().is_ok());
        assert!(config.user_agent.starts_with("galopush-nsq/"));
        assert!(!config.client_id.is_empty());
        assert!(!config.client_id.contains('.'));
    }

    #[test]
    fn rejects_unusable_settings() {
        let zero_heartbeat = ConnectionConfig {
            heartbeat_interval: Duration::ZERO,
            ..ConnectionConfig::default()
        };
        assert!(zero_heartbeat.validate().is_err());
        let inverted_backoff = ConnectionConfig {
            backoff_initial: Duration::from_secs(20),
            ..ConnectionConfig::default()
        };
        assert!(inverted_backoff.validate().is_err());
        let empty_secret = ConnectionConfig {
            auth_secret: Some(String::new()),
            ..ConnectionConfig::default()
        };
        assert!(empty_secret.validate().is_err());
    }

    #[test]
    fn debug_hides_the_auth_secret() {
        let config = ConnectionConfig {
            auth_secret: Some("hunter2".to_owned()),
            ..ConnectionConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
