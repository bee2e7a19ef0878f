//! SPEC §3: a malformed, oversized or misplaced frame closes that connection only.

use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_protocol::message::Down;

use crate::harness::*;

async fn bad_input_closes_only_that_connection(g: &Gateway, bytes: &[u8]) {
    let mut bystander = g.terminal("bystander", TermType::Pc, TCP).await;
    let mut victim = g.terminal("victim", TermType::Android, TCP).await;
    victim.send_raw(bytes).await.expect("send");
    closed(&mut victim).await;
    g.send_down("push", "bystander", 16, "unaffected").await;
    assert_eq!(
        push(&next_acked(&mut bystander).await.1).2,
        Bytes::from("unaffected")
    );
    g.wait_metric("galopush_protocol_errors_total", 1.0).await;
}

#[tokio::test]
async fn type_zero_closes_the_connection() {
    let g = Gateway::start(&[]).await;
    bad_input_closes_only_that_connection(&g, &[0x00, 0, 0, 0, 1, 0, 0, 0, 0]).await;
}

#[tokio::test]
async fn unknown_type_closes_the_connection() {
    let g = Gateway::start(&[]).await;
    bad_input_closes_only_that_connection(&g, &[0x3f, 0, 0, 0, 1, 0, 0, 0, 0]).await;
}

#[tokio::test]
async fn server_only_type_from_a_terminal_closes_the_connection() {
    let g = Gateway::start(&[]).await;
    bad_input_closes_only_that_connection(&g, &[0x05, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0]).await;
}

#[tokio::test]
async fn oversized_length_closes_the_connection() {
    let g = Gateway::start(&[("limits.max_body", "1024")]).await;
    bad_input_closes_only_that_connection(&g, &[0x09, 0, 0, 0, 1, 0, 0, 4, 1]).await;
}

#[tokio::test]
async fn short_register_closes_the_connection() {
    let g = Gateway::start(&[]).await;
    let mut t = g.connect(TermType::Android, TCP).await;
    let mut frame = vec![0x01, 0, 0, 0, 1, 0, 0, 0, 10];
    frame.extend_from_slice(&[1; 10]);
    t.send_raw(&frame).await.expect("send");
    closed(&mut t).await;
}

#[tokio::test]
async fn garbage_on_websocket_closes_the_connection() {
    let g = Gateway::start(&[]).await;
    let mut bystander = g.terminal("wb", TermType::Web, WEB).await;
    let mut victim = g.connect(TermType::Web, WEB).await;
    victim.send_text("%%% not base64 %%%").await.expect("send");
    closed(&mut victim).await;
    let mut victim = g.connect(TermType::Web, WEB).await;
    victim
        .send_text(r#"{"cmd":5,"tid":1,"data":{"msg":"x"}}"#)
        .await
        .expect("send");
    closed(&mut victim).await;
    g.send_down("push", "wb", 8, "fine").await;
    assert_eq!(
        push(&next_acked(&mut bystander).await.1).2,
        Bytes::from("fine")
    );
}

/// The WebSocket transport's writes go on where the socket stopped, like the binary one's: a web
/// terminal that does not read is closed as slow, and a bystander on the same comet is served.
#[tokio::test]
async fn a_web_terminal_that_does_not_read_is_closed_as_slow() {
    let g = Gateway::start(&[
        ("limits.conn_queue_bytes", "65536"),
        ("comet.write_timeout", "1s"),
    ])
    .await;
    let _stuck = g.terminal("webstuck", TermType::Web, WEB).await;
    let mut bystander = g.terminal("webfine", TermType::Android, TCP).await;
    g.wait_metric("galopush_connections{termtype=\"Web\"}", 1.0)
        .await;
    let body = "x".repeat(64 * 1024);
    for _ in 0..100 {
        g.send_down("push", "webstuck", TermType::Web.bit(), &body)
            .await;
    }
    g.wait_metric("galopush_slow_terminals_total", 1.0).await;
    g.wait_metric_falls_to("galopush_connections{termtype=\"Web\"}", 0.0)
        .await;
    g.send_down("push", "webfine", 1, "fine").await;
    assert_eq!(
        push(&next_acked(&mut bystander).await.1).2,
        Bytes::from("fine")
    );
}

/// A write the terminal does not take waits on the connection's one timer, which also keeps
/// the acks' deadlines: pushes already written fail at `delivery.ack_timeout` (and are stored)
/// while the write still waits, and the write ends the connection at `comet.write_timeout`.
#[tokio::test]
async fn acks_fall_due_while_a_write_waits_and_the_write_times_out_after() {
    let g = Gateway::start(&[
        ("limits.conn_queue_bytes", "67108864"),
        ("comet.write_timeout", "12s"),
        ("delivery.ack_timeout", "3s"),
    ])
    .await;
    let t = g.terminal("stuck", TermType::Android, TCP).await;
    g.wait_metric("galopush_connections{termtype=\"Android\"}", 1.0)
        .await;
    // Far more than loopback's socket buffers hold (up to about 10 MB): the write stalls well
    // before the first ack falls due, and stays stalled, so only the waiting write's timer can
    // fail the acks; the terminal never reads.
    let body = "x".repeat(64 * 1024);
    for _ in 0..400 {
        g.send_down("push", "stuck", 1, &body).await;
    }
    g.wait_metric(
        "galopush_deliveries_total{kind=\"push\",outcome=\"failed\"}",
        1.0,
    )
    .await;
    assert_eq!(
        g.metric("galopush_connections{termtype=\"Android\"}").await,
        1.0,
        "the pushes failed at their ack deadline, before the write timed out"
    );
    assert_eq!(g.metric("galopush_slow_terminals_total").await, 0.0);
    g.wait_metric("galopush_slow_terminals_total", 1.0).await;
    g.wait_metric_falls_to("galopush_connections{termtype=\"Android\"}", 0.0)
        .await;
    g.wait_retired("push", 400).await;
    drop(t);
    let mut back = g
        .register("stuck", "code-stuck-1", TermType::Android, TCP)
        .await;
    match next_acked(&mut back).await.1 {
        Down::Push { offline, .. } => assert!(offline >= 1),
        other => panic!("expected the stored PUSH, got {other:?}"),
    }
}

#[tokio::test]
async fn a_terminal_that_does_not_read_is_disconnected_and_its_messages_stored() {
    let g = Gateway::start(&[
        ("limits.conn_queue_bytes", "65536"),
        ("comet.write_timeout", "1s"),
        ("delivery.ack_timeout", "60s"),
    ])
    .await;
    let t = g.terminal("sloth", TermType::Android, TCP).await;
    g.wait_metric("galopush_connections{termtype=\"Android\"}", 1.0)
        .await;
    // Big bodies fill the socket buffers; the terminal never reads.
    let body = "x".repeat(64 * 1024);
    for _ in 0..200 {
        g.send_down("push", "sloth", 1, &body).await;
    }
    g.wait_metric("galopush_slow_terminals_total", 1.0).await;
    g.wait_metric_falls_to("galopush_connections{termtype=\"Android\"}", 0.0)
        .await;
    g.wait_live("sloth", TermType::Android, false).await;
    g.wait_retired("push", 200).await;
    drop(t);
    let mut back = g
        .register("sloth", "code-sloth-1", TermType::Android, TCP)
        .await;
    let (_, down) = next_acked(&mut back).await;
    match down {
        Down::Push { offline, .. } => assert!(offline >= 1),
        other => panic!("expected the stored PUSH, got {other:?}"),
    }
}
