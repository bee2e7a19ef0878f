//! Protocol conformance of the fakes, spoken to over raw sockets: IDENTIFY in both forms,
//! the TLS upgrade and `--tls-required`, AUTH, fatal and non-fatal error frames, heartbeat
//! disconnection, and nsqlookupd's HTTP answers.

mod common;

use common::{init_tracing, ok, test_pki, within};
use galopush_nsq::fake::{FakeLookupd, FakeNsqd, FakeNsqdOptions};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A bare protocol V2 client, over TCP or TLS.
struct RawClient<S = TcpStream> {
    stream: S,
}

impl RawClient {
    async fn connect(nsqd: &FakeNsqd) -> RawClient {
        let mut stream = ok("connect", TcpStream::connect(nsqd.addr()).await);
        ok("magic", stream.write_all(b"  V2").await);
        RawClient { stream }
    }

    /// The client side of the TLS upgrade nsqd starts after answering IDENTIFY.
    async fn upgrade(
        self,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> RawClient<TlsStream<TcpStream>> {
        let name = ok("server name", ServerName::try_from("127.0.0.1"));
        let stream = ok(
            "TLS handshake",
            within(
                "the TLS handshake",
                TlsConnector::from(config).connect(name.to_owned(), self.stream),
            )
            .await,
        );
        RawClient { stream }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawClient<S> {
    async fn send(&mut self, bytes: &[u8]) {
        ok("write", self.stream.write_all(bytes).await);
        ok("flush", self.stream.flush().await);
    }

    async fn identify(&mut self, json: &str) {
        let mut command = b"IDENTIFY\n".to_vec();
        command.extend_from_slice(&(json.len() as u32).to_be_bytes());
        command.extend_from_slice(json.as_bytes());
        self.send(&command).await;
    }

    /// The next frame as (type, data), or `None` at end of stream.
    async fn frame(&mut self) -> Option<(u32, Vec<u8>)> {
        within("a frame", async {
            let size = self.stream.read_u32().await.ok()?;
            let frame_type = self.stream.read_u32().await.ok()?;
            let mut data = vec![0; size as usize - 4];
            self.stream.read_exact(&mut data).await.ok()?;
            Some((frame_type, data))
        })
        .await
    }

    async fn response(&mut self) -> Vec<u8> {
        match self.frame().await {
            Some((0, data)) => data,
            other => panic!("expected a response frame, got {other:?}"),
        }
    }

    async fn error(&mut self) -> String {
        match self.frame().await {
            Some((1, data)) => String::from_utf8_lossy(&data).into_owned(),
            other => panic!("expected an error frame, got {other:?}"),
        }
    }

    async fn closed(&mut self) {
        assert!(self.frame().await.is_none(), "connection should be closed");
    }
}

#[tokio::test]
async fn identify_answers_ok_or_negotiated_features() {
    init_tracing();
    let nsqd = ok("start", FakeNsqd::start().await);
    let mut plain = RawClient::connect(&nsqd).await;
    plain
        .identify(r#"{"client_id":"t","heartbeat_interval":1000}"#)
        .await;
    assert_eq!(plain.response().await, b"OK");

    let mut negotiated = RawClient::connect(&nsqd).await;
    negotiated
        .identify(r#"{"client_id":"t","feature_negotiation":true,"msg_timeout":5000}"#)
        .await;
    let answer: serde_json::Value = ok(
        "IDENTIFY JSON",
        serde_json::from_slice(&negotiated.response().await),
    );
    assert_eq!(answer["msg_timeout"], 5000);
    assert_eq!(answer["max_rdy_count"], 2500);
    assert_eq!(answer["auth_required"], false);
    assert_eq!(answer["tls_v1"], false);
}

#[tokio::test]
async fn tls_upgrade_follows_the_identify_answer() {
    init_tracing();
    let pki = test_pki();
    let nsqd = ok(
        "start",
        FakeNsqd::start_with(FakeNsqdOptions {
            tls: Some(pki.server.clone()),
            tls_required: true,
            ..FakeNsqdOptions::default()
        })
        .await,
    );
    let mut client = RawClient::connect(&nsqd).await;
    client
        .identify(r#"{"feature_negotiation":true,"tls_v1":true,"heartbeat_interval":30000}"#)
        .await;
    let answer: serde_json::Value = ok(
        "IDENTIFY JSON",
        serde_json::from_slice(&client.response().await),
    );
    assert_eq!(answer["tls_v1"], true);
    assert_eq!(answer["auth_required"], false);
    let mut client = client.upgrade(pki.client.clone()).await;
    assert_eq!(client.response().await, b"OK", "sent over TLS");
    client.send(b"PUB t\n\x00\x00\x00\x02hi").await;
    assert_eq!(client.response().await, b"OK");
    assert_eq!(nsqd.published("t"), vec![bytes::Bytes::from_static(b"hi")]);
    assert_eq!(nsqd.server_stats().tls_connections, 1);
}

#[tokio::test]
async fn tls_required_refuses_commands_before_the_upgrade() {
    init_tracing();
    let pki = test_pki();
    let nsqd = ok(
        "start",
        FakeNsqd::start_with(FakeNsqdOptions {
            tls: Some(pki.server.clone()),
            tls_required: true,
            ..FakeNsqdOptions::default()
        })
        .await,
    );
    // IDENTIFY without tls_v1 is answered (no upgrade); anything else is then refused.
    let mut client = RawClient::connect(&nsqd).await;
    client
        .identify(r#"{"feature_negotiation":true,"heartbeat_interval":30000}"#)
        .await;
    let answer: serde_json::Value = ok(
        "IDENTIFY JSON",
        serde_json::from_slice(&client.response().await),
    );
    assert_eq!(answer["tls_v1"], false);
    client.send(b"SUB t c\n").await;
    assert_eq!(
        client.error().await,
        "E_INVALID cannot SUB in current state (TLS required)"
    );
    client.closed().await;

    let mut client = RawClient::connect(&nsqd).await;
    client.send(b"NOP\n").await;
    assert_eq!(
        client.error().await,
        "E_INVALID cannot NOP in current state (TLS required)"
    );
    client.closed().await;
}

#[tokio::test]
async fn auth_is_required_first_then_checked() {
    init_tracing();
    let nsqd = ok(
        "start",
        FakeNsqd::start_with(FakeNsqdOptions {
            auth_secrets: Some(vec!["right".to_owned()]),
            ..FakeNsqdOptions::default()
        })
        .await,
    );
    let mut client = RawClient::connect(&nsqd).await;
    client
        .identify(r#"{"feature_negotiation":true,"tls_v1":true,"heartbeat_interval":30000}"#)
        .await;
    let answer: serde_json::Value = ok(
        "IDENTIFY JSON",
        serde_json::from_slice(&client.response().await),
    );
    assert_eq!(answer["auth_required"], true);
    assert_eq!(answer["tls_v1"], false, "no TLS configured");
    client.send(b"PUB t\n\x00\x00\x00\x02hi").await;
    assert_eq!(
        client.error().await,
        "E_AUTH_FIRST AUTH required before PUB"
    );
    client.closed().await;

    let mut client = RawClient::connect(&nsqd).await;
    client.send(b"AUTH\n\x00\x00\x00\x05wrong").await;
    assert_eq!(client.error().await, "E_AUTH_FAILED AUTH failed");
    client.closed().await;

    let mut client = RawClient::connect(&nsqd).await;
    client.send(b"AUTH\n\x00\x00\x00\x05right").await;
    let answer: serde_json::Value = ok(
        "AUTH JSON",
        serde_json::from_slice(&client.response().await),
    );
    assert!(answer["identity"].is_string(), "{answer}");
    assert!(answer["identity_url"].is_string(), "{answer}");
    assert_eq!(answer["permission_count"], 1);
    client.send(b"PUB t\n\x00\x00\x00\x02hi").await;
    assert_eq!(client.response().await, b"OK");
    client.send(b"AUTH\n\x00\x00\x00\x05right").await;
    assert_eq!(client.error().await, "E_INVALID AUTH already set");
    client.closed().await;
    let stats = nsqd.server_stats();
    assert_eq!((stats.auth_commands, stats.auth_accepted), (3, 1));
}

#[tokio::test]
async fn auth_without_auth_enabled_is_e_auth_disabled() {
    init_tracing();
    let nsqd = ok("start", FakeNsqd::start().await);
    let mut client = RawClient::connect(&nsqd).await;
    client.send(b"AUTH\n\x00\x00\x00\x06secret").await;
    assert_eq!(client.error().await, "E_AUTH_DISABLED AUTH disabled");
    client.closed().await;
}

#[tokio::test]
async fn unknown_command_is_a_fatal_e_invalid() {
    init_tracing();
    let nsqd = ok("start", FakeNsqd::start().await);
    let mut client = RawClient::connect(&nsqd).await;
    client.send(b"HELLO\n").await;
    assert!(client.error().await.starts_with("E_INVALID "));
    client.closed().await;
}

#[tokio::test]
async fn bad_magic_is_refused() {
    init_tracing();
    let nsqd = ok("start", FakeNsqd::start().await);
    let mut stream = ok("connect", TcpStream::connect(nsqd.addr()).await);
    ok("magic", stream.write_all(b"  V1").await);
    let mut client = RawClient { stream };
    assert!(client.error().await.starts_with("E_BAD_PROTOCOL"));
    client.closed().await;
}

#[tokio::test]
async fn bad_topic_and_empty_body_are_fatal() {
    init_tracing();
    let nsqd = ok("start", FakeNsqd::start().await);
    let mut client = RawClient::connect(&nsqd).await;
    client.send(b"PUB bad*topic\n\x00\x00\x00\x01x").await;
    assert!(client.error().await.starts_with("E_BAD_TOPIC "));
    client.closed().await;

    let mut client = RawClient::connect(&nsqd).await;
    client.send(b"PUB t\n\x00\x00\x00\x00").await;
    assert!(client.error().await.starts_with("E_BAD_MESSAGE "));
    client.closed().await;

    let mut client = RawClient::connect(&nsqd).await;
    client
        .send(b"MPUB t\n\x00\x00\x00\x04\x00\x00\x00\x00")
        .await;
    assert!(client.error().await.starts_with("E_BAD_BODY "));
    client.closed().await;
}

#[tokio::test]
async fn fin_of_an_unknown_id_is_not_fatal() {
    init_tracing();
    let nsqd = ok("start", FakeNsqd::start().await);
    let mut client = RawClient::connect(&nsqd).await;
    client.identify(r#"{"heartbeat_interval":30000}"#).await;
    assert_eq!(client.response().await, b"OK");
    client.send(b"SUB t c\n").await;
    assert_eq!(client.response().await, b"OK");
    client.send(b"FIN 0000000000000bad\n").await;
    assert!(client.error().await.starts_with("E_FIN_FAILED "));
    client.send(b"TOUCH 0000000000000bad\n").await;
    assert!(client.error().await.starts_with("E_TOUCH_FAILED "));
    client.send(b"REQ 0000000000000bad 0\n").await;
    assert!(client.error().await.starts_with("E_REQ_FAILED "));
    // Still open: a publish on the same connection is answered.
    client.send(b"PUB t\n\x00\x00\x00\x02hi").await;
    assert_eq!(client.response().await, b"OK");
    client.send(b"RDY 1\n").await;
    match client.frame().await {
        Some((2, data)) => {
            assert_eq!(&data[8..10], &[0, 1], "first attempt");
            assert_eq!(&data[26..], b"hi");
        }
        other => panic!("expected the message, got {other:?}"),
    }
    client.send(b"CLS\n").await;
    assert_eq!(client.response().await, b"CLOSE_WAIT");
}

#[tokio::test]
async fn unanswered_heartbeats_close_the_connection() {
    init_tracing();
    let nsqd = ok("start", FakeNsqd::start().await);
    let mut client = RawClient::connect(&nsqd).await;
    client.identify(r#"{"heartbeat_interval":200}"#).await;
    assert_eq!(client.response().await, b"OK");
    assert_eq!(client.response().await, b"_heartbeat_");
    // No NOP: the server gives up after two intervals of silence.
    loop {
        match client.frame().await {
            Some((0, data)) if data == b"_heartbeat_" => continue,
            None => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(nsqd.server_stats().connections, 0);
}

async fn http_get(lookupd: &FakeLookupd, target: &str) -> String {
    let mut stream = ok("connect", TcpStream::connect(lookupd.addr()).await);
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    ok("write", stream.write_all(request.as_bytes()).await);
    let mut response = String::new();
    ok(
        "read",
        within("the HTTP answer", stream.read_to_string(&mut response)).await,
    );
    response
}

#[tokio::test]
async fn lookupd_answers_ping_and_lookup() {
    init_tracing();
    let lookupd = ok("start", FakeLookupd::start().await);
    let ping = http_get(&lookupd, "/ping").await;
    assert!(ping.starts_with("HTTP/1.1 200 "), "{ping}");
    assert!(ping.ends_with("\r\n\r\nOK"), "{ping}");

    let unknown = http_get(&lookupd, "/lookup?topic=none").await;
    assert!(unknown.starts_with("HTTP/1.1 404 "), "{unknown}");
    assert!(unknown.contains("TOPIC_NOT_FOUND"), "{unknown}");

    let nsqd = std::net::SocketAddr::from(([127, 0, 0, 1], 4150));
    lookupd.register("t#ephemeral", nsqd);
    let found = http_get(&lookupd, "/lookup?topic=t%23ephemeral").await;
    assert!(found.starts_with("HTTP/1.1 200 "), "{found}");
    let body = found.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value = ok("lookup JSON", serde_json::from_str(body));
    assert_eq!(json["producers"][0]["broadcast_address"], "127.0.0.1");
    assert_eq!(json["producers"][0]["tcp_port"], 4150);
    lookupd.unregister("t#ephemeral", nsqd);
    let gone = http_get(&lookupd, "/lookup?topic=t%23ephemeral").await;
    assert!(gone.starts_with("HTTP/1.1 404 "), "{gone}");
    assert_eq!(lookupd.lookups(), 3);
}
