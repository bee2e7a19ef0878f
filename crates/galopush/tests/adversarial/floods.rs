//! Floods (SPEC §10): a terminal that never reads while messages pour in, a terminal that
//! sends IMs without waiting for answers, and a business side that publishes faster than the
//! inbox drains. Each is refused where the bound says, and nothing accepted is lost.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use galopush_protocol::TermType;
use galopush_protocol::message::{Down, Up};
use tokio::io::AsyncWriteExt;

use crate::common::process::rss_kib;
use crate::harness::*;
use crate::raw;
use crate::{refused, still_serves};

fn im_body(down: &Down) -> Bytes {
    match down {
        Down::Im { msg, .. } => msg.clone(),
        other => panic!("expected IM, got {other:?}"),
    }
}

#[tokio::test]
async fn a_terminal_that_never_reads_is_closed_and_gets_everything_when_back() {
    const MESSAGES: usize = 200;
    let g = Gateway::start(&[
        ("limits.conn_queue_bytes", "65536"),
        ("delivery.max_offline_im", "500"),
        ("delivery.ack_timeout", "60s"),
        ("comet.write_timeout", "60s"),
    ])
    .await;
    let mut bystander = g.terminal("bystander", TermType::Android, TCP).await;
    g.login("sloth", TermType::Android, "code").await;
    // A terminal with a tiny receive buffer that registers and then reads nothing.
    let mut sloth = raw::connect(&g.tcp, None, Some(4096)).await;
    sloth
        .write_all(&raw::register("sloth", "code", TermType::Android))
        .await
        .expect("register");
    g.wait_until("galopush_connections{termtype=\"Android\"}", |v| v == 2.0)
        .await;
    let rss_before = rss_kib(g.pid());

    // 200 IMs of 32 KiB, 6.4 MB in all, far more than the socket buffers and the queue hold.
    let mut mpub = String::new();
    for i in 0..MESSAGES {
        let body = format!("{i:04}:{}", "x".repeat(32 * 1024));
        mpub.push_str(
            &serde_json::json!({"receivers": [{"uid": "sloth", "termtype": 1}], "flag": 0, "body": body})
                .to_string(),
        );
        mpub.push('\n');
    }
    let r = g
        .client()
        .post(format!("{}/mpub?topic=msgDownward", g.api))
        .body(mpub)
        .send()
        .await
        .expect("mpub");
    assert_eq!(r.status().as_u16(), 200);

    // Closed at the queue bound, not at comet.write_timeout (60 s).
    g.wait_until(&refused("conn_queue_bytes"), |v| v >= 1.0)
        .await;
    g.wait_until("galopush_connections{termtype=\"Android\"}", |v| v == 1.0)
        .await;
    g.wait_retired("msgDownward", MESSAGES as u64).await;
    drop(sloth);

    // Every message was kept offline and arrives when the terminal is back.
    let mut back = g.register("sloth", "code", TermType::Android, TCP).await;
    let mut got = BTreeSet::new();
    while got.len() < MESSAGES {
        let (tid, down) = next(&mut back).await;
        back.ack(tid, &down).await.expect("ack");
        got.insert(im_body(&down)[..4].to_vec());
    }
    assert_eq!(got.len(), MESSAGES);
    // The 6.4 MB went through the /mpub body, its parse, the inbox, the offline store (redb's
    // pages) and back out: 40-70 MiB of RSS, most of it freed memory jemalloc has not yet
    // returned. The terminal's own queue held at most limits.conn_queue_bytes of it.
    still_serves(&g, rss_before, 128 * 1024, &mut bystander, "bystander", 1).await;
}

#[tokio::test]
async fn an_im_flood_stops_being_read_and_a_full_outbox_answers_imresp_1() {
    const IMS: u32 = 3000;
    const OUTBOX: u32 = 1000;
    let g = Gateway::start(&[
        ("limits.outbox_pending", "1000"),
        ("limits.im_inflight", "8"),
    ])
    .await;
    let mut bystander = g.terminal("bystander", TermType::Android, TCP).await;
    g.login("flood", TermType::Pc, "code").await;
    let rss_before = rss_kib(g.pid());
    let mut s = raw::connect(&g.tcp, None, None).await;
    s.write_all(&raw::register("flood", "code", TermType::Pc))
        .await
        .expect("register");
    let mut buf = BytesMut::new();
    assert!(matches!(
        raw::read_downs(&mut s, &mut buf, 1).await[..],
        [(_, Down::RegResp { code: 0 })]
    ));
    // Every IM at once, without waiting for a single answer.
    let (mut reader, mut writer) = s.into_split();
    let flood = tokio::spawn(async move {
        let mut all = Vec::new();
        for tid in 0..IMS {
            all.extend(raw::frame(
                tid,
                Up::Im {
                    msg: Bytes::from(format!("im {tid}")),
                },
            ));
        }
        writer.write_all(&all).await.expect("the flood is written");
        writer
    });
    // Meanwhile the other terminal is served.
    g.send_down("push", "bystander", 1, "during the flood")
        .await;
    assert_eq!(
        push(&next_acked(&mut bystander).await.1).2,
        "during the flood"
    );

    let mut answers = Vec::new();
    while answers.len() < IMS as usize {
        match galopush_protocol::frame::decode::<Down>(&mut buf, u32::MAX).expect("frame") {
            Some(f) => answers.push((f.tid, f.message)),
            None => {
                let read = tokio::time::timeout(
                    SOON,
                    tokio::io::AsyncReadExt::read_buf(&mut reader, &mut buf),
                )
                .await
                .expect("answers keep coming");
                assert!(matches!(read, Ok(n) if n > 0), "connection ended");
            }
        }
    }
    let _writer = flood.await.expect("flood task");
    let tids: BTreeSet<u32> = answers.iter().map(|(tid, _)| *tid).collect();
    assert_eq!(tids.len(), IMS as usize, "every IM answered once");
    let accepted = answers
        .iter()
        .filter(|(_, d)| matches!(d, Down::ImResp { code: 0 }))
        .count() as u32;
    assert_eq!(accepted, OUTBOX, "the outbox takes exactly its bound");
    assert_eq!(
        g.metric(&refused("outbox_pending")).await,
        f64::from(IMS - OUTBOX)
    );
    assert!(
        g.metric(&refused("im_inflight")).await >= 1.0,
        "reading paused"
    );
    still_serves(&g, rss_before, 20 * 1024, &mut bystander, "bystander", 1).await;
}

