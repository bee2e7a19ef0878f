//! One TCP connection to nsqd: dialing, the magic and IDENTIFY handshake (with feature
//! negotiation), the TLS upgrade and AUTH when negotiated, buffered command writing and frame
//! reading.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::config::ConnectionConfig;
use crate::error::Error;
use crate::protocol::{Command, Frame, FrameDecoder, MAGIC_V2, OK, Secret};
use crate::transport::{self, ReadHalf, WriteHalf};

/// nsqd's default `--msg-timeout`, used when IDENTIFY was answered without negotiation.
const DEFAULT_MSG_TIMEOUT: Duration = Duration::from_secs(60);
/// nsqd's default `--max-rdy-count`.
const DEFAULT_MAX_RDY_COUNT: u64 = 2500;

/// The IDENTIFY body.
#[derive(Debug, Serialize)]
struct Identify<'a> {
    client_id: &'a str,
    hostname: &'a str,
    user_agent: &'a str,
    heartbeat_interval: i64,
    feature_negotiation: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg_timeout: Option<u64>,
    /// Asks nsqd to upgrade the connection to TLS right after answering.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tls_v1: bool,
}

/// The parts of nsqd's feature-negotiation answer to IDENTIFY that this client uses (others,
/// such as `deflate` and `snappy`, are never asked for and so are ignored).
#[derive(Debug, Default, Deserialize)]
struct IdentifyResponse {
    #[serde(default)]
    max_rdy_count: i64,
    #[serde(default)]
    version: String,
    #[serde(default)]
    msg_timeout: u64,
    #[serde(default)]
    tls_v1: bool,
    #[serde(default)]
    auth_required: bool,
}

/// nsqd's answer to a successful AUTH (what its auth server said about the secret).
#[derive(Debug, Deserialize)]
struct AuthResponse {
    #[serde(default)]
    identity: String,
    #[serde(default)]
    identity_url: String,
    #[serde(default)]
    permission_count: i64,
}

/// What nsqd agreed to for this connection.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    /// How long nsqd waits for FIN/REQ/TOUCH before redelivering a message.
    pub(crate) msg_timeout: Duration,
    /// The largest RDY count nsqd accepts.
    pub(crate) max_rdy_count: u64,
    /// nsqd's version, when it said.
    pub(crate) version: String,
    /// Whether the connection was upgraded to TLS.
    pub(crate) tls: bool,
    /// The identity nsqd's auth server gave the secret, when AUTH was required.
    pub(crate) identity: Option<String>,
}

/// An identified connection to nsqd.
pub(crate) struct Connection {
    pub(crate) addr: Arc<str>,
    pub(crate) negotiated: Negotiated,
    reader: FramedRead<ReadHalf, FrameDecoder>,
    writer: WriteHalf,
    out: BytesMut,
    io_timeout: Duration,
    last_read: Instant,
}

