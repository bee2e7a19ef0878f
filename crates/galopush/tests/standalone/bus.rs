//! SPEC §7 and §8 on the embedded bus: `/pub` and `/mpub` validation, IMs up to the webhook,
//! webhook retries, and sessionTimeout answers.

use std::time::Duration;

use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_protocol::message::Down;
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn malformed_pub_is_400_and_the_server_keeps_serving() {
    let g = Gateway::start(&[]).await;
    let mut t = g.terminal("nia", TermType::Android, TCP).await;
    for (topic, body) in [
        ("push", "{not json"),
        ("push", r#"{"receivers":[{"uid":"nia"}],"body":"x"}"#),
        (
            "userOnlineState",
            r#"{"uid":"nia","termtype":3,"code":"c","online":true}"#,
        ),
        (
            "sessionTimeout",
            r#"{"key":"k","msg":{"ctype":1,"uid":"u","sessionId":"s","flag":0}}"#,
        ),
        ("push", ""),
    ] {
        let (status, reason) = g.publish(topic, body).await;
        assert_eq!(status, 400, "{topic}: {body}");
        assert!(!reason.is_empty(), "400 says why");
    }
    let (status, reason) = g.publish("nosuchtopic", "{}").await;
    assert_eq!(status, 400);
    assert!(reason.contains("unknown topic"), "{reason}");
    g.send_down("push", "nia", 1, "still fine").await;
    assert_eq!(
        push(&next_acked(&mut t).await.1).2,
        Bytes::from("still fine")
    );
}

#[tokio::test]
async fn base64_bodies_are_accepted_like_raw_ones() {
    use base64::Engine;
    let g = Gateway::start(&[]).await;
    let mut t = g.terminal("oz", TermType::Pc, TCP).await;
    let body = json!({"receivers": [{"uid": "oz", "termtype": 16}], "flag": 0, "body": "b64"});
    let encoded = base64::engine::general_purpose::STANDARD.encode(body.to_string());
    g.publish_ok("push", encoded).await;
    assert_eq!(push(&next_acked(&mut t).await.1).2, Bytes::from("b64"));
}

#[tokio::test]
async fn mpub_takes_all_lines_or_none() {
    let g = Gateway::start(&[]).await;
    let mut t = g.terminal("pia", TermType::Android, TCP).await;
    let line =
        |b: &str| json!({"receivers": [{"uid": "pia", "termtype": 1}], "body": b}).to_string();
    let bad = format!("{}\n{}\n{{oops\n", line("x"), line("y"));
    let r = g
        .client()
        .post(format!("{}/mpub?topic=push", g.api))
        .body(bad)
        .send()
        .await
        .expect("mpub");
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.expect("text").contains("line 3"));
    let good = format!("{}\n{}\n{}\n", line("one"), line("two"), line("three"));
    let r = g
        .client()
        .post(format!("{}/mpub?topic=push", g.api))
        .body(good)
        .send()
        .await
        .expect("mpub");
    assert_eq!(r.status().as_u16(), 200);
    for expected in ["one", "two", "three"] {
        assert_eq!(
            push(&next_acked(&mut t).await.1).2,
            Bytes::from(expected),
            "in order"
        );
    }
    nothing_for(&mut t, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn im_from_a_terminal_reaches_the_webhook_as_msg_upward() {
    let hook = Webhook::start(0).await;
    let g = Gateway::start(&[("bus.webhook_url", &hook.url)]).await;
    let mut t = g.terminal("quinn", TermType::Ios, TCP).await;
    let tid = t.send_im(Bytes::from("hello business")).await.expect("im");
    let (got, down) = next(&mut t).await;
    assert_eq!((got, down), (tid, Down::ImResp { code: 0 }));
    let received = hook.wait_for(1).await;
    assert_eq!(received[0].0, "msgUpward");
    assert_eq!(
        received[0].1,
        json!({"uid": "quinn", "termtype": 2, "body": "hello business"})
    );
    let mut web = g.terminal("quinn", TermType::Web, WEB).await;
    web.send_im(Bytes::from("from web")).await.expect("im");
    assert_eq!(next(&mut web).await.1, Down::ImResp { code: 0 });
    assert_eq!(hook.wait_for(2).await[1].1["termtype"], 8);
}

#[tokio::test]
async fn webhook_failures_are_retried_until_delivered() {
    let hook = Webhook::start(3).await;
    let g = Gateway::start(&[("bus.webhook_url", &hook.url)]).await;
    let mut t = g.terminal("rae", TermType::Pc, TCP).await;
    t.send_im(Bytes::from("persist")).await.expect("im");
    assert_eq!(
        next(&mut t).await.1,
        Down::ImResp { code: 0 },
        "accepted once durable"
    );
    let received = hook.wait_for(1).await;
    assert_eq!(received[0].1["body"], "persist");
    g.wait_metric("galopush_webhook_total{result=\"failed\"}", 3.0)
        .await;
    g.wait_metric_falls_to("galopush_outbox_pending", 0.0).await;
}

#[tokio::test]
async fn session_timeout_is_answered_on_its_back_topic() {
    let hook = Webhook::start(0).await;
    let g = Gateway::start(&[("bus.webhook_url", &hook.url)]).await;
    let _t = g.terminal("sam", TermType::Android, TCP).await;
    let question = |uid: &str, ctype: u8| {
        json!({"backTopic": "timeouts", "key": format!("k-{uid}"), "extra": [1, 2],
               "msg": {"ctype": ctype, "uid": uid, "sessionId": "s1", "flag": 0}})
    };
    g.publish_ok("sessionTimeout", question("sam", 1).to_string())
        .await;
    g.publish_ok("sessionTimeout", question("sam", 16).to_string())
        .await;
    let answers = hook.wait_for(2).await;
    assert!(answers.iter().all(|(topic, _)| topic == "timeouts"));
    let live = answers
        .iter()
        .find(|(_, a)| a["msg"]["ctype"] == 1)
        .expect("ctype 1");
    let dead = answers
        .iter()
        .find(|(_, a)| a["msg"]["ctype"] == 16)
        .expect("ctype 16");
    let mut expected = question("sam", 1);
    expected["msg"]["flag"] = json!(1);
    assert_eq!(live.1, expected, "same object, flag set");
    assert_eq!(dead.1, question("sam", 16), "flag left as received");
}
