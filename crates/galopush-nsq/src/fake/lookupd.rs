//! A fake nsqlookupd: a tiny HTTP/1.1 server on 127.0.0.1 answering `GET /lookup?topic=T`
//! from a registry the test controls, and `GET /ping`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Longest accepted request head.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Registry {
    producers: HashMap<String, BTreeSet<SocketAddr>>,
    lookups: u64,
}

/// A fake nsqlookupd. Dropping it stops the server.
pub struct FakeLookupd {
    addr: SocketAddr,
    registry: Arc<Mutex<Registry>>,
    token: CancellationToken,
}

impl FakeLookupd {
    /// Starts a fake nsqlookupd on a free port of 127.0.0.1 with an empty registry.
    pub async fn start() -> std::io::Result<FakeLookupd> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let registry = Arc::new(Mutex::new(Registry::default()));
        let token = CancellationToken::new();
        tokio::spawn(accept_loop(listener, registry.clone(), token.clone()));
        Ok(FakeLookupd {
            addr,
            registry,
            token,
        })
    }

    /// The HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP address as `host:port`, as a consumer's `lookupd_http_addresses` takes it.
    pub fn http_address(&self) -> String {
        self.addr.to_string()
    }

    /// Lists the nsqd at `nsqd` (its TCP address) as a producer of `topic`.
    pub fn register(&self, topic: &str, nsqd: SocketAddr) {
        self.registry()
            .producers
            .entry(topic.to_owned())
            .or_default()
            .insert(nsqd);
    }

    /// Stops listing `nsqd` for `topic`; the topic is unknown (404) once it has none.
    pub fn unregister(&self, topic: &str, nsqd: SocketAddr) {
        let mut registry = self.registry();
        if let Some(producers) = registry.producers.get_mut(topic) {
            producers.remove(&nsqd);
            if producers.is_empty() {
                registry.producers.remove(topic);
            }
        }
    }

    /// How many `/lookup` requests were answered.
    pub fn lookups(&self) -> u64 {
        self.registry().lookups
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }
}

impl Drop for FakeLookupd {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(
    listener: TcpListener,
    registry: Arc<Mutex<Registry>>,
    token: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let registry = registry.clone();
                    let token = token.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = serve(stream, &registry) => {}
                        }
                    });
                }
                Err(error) => tracing::warn!(%error, "fake nsqlookupd accept failed"),
            },
        }
    }
}

/// Answers one request, then closes the connection.
async fn serve(mut stream: TcpStream, registry: &Mutex<Registry>) {
    let Ok(Some(head)) = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await else {
        return;
    };
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, content_type, body) = if method != "GET" {
        (
            405,
            "application/json",
            r#"{"message":"METHOD_NOT_ALLOWED"}"#.to_owned(),
        )
    } else {
        match path {
            "/ping" => (200, "text/plain; charset=utf-8", "OK".to_owned()),
            "/lookup" => lookup(registry, query),
            _ => (
                404,
                "application/json",
                r#"{"message":"NOT_FOUND"}"#.to_owned(),
            ),
        }
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        405 => "Method Not Allowed",
        _ => "Not Found",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    // Ignored: the client may have gone; nothing else to do with this connection.
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn lookup(registry: &Mutex<Registry>, query: &str) -> (u16, &'static str, String) {
    let topic = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "topic")
        .map(|(_, value)| decode_query_value(value));
    let Some(topic) = topic else {
        return (
            400,
            "application/json",
            r#"{"message":"MISSING_ARG_TOPIC"}"#.to_owned(),
        );
    };
    let mut registry = lock(registry);
    registry.lookups += 1;
    let Some(producers) = registry.producers.get(&topic) else {
        return (
            404,
            "application/json",
            r#"{"message":"TOPIC_NOT_FOUND"}"#.to_owned(),
        );
    };
    let producers: Vec<serde_json::Value> = producers
        .iter()
        .map(|addr| {
            serde_json::json!({
                "remote_address": addr.to_string(),
                "hostname": "fake-nsqd",
                "broadcast_address": addr.ip().to_string(),
                "tcp_port": addr.port(),
                "http_port": 0,
                "version": "1.3.0-fake",
            })
        })
        .collect();
    let body = serde_json::json!({ "channels": [], "producers": producers });
    (200, "application/json; charset=utf-8", body.to_string())
}

/// Reads up to the end of the request head.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buf).await.ok()?;
        if read == 0 || head.len() + read > MAX_REQUEST {
            return None;
        }
        head.extend_from_slice(&buf[..read]);
    }
    String::from_utf8(head).ok()
}

fn decode_query_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(if bytes[index] == b'+' {
                    b' '
                } else {
                    bytes[index]
                });
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}
