//! Several routers over one NSQ channel (issue 13): comets join every router, each bus message
//! is applied by one of them, any router's dispatcher answers the same for a live user, and a
//! router killed in the middle of a stream of pushes loses none of them; the same on a Redis
//! Cluster of three masters.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use galopush_client::Terminal;
use galopush_nsq::fake::{FakeLookupd, FakeNsqd};
use galopush_protocol::TermType;
use galopush_server::store::redis::test_cluster::RedisCluster;

use crate::nodes::*;

/// Two routers and two comets on Redis and the test nsqd, four users logged in over the bus and
/// registered, two on each comet.
struct TwoRouters {
    nsqd: FakeNsqd,
    _lookupd: FakeLookupd,
    cluster: Cluster,
    /// The first router, then the second.
    routers: Vec<Node>,
    comets: [Node; 2],
    terminals: Vec<(&'static str, Terminal)>,
}

const USERS: [&str; 4] = ["n1", "n2", "n3", "n4"];

impl TwoRouters {
    /// The routers' store is the Redis at `redis` (see [`Cluster::new`]).
    async fn start(redis: &str) -> TwoRouters {
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
            redis,
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

        for uid in USERS {
            let login = serde_json::json!({"uid": uid, "termtype": 1, "code": uid, "online": true});
            nsqd.publish("userOnlineState", login.to_string());
        }
        let retired = "galopush_bus_messages_total{topic=\"userOnlineState\",event=\"retired\"}";
        let deadline = tokio::time::Instant::now() + SOON;
        while r1.metric(retired).await + r2.metric(retired).await < USERS.len() as f64 {
            assert!(tokio::time::Instant::now() < deadline, "logins not applied");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut terminals = Vec::new();
        for (i, uid) in USERS.into_iter().enumerate() {
            let comet = if i % 2 == 0 { &a } else { &b };
            terminals.push((
                uid,
                register(&comet.addr("tcp"), uid, uid, TermType::Android).await,
            ));
        }
        // Both routers know every session, whichever authenticated it.
        r1.wait_comets(2, 4).await;
        r2.wait_comets(2, 4).await;
        TwoRouters {
            nsqd,
            _lookupd: lookupd,
            cluster,
            routers: vec![r1, r2],
            comets: [a, b],
            terminals,
        }
    }

    /// Publishes one push of `body` to `uid`'s Android terminal.
    fn push(&self, uid: &str, body: &str) {
        let push = serde_json::json!({
            "receivers": [{"uid": uid, "termtype": 1}], "flag": 0, "body": body
        });
        self.nsqd.publish("push", push.to_string());
    }

    /// Waits until the channel has every one of `total` pushes FINished and nothing left.
    async fn wait_all_finished(&self, total: u64) {
        let deadline = tokio::time::Instant::now() + SOON * 2;
        loop {
            let stats = self.nsqd.stats("push", "galopush");
            if stats.finished >= total && stats.depth == 0 && stats.in_flight == 0 {
                assert_eq!(stats.finished, total, "each push FINished once: {stats:?}");
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pushes not all FINished: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The bodies `uid` must receive in a stream of `rounds` pushes.
fn bodies(uid: &str, rounds: usize) -> HashSet<Bytes> {
    (0..rounds)
        .map(|i| Bytes::from(format!("{uid}-{i}")))
        .collect()
}

const PUSHES_TAKEN: &str = "galopush_bus_messages_total{topic=\"push\",event=\"received\"}";

#[tokio::test]
async fn two_routers_consume_nsq_together_and_every_message_is_delivered() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    consume_together(TwoRouters::start(REDIS).await).await;
}

#[tokio::test]
async fn two_routers_on_a_redis_cluster_consume_nsq_together() {
    let Some(redis) = RedisCluster::start_or_skip().await else {
        return;
    };
    consume_together(TwoRouters::start(&redis.url()).await).await;
}

/// Any router's dispatcher sends a live user to the comet holding them; pushes taken by both
/// routers from the channel all arrive, each FINished once; one for a terminal that went away
/// is stored and handed over when it is back.
async fn consume_together(mut setup: TwoRouters) {
    for uid in USERS {
        let expected = setup.comets[USERS.iter().position(|u| *u == uid).unwrap() % 2].addr("tcp");
        for router in &setup.routers {
            assert_eq!(
                router.dispatch(uid, TermType::Pc).await,
                expected,
                "every router sends a live user to the comet holding them"
            );
        }
    }

    let rounds = 10;
    for i in 0..rounds {
        for uid in USERS {
            setup.push(uid, &format!("{uid}-{i}"));
        }
    }
    for (uid, t) in &mut setup.terminals {
        let mut seen = HashSet::new();
        while seen.len() < rounds {
            let (_, down) = next_acked(t).await;
            seen.insert(push_body(&down).1);
        }
        assert_eq!(seen, bodies(uid, rounds), "{uid} got every message");
    }
    let (r1, r2) = (&setup.routers[0], &setup.routers[1]);
    let (by1, by2) = (r1.metric(PUSHES_TAKEN).await, r2.metric(PUSHES_TAKEN).await);
    assert!(
        by1 > 0.0 && by2 > 0.0,
        "both routers consumed pushes ({by1} and {by2})"
    );
    let total = (rounds * USERS.len()) as u64;
    setup.wait_all_finished(total).await;

    // A push for a terminal that went away is stored, and handed over when it registers again.
    let (uid, away) = setup.terminals.remove(0);
    drop(away);
    for router in &setup.routers {
        router.wait_comets(2, 3).await;
    }
    setup.push(uid, "kept");
    setup.wait_all_finished(total + 1).await;
    let mut back = register(&setup.comets[0].addr("tcp"), uid, uid, TermType::Android).await;
    let (_, down) = next_acked(&mut back).await;
    assert_eq!(
        push_body(&down),
        (1, Bytes::from("kept")),
        "stored, then delivered"
    );
    setup.cluster.clean().await;
}

#[tokio::test]
async fn a_router_killed_mid_stream_loses_no_push() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    let mut setup = TwoRouters::start(REDIS).await;
    let (rounds, kill_at) = (150, 50);
    // The first third of the stream goes out while the terminals hold their acks, so both
    // routers hold pushes that are delivered but not settled (and not FINished) when the first
    // one dies.
    for i in 0..kill_at {
        for uid in USERS {
            setup.push(uid, &format!("{uid}-{i}"));
        }
    }
    let held = (kill_at * USERS.len()) as f64;
    let deadline = tokio::time::Instant::now() + SOON;
    let (r1, r2) = loop {
        let (r1, r2) = (
            setup.routers[0].metric(PUSHES_TAKEN).await,
            setup.routers[1].metric(PUSHES_TAKEN).await,
        );
        if r1 + r2 >= held {
            break (r1, r2);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the routers took {r1} and {r2} of {held} pushes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stats = setup.nsqd.stats("push", "galopush");
    assert!(
        r1 > 0.0 && stats.in_flight as f64 == held,
        "the first router holds unsettled pushes when it dies ({r1} taken, {stats:?})"
    );
    setup.routers.remove(0).kill().await;
    let survivor = &setup.routers[0];

    // The terminals read (and ack) on their own while the rest of the stream goes on;
    // duplicates are allowed (at least once), missing bodies are not.
    let readers: Vec<_> = std::mem::take(&mut setup.terminals)
        .into_iter()
        .map(|(uid, mut t)| {
            tokio::spawn(async move {
                let expected = bodies(uid, rounds);
                let mut seen = HashSet::new();
                while !expected.is_subset(&seen) {
                    let Ok((_, down)) = tokio::time::timeout(SOON * 2, next_acked(&mut t)).await
                    else {
                        let missing: Vec<_> = expected.difference(&seen).collect();
                        panic!("{uid} is missing {} pushes: {missing:?}", missing.len());
                    };
                    seen.insert(push_body(&down).1);
                }
                assert_eq!(seen, expected, "{uid} got only its own pushes");
                (uid, t)
            })
        })
        .collect();
    for i in kill_at..rounds {
        for uid in USERS {
            setup.push(uid, &format!("{uid}-{i}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for reader in readers {
        setup
            .terminals
            .push(reader.await.expect("every terminal got all its pushes"));
    }
    let total = rounds * USERS.len();
    setup.wait_all_finished(total as u64).await;
    let taken = survivor.metric(PUSHES_TAKEN).await - r2;
    assert!(
        taken >= (total as f64 - held) + r1,
        "the survivor took the rest of the stream and the {r1} pushes the dead router held \
         ({taken} taken)"
    );
    setup.cluster.clean().await;
}
