//! One TCP connection to nsqd: dialing, the magic and IDENTIFY handshake (with feature
//! negotiation), buffered command writing and frame reading.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::config::ConnectionConfig;
use crate::error::Error;
use crate::protocol::{Command, Frame, FrameDecoder, MAGIC_V2, OK};

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
}

/// The parts of nsqd's feature-negotiation answer to IDENTIFY that this client uses.
#[derive(Debug, Deserialize)]
struct IdentifyResponse {
    #[serde(default)]
    max_rdy_count: i64,
    #[serde(default)]
    version: String,
    #[serde(default)]
    msg_timeout: u64,
    #[serde(default)]
    auth_required: bool,
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
}

/// An identified connection to nsqd.
pub(crate) struct Connection {
    pub(crate) addr: Arc<str>,
    pub(crate) negotiated: Negotiated,
    reader: FramedRead<OwnedReadHalf, FrameDecoder>,
    writer: OwnedWriteHalf,
    out: BytesMut,
    io_timeout: Duration,
    last_read: Instant,
}

impl Connection {
    /// Connects to `addr`, sends the magic and IDENTIFY, and reads nsqd's answer, all within
    /// `config.connect_timeout`.
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
        let (read, writer) = stream.into_split();
        let mut conn = Connection {
            addr,
            negotiated: Negotiated {
                msg_timeout: DEFAULT_MSG_TIMEOUT,
                max_rdy_count: DEFAULT_MAX_RDY_COUNT,
                version: String::new(),
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
        };
        let body = serde_json::to_vec(&identify)
            .map_err(|e| Error::Protocol(format!("cannot encode IDENTIFY: {e}")))?;
        conn.out.extend_from_slice(MAGIC_V2);
        let answer = conn.request(Command::Identify(&body)).await?;
        if answer.as_ref() != OK {
            let response: IdentifyResponse = serde_json::from_slice(&answer).map_err(|e| {
                Error::Protocol(format!(
                    "unexpected IDENTIFY answer {:?}: {e}",
                    String::from_utf8_lossy(&answer)
                ))
            })?;
            if response.auth_required {
                return Err(Error::AuthRequired(conn.addr.to_string()));
            }
            if response.msg_timeout > 0 {
                conn.negotiated.msg_timeout = Duration::from_millis(response.msg_timeout);
            }
            if let Ok(max) = u64::try_from(response.max_rdy_count)
                && max > 0
            {
                conn.negotiated.max_rdy_count = max;
            }
            conn.negotiated.version = response.version;
        }
        Ok(conn)
    }

    /// Sends `command` and waits for its answer, replying to heartbeats meanwhile: the data of
    /// the response frame, or the error frame as [`Error::Nsqd`]. For the handshake only
    /// (IDENTIFY, SUB), when no other command is outstanding.
    pub(crate) async fn request(&mut self, command: Command<'_>) -> Result<Bytes, Error> {
        self.queue(&command)?;
        self.flush().await?;
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
                        "message frame while waiting for the answer to {command:?}"
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

    /// Writes the output buffer to the socket.
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.io_timeout, self.writer.write_all(&self.out)).await {
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
