//! The chaos runs (issue 17): a gateway under a steady load of pushes, callbacks and IMs down and
//! IMs up from terminals that reconnect whenever they are dropped, while a seeded schedule
//! SIGKILLs and restarts its processes, pauses one past the ack timeout (SIGSTOP/SIGCONT), takes
//! the bus's webhook away, and drops terminals in the middle of a frame. At the end it waits for
//! quiet, brings back the terminals it kept away, has every terminal register once more, and
//! accounts for every message: delivered (once, or more), coalesced into a later push, stored for
//! a terminal that was away and delivered when it came back, stored while its terminal was
//! online and delivered only at its next REGISTER (late, not lost) — or lost. A run fails when
//! anything is lost.
//!
//! Two gateways are put through it: a local cluster — two routers, two comets, a Redis with
//! persistence, the embedded bus and its webhook — and one `galopush standalone` on its embedded
//! store, killed and restarted on the same data directory. The ledger counts a message delivered
//! when its terminal receives it, and a live gateway hands a message to its terminal within
//! milliseconds, so a kill at a random moment seldom finds an accepted message still inside the
//! process; the standalone run therefore also kills the gateway the moment it answers a large
//! `/mpub`, when most of that request's messages have yet to reach their terminals and must come
//! back from the inbox after the restart.
//!
//! `.ci/run` runs the short forms (60 s, seed 1, 600 terminals, both at once). The long one, and
//! any seed: `CHAOS_SECS=1800 CHAOS_SEED=7 CHAOS_TERMINALS=3000 CHAOS_RATE=1000 cargo test
//! --release -p galopush --test chaos -- --nocapture` (README, "Proof of nothing lost"; add a
//! test's name, `cluster` or `standalone`, to run one). The same seed replays the same schedule
//! of faults, targets and messages; what the processes do in between is up to the machine.

#[path = "../common/mod.rs"]
mod common;

mod business;
mod ledger;
mod parts;
mod terminals;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use galopush_client::Dispatcher;
use tokio::time::Instant;

use business::{Publisher, Webhook};
use common::process::{api_client, free_port, metric};
use common::redis::OwnRedis;
use ledger::{Ledger, Phase};
use parts::{Part, cluster_store_settings, common_settings};
use terminals::{Behaviour, Control, Spec};

/// The ack timeout of the run's cluster; a pause lasts longer than this.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How many messages the burst before a kill publishes in one `/mpub`.
const BURST: usize = 2000;
/// The series counting the messages the embedded inbox never wrote.
const UNWRITTEN: &str = "galopush_inbox_unwritten_total";
/// How long nothing may happen for the run to call it quiet.
const QUIET: Duration = Duration::from_secs(6);
/// The longest the end of a run may take to become quiet.
const SETTLE: Duration = Duration::from_secs(180);

/// A run's size, from the environment (`CHAOS_*`), with the short form's defaults.
struct Settings {
    seed: u64,
    duration: Duration,
    terminals: usize,
    rate: u32,
    im_up_every: Duration,
}

impl Settings {
    fn from_env() -> Settings {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
                Err(_) => default,
            }
        }
        Settings {
            seed: var("CHAOS_SEED", 1),
            duration: Duration::from_secs(var("CHAOS_SECS", 60)),
            terminals: var("CHAOS_TERMINALS", 600),
            rate: var("CHAOS_RATE", 200),
            im_up_every: Duration::from_secs(var("CHAOS_IM_UP_EVERY_SECS", 20)),
        }
    }
}

/// The gateway under chaos.
enum Gateway {
    /// Two routers (their business APIs at `apis`) and two comets over a Redis of their own.
    Cluster {
        redis: OwnRedis,
        routers: Vec<Part>,
        apis: Vec<String>,
        comets: Vec<Part>,
    },
    /// One `galopush standalone` on its embedded store, restarted on the same data directory;
    /// its business API at `api`, and how many messages its lives before the current one never
    /// wrote to the inbox because they were retired first (`galopush_inbox_unwritten_total`).
    Standalone {
        gateway: Part,
        api: String,
        unwritten: f64,
    },
}

