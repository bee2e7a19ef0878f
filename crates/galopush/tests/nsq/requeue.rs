//! REQ when an effect cannot be made durable, and the connections kept alive by answering
//! heartbeats.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use galopush_protocol::TermType;
use serde_json::json;

use crate::harness::*;

/// A sessionTimeout's effect is its answer published on the back topic. While nsqd refuses
/// publishes, the answer is not durable: the question is REQueued, not FINished, and answered
/// once nsqd takes publishes again.
#[tokio::test]
async fn a_message_whose_effect_is_not_durable_is_requeued_then_finished() {
    let nsq = Nsq::start().await;
    let g = Gateway::start(&nsq, &[]).await;
    let _live = g.terminal(&nsq, "sam", TermType::Android).await;
    nsq.nsqd.set_fail_publishes(true);
    let question = json!({
        "backTopic": "timeoutAnswers", "key": "k1",
        "msg": {"ctype": 1, "uid": "sam", "sessionId": "s1", "flag": 0}
    });
    nsq.publish("sessionTimeout", question.to_string());
    nsq.wait("sessionTimeout", "a REQ", |s| s.requeued >= 1)
        .await;
    assert_eq!(nsq.stats("sessionTimeout").finished, 0);
    assert!(g.bus_metric("sessionTimeout", "requeued").await >= 1.0);
    assert!(nsq.nsqd.published("timeoutAnswers").is_empty());

    nsq.nsqd.set_fail_publishes(false);
    nsq.wait("sessionTimeout", "finished after the retry", |s| {
        s.finished == 1 && s.in_flight == 0 && s.deferred == 0
    })
    .await;
    let answers = nsq.nsqd.published("timeoutAnswers");
    assert_eq!(answers.len(), 1, "{answers:?}");
    let answer: serde_json::Value =
        serde_json::from_slice(&STANDARD.decode(&answers[0]).expect("base64")).expect("JSON");
    let mut expected = question;
    expected["msg"]["flag"] = json!(1);
    assert_eq!(answer, expected, "the same object, flag 1: sam is live");
    assert!(g.bus_metric("sessionTimeout", "retired").await >= 1.0);
}

#[tokio::test]
async fn heartbeats_are_answered_and_the_connections_stay_up() {
    let nsq = Nsq::start().await;
    let g = Gateway::start(&nsq, &[("bus.heartbeat_interval", "1s")]).await;
    for topic in INBOUND {
        nsq.wait(topic, "a subscriber", |s| s.clients == 1).await;
    }
    let connections = nsq.nsqd.server_stats().connections_accepted;
    // nsqd drops a client that stays silent for two intervals; these answered three.
    for topic in INBOUND {
        nsq.wait(topic, "3 heartbeats answered", |s| {
            s.heartbeats_answered >= 3
        })
        .await;
    }
    assert_eq!(
        nsq.nsqd.server_stats().connections_accepted,
        connections,
        "no connection was dropped and reopened"
    );
    let mut t = g.terminal(&nsq, "hal", TermType::Pc).await;
    nsq.publish("push", Nsq::down("hal", 16, "after the heartbeats"));
    assert_eq!(
        body(&next_acked(&mut t).await.1),
        bytes::Bytes::from("after the heartbeats")
    );
}
