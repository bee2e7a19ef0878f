//! What galopush publishes to nsqd: msgUpward (base64 or raw JSON) and `/pub`, `/mpub`.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_protocol::message::Down;
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn msg_upward_is_base64_json_by_default_and_raw_json_without_base64() {
    for base64 in [true, false] {
        let nsq = Nsq::start().await;
        let setting = if base64 { "true" } else { "false" };
        let g = Gateway::start(&nsq, &[("bus.base64", setting)]).await;
        let mut t = g.terminal(&nsq, "ivy", TermType::Ios).await;
        t.send_im(Bytes::from("hello business")).await.expect("im");
        // IMRESP 0 means nsqd has it.
        assert_eq!(next(&mut t).await.1, Down::ImResp { code: 0 });
        let published = nsq.nsqd.published("msgUpward");
        assert_eq!(published.len(), 1, "{published:?}");
        let json = if base64 {
            STANDARD.decode(&published[0]).expect("base64 body")
        } else {
            assert_eq!(published[0].first(), Some(&b'{'), "raw JSON");
            published[0].to_vec()
        };
        let msg: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        assert_eq!(
            msg,
            json!({"uid": "ivy", "termtype": 2, "body": "hello business"})
        );
    }
}

#[tokio::test]
async fn pub_and_mpub_publish_to_nsqd() {
    let nsq = Nsq::start().await;
    let g = Gateway::start(&nsq, &[]).await;
    let mut t = g.terminal(&nsq, "pia", TermType::Android).await;
    let line = |b: &str| Nsq::down("pia", 1, b);

    assert_eq!(g.post("/pub", "push", line("via pub")).await.0, 200);
    assert_eq!(nsq.nsqd.published("push"), [Bytes::from(line("via pub"))]);
    // Consumed back from nsqd like any business message.
    assert_eq!(body(&next_acked(&mut t).await.1), Bytes::from("via pub"));

    let (status, reason) = g.post("/pub", "push", "{not json").await;
    assert_eq!(status, 400, "{reason}");
    let (status, reason) = g
        .post(
            "/pub",
            "sessionTimeout",
            json!({"backTopic": "a b", "key": "k", "msg": {"ctype": 1, "uid": "u"}}).to_string(),
        )
        .await;
    assert_eq!(status, 400, "{reason}");
    assert!(reason.contains("backTopic"), "{reason}");
    assert_eq!(g.post("/pub", "no topic!", "x").await.0, 400);
    assert_eq!(g.post("/pub", "push", "").await.0, 400);
    assert_eq!(
        nsq.nsqd.published("push").len(),
        1,
        "nothing malformed published"
    );

    // Other topics are published as they are.
    assert_eq!(g.post("/pub", "businessEvents", "any bytes").await.0, 200);
    assert_eq!(
        nsq.nsqd.published("businessEvents"),
        [Bytes::from("any bytes")]
    );

    let (status, reason) = g
        .post("/mpub", "push", format!("{}\n{{bad\n", line("never")))
        .await;
    assert_eq!(status, 400);
    assert!(reason.contains("line 2"), "{reason}");
    let two = format!("{}\n{}\n", line("mpub 1"), line("mpub 2"));
    assert_eq!(g.post("/mpub", "push", two).await.0, 200);
    assert_eq!(nsq.nsqd.published("push").len(), 3);
    let got: BTreeSet<Bytes> = [
        body(&next_acked(&mut t).await.1),
        body(&next_acked(&mut t).await.1),
    ]
    .into();
    assert_eq!(got, [Bytes::from("mpub 1"), Bytes::from("mpub 2")].into());

    // nsqd refusing the message is a 503; the next one goes through again.
    nsq.nsqd.set_fail_publishes(true);
    let (status, reason) = g.post("/pub", "push", line("refused")).await;
    assert_eq!(status, 503, "{reason}");
    nsq.nsqd.set_fail_publishes(false);
    assert_eq!(g.post("/pub", "push", line("accepted")).await.0, 200);
    assert_eq!(body(&next_acked(&mut t).await.1), Bytes::from("accepted"));
    nsq.wait_finished("push", 4).await;
}
