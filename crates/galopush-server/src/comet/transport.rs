//! How a connection's frames cross the wire: binary frames on TCP, or JSON in WebSocket text
//! frames. The session logic is the same for both; this is the seam where a transport can be
//! swapped after measuring.
//!
//! Both keep buffers only while data is in flight: an idle connection holds no read or write
//! buffer of its own.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use galopush_protocol::frame::{self, Frame};
use galopush_protocol::message::{Down, Up};
use galopush_protocol::web::{self, WebFraming};
use galopush_protocol::{Encoding, FrameError, WebError};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};

/// Why a connection cannot be read on.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("bad web message: {0}")]
    Web(#[from] WebError),
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("binary websocket frame that is not UTF-8 text")]
    NotText,
    #[error("terminal did not read its messages within comet.write_timeout")]
    Stalled,
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl TransportError {
    /// Whether the peer sent something it must not (as opposed to the connection failing).
    pub fn is_protocol(&self) -> bool {
        matches!(
            self,
            TransportError::Frame(_) | TransportError::Web(_) | TransportError::NotText
        ) || matches!(
            self,
            TransportError::WebSocket(tungstenite::Error::Protocol(_))
        ) || matches!(
            self,
            TransportError::WebSocket(tungstenite::Error::Capacity(_))
        )
    }
}

/// A terminal connection's framing.
pub trait Transport: Send {
    /// The next frame from the terminal; `None` when it closed cleanly. Cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Frame<Up>>, TransportError>> + Send;

    /// Queues a frame; `encoding` is ignored by transports without body encodings.
    fn write(&mut self, encoding: Encoding, tid: u32, message: Down);

    /// Whether frames are queued.
    fn has_pending(&self) -> bool;

    /// Writes the queued frames.
    fn flush(&mut self) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Closes the connection politely.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 2048;

/// Reads what the socket has (at most [`READ_CHUNK`] bytes) onto the end of `read`; 0 at the
/// end of the stream.
///
/// The bytes land in a buffer on the stack of one poll, not in the connection's future, so an
/// idle connection keeps none. Reading through `poll_read` (rather than `readable` then
/// `try_read`) lets tokio note a short read as "drained": the next read waits for the socket
/// instead of first trying it and failing with `EAGAIN`, one system call per ack saved.
fn read_some<'a>(
    stream: &'a mut TcpStream,
    read: &'a mut BytesMut,
) -> impl Future<Output = io::Result<usize>> + Send + 'a {
    std::future::poll_fn(move |cx| {
        // Not zeroed first: `ReadBuf` tracks how much the socket filled.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                read.extend_from_slice(buf.filled());
                Poll::Ready(Ok(buf.filled().len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Binary frames over TCP.
pub struct TcpTransport {
    stream: TcpStream,
    read: BytesMut,
    write: BytesMut,
    max_body: u32,
}

impl TcpTransport {
    pub fn new(stream: TcpStream, max_body: u32) -> TcpTransport {
        TcpTransport {
            stream,
            read: BytesMut::new(),
            write: BytesMut::new(),
            max_body,
        }
    }
}

impl Transport for TcpTransport {
    async fn recv(&mut self) -> Result<Option<Frame<Up>>, TransportError> {
        loop {
            if let Some(f) = frame::decode::<Up>(&mut self.read, self.max_body)? {
                if self.read.is_empty() {
                    self.read = BytesMut::new();
                }
                return Ok(Some(f));
            }
            match read_some(&mut self.stream, &mut self.read).await? {
                0 if self.read.is_empty() => return Ok(None),
                0 => return Err(TransportError::Truncated),
                _ => {}
            }
        }
    }

    fn write(&mut self, encoding: Encoding, tid: u32, message: Down) {
        // Down frames have no field that can fail to encode.
        let _ = Frame::new(encoding, tid, message).encode(&mut self.write);
    }

    fn has_pending(&self) -> bool {
        !self.write.is_empty()
    }

    async fn flush(&mut self) -> Result<(), TransportError> {
        self.stream.write_all(&self.write).await?;
        self.write = BytesMut::new();
        Ok(())
    }

    async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// JSON messages in WebSocket text frames, in the framing the terminal chose with its first
/// frame.
///
/// Down-messages are framed with tungstenite's `Frame` and written straight to the socket, all
/// that is pending in one write: tungstenite's own write path either makes a system call per
/// message (`write_buffer_size(0)`, as configured for its control frames) or keeps a buffer of
/// the largest burst for the connection's life, where this one is dropped once written.
pub struct WsTransport {
    ws: WebSocketStream<TcpStream>,
    framing: Option<WebFraming>,
    pending: Vec<String>,
    /// The terminal closed: nothing more is written but tungstenite's close reply.
    closing: bool,
}

impl WsTransport {
    pub fn new(ws: WebSocketStream<TcpStream>) -> WsTransport {
        WsTransport {
            ws,
            framing: None,
            pending: Vec::new(),
            closing: false,
        }
    }
}

impl Transport for WsTransport {
    async fn recv(&mut self) -> Result<Option<Frame<Up>>, TransportError> {
        loop {
            let message = match self.ws.next().await {
                None => {
                    self.closing = true;
                    return Ok(None);
                }
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => {
                    self.closing = true;
                    return Ok(None);
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(m)) => m,
            };
            let text = match &message {
                Message::Text(t) => t.as_str(),
                Message::Binary(b) => {
                    std::str::from_utf8(b).map_err(|_| TransportError::NotText)?
                }
                Message::Close(_) => {
                    self.closing = true;
                    return Ok(None);
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            let framing = *self.framing.get_or_insert_with(|| WebFraming::detect(text));
            let (tid, up) = web::decode_up(text, framing)?;
            return Ok(Some(Frame::new(Encoding::None, tid, up)));
        }
    }

    fn write(&mut self, _encoding: Encoding, tid: u32, message: Down) {
        let framing = self.framing.unwrap_or_default();
        self.pending.push(web::encode_down(tid, &message, framing));
    }

    fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    async fn flush(&mut self) -> Result<(), TransportError> {
        // Whatever tungstenite holds (a pong, the rest of a frame) goes first, whole, so frames
        // never interleave.
        self.ws.flush().await?;
        let pending = std::mem::take(&mut self.pending);
        if self.closing || pending.is_empty() {
            return Ok(());
        }
        // A server's frame header is at most 10 bytes (no mask).
        let mut out = Vec::with_capacity(pending.iter().map(|text| text.len() + 10).sum());
        for text in pending {
            WsFrame::message(text, OpCode::Data(Data::Text), true).format(&mut out)?;
        }
        self.ws.get_mut().write_all(&out).await?;
        Ok(())
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
