//! The chaos run (issue 17): a local cluster — two routers, two comets, a Redis with persistence,
//! the embedded bus and its webhook — under a steady load of pushes, callbacks and IMs down and
//! IMs up from terminals that reconnect whenever they are dropped, while a seeded schedule
//! SIGKILLs and restarts each part, pauses one past the ack timeout (SIGSTOP/SIGCONT), takes
//! the webhook away, and drops terminals in the middle of a frame. At the end it waits for quiet,
//! brings back the terminals it kept away, has every terminal register once more, and accounts
//! for every message: delivered (once, or more), coalesced into a later push, stored for a
//! terminal that was away and delivered when it came back, stored while its terminal was online
//! and delivered only at its next REGISTER (late, not lost) — or lost. The test fails when
//! anything is lost.
//!
//! `.ci/run` runs the short form (60 s, seed 1, 600 terminals). The long one, and any seed:
//! `CHAOS_SECS=1800 CHAOS_SEED=7 CHAOS_TERMINALS=3000 CHAOS_RATE=1000 cargo test --release -p
//! galopush --test chaos -- --nocapture` (README, "Proof of nothing lost"). The same seed
//! replays the same schedule of faults, targets and messages; what the processes do in between
//! is up to the machine.

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
use common::process::free_port;
use common::redis::OwnRedis;
use ledger::{Ledger, Phase};
use parts::{Part, common_settings};
use terminals::{Behaviour, Control, Spec};

/// The ack timeout of the run's cluster; a pause lasts longer than this.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
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

/// The parts under chaos.
struct Cluster {
    redis: OwnRedis,
    webhook: Webhook,
    routers: Vec<Part>,
    comets: Vec<Part>,
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
}

impl Fault {
    const ALL: [Fault; 7] = [
        Fault::KillComet,
        Fault::KillRouter,
        Fault::KillRedis,
        Fault::WebhookAway,
        Fault::PauseComet,
        Fault::PauseRouter,
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
        }
    }
}

impl Cluster {
    async fn inject(&mut self, fault: Fault, rng: &mut fastrand::Rng, controls: &[Arc<Control>]) {
        let outage = Duration::from_millis(200 + rng.u64(0..1800));
        let pause = ACK_TIMEOUT + Duration::from_millis(500 + rng.u64(0..1500));
        match fault {
            Fault::KillComet => {
                let comet = rng.usize(0..self.comets.len());
                self.comets[comet].kill().await;
                tokio::time::sleep(outage).await;
                self.comets[comet].start().await;
            }
            Fault::KillRouter => {
                let router = rng.usize(0..self.routers.len());
                self.routers[router].kill().await;
                tokio::time::sleep(outage).await;
                self.routers[router].start().await;
            }
            Fault::KillRedis => {
                self.redis.kill().await;
                tokio::time::sleep(outage).await;
                self.redis.run().await.expect("redis-server restarts");
            }
            Fault::WebhookAway => {
                self.webhook.down();
                tokio::time::sleep(Duration::from_millis(1000 + rng.u64(0..3000))).await;
                self.webhook.up().await;
            }
            Fault::PauseComet => {
                let comet = &self.comets[rng.usize(0..self.comets.len())];
                comet.signal("STOP");
                tokio::time::sleep(pause).await;
                comet.signal("CONT");
            }
            Fault::PauseRouter => {
                let router = &self.routers[rng.usize(0..self.routers.len())];
                router.signal("STOP");
                tokio::time::sleep(pause).await;
                router.signal("CONT");
            }
            Fault::DropMidFrame => {
                for _ in 0..rng.usize(1..20) {
                    controls[rng.usize(0..controls.len())]
                        .drop_mid_frame
                        .store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// The parts' logs, for a run that lost something.
    fn logs(&self) -> String {
        let mut out = String::new();
        for part in self.routers.iter().chain(&self.comets) {
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
async fn nothing_is_lost_under_stacked_faults() {
    let settings = Settings::from_env();
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(redis) = OwnRedis::start(Some(dir.path())).await else {
        return;
    };
    let ledger = Arc::new(Ledger::default());
    let webhook = Webhook::start(ledger.clone()).await;
    let common = common_settings(
        &redis.url(),
        &webhook.url(),
        &format!("{}s", ACK_TIMEOUT.as_secs()),
    );

    let addr = |port: u16| format!("127.0.0.1:{port}");
    let routers: Vec<(String, String, String)> = (0..2)
        .map(|_| (addr(free_port()), addr(free_port()), addr(free_port())))
        .collect();
    let rpcs: Vec<String> = routers.iter().map(|(_, _, rpc)| rpc.clone()).collect();
    let mut cluster = Cluster {
        redis,
        webhook,
        routers: routers
            .iter()
            .enumerate()
            .map(|(i, (http, api, rpc))| {
                Part::router(&format!("router-{i}"), dir.path(), &common, http, api, rpc)
            })
            .collect(),
        comets: (0..2)
            .map(|i| {
                let (tcp, http) = (addr(free_port()), addr(free_port()));
                Part::comet(
                    &format!("comet-{i}"),
                    dir.path(),
                    &common,
                    &tcp,
                    &http,
                    &rpcs,
                )
            })
            .collect(),
    };
    for part in cluster.routers.iter_mut().chain(cluster.comets.iter_mut()) {
        part.start().await;
    }
    let apis: Vec<String> = routers
        .iter()
        .map(|(_, api, _)| format!("http://{api}"))
        .collect();
    let dispatchers: Arc<[Dispatcher]> = routers
        .iter()
        .map(|(http, _, _)| Dispatcher::new(&format!("http://{http}")).expect("dispatcher"))
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
        let fault = Fault::ALL[rng.usize(0..Fault::ALL.len())];
        cluster.inject(fault, &mut rng, &controls).await;
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
        "chaos run: seed {}, {:?}, {} terminals, {} down-messages/s, REGISTERs refused and retried: {}\n\n{}",
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
        cluster.logs()
    );
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
