//! SPEC §6: live delivery with acks in every encoding, ack time-outs, the offline rules
//! (coalesced push, de-duplicated bounded callbacks, last IMs, nothing for Web), the order of
//! stored messages on REGISTER, the Web-online flag and the termtype mask.

use std::time::Duration;

use bytes::Bytes;
use galopush_client::Transport;
use galopush_protocol::message::Down;
use galopush_protocol::{Encoding, TermType};

use crate::harness::*;

#[tokio::test]
async fn live_push_arrives_in_every_encoding_and_its_ack_ends_it() {
    let g = Gateway::start(&[("delivery.ack_timeout", "1s")]).await;
    for encoding in Encoding::ALL {
        let uid = format!("enc{}", encoding.bits());
        let mut t = g
            .terminal(&uid, TermType::Android, Transport::Tcp { encoding })
            .await;
        let body = format!("hello in {encoding:?}: 推送");
        g.send_down("push", &uid, 1, &body).await;
        let (_, down) = next_acked(&mut t).await;
        assert_eq!(push(&down), (0, 0, Bytes::from(body)), "{encoding:?}");
    }
    g.wait_metric(
        "galopush_deliveries_total{kind=\"push\",outcome=\"acked\"}",
        4.0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        g.metric("galopush_deliveries_total{kind=\"push\",outcome=\"failed\"}")
            .await,
        0.0,
        "acked pushes do not time out"
    );
    assert_eq!(
        g.metric("galopush_offline_stored_total{kind=\"push\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn callback_and_im_arrive_live_and_any_ack_type_ends_them() {
    let g = Gateway::start(&[]).await;
    let mut t = g.terminal("ann", TermType::Pc, TCP).await;
    g.send_down("callback", "ann", 16, "cb").await;
    let (tid, down) = next(&mut t).await;
    assert_eq!(
        down,
        Down::Callback {
            msg: Bytes::from("cb")
        }
    );
    // Old clients answer with IMRESP: the TID alone settles it.
    t.send(tid, galopush_protocol::message::Up::ImResp { code: 0 })
        .await
        .expect("ack");
    g.send_down("msgDownward", "ann", 16, "im").await;
    let (_, down) = next_acked(&mut t).await;
    assert_eq!(
        down,
        Down::Im {
            flag: 0,
            msg: Bytes::from("im")
        }
    );
    g.wait_metric(
        "galopush_deliveries_total{kind=\"callback\",outcome=\"acked\"}",
        1.0,
    )
    .await;
    g.wait_metric(
        "galopush_deliveries_total{kind=\"im\",outcome=\"acked\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn unacked_push_goes_offline_after_the_ack_timeout() {
    let g = Gateway::start(&[("delivery.ack_timeout", "300ms")]).await;
    let mut t = g.terminal("ben", TermType::Android, TCP).await;
    g.send_down("push", "ben", 1, "ack me").await;
    let (_, down) = next(&mut t).await;
    assert_eq!(push(&down).2, Bytes::from("ack me"));
    g.wait_metric(
        "galopush_deliveries_total{kind=\"push\",outcome=\"failed\"}",
        1.0,
    )
    .await;
    g.wait_retired("push", 1).await;
    drop(t);
    let mut back = g
        .register("ben", "code-ben-1", TermType::Android, TCP)
        .await;
    let (_, down) = next_acked(&mut back).await;
    assert_eq!(push(&down), (1, 0, Bytes::from("ack me")));
}

#[tokio::test]
async fn callback_waits_for_its_own_longer_timeout() {
    let g = Gateway::start(&[
        ("delivery.ack_timeout", "200ms"),
        ("delivery.callback_ack_timeout", "1500ms"),
    ])
    .await;
    let mut t = g.terminal("cy", TermType::Android, TCP).await;
    g.send_down("callback", "cy", 1, "slow ack").await;
    let (tid, down) = next(&mut t).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    t.ack(tid, &down).await.expect("ack");
    g.wait_metric(
        "galopush_deliveries_total{kind=\"callback\",outcome=\"acked\"}",
        1.0,
    )
    .await;
    assert_eq!(
        g.metric("galopush_offline_stored_total{kind=\"callback\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn connection_closing_before_the_ack_sends_the_message_offline() {
    let g = Gateway::start(&[("delivery.ack_timeout", "30s")]).await;
    let mut t = g.terminal("dee", TermType::Ios, TCP).await;
    g.send_down("msgDownward", "dee", 2, "in flight").await;
    let _ = next(&mut t).await;
    t.close().await.expect("close");
    g.wait_metric("galopush_offline_stored_total{kind=\"im\"}", 1.0)
        .await;
    g.wait_retired("msgDownward", 1).await;
    let mut back = g.register("dee", "code-dee-2", TermType::Ios, TCP).await;
    let (_, down) = next_acked(&mut back).await;
    assert_eq!(
        down,
        Down::Im {
            flag: 0,
            msg: Bytes::from("in flight")
        }
    );
}

#[tokio::test]
async fn offline_pushes_coalesce_into_one_with_a_counter() {
    let g = Gateway::start(&[]).await;
    g.login("eve", TermType::Android, "e").await;
    for i in 1..=3 {
        g.send_down("push", "eve", 31, &format!("push {i}")).await;
    }
    g.wait_retired("push", 3).await;
    let mut t = g.register("eve", "e", TermType::Android, TCP).await;
    let (_, down) = next_acked(&mut t).await;
    assert_eq!(push(&down), (3, 0, Bytes::from("push 3")));
    nothing_for(&mut t, Duration::from_millis(300)).await;
    // The counter reset once acked: the next offline push counts from 1.
    g.wait_metric("galopush_offline_delivered_total{kind=\"push\"}", 1.0)
        .await;
    g.close(t, "eve", TermType::Android).await;
    g.send_down("push", "eve", 1, "push 4").await;
    g.wait_retired("push", 4).await;
    let mut t = g.register("eve", "e", TermType::Android, TCP).await;
    let (_, down) = next_acked(&mut t).await;
    assert_eq!(push(&down), (1, 0, Bytes::from("push 4")));
}

#[tokio::test]
async fn offline_callbacks_are_deduplicated_and_bounded() {
    let g = Gateway::start(&[("delivery.max_offline_callbacks", "3")]).await;
    g.login("fin", TermType::Pc, "f").await;
    for body in ["a", "b", "a", "c", "d"] {
        g.send_down("callback", "fin", 16, body).await;
    }
    g.wait_retired("callback", 5).await;
    let mut t = g.register("fin", "f", TermType::Pc, TCP).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let (_, down) = next_acked(&mut t).await;
        match down {
            Down::Callback { msg } => got.push(msg),
            other => panic!("expected CALLBACK, got {other:?}"),
        }
    }
    assert_eq!(
        got,
        vec!["b", "c", "d"],
        "identical bodies once, oldest dropped"
    );
    nothing_for(&mut t, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn offline_ims_keep_the_latest_with_their_flags() {
    let g = Gateway::start(&[("delivery.max_offline_im", "2")]).await;
    g.login("gil", TermType::Android, "g").await;
    g.send_down("msgDownward", "gil", 1, "im 1").await;
    // While the Web terminal is live, IMs stored for Android carry flag 1.
    let web = g.terminal("gil", TermType::Web, WEB).await;
    g.send_down("msgDownward", "gil", 1, "im 2").await;
    g.wait_retired("msgDownward", 2).await;
    g.close(web, "gil", TermType::Web).await;
    g.send_down("msgDownward", "gil", 1, "im 3").await;
    g.wait_retired("msgDownward", 3).await;
    let mut t = g.register("gil", "g", TermType::Android, TCP).await;
    let (_, a) = next_acked(&mut t).await;
    let (_, b) = next_acked(&mut t).await;
    assert_eq!(
        a,
        Down::Im {
            flag: 1,
            msg: Bytes::from("im 2")
        }
    );
    assert_eq!(
        b,
        Down::Im {
            flag: 0,
            msg: Bytes::from("im 3")
        }
    );
    nothing_for(&mut t, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn stored_messages_come_push_then_callbacks_then_ims() {
    let g = Gateway::start(&[]).await;
    g.login("hue", TermType::Ios, "h").await;
    g.send_down("msgDownward", "hue", 2, "im").await;
    g.send_down("callback", "hue", 2, "cb 1").await;
    g.send_down("push", "hue", 2, "push").await;
    g.send_down("callback", "hue", 2, "cb 2").await;
    g.wait_retired("callback", 2).await;
    g.wait_retired("push", 1).await;
    g.wait_retired("msgDownward", 1).await;
    let mut t = g.register("hue", "h", TermType::Ios, TCP).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_acked(&mut t).await.1);
    }
    assert_eq!(
        got,
        vec![
            Down::Push {
                offline: 1,
                flag: 0,
                msg: Bytes::from("push")
            },
            Down::Callback {
                msg: Bytes::from("cb 1")
            },
            Down::Callback {
                msg: Bytes::from("cb 2")
            },
            Down::Im {
                flag: 0,
                msg: Bytes::from("im")
            },
        ]
    );
}

#[tokio::test]
async fn stored_message_not_acked_stays_stored() {
    let g = Gateway::start(&[("delivery.ack_timeout", "300ms")]).await;
    g.login("ida", TermType::Android, "i").await;
    g.send_down("callback", "ida", 1, "keep me").await;
    g.wait_retired("callback", 1).await;
    let mut t = g.register("ida", "i", TermType::Android, TCP).await;
    let (_, down) = next(&mut t).await;
    assert_eq!(
        down,
        Down::Callback {
            msg: Bytes::from("keep me")
        }
    );
    g.close(t, "ida", TermType::Android).await;
    let mut t = g.register("ida", "i", TermType::Android, TCP).await;
    let (_, down) = next_acked(&mut t).await;
    assert_eq!(
        down,
        Down::Callback {
            msg: Bytes::from("keep me")
        }
    );
    g.wait_metric("galopush_offline_delivered_total{kind=\"callback\"}", 1.0)
        .await;
    g.close(t, "ida", TermType::Android).await;
    // Once acked it is removed (a REGISTER racing the removal may still see it: a duplicate,
    // which is allowed, so come back until it is gone).
    for _ in 0..20 {
        let mut t = g.register("ida", "i", TermType::Android, TCP).await;
        match t.recv_timeout(Duration::from_millis(300)).await {
            Err(galopush_client::ClientError::Timeout(_)) => return,
            Ok(Some((tid, down))) => {
                assert_eq!(
                    down,
                    Down::Callback {
                        msg: Bytes::from("keep me")
                    }
                );
                t.ack(tid, &down).await.expect("ack");
                g.close(t, "ida", TermType::Android).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("the acked callback was never removed");
}

#[tokio::test]
async fn flag_is_1_for_every_terminal_while_web_is_online() {
    let g = Gateway::start(&[]).await;
    let mut android = g.terminal("jo", TermType::Android, TCP).await;
    g.send_down("push", "jo", 31, "no web").await;
    assert_eq!(push(&next_acked(&mut android).await.1).1, 0);
    let mut web = g.terminal("jo", TermType::Web, WEB).await;
    g.send_down("push", "jo", 31, "with web").await;
    assert_eq!(push(&next_acked(&mut android).await.1).1, 1);
    assert_eq!(
        push(&next_acked(&mut web).await.1).1,
        1,
        "the Web terminal itself too"
    );
    g.send_down("msgDownward", "jo", 1, "im").await;
    assert_eq!(
        next_acked(&mut android).await.1,
        Down::Im {
            flag: 1,
            msg: Bytes::from("im")
        }
    );
}

#[tokio::test]
async fn stored_push_takes_the_flag_when_it_is_sent() {
    let g = Gateway::start(&[]).await;
    g.login("kit", TermType::Pc, "k").await;
    g.send_down("push", "kit", 16, "stored").await;
    g.wait_retired("push", 1).await;
    let _web = g.terminal("kit", TermType::Web, WEB).await;
    let mut pc = g.register("kit", "k", TermType::Pc, TCP).await;
    assert_eq!(
        push(&next_acked(&mut pc).await.1),
        (1, 1, Bytes::from("stored"))
    );
}

#[tokio::test]
async fn nothing_is_stored_for_web() {
    let g = Gateway::start(&[("delivery.ack_timeout", "300ms")]).await;
    g.login("lou", TermType::Web, "l").await;
    g.send_down("push", "lou", 8, "missed").await;
    g.wait_metric("galopush_dropped_total{reason=\"web_offline\"}", 1.0)
        .await;
    let mut web = g.register("lou", "l", TermType::Web, WEB).await;
    nothing_for(&mut web, Duration::from_millis(300)).await;
    // An unacked live message to Web is dropped too, not stored.
    g.send_down("push", "lou", 8, "unacked").await;
    let _ = next(&mut web).await;
    g.wait_metric("galopush_dropped_total{reason=\"web_offline\"}", 2.0)
        .await;
    assert_eq!(
        g.metric("galopush_offline_stored_total{kind=\"push\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn the_termtype_mask_picks_the_terminals() {
    let g = Gateway::start(&[]).await;
    let mut android = g.terminal("mo", TermType::Android, TCP).await;
    let mut pc = g.terminal("mo", TermType::Pc, TCP).await;
    g.send_down("push", "mo", 1, "android only").await;
    assert_eq!(
        push(&next_acked(&mut android).await.1).2,
        Bytes::from("android only")
    );
    nothing_for(&mut pc, Duration::from_millis(300)).await;
    g.send_down("push", "mo", 17, "both").await;
    assert_eq!(
        push(&next_acked(&mut android).await.1).2,
        Bytes::from("both")
    );
    assert_eq!(push(&next_acked(&mut pc).await.1).2, Bytes::from("both"));
}

#[tokio::test]
async fn message_for_an_unknown_user_is_dropped_and_counted() {
    let g = Gateway::start(&[]).await;
    g.send_down("push", "ghost", 31, "nobody").await;
    g.wait_metric("galopush_dropped_total{reason=\"no_login\"}", 1.0)
        .await;
    g.wait_retired("push", 1).await;
}

#[tokio::test]
async fn one_message_for_many_receivers() {
    let g = Gateway::start(&[]).await;
    let mut a = g.terminal("r1", TermType::Android, TCP).await;
    let mut b = g.terminal("r2", TermType::Web, WEB).await;
    g.login("r3", TermType::Pc, "r3").await;
    g.publish_ok(
        "push",
        serde_json::json!({
            "receivers": [{"uid": "r1", "termtype": 31}, {"uid": "r2", "termtype": 8}, {"uid": "r3", "termtype": 16}],
            "flag": 1, "body": "everyone"
        })
        .to_string(),
    )
    .await;
    assert_eq!(push(&next_acked(&mut a).await.1).2, Bytes::from("everyone"));
    assert_eq!(push(&next_acked(&mut b).await.1).2, Bytes::from("everyone"));
    g.wait_retired("push", 1).await;
    let mut c = g.register("r3", "r3", TermType::Pc, TCP).await;
    assert_eq!(
        push(&next_acked(&mut c).await.1),
        (1, 0, Bytes::from("everyone"))
    );
}
