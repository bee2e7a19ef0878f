//! One terminal's connection to a comet, over the binary TCP protocol (SPEC §3) or WebSocket
//! (SPEC §4), either plain or inside TLS, with the request/answer exchanges a terminal runs:
//! REGISTER, PING, IM and acks.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use galopush_protocol::message::Register;
use galopush_protocol::web::{self, WebFraming};
use galopush_protocol::{ClientCodec, Down, Encoding, Frame, TermType, Up};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::codec::Framed;

use crate::error::{ClientError, Result};
use crate::tls::Tls;

/// REGISTER protocol version this SDK speaks.
const REGISTER_VERSION: u8 = 1;
/// Code of an ack (PUSHRESP, CBRESP, IMRESP, KICKRESP): received.
const ACK_OK: u8 = 0;
/// Path of the comet's WebSocket listener.
const WS_PATH: &str = "/ws";
/// WebSocket read buffer, allocated up front: terminal messages are small, and the bench opens
/// thousands of connections.
const WS_READ_BUFFER: usize = 4 * 1024;
/// WebSocket write buffer: none, every message is written at once.
const WS_WRITE_BUFFER: usize = 0;

/// How a terminal talks to the comet. Either can run inside TLS ([`Terminal::connect_tls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Binary frames on TCP, every up-frame's body in `encoding`; inside TLS, the same bytes.
    Tcp { encoding: Encoding },
    /// JSON messages on WebSocket (path `/ws`), in `framing`; inside TLS, WSS.
    Web { framing: WebFraming },
}

/// One connection to a comet.
///
/// Frames that arrive while [`Terminal::register`] or [`Terminal::ping`] wait for their answer
/// are kept, in order, and returned by [`Terminal::recv`] before anything read later. Dropping
/// a `register` or `ping` future before it completes may lose its answer; `recv` is
/// cancel-safe.
#[derive(Debug)]
pub struct Terminal {
    link: Link,
    local_addr: SocketAddr,
    queued: VecDeque<(u32, Down)>,
    next_tid: u32,
}

/// The connection itself, by transport.
#[derive(Debug)]
enum Link {
    Tcp {
        frames: Framed<Stream, ClientCodec>,
        encoding: Encoding,
    },
    Web {
        socket: Box<WebSocketStream<Stream>>,
        framing: WebFraming,
    },
}

