//! Helpers shared by the integration tests: logging, fast client settings, bounded waits and
//! test certificates.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use galopush_nsq::{ConnectionConfig, Consumer, ConsumerConfig, Message};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Generous upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(5);

/// Logs to the test output (shown for failing tests); `RUST_LOG` overrides the filter.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("galopush_nsq=debug"));
    // Ignored: another test of this binary installed it first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Connection settings that reconnect quickly.
pub fn fast_connection() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..ConnectionConfig::default()
    }
}

/// A consumer config for one direct nsqd with fast reconnection.
pub fn direct_config(nsqd: &str, topic: &str, channel: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(topic, channel);
    config.nsqd_tcp_addresses = vec![nsqd.to_owned()];
    config.connection = fast_connection();
    config
}

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(WAIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The next message, failing the test if none arrives within [`WAIT`].
pub async fn next_message(consumer: &mut Consumer) -> Message {
    match within("a message", consumer.recv()).await {
        Some(message) => message,
        None => panic!("consumer stopped"),
    }
}

/// Whether a message arrives within `wait` (for asserting that none does).
pub async fn message_within(consumer: &mut Consumer, wait: Duration) -> Option<Message> {
    tokio::time::timeout(wait, consumer.recv())
        .await
        .ok()
        .flatten()
}

/// Polls `condition` until it holds, failing the test after [`WAIT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Unwraps a setup result, failing the test with the error.
pub fn ok<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what}: {error}"),
    }
}

/// TLS settings made at test time: a CA, and a server certificate it signed for `localhost`
/// and `127.0.0.1`.
pub struct TestPki {
    /// For the fake nsqd: the server certificate (with the CA) and its key.
    pub server: Arc<rustls::ServerConfig>,
    /// For clients: trusts the CA.
    pub client: Arc<rustls::ClientConfig>,
}

/// rustls's default provider, named explicitly so the tests do not depend on which
/// providers the build enabled.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A new CA and a server certificate signed by it.
pub fn test_pki() -> TestPki {
    let ca_key = ok("CA key", KeyPair::generate());
    let mut ca_params = ok("CA params", CertificateParams::new(Vec::<String>::new()));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "galopush-nsq test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ok("CA certificate", ca_params.self_signed(&ca_key));
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = ok("server key", KeyPair::generate());
    let mut server_params = ok(
        "server params",
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]),
    );
    server_params
        .distinguished_name
        .push(DnType::CommonName, "fake nsqd");
    server_params.use_authority_key_identifier_extension = true;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = ok(
        "server certificate",
        server_params.signed_by(&server_key, &issuer),
    );

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let chain: Vec<CertificateDer<'static>> =
        vec![server_cert.der().clone(), ca_cert.der().clone()];
    let server = ok(
        "server TLS config",
        ok(
            "server TLS versions",
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions(),
        )
        .with_no_client_auth()
        .with_single_cert(chain, key),
    );
    TestPki {
        server: Arc::new(server),
        client: client_trusting(ca_cert.der().clone()),
    }
}

/// A client configuration trusting only `ca`.
fn client_trusting(ca: CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    ok("trust the CA", roots.add(ca));
    let client = ok(
        "client TLS versions",
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions(),
    )
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(client)
}
