//! Delivery reports (SPEC §12): `acked` when a terminal acks a message, live or from the store;
//! `stored` when it is kept offline (at once, or after a live delivery timed out); `dropped`
//! when nothing was kept; the `id` of the down-message repeated, `null` without one; at least
//! once when the outbox refuses a report; and nothing at all without `topics.delivery_report`.

use std::time::Duration;

use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_protocol::message::Down;
use serde_json::{Value, json};

use crate::harness::{Gateway, TCP, WEB, Webhook, next, next_acked, nothing_for, push};

const TOPIC: &str = "deliveryReport";

/// A gateway that reports to `hook`, with `settings` on top.
async fn reporting(hook: &Webhook, settings: &[(&str, &str)]) -> Gateway {
    let mut all = vec![
        ("bus.webhook_url", hook.url.as_str()),
        ("topics.delivery_report", TOPIC),
    ];
    all.extend_from_slice(settings);
    Gateway::start(&all).await
}

/// Publishes a down-message with an `id` to one receiver.
async fn send_with_id(g: &Gateway, topic: &str, uid: &str, mask: u8, body: &str, id: &str) {
    g.publish_ok(
        topic,
        json!({"receivers": [{"uid": uid, "termtype": mask}], "flag": 0, "body": body, "id": id})
            .to_string(),
    )
    .await;
}

/// The reports among the first `n` webhook messages, each checked for its topic and a
/// plausible `at`, with `at` taken out so the rest can be compared whole.
async fn reports(hook: &Webhook, n: usize) -> Vec<Value> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    hook.wait_for(n)
        .await
        .into_iter()
        .map(|(topic, mut report)| {
            assert_eq!(topic, TOPIC, "{report}");
            let at = report["at"].as_u64().expect("at is a number of ms");
            assert!(at.abs_diff(now) < 600_000, "at {at} is not near now {now}");
            report.as_object_mut().expect("an object").remove("at");
            report
        })
        .collect()
}

fn report(id: Value, uid: &str, termtype: u8, kind: &str, outcome: &str) -> Value {
    json!({"id": id, "uid": uid, "termtype": termtype, "kind": kind, "outcome": outcome})
}

#[tokio::test]
async fn an_acked_push_is_reported_acked_with_its_id() {
    let hook = Webhook::start(0).await;
    let g = reporting(&hook, &[]).await;
    let mut t = g.terminal("ada", TermType::Android, TCP).await;
    send_with_id(&g, "push", "ada", 1, "hello", "order-1").await;
    assert_eq!(push(&next_acked(&mut t).await.1).2, Bytes::from("hello"));
    assert_eq!(
        reports(&hook, 1).await,
        [report(json!("order-1"), "ada", 1, "push", "acked")]
    );
    g.wait_metric("galopush_delivery_reports_total{outcome=\"acked\"}", 1.0)
        .await;
}

#[tokio::test]
async fn an_offline_push_is_reported_stored_then_acked_when_the_terminal_takes_it() {
    let hook = Webhook::start(0).await;
    let g = reporting(&hook, &[]).await;
    g.login("bob", TermType::Ios, "code-bob").await;
    send_with_id(&g, "push", "bob", 2, "while away", "order-2").await;
    assert_eq!(
        reports(&hook, 1).await,
        [report(json!("order-2"), "bob", 2, "push", "stored")]
    );
    let mut t = g.register("bob", "code-bob", TermType::Ios, TCP).await;
    let (offline, _, body) = push(&next_acked(&mut t).await.1);
    assert_eq!((offline, body), (1, Bytes::from("while away")));
    // The stored copy does not keep the id: its ack is reported with `null`.
    assert_eq!(
        reports(&hook, 2).await[1],
        report(Value::Null, "bob", 2, "push", "acked")
    );
}

#[tokio::test]
async fn a_live_delivery_never_acked_is_reported_stored() {
    let hook = Webhook::start(0).await;
    let g = reporting(&hook, &[("delivery.callback_ack_timeout", "1s")]).await;
    let mut t = g.terminal("cid", TermType::Pc, TCP).await;
    send_with_id(&g, "callback", "cid", 16, "call me", "cb-1").await;
    assert_eq!(
        next(&mut t).await.1,
        Down::Callback {
            msg: Bytes::from("call me")
        }
    );
    assert_eq!(
        reports(&hook, 1).await,
        [report(json!("cb-1"), "cid", 16, "callback", "stored")]
    );
}

