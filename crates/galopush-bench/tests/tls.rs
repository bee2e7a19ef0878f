//! `galopush bench` over TLS against fakes: a comet's TLS listener (binary frames inside TLS)
//! and WSS listener that answer every REGISTER with REGRESP 0, and an HTTPS dispatcher that
//! notes what it was asked, all with a certificate from a CA made at test time.
#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use galopush_bench::{BenchArgs, Report, run};
use galopush_protocol::web::{self, WebFraming};
use galopush_protocol::{Down, Frame, ServerCodec, Up};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::NamedTempFile;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::codec::Framed;

/// Terminals of each run.
const TERMINALS: u64 = 40;
/// Upper bound on a run; reaching it means the test failed.
const BOUND: Duration = Duration::from_secs(60);

/// A CA made for one test, and a leaf for 127.0.0.1 it signed.
struct Pki {
    ca_pem: String,
    acceptor: TlsAcceptor,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("leaf parameters")
            .signed_by(&leaf_key, &ca)
            .expect("leaf certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone()];
        let config = ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
        Pki {
            ca_pem: ca.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }

    fn ca_file(&self) -> NamedTempFile {
        let mut file = NamedTempFile::new().expect("temporary file");
        file.write_all(self.ca_pem.as_bytes())
            .expect("write the CA");
        file
    }
}

/// Which listener a fake comet is.
#[derive(Clone, Copy)]
enum Listener {
    /// Binary frames inside TLS.
    Tls,
    /// WebSocket over TLS.
    Wss,
}

/// A fake comet listening on 127.0.0.1 with `pki`'s certificate: every REGISTER gets REGRESP
/// 0; connections stay open until the terminal closes them.
async fn fake_comet(pki: &Pki, listener: Listener) -> String {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("local addr").to_string();
    let acceptor = pki.acceptor.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            tokio::spawn(serve_terminal(acceptor.clone(), stream, listener));
        }
    });
    addr
}

async fn serve_terminal(acceptor: TlsAcceptor, stream: TcpStream, listener: Listener) {
    // A terminal that refuses the certificate ends here.
    let Ok(stream) = acceptor.accept(stream).await else {
        return;
    };
    match listener {
        Listener::Tls => {
            let mut frames = Framed::new(stream, ServerCodec::default());
            while let Some(Ok(frame)) = frames.next().await {
                let frame: Frame<Up> = frame;
                if let Up::Register(_) = frame.message {
                    let answer = Frame::new(frame.encoding, frame.tid, Down::RegResp { code: 0 });
                    if frames.send(answer).await.is_err() {
                        return;
                    }
                }
            }
        }
        Listener::Wss => {
            let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(message)) = socket.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let framing = WebFraming::detect(text.as_str());
                if let Ok((tid, Up::Register(_))) = web::decode_up(text.as_str(), framing) {
                    let answer = web::encode_down(tid, &Down::RegResp { code: 0 }, framing);
                    if socket.send(Message::text(answer)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A fake HTTPS dispatcher answering every request with `comet`; it notes each request's body.
async fn fake_dispatcher(pki: &Pki, comet: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("https://{}", socket.local_addr().expect("local addr"));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (acceptor, noted) = (pki.acceptor.clone(), bodies.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            let (acceptor, noted, comet) = (acceptor.clone(), noted.clone(), comet.clone());
            tokio::spawn(async move {
                let stream = acceptor.accept(stream).await.expect("TLS handshake");
                let mut stream = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    stream.read_line(&mut line).await.expect("a header line");
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().expect("a length");
                    }
                }
                let mut body = vec![0; length];
                stream.read_exact(&mut body).await.expect("the body");
                noted
                    .lock()
                    .expect("not poisoned")
                    .push(String::from_utf8(body).expect("UTF-8"));
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{comet}",
                    comet.len()
                );
                let stream = stream.get_mut();
                stream.write_all(answer.as_bytes()).await.expect("answer");
                stream.shutdown().await.expect("shutdown");
            });
        }
    });
    (base, bodies)
}

