//! TLS and AUTH over real sockets against the fake nsqd, with certificates made at test time:
//! publishing and consuming over TLS, `--tls-required` refusing plaintext, AUTH with a right,
//! wrong or missing secret, both together, and an nsqd that cannot do TLS.

mod common;

use bytes::Bytes;
use common::{
    direct_config, eventually, fast_connection, init_tracing, next_message, ok, test_pki, within,
};
use galopush_nsq::fake::{FakeNsqd, FakeNsqdOptions};
use galopush_nsq::{ConnectionConfig, Consumer, Error, Producer, ProducerConfig};

const TOPIC: &str = "secured";
const CHANNEL: &str = "galopush";
const SECRET: &str = "open sesame";

async fn fake_nsqd(options: FakeNsqdOptions) -> FakeNsqd {
    ok("start fake nsqd", FakeNsqd::start_with(options).await)
}

fn producer(address: String, connection: ConnectionConfig) -> Producer {
    let mut config = ProducerConfig::new(address);
    config.connection = connection;
    ok("producer", Producer::new(config))
}

fn consumer(nsqd: &FakeNsqd, connection: ConnectionConfig) -> Consumer {
    let mut config = direct_config(&nsqd.tcp_address(), TOPIC, CHANNEL);
    config.connection = connection;
    ok("consumer", Consumer::new(config))
}

/// Publishes one message through `connection` and consumes it through another connection
/// with the same settings.
async fn round_trip(nsqd: &FakeNsqd, connection: ConnectionConfig) {
    let producer = producer(nsqd.tcp_address(), connection.clone());
    within(
        "publish",
        producer.publish(TOPIC, Bytes::from_static(b"over the wire")),
    )
    .await
    .unwrap_or_else(|e| panic!("publish: {e}"));
    assert_eq!(
        nsqd.published(TOPIC),
        vec![Bytes::from_static(b"over the wire")]
    );
    let mut consumer = consumer(nsqd, connection);
    let message = next_message(&mut consumer).await;
    assert_eq!(message.body, Bytes::from_static(b"over the wire"));
    message.fin();
    eventually("the FIN reached nsqd", || {
        nsqd.stats(TOPIC, CHANNEL).finished == 1
    })
    .await;
    within("stop", consumer.stop()).await;
}

