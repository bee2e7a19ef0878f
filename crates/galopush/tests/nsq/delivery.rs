//! Inbound topics consumed from NSQ: delivery to a terminal with the FIN only after the ack,
//! base64 and raw bodies, poison messages, and consuming from nsqd without nsqlookupd.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use galopush_protocol::TermType;

use crate::harness::*;

#[tokio::test]
async fn a_push_from_nsq_reaches_the_terminal_and_is_finished_only_after_the_ack() {
    let nsq = Nsq::start().await;
    let g = Gateway::start(&nsq, &[]).await;
    // The login record is FINished once it is in the store.
    let mut t = g.terminal(&nsq, "ann", TermType::Android).await;
    nsq.publish("push", Nsq::down("ann", 1, "hello from the business"));
    let (tid, down) = next(&mut t).await;
    assert_eq!(body(&down), Bytes::from("hello from the business"));
    // Delivered, not acked: nsqd still has it in flight.
    let held = nsq.stats("push");
    assert_eq!((held.finished, held.in_flight), (0, 1), "{held:?}");
    t.ack(tid, &down).await.expect("ack");
    nsq.wait("push", "finished after the ack", |s| {
        s.finished == 1 && s.in_flight == 0 && s.requeued == 0
    })
    .await;
    assert_eq!(g.bus_metric("push", "retired").await, 1.0);
    assert_eq!(g.bus_metric("userOnlineState", "retired").await, 1.0);
}

#[tokio::test]
async fn base64_and_raw_bodies_are_both_consumed() {
    let nsq = Nsq::start().await;
    let g = Gateway::start(&nsq, &[]).await;
    // A login record in base64, as the original business side writes it.
    let login = serde_json::json!({
        "uid": "bob", "termtype": 16, "code": "c-bob", "deviceToken": "", "online": true
    });
    nsq.publish("userOnlineState", STANDARD.encode(login.to_string()));
    nsq.wait_finished("userOnlineState", 1).await;
    let mut t = g.register("bob", "c-bob", TermType::Pc).await;
    nsq.publish("push", STANDARD.encode(Nsq::down("bob", 16, "base64 push")));
    nsq.publish("callback", Nsq::down("bob", 16, "raw callback"));
    let mut got = vec![
        body(&next_acked(&mut t).await.1),
        body(&next_acked(&mut t).await.1),
    ];
    got.sort();
    assert_eq!(
        got,
        [Bytes::from("base64 push"), Bytes::from("raw callback")]
    );
    nsq.wait_finished("push", 1).await;
    nsq.wait_finished("callback", 1).await;
}

#[tokio::test]
async fn a_poison_message_is_finished_and_counted_as_malformed() {
    let nsq = Nsq::start().await;
    let g = Gateway::start(&nsq, &[]).await;
    let mut t = g.terminal(&nsq, "cy", TermType::Ios).await;
    nsq.publish("push", "{not json");
    nsq.publish(
        "push",
        STANDARD.encode(r#"{"receivers":[{"uid":"cy"}],"body":"x"}"#),
    );
    // A question that could never be answered: nsqd refuses this backTopic.
    nsq.publish(
        "sessionTimeout",
        r#"{"backTopic":"no such topic!","key":"k","msg":{"ctype":2,"uid":"cy","sessionId":"s","flag":0}}"#,
    );
    nsq.wait("push", "both poison messages finished", |s| {
        s.finished == 2 && s.requeued == 0 && s.in_flight == 0
    })
    .await;
    nsq.wait("sessionTimeout", "the poison question finished", |s| {
        s.finished == 1 && s.requeued == 0
    })
    .await;
    assert_eq!(g.bus_metric("push", "malformed").await, 2.0);
    assert_eq!(g.bus_metric("sessionTimeout", "malformed").await, 1.0);
    assert_eq!(g.bus_metric("push", "requeued").await, 0.0);
    // The gateway keeps serving.
    nsq.publish("push", Nsq::down("cy", 2, "still fine"));
    assert_eq!(body(&next_acked(&mut t).await.1), Bytes::from("still fine"));
    nsq.wait_finished("push", 3).await;
}

#[tokio::test]
async fn without_nsqlookupd_it_consumes_from_nsqd_directly() {
    let nsq = Nsq::start().await;
    let g = Gateway::start(&nsq, &[("bus.nsqlookupd_http", "")]).await;
    let mut t = g.terminal(&nsq, "dee", TermType::WinPhone).await;
    nsq.publish("msgDownward", Nsq::down("dee", 4, "direct"));
    let (tid, down) = next(&mut t).await;
    assert_eq!(
        down,
        galopush_protocol::message::Down::Im {
            flag: 0,
            msg: Bytes::from("direct")
        }
    );
    t.ack(tid, &down).await.expect("ack");
    nsq.wait_finished("msgDownward", 1).await;
    assert_eq!(nsq.lookupd.lookups(), 0, "nsqlookupd was not asked");
}