#[tokio::test]
async fn a_full_inbox_answers_503_and_loses_nothing_it_accepted() {
    const MESSAGES: usize = 150;
    let g = Gateway::start(&[("limits.inbox_pending", "40")]).await;
    let mut t = g.terminal("slow-acker", TermType::Android, TCP).await;
    // The terminal reads everything but acks in batches, so messages stay in flight and hold
    // their place in the inbox.
    let reader = tokio::spawn(async move {
        let mut got = BTreeSet::new();
        let mut unacked = Vec::new();
        while got.len() < MESSAGES {
            match t.recv_timeout(Duration::from_millis(300)).await {
                Ok(Some((tid, down))) => {
                    got.insert(push(&down).2);
                    unacked.push((tid, down));
                    if unacked.len() < 60 {
                        continue;
                    }
                }
                Ok(None) => panic!("connection closed"),
                Err(_) => {}
            }
            for (tid, down) in unacked.drain(..) {
                t.ack(tid, &down).await.expect("ack");
            }
        }
        got
    });
    let mut accepted = BTreeSet::new();
    let mut full = 0;
    for i in 0..MESSAGES {
        let body = format!("m{i:03}");
        let line = serde_json::json!({"receivers": [{"uid": "slow-acker", "termtype": 1}], "flag": 0, "body": body});
        loop {
            let r = g
                .client()
                .post(format!("{}/pub?topic=push", g.api))
                .body(line.to_string())
                .send()
                .await
                .expect("pub");
            match r.status().as_u16() {
                200 => break,
                503 => {
                    assert_eq!(r.headers()["retry-after"], "1");
                    full += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!("/pub answered {other}"),
            }
        }
        accepted.insert(Bytes::from(body));
    }
    // An /mpub bigger than the inbox can ever hold is refused whole.
    let lines = vec![r#"{"receivers":[],"flag":0,"body":"x"}"#; 41].join("\n");
    let r = g
        .client()
        .post(format!("{}/mpub?topic=push", g.api))
        .body(lines)
        .send()
        .await
        .expect("mpub");
    assert_eq!(r.status().as_u16(), 413);
    assert!(full > 0, "the inbox was never full");
    let got = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("every accepted message arrives")
        .expect("reader");
    assert_eq!(got, accepted, "every accepted message delivered");
    assert!(g.metric(&refused("inbox_pending")).await >= f64::from(full + 1));
    g.wait_metric_falls_to("galopush_inbox_pending", 0.0).await;
}

#[tokio::test]
async fn a_full_outbox_refuses_ims_and_requeues_answers_until_it_drains() {
    // The webhook refuses its first five POSTs: the one outbox place stays taken for seconds.
    let hook = Webhook::start(5).await;
    let g = Gateway::start(&[
        ("limits.outbox_pending", "1"),
        ("bus.webhook_url", &hook.url),
    ])
    .await;
    let mut t = g.terminal("talker", TermType::Pc, TCP).await;
    t.send_im(Bytes::from("first")).await.expect("im");
    assert_eq!(next(&mut t).await.1, Down::ImResp { code: 0 });
    t.send_im(Bytes::from("second")).await.expect("im");
    assert_eq!(
        next(&mut t).await.1,
        Down::ImResp { code: 1 },
        "refused: the terminal may retry"
    );
    let question = serde_json::json!({"backTopic": "timeouts", "key": "k",
        "msg": {"ctype": 16, "uid": "talker", "sessionId": "s", "flag": 0}});
    g.publish_ok("sessionTimeout", question.to_string()).await;
    g.wait_until(
        "galopush_bus_messages_total{topic=\"sessionTimeout\",event=\"requeued\"}",
        |v| v >= 1.0,
    )
    .await;
    // Once the webhook takes the IM, the requeued answer finds room.
    let received = hook.wait_for(2).await;
    assert_eq!(received[0].1["body"], "first");
    assert_eq!(received[1].0, "timeouts");
    assert_eq!(received[1].1["msg"]["flag"], 1, "talker is live");
    assert!(g.metric(&refused("outbox_pending")).await >= 2.0);
    g.wait_retired("sessionTimeout", 1).await;
}