impl Connection {
    /// Connects to `addr`, sends the magic and IDENTIFY, reads nsqd's answer, upgrades to TLS
    /// and sends AUTH when negotiated, all within `config.connect_timeout`.
    pub(crate) async fn open(
        addr: Arc<str>,
        config: &ConnectionConfig,
        msg_timeout: Option<Duration>,
    ) -> Result<Connection, Error> {
        let timeout = config.connect_timeout;
        match tokio::time::timeout(
            timeout,
            Connection::handshake(addr.clone(), config, msg_timeout),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(format!(
                "connecting to nsqd {addr} and identifying took more than {timeout:?}"
            ))),
        }
    }

    async fn handshake(
        addr: Arc<str>,
        config: &ConnectionConfig,
        msg_timeout: Option<Duration>,
    ) -> Result<Connection, Error> {
        let stream = TcpStream::connect(&*addr)
            .await
            .map_err(|source| Error::Connect {
                addr: addr.to_string(),
                source,
            })?;
        stream.set_nodelay(true)?;
        let (read, writer) = transport::plain(stream);
        let mut conn = Connection {
            addr,
            negotiated: Negotiated {
                msg_timeout: DEFAULT_MSG_TIMEOUT,
                max_rdy_count: DEFAULT_MAX_RDY_COUNT,
                version: String::new(),
                tls: false,
                identity: None,
            },
            reader: FramedRead::new(read, FrameDecoder::new(config.max_frame_size)),
            writer,
            out: BytesMut::with_capacity(4096),
            io_timeout: config.read_timeout(),
            last_read: Instant::now(),
        };
        let identify = Identify {
            client_id: &config.client_id,
            hostname: &config.hostname,
            user_agent: &config.user_agent,
            heartbeat_interval: i64::try_from(config.heartbeat_interval.as_millis())
                .unwrap_or(i64::MAX),
            feature_negotiation: true,
            msg_timeout: msg_timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            tls_v1: config.tls.is_some(),
        };
        let body = serde_json::to_vec(&identify)
            .map_err(|e| Error::Protocol(format!("cannot encode IDENTIFY: {e}")))?;
        conn.out.extend_from_slice(MAGIC_V2);
        let answer = conn.request(Command::Identify(&body)).await?;
        // An nsqd that does not negotiate features answers OK, as if every feature was off.
        let response = if answer.as_ref() == OK {
            IdentifyResponse::default()
        } else {
            serde_json::from_slice(&answer).map_err(|e| {
                Error::Protocol(format!(
                    "unexpected IDENTIFY answer {:?}: {e}",
                    String::from_utf8_lossy(&answer)
                ))
            })?
        };
        if response.msg_timeout > 0 {
            conn.negotiated.msg_timeout = Duration::from_millis(response.msg_timeout);
        }
        if let Ok(max) = u64::try_from(response.max_rdy_count)
            && max > 0
        {
            conn.negotiated.max_rdy_count = max;
        }
        conn.negotiated.version = response.version;
        if let Some(tls) = &config.tls {
            if !response.tls_v1 {
                return Err(Error::Tls(format!(
                    "nsqd {} did not agree to TLS (tls_v1 is false in its IDENTIFY answer; \
                     does it run with --tls-cert and --tls-key?)",
                    conn.addr
                )));
            }
            conn = conn.upgrade_tls(tls.clone(), config.max_frame_size).await?;
        }
        if response.auth_required {
            let Some(secret) = &config.auth_secret else {
                return Err(Error::AuthRequired(conn.addr.to_string()));
            };
            conn.auth(secret).await?;
        }
        Ok(conn)
    }

    /// Upgrades to TLS as nsqd does right after answering IDENTIFY with `tls_v1`: the client
    /// handshake over the same TCP connection, then nsqd's `OK` over TLS.
    async fn upgrade_tls(
        self,
        config: Arc<rustls::ClientConfig>,
        max_frame_size: u32,
    ) -> Result<Connection, Error> {
        let Connection {
            addr,
            mut negotiated,
            reader,
            writer,
            out,
            io_timeout,
            last_read,
        } = self;
        // nsqd sends nothing between its IDENTIFY answer and the handshake; bytes here could
        // only be lost.
        if !reader.read_buffer().is_empty() {
            return Err(Error::Protocol(format!(
                "nsqd {addr} sent data between its IDENTIFY answer and the TLS handshake"
            )));
        }
        let (read, writer) = transport::upgrade(reader.into_inner(), writer, config, &addr).await?;
        negotiated.tls = true;
        let mut conn = Connection {
            addr,
            negotiated,
            reader: FramedRead::new(read, FrameDecoder::new(max_frame_size)),
            writer,
            out,
            io_timeout,
            last_read,
        };
        let answer = conn.answer("the TLS upgrade").await?;
        if answer.as_ref() != OK {
            return Err(Error::Protocol(format!(
                "unexpected answer to the TLS upgrade: {:?}",
                String::from_utf8_lossy(&answer)
            )));
        }
        tracing::debug!(nsqd = %conn.addr, "connection upgraded to TLS");
        Ok(conn)
    }

    /// Sends AUTH with `secret` and records the identity nsqd's auth server gave it. An
    /// error frame (`E_AUTH_FAILED`, `E_UNAUTHORIZED`, ...) is returned as [`Error::Nsqd`].
    async fn auth(&mut self, secret: &str) -> Result<(), Error> {
        let answer = self
            .request(Command::Auth(Secret(secret.as_bytes())))
            .await?;
        let response: AuthResponse = serde_json::from_slice(&answer).map_err(|e| {
            Error::Protocol(format!(
                "unexpected AUTH answer {:?}: {e}",
                String::from_utf8_lossy(&answer)
            ))
        })?;
        tracing::debug!(
            nsqd = %self.addr,
            identity = %response.identity,
            identity_url = %response.identity_url,
            permission_count = response.permission_count,
            "authenticated"
        );
        self.negotiated.identity = Some(response.identity);
        Ok(())
    }

    /// Sends `command` and waits for its answer, replying to heartbeats meanwhile: the data of
    /// the response frame, or the error frame as [`Error::Nsqd`]. For the handshake only
    /// (IDENTIFY, SUB), when no other command is outstanding.
    pub(crate) async fn request(&mut self, command: Command<'_>) -> Result<Bytes, Error> {
        self.queue(&command)?;
        self.flush().await?;
        self.answer(&format!("{command:?}")).await
    }

    /// Waits for the answer to `what`, replying to heartbeats meanwhile: the data of the
    /// response frame, or the error frame as [`Error::Nsqd`].
    async fn answer(&mut self, what: &str) -> Result<Bytes, Error> {
        loop {
            match self.next_frame().await? {
                frame if frame.is_heartbeat() => {
                    self.queue(&Command::Nop)?;
                    self.flush().await?;
                }
                Frame::Response(data) => return Ok(data),
                Frame::Error(data) => return Err(Error::from_error_frame(&data)),
                Frame::Message(_) => {
                    return Err(Error::Protocol(format!(
                        "message frame while waiting for the answer to {what}"
                    )));
                }
            }
        }
    }

    /// Appends a command to the output buffer (sent by [`Connection::flush`]).
    pub(crate) fn queue(&mut self, command: &Command<'_>) -> Result<(), Error> {
        command.encode(&mut self.out)
    }

    /// Whether commands are waiting in the output buffer.
    pub(crate) fn has_queued(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes the output buffer to the socket (through TLS, whose records are flushed too).
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.writer.write_all(&self.out).await?;
            self.writer.flush().await
        };
        match tokio::time::timeout(self.io_timeout, write).await {
            Ok(Ok(())) => {
                self.out.clear();
                Ok(())
            }
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(Error::Timeout(format!(
                "writing to nsqd {} took more than {:?}",
                self.addr, self.io_timeout
            ))),
        }
    }

    /// The next frame from nsqd; an error if nothing arrived for two heartbeat intervals
    /// since the previous frame. Cancel-safe.
    pub(crate) async fn next_frame(&mut self) -> Result<Frame, Error> {
        let deadline = self.last_read + self.io_timeout;
        match tokio::time::timeout_at(deadline, self.reader.next()).await {
            Ok(Some(frame)) => {
                self.last_read = Instant::now();
                frame
            }
            Ok(None) => Err(Error::Disconnected(format!(
                "nsqd {} closed the connection",
                self.addr
            ))),
            Err(_) => Err(Error::Timeout(format!(
                "nothing from nsqd {} for {:?} (missed heartbeats)",
                self.addr, self.io_timeout
            ))),
        }
    }

    /// Sends what is queued and closes the connection.
    pub(crate) async fn close(mut self) {
        if let Err(error) = self.flush().await {
            tracing::debug!(nsqd = %self.addr, %error, "flush before close failed");
        }
        // Ignored: the peer may already have gone; the socket is dropped either way.
        let _ = self.writer.shutdown().await;
    }
}
