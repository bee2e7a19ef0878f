//! The byte stream under a connection to nsqd: plain TCP, or TLS started over that same TCP
//! connection once IDENTIFY negotiated `tls_v1`. The halves are enums rather than trait
//! objects, so the plain path costs one branch per read or write.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::Error;

/// The reading half of a connection.
pub(crate) enum ReadHalf {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS over TCP.
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The writing half of a connection.
pub(crate) enum WriteHalf {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS over TCP.
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

/// Splits a freshly connected TCP stream.
pub(crate) fn plain(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let (read, write) = stream.into_split();
    (ReadHalf::Plain(read), WriteHalf::Plain(write))
}

/// Runs the TLS client handshake over the TCP connection of these (plain) halves, with the
/// host part of `addr` as the server name, and splits the TLS stream.
pub(crate) async fn upgrade(
    read: ReadHalf,
    write: WriteHalf,
    config: Arc<rustls::ClientConfig>,
    addr: &str,
) -> Result<(ReadHalf, WriteHalf), Error> {
    let (ReadHalf::Plain(read), WriteHalf::Plain(write)) = (read, write) else {
        return Err(Error::Protocol(format!(
            "nsqd {addr}: the connection is already TLS"
        )));
    };
    let stream = read
        .reunite(write)
        .map_err(|_| Error::Protocol("the halves of a connection do not match".to_owned()))?;
    let name = server_name(addr)?;
    let tls = TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|error| Error::Tls(format!("handshake with nsqd {addr} failed: {error}")))?;
    let (read, write) = tokio::io::split(tls);
    Ok((ReadHalf::Tls(read), WriteHalf::Tls(write)))
}

/// The TLS server name for an nsqd address: its host part (`host` of `host:port`, the
/// address of `[v6]:port`), a DNS name or an IP address.
pub(crate) fn server_name(addr: &str) -> Result<ServerName<'static>, Error> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|_| {
        Error::Tls(format!(
            "nsqd address {addr}: {host:?} is neither a DNS name nor an IP address"
        ))
    })
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(read) => Pin::new(read).poll_read(cx, buf),
            ReadHalf::Tls(read) => Pin::new(read).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(write) => Pin::new(write).poll_write(cx, buf),
            WriteHalf::Tls(write) => Pin::new(write).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(write) => Pin::new(write).poll_flush(cx),
            WriteHalf::Tls(write) => Pin::new(write).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(write) => Pin::new(write).poll_shutdown(cx),
            WriteHalf::Tls(write) => Pin::new(write).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(addr: &str) -> String {
        match server_name(addr) {
            Ok(name) => name.to_str().into_owned(),
            Err(error) => panic!("{addr}: {error}"),
        }
    }

    #[test]
    fn server_name_is_the_host_part() {
        assert_eq!(name("nsqd.example.com:4150"), "nsqd.example.com");
        assert_eq!(name("localhost:4150"), "localhost");
        assert_eq!(name("127.0.0.1:4150"), "127.0.0.1");
        assert!(matches!(
            server_name("127.0.0.1:4150"),
            Ok(ServerName::IpAddress(_))
        ));
        assert_eq!(name("[::1]:4150"), "::1");
        assert_eq!(name("nsqd"), "nsqd");
        assert!(matches!(server_name("bad host:4150"), Err(Error::Tls(_))));
    }
}
