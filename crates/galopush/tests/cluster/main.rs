//! End-to-end tests of a cluster (issue: routers and comets as separate processes over gRPC,
//! with Redis): dispatch across comets, delivery and kicks across comets, a killed comet's
//! unsettled deliveries stored, a restarted router rebuilt from the comets' reports; several
//! routers in `routers`, sizes in `scale`, the link's security in `security`, the admin routes
//! of a router in `admin`.
//! Each test has its own processes, ports and Redis key prefix.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod bench;
mod nodes;
mod routers;
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
