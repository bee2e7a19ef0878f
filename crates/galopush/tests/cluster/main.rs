//! End-to-end tests of a cluster (issue: routers and comets as separate processes over gRPC,
//! with Redis): dispatch across comets, delivery and kicks across comets, a killed comet's
//! unsettled deliveries stored, a restarted router rebuilt from the comets' reports.
//! Each test has its own processes, ports and Redis key prefix.

#[path = "../common/mod.rs"]
mod common;

mod nodes;
mod scale;
mod security;

use std::collections::HashSet;

use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_protocol::message::Down;

use nodes::*;

#[tokio::test]
async fn dispatch_spreads_users_and_pushes_reach_either_comet() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    let cluster = Cluster::new(REDIS, &[]);
    let router = cluster.router(None, &[]).await;
    let rpc = router.addr("rpc");
    let a = cluster.comet("comet-a", &[&rpc]).await;
    let b = cluster.comet("comet-b", &[&rpc]).await;
    router.wait_comets(2, 0).await;

    let users = ["d1", "d2", "d3", "d4"];
    let mut terminals = Vec::new();
    let mut used = HashSet::new();
    for uid in users {
        let addr = router.dispatch(uid, TermType::Android).await;
        assert!(addr == a.addr("tcp") || addr == b.addr("tcp"), "{addr}");
        used.insert(addr.clone());
        router.login(uid, TermType::Android, uid).await;
        terminals.push((
            uid,
            addr.clone(),
            register(&addr, uid, uid, TermType::Android).await,
        ));
    }
    assert_eq!(used.len(), 2, "new users are spread over both comets");
    router.wait_comets(2, 4).await;
    for (uid, addr, t) in &mut terminals {
        assert_eq!(
            &router.dispatch(uid, TermType::Pc).await,
            addr,
            "a live user is sent to the comet holding them"
        );
        router.push(uid, 1, &format!("for {uid}")).await;
        let (_, down) = next_acked(t).await;
        assert_eq!(push_body(&down), (0, Bytes::from(format!("for {uid}"))));
    }
    cluster.clean().await;
}

#[tokio::test]
async fn a_second_login_on_another_comet_kicks_the_first() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    let cluster = Cluster::new(REDIS, &[]);
    let router = cluster.router(None, &[]).await;
    let rpc = router.addr("rpc");
    let a = cluster.comet("comet-a", &[&rpc]).await;
    let b = cluster.comet("comet-b", &[&rpc]).await;
    router.wait_comets(2, 0).await;
    router.login("kay", TermType::Ios, "k").await;
    let mut on_a = register(&a.addr("tcp"), "kay", "k", TermType::Ios).await;
    let mut on_b = register(&b.addr("tcp"), "kay", "k", TermType::Ios).await;
    assert_eq!(closed(&mut on_a).await, vec![Down::Kick { reason: 1 }]);
    router.push("kay", 2, "to b").await;
    assert_eq!(
        push_body(&next_acked(&mut on_b).await.1).1,
        Bytes::from("to b")
    );
    cluster.clean().await;
}

#[tokio::test]
async fn a_killed_comets_unacked_deliveries_are_stored_and_delivered_elsewhere() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    let cluster = Cluster::new(REDIS, &[("delivery.ack_timeout", "60s")]);
    let router = cluster.router(None, &[]).await;
    let rpc = router.addr("rpc");
    let a = cluster.comet("comet-a", &[&rpc]).await;
    let b = cluster.comet("comet-b", &[&rpc]).await;
    router.wait_comets(2, 0).await;
    router.login("liv", TermType::Android, "l").await;
    let mut t = register(&a.addr("tcp"), "liv", "l", TermType::Android).await;
    router.push("liv", 1, "never acked").await;
    let (_, down) = next(&mut t).await;
    assert_eq!(push_body(&down).1, Bytes::from("never acked"));
    a.kill().await;
    drop(t);
    router.wait_comets(1, 0).await;
    router
        .wait_metric("galopush_offline_stored_total{kind=\"push\"}", |v| v >= 1.0)
        .await;
    router
        .wait_metric(
            "galopush_bus_messages_total{topic=\"push\",event=\"retired\"}",
            |v| v >= 1.0,
        )
        .await;
    let mut again = register(&b.addr("tcp"), "liv", "l", TermType::Android).await;
    let (_, down) = next_acked(&mut again).await;
    assert_eq!(push_body(&down), (1, Bytes::from("never acked")));
    cluster.clean().await;
}

/// A comet that stops answering (its process frozen, as if its network were gone, with every
/// TCP connection still open) is noticed within 10 s; when it comes back it rejoins.
#[tokio::test]
async fn a_silent_comet_is_noticed_and_rejoins() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    let cluster = Cluster::new(REDIS, &[]);
    let router = cluster.router(None, &[]).await;
    let rpc = router.addr("rpc");
    let a = cluster.comet("comet-a", &[&rpc]).await;
    let b = cluster.comet("comet-b", &[&rpc]).await;
    router.wait_comets(2, 0).await;
    router.login("ned", TermType::Android, "n").await;
    let _t = register(&a.addr("tcp"), "ned", "n", TermType::Android).await;
    router.wait_comets(2, 1).await;
    a.signal("STOP");
    let frozen = std::time::Instant::now();
    router.wait_comets(1, 0).await;
    assert!(
        frozen.elapsed() < std::time::Duration::from_secs(10),
        "noticed after {:?}",
        frozen.elapsed()
    );
    assert_eq!(
        router.dispatch("someone-new", TermType::Android).await,
        b.addr("tcp"),
        "the dispatcher no longer hands out the silent comet"
    );
    router.push("ned", 1, "while frozen").await;
    router
        .wait_metric("galopush_offline_stored_total{kind=\"push\"}", |v| v >= 1.0)
        .await;
    a.signal("CONT");
    router.wait_comets(2, 1).await;
    cluster.clean().await;
}