#[tokio::test]
async fn unknown_users_and_web_terminals_that_are_away_are_reported_dropped() {
    let hook = Webhook::start(0).await;
    let g = reporting(&hook, &[]).await;
    send_with_id(&g, "msgDownward", "nobody", 3, "lost", "im-1").await;
    assert_eq!(
        reports(&hook, 1).await,
        [report(json!("im-1"), "nobody", 3, "im", "dropped")]
    );
    let web = g.terminal("dee", TermType::Web, WEB).await;
    drop(web);
    g.wait_until("galopush_connections{termtype=\"Web\"}", |v| v == 0.0)
        .await;
    g.send_down("push", "dee", 8, "to the browser").await;
    assert_eq!(
        reports(&hook, 2).await[1],
        report(Value::Null, "dee", 8, "push", "dropped")
    );
}

#[tokio::test]
async fn an_id_longer_than_64_bytes_is_refused_as_malformed() {
    let hook = Webhook::start(0).await;
    let g = reporting(&hook, &[]).await;
    let mut t = g.terminal("eve", TermType::Android, TCP).await;
    let long = "x".repeat(65);
    let (status, text) = g
        .publish(
            "push",
            json!({"receivers": [{"uid": "eve", "termtype": 1}], "body": "b", "id": long})
                .to_string(),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("id"), "{text}");
    send_with_id(&g, "push", "eve", 1, "fits", &"y".repeat(64)).await;
    assert_eq!(push(&next_acked(&mut t).await.1).2, Bytes::from("fits"));
    assert_eq!(reports(&hook, 1).await[0]["id"], json!("y".repeat(64)));
}

#[tokio::test]
async fn a_report_the_outbox_refuses_brings_the_message_again() {
    // One outbound message may wait, and the webhook never takes it: the first report fills
    // the outbox, the second is refused, so its message is applied again.
    let g = Gateway::start(&[
        ("bus.webhook_url", "http://127.0.0.1:9/unreachable"),
        ("topics.delivery_report", TOPIC),
        ("limits.outbox_pending", "1"),
    ])
    .await;
    let mut t = g.terminal("fay", TermType::Android, TCP).await;
    g.send_down("push", "fay", 1, "first").await;
    assert_eq!(push(&next_acked(&mut t).await.1).2, Bytes::from("first"));
    g.wait_metric("galopush_outbox_pending", 1.0).await;
    g.send_down("push", "fay", 1, "second").await;
    assert_eq!(push(&next_acked(&mut t).await.1).2, Bytes::from("second"));
    g.wait_metric("galopush_refused_total{reason=\"outbox_pending\"}", 1.0)
        .await;
    assert_eq!(
        push(&next_acked(&mut t).await.1).2,
        Bytes::from("second"),
        "delivered again: its report was not taken"
    );
}

#[tokio::test]
async fn without_a_report_topic_nothing_is_reported() {
    let hook = Webhook::start(0).await;
    let g = Gateway::start(&[("bus.webhook_url", &hook.url)]).await;
    let mut t = g.terminal("gus", TermType::Android, TCP).await;
    g.send_down("push", "gus", 1, "quiet").await;
    assert_eq!(push(&next_acked(&mut t).await.1).2, Bytes::from("quiet"));
    g.send_down("push", "nobody", 1, "lost").await;
    g.wait_retired("push", 2).await;
    // An IM up after both: the webhook's first message is the IM, not a report.
    t.send_im(Bytes::from("after")).await.expect("im");
    assert_eq!(next(&mut t).await.1, Down::ImResp { code: 0 });
    let got = hook.wait_for(1).await;
    assert_eq!(got[0].0, "msgUpward", "{got:?}");
    nothing_for(&mut t, Duration::from_millis(200)).await;
    assert_eq!(hook.wait_for(1).await.len(), 1, "only the IM");
}
