//! Producer tests over real sockets against the fake nsqd: PUB and MPUB acknowledgements,
//! coalescing, nsqd errors, heartbeats, garbage input and reconnection.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{eventually, fast_connection, init_tracing, ok, within};
use galopush_nsq::fake::FakeNsqd;
use galopush_nsq::{Error, Producer, ProducerConfig};

const TOPIC: &str = "msgUpward";

async fn fake_nsqd() -> FakeNsqd {
    ok("start fake nsqd", FakeNsqd::start().await)
}

fn producer(nsqd: &FakeNsqd) -> Producer {
    let mut config = ProducerConfig::new(nsqd.tcp_address());
    config.connection = fast_connection();
    ok("producer", Producer::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_after_nsqd_stored_the_message() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let producer = producer(&nsqd);
    assert_eq!(producer.nsqd_address(), nsqd.tcp_address());
    within(
        "publish",
        producer.publish(TOPIC, Bytes::from_static(b"{\"uid\":\"1\"}")),
    )
    .await
    .unwrap_or_else(|e| panic!("publish: {e}"));
    assert_eq!(
        nsqd.published(TOPIC),
        vec![Bytes::from_static(b"{\"uid\":\"1\"}")]
    );
    assert_eq!(nsqd.server_stats().pub_commands, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_many_goes_out_as_one_mpub() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let producer = producer(&nsqd);
    let bodies: Vec<Bytes> = (0..3).map(|i| Bytes::from(format!("b{i}"))).collect();
    within("publish_many", producer.publish_many(TOPIC, bodies.clone()))
        .await
        .unwrap_or_else(|e| panic!("publish_many: {e}"));
    assert_eq!(nsqd.published(TOPIC), bodies);
    let stats = nsqd.server_stats();
    assert_eq!((stats.pub_commands, stats.mpub_commands), (0, 1));
}

/// On the current-thread runtime the 50 publishes are all queued before the producer task
/// gets to write, so they travel as one MPUB.
#[tokio::test]
async fn concurrent_publishes_are_coalesced_into_one_mpub() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let producer = producer(&nsqd);
    let mut publishes = tokio::task::JoinSet::new();
    for i in 0..50 {
        let producer = producer.clone();
        publishes.spawn(async move { producer.publish(TOPIC, Bytes::from(format!("p{i}"))).await });
    }
    let results = within("the publishes", publishes.join_all()).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut published = nsqd.published(TOPIC);
    published.sort();
    let mut expected: Vec<Bytes> = (0..50).map(|i| Bytes::from(format!("p{i}"))).collect();
    expected.sort();
    assert_eq!(published, expected);
    let stats = nsqd.server_stats();
    assert_eq!((stats.pub_commands, stats.mpub_commands), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_failure_is_an_error_and_the_producer_recovers() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let producer = producer(&nsqd);
    nsqd.set_fail_publishes(true);
    let error = within(
        "failing publish",
        producer.publish(TOPIC, Bytes::from_static(b"x")),
    )
    .await
    .err();
    assert_eq!(
        error.as_ref().and_then(Error::nsqd_code),
        Some("E_PUB_FAILED"),
        "{error:?}"
    );
    let error = within(
        "failing publish_many",
        producer.publish_many(
            TOPIC,
            vec![Bytes::from_static(b"y"), Bytes::from_static(b"z")],
        ),
    )
    .await
    .err();
    assert_eq!(
        error.as_ref().and_then(Error::nsqd_code),
        Some("E_MPUB_FAILED"),
        "{error:?}"
    );
    nsqd.set_fail_publishes(false);
    within(
        "publish after recovery",
        producer.publish(TOPIC, Bytes::from_static(b"ok")),
    )
    .await
    .unwrap_or_else(|e| panic!("publish after recovery: {e}"));
    assert_eq!(nsqd.published(TOPIC), vec![Bytes::from_static(b"ok")]);
    assert!(nsqd.server_stats().connections_accepted >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fails_while_nsqd_is_down_and_works_after_restart() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let producer = producer(&nsqd);
    within(
        "first publish",
        producer.publish(TOPIC, Bytes::from_static(b"1")),
    )
    .await
    .unwrap_or_else(|e| panic!("first publish: {e}"));
    nsqd.stop().await;
    let down = within(
        "publish while down",
        producer.publish(TOPIC, Bytes::from_static(b"lost")),
    )
    .await;
    assert!(
        matches!(
            down,
            Err(Error::Connect { .. } | Error::Disconnected(_) | Error::Unavailable(_))
        ),
        "{down:?}"
    );
    ok("restart", nsqd.restart().await);
    within("publish after restart", async {
        loop {
            match producer.publish(TOPIC, Bytes::from_static(b"2")).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::info!(%error, "publish after restart failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await;
    assert_eq!(
        nsqd.published(TOPIC),
        vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_producer_answers_heartbeats() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let mut config = ProducerConfig::new(nsqd.tcp_address());
    config.connection = fast_connection();
    config.connection.heartbeat_interval = Duration::from_millis(200);
    let producer = ok("producer", Producer::new(config));
    within("publish", producer.publish(TOPIC, Bytes::from_static(b"a")))
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    eventually("several heartbeats were answered", || {
        nsqd.server_stats().nops_received >= 4
    })
    .await;
    within("publish", producer.publish(TOPIC, Bytes::from_static(b"b")))
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    assert_eq!(nsqd.server_stats().connections_accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_nsqd_fails_pending_work_and_reconnects() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let producer = producer(&nsqd);
    within("publish", producer.publish(TOPIC, Bytes::from_static(b"a")))
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    nsqd.send_raw_to_clients(&b"\x00\x00\x00\x05\x00\x00\x00\x07x"[..]);
    eventually("the producer dropped the connection", || {
        nsqd.server_stats().connections == 0
    })
    .await;
    within("publish after garbage", async {
        loop {
            match producer.publish(TOPIC, Bytes::from_static(b"b")).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::info!(%error, "publish after garbage failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await;
    assert_eq!(nsqd.server_stats().connections_accepted, 2);
}

#[tokio::test]
async fn invalid_publishes_are_refused_before_sending() {
    let nsqd = fake_nsqd().await;
    let producer = producer(&nsqd);
    assert!(matches!(
        producer
            .publish("no spaces", Bytes::from_static(b"x"))
            .await,
        Err(Error::InvalidTopic(_))
    ));
    assert!(matches!(
        producer.publish(TOPIC, Bytes::new()).await,
        Err(Error::EmptyBody)
    ));
    assert!(producer.publish_many(TOPIC, Vec::new()).await.is_ok());
    assert_eq!(
        nsqd.server_stats().connections_accepted,
        0,
        "connects lazily"
    );
}