#[tokio::test]
async fn a_restarted_router_delivers_again_without_terminals_reconnecting() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    let cluster = Cluster::new(REDIS, &[]);
    let router = cluster.router(None, &[]).await;
    let rpc = router.addr("rpc");
    let a = cluster.comet("comet-a", &[&rpc]).await;
    let b = cluster.comet("comet-b", &[&rpc]).await;
    router.wait_comets(2, 0).await;
    router.login("mia", TermType::Pc, "m").await;
    router.login("max", TermType::Android, "x").await;
    let mut mia = register(&a.addr("tcp"), "mia", "m", TermType::Pc).await;
    let mut max = register(&b.addr("tcp"), "max", "x", TermType::Android).await;
    router.wait_comets(2, 2).await;

    let router = router.crash_and_restart(&[("router.rpc_addr", &rpc)]).await;
    router.wait_comets(2, 2).await;
    router.push("mia", 16, "after the restart").await;
    router.push("max", 1, "after the restart too").await;
    assert_eq!(
        push_body(&next_acked(&mut mia).await.1).1,
        Bytes::from("after the restart")
    );
    assert_eq!(
        push_body(&next_acked(&mut max).await.1).1,
        Bytes::from("after the restart too")
    );
    drop((a, b));
    cluster.clean().await;
}

#[tokio::test]
async fn two_routers_consume_nsq_together_and_every_message_is_delivered() {
    use galopush_nsq::fake::{FakeLookupd, FakeNsqd};
    if !redis_or_skip(REDIS).await {
        return;
    }
    let nsqd = FakeNsqd::start().await.expect("fake nsqd");
    let lookupd = FakeLookupd::start().await.expect("fake nsqlookupd");
    for topic in [
        "userOnlineState",
        "push",
        "callback",
        "msgDownward",
        "sessionTimeout",
    ] {
        lookupd.register(topic, nsqd.addr());
    }
    let (nsqd_tcp, lookupd_http) = (nsqd.tcp_address(), lookupd.http_address());
    let cluster = Cluster::new(
        REDIS,
        &[
            ("bus.kind", "nsq"),
            ("bus.nsqd_tcp", &nsqd_tcp),
            ("bus.nsqlookupd_http", &lookupd_http),
            ("bus.heartbeat_interval", "1s"),
        ],
    );
    let r1 = cluster.router(None, &[]).await;
    let r2 = cluster.router(None, &[]).await;
    let (rpc1, rpc2) = (r1.addr("rpc"), r2.addr("rpc"));
    let a = cluster.comet("comet-a", &[&rpc1, &rpc2]).await;
    let b = cluster.comet("comet-b", &[&rpc1, &rpc2]).await;
    r1.wait_comets(2, 0).await;
    r2.wait_comets(2, 0).await;

    let users = [("n1", &a), ("n2", &b), ("n3", &a), ("n4", &b)];
    for (uid, _) in users {
        let login = serde_json::json!({"uid": uid, "termtype": 1, "code": uid, "online": true});
        nsqd.publish("userOnlineState", login.to_string());
    }
    let retired = "galopush_bus_messages_total{topic=\"userOnlineState\",event=\"retired\"}";
    let deadline = tokio::time::Instant::now() + SOON;
    while r1.metric(retired).await + r2.metric(retired).await < users.len() as f64 {
        assert!(tokio::time::Instant::now() < deadline, "logins not applied");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut terminals = Vec::new();
    for (uid, comet) in users {
        terminals.push(register(&comet.addr("tcp"), uid, uid, TermType::Android).await);
    }
    // Both routers know every session, whichever authenticated it.
    r1.wait_comets(2, 4).await;
    r2.wait_comets(2, 4).await;

    let rounds = 10;
    for i in 0..rounds {
        for (uid, _) in users {
            let push = serde_json::json!({
                "receivers": [{"uid": uid, "termtype": 1}], "flag": 0, "body": format!("{uid}-{i}")
            });
            nsqd.publish("push", push.to_string());
        }
    }
    for (t, (uid, _)) in terminals.iter_mut().zip(users) {
        let mut seen = HashSet::new();
        while seen.len() < rounds {
            let (_, down) = next_acked(t).await;
            seen.insert(push_body(&down).1);
        }
        let expected: HashSet<Bytes> = (0..rounds)
            .map(|i| Bytes::from(format!("{uid}-{i}")))
            .collect();
        assert_eq!(seen, expected, "{uid} got every message");
    }
    let taken = "galopush_bus_messages_total{topic=\"push\",event=\"received\"}";
    let (by1, by2) = (r1.metric(taken).await, r2.metric(taken).await);
    assert!(
        by1 > 0.0 && by2 > 0.0,
        "both routers consumed pushes ({by1} and {by2})"
    );
    let deadline = tokio::time::Instant::now() + SOON;
    while nsqd.stats("push", "galopush").finished < (rounds * users.len()) as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pushes not all FINished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cluster.clean().await;
}
