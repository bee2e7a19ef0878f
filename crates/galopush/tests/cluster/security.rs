//! The link between routers and comets is authenticated (SPEC §11): a join needs
//! `cluster.secret`, a second comet cannot take a joined comet's id, a comet's word about
//! another comet's deliveries is ignored, and with `cluster.ca` the link runs over mutual TLS.

use std::time::Duration;

use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_server::link::grpc::proto::{self, comet_message, router_client::RouterClient};
use tokio_stream::wrappers::ReceiverStream;

use crate::common::pki::{Pki, setting};
use crate::nodes::*;

const SECRET: &str = "link-secret";

#[tokio::test]
async fn a_join_without_the_secret_is_refused_and_the_comet_exits_naming_it() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    let cluster = Cluster::new(REDIS, &[]);
    let router = cluster.router(None, &[("cluster.secret", SECRET)]).await;
    let rpc = router.addr("rpc");
    for wrong in ["", "not-the-secret"] {
        let comet = cluster
            .comet_with("intruder", &[&rpc], &[("cluster.secret", wrong)])
            .await;
        let (status, log) = comet.exit_within(SOON).await;
        assert!(!status.success());
        assert!(log.contains("cluster.secret"), "{log}");
    }
    router.wait_comets(0, 0).await;
    let series = "galopush_link_refused_total{reason=\"secret\"}";
    assert_eq!(router.metric(series).await, 2.0);
    // With the secret, a comet joins and serves.
    let comet = cluster
        .comet_with("comet-a", &[&rpc], &[("cluster.secret", SECRET)])
        .await;
    router.wait_comets(1, 0).await;
    router.login("ann", TermType::Android, "c").await;
    let mut t = register(&comet.addr("tcp"), "ann", "c", TermType::Android).await;
    router.push("ann", 1, "joined").await;
    assert_eq!(
        push_body(&next_acked(&mut t).await.1).1,
        Bytes::from("joined")
    );
    cluster.clean().await;
}

#[test]
fn a_router_on_the_network_without_a_secret_does_not_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_galopush"))
        .arg("router")
        .env(env_name("store.kind"), "memory")
        .env(env_name("router.http_addr"), "127.0.0.1:0")
        .env(env_name("api.addr"), "127.0.0.1:0")
        .env(env_name("router.rpc_addr"), "0.0.0.0:0")
        .env(env_name("store.path"), dir.path())
        .output()
        .expect("run galopush router");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("router.rpc_addr") && err.contains("cluster.secret"),
        "{err}"
    );
}

#[tokio::test]
async fn a_second_comet_with_a_joined_id_exits_and_leaves_the_first_alone() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    let cluster = Cluster::new(REDIS, &[]);
    let router = cluster.router(None, &[]).await;
    let rpc = router.addr("rpc");
    let first = cluster.comet("comet-a", &[&rpc]).await;
    router.wait_comets(1, 0).await;
    router.login("bo", TermType::Android, "c").await;
    let mut t = register(&first.addr("tcp"), "bo", "c", TermType::Android).await;
    router.wait_comets(1, 1).await;

    let second = cluster.comet("comet-a", &[&rpc]).await;
    // It tries for a while (a restarted comet's crashed predecessor leaves within seconds),
    // then gives up.
    let (status, log) = second.exit_within(Duration::from_secs(40)).await;
    assert!(!status.success());
    assert!(log.contains("comet id taken"), "{log}");
    assert!(
        router
            .metric("galopush_link_refused_total{reason=\"id_taken\"}")
            .await
            >= 1.0
    );
    // The first comet and its terminal were never disturbed.
    router.wait_comets(1, 1).await;
    router.push("bo", 1, "still here").await;
    assert_eq!(
        push_body(&next_acked(&mut t).await.1).1,
        Bytes::from("still here")
    );
    cluster.clean().await;
}

