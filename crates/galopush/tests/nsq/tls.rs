//! galopush on an nsqd that requires TLS and AUTH (SPEC §11): every connection upgrades after
//! IDENTIFY, authenticates, and then consumes and publishes as usual.

use bytes::Bytes;
use galopush_nsq::fake::FakeNsqdOptions;
use galopush_protocol::TermType;
use galopush_protocol::message::Down;

use crate::common::pki::{Pki, setting};
use crate::harness::*;

const SECRET: &str = "nsq-secret";

#[tokio::test]
async fn consumes_and_publishes_over_tls_with_auth() {
    let pki = Pki::new();
    let nsq = Nsq::start_with(FakeNsqdOptions {
        tls: Some(pki.server_config("nsqd")),
        tls_required: true,
        auth_secrets: Some(vec![SECRET.to_owned()]),
        ..FakeNsqdOptions::default()
    })
    .await;
    let ca = setting(&pki.ca);
    let g = Gateway::start(
        &nsq,
        &[
            ("bus.nsq_tls", "true"),
            ("bus.nsq_ca", &ca),
            ("bus.nsq_auth_secret", SECRET),
        ],
    )
    .await;
    let mut t = g.terminal(&nsq, "tia", TermType::Android).await;
    nsq.publish("push", Nsq::down("tia", 1, "through TLS"));
    assert_eq!(
        body(&next_acked(&mut t).await.1),
        Bytes::from("through TLS")
    );
    t.send_im(Bytes::from("up through TLS")).await.expect("im");
    assert_eq!(next(&mut t).await.1, Down::ImResp { code: 0 });
    assert_eq!(nsq.nsqd.published("msgUpward").len(), 1);
    let stats = nsq.nsqd.server_stats();
    assert!(
        stats.tls_connections >= 6,
        "five consumers and a producer: {stats:?}"
    );
    assert!(stats.auth_accepted >= 6, "{stats:?}");
}

#[tokio::test]
async fn a_wrong_auth_secret_takes_nothing() {
    let pki = Pki::new();
    let nsq = Nsq::start_with(FakeNsqdOptions {
        tls: Some(pki.server_config("nsqd")),
        auth_secrets: Some(vec![SECRET.to_owned()]),
        ..FakeNsqdOptions::default()
    })
    .await;
    let ca = setting(&pki.ca);
    let _g = Gateway::start(
        &nsq,
        &[
            ("bus.nsq_tls", "true"),
            ("bus.nsq_ca", &ca),
            ("bus.nsq_auth_secret", "wrong"),
        ],
    )
    .await;
    nsq.publish("push", Nsq::down("nobody", 1, "stays"));
    nsq.wait("push", "a refused consumer", |_| {
        let server = nsq.nsqd.server_stats();
        server.auth_commands >= 1 && server.auth_accepted == 0
    })
    .await;
    let push = nsq.stats("push");
    assert_eq!(
        (push.clients, push.finished),
        (0, 0),
        "never subscribed: {push:?}"
    );
}
