//! Quiet TCP connections are parked without a task of their own (`comet.park_after`) and
//! served again, on the same connection and with nothing lost, when they are sent something,
//! send something, are kicked, close, or go idle.

use std::time::Duration;

use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_protocol::message::Down;

use crate::harness::*;

const PARKED: &str = "galopush_connections_parked";
const REVIVED: &str = "galopush_revivals_total";
const ACKED: &str = "galopush_deliveries_total{kind=\"push\",outcome=\"acked\"}";

#[tokio::test]
async fn a_parked_terminal_gets_what_is_sent_to_it_and_answers_on_the_same_connection() {
    let g = Gateway::start(&[("comet.park_after", "200ms")]).await;
    let mut t = g.terminal("pia", TermType::Android, TCP).await;
    g.wait_metric(PARKED, 1.0).await;

    g.send_down("push", "pia", 1, "while parked").await;
    let (first_tid, down) = next_acked(&mut t).await;
    assert_eq!(push(&down).2, Bytes::from("while parked"));
    g.wait_metric(ACKED, 1.0).await;

    // Parked again once quiet; a PING revives it and is answered.
    g.wait_metric(PARKED, 1.0).await;
    assert_eq!(g.metric(REVIVED).await, 1.0, "revived once, for the push");
    assert_eq!(t.ping().await.expect("pong"), 0);

    // Parked again; the next delivery goes on with the connection's TIDs.
    g.wait_metric(PARKED, 1.0).await;
    assert_eq!(g.metric(REVIVED).await, 2.0, "revived once, for the PING");
    g.send_down("push", "pia", 1, "parked twice").await;
    let (second_tid, down) = next_acked(&mut t).await;
    assert_eq!(push(&down).2, Bytes::from("parked twice"));
    assert_eq!(second_tid, first_tid.wrapping_add(1));
    g.wait_metric(ACKED, 2.0).await;
    assert_eq!(
        g.metric("galopush_connections{termtype=\"Android\"}").await,
        1.0,
        "one connection all along"
    );
}

#[tokio::test]
async fn a_terminal_waiting_to_ack_is_not_parked() {
    let g = Gateway::start(&[("comet.park_after", "200ms")]).await;
    let mut t = g.terminal("quin", TermType::Pc, TCP).await;
    g.wait_metric(PARKED, 1.0).await;
    g.send_down("push", "quin", 31, "ack me later").await;
    let (tid, down) = next(&mut t).await;
    g.wait_metric_falls_to(PARKED, 0.0).await;
    // Well past `comet.park_after`, with the delivery still open.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        g.metric(PARKED).await,
        0.0,
        "parked with a transaction open"
    );
    t.ack(tid, &down).await.expect("ack");
    g.wait_metric(ACKED, 1.0).await;
    g.wait_metric(PARKED, 1.0).await;
}

#[tokio::test]
async fn a_parked_terminal_is_kicked_by_a_new_login() {
    let g = Gateway::start(&[("comet.park_after", "200ms")]).await;
    let mut t = g.terminal("rio", TermType::Pc, TCP).await;
    g.wait_metric(PARKED, 1.0).await;
    g.login("rio", TermType::Pc, "new-code").await;
    assert_eq!(closed(&mut t).await, vec![Down::Kick { reason: 1 }]);
    g.wait_metric_falls_to(PARKED, 0.0).await;
    g.wait_live("rio", TermType::Pc, false).await;
}

#[tokio::test]
async fn a_parked_terminal_that_closes_goes_offline_and_keeps_its_messages() {
    let g = Gateway::start(&[("comet.park_after", "200ms")]).await;
    let t = g.terminal("sam", TermType::Ios, TCP).await;
    g.wait_metric(PARKED, 1.0).await;
    g.close(t, "sam", TermType::Ios).await;
    g.wait_metric_falls_to(PARKED, 0.0).await;
    g.wait_metric_falls_to("galopush_connections{termtype=\"iOS\"}", 0.0)
        .await;
    assert_eq!(
        g.metric(REVIVED).await,
        1.0,
        "revived once, and closed then: not parked again before its close was read"
    );

    g.send_down("callback", "sam", 2, "kept for later").await;
    let mut t = g.register("sam", "code-sam-2", TermType::Ios, TCP).await;
    let (_, down) = next_acked(&mut t).await;
    assert_eq!(
        down,
        Down::Callback {
            msg: Bytes::from("kept for later")
        }
    );
}

#[tokio::test]
async fn a_parked_terminal_is_closed_when_idle() {
    let g = Gateway::start(&[("comet.park_after", "200ms"), ("comet.idle_timeout", "1s")]).await;
    let mut t = g.terminal("tia", TermType::Android, TCP).await;
    let registered = std::time::Instant::now();
    g.wait_metric(PARKED, 1.0).await;
    assert!(closed(&mut t).await.is_empty());
    assert!(registered.elapsed() >= Duration::from_millis(900));
    g.wait_live("tia", TermType::Android, false).await;
    assert_eq!(g.metric(PARKED).await, 0.0);
}

#[tokio::test]
async fn parking_is_off_with_0s_and_for_web_terminals() {
    let g = Gateway::start(&[("comet.park_after", "0s")]).await;
    let mut t = g.terminal("uma", TermType::Android, TCP).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(t.ping().await.expect("pong"), 0);
    assert_eq!(g.metric(PARKED).await, 0.0);

    let g = Gateway::start(&[("comet.park_after", "200ms")]).await;
    let mut web = g.terminal("vic", TermType::Web, WEB).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(g.metric(PARKED).await, 0.0, "a WebSocket is not parked");
    g.send_down("push", "vic", 8, "to the web").await;
    let (_, down) = next_acked(&mut web).await;
    assert_eq!(push(&down).2, Bytes::from("to the web"));
}

#[tokio::test]
async fn parked_terminals_keep_their_place_within_max_connections() {
    let g = Gateway::start(&[
        ("comet.park_after", "200ms"),
        ("limits.max_connections", "2"),
    ])
    .await;
    let mut wes = g.terminal("wes", TermType::Android, TCP).await;
    let _xia = g.terminal("xia", TermType::Android, TCP).await;
    g.wait_metric(PARKED, 2.0).await;
    let mut over = g.connect(TermType::Android, TCP).await;
    assert!(
        closed(&mut over).await.is_empty(),
        "a third connection is refused"
    );
    assert_eq!(
        g.metric("galopush_refused_total{reason=\"max_connections\"}")
            .await,
        1.0
    );
    g.send_down("push", "wes", 1, "still served").await;
    let (_, down) = next_acked(&mut wes).await;
    assert_eq!(push(&down).2, Bytes::from("still served"));
}
