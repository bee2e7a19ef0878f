//! At-least-once across failures: a galopush crash while a message is held, and an nsqd
//! restart while messages are queued and held. A clean stop finishes what it holds instead.

use std::collections::BTreeSet;

use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_protocol::message::Down;

use crate::harness::*;

#[tokio::test]
async fn a_callback_held_at_a_crash_is_delivered_after_the_restart() {
    let nsq = Nsq::start().await;
    let g = Gateway::start(&nsq, &[]).await;
    let mut live = g.terminal(&nsq, "vic", TermType::Pc).await;
    nsq.publish("callback", Nsq::down("vic", 16, "in flight at the crash"));
    let (_, down) = next(&mut live).await;
    assert_eq!(body(&down), Bytes::from("in flight at the crash"));
    let held = nsq.stats("callback");
    assert_eq!((held.finished, held.in_flight), (0, 1), "{held:?}");

    // kill -9 before the ack: nsqd takes the message back when the connection drops.
    let g = g.crash_and_restart().await;
    drop(live);

    // The login record survived in the store; the restarted gateway gets the message again
    // and delivers it (live, or from the store if it came before the REGISTER).
    let mut vic = g.register("vic", "code-vic-16", TermType::Pc).await;
    assert_eq!(
        body(&next_acked(&mut vic).await.1),
        Bytes::from("in flight at the crash")
    );
    nsq.wait("callback", "finished once, nothing left", |s| {
        s.finished == 1 && s.in_flight == 0 && s.depth == 0 && s.deferred == 0
    })
    .await;
}

#[tokio::test]
async fn nothing_is_lost_when_nsqd_restarts() {
    let nsq = Nsq::start().await;
    let g = Gateway::start(&nsq, &[]).await;
    let mut t = g.terminal(&nsq, "ned", TermType::Android).await;
    nsq.publish("push", Nsq::down("ned", 1, "held"));
    let (tid, held) = next(&mut t).await;
    assert_eq!(body(&held), Bytes::from("held"));

    nsq.nsqd.stop().await;
    // Acked while nsqd is away: the FIN cannot reach it, so nsqd delivers it again.
    t.ack(tid, &held).await.expect("ack");
    for i in 0..3 {
        nsq.publish("push", Nsq::down("ned", 1, &format!("queued {i}")));
    }
    t.send_im(Bytes::from("while nsqd is down"))
        .await
        .expect("im");
    assert_eq!(next(&mut t).await.1, Down::ImResp { code: 1 });

    nsq.nsqd.restart().await.expect("nsqd restarts");
    let expected: BTreeSet<Bytes> = ["held", "queued 0", "queued 1", "queued 2"]
        .into_iter()
        .map(Bytes::from)
        .collect();
    let mut got = BTreeSet::new();
    while got != expected {
        let (_, down) = next_acked(&mut t).await;
        got.insert(body(&down));
    }
    nsq.wait("push", "everything finished", |s| {
        s.finished == 4 && s.in_flight == 0 && s.depth == 0
    })
    .await;
    t.send_im(Bytes::from("nsqd is back")).await.expect("im");
    assert_eq!(next(&mut t).await.1, Down::ImResp { code: 0 });
    assert_eq!(nsq.nsqd.published("msgUpward").len(), 1);
}

#[tokio::test]
async fn a_clean_stop_finishes_the_message_it_holds_before_closing() {
    let nsq = Nsq::start().await;
    let g = Gateway::start(&nsq, &[]).await;
    let mut t = g.terminal(&nsq, "sam", TermType::Android).await;
    nsq.publish("push", Nsq::down("sam", 1, "held at the stop"));
    let (tid, held) = next(&mut t).await;
    assert_eq!(body(&held), Bytes::from("held at the stop"));

    // SIGTERM while the push waits for its ack; the terminal acks during the shutdown.
    let stopping = g.stop();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    t.ack(tid, &held).await.expect("ack");
    let status = stopping.exited().await;
    assert!(status.success(), "clean exit, got {status}");
    let s = nsq.stats("push");
    assert_eq!(
        (s.finished, s.requeued, s.timed_out, s.depth, s.in_flight),
        (1, 0, 0, 0, 0),
        "FINished before closing, nothing left for nsqd to redeliver: {s:?}"
    );
}
