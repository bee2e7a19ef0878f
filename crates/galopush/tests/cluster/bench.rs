//! `galopush bench` against a cluster (issue 13): the dispatcher on the router spreads the
//! terminals over both comets, logins and messages go to the router's business API, and the
//! server figures add up the router's and the comets' processes; bodies can be padded to a size.

use clap::Parser;
use galopush_bench::{BenchArgs, Report, run};

use crate::common::process::API_TOKEN;
use crate::nodes::*;

/// Arguments as they would be typed after `galopush bench`.
fn args(words: &[&str]) -> BenchArgs {
    BenchArgs::parse_from(std::iter::once("bench").chain(words.iter().copied()))
}

fn assert_all_delivered(report: &Report) {
    let text = report.text();
    assert!(report.is_clean(), "{text}");
    let delivery = report.delivery.as_ref().expect("a delivery scenario");
    assert_eq!(delivery.delivered.count, delivery.expected, "{text}");
    assert_eq!(delivery.duplicates, 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_spreads_terminals_over_the_comets_and_everything_is_delivered() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    let cluster = Cluster::new(REDIS, &[]);
    let router = cluster.router(None, &[]).await;
    let rpc = router.addr("rpc");
    let a = cluster.comet("comet-a", &[&rpc]).await;
    let b = cluster.comet("comet-b", &[&rpc]).await;
    router.wait_comets(2, 0).await;
    let pids = format!("{},{},{}", router.pid(), a.pid(), b.pid());
    let (dispatch, api) = (router.http(), router.api());
    let common = [
        "--terminals",
        "120",
        "--dispatch-url",
        &dispatch,
        "--api-url",
        &api,
        "--api-token",
        API_TOKEN,
        "--server-pid",
        &pids,
        "--per-source-ip",
        "64",
    ];

    let unicast = run(&args(
        &[&["unicast", "--messages", "600"][..], &common[..]].concat(),
    ))
    .await
    .expect("the unicast run is carried out");
    assert_all_delivered(&unicast);
    let text = unicast.text();
    let mut comets: Vec<&str> = unicast.comets.iter().map(|c| c.addr.as_str()).collect();
    comets.sort_unstable();
    let mut expected = vec![a.addr("tcp"), b.addr("tcp")];
    expected.sort_unstable();
    assert_eq!(comets, expected, "terminals on both comets: {text}");
    assert_eq!(
        unicast.comets.iter().map(|c| c.terminals).sum::<u64>(),
        120,
        "{text}"
    );
    let server = unicast.server.as_ref().expect("--server-pid gives figures");
    assert_eq!(server.pids.len(), 3, "{text}");
    assert!(server.rss_bytes_per_connection.is_some(), "{text}");

    let fanout = run(&args(
        &[
            &[
                "fanout",
                "--messages",
                "5",
                "--batch",
                "1",
                "--body-size",
                "4096",
            ][..],
            &common[..],
        ]
        .concat(),
    ))
    .await
    .expect("the fan-out run is carried out");
    assert_all_delivered(&fanout);
    let delivery = fanout.delivery.as_ref().expect("fan-out delivers");
    assert_eq!((delivery.expected, delivery.body_size), (600, 4096));
    drop((a, b, router));
    cluster.clean().await;
}
