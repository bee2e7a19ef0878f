//! A store outage with the NSQ bus: messages whose effect cannot be written are REQueued
//! (never dropped, never FINished), without spinning, and applied once the store is back.
//! Uses a `redis-server` of the test's own; skipped when there is none, unless `CI=true`.

use std::time::Duration;

use galopush_protocol::TermType;

use crate::common::redis::OwnRedis;
use crate::harness::*;

#[tokio::test]
async fn a_store_outage_requeues_without_spinning_and_resumes_when_the_store_is_back() {
    let Some(mut redis) = OwnRedis::start(None).await else {
        return;
    };
    let nsq = Nsq::start().await;
    let url = redis.url();
    let g = Gateway::start(&nsq, &[("store.kind", "redis"), ("store.redis_url", &url)]).await;

    redis.kill().await;
    let login = serde_json::json!({
        "uid": "roy", "termtype": 16, "code": "c-roy", "deviceToken": "", "online": true
    });
    nsq.publish("userOnlineState", login.to_string());
    nsq.wait("userOnlineState", "a REQ while the store is down", |s| {
        s.requeued >= 1
    })
    .await;
    // The outage goes on: the message is retried with growing delays, not in a loop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = nsq.stats("userOnlineState");
    assert_eq!(during.finished, 0, "{during:?}");
    assert!(during.requeued <= 4, "requeued too eagerly: {during:?}");
    assert!(g.bus_metric("userOnlineState", "requeued").await >= 1.0);

    redis.run().await.expect("redis-server restarts");
    nsq.wait("userOnlineState", "finished once the store is back", |s| {
        s.finished == 1 && s.in_flight == 0 && s.deferred == 0 && s.depth == 0
    })
    .await;
    // The record was written: the terminal can register with it.
    let _roy = g.register("roy", "c-roy", TermType::Pc).await;
}