/// The bytes under a link: a TCP connection, or TLS on one. The TLS state is boxed so that a
/// plain terminal stays as small as before; each read or write costs one branch, no
/// allocation and no dynamic dispatch.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Terminal {
    /// Connects to the comet at `addr` (`host:port`; for Web, the WebSocket listener's).
    pub async fn connect(addr: &str, transport: Transport) -> Result<Terminal> {
        Terminal::connect_from(addr, transport, None).await
    }

    /// Connects to the comet at `addr`, from `local_ip` when given (the socket is bound to it
    /// on an ephemeral port first).
    pub async fn connect_from(
        addr: &str,
        transport: Transport,
        local_ip: Option<IpAddr>,
    ) -> Result<Terminal> {
        let stream = connect_tcp(addr, local_ip).await?;
        stream.set_nodelay(true)?;
        let local_addr = stream.local_addr()?;
        Terminal::start(addr, transport, Stream::Plain(stream), local_addr).await
    }

    /// Connects to the comet's TLS listener at `addr` (`host:port`), from `local_ip` when given:
    /// for [`Transport::Tcp`] the binary frames go inside TLS unchanged, for [`Transport::Web`]
    /// the WebSocket handshake goes over TLS (`wss://addr/ws`).
    ///
    /// The comet's certificate is verified as `tls` says: against its roots, for the host part
    /// of `addr` unless [`Tls::with_server_name`] names another. A certificate that does not
    /// pass fails with [`ClientError::TlsHandshake`].
    pub async fn connect_tls(
        addr: &str,
        transport: Transport,
        tls: &Tls,
        local_ip: Option<IpAddr>,
    ) -> Result<Terminal> {
        let server_name = tls.server_name_for(addr)?;
        let stream = connect_tcp(addr, local_ip).await?;
        stream.set_nodelay(true)?;
        let local_addr = stream.local_addr()?;
        let stream = tls.handshake(addr, server_name, stream).await?;
        Terminal::start(addr, transport, Stream::Tls(Box::new(stream)), local_addr).await
    }

    /// Starts the session on the connection to `addr`: the WebSocket handshake for Web.
    async fn start(
        addr: &str,
        transport: Transport,
        stream: Stream,
        local_addr: SocketAddr,
    ) -> Result<Terminal> {
        let link = match transport {
            Transport::Tcp { encoding } => Link::Tcp {
                frames: Framed::new(stream, ClientCodec::default()),
                encoding,
            },
            Transport::Web { framing } => {
                let scheme = match stream {
                    Stream::Plain(_) => "ws",
                    Stream::Tls(_) => "wss",
                };
                let config = WebSocketConfig::default()
                    .read_buffer_size(WS_READ_BUFFER)
                    .write_buffer_size(WS_WRITE_BUFFER);
                let (socket, _response) = tokio_tungstenite::client_async_with_config(
                    format!("{scheme}://{addr}{WS_PATH}"),
                    stream,
                    Some(config),
                )
                .await?;
                Link::Web {
                    socket: Box::new(socket),
                    framing,
                }
            }
        };
        Ok(Terminal {
            link,
            local_addr,
            queued: VecDeque::new(),
            next_tid: fastrand::u32(..),
        })
    }

    /// The local address of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A TID not used yet by this terminal, for an up-message that starts a transaction.
    pub fn fresh_tid(&mut self) -> u32 {
        let tid = self.next_tid;
        self.next_tid = self.next_tid.wrapping_add(1);
        tid
    }

    /// Sends one message with transaction id `tid`.
    pub async fn send(&mut self, tid: u32, up: Up) -> Result<()> {
        self.feed(tid, up).await?;
        self.flush().await
    }

    /// Queues one message with transaction id `tid` without writing it out yet (it may be
    /// written if the queue is full); [`Terminal::flush`] writes what is queued. Many messages
    /// in one write cost the comet one read instead of one each.
    pub async fn feed(&mut self, tid: u32, up: Up) -> Result<()> {
        match &mut self.link {
            Link::Tcp { frames, encoding } => frames.feed(Frame::new(*encoding, tid, up)).await?,
            Link::Web { socket, framing } => {
                let text = web::encode_up(tid, &up, *framing);
                socket.feed(Message::text(text)).await?;
            }
        }
        Ok(())
    }

    /// Writes out everything [`Terminal::feed`] queued.
    pub async fn flush(&mut self) -> Result<()> {
        match &mut self.link {
            Link::Tcp { frames, .. } => SinkExt::<Frame<Up>>::flush(frames).await?,
            Link::Web { socket, .. } => socket.flush().await?,
        }
        Ok(())
    }

    /// The next message from the comet with its TID: first those kept while waiting for an
    /// answer, then what arrives. `None` when the comet closed the connection cleanly.
    ///
    /// Cancel-safe: a message is never lost when the future is dropped.
    pub async fn recv(&mut self) -> Result<Option<(u32, Down)>> {
        if let Some(queued) = self.queued.pop_front() {
            return Ok(Some(queued));
        }
        self.link.recv().await
    }

    /// The next message if it can be had without waiting: one kept while waiting for an answer,
    /// or one already read off the connection. `None` when the terminal would have to wait.
    pub fn try_recv(&mut self) -> Option<Result<Option<(u32, Down)>>> {
        if let Some(queued) = self.queued.pop_front() {
            return Some(Ok(Some(queued)));
        }
        self.link.recv().now_or_never()
    }

    /// [`Terminal::recv`], giving up with [`ClientError::Timeout`] after `wait`.
    pub async fn recv_timeout(&mut self, wait: Duration) -> Result<Option<(u32, Down)>> {
        tokio::time::timeout(wait, self.recv())
            .await
            .map_err(|_| ClientError::Timeout(wait))?
    }

    /// Registers as terminal `id` of type `term` with `token`, and returns the REGRESP code
    /// (0 ok, 3 authentication failed).
    ///
    /// Other messages arriving before the REGRESP are kept for [`Terminal::recv`].
    pub async fn register(&mut self, id: &str, token: &str, term: TermType) -> Result<u8> {
        let tid = self.fresh_tid();
        let register = Register {
            version: REGISTER_VERSION,
            term_type: term.bit(),
            id: id.to_owned(),
            token: token.to_owned(),
        };
        self.send(tid, Up::Register(register)).await?;
        self.await_answer(tid, "REGRESP", |down| match down {
            Down::RegResp { code } => Some(*code),
            _ => None,
        })
        .await
    }

    /// Sends a PING and returns the code of the PONG (0 registered, 1 not registered).
    ///
    /// Other messages arriving before the PONG are kept for [`Terminal::recv`].
    pub async fn ping(&mut self) -> Result<u8> {
        let tid = self.fresh_tid();
        self.send(tid, Up::Ping).await?;
        self.await_answer(tid, "PONG", |down| match down {
            Down::Pong { code } => Some(*code),
            _ => None,
        })
        .await
    }

    /// Sends an IM and returns its TID; the comet answers with an IMRESP of that TID, which
    /// [`Terminal::recv`] returns.
    pub async fn send_im(&mut self, body: Bytes) -> Result<u32> {
        let tid = self.fresh_tid();
        self.send(tid, Up::Im { msg: body }).await?;
        Ok(tid)
    }

    /// Acknowledges a down-message received with `tid`: PUSH with PUSHRESP 0, CALLBACK with
    /// CBRESP 0, IM with IMRESP 0, KICK with KICKRESP 0. Answers (REGRESP, PONG, IMRESP) need
    /// no ack, and nothing is sent for them.
    pub async fn ack(&mut self, tid: u32, down: &Down) -> Result<()> {
        self.feed_ack(tid, down).await?;
        self.flush().await
    }

    /// [`Terminal::ack`] without writing the ack out yet: [`Terminal::flush`] does.
    pub async fn feed_ack(&mut self, tid: u32, down: &Down) -> Result<()> {
        let ack = match down {
            Down::Push { .. } => Up::PushResp { code: ACK_OK },
            Down::Callback { .. } => Up::CbResp { code: ACK_OK },
            Down::Im { .. } => Up::ImResp { code: ACK_OK },
            Down::Kick { .. } => Up::KickResp { code: ACK_OK },
            Down::RegResp { .. } | Down::Pong { .. } | Down::ImResp { .. } => return Ok(()),
        };
        self.feed(tid, ack).await
    }

    /// Sends bytes as they are, to test the comet's handling of bad input: on TCP straight on
    /// the socket; on WebSocket as a text message when they are UTF-8, else a binary one.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.link {
            Link::Tcp { frames, .. } => {
                let stream = frames.get_mut();
                stream.write_all(bytes).await?;
                stream.flush().await?;
            }
            Link::Web { socket, .. } => {
                let message = match std::str::from_utf8(bytes) {
                    Ok(text) => Message::text(text),
                    Err(_) => Message::binary(Bytes::copy_from_slice(bytes)),
                };
                socket.send(message).await?;
            }
        }
        Ok(())
    }

    /// Sends `text` as one WebSocket text message, whatever it holds (WebSocket only).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        match &mut self.link {
            Link::Tcp { .. } => Err(ClientError::WebOnly("send_text")),
            Link::Web { socket, .. } => Ok(socket.send(Message::text(text)).await?),
        }
    }

    /// Closes the connection: a TCP shutdown, or a WebSocket close message.
    pub async fn close(self) -> Result<()> {
        match self.link {
            Link::Tcp { mut frames, .. } => Ok(SinkExt::<Frame<Up>>::close(&mut frames).await?),
            Link::Web { mut socket, .. } => match socket.as_mut().close(None).await {
                Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Ok(()),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Reads until the answer to the request sent with `tid` (recognised by `answer`, which
    /// returns its code), keeping everything else for [`Terminal::recv`].
    async fn await_answer(
        &mut self,
        tid: u32,
        name: &str,
        answer: impl Fn(&Down) -> Option<u8>,
    ) -> Result<u8> {
        loop {
            let Some((got, down)) = self.link.recv().await? else {
                return Err(ClientError::Closed);
            };
            match answer(&down) {
                Some(code) if got == tid => return Ok(code),
                Some(_) => {
                    return Err(ClientError::Unexpected(format!(
                        "the comet answered {name} with tid {got} to a request with tid {tid}"
                    )));
                }
                None => self.queued.push_back((got, down)),
            }
        }
    }
}

impl Link {
    /// The next message read from the connection; `None` on a clean close.
    async fn recv(&mut self) -> Result<Option<(u32, Down)>> {
        match self {
            Link::Tcp { frames, .. } => match frames.next().await {
                None => Ok(None),
                Some(frame) => {
                    let frame = frame?;
                    Ok(Some((frame.tid, frame.message)))
                }
            },
            Link::Web { socket, framing } => loop {
                match socket.next().await {
                    None | Some(Err(tungstenite::Error::ConnectionClosed)) => return Ok(None),
                    Some(Ok(Message::Close(_))) => {
                        // Completes the close handshake by writing the queued close reply. The
                        // session is over either way, so a failure to write it changes nothing.
                        let _ = socket.flush().await;
                        return Ok(None);
                    }
                    Some(Ok(Message::Text(text))) => {
                        return Ok(Some(web::decode_down(text.as_str(), *framing)?));
                    }
                    Some(Ok(Message::Binary(data))) => {
                        return Err(ClientError::Unexpected(format!(
                            "the comet sent a binary WebSocket message of {} bytes",
                            data.len()
                        )));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Err(e)) => return Err(e.into()),
                }
            },
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A TCP connection to `addr`, bound to `local_ip` first when given; tries each address
/// `addr` resolves to (of `local_ip`'s family) until one accepts. Public for the bench, whose
/// MQTT terminals spread over source addresses the same way.
pub async fn connect_tcp(addr: &str, local_ip: Option<IpAddr>) -> Result<TcpStream> {
    let mut last_error = None;
    for target in tokio::net::lookup_host(addr).await? {
        if local_ip.is_some_and(|ip| ip.is_ipv4() != target.is_ipv4()) {
            continue;
        }
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = local_ip {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) => e.into(),
        None => ClientError::NoAddress(addr.to_owned()),
    })
}
