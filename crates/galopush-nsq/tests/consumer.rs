//! Consumer tests over real sockets against the fake nsqd/nsqlookupd: delivery, FIN, REQ,
//! TOUCH and auto-touch, timeouts, heartbeats, RDY, reconnection, discovery and garbage input.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::{
    direct_config, eventually, fast_connection, init_tracing, message_within, next_message, ok,
    within,
};
use galopush_nsq::fake::{FakeLookupd, FakeNsqd};
use galopush_nsq::{Consumer, ConsumerConfig, Producer, ProducerConfig};
use tokio::time::Instant;

const TOPIC: &str = "events";
const CHANNEL: &str = "galopush";

async fn fake_nsqd() -> FakeNsqd {
    ok("start fake nsqd", FakeNsqd::start().await)
}

fn consumer(config: ConsumerConfig) -> Consumer {
    ok("start consumer", Consumer::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_message_is_consumed_and_finished() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let producer = ok(
        "producer",
        Producer::new(ProducerConfig::new(nsqd.tcp_address())),
    );
    within(
        "publish",
        producer.publish(TOPIC, Bytes::from_static(b"hello")),
    )
    .await
    .unwrap_or_else(|e| panic!("publish: {e}"));
    let mut consumer = consumer(direct_config(&nsqd.tcp_address(), TOPIC, CHANNEL));
    let message = next_message(&mut consumer).await;
    assert_eq!(message.body, Bytes::from_static(b"hello"));
    assert_eq!(message.attempts, 1);
    assert!(message.timestamp > 0);
    assert_eq!(message.nsqd_address(), nsqd.tcp_address());
    message.fin();
    eventually("the FIN reached nsqd", || {
        let stats = nsqd.stats(TOPIC, CHANNEL);
        stats.finished == 1 && stats.in_flight == 0 && stats.depth == 0
    })
    .await;
    within("stop", consumer.stop()).await;
    eventually("the consumer closed with CLS", || {
        let stats = nsqd.server_stats();
        stats.cls_commands == 1 && nsqd.stats(TOPIC, CHANNEL).clients == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpub_messages_are_all_consumed() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let mut consumer = consumer(direct_config(&nsqd.tcp_address(), TOPIC, CHANNEL));
    let producer = ok(
        "producer",
        Producer::new(ProducerConfig::new(nsqd.tcp_address())),
    );
    let bodies: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("m{i}"))).collect();
    within("publish_many", producer.publish_many(TOPIC, bodies.clone()))
        .await
        .unwrap_or_else(|e| panic!("publish_many: {e}"));
    assert_eq!(nsqd.server_stats().mpub_commands, 1);
    let mut received = BTreeSet::new();
    for _ in 0..5 {
        let message = next_message(&mut consumer).await;
        received.insert(message.body.clone());
        message.fin();
    }
    assert_eq!(received, bodies.into_iter().collect());
    eventually("all FINs reached nsqd", || {
        nsqd.stats(TOPIC, CHANNEL).finished == 5
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_consumer_sends_rdy_0_and_takes_nothing_until_resumed() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let mut config = direct_config(&nsqd.tcp_address(), TOPIC, CHANNEL);
    config.max_in_flight = 8;
    let mut consumer = consumer(config);
    nsqd.publish(TOPIC, "before");
    next_message(&mut consumer).await.fin();
    // A connection starts at RDY 1 and gets its share once subscribed.
    eventually("RDY 8", || nsqd.stats(TOPIC, CHANNEL).ready == 8).await;
    consumer.set_paused(true);
    eventually("nsqd got RDY 0", || nsqd.stats(TOPIC, CHANNEL).ready == 0).await;
    for i in 0..3 {
        nsqd.publish(TOPIC, format!("while paused {i}"));
    }
    assert!(
        message_within(&mut consumer, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing is sent with RDY 0"
    );
    assert_eq!(nsqd.stats(TOPIC, CHANNEL).depth, 3, "kept by nsqd");
    consumer.set_paused(false);
    for _ in 0..3 {
        next_message(&mut consumer).await.fin();
    }
    eventually("RDY 8 again", || nsqd.stats(TOPIC, CHANNEL).ready == 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn req_redelivers_after_the_delay_with_one_more_attempt() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let mut consumer = consumer(direct_config(&nsqd.tcp_address(), TOPIC, CHANNEL));
    nsqd.publish(TOPIC, "retry me");
    let first = next_message(&mut consumer).await;
    let id = first.id;
    let requeued_at = Instant::now();
    first.req(Duration::from_millis(300));
    let second = next_message(&mut consumer).await;
    assert!(
        requeued_at.elapsed() >= Duration::from_millis(250),
        "redelivered before the REQ delay"
    );
    assert_eq!(second.id, id);
    assert_eq!(second.attempts, 2);
    assert_eq!(second.body, Bytes::from_static(b"retry me"));
    second.fin();
    eventually("nsqd counted the REQ and the FIN", || {
        let stats = nsqd.stats(TOPIC, CHANNEL);
        stats.requeued == 1 && stats.finished == 1 && stats.deferred == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_keeps_a_message_past_its_msg_timeout() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let mut config = direct_config(&nsqd.tcp_address(), TOPIC, CHANNEL);
    config.msg_timeout = Some(Duration::from_millis(400));
    let mut consumer = consumer(config);
    nsqd.publish(TOPIC, "slow");
    let message = next_message(&mut consumer).await;
    // Held for 1.2 s, three times the msg_timeout, touched every 150 ms.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        message.touch();
    }
    eventually("the TOUCHes reached nsqd", || {
        nsqd.stats(TOPIC, CHANNEL).touched >= 8
    })
    .await;
    assert_eq!(nsqd.stats(TOPIC, CHANNEL).timed_out, 0);
    message.fin();
    eventually("the FIN reached nsqd", || {
        nsqd.stats(TOPIC, CHANNEL).finished == 1
    })
    .await;
    assert!(
        message_within(&mut consumer, Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_touch_keeps_a_held_message_alive() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let mut config = direct_config(&nsqd.tcp_address(), TOPIC, CHANNEL);
    config.msg_timeout = Some(Duration::from_millis(400));
    config.auto_touch = true;
    let mut consumer = consumer(config);
    nsqd.publish(TOPIC, "held");
    let message = next_message(&mut consumer).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = nsqd.stats(TOPIC, CHANNEL);
    assert_eq!(stats.timed_out, 0, "{stats:?}");
    assert!(stats.touched >= 2, "{stats:?}");
    message.fin();
    eventually("the FIN reached nsqd", || {
        nsqd.stats(TOPIC, CHANNEL).finished == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_message_is_redelivered_after_msg_timeout() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let mut config = direct_config(&nsqd.tcp_address(), TOPIC, CHANNEL);
    config.msg_timeout = Some(Duration::from_millis(300));
    let mut consumer = consumer(config);
    nsqd.publish(TOPIC, "forgotten");
    let first = next_message(&mut consumer).await;
    let second = next_message(&mut consumer).await;
    assert_eq!(second.id, first.id);
    assert_eq!(second.attempts, first.attempts + 1);
    assert!(nsqd.stats(TOPIC, CHANNEL).timed_out >= 1);
    drop(first);
    second.fin();
    eventually("the FIN reached nsqd", || {
        let stats = nsqd.stats(TOPIC, CHANNEL);
        stats.finished == 1 && stats.in_flight == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_answered_and_the_connection_survives() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let mut config = direct_config(&nsqd.tcp_address(), TOPIC, CHANNEL);
    config.connection.heartbeat_interval = Duration::from_millis(200);
    let mut consumer = consumer(config);
    eventually("several heartbeats were answered", || {
        nsqd.stats(TOPIC, CHANNEL).heartbeats_answered >= 5
    })
    .await;
    assert_eq!(nsqd.server_stats().connections_accepted, 1);
    nsqd.publish(TOPIC, "still there");
    let message = next_message(&mut consumer).await;
    assert_eq!(message.body, Bytes::from_static(b"still there"));
    message.fin();
    assert_eq!(nsqd.server_stats().connections_accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_unanswered_messages() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let mut config = direct_config(&nsqd.tcp_address(), TOPIC, CHANNEL);
    config.max_in_flight = 2;
    let mut consumer = consumer(config);
    for i in 0..5 {
        nsqd.publish(TOPIC, format!("m{i}"));
    }
    let first = next_message(&mut consumer).await;
    let _second = next_message(&mut consumer).await;
    assert!(
        message_within(&mut consumer, Duration::from_millis(300))
            .await
            .is_none(),
        "more than max_in_flight messages delivered"
    );
    let stats = nsqd.stats(TOPIC, CHANNEL);
    assert_eq!((stats.in_flight, stats.depth), (2, 3));
    first.fin();
    let third = next_message(&mut consumer).await;
    third.fin();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_is_spread_over_connections() {
    init_tracing();
    let first = fake_nsqd().await;
    let second = fake_nsqd().await;
    let mut config = ConsumerConfig::new(TOPIC, CHANNEL);
    config.nsqd_tcp_addresses = vec![first.tcp_address(), second.tcp_address()];
    config.max_in_flight = 3;
    config.connection = fast_connection();
    let mut consumer = consumer(config);
    eventually("both connections subscribed", || {
        first.stats(TOPIC, CHANNEL).clients == 1 && second.stats(TOPIC, CHANNEL).clients == 1
    })
    .await;
    for i in 0..4 {
        first.publish(TOPIC, format!("a{i}"));
        second.publish(TOPIC, format!("b{i}"));
    }
    let mut held = Vec::new();
    while let Some(message) = message_within(&mut consumer, Duration::from_millis(500)).await {
        held.push(message);
    }
    assert_eq!(held.len(), 3, "max_in_flight 3 over two connections");
    let in_flight = (
        first.stats(TOPIC, CHANNEL).in_flight,
        second.stats(TOPIC, CHANNEL).in_flight,
    );
    assert!(
        in_flight == (1, 2) || in_flight == (2, 1),
        "each connection gets a share: {in_flight:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_nsqd_restarts_without_losing_messages() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let mut consumer = consumer(direct_config(&nsqd.tcp_address(), TOPIC, CHANNEL));
    for i in 0..3 {
        nsqd.publish(TOPIC, format!("m{i}"));
    }
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(next_message(&mut consumer).await);
    }
    nsqd.stop().await;
    // The connection that delivered these is gone: answering them sends nothing.
    for message in held {
        message.fin();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    ok("restart", nsqd.restart().await);
    // Everything is redelivered on the new connection. A message that was still queued in
    // the consumer at the stop also arrives (its FIN goes nowhere): at-least-once.
    let mut bodies = BTreeSet::new();
    within("every message finished after the restart", async {
        while nsqd.stats(TOPIC, CHANNEL).finished < 3 {
            if let Some(message) = message_within(&mut consumer, Duration::from_millis(100)).await {
                bodies.insert(message.body.clone());
                message.fin();
            }
        }
    })
    .await;
    assert_eq!(
        bodies,
        [&b"m0"[..], b"m1", b"m2"]
            .into_iter()
            .map(Bytes::from_static)
            .collect()
    );
    let stats = nsqd.stats(TOPIC, CHANNEL);
    assert_eq!((stats.in_flight, stats.depth), (0, 0), "{stats:?}");
    assert!(nsqd.server_stats().connections_accepted >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookupd_discovery_joins_new_and_drops_removed_producers() {
    init_tracing();
    let lookupd = ok("start fake nsqlookupd", FakeLookupd::start().await);
    let first = fake_nsqd().await;
    lookupd.register(TOPIC, first.addr());
    let mut config = ConsumerConfig::new(TOPIC, CHANNEL);
    config.lookupd_http_addresses = vec![format!("http://{}", lookupd.http_address())];
    config.lookup_interval = Duration::from_millis(200);
    config.connection = fast_connection();
    let mut consumer = consumer(config);

    first.publish(TOPIC, "from first");
    let message = next_message(&mut consumer).await;
    assert_eq!(message.body, Bytes::from_static(b"from first"));
    message.fin();

    let second = fake_nsqd().await;
    lookupd.register(TOPIC, second.addr());
    second.publish(TOPIC, "from second");
    let message = next_message(&mut consumer).await;
    assert_eq!(message.body, Bytes::from_static(b"from second"));
    assert_eq!(message.nsqd_address(), second.tcp_address());
    message.fin();

    lookupd.unregister(TOPIC, first.addr());
    eventually("the removed nsqd's connection closed with CLS", || {
        first.server_stats().cls_commands == 1 && first.server_stats().connections == 0
    })
    .await;
    first.publish(TOPIC, "not consumed");
    second.publish(TOPIC, "still consumed");
    let message = next_message(&mut consumer).await;
    assert_eq!(message.body, Bytes::from_static(b"still consumed"));
    message.fin();
    assert!(
        message_within(&mut consumer, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(
        first.server_stats().connections,
        0,
        "no reconnect to a removed nsqd"
    );
    assert!(lookupd.lookups() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_nsqd_causes_a_reconnect_not_a_panic() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    let mut consumer = consumer(direct_config(&nsqd.tcp_address(), TOPIC, CHANNEL));
    eventually("subscribed", || nsqd.stats(TOPIC, CHANNEL).clients == 1).await;

    // A frame size far beyond max_frame_size.
    nsqd.send_raw_to_clients(&b"\xff\xff\xff\xf0rest"[..]);
    eventually("reconnected after the oversized frame", || {
        nsqd.server_stats().connections_accepted == 2 && nsqd.stats(TOPIC, CHANNEL).clients == 1
    })
    .await;

    // A frame of unknown type 9.
    nsqd.send_raw_to_clients(&b"\x00\x00\x00\x05\x00\x00\x00\x09x"[..]);
    eventually("reconnected after the unknown frame type", || {
        nsqd.server_stats().connections_accepted == 3 && nsqd.stats(TOPIC, CHANNEL).clients == 1
    })
    .await;

    // A message frame too short to hold a message header.
    nsqd.send_raw_to_clients(&b"\x00\x00\x00\x08\x00\x00\x00\x02abcd"[..]);
    eventually("reconnected after the truncated message", || {
        nsqd.server_stats().connections_accepted == 4 && nsqd.stats(TOPIC, CHANNEL).clients == 1
    })
    .await;

    nsqd.publish(TOPIC, "after the garbage");
    let message = next_message(&mut consumer).await;
    assert_eq!(message.body, Bytes::from_static(b"after the garbage"));
    message.fin();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_retries_an_nsqd_that_is_not_up_yet() {
    init_tracing();
    let nsqd = fake_nsqd().await;
    nsqd.stop().await;
    let mut consumer = consumer(direct_config(&nsqd.tcp_address(), TOPIC, CHANNEL));
    tokio::time::sleep(Duration::from_millis(300)).await;
    ok("restart", nsqd.restart().await);
    nsqd.publish(TOPIC, "late");
    let message = next_message(&mut consumer).await;
    assert_eq!(message.body, Bytes::from_static(b"late"));
    message.fin();
}

#[tokio::test]
async fn invalid_configuration_is_refused() {
    let mut config = ConsumerConfig::new("bad topic", CHANNEL);
    config.nsqd_tcp_addresses = vec!["127.0.0.1:4150".to_owned()];
    assert!(matches!(
        Consumer::new(config),
        Err(galopush_nsq::Error::InvalidTopic(_))
    ));
    let mut config = ConsumerConfig::new(TOPIC, "");
    config.nsqd_tcp_addresses = vec!["127.0.0.1:4150".to_owned()];
    assert!(matches!(
        Consumer::new(config),
        Err(galopush_nsq::Error::InvalidChannel(_))
    ));
    assert!(matches!(
        Consumer::new(ConsumerConfig::new(TOPIC, CHANNEL)),
        Err(galopush_nsq::Error::Config(_))
    ));
}
