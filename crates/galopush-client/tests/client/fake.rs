//! Fakes of the server side for the SDK's tests: a comet on TCP and on WebSocket, each driven
//! step by step by the test, and an HTTP responder that answers each connection in turn; each
//! either plain or inside TLS.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use galopush_client::{Down, Encoding, Up, WebFraming};
use galopush_protocol::message::Register;
use galopush_protocol::web;
use galopush_protocol::{Frame, ServerCodec};
use rustls::HandshakeKind;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use tokio_util::codec::Framed;

/// Upper bound on any wait in these tests; reaching it means the test failed, not that
/// something was slow.
pub const BOUND: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test if it takes longer than [`BOUND`].
pub async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {BOUND:?}"))
}

async fn listen() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

fn addr_of(listener: &TcpListener) -> String {
    listener.local_addr().expect("local addr").to_string()
}

/// The bytes a fake serves on: TCP, or TLS on TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One accepted connection.
struct Accepted {
    stream: Box<dyn Io>,
    peer: SocketAddr,
    /// Whether its TLS handshake was full or resumed; `None` on plain TCP.
    handshake: Option<HandshakeKind>,
}

/// Accepts one connection on `listener`, with the TLS handshake when `tls` is given.
async fn accept_on(listener: &TcpListener, tls: Option<&TlsAcceptor>) -> Accepted {
    let (stream, peer) = bounded("accept", listener.accept()).await.expect("accept");
    match tls {
        Some(acceptor) => {
            let stream = bounded("TLS handshake", acceptor.accept(stream))
                .await
                .expect("TLS handshake");
            Accepted {
                handshake: stream.get_ref().1.handshake_kind(),
                stream: Box::new(stream),
                peer,
            }
        }
        None => Accepted {
            stream: Box::new(stream),
            peer,
            handshake: None,
        },
    }
}

/// A TLS listener that accepts one connection and returns why its handshake failed (the
/// client refused the certificate).
pub async fn tls_refuser(acceptor: TlsAcceptor) -> (String, JoinHandle<std::io::Error>) {
    let listener = listen().await;
    let addr = addr_of(&listener);
    let task = tokio::spawn(async move {
        let (stream, _) = bounded("accept", listener.accept()).await.expect("accept");
        match bounded("TLS handshake", acceptor.accept(stream)).await {
            Ok(_) => panic!("the client accepted the certificate"),
            Err(e) => e,
        }
    });
    (addr, task)
}

/// A comet's binary TCP listener, or its TLS listener.
pub struct TcpComet {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl TcpComet {
    pub async fn bind() -> TcpComet {
        TcpComet {
            listener: listen().await,
            tls: None,
        }
    }

    /// A TLS listener carrying the binary protocol, with `acceptor`'s certificate.
    pub async fn bind_tls(acceptor: TlsAcceptor) -> TcpComet {
        TcpComet {
            listener: listen().await,
            tls: Some(acceptor),
        }
    }

    pub fn addr(&self) -> String {
        addr_of(&self.listener)
    }

    pub async fn accept(&self) -> TcpConn {
        let accepted = accept_on(&self.listener, self.tls.as_ref()).await;
        TcpConn {
            frames: Framed::new(accepted.stream, ServerCodec::default()),
            peer: accepted.peer,
            handshake: accepted.handshake,
        }
    }

    /// Accepts a terminal, reads its REGISTER and answers REGRESP 0; returns the connection,
    /// the REGISTER body and the encoding it came in.
    pub async fn accept_registered(&self) -> (TcpConn, Register, Encoding) {
        let mut conn = self.accept().await;
        let frame = conn.next().await;
        let Up::Register(register) = frame.message else {
            panic!("expected REGISTER, got {:?}", frame.message);
        };
        conn.send(frame.encoding, frame.tid, Down::RegResp { code: 0 })
            .await;
        (conn, register, frame.encoding)
    }
}

/// One terminal's connection, seen from the comet.
pub struct TcpConn {
    frames: Framed<Box<dyn Io>, ServerCodec>,
    pub peer: SocketAddr,
    /// Whether the TLS handshake was full or resumed; `None` on plain TCP.
    pub handshake: Option<HandshakeKind>,
}

impl TcpConn {
    pub async fn next(&mut self) -> Frame<Up> {
        bounded("read a frame", self.frames.next())
            .await
            .expect("the terminal closed the connection")
            .expect("a valid frame")
    }

    pub async fn send(&mut self, encoding: Encoding, tid: u32, down: Down) {
        self.frames
            .send(Frame::new(encoding, tid, down))
            .await
            .expect("write a frame");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let stream = self.frames.get_mut();
        stream.write_all(bytes).await.expect("write bytes");
        stream.flush().await.expect("flush");
    }
}

/// A comet's WebSocket listener, or its WSS listener.
pub struct WebComet {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl WebComet {
    pub async fn bind() -> WebComet {
        WebComet {
            listener: listen().await,
            tls: None,
        }
    }

