//! TLS end to end (SPEC §11): `galopush standalone` with a certificate made at test time, its
//! terminals over TLS and WSS, the dispatcher and the API over HTTPS, a certificate replaced on
//! disk while a terminal stays connected, a pair that cannot be used, and the webhook over
//! https with a private CA.

#[path = "../common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use galopush_client::tls::{Tls, Trust};
use galopush_client::{BusinessApi, Dispatcher, Terminal, Transport, WebFraming};
use galopush_protocol::message::Down;
use galopush_protocol::{Encoding, TermType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use common::pki::{Pki, setting};
use common::process::{API_TOKEN, Process, env_name};
use common::terminal::{SOON, next, next_acked};

const TCP: Transport = Transport::Tcp {
    encoding: Encoding::None,
};
const WEB: Transport = Transport::Web {
    framing: WebFraming::Compatible,
};

/// A `galopush standalone` with TLS everywhere: the comet's TLS and WSS listeners, and both
/// HTTP listeners over HTTPS.
struct Gateway {
    process: Process,
    http: String,
    api: String,
    tls: String,
    wss: String,
    pki: Pki,
    cert: PathBuf,
    key: PathBuf,
    trust: Trust,
    _data: tempfile::TempDir,
}

impl Gateway {
    async fn start(extra: &[(&str, &str)]) -> Gateway {
        let pki = Pki::new();
        let (cert, key) = pki.leaf("gateway");
        let data = tempfile::tempdir().expect("tempdir");
        let store = setting(&data.path().join("store"));
        let (cert_setting, key_setting) = (setting(&cert), setting(&key));
        let env: Vec<(String, String)> = [
            ("router.http_addr", "127.0.0.1:0"),
            ("router.http_tls", "true"),
            ("api.addr", "127.0.0.1:0"),
            ("api.tls", "true"),
            ("api.token", API_TOKEN),
            ("comet.tcp_addr", "127.0.0.1:0"),
            ("comet.ws_addr", "127.0.0.1:0"),
            ("comet.tls_addr", "127.0.0.1:0"),
            ("comet.wss_addr", "127.0.0.1:0"),
            ("comet.advertise_tcp", "127.0.0.1:0"),
            ("comet.advertise_ws", "127.0.0.1:0"),
            ("comet.advertise_tls", "127.0.0.1:0"),
            ("comet.advertise_wss", "127.0.0.1:0"),
            ("tls.cert", &cert_setting),
            ("tls.key", &key_setting),
            ("store.path", &store),
            ("log.level", "galopush_server=debug,info"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (env_name(k), (*v).to_owned()))
        .collect();
        let process = Process::start("standalone", data.path(), &env).await;
        Gateway {
            http: format!("https://{}", process.addr("http")),
            api: format!("https://{}", process.addr("api")),
            tls: process.addr("tls"),
            wss: process.addr("wss"),
            trust: Trust::ca_file(&pki.ca).expect("trust the test CA"),
            process,
            pki,
            cert,
            key,
            _data: data,
        }
    }

    /// An HTTPS client trusting the test CA, sending the API token.
    fn client(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_static("Bearer test-api-token"),
        );
        self.trust
            .http_client_builder()
            .expect("HTTPS client")
            .default_headers(headers)
            .build()
            .expect("HTTPS client")
    }

    async fn metric(&self, series: &str) -> f64 {
        crate::common::process::metric(&self.client(), &self.api, series).await
    }

    async fn wait_metric(&self, series: &str, at_least: f64) {
        let deadline = tokio::time::Instant::now() + SOON;
        while self.metric(series).await < at_least {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stayed low"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Logs a terminal in through the API over HTTPS and waits until it is in force.
    async fn login(&self, uid: &str, term: TermType, code: &str) {
        let series = "galopush_bus_messages_total{topic=\"userOnlineState\",event=\"retired\"}";
        let before = self.metric(series).await;
        BusinessApi::with_trust(&self.api, Some(API_TOKEN), &self.trust)
            .expect("API client")
            .login(uid, term, code)
            .await
            .expect("login over HTTPS");
        self.wait_metric(series, before + 1.0).await;
    }

    async fn push(&self, uid: &str, mask: u8, body: &str) {
        let r = self
            .client()
            .post(format!("{}/pub?topic=push", self.api))
            .body(
                serde_json::json!({"receivers": [{"uid": uid, "termtype": mask}], "flag": 0, "body": body})
                    .to_string(),
            )
            .send()
            .await
            .expect("POST /pub over HTTPS");
        assert_eq!(r.status().as_u16(), 200);
    }

    /// A terminal over TLS (TCP) or WSS (Web), registered.
    async fn terminal(
        &self,
        addr: &str,
        transport: Transport,
        uid: &str,
        term: TermType,
    ) -> Terminal {
        let tls = Tls::new(&self.trust).expect("TLS settings");
        let mut t = Terminal::connect_tls(addr, transport, &tls, None)
            .await
            .expect("TLS connect");
        let code = tokio::time::timeout(SOON, t.register(uid, "code", term))
            .await
            .expect("REGRESP in time")
            .expect("register");
        assert_eq!(code, 0);
        t
    }

    /// The leaf certificate a fresh TLS connection to the comet is served.
    async fn served_certificate(&self) -> CertificateDer<'static> {
        let connector = tokio_rustls::TlsConnector::from(self.pki.client_config());
        let tcp = tokio::net::TcpStream::connect(&self.tls)
            .await
            .expect("connect");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let stream = connector.connect(name, tcp).await.expect("TLS handshake");
        let (_, session) = stream.get_ref();
        session.peer_certificates().expect("a certificate")[0].clone()
    }
}

fn push_body(down: &Down) -> Bytes {
    match down {
        Down::Push { msg, .. } => msg.clone(),
        other => panic!("expected PUSH, got {other:?}"),
    }
}

fn leaf_of(path: &PathBuf) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path)
        .expect("PEM")
        .next()
        .expect("a certificate")
        .expect("valid PEM")
}

