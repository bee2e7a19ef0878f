//! End-to-end tests of `galopush bench` (the `galopush-bench` library): each scenario at a small
//! size against the real `galopush standalone`, over TCP and once over WebSocket, and against a
//! Mosquitto (`mqtt`). They check that nothing is lost, duplicated or failed and that the counts
//! add up, never how fast.

#[path = "../common/mod.rs"]
mod common;

mod gateway;
mod mosquitto;
mod mqtt;

use clap::Parser;
use common::process::API_TOKEN;
use galopush_bench::{BenchArgs, Report, Scenario, run};
use gateway::Gateway;

/// Terminals per run: enough for concurrency, small enough for CI on 2 cores.
const TERMINALS: u64 = 200;

/// Arguments as they would be typed after `galopush bench`.
fn args(words: &[&str]) -> BenchArgs {
    BenchArgs::parse_from(std::iter::once("bench").chain(words.iter().copied()))
}

/// Every terminal connected and registered, nothing lost, duplicated or failed.
fn assert_clean(report: &Report, terminals: u64) {
    let text = report.text();
    assert_eq!(report.errors.total(), 0, "{text}");
    assert_eq!(report.lost(), 0, "{text}");
    assert!(report.is_clean(), "{text}");
    assert_eq!(report.terminals, terminals, "{text}");
    assert_eq!(report.connect.connects.count, terminals, "{text}");
    assert_eq!(report.connect.registrations.count, terminals, "{text}");
    if let Some(delivery) = &report.delivery {
        assert_eq!(delivery.duplicates, 0, "{text}");
        assert_eq!(delivery.delivered.count, delivery.expected, "{text}");
        let latency = delivery.latency.expect("deliveries have latencies");
        assert_eq!(latency.samples, delivery.expected, "{text}");
        assert!(latency.p50_us <= latency.p99_us && latency.p99_us <= latency.max_us);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_through_the_dispatcher_with_server_memory() {
    let gw = Gateway::start(&[]).await;
    let pid = gw.pid.to_string();
    let report = run(&args(&[
        "idle",
        "--terminals",
        "200",
        "--dispatch-url",
        &format!("{}/v1/gComet.addr", gw.http),
        "--api-url",
        &gw.api,
        "--api-token",
        API_TOKEN,
        "--hold",
        "300ms",
        "--server-pid",
        &pid,
        "--per-source-ip",
        "64",
    ]))
    .await
    .expect("the run is carried out");
    assert_clean(&report, TERMINALS);
    assert_eq!(report.scenario, Scenario::Idle);
    assert_eq!(report.dispatch.map(|d| d.count), Some(TERMINALS));
    assert_eq!(report.login.map(|l| l.count), Some(TERMINALS));
    assert_eq!(report.hold_seconds, Some(0.3));
    assert!(report.delivery.is_none());
    let server = report.server.expect("--server-pid gives server figures");
    assert_eq!(server.pids, [gw.pid]);
    assert_eq!(report.comets.len(), 1, "one comet: {:?}", report.comets);
    assert!(server.rss_kib_before_connect.is_some_and(|k| k > 0));
    assert!(server.rss_kib_after_connect.is_some_and(|k| k > 0));
    assert!(server.rss_bytes_per_connection.is_some());
    let names: Vec<&str> = report.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["dispatch", "login", "connect", "hold", "stop"]);
    for p in &report.phases {
        let (Some(total), Some(user), Some(system)) = (
            p.server_cpu_seconds,
            p.server_user_seconds,
            p.server_system_seconds,
        ) else {
            panic!("phase {} lacks the server's CPU time", p.name);
        };
        assert!(
            (user + system - total).abs() < 1e-9,
            "{}: {user} + {system} != {total}",
            p.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicast_tcp_ring_xor_in_batches() {
    let gw = Gateway::start(&[]).await;
    let report = run(&args(&[
        "unicast",
        "--terminals",
        "200",
        "--comet-tcp",
        &gw.tcp,
        "--api-url",
        &gw.api,
        "--api-token",
        API_TOKEN,
        "--encoding",
        "3",
        "--messages",
        "600",
        "--batch",
        "50",
        "--publishers",
        "3",
    ]))
    .await
    .expect("the run is carried out");
    assert_clean(&report, TERMINALS);
    let delivery = report.delivery.as_ref().expect("unicast delivers");
    assert_eq!(delivery.topic, "push");
    assert_eq!((delivery.messages, delivery.batch), (600, 50));
    assert_eq!(delivery.published.count, 600);
    assert_eq!(delivery.expected, 600);
    assert!(report.dispatch.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicast_tcp_paced_instant_messages() {
    let gw = Gateway::start(&[]).await;
    let report = run(&args(&[
        "unicast",
        "--terminals",
        "50",
        "--comet-tcp",
        &gw.tcp,
        "--api-url",
        &gw.api,
        "--api-token",
        API_TOKEN,
        "--kind",
        "im",
        "--messages",
        "200",
        "--batch",
        "10",
        "--rate",
        "2000",
        "--connect-rate",
        "1000",
    ]))
    .await
    .expect("the run is carried out");
    assert_clean(&report, 50);
    let delivery = report.delivery.as_ref().expect("unicast delivers");
    assert_eq!(delivery.topic, "msgDownward");
    assert_eq!(delivery.rate, Some(2000.0));
    assert_eq!(delivery.expected, 200);
    // 200 messages at 2000/s take at least 95 ms to publish; 50 connects at 1000/s 49 ms.
    assert!(delivery.published.seconds >= 0.09, "{}", report.text());
    assert!(
        report.connect.connects.seconds >= 0.045,
        "{}",
        report.text()
    );
}

/// A soak's view (`--sample`): deliveries, latency, the server's memory and open files per
/// interval, while the run goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_run_reports_each_interval() {
    let gw = Gateway::start(&[]).await;
    let pid = gw.pid.to_string();
    let report = run(&args(&[
        "unicast",
        "--terminals",
        "50",
        "--comet-tcp",
        &gw.tcp,
        "--api-url",
        &gw.api,
        "--api-token",
        API_TOKEN,
        "--messages",
        "1000",
        "--batch",
        "10",
        "--rate",
        "1000",
        "--sample",
        "200ms",
        "--server-pid",
        &pid,
    ]))
    .await
    .expect("the run is carried out");
    assert_clean(&report, 50);
    let delivery = report.delivery.as_ref().expect("unicast delivers");
    // A second of publishing at 1000/s: several intervals of 200 ms.
    assert!(delivery.samples.len() >= 3, "{}", report.text());
    let delivered: f64 = delivery
        .samples
        .iter()
        .map(|s| s.delivered_per_second * 0.2)
        .sum();
    assert!(delivered > 500.0, "{}", report.text());
    for sample in &delivery.samples {
        assert!(sample.server_rss_kib.is_some_and(|kib| kib > 0));
        // The gateway holds at least one socket per terminal.
        assert!(sample.server_open_files.is_some_and(|fds| fds >= 50));
        assert!(sample.bench_rss_kib.is_some_and(|kib| kib > 0));
        assert!(sample.p50_us <= sample.p99_us && sample.p99_us <= sample.max_us);
    }
    assert!(report.text().contains("server fds"), "{}", report.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_tcp_reaches_every_terminal() {
    let gw = Gateway::start(&[]).await;
    let report = run(&args(&[
        "fanout",
        "--terminals",
        "200",
        "--comet-tcp",
        &gw.tcp,
        "--api-url",
        &gw.api,
        "--api-token",
        API_TOKEN,
        "--messages",
        "5",
        "--batch",
        "2",
    ]))
    .await
    .expect("the run is carried out");
    assert_clean(&report, TERMINALS);
    let delivery = report.delivery.as_ref().expect("fanout delivers");
    assert_eq!(delivery.published.count, 5);
    assert_eq!(delivery.expected, 5 * TERMINALS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_tcp_without_logins_on_an_open_server() {
    let gw = Gateway::start(&[("auth.mode", "open")]).await;
    let report = run(&args(&[
        "storm",
        "--terminals",
        "200",
        "--comet-tcp",
        &gw.tcp,
        "--no-login",
        "--concurrency",
        "50",
        "--json",
    ]))
    .await
    .expect("the run is carried out");
    assert_clean(&report, TERMINALS);
    assert!(report.login.is_none());
    assert!(report.connect.registrations.per_second > 0.0);
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("JSON report");
    assert_eq!(json["scenario"], "storm");
    assert_eq!(json["connect"]["registrations"]["count"], TERMINALS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicast_websocket_through_the_dispatcher() {
    let gw = Gateway::start(&[]).await;
    let report = run(&args(&[
        "unicast",
        "--transport",
        "ws",
        "--terminals",
        "200",
        "--dispatch-url",
        &gw.http,
        "--api-url",
        &gw.api,
        "--api-token",
        API_TOKEN,
        "--messages",
        "400",
    ]))
    .await
    .expect("the run is carried out");
    assert_clean(&report, TERMINALS);
    assert_eq!(report.dispatch.map(|d| d.count), Some(TERMINALS));
    assert_eq!(report.delivery.as_ref().map(|d| d.expected), Some(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_not_hidden() {
    // A port nothing listens on: every connect fails, and the report says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = closed.local_addr().expect("its address").to_string();
    drop(closed);
    let report = run(&args(&[
        "storm",
        "--terminals",
        "20",
        "--comet-tcp",
        &addr,
        "--no-login",
    ]))
    .await
    .expect("the run is carried out");
    assert!(!report.is_clean());
    assert_eq!(report.errors.connect, 20);
    assert_eq!(report.connect.registrations.count, 0);
    assert!(!report.errors.samples.is_empty());
    assert!(report.text().contains("FAILED"));

    let refused = run(&args(&[
        "unicast",
        "--terminals",
        "5",
        "--comet-tcp",
        &addr,
    ]))
    .await;
    assert!(refused.is_err(), "unicast without --api-url cannot run");
}
