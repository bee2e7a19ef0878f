//! A terminal's TLS connection (SPEC §11) that holds no buffer while the terminal is idle.
//!
//! tokio-rustls over rustls's buffered connection keeps a 4 KiB read buffer per connection for
//! its life (rustls's deframer never lets it go below one read's worth), which made an idle TLS
//! terminal cost ~14 KB of server memory against ~1.6 KB for plain TCP. This stream drives
//! rustls's unbuffered connection instead and keeps its own buffers — ciphertext not yet a
//! whole record, plaintext not yet read, ciphertext not yet written — only while they hold
//! something, like the comet's plain transports. It implements `AsyncRead` and `AsyncWrite`,
//! so the TCP and WebSocket transports run over it unchanged.
//!
//! Writes keep backpressure: a write is taken only once what an earlier one left unwritten is
//! out, so a terminal that does not read stalls its writer as over plain TCP.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Ciphertext read from the socket at a time.
const READ_CHUNK: usize = 4096;
/// Room for a record's header, content type and tag, per started 16 KiB of plaintext.
const RECORD_OVERHEAD: usize = 64;
const MAX_RECORD: usize = 16 * 1024;

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// Why rustls did not write into the room it was given.
enum Short {
    /// More room: this much.
    Needs(InsufficientSizeError),
    Failed(String),
}

impl From<EncodeError> for Short {
    fn from(e: EncodeError) -> Short {
        match e {
            EncodeError::InsufficientSize(size) => Short::Needs(size),
            e => Short::Failed(format!("{e:?}")),
        }
    }
}

impl From<EncryptError> for Short {
    fn from(e: EncryptError) -> Short {
        match e {
            EncryptError::InsufficientSize(size) => Short::Needs(size),
            e => Short::Failed(format!("{e:?}")),
        }
    }
}

/// Appends what `fill` writes to `out`, giving it `room` bytes at first and then what it asks
/// for.
fn append(
    out: &mut Vec<u8>,
    mut room: usize,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, Short>,
) -> io::Result<()> {
    let start = out.len();
    loop {
        out.resize(start + room, 0);
        match fill(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Short::Needs(InsufficientSizeError { required_size })) => room = required_size,
            Err(Short::Failed(why)) => {
                out.truncate(start);
                return Err(tls_error(why));
            }
        }
    }
}

/// Where the connection stands after its records were processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// The handshake needs more from the peer.
    NeedInput,
    /// Application data may be written; more may come from the peer.
    Open,
    /// Both sides closed.
    Closed,
}

/// A server-side TLS stream over `S`.
pub struct TlsStream<S> {
    io: S,
    conn: UnbufferedServerConnection,
    /// Ciphertext read and not processed yet (the start of a record).
    incoming: Vec<u8>,
    /// Plaintext decrypted and not read yet.
    plain: BytesMut,
    /// Ciphertext not written yet, from `written` on.
    outgoing: Vec<u8>,
    written: usize,
    /// The peer sent close_notify: no more data comes.
    peer_closed: bool,
    /// Our close_notify is queued.
    close_queued: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Runs the server's side of the handshake on `io`.
    pub async fn accept(io: S, config: Arc<ServerConfig>) -> io::Result<TlsStream<S>> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut stream = TlsStream {
            io,
            conn,
            incoming: Vec::new(),
            plain: BytesMut::new(),
            outgoing: Vec::new(),
            written: 0,
            peer_closed: false,
            close_queued: false,
        };
        loop {
            let progress = stream.process(None)?;
            std::future::poll_fn(|cx| stream.poll_write_out(cx)).await?;
            match progress {
                Progress::Open => return Ok(stream),
                Progress::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS: closed during the handshake",
                    ));
                }
                Progress::NeedInput => {
                    if std::future::poll_fn(|cx| stream.poll_read_in(cx)).await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "TLS: closed during the handshake",
                        ));
                    }
                }
            }
        }
    }
}