#[tokio::test]
async fn terminals_over_tls_and_wss_register_receive_and_ack() {
    let g = Gateway::start(&[]).await;
    let dispatcher = Dispatcher::with_trust(&g.http, &g.trust).expect("dispatcher over HTTPS");
    assert_eq!(
        dispatcher
            .comet_addr_tls("tara", TermType::Android)
            .await
            .expect("tls=1"),
        g.tls
    );
    assert_eq!(
        dispatcher
            .comet_addr_tls("tara", TermType::Web)
            .await
            .expect("tls=1"),
        g.wss
    );
    let comets = g
        .client()
        .get(format!("{}/v1/comets", g.api))
        .send()
        .await
        .expect("comets")
        .text()
        .await
        .expect("text");
    let comets: serde_json::Value = serde_json::from_str(&comets).expect("JSON");
    assert_eq!(comets[0]["tls"], g.tls.as_str());
    assert_eq!(comets[0]["wss"], g.wss.as_str());

    g.login("tara", TermType::Android, "code").await;
    g.login("tara", TermType::Web, "code").await;
    let mut tcp = g.terminal(&g.tls, TCP, "tara", TermType::Android).await;
    let mut web = g.terminal(&g.wss, WEB, "tara", TermType::Web).await;
    g.push("tara", 31, "secret news").await;
    for t in [&mut tcp, &mut web] {
        assert_eq!(
            push_body(&next_acked(t).await.1),
            Bytes::from("secret news")
        );
    }
    g.wait_metric(
        "galopush_deliveries_total{kind=\"push\",outcome=\"acked\"}",
        2.0,
    )
    .await;
    // The plain listeners still serve too.
    let plain = reqwest::get(format!("http://{}/healthz", g.process.addr("http"))).await;
    assert!(
        plain.is_err() || !plain.expect("answer").status().is_success(),
        "HTTPS only"
    );
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_and_old_ones_stay() {
    let g = Gateway::start(&[]).await;
    g.login("rex", TermType::Pc, "code").await;
    let mut old = g.terminal(&g.tls, TCP, "rex", TermType::Pc).await;
    assert_eq!(g.served_certificate().await, leaf_of(&g.cert));

    // The operator replaces the pair (key first, as a renewal tool writes them) and sends
    // SIGHUP; the files are also watched, either one reloads.
    let (new_cert, new_key) = g.pki.leaf("renewed");
    std::fs::copy(&new_key, &g.key).expect("replace key");
    std::fs::copy(&new_cert, &g.cert).expect("replace cert");
    g.process.signal("HUP");
    let renewed = leaf_of(&new_cert);
    let deadline = tokio::time::Instant::now() + SOON;
    while g.served_certificate().await != renewed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The terminal that connected with the old certificate is still served.
    g.push("rex", 16, "after the renewal").await;
    assert_eq!(
        push_body(&next_acked(&mut old).await.1),
        Bytes::from("after the renewal")
    );

    // A broken replacement (a key that is not the certificate's) is refused; the renewed pair
    // stays in service.
    let (_, stray_key) = g.pki.leaf("stray");
    std::fs::copy(&stray_key, &g.key).expect("break the pair");
    g.process.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(g.served_certificate().await, renewed);
    assert!(
        g.process
            .log_text()
            .contains("TLS certificate not reloaded")
    );

    // Without a signal: the files are watched, and a good pair written later is picked up.
    let (third_cert, third_key) = g.pki.leaf("third");
    std::fs::copy(&third_key, &g.key).expect("replace key");
    std::fs::copy(&third_cert, &g.cert).expect("replace cert");
    let third = leaf_of(&third_cert);
    let deadline = tokio::time::Instant::now() + SOON;
    while g.served_certificate().await != third {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a changed file is never picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_pair_that_cannot_be_used_stops_the_start() {
    let pki = Pki::new();
    let (cert, _) = pki.leaf("one");
    let (_, other_key) = pki.leaf("two");
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |cert: &PathBuf, key: &PathBuf| {
        std::process::Command::new(env!("CARGO_BIN_EXE_galopush"))
            .arg("standalone")
            .env(env_name("tls.cert"), cert)
            .env(env_name("tls.key"), key)
            .env(env_name("store.path"), dir.path())
            .env(env_name("router.http_addr"), "127.0.0.1:0")
            .env(env_name("comet.tcp_addr"), "127.0.0.1:0")
            .env(env_name("comet.ws_addr"), "127.0.0.1:0")
            .output()
            .expect("run galopush")
    };
    let out = run(&cert, &other_key);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("one.pem") && err.contains("two.key"), "{err}");
    let out = run(&pki.dir.path().join("missing.pem"), &other_key);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.pem"));
}

/// An HTTPS webhook receiver with the test CA's certificate: records each request's target
/// and body, answers 200.
async fn https_webhook(pki: &Pki) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let config = pki.server_config("webhook");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "https://127.0.0.1:{}/hook",
        listener.local_addr().expect("addr").port()
    );
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                // One request per connection: headers, then Content-Length bytes of body.
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() < length {
                        continue;
                    }
                    let target = head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    seen.lock().await.push((target, body.to_owned()));
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = stream.shutdown().await;
                    return;
                }
            });
        }
    });
    (url, received)
}