impl Gateway {
    fn name(&self) -> &'static str {
        match self {
            Gateway::Cluster { .. } => "two routers, two comets, Redis",
            Gateway::Standalone { .. } => "standalone, embedded store",
        }
    }
}

/// What the faults reach of a run under way: its terminals' controls and specs, and its ledger.
struct Running<'a> {
    controls: &'a [Arc<Control>],
    terminals: &'a [Spec],
    ledger: &'a Ledger,
}

/// What a run breaks: the gateway, and the webhook its bus posts IMs up to.
struct Parts {
    gateway: Gateway,
    webhook: Webhook,
}

/// The faults the schedule picks from.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillComet,
    KillRouter,
    KillRedis,
    WebhookAway,
    PauseComet,
    PauseRouter,
    DropMidFrame,
    KillStandalone,
    PauseStandalone,
    BurstThenKillStandalone,
    BurstThenKillRouter,
}

impl Fault {
    const CLUSTER: [Fault; 8] = [
        Fault::KillComet,
        Fault::KillRouter,
        Fault::BurstThenKillRouter,
        Fault::KillRedis,
        Fault::WebhookAway,
        Fault::PauseComet,
        Fault::PauseRouter,
        Fault::DropMidFrame,
    ];
    const STANDALONE: [Fault; 5] = [
        Fault::KillStandalone,
        Fault::BurstThenKillStandalone,
        Fault::WebhookAway,
        Fault::PauseStandalone,
        Fault::DropMidFrame,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillComet => "SIGKILL + restart a comet",
            Fault::KillRouter => "SIGKILL + restart a router",
            Fault::KillRedis => "SIGKILL + restart Redis (appendfsync always)",
            Fault::WebhookAway => "the bus's webhook away 1–4 s",
            Fault::PauseComet => "SIGSTOP a comet past the ack timeout, SIGCONT",
            Fault::PauseRouter => "SIGSTOP a router past the ack timeout, SIGCONT",
            Fault::DropMidFrame => "terminals drop their connection mid-frame",
            Fault::KillStandalone => "SIGKILL + restart the standalone gateway",
            Fault::PauseStandalone => {
                "SIGSTOP the standalone gateway past the ack timeout, SIGCONT"
            }
            Fault::BurstThenKillRouter => {
                "an /mpub of 2,000 to a router, SIGKILL it once it is answered, restart"
            }
            Fault::BurstThenKillStandalone => {
                "an /mpub of 2,000, SIGKILL the standalone gateway once it is answered, restart"
            }
        }
    }
}

