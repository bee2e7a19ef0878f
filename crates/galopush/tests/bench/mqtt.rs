//! The bench against an MQTT broker (`--target mqtt://…`, a Mosquitto of the test's own): idle,
//! unicast and fan-out at a small size, every message delivered and acked once, none lost; and
//! `--plot` / `galopush bench plot` drawing runs side by side.

use galopush_bench::{Report, Scenario, run};

use crate::mosquitto::Mosquitto;
use crate::{args, assert_clean};

/// Terminals per MQTT run.
const TERMINALS: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_mqtt_clients_with_the_brokers_memory() {
    let Some(broker) = Mosquitto::start().await else {
        return;
    };
    let pid = broker.pid.to_string();
    let report = run(&args(&[
        "idle",
        "--target",
        &broker.url,
        "--terminals",
        "50",
        "--hold",
        "200ms",
        "--server-pid",
        &pid,
        "--per-source-ip",
        "16",
    ]))
    .await
    .expect("the run is carried out");
    assert_clean(&report, TERMINALS);
    assert_eq!(report.broker.as_deref(), Some(broker.url.as_str()));
    assert_eq!(report.label, "mqtt");
    assert!(report.login.is_none() && report.dispatch.is_none());
    let server = report
        .server
        .expect("--server-pid gives the broker's figures");
    assert_eq!(server.pids, [broker.pid]);
    assert!(server.rss_kib_after_connect.is_some_and(|k| k > 0));
    assert!(report.phases.iter().all(|p| p.server_cpu_seconds.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicast_mqtt_every_message_acked_once() {
    let Some(broker) = Mosquitto::start().await else {
        return;
    };
    let report = run(&args(&[
        "unicast",
        "--target",
        &broker.url,
        "--terminals",
        "50",
        "--messages",
        "2000",
        "--batch",
        "40",
        "--publishers",
        "3",
        "--body-size",
        "200",
    ]))
    .await
    .expect("the run is carried out");
    assert_clean(&report, TERMINALS);
    let delivery = report.delivery.as_ref().expect("unicast delivers");
    // 40 messages a client, twice Mosquitto's 20 in flight: a client that did not ack would
    // stop receiving half-way.
    assert_eq!(delivery.published.count, 2000);
    assert_eq!(delivery.expected, 2000);
    assert_eq!(delivery.delivered.count, 2000);
    assert_eq!(delivery.timeline.last().map(|t| t.1), Some(2000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_mqtt_reaches_every_client_and_plots_beside_another_run() {
    let Some(broker) = Mosquitto::start().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut runs = Vec::new();
    for (label, messages) in [("mosquitto", "30"), ("mosquitto again", "10")] {
        let report = run(&args(&[
            "fanout",
            "--target",
            &broker.url,
            "--terminals",
            "50",
            "--messages",
            messages,
            "--batch",
            "4",
            "--label",
            label,
        ]))
        .await
        .expect("the run is carried out");
        assert_clean(&report, TERMINALS);
        let delivery = report.delivery.as_ref().expect("fanout delivers");
        assert_eq!(
            delivery.expected,
            messages.parse::<u64>().expect("n") * TERMINALS
        );
        // Saved as `--json` writes it, read back as `galopush bench plot` reads it.
        let saved: Report = serde_json::from_str(&report.json()).expect("the report reads back");
        assert_eq!(saved.scenario, Scenario::Fanout);
        runs.push(saved);
    }
    let picture = dir.path().join("peers.svg");
    galopush_bench::plot(&picture, &runs).expect("the runs are drawn");
    let svg = std::fs::read_to_string(&picture).expect("an SVG file");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    for text in [
        "fan-out: acked deliveries per second",
        "fan-out: publish-to-receive latency",
        "mosquitto: ",
        "mosquitto again: ",
    ] {
        assert!(svg.contains(text), "the picture lacks {text:?}");
    }
    assert!(
        galopush_bench::plot(&dir.path().join("idle.svg"), &[]).is_err(),
        "nothing to draw is an error"
    );
}