#[tokio::test]
async fn the_webhook_over_https_with_a_private_ca() {
    let hook_pki = Pki::new();
    let (url, received) = https_webhook(&hook_pki).await;
    let ca = setting(&hook_pki.ca);
    let g = Gateway::start(&[("bus.webhook_url", &url), ("bus.webhook_ca", &ca)]).await;
    g.login("iris", TermType::Ios, "code").await;
    let mut t = g.terminal(&g.tls, TCP, "iris", TermType::Ios).await;
    t.send_im(Bytes::from("over https")).await.expect("IM");
    assert_eq!(next(&mut t).await.1, Down::ImResp { code: 0 });
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let got = received.lock().await.clone();
        if let Some((target, body)) = got.first() {
            assert_eq!(target, "/hook?topic=msgUpward");
            let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
            assert_eq!(json["body"], "over https");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook got nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Without the CA, the private certificate is not trusted: the message waits in the outbox.
    let (url, received) = https_webhook(&hook_pki).await;
    let g = Gateway::start(&[("bus.webhook_url", &url)]).await;
    g.login("ivo", TermType::Ios, "code").await;
    let mut t = g.terminal(&g.tls, TCP, "ivo", TermType::Ios).await;
    t.send_im(Bytes::from("untrusted")).await.expect("IM");
    assert_eq!(next(&mut t).await.1, Down::ImResp { code: 0 });
    g.wait_metric("galopush_webhook_total{result=\"failed\"}", 1.0)
        .await;
    assert!(received.lock().await.is_empty());
    assert_eq!(g.metric("galopush_outbox_pending").await, 1.0);
}