    /// A WSS listener (WebSocket over TLS), with `acceptor`'s certificate.
    pub async fn bind_tls(acceptor: TlsAcceptor) -> WebComet {
        WebComet {
            listener: listen().await,
            tls: Some(acceptor),
        }
    }

    pub fn addr(&self) -> String {
        addr_of(&self.listener)
    }

    /// Accepts a WebSocket terminal, noting the path it asked for.
    pub async fn accept(&self) -> WebConn {
        let stream = accept_on(&self.listener, self.tls.as_ref()).await.stream;
        let mut path = String::new();
        let socket = tokio_tungstenite::accept_hdr_async(stream, NotePath(&mut path))
            .await
            .expect("WebSocket handshake");
        WebConn {
            socket,
            path,
            framing: None,
        }
    }
}

/// A handshake callback that notes the path of the request and accepts it.
struct NotePath<'a>(&'a mut String);

impl Callback for NotePath<'_> {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        *self.0 = request.uri().path().to_owned();
        Ok(response)
    }
}

/// One WebSocket terminal, seen from the comet; the framing is detected from its first text.
pub struct WebConn {
    socket: WebSocketStream<Box<dyn Io>>,
    pub path: String,
    pub framing: Option<WebFraming>,
}

impl WebConn {
    pub async fn next_message(&mut self) -> Message {
        bounded("read a WebSocket message", self.socket.next())
            .await
            .expect("the terminal closed the connection")
            .expect("a valid WebSocket message")
    }

    pub async fn next_text(&mut self) -> String {
        match self.next_message().await {
            Message::Text(text) => text.as_str().to_owned(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The next message, decoded in the connection's framing.
    pub async fn next(&mut self) -> (u32, Up) {
        let text = self.next_text().await;
        let framing = *self.framing.get_or_insert(WebFraming::detect(&text));
        web::decode_up(&text, framing).expect("a valid up-message")
    }

    pub async fn send(&mut self, tid: u32, down: &Down) {
        let framing = self.framing.expect("framing known from a first message");
        self.socket
            .send(Message::text(web::encode_down(tid, down, framing)))
            .await
            .expect("write a WebSocket message");
    }

    /// Closes with a close handshake, as the comet does.
    pub async fn close(mut self) {
        self.socket.close(None).await.expect("send close");
        while let Some(Ok(_)) = bounded("close", self.socket.next()).await {}
    }
}

/// One HTTP request as the responder read it.
#[derive(Debug)]
pub struct HttpRequest {
    pub method: String,
    pub target: String,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub body: String,
}

/// Serves one connection per answer `(status, body)`, in order, each answer closing its
/// connection; the task returns the requests it read.
pub async fn http_responder(answers: Vec<(u16, String)>) -> (String, JoinHandle<Vec<HttpRequest>>) {
    serve_http(answers, None).await
}

/// [`http_responder`] over HTTPS, with `acceptor`'s certificate.
pub async fn https_responder(
    answers: Vec<(u16, String)>,
    acceptor: TlsAcceptor,
) -> (String, JoinHandle<Vec<HttpRequest>>) {
    serve_http(answers, Some(acceptor)).await
}

async fn serve_http(
    answers: Vec<(u16, String)>,
    tls: Option<TlsAcceptor>,
) -> (String, JoinHandle<Vec<HttpRequest>>) {
    let listener = listen().await;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{}", addr_of(&listener));
    let task = tokio::spawn(async move {
        let mut requests = Vec::new();
        for (status, body) in answers {
            let stream = accept_on(&listener, tls.as_ref()).await.stream;
            let mut stream = BufReader::new(stream);
            requests.push(bounded("read HTTP request", read_request(&mut stream)).await);
            let answer = format!(
                "HTTP/1.1 {status} Fake\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream
                .get_mut()
                .write_all(answer.as_bytes())
                .await
                .expect("write HTTP answer");
            stream.get_mut().shutdown().await.expect("shutdown");
        }
        requests
    });
    (base, task)
}

async fn read_request(stream: &mut BufReader<Box<dyn Io>>) -> HttpRequest {
    let mut line = String::new();
    stream.read_line(&mut line).await.expect("request line");
    let mut parts = line.split_whitespace();
    let method = parts.next().expect("method").to_owned();
    let target = parts.next().expect("target").to_owned();
    let mut content_length = 0;
    let mut content_type = None;
    let mut authorization = None;
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).await.expect("header line");
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').expect("header name and value");
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().expect("content length");
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_owned());
        }
    }
    let mut body = vec![0; content_length];
    stream.read_exact(&mut body).await.expect("body");
    HttpRequest {
        method,
        target,
        content_type,
        authorization,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}