#[tokio::test]
async fn an_ack_forged_by_another_comet_is_ignored() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    let cluster = Cluster::new(REDIS, &[("cluster.secret", SECRET)]);
    let router = cluster.router(None, &[]).await;
    let rpc = router.addr("rpc");
    let comet = cluster.comet("comet-a", &[&rpc]).await;
    router.wait_comets(1, 0).await;
    router.login("cy", TermType::Android, "c").await;
    let mut victim = register(&comet.addr("tcp"), "cy", "c", TermType::Android).await;

    // Another comet, with the secret: it joins, then acks deliveries it was never sent.
    let mut client = RouterClient::connect(format!("http://{rpc}"))
        .await
        .expect("connect to the router");
    let (upward, up) = tokio::sync::mpsc::channel(4);
    let join = comet_message::Body::Join(proto::Join {
        comet_id: "evil".into(),
        tcp: "127.0.0.1:9".into(),
        ws: "127.0.0.1:9".into(),
        secret: SECRET.into(),
        incarnation: 7,
        ..Default::default()
    });
    upward
        .send(proto::CometMessage { body: Some(join) })
        .await
        .expect("join");
    let _downward = client.link(ReceiverStream::new(up)).await.expect("joined");
    router.wait_comets(2, 1).await;

    router.push("cy", 1, "mine").await;
    let (_, down) = next(&mut victim).await;
    assert_eq!(push_body(&down).1, Bytes::from("mine"));
    // Delivery ids are a message's group number and an index: the attacker tries the first
    // groups, while the victim does not ack.
    let forged = (1..=64u64)
        .flat_map(|group| (0..4).map(move |index| (group << 24) | index))
        .map(|delivery| proto::Settle {
            delivery,
            acked: true,
        })
        .collect();
    let settles = comet_message::Body::Settles(proto::Settles { settles: forged });
    upward
        .send(proto::CometMessage {
            body: Some(settles),
        })
        .await
        .expect("forged acks");
    router
        .wait_metric(
            "galopush_link_refused_total{reason=\"foreign_settle\"}",
            |v| v >= 1.0,
        )
        .await;
    // The delivery was not taken as acked: it times out and is stored for the terminal.
    router
        .wait_metric("galopush_offline_stored_total{kind=\"push\"}", |v| v >= 1.0)
        .await;
    drop(victim);
    let mut back = register(&comet.addr("tcp"), "cy", "c", TermType::Android).await;
    assert_eq!(
        push_body(&next_acked(&mut back).await.1),
        (1, Bytes::from("mine"))
    );
    cluster.clean().await;
}

#[tokio::test]
async fn the_link_runs_over_mutual_tls_with_the_cluster_ca() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    let pki = Pki::new();
    let (router_cert, router_key) = pki.leaf("router");
    let (comet_cert, comet_key) = pki.leaf("comet");
    let ca = setting(&pki.ca);
    let cluster = Cluster::new(REDIS, &[("cluster.ca", &ca)]);
    let router = cluster
        .router(
            None,
            &[
                ("cluster.cert", &setting(&router_cert)),
                ("cluster.key", &setting(&router_key)),
            ],
        )
        .await;
    let rpc = router.addr("rpc");
    let comet = cluster
        .comet_with(
            "comet-a",
            &[&rpc],
            &[
                ("cluster.cert", &setting(&comet_cert)),
                ("cluster.key", &setting(&comet_key)),
            ],
        )
        .await;
    router.wait_comets(1, 0).await;
    router.login("di", TermType::Pc, "c").await;
    let mut t = register(&comet.addr("tcp"), "di", "c", TermType::Pc).await;
    router.push("di", 16, "over mTLS").await;
    assert_eq!(
        push_body(&next_acked(&mut t).await.1).1,
        Bytes::from("over mTLS")
    );

    // A comet whose certificate another CA signed never gets in.
    let rogue = Pki::new();
    let (rogue_cert, rogue_key) = rogue.leaf("rogue");
    let _rogue = cluster
        .comet_with(
            "rogue",
            &[&rpc],
            &[
                ("cluster.ca", &setting(&rogue.ca)),
                ("cluster.cert", &setting(&rogue_cert)),
                ("cluster.key", &setting(&rogue_key)),
            ],
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    router.wait_comets(1, 1).await;
    cluster.clean().await;
}
