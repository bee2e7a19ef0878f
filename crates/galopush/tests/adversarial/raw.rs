//! Raw sockets for attacks the SDK would never send: hand-made frames and HTTP requests,
//! connections from many loopback source addresses, and waiting for the server to hang up.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use galopush_protocol::frame::{self, Frame};
use galopush_protocol::message::{Down, Register, Up};
use galopush_protocol::{Encoding, TermType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A loopback source address for the `i`-th client connection, spread over 127.0.0.2–201 so
/// that no source runs out of ephemeral ports.
pub fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 200) as u8))
}

/// Connects to `addr` from `from`, with a receive buffer of `rcvbuf` bytes when given (a
/// terminal that reads nothing should not hide megabytes in its own kernel buffer).
pub async fn connect(addr: &str, from: Option<IpAddr>, rcvbuf: Option<u32>) -> TcpStream {
    let addr: SocketAddr = addr.parse().expect("host:port");
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).expect("bind source");
    }
    socket.connect(addr).await.expect("connect")
}

/// Whether the server closes `stream` (end of stream or reset) within `wait`; what it sends
/// meanwhile is read and dropped.
pub async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(wait, read_to_end).await.is_ok()
}

/// A binary frame as bytes.
pub fn frame(tid: u32, up: Up) -> Vec<u8> {
    let mut out = BytesMut::new();
    Frame::new(Encoding::None, tid, up)
        .encode(&mut out)
        .expect("encodable frame");
    out.to_vec()
}

/// A REGISTER frame.
pub fn register(uid: &str, token: &str, term: TermType) -> Vec<u8> {
    frame(
        1,
        Up::Register(Register {
            version: 1,
            term_type: term.bit(),
            id: uid.to_owned(),
            token: token.to_owned(),
        }),
    )
}

/// Reads frames from the comet until `n` have arrived (or the connection ends).
pub async fn read_downs(stream: &mut TcpStream, buf: &mut BytesMut, n: usize) -> Vec<(u32, Down)> {
    let mut out = Vec::new();
    while out.len() < n {
        match frame::decode::<Down>(buf, u32::MAX).expect("a valid down frame") {
            Some(f) => out.push((f.tid, f.message)),
            None => {
                let read = tokio::time::timeout(Duration::from_secs(15), stream.read_buf(buf))
                    .await
                    .expect("a frame in time");
                if matches!(read, Ok(0) | Err(_)) {
                    break;
                }
            }
        }
    }
    out
}

/// Sends `request` on a fresh connection and reads the answer's status line and headers (the
/// body is not read). `None` if the server hung up without answering.
pub async fn http_head(addr: &str, request: &[u8]) -> Option<(u16, String)> {
    let mut stream = connect(addr, None, None).await;
    // The server may answer and hang up before the request is written whole.
    let _ = stream.write_all(request).await;
    read_head(&mut stream).await
}

/// Reads an HTTP answer's status and headers from `stream`.
pub async fn read_head(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("an answer or a hang-up in time");
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.to_ascii_lowercase()))
}
