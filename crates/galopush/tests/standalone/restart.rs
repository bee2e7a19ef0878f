//! Durability across a crash: `kill -9` and a restart on the same data directory keep login
//! records, stored offline messages and accepted-but-unretired inbox messages. A clean stop
//! (SIGTERM) lets what is in flight settle first, so the restart applies nothing again.

use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_protocol::message::Down;

use crate::harness::*;

#[tokio::test]
async fn a_crash_loses_no_login_stored_message_or_accepted_message() {
    let g = Gateway::start(&[("delivery.callback_ack_timeout", "60s")]).await;
    // A login record and a stored push.
    g.login("uma", TermType::Android, "u").await;
    g.send_down("push", "uma", 1, "stored before the crash")
        .await;
    g.wait_retired("push", 1).await;
    // A callback accepted and delivered but not acked: its inbox message is not retired yet.
    let mut live = g.terminal("vic", TermType::Pc, TCP).await;
    g.send_down("callback", "vic", 16, "in flight at the crash")
        .await;
    let (_, down) = next(&mut live).await;
    assert_eq!(
        down,
        Down::Callback {
            msg: Bytes::from("in flight at the crash")
        }
    );

    let g = g.crash_and_restart().await;
    drop(live);

    let mut uma = g.register("uma", "u", TermType::Android, TCP).await;
    assert_eq!(
        push(&next_acked(&mut uma).await.1),
        (1, 0, Bytes::from("stored before the crash"))
    );
    let mut vic = g.register("vic", "code-vic-16", TermType::Pc, TCP).await;
    let (_, down) = next_acked(&mut vic).await;
    assert_eq!(
        down,
        Down::Callback {
            msg: Bytes::from("in flight at the crash")
        }
    );
}

#[tokio::test]
async fn outbound_messages_survive_a_crash_until_the_webhook_takes_them() {
    let g = Gateway::start(&[("bus.webhook_url", "http://127.0.0.1:9/unreachable")]).await;
    let mut t = g.terminal("wes", TermType::Ios, TCP).await;
    t.send_im(Bytes::from("kept")).await.expect("im");
    assert_eq!(next(&mut t).await.1, Down::ImResp { code: 0 });
    g.wait_metric("galopush_outbox_pending", 1.0).await;
    let hook = Webhook::start(0).await;
    let mut g = g;
    g.set("bus.webhook_url", &hook.url);
    let _g = g.crash_and_restart().await;
    let got = hook.wait_for(1).await;
    assert_eq!(got[0].0, "msgUpward");
    assert_eq!(got[0].1["body"], "kept");
}

#[tokio::test]
async fn a_clean_stop_right_after_the_acks_replays_nothing_on_restart() {
    let g = Gateway::start(&[]).await;
    let mut t = g.terminal("zoe", TermType::Android, TCP).await;
    for i in 0..20 {
        g.send_down("push", "zoe", 1, &format!("live {i}")).await;
    }
    for i in 0..20 {
        let (_, down) = next_acked(&mut t).await;
        assert_eq!(push(&down).2, Bytes::from(format!("live {i}")));
    }
    // Stopped at once: the last acks may still be on their way to the router.
    let g = g.stop_and_restart().await;
    drop(t);
    no_push_replayed(&g, "zoe", "no push applied again after the restart").await;
}

#[tokio::test]
async fn a_message_applied_and_retired_is_not_applied_again_after_a_crash() {
    // Applied while its inbox commit is in flight (issue 16), acked, retired: a `kill -9` after
    // that replays nothing, and it was delivered once.
    let g = Gateway::start(&[]).await;
    let mut t = g.terminal("ada", TermType::Android, TCP).await;
    g.send_down("push", "ada", 1, "once").await;
    let (_, down) = next_acked(&mut t).await;
    assert_eq!(push(&down).2, Bytes::from("once"));
    g.wait_retired("push", 1).await;
    nothing_for(&mut t, std::time::Duration::from_millis(500)).await;

    let g = g.crash_and_restart().await;
    drop(t);
    no_push_replayed(&g, "ada", "nothing replayed").await;
}

/// After a restart, `uid`'s Android terminal registers again and gets nothing, and no push was
/// applied again.
async fn no_push_replayed(g: &Gateway, uid: &str, why: &str) {
    let mut again = g
        .register(uid, &format!("code-{uid}-1"), TermType::Android, TCP)
        .await;
    nothing_for(&mut again, std::time::Duration::from_secs(1)).await;
    assert_eq!(
        g.metric("galopush_bus_messages_total{topic=\"push\",event=\"received\"}")
            .await,
        0.0,
        "{why}"
    );
}

#[tokio::test]
async fn a_crash_replays_unfinished_messages_in_the_order_they_were_accepted() {
    let g = Gateway::start(&[("delivery.callback_ack_timeout", "60s")]).await;
    let mut live = g.terminal("bea", TermType::Pc, TCP).await;
    let bodies: Vec<String> = (0..10).map(|i| format!("callback {i}")).collect();
    for body in &bodies {
        g.send_down("callback", "bea", 16, body).await;
    }
    // Applied in the order accepted; none acked, so none retired.
    for body in &bodies {
        let (_, down) = next(&mut live).await;
        assert_eq!(
            down,
            Down::Callback {
                msg: Bytes::from(body.clone())
            }
        );
    }

    let g = g.crash_and_restart().await;
    drop(live);
    // Replayed in the same order: every one is back, none lost, in order.
    let mut back = g.register("bea", "code-bea-16", TermType::Pc, TCP).await;
    for body in &bodies {
        let (_, down) = next_acked(&mut back).await;
        assert_eq!(
            down,
            Down::Callback {
                msg: Bytes::from(body.clone())
            }
        );
    }
    g.wait_retired("callback", bodies.len() as u64).await;
    nothing_for(&mut back, std::time::Duration::from_millis(500)).await;
}