/// Runs `galopush bench` with `words`, within [`BOUND`].
async fn bench(words: &[&str]) -> Report {
    let mut line = vec!["bench"];
    line.extend_from_slice(words);
    let args = BenchArgs::parse_from(line);
    tokio::time::timeout(BOUND, run(&args))
        .await
        .expect("the run ends")
        .expect("the run is carried out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_over_tls_through_an_https_dispatcher() {
    let pki = Pki::new("bench test CA");
    let comet = fake_comet(&pki, Listener::Tls).await;
    let (dispatcher, asked) = fake_dispatcher(&pki, comet).await;
    let ca = pki.ca_file();
    let ca_path = ca.path().to_str().expect("a UTF-8 path");
    let report = bench(&[
        "storm",
        "--tls",
        "--ca",
        ca_path,
        "--dispatch-url",
        &dispatcher,
        "--no-login",
        "--terminals",
        &TERMINALS.to_string(),
        "--concurrency",
        "8",
    ])
    .await;
    let text = report.text();
    assert!(report.is_clean(), "{text}");
    assert!(report.tls);
    assert_eq!(report.connect.registrations.count, TERMINALS, "{text}");
    assert_eq!(report.dispatch.map(|d| d.count), Some(TERMINALS), "{text}");
    assert!(
        text.starts_with(&format!(
            "galopush bench storm: {TERMINALS} tls tcp terminals"
        )),
        "{text}"
    );
    let asked = asked.lock().expect("not poisoned").clone();
    assert_eq!(asked.len() as u64, TERMINALS);
    for body in asked {
        assert!(body.ends_with("&termtype=Android&tls=1"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_over_wss() {
    let pki = Pki::new("bench test CA for WSS");
    let comet = fake_comet(&pki, Listener::Wss).await;
    let ca = pki.ca_file();
    let report = bench(&[
        "storm",
        "--transport",
        "ws",
        "--framing",
        "plain",
        "--tls",
        "--ca",
        ca.path().to_str().expect("a UTF-8 path"),
        "--comet-ws",
        &comet,
        "--no-login",
        "--terminals",
        &TERMINALS.to_string(),
    ])
    .await;
    let text = report.text();
    assert!(report.is_clean(), "{text}");
    assert_eq!(report.connect.registrations.count, TERMINALS, "{text}");
    assert!(
        text.starts_with(&format!(
            "galopush bench storm: {TERMINALS} wss terminals (plain framing)"
        )),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("JSON");
    assert_eq!(json["tls"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_that_do_not_trust_the_comet_count_as_connect_errors() {
    let pki = Pki::new("the comet's CA");
    let stranger = Pki::new("another CA");
    let comet = fake_comet(&pki, Listener::Tls).await;
    let ca = stranger.ca_file();
    let report = bench(&[
        "storm",
        "--tls",
        "--ca",
        ca.path().to_str().expect("a UTF-8 path"),
        "--comet-tcp",
        &comet,
        "--no-login",
        "--terminals",
        "4",
    ])
    .await;
    let text = report.text();
    assert!(!report.is_clean(), "{text}");
    assert_eq!(report.errors.connect, 4, "{text}");
    assert!(
        report.errors.samples[0].contains("TLS handshake")
            && report.errors.samples[0].contains("UnknownIssuer"),
        "{text}"
    );
}

#[tokio::test]
async fn a_bad_ca_file_stops_the_run_and_is_named() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("missing-ca.pem");
    let args = BenchArgs::parse_from([
        "bench",
        "storm",
        "--tls",
        "--ca",
        missing.to_str().expect("a UTF-8 path"),
        "--comet-tcp",
        "127.0.0.1:9",
        "--no-login",
        "--terminals",
        "1",
    ]);
    let error = run(&args).await.expect_err("no CA file");
    assert!(
        error.to_string().contains("missing-ca.pem"),
        "the error names the file: {error}"
    );
}