/// The error of one publish through `connection`.
async fn publish_error(address: String, connection: ConnectionConfig) -> Error {
    let producer = producer(address, connection);
    match within("publish", producer.publish(TOPIC, Bytes::from_static(b"x"))).await {
        Ok(()) => panic!("the publish should have failed"),
        Err(error) => error,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_consumer_work_over_tls() {
    init_tracing();
    let pki = test_pki();
    let nsqd = fake_nsqd(FakeNsqdOptions {
        tls: Some(pki.server.clone()),
        tls_required: true,
        ..FakeNsqdOptions::default()
    })
    .await;
    let connection = ConnectionConfig {
        tls: Some(pki.client.clone()),
        ..fast_connection()
    };
    round_trip(&nsqd, connection).await;
    let stats = nsqd.server_stats();
    assert_eq!(stats.tls_connections, 2, "{stats:?}");
    assert_eq!(stats.connections_accepted, 2, "{stats:?}");
    eventually("the consumer closed with CLS over TLS", || {
        nsqd.server_stats().cls_commands == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_name_can_be_a_host_name() {
    init_tracing();
    let pki = test_pki();
    let nsqd = fake_nsqd(FakeNsqdOptions {
        tls: Some(pki.server.clone()),
        ..FakeNsqdOptions::default()
    })
    .await;
    let connection = ConnectionConfig {
        tls: Some(pki.client.clone()),
        ..fast_connection()
    };
    let producer = producer(format!("localhost:{}", nsqd.addr().port()), connection);
    within("publish", producer.publish(TOPIC, Bytes::from_static(b"h")))
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    assert_eq!(nsqd.server_stats().tls_connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_refuses_a_plaintext_client() {
    init_tracing();
    let pki = test_pki();
    let nsqd = fake_nsqd(FakeNsqdOptions {
        tls: Some(pki.server.clone()),
        tls_required: true,
        ..FakeNsqdOptions::default()
    })
    .await;
    let error = publish_error(nsqd.tcp_address(), fast_connection()).await;
    assert_eq!(error.nsqd_code(), Some("E_INVALID"), "{error:?}");
    assert!(error.to_string().contains("TLS required"), "{error}");
    assert!(nsqd.published(TOPIC).is_empty());

    // A plaintext consumer is refused at SUB on every attempt and never subscribes.
    let consumer = consumer(&nsqd, fast_connection());
    eventually("the consumer was refused and retried", || {
        nsqd.server_stats().connections_accepted >= 3
    })
    .await;
    assert_eq!(nsqd.stats(TOPIC, CHANNEL).clients, 0);
    assert_eq!(nsqd.server_stats().tls_connections, 0);
    within("stop", consumer.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_the_right_secret_works_for_producer_and_consumer() {
    init_tracing();
    let nsqd = fake_nsqd(FakeNsqdOptions {
        auth_secrets: Some(vec!["another".to_owned(), SECRET.to_owned()]),
        ..FakeNsqdOptions::default()
    })
    .await;
    let connection = ConnectionConfig {
        auth_secret: Some(SECRET.to_owned()),
        ..fast_connection()
    };
    round_trip(&nsqd, connection).await;
    let stats = nsqd.server_stats();
    assert_eq!(
        (stats.auth_commands, stats.auth_accepted),
        (2, 2),
        "{stats:?}"
    );
    assert_eq!(stats.tls_connections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_e_auth_failed() {
    init_tracing();
    let nsqd = fake_nsqd(FakeNsqdOptions {
        auth_secrets: Some(vec![SECRET.to_owned()]),
        ..FakeNsqdOptions::default()
    })
    .await;
    let connection = ConnectionConfig {
        auth_secret: Some("guess".to_owned()),
        ..fast_connection()
    };
    let error = publish_error(nsqd.tcp_address(), connection.clone()).await;
    assert_eq!(error.nsqd_code(), Some("E_AUTH_FAILED"), "{error:?}");
    assert!(error.to_string().contains("E_AUTH_FAILED"), "{error}");
    assert!(nsqd.published(TOPIC).is_empty());

    // A consumer with the wrong secret keeps being refused and never subscribes.
    let consumer = consumer(&nsqd, connection);
    eventually("the consumer's AUTH was refused again", || {
        nsqd.server_stats().auth_commands >= 3
    })
    .await;
    assert_eq!(nsqd.stats(TOPIC, CHANNEL).clients, 0);
    assert_eq!(nsqd.server_stats().auth_accepted, 0);
    within("stop", consumer.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_required_without_a_secret_is_a_clear_error() {
    init_tracing();
    let nsqd = fake_nsqd(FakeNsqdOptions {
        auth_secrets: Some(vec![SECRET.to_owned()]),
        ..FakeNsqdOptions::default()
    })
    .await;
    let error = publish_error(nsqd.tcp_address(), fast_connection()).await;
    match &error {
        Error::AuthRequired(addr) => assert_eq!(*addr, nsqd.tcp_address()),
        other => panic!("expected AuthRequired, got {other:?}"),
    }
    assert!(error.to_string().contains("auth_secret"), "{error}");
    let stats = nsqd.server_stats();
    assert_eq!(
        (stats.auth_commands, stats.pub_commands),
        (0, 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_not_sent_to_an_nsqd_without_auth() {
    init_tracing();
    let nsqd = fake_nsqd(FakeNsqdOptions::default()).await;
    let connection = ConnectionConfig {
        auth_secret: Some(SECRET.to_owned()),
        ..fast_connection()
    };
    let producer = producer(nsqd.tcp_address(), connection);
    within("publish", producer.publish(TOPIC, Bytes::from_static(b"a")))
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    assert_eq!(nsqd.server_stats().auth_commands, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_auth_together() {
    init_tracing();
    let pki = test_pki();
    let nsqd = fake_nsqd(FakeNsqdOptions {
        tls: Some(pki.server.clone()),
        tls_required: true,
        auth_secrets: Some(vec![SECRET.to_owned()]),
        ..FakeNsqdOptions::default()
    })
    .await;
    let connection = ConnectionConfig {
        tls: Some(pki.client.clone()),
        auth_secret: Some(SECRET.to_owned()),
        ..fast_connection()
    };
    round_trip(&nsqd, connection).await;
    let stats = nsqd.server_stats();
    assert_eq!(stats.tls_connections, 2, "{stats:?}");
    assert_eq!(
        (stats.auth_commands, stats.auth_accepted),
        (2, 2),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_tls_from_an_nsqd_without_tls_fails_clearly() {
    init_tracing();
    let pki = test_pki();
    let nsqd = fake_nsqd(FakeNsqdOptions::default()).await;
    let connection = ConnectionConfig {
        tls: Some(pki.client.clone()),
        ..fast_connection()
    };
    let error = publish_error(nsqd.tcp_address(), connection).await;
    match &error {
        Error::Tls(reason) => assert!(reason.contains("tls_v1"), "{reason}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    let stats = nsqd.server_stats();
    assert_eq!(
        (stats.pub_commands, stats.tls_connections),
        (0, 0),
        "{stats:?}"
    );
    assert!(
        nsqd.published(TOPIC).is_empty(),
        "nothing went in plaintext"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_the_handshake() {
    init_tracing();
    let nsqd_pki = test_pki();
    let other_pki = test_pki();
    let nsqd = fake_nsqd(FakeNsqdOptions {
        tls: Some(nsqd_pki.server.clone()),
        ..FakeNsqdOptions::default()
    })
    .await;
    let connection = ConnectionConfig {
        tls: Some(other_pki.client.clone()),
        ..fast_connection()
    };
    let error = publish_error(nsqd.tcp_address(), connection).await;
    match &error {
        Error::Tls(reason) => assert!(reason.contains("handshake"), "{reason}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    let stats = nsqd.server_stats();
    assert_eq!(
        (stats.pub_commands, stats.tls_connections),
        (0, 0),
        "{stats:?}"
    );
}
