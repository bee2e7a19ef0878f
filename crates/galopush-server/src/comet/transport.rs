//! How a connection's frames cross the wire: binary frames on TCP, or JSON in WebSocket text
//! frames. The session logic is the same for both; this is the seam where a transport can be
//! swapped after measuring.
//!
//! Both keep buffers only while data is in flight: an idle connection holds no read or write
//! buffer of its own. Both take frames up to a size the session sets: small until the terminal
//! has registered, `limits.max_body` after (SPEC §10).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use galopush_protocol::frame::{self, Frame};
use galopush_protocol::message::{Down, Up};
use galopush_protocol::web::{self, WebFraming};
use galopush_protocol::{Encoding, FrameError, WebError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use super::tls_stream::TlsStream;
use super::websocket::{self, FrameReader, Incoming};

/// Why a connection cannot be read on.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("bad web message: {0}")]
    Web(#[from] WebError),
    #[error(transparent)]
    WebSocket(#[from] websocket::FrameError),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("binary websocket frame that is not UTF-8 text")]
    NotText,
    #[error("terminal did not read its messages within comet.write_timeout")]
    Stalled,
    #[error("terminal does not read its messages: more than limits.conn_queue_bytes queued")]
    Slow,
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl TransportError {
    /// Whether the peer sent something it must not (as opposed to the connection failing).
    pub fn is_protocol(&self) -> bool {
        matches!(
            self,
            TransportError::Frame(_)
                | TransportError::Web(_)
                | TransportError::WebSocket(_)
                | TransportError::NotText
        )
    }

    /// Whether the peer sent a frame over the size limit in force.
    pub fn is_too_long(&self) -> bool {
        matches!(
            self,
            TransportError::Frame(FrameError::BodyTooLong { .. })
                | TransportError::WebSocket(websocket::FrameError::TooLong { .. })
        )
    }
}

/// What a terminal sent.
#[derive(Debug)]
pub enum Received {
    Frame(Frame<Up>),
    /// The transport queued an answer of its own (a WebSocket pong): flush.
    Replied,
    /// The terminal closed the connection cleanly.
    Closed,
}

/// A terminal connection's framing.
pub trait Transport: Send {
    /// The next frame from the terminal. Cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<Received, TransportError>> + Send;

    /// Sets the largest frame body (or WebSocket message) taken from now on.
    fn set_max_message(&mut self, max: u32);

    /// Queues a frame; `encoding` is ignored by transports without body encodings.
    fn write(&mut self, encoding: Encoding, tid: u32, message: Down);

    /// Whether frames are queued.
    fn has_pending(&self) -> bool;

    /// Makes room for about this many bytes of frames about to be queued, so that a burst is
    /// written into one allocation; a hint, ignored by transports that format frames otherwise.
    fn reserve(&mut self, _bytes: usize) {}

    /// Writes the queued frames, as far as the socket takes them now: `Ready` once all are
    /// written, `Pending` (with `cx` woken when the socket has room) otherwise. What was not
    /// written stays queued, so a dropped write loses nothing that a later one would not send.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>>;

    /// Whether connections over this transport are ever parked ([`super::idle`]): plain
    /// sockets only.
    const PARKS: bool = false;

    /// Whether the connection can be parked now ([`super::idle`]): over a plain socket, with
    /// nothing read and not yet taken, and nothing to write.
    fn can_park(&self) -> bool {
        false
    }

    /// The socket, out of the runtime's reactor, once [`Transport::can_park`] said so.
    fn into_socket(self) -> io::Result<std::net::TcpStream>
    where
        Self: Sized,
    {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Writes the queued frames.
    fn flush(&mut self) -> impl Future<Output = Result<(), TransportError>> + Send {
        std::future::poll_fn(|cx| self.poll_flush(cx))
    }

    /// Closes the connection politely. By reference, so that waiting for it does not keep a
    /// second copy of the transport in the connection's task.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
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
pub(super) fn read_some<'a, S: AsyncRead + Unpin + Send>(
    stream: &'a mut S,
    read: &'a mut BytesMut,
) -> impl Future<Output = io::Result<usize>> + Send + 'a {
    read_chunk(stream, |chunk| {
        read.extend_from_slice(chunk);
        chunk.len()
    })
}

/// Reads what the socket has (at most [`READ_CHUNK`] bytes) and hands it to `take`; an empty
/// chunk at the end of the stream. As [`read_some`], for a reader that takes part of a chunk
/// without buffering it.
fn read_chunk<'a, S: AsyncRead + Unpin + Send, T>(
    stream: &'a mut S,
    mut take: impl FnMut(&[u8]) -> T + Send + 'a,
) -> impl Future<Output = io::Result<T>> + Send + 'a {
    std::future::poll_fn(move |cx| {
        // Not zeroed first: `ReadBuf` tracks how much the socket filled.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(take(buf.filled()))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// What a binary connection made of a chunk it read.
enum Taken {
    /// The end of the stream.
    End,
    /// A frame read from the chunk itself; what followed it is buffered.
    Frame(Frame<Up>),
    /// The chunk is buffered.
    Buffered,
}

/// Takes a chunk into a binary connection's read buffer. With nothing buffered, a frame at its
/// front that keeps nothing of its bytes (an ack, a PING) is read from the chunk itself, and
/// only what follows it is buffered: a terminal acking one delivery at a time costs no buffer.
fn take_chunk(read: &mut BytesMut, chunk: &[u8], max_body: u32) -> Result<Taken, FrameError> {
    if chunk.is_empty() {
        return Ok(Taken::End);
    }
    if read.is_empty()
        && let Some((frame, len)) = frame::decode_slice::<Up>(chunk, max_body)?
    {
        read.extend_from_slice(&chunk[len..]);
        return Ok(Taken::Frame(frame));
    }
    read.extend_from_slice(chunk);
    Ok(Taken::Buffered)
}

/// Gives a drained read buffer's memory back, so an idle connection holds none. Whatever its
/// capacity: a buffer whose last frame was split off to its end has none left but still holds
/// the allocation the frame came in (the REGISTER's, about 120 bytes of every idle terminal).
fn release_if_empty(read: &mut BytesMut) {
    if read.is_empty() {
        *read = BytesMut::new();
    }
}

/// Writes `out` and flushes the stream (TLS keeps what the socket did not take until flushed),
/// advancing `out` past what the socket took, so that a write the socket cannot take now goes on
/// where it stopped.
fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut impl Buf,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    // Both buffers given here are one contiguous chunk.
    while out.has_remaining() {
        let n = ready!(Pin::new(&mut *stream).poll_write(cx, out.chunk()))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        out.advance(n);
    }
    Pin::new(stream).poll_flush(cx)
}

/// What a connection runs over: a TCP stream, or a TLS stream on one (SPEC §11).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether the connection can be parked ([`super::idle`]): a plain socket, which keeps no
    /// state of its own between frames.
    const PARKS: bool = false;

    /// The socket, out of the runtime's reactor, for a stream that [`Stream::PARKS`].
    fn into_socket(self) -> io::Result<std::net::TcpStream>
    where
        Self: Sized,
    {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl Stream for TcpStream {
    const PARKS: bool = true;

    fn into_socket(self) -> io::Result<std::net::TcpStream> {
        self.into_std()
    }
}

impl<S: Stream> Stream for TlsStream<S> {}

/// Binary frames over TCP (or inside TLS, byte for byte).
pub struct TcpTransport<S = TcpStream> {
    stream: S,
    read: BytesMut,
    /// Frames to write; what the socket took is advanced past.
    write: BytesMut,
    max_body: u32,
}

impl<S: Stream> TcpTransport<S> {
    /// A connection that takes frame bodies of up to `max_body` bytes until told otherwise.
    pub fn new(stream: S, max_body: u32) -> TcpTransport<S> {
        TcpTransport {
            stream,
            read: BytesMut::new(),
            write: BytesMut::new(),
            max_body,
        }
    }
}

impl<S: Stream> Transport for TcpTransport<S> {
    async fn recv(&mut self) -> Result<Received, TransportError> {
        loop {
            if let Some(f) = frame::decode::<Up>(&mut self.read, self.max_body)? {
                release_if_empty(&mut self.read);
                return Ok(Received::Frame(f));
            }
            let (read, max_body) = (&mut self.read, self.max_body);
            match read_chunk(&mut self.stream, |chunk| take_chunk(read, chunk, max_body)).await?? {
                Taken::Frame(f) => return Ok(Received::Frame(f)),
                Taken::End if self.read.is_empty() => return Ok(Received::Closed),
                Taken::End => return Err(TransportError::Truncated),
                Taken::Buffered => {}
            }
        }
    }

    fn set_max_message(&mut self, max: u32) {
        self.max_body = max;
    }

    fn write(&mut self, encoding: Encoding, tid: u32, message: Down) {
        // Down frames have no field that can fail to encode.
        let _ = Frame::new(encoding, tid, message).encode(&mut self.write);
    }

    fn has_pending(&self) -> bool {
        !self.write.is_empty()
    }

    const PARKS: bool = S::PARKS;

    fn can_park(&self) -> bool {
        S::PARKS && self.read.is_empty() && self.write.is_empty()
    }

    fn reserve(&mut self, bytes: usize) {
        self.write.reserve(bytes);
    }

    fn into_socket(self) -> io::Result<std::net::TcpStream> {
        self.stream.into_socket()
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        ready!(write_out(&mut self.stream, &mut self.write, cx))?;
        self.write = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// JSON messages in WebSocket text frames, in the framing the terminal chose with its first
/// frame.
///
/// Down-messages are formatted as frames and written straight to the socket, all that is
/// pending in one write, into a buffer dropped once written.
pub struct WsTransport<S = TcpStream> {
    stream: S,
    read: BytesMut,
    frames: FrameReader,
    framing: Option<WebFraming>,
    pending: Vec<String>,
    /// Pongs and the close reply, formatted, written before anything else.
    replies: Vec<u8>,
    /// Frames being written; what the socket took is advanced past.
    out: io::Cursor<Vec<u8>>,
    /// The terminal closed: the replies end with the answer to its close frame.
    close_replied: bool,
    /// A close frame went out (ours or the reply to the terminal's): nothing more is written.
    closed: bool,
}

impl<S: Stream> WsTransport<S> {
    /// A connection whose handshake is done; `read` holds what the terminal sent after it.
    /// Messages of up to `max_message` bytes are taken until told otherwise.
    pub fn new(stream: S, read: BytesMut, max_message: u32) -> WsTransport<S> {
        WsTransport {
            stream,
            read,
            frames: FrameReader::new(max_message),
            framing: None,
            pending: Vec::new(),
            replies: Vec::new(),
            out: io::Cursor::default(),
            close_replied: false,
            closed: false,
        }
    }
}

impl<S: Stream> Transport for WsTransport<S> {
    async fn recv(&mut self) -> Result<Received, TransportError> {
        loop {
            let incoming = self.frames.next(&mut self.read, &mut self.replies)?;
            match incoming {
                Some(Incoming::Message(payload)) => {
                    release_if_empty(&mut self.read);
                    let text =
                        std::str::from_utf8(&payload).map_err(|_| TransportError::NotText)?;
                    let framing = *self.framing.get_or_insert_with(|| WebFraming::detect(text));
                    let (tid, up) = web::decode_up(text, framing)?;
                    return Ok(Received::Frame(Frame::new(Encoding::None, tid, up)));
                }
                Some(Incoming::Replied) => return Ok(Received::Replied),
                Some(Incoming::Closed) => {
                    // The close reply is the last frame: what is pending is not sent.
                    self.close_replied = true;
                    self.pending.clear();
                    return Ok(Received::Closed);
                }
                None => {}
            }
            match read_some(&mut self.stream, &mut self.read).await? {
                0 if self.read.is_empty() => return Ok(Received::Closed),
                0 => return Err(TransportError::Truncated),
                _ => {}
            }
        }
    }

    fn set_max_message(&mut self, max: u32) {
        self.frames.set_max(max);
    }

    fn write(&mut self, _encoding: Encoding, tid: u32, message: Down) {
        let framing = self.framing.unwrap_or_default();
        self.pending.push(web::encode_down(tid, &message, framing));
    }

    fn has_pending(&self) -> bool {
        !self.pending.is_empty() || !self.replies.is_empty() || self.out.has_remaining()
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        loop {
            if !self.out.has_remaining() {
                if self.replies.is_empty() && self.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let mut out = std::mem::take(&mut self.replies);
                let pending = std::mem::take(&mut self.pending);
                if !self.closed {
                    // A server's frame header is at most 10 bytes (no mask).
                    out.reserve(pending.iter().map(|text| text.len() + 10).sum());
                    for text in pending {
                        websocket::format(
                            WsFrame::message(text, OpCode::Data(Data::Text), true),
                            &mut out,
                        );
                    }
                }
                self.closed |= self.close_replied;
                self.out = io::Cursor::new(out);
            }
            ready!(write_out(&mut self.stream, &mut self.out, cx))?;
            self.out = io::Cursor::default();
        }
    }

    async fn close(&mut self) {
        if !self.closed && !self.close_replied {
            let mut out = Vec::new();
            websocket::close_frame(&mut out);
            let _ = self.stream.write_all(&out).await;
        }
        let _ = self.stream.shutdown().await;
    }
}