impl Parts {
    /// The faults the schedule picks from for this gateway.
    fn faults(&self) -> &'static [Fault] {
        match self.gateway {
            Gateway::Cluster { .. } => &Fault::CLUSTER,
            Gateway::Standalone { .. } => &Fault::STANDALONE,
        }
    }

    async fn inject(&mut self, fault: Fault, rng: &mut fastrand::Rng, run: &Running<'_>) {
        let outage = Duration::from_millis(200 + rng.u64(0..1800));
        let pause = ACK_TIMEOUT + Duration::from_millis(500 + rng.u64(0..1500));
        match (fault, &mut self.gateway) {
            (Fault::KillComet, Gateway::Cluster { comets, .. }) => {
                let comet = rng.usize(0..comets.len());
                comets[comet].kill_for(outage).await;
            }
            (Fault::KillRouter, Gateway::Cluster { routers, .. }) => {
                let router = rng.usize(0..routers.len());
                routers[router].kill_for(outage).await;
            }
            (
                Fault::KillStandalone,
                Gateway::Standalone {
                    gateway,
                    api,
                    unwritten,
                },
            ) => {
                *unwritten += metric(&api_client(), api, UNWRITTEN).await;
                gateway.kill_for(outage).await;
            }
            (Fault::BurstThenKillRouter, Gateway::Cluster { routers, apis, .. }) => {
                let router = rng.usize(0..routers.len());
                business::burst(&apis[router], run.terminals, run.ledger, rng, BURST).await;
                routers[router].kill_for(outage).await;
            }
            (Fault::KillRedis, Gateway::Cluster { redis, .. }) => {
                redis.kill().await;
                tokio::time::sleep(outage).await;
                redis.run().await.expect("redis-server restarts");
            }
            (Fault::WebhookAway, _) => {
                self.webhook.down();
                tokio::time::sleep(Duration::from_millis(1000 + rng.u64(0..3000))).await;
                self.webhook.up().await;
            }
            (Fault::PauseComet, Gateway::Cluster { comets, .. }) => {
                comets[rng.usize(0..comets.len())].pause_for(pause).await;
            }
            (Fault::PauseRouter, Gateway::Cluster { routers, .. }) => {
                routers[rng.usize(0..routers.len())].pause_for(pause).await;
            }
            (
                Fault::BurstThenKillStandalone,
                Gateway::Standalone {
                    gateway,
                    api,
                    unwritten,
                },
            ) => {
                *unwritten += metric(&api_client(), api, UNWRITTEN).await;
                // Answered once durable, while most of its messages are still on their way to
                // their terminals: those must come back from the inbox after the restart.
                business::burst(api, run.terminals, run.ledger, rng, BURST).await;
                gateway.kill_for(outage).await;
            }
            (Fault::PauseStandalone, Gateway::Standalone { gateway, .. }) => {
                gateway.pause_for(pause).await;
            }
            (Fault::DropMidFrame, _) => {
                for _ in 0..rng.usize(1..20) {
                    run.controls[rng.usize(0..run.controls.len())]
                        .drop_mid_frame
                        .store(true, Ordering::Relaxed);
                }
            }
            (fault, _) => panic!("{fault:?} is not among this gateway's faults"),
        }
    }

    /// For a standalone gateway, how many messages the run's inbox never wrote because they were
    /// retired before its writer took them, over all of the gateway's lives.
    async fn unwritten(&self) -> Option<f64> {
        match &self.gateway {
            Gateway::Cluster { .. } => None,
            Gateway::Standalone { api, unwritten, .. } => {
                Some(unwritten + metric(&api_client(), api, UNWRITTEN).await)
            }
        }
    }

    /// The processes' logs, for a run that lost something.
    fn logs(&self) -> String {
        let processes: Vec<&Part> = match &self.gateway {
            Gateway::Cluster {
                routers, comets, ..
            } => routers.iter().chain(comets).collect(),
            Gateway::Standalone { gateway, .. } => vec![gateway],
        };
        let mut out = String::new();
        for part in processes {
            let log = part.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("--- {} (last lines) ---\n", part.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Waits until every terminal not kept away is registered and nothing has been received for
/// [`QUIET`], and every IM up accepted has reached the webhook (or [`SETTLE`] passed).
async fn quiet(ledger: &Ledger, controls: &[Arc<Control>]) {
    let deadline = Instant::now() + SETTLE;
    let mut last = ledger.activity();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = ledger.activity();
        if now != last {
            (last, since) = (now, Instant::now());
            continue;
        }
        let all_back = controls
            .iter()
            .all(|c| c.away.load(Ordering::Relaxed) || c.registered.load(Ordering::Relaxed));
        if all_back && since.elapsed() >= QUIET && ledger.up_missing() == 0 {
            return;
        }
    }
    eprintln!("the run did not become quiet within {SETTLE:?}; accounting as it stands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_loses_nothing_under_stacked_faults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(redis) = OwnRedis::start(Some(dir.path())).await else {
        return;
    };
    let ledger = Arc::new(Ledger::default());
    let webhook = Webhook::start(ledger.clone()).await;
    let common = [
        common_settings(&webhook.url(), ACK_TIMEOUT),
        cluster_store_settings(&redis.url()),
    ]
    .concat();

    let routers: Vec<(String, String, String)> = (0..2)
        .map(|_| (fixed_port(), fixed_port(), fixed_port()))
        .collect();
    let rpcs: Vec<String> = routers.iter().map(|(_, _, rpc)| rpc.clone()).collect();
    let mut router_parts: Vec<Part> = routers
        .iter()
        .enumerate()
        .map(|(i, (http, api, rpc))| {
            Part::router(&format!("router-{i}"), dir.path(), &common, http, api, rpc)
        })
        .collect();
    let mut comets: Vec<Part> = (0..2)
        .map(|i| {
            let (tcp, http) = (fixed_port(), fixed_port());
            Part::comet(
                &format!("comet-{i}"),
                dir.path(),
                &common,
                &tcp,
                &http,
                &rpcs,
            )
        })
        .collect();
    for part in router_parts.iter_mut().chain(comets.iter_mut()) {
        part.start().await;
    }
    let apis: Vec<String> = routers
        .iter()
        .map(|(_, api, _)| format!("http://{api}"))
        .collect();
    let parts = Parts {
        gateway: Gateway::Cluster {
            redis,
            routers: router_parts,
            apis: apis.clone(),
            comets,
        },
        webhook,
    };
    let dispatchers = routers
        .iter()
        .map(|(http, _, _)| format!("http://{http}"))
        .collect();
    run(parts, apis, dispatchers, ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_gateway_loses_nothing_when_it_crashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Arc::new(Ledger::default());
    let webhook = Webhook::start(ledger.clone()).await;
    let common = common_settings(&webhook.url(), ACK_TIMEOUT);
    let (http, api) = (fixed_port(), fixed_port());
    let mut gateway = Part::standalone(
        "standalone",
        dir.path(),
        &common,
        &http,
        &api,
        &fixed_port(),
    );
    gateway.start().await;
    let api = format!("http://{api}");
    let parts = Parts {
        gateway: Gateway::Standalone {
            gateway,
            api: api.clone(),
            unwritten: 0.0,
        },
        webhook,
    };
    run(parts, vec![api], vec![format!("http://{http}")], ledger).await;
}

/// A loopback address whose port a killed process can bind again when it restarts.
fn fixed_port() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Runs the load and the faults against `parts`, whose business API is at `apis` and whose
/// dispatchers are at `dispatchers`, then waits for quiet and accounts for every message.
async fn run(mut parts: Parts, apis: Vec<String>, dispatchers: Vec<String>, ledger: Arc<Ledger>) {
    let settings = Settings::from_env();
    let dispatchers: Arc<[Dispatcher]> = dispatchers
        .iter()
        .map(|url| Dispatcher::new(url).expect("dispatcher"))
        .collect();

    // Every terminal's login, then every terminal registered, before the load starts.
    let specs: Arc<[Spec]> = (0..settings.terminals).map(Spec::new).collect();
    log_in(&apis[0], &specs).await;
    let controls: Vec<Arc<Control>> = specs.iter().map(|_| Arc::default()).collect();
    let behaviour = Behaviour {
        dispatchers,
        im_up_every: settings.im_up_every,
        sending: Arc::new(AtomicBool::new(true)),
        refused: Arc::new(AtomicUsize::new(0)),
    };
    let terminals: Vec<_> = specs
        .iter()
        .zip(&controls)
        .map(|(spec, control)| {
            tokio::spawn(terminals::run(
                Spec::new(spec.index),
                control.clone(),
                behaviour.clone(),
                ledger.clone(),
            ))
        })
        .collect();
    let registered = async {
        while !controls
            .iter()
            .all(|c| c.registered.load(Ordering::Relaxed))
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(SETTLE, registered)
        .await
        .expect("every terminal registers before the faults start");

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(
        Publisher {
            apis: apis.clone(),
            terminals: specs.clone(),
            rate: settings.rate,
            seed: settings.seed,
            stop: stop.clone(),
            ledger: ledger.clone(),
        }
        .run(),
    );

    // The faults, one after another, on the seed's schedule; the last tenth of the run keeps
    // some terminals away so that their messages stay stored until the end.
    let mut rng = fastrand::Rng::with_seed(settings.seed);
    let started = Instant::now();
    let away_at = settings.duration.mul_f64(0.9);
    let mut away_sent = false;
    while started.elapsed() < settings.duration {
        tokio::time::sleep(Duration::from_millis(500 + rng.u64(0..2500))).await;
        if !away_sent && started.elapsed() >= away_at {
            for control in controls.iter().step_by(50) {
                control.away.store(true, Ordering::Relaxed);
            }
            away_sent = true;
        }
        let faults = parts.faults();
        let fault = faults[rng.usize(0..faults.len())];
        let running = Running {
            controls: &controls,
            terminals: &specs,
            ledger: &ledger,
        };
        parts.inject(fault, &mut rng, &running).await;
        ledger.fault(fault.name());
    }

    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher");
    behaviour.sending.store(false, Ordering::Relaxed);
    quiet(&ledger, &controls).await;
    ledger.enter(Phase::Returned);
    for control in &controls {
        control.away.store(false, Ordering::Relaxed);
    }
    quiet(&ledger, &controls).await;
    // Every terminal registers once more: what a router stored while its terminal was online
    // (and so kept for the next REGISTER) comes now, and is told apart from what is lost.
    ledger.enter(Phase::Reregistered);
    for control in &controls {
        control.reregister.store(true, Ordering::Relaxed);
    }
    let reregistered = async {
        while !controls
            .iter()
            .all(|c| !c.reregister.load(Ordering::Relaxed) && c.registered.load(Ordering::Relaxed))
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(SETTLE, reregistered)
        .await
        .expect("every terminal registers once more");
    quiet(&ledger, &controls).await;
    for terminal in terminals {
        terminal.abort();
    }

    let account = ledger.account();
    println!(
        "chaos run ({}): seed {}, {:?}, {} terminals, {} down-messages/s, REGISTERs refused and retried: {}\n\n{}",
        parts.gateway.name(),
        settings.seed,
        settings.duration,
        settings.terminals,
        settings.rate,
        behaviour.refused.load(Ordering::Relaxed),
        account.table()
    );
    assert!(
        account.lost() == 0 && account.unexpected.is_empty(),
        "the chaos run lost messages:\n{}\n{}",
        account.table(),
        parts.logs()
    );
    if let Some(unwritten) = parts.unwritten().await {
        println!(
            "messages retired before the inbox's writer took them, never written: {unwritten}"
        );
        assert!(
            unwritten > 0.0,
            "no message was retired before its inbox write: the run did not try that path"
        );
    }
}

/// Publishes every terminal's login record and waits until the router applied them all.
async fn log_in(api: &str, specs: &[Spec]) {
    let client = common::process::api_client();
    for chunk in specs.chunks(500) {
        let lines: Vec<String> = chunk
            .iter()
            .map(|s| {
                serde_json::json!({
                    "uid": s.uid, "termtype": s.term.bit(), "code": s.code,
                    "deviceToken": "", "online": true,
                })
                .to_string()
            })
            .collect();
        let r = client
            .post(format!("{api}/mpub?topic=userOnlineState"))
            .body(lines.join("\n"))
            .send()
            .await
            .expect("POST /mpub");
        assert!(r.status().is_success(), "logins: {}", r.status());
    }
    let series = "galopush_bus_messages_total{topic=\"userOnlineState\",event=\"retired\"}";
    let deadline = Instant::now() + SETTLE;
    while common::process::metric(&client, api, series).await < specs.len() as f64 {
        assert!(Instant::now() < deadline, "logins not applied in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