impl<S> TlsStream<S> {
    /// Processes the ciphertext read so far: plaintext goes to `plain`, handshake records to
    /// `outgoing`; with `data`, it is encrypted to `outgoing` once writing is allowed.
    fn process(&mut self, mut data: Option<&[u8]>) -> io::Result<Progress> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let progress = match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        self.plain.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(&mut self.outgoing, 1024, |room| {
                        encode.encode(room).map_err(Short::from)
                    })?;
                    None
                }
                // What was encoded is in `outgoing`, written before anything encrypted later.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    if let Some(plaintext) = data.take() {
                        let records = plaintext.len() / MAX_RECORD + 1;
                        let room = plaintext.len() + records * RECORD_OVERHEAD;
                        append(&mut self.outgoing, room, |room| {
                            traffic.encrypt(plaintext, room).map_err(Short::from)
                        })?;
                    }
                    Some(Progress::Open)
                }
                ConnectionState::BlockedHandshake => Some(Progress::NeedInput),
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::Closed => Some(Progress::Closed),
                // Early data is not enabled, nor anything newer.
                _ => return Err(tls_error("unexpected connection state")),
            };
            if discard > 0 {
                self.incoming.drain(..discard);
                if self.incoming.is_empty() {
                    self.incoming = Vec::new();
                }
            }
            if let Some(progress) = progress {
                return Ok(progress);
            }
        }
    }

    /// Queues close_notify.
    fn close_notify(&mut self) -> io::Result<()> {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::WriteTraffic(mut traffic)) = state {
            append(&mut self.outgoing, RECORD_OVERHEAD, |room| {
                traffic.queue_close_notify(room).map_err(Short::from)
            })?;
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Reads some ciphertext onto `incoming`; 0 at the end of the stream.
    fn poll_read_in(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // Read onto the stack of this poll: an idle connection keeps no read buffer.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        self.incoming.extend_from_slice(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    }

    /// Writes what `outgoing` holds; ready once all of it is out.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.written = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = buf.remaining().min(this.plain.len());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                if this.plain.is_empty() {
                    this.plain = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed || this.process(None)? == Progress::Closed {
                return Poll::Ready(Ok(()));
            }
            if !this.plain.is_empty() || this.peer_closed {
                continue;
            }
            // Handshake records the processing produced (tickets, key updates, alerts) go out
            // as the socket takes them; reading goes on meanwhile.
            if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                return Poll::Ready(Err(e));
            }
            if ready!(this.poll_read_in(cx))? == 0 {
                // The peer hung up without close_notify: the end of the stream all the same.
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What an earlier write left goes first: no new data is taken until it is out.
        ready!(this.poll_write_out(cx))?;
        match this.process(Some(data))? {
            Progress::Open => {}
            Progress::NeedInput => {
                return Poll::Ready(Err(io::Error::other("TLS: handshake not complete")));
            }
            Progress::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
        // As much as the socket takes now; the rest waits for the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            this.close_notify()?;
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server configuration with a self-signed certificate for `localhost`, and a client
    /// configuration trusting it.
    fn configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let der = CertificateDer::from(cert.der().to_vec());
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = crate::tls::provider();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], private)
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A server stream and a tokio-rustls client over an in-memory pipe of `pipe` bytes.
    async fn pair(
        pipe: usize,
    ) -> (
        TlsStream<tokio::io::DuplexStream>,
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
    ) {
        let (server_io, client_io) = tokio::io::duplex(pipe);
        let (server_config, client_config) = configs();
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let name = ServerName::try_from("localhost").expect("name");
        let (server, client) = tokio::join!(
            TlsStream::accept(server_io, server_config),
            connector.connect(name, client_io)
        );
        (
            server.expect("server handshake"),
            client.expect("client handshake"),
        )
    }

    #[tokio::test]
    async fn a_megabyte_each_way_through_a_small_pipe() {
        let (mut server, mut client) = pair(1500).await;
        let data: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let (sent, received) = tokio::join!(
            async {
                client.write_all(&data).await.expect("client writes");
                client.flush().await.expect("client flushes");
                let mut back = vec![0; data.len()];
                client.read_exact(&mut back).await.expect("client reads");
                back
            },
            async {
                let mut got = vec![0; expected.len()];
                server.read_exact(&mut got).await.expect("server reads");
                server.write_all(&got).await.expect("server writes");
                server.flush().await.expect("server flushes");
                got
            }
        );
        assert_eq!(received, expected);
        assert_eq!(sent, expected);
        // Idle again: no buffer of its own left.
        assert_eq!(
            (
                server.incoming.capacity(),
                server.plain.capacity(),
                server.outgoing.capacity()
            ),
            (0, 0, 0)
        );
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_both_ways() {
        let (mut server, mut client) = pair(4096).await;
        client.write_all(b"last words").await.expect("write");
        client.shutdown().await.expect("client close_notify");
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read to the end");
        assert_eq!(got, b"last words");
        server.shutdown().await.expect("server close_notify");
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .await
            .expect("client sees the end");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn garbage_instead_of_a_handshake_is_an_error() {
        let (server_io, mut client_io) = tokio::io::duplex(4096);
        let (server_config, _) = configs();
        client_io
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        drop(client_io);
        assert!(TlsStream::accept(server_io, server_config).await.is_err());
    }
}
