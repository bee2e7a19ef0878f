//! One run from start to report: check the arguments, log the terminals in, ask the dispatcher,
//! connect and register the fleet, play the scenario, stop the terminals and add up what they
//! saw. Against an MQTT broker (`--target`) the terminals connect and subscribe instead of
//! logging in and registering, and the messages are published to the broker; the rest is the
//! same.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use galopush_client::{Dispatcher, Encoding, TermType, Tls, Transport, Trust, WebFraming};
use galopush_protocol::message::{REGRESP_AUTH_FAILED, REGRESP_OK};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::args::{BenchArgs, Framing, Scenario, TransportKind};
use crate::error::BenchError;
use crate::fleet::{
    Expectation, Fleet, Outcome, Progress, Protocol, TerminalSpec, connect, micros, run_terminal,
};
use crate::mqtt::{self, Topics};
use crate::publish::{Bus, Messages, Receivers, Route, publish_messages};
use crate::report::{
    CometShare, ConnectReport, DeliveryReport, ErrorReport, Latency, Phase, Rate, Report,
    ServerReport,
};
use crate::soak::{self, LatencyWindow};
use crate::system::{self, CpuTime, ServerProcess};

/// Files the bench needs besides one socket per terminal (HTTP, the runtime, stdio).
const SPARE_FILES: u64 = 256;
/// Bound on one HTTP request to the server.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the controller looks at the terminals' counters.
const POLL: Duration = Duration::from_millis(2);
/// Longest user id the REGISTER frame carries.
const MAX_UID_LEN: usize = 32;
/// Largest latency recorded, µs (an hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Dispatcher requests in flight at once, at most.
const MAX_DISPATCHERS: usize = 64;
/// Source addresses a run may spread over (they stay inside 127.0.0.0/8).
const MAX_SOURCE_IPS: usize = 65_000;
/// The dispatcher's path.
const DISPATCH_PATH: &str = "/v1/gComet.addr";
/// How often the deliveries so far are sampled for the report's timeline.
const TIMELINE_STEP: Duration = Duration::from_millis(50);
/// Most MQTT PUBLISHes in flight on one connection: packet ids are 16 bits.
const MAX_MQTT_BATCH: usize = 65_535;

/// Runs the scenario `args` describe against the server they name and reports what happened.
///
/// Fails only when the run cannot be carried out (bad arguments, too few files, logins or
/// dispatch refused); everything that goes wrong during the run is counted in the report.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    validate(args)?;
    let broker = args
        .target
        .as_deref()
        .map(mqtt::broker_addr)
        .transpose()
        .map_err(BenchError::Args)?;
    let open_files_limit = system::raise_open_files(args.terminals as u64 + SPARE_FILES)?;
    let server = (!args.server_pid.is_empty())
        .then(|| ServerProcess::new(&args.server_pid))
        .transpose()?;
    let epoch = Instant::now();
    let mut clock = PhaseClock::new(server.clone());
    let rss_start = server.as_ref().and_then(ServerProcess::rss_kib);
    let trust = match &args.ca {
        Some(path) => Trust::ca_file(path).map_err(BenchError::Tls)?,
        None => Trust::system(),
    };
    // Each terminal stands for a distinct device: a full handshake each, no resumption.
    let tls = args
        .tls
        .then(|| Tls::new(&trust).map(Tls::without_resumption))
        .transpose()
        .map_err(BenchError::Tls)?;
    let http = trust
        .http_client_builder()
        .map_err(BenchError::Tls)?
        .timeout(HTTP_TIMEOUT)
        .pool_max_idle_per_host(args.publishers.max(MAX_DISPATCHERS))
        .build()?;

    let (transport, term) = transport_of(args);
    let prefix = args
        .uid_prefix
        .clone()
        .unwrap_or_else(|| format!("b{:06x}-", fastrand::u32(..0x0100_0000)));
    let uids: Vec<String> = (0..args.terminals)
        .map(|i| format!("{prefix}{i}"))
        .collect();
    let codes: Vec<String> = (0..args.terminals).map(|i| format!("c{i}")).collect();
    let (addrs, dispatched) = match broker {
        Some(broker) => (vec![Arc::from(broker); uids.len()], false),
        None => comet_addrs(args, &trust, &uids, term).await?,
    };
    let dispatch = dispatched.then(|| Rate::new(uids.len() as u64, clock.lap("dispatch")));
    let comets = if dispatched {
        comet_shares(&addrs)
    } else {
        Vec::new()
    };
    let sources = sources(args, &addrs).await?;

    let login = match (&args.api_url, args.no_login || broker.is_some()) {
        (Some(api_url), false) => {
            let login_deadline = Instant::now() + args.register_timeout;
            let bus = Bus::new(http.clone(), api_url, args.api_token.as_deref());
            let logins: Vec<(String, String)> =
                uids.iter().cloned().zip(codes.iter().cloned()).collect();
            bus.login_all(&args.login_topic, &logins, term.bit(), args.publishers)
                .await
                .map_err(BenchError::Login)?;
            let probe = format!("{prefix}probe");
            bus.login_one(&args.login_topic, &probe, "probe", term.bit())
                .await
                .map_err(BenchError::Login)?;
            let addr = addrs.first().cloned().unwrap_or_else(|| Arc::from(""));
            await_login(&addr, transport, tls.as_ref(), term, &probe, login_deadline).await?;
            Some(Rate::new(uids.len() as u64, clock.lap("login")))
        }
        _ => None,
    };

    let rss_before_connect = server.as_ref().and_then(ServerProcess::rss_kib);
    let expectation = expectation_of(args);
    let connect_start = Instant::now();
    let paced = args.connect_rate > 0.0 && args.scenario != Scenario::Storm;
    let shared_topic = format!("{prefix}all");
    let protocol = match broker {
        Some(_) => Protocol::Mqtt {
            shared: (args.scenario == Scenario::Fanout).then(|| shared_topic.clone()),
        },
        None => Protocol::Galopush {
            transport,
            tls,
            term,
        },
    };
    let fleet = Arc::new(Fleet {
        protocol,
        epoch,
        expectation,
        progress: Progress::default(),
        stop: CancellationToken::new(),
        register_timeout: args.register_timeout,
        gate: Semaphore::new(args.concurrency),
        connect_pace: paced.then_some((connect_start, args.connect_rate)),
        login_deadline: login
            .is_some()
            .then(|| connect_start + args.register_timeout),
        window: args.sample.map(|_| LatencyWindow::new()),
    });
    let terminals: Vec<_> = uids
        .iter()
        .zip(codes)
        .enumerate()
        .map(|(i, (uid, token))| {
            let spec = TerminalSpec {
                index: i as u64,
                uid: uid.clone(),
                token,
                addr: addrs[i].clone(),
                source: sources[i],
            };
            tokio::spawn(run_terminal(spec, fleet.clone()))
        })
        .collect();
    while fleet.progress.settled.load(Ordering::Relaxed) < args.terminals as u64 {
        tokio::time::sleep(POLL).await;
    }
    let connect = connect_report(&fleet, connect_start, epoch);
    clock.lap("connect");

    let mut hold_seconds = None;
    let mut delivery = None;
    let mut publish_errors = (0, None);
    let mut rss_after_connect = server.as_ref().and_then(ServerProcess::rss_kib);
    match args.scenario {
        Scenario::Idle => {
            tokio::time::sleep(args.hold).await;
            hold_seconds = Some(args.hold.as_secs_f64());
            rss_after_connect = server.as_ref().and_then(ServerProcess::rss_kib);
            clock.lap("hold");
        }
        Scenario::Storm | Scenario::Plot => {}
        Scenario::Unicast | Scenario::Fanout => {
            let fanout = args.scenario == Scenario::Fanout;
            let (topic, route) = match broker {
                Some(broker) => {
                    let (topic, topics) = if fanout {
                        (shared_topic.clone(), Topics::Shared(shared_topic))
                    } else {
                        (format!("{prefix}N (each its own)"), Topics::Own(uids))
                    };
                    let route = Route::Mqtt {
                        broker: broker.to_owned(),
                        client_prefix: format!("{prefix}publisher-"),
                        topics,
                    };
                    (topic, route)
                }
                None => {
                    let bus = Bus::new(
                        http.clone(),
                        args.api_url.as_deref().unwrap_or_default(),
                        args.api_token.as_deref(),
                    );
                    let topic = args
                        .topic
                        .clone()
                        .unwrap_or_else(|| args.kind.default_topic().to_owned());
                    let receivers = if fanout {
                        Receivers::fanout(&uids, term.bit())
                    } else {
                        Receivers::Unicast {
                            uids,
                            termtype: term.bit(),
                        }
                    };
                    let url = bus.mpub_url(&topic);
                    (
                        topic,
                        Route::Mpub {
                            bus,
                            url,
                            receivers,
                        },
                    )
                }
            };
            let messages = Arc::new(Messages {
                route,
                count: args.messages,
                batch: args.batch as u64,
                rate: (args.rate > 0.0).then_some(args.rate),
                publishers: args.publishers,
                body_size: args.body_size as usize,
            });
            let sampling = CancellationToken::new();
            let timeline = tokio::spawn(sample_deliveries(fleet.clone(), sampling.clone()));
            let samples = args.sample.map(|every| {
                tokio::spawn(soak::sample(
                    fleet.clone(),
                    server.clone(),
                    every,
                    sampling.clone(),
                ))
            });
            let published = publish_messages(messages.clone(), epoch).await;
            let expected = expectation.deliveries_of(published.accepted, args.terminals as u64);
            drain(&fleet.progress, expected, args.drain_timeout).await;
            sampling.cancel();
            let timeline = timeline.await.unwrap_or_default();
            let samples = match samples {
                Some(task) => task.await.unwrap_or_default(),
                None => Vec::new(),
            };
            clock.lap("deliver");
            publish_errors = (published.errors, published.first_error.clone());
            delivery = Some((topic, messages, published, expected, (timeline, samples)));
        }
    }
    let rss_end = server.as_ref().and_then(ServerProcess::rss_kib);

    fleet.stop.cancel();
    let mut tally = Tally::new();
    for terminal in terminals {
        let outcome = terminal
            .await
            .unwrap_or_else(|e| Outcome::lost_task(format!("terminal task failed: {e}")));
        tally.add(outcome);
    }
    clock.lap("stop");
    tally.errors.publish = publish_errors.0;
    if let Some(why) = publish_errors.1 {
        tally.errors.sample(why);
    }

    let delivery = delivery.map(
        |(topic, messages, published, expected, (timeline, samples))| DeliveryReport {
            kind: args.kind,
            topic,
            messages: messages.count,
            body_size: args.body_size,
            batch: messages.effective_batch(),
            publishers: messages.publishers,
            rate: messages.rate,
            published: Rate::new(
                published.accepted,
                seconds_between(published.first_start_us, published.last_done_us),
            ),
            expected,
            delivered: Rate::new(
                tally.received,
                seconds_between(published.first_start_us, tally.last_delivery_us),
            ),
            lost: expected.saturating_sub(tally.received),
            duplicates: tally.duplicates,
            latency: tally.latency(),
            timeline,
            latency_cdf: tally.latency_cdf(),
            samples,
        },
    );
    let registered = connect.registrations.count;
    let server = server.map(|s| ServerReport {
        pids: s.pids,
        rss_kib_start: rss_start,
        rss_kib_before_connect: rss_before_connect,
        rss_kib_after_connect: rss_after_connect,
        rss_kib_end: rss_end,
        rss_bytes_per_connection: match (rss_before_connect, rss_after_connect) {
            (Some(before), Some(after)) if registered > 0 => {
                Some((after as f64 - before as f64) * 1024.0 / registered as f64)
            }
            _ => None,
        },
    });
    let galopush = broker.is_none();
    Ok(Report {
        scenario: args.scenario,
        label: args.label.clone().unwrap_or_else(|| default_label(args)),
        broker: args.target.clone(),
        transport: args.transport,
        tls: args.tls,
        encoding: (galopush && args.transport == TransportKind::Tcp).then_some(args.encoding),
        framing: (galopush && args.transport == TransportKind::Ws).then_some(args.framing),
        terminals: args.terminals as u64,
        cores: cores(),
        open_files_limit,
        login,
        dispatch,
        comets,
        connect: ConnectReport {
            register_retries: tally.register_retries,
            ..connect
        },
        hold_seconds,
        delivery,
        errors: tally.errors,
        phases: clock.phases,
        server,
    })
}

/// Refuses arguments that cannot make a run.
fn validate(args: &BenchArgs) -> Result<(), BenchError> {
    let bad = |why: &str| Err(BenchError::Args(why.to_owned()));
    if args.scenario == Scenario::Plot {
        return bad("plot drives nothing: galopush bench plot RUN.json… --plot FILE.svg");
    }
    if !args.runs.is_empty() {
        return bad("RUN.json arguments go with plot only");
    }
    if args.terminals == 0 {
        return bad("--terminals must be at least 1");
    }
    if args.concurrency == 0 || args.publishers == 0 || args.batch == 0 || args.per_source_ip == 0 {
        return bad("--concurrency, --publishers, --batch and --per-source-ip must be at least 1");
    }
    if args.terminals / args.per_source_ip >= MAX_SOURCE_IPS {
        return bad("--per-source-ip is too small for that many terminals");
    }
    if args.sample.is_some_and(|every| every.is_zero()) {
        return bad("--sample must be longer than 0");
    }
    if !(args.connect_rate >= 0.0 && args.rate >= 0.0) {
        return bad("--connect-rate and --rate must be 0 (unpaced) or positive");
    }
    if args.target.is_some() {
        if args.tls || args.transport != TransportKind::Tcp {
            return bad("--target mqtt:// runs plain MQTT over TCP: no --tls, no --transport ws");
        }
        if args.batch > MAX_MQTT_BATCH {
            return bad("--batch is at most 65535 against an MQTT broker");
        }
        return uid_prefix_fits(args);
    }
    let comet = match args.transport {
        TransportKind::Tcp => &args.comet_tcp,
        TransportKind::Ws => &args.comet_ws,
    };
    if comet.is_none() && args.dispatch_url.is_none() {
        return bad("give --dispatch-url, or --comet-tcp / --comet-ws for the transport");
    }
    let publishes = matches!(args.scenario, Scenario::Unicast | Scenario::Fanout);
    if args.api_url.is_none() && (publishes || !args.no_login) {
        return bad("--api-url is needed to log the terminals in and to publish messages");
    }
    uid_prefix_fits(args)
}

/// Refuses a `--uid-prefix` that makes user ids (and MQTT client ids) too long or strange.
fn uid_prefix_fits(args: &BenchArgs) -> Result<(), BenchError> {
    let bad = |why: &str| Err(BenchError::Args(why.to_owned()));
    if let Some(prefix) = &args.uid_prefix {
        let longest = prefix.len() + (args.terminals - 1).to_string().len().max("probe".len());
        if longest > MAX_UID_LEN {
            return bad("--uid-prefix makes user ids longer than 32 bytes");
        }
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return bad("--uid-prefix may hold letters, digits and - _ . : only");
        }
    }
    Ok(())
}

/// The SDK transport and the terminal type of the run's terminals.
fn transport_of(args: &BenchArgs) -> (Transport, TermType) {
    match args.transport {
        TransportKind::Tcp => (
            Transport::Tcp {
                encoding: Encoding::from_bits(args.encoding),
            },
            TermType::Android,
        ),
        TransportKind::Ws => (
            Transport::Web {
                framing: match args.framing {
                    Framing::Compatible => WebFraming::Compatible,
                    Framing::Plain => WebFraming::Plain,
                },
            },
            TermType::Web,
        ),
    }
}

/// The run's name when `--label` gives none: the target and the terminals' transport.
fn default_label(args: &BenchArgs) -> String {
    if args.target.is_some() {
        return "mqtt".to_owned();
    }
    let transport = match (args.transport, args.tls) {
        (TransportKind::Tcp, false) => "tcp",
        (TransportKind::Tcp, true) => "tls tcp",
        (TransportKind::Ws, false) => "ws",
        (TransportKind::Ws, true) => "wss",
    };
    format!("galopush {transport}")
}

fn expectation_of(args: &BenchArgs) -> Expectation {
    match args.scenario {
        Scenario::Idle | Scenario::Storm | Scenario::Plot => Expectation::Nothing,
        Scenario::Unicast => Expectation::Unicast {
            terminals: args.terminals as u64,
            messages: args.messages,
        },
        Scenario::Fanout => Expectation::Fanout {
            messages: args.messages,
        },
    }
}

/// How many terminals go to each comet address, busiest first.
fn comet_shares(addrs: &[Arc<str>]) -> Vec<CometShare> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for addr in addrs {
        *counts.entry(addr).or_default() += 1;
    }
    let mut shares: Vec<CometShare> = counts
        .into_iter()
        .map(|(addr, terminals)| CometShare {
            addr: addr.to_owned(),
            terminals,
        })
        .collect();
    shares.sort_by(|a, b| b.terminals.cmp(&a.terminals).then(a.addr.cmp(&b.addr)));
    shares
}

/// Each terminal's comet: the one given, or the dispatcher's answer for it (then `true`), asked
/// with `tls=1` for a TLS run.
async fn comet_addrs(
    args: &BenchArgs,
    trust: &Trust,
    uids: &[String],
    term: TermType,
) -> Result<(Vec<Arc<str>>, bool), BenchError> {
    let given = match args.transport {
        TransportKind::Tcp => &args.comet_tcp,
        TransportKind::Ws => &args.comet_ws,
    };
    if let Some(addr) = given {
        return Ok((vec![Arc::from(addr.as_str()); uids.len()], false));
    }
    let url = args.dispatch_url.as_deref().unwrap_or_default();
    let base = url.trim_end_matches('/');
    let base = base.strip_suffix(DISPATCH_PATH).unwrap_or(base);
    let dispatcher =
        Dispatcher::with_trust(base, trust).map_err(|e| BenchError::Dispatch(e.to_string()))?;
    let tls = args.tls;
    let uids: Arc<[String]> = uids.into();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.min(MAX_DISPATCHERS) {
        let (dispatcher, uids, next) = (dispatcher.clone(), uids.clone(), next.clone());
        workers.spawn(async move {
            let mut answers = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(uid) = uids.get(i) else {
                    return Ok(answers);
                };
                let addr = if tls {
                    dispatcher.comet_addr_tls(uid, term).await
                } else {
                    dispatcher.comet_addr(uid, term).await
                };
                let addr = addr.map_err(|e| format!("{uid}: {e}"))?;
                answers.push((i, addr));
            }
        });
    }
    let mut interned: HashMap<String, Arc<str>> = HashMap::new();
    let mut addrs: Vec<Option<Arc<str>>> = vec![None; uids.len()];
    while let Some(done) = workers.join_next().await {
        let answers = done
            .map_err(|e| BenchError::Dispatch(e.to_string()))?
            .map_err(BenchError::Dispatch)?;
        for (i, addr) in answers {
            let shared = interned
                .entry(addr)
                .or_insert_with_key(|a| Arc::from(a.as_str()))
                .clone();
            addrs[i] = Some(shared);
        }
    }
    let addrs = addrs
        .into_iter()
        .map(|a| a.ok_or_else(|| BenchError::Dispatch("a terminal got no answer".to_owned())))
        .collect::<Result<_, _>>()?;
    Ok((addrs, true))
}

/// The local address each terminal connects from: spread over consecutive addresses of
/// 127.0.0.0/8 from a random one, `--per-source-ip` each, when its comet is on the loopback
/// network; else left to the OS.
async fn sources(args: &BenchArgs, addrs: &[Arc<str>]) -> Result<Vec<Option<IpAddr>>, BenchError> {
    let mut loopback: HashMap<&str, bool> = HashMap::new();
    for addr in addrs {
        if loopback.contains_key(addr.as_ref()) {
            continue;
        }
        let resolved =
            tokio::net::lookup_host(addr.as_ref())
                .await
                .map_err(|e| BenchError::Resolve {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })?;
        let on_loopback = resolved
            .into_iter()
            .any(|a| matches!(a.ip(), IpAddr::V4(ip) if ip.is_loopback()));
        loopback.insert(addr, on_loopback);
    }
    // A fresh range each run: the previous run's closed connections linger in TIME_WAIT on
    // their addresses, and binding next to thousands of them makes every bind() slow.
    let first = u32::from(Ipv4Addr::new(
        127,
        fastrand::u8(1..=254),
        fastrand::u8(..),
        1,
    ));
    Ok(addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let spread = loopback.get(addr.as_ref()).copied().unwrap_or(false);
            let offset = u32::try_from(i / args.per_source_ip).ok()?;
            spread.then(|| IpAddr::V4(Ipv4Addr::from(first.saturating_add(offset))))
        })
        .collect())
}

/// Waits until the probe's login, published after all others, is in force: a REGISTER with it
/// succeeds. The embedded bus applies a topic in order, so then every login is.
async fn await_login(
    addr: &str,
    transport: Transport,
    tls: Option<&Tls>,
    term: TermType,
    probe: &str,
    deadline: Instant,
) -> Result<(), BenchError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(left, async {
            let mut terminal = connect(addr, transport, tls, None).await?;
            let code = terminal.register(probe, "probe", term).await?;
            // The probe has done its job; how its connection ends does not matter.
            let _ = terminal.close().await;
            Ok::<u8, galopush_client::ClientError>(code)
        })
        .await;
        match attempt {
            Ok(Ok(REGRESP_OK)) => return Ok(()),
            Ok(Ok(REGRESP_AUTH_FAILED)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Ok(code)) => {
                return Err(BenchError::Login(format!(
                    "the probe's REGISTER got REGRESP {code}"
                )));
            }
            Ok(Err(e)) => return Err(BenchError::Login(format!("the probe at {addr}: {e}"))),
            Err(_) => {
                return Err(BenchError::Login(
                    "the logins were not in force within --register-timeout".to_owned(),
                ));
            }
        }
    }
}

/// Waits until `expected` deliveries arrived, or until none has arrived for `quiet`: a server
/// with a backlog still drains it, one that lost messages does not keep the run waiting.
async fn drain(progress: &Progress, expected: u64, quiet: Duration) {
    let mut seen = progress.delivered.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    while seen < expected && last_progress.elapsed() < quiet {
        tokio::time::sleep(POLL).await;
        let now = progress.delivered.load(Ordering::Relaxed);
        if now > seen {
            seen = now;
            last_progress = Instant::now();
        }
    }
}

/// Samples the deliveries so far every [`TIMELINE_STEP`] until `done`: (seconds since the
/// start, deliveries). Bounded by the run's length: 20 samples a second.
async fn sample_deliveries(fleet: Arc<Fleet>, done: CancellationToken) -> Vec<(f64, u64)> {
    let start = Instant::now();
    let mut timeline = Vec::new();
    let mut ticks = tokio::time::interval(TIMELINE_STEP);
    loop {
        let last = tokio::select! {
            biased;
            () = done.cancelled() => true,
            _ = ticks.tick() => false,
        };
        let delivered = fleet.progress.delivered.load(Ordering::Relaxed);
        timeline.push((start.elapsed().as_secs_f64(), delivered));
        if last {
            return timeline;
        }
    }
}

/// Rates of the connect phase from the fleet's counters.
fn connect_report(fleet: &Fleet, start: Instant, epoch: Instant) -> ConnectReport {
    let start_us = micros(start - epoch);
    let progress = &fleet.progress;
    let since_start =
        |us: &std::sync::atomic::AtomicU64| seconds_between(start_us, us.load(Ordering::Relaxed));
    ConnectReport {
        connects: Rate::new(
            progress.connected.load(Ordering::Relaxed),
            since_start(&progress.last_connect_us),
        ),
        registrations: Rate::new(
            progress.registered.load(Ordering::Relaxed),
            since_start(&progress.last_register_us),
        ),
        register_retries: 0,
    }
}

fn seconds_between(from_us: u64, to_us: u64) -> f64 {
    to_us.saturating_sub(from_us) as f64 / 1e6
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// What the terminals saw, added up.
struct Tally {
    received: u64,
    duplicates: u64,
    register_retries: u64,
    last_delivery_us: u64,
    latencies: Option<Histogram<u64>>,
    errors: ErrorReport,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            received: 0,
            duplicates: 0,
            register_retries: 0,
            last_delivery_us: 0,
            latencies: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).ok(),
            errors: ErrorReport::default(),
        }
    }

    fn add(&mut self, outcome: Outcome) {
        self.received += outcome.received;
        self.duplicates += outcome.duplicates;
        self.register_retries += outcome.register_retries;
        self.last_delivery_us = self.last_delivery_us.max(outcome.last_delivery_us);
        self.errors.connect += outcome.connect_errors;
        self.errors.register += outcome.register_errors;
        self.errors.protocol += outcome.protocol_errors;
        if let Some(why) = outcome.first_error {
            self.errors.sample(why);
        }
        if let Some(histogram) = &mut self.latencies {
            for us in outcome.latencies {
                histogram.saturating_record(u64::from(us).max(1));
            }
        }
    }

    fn latency(&self) -> Option<Latency> {
        let h = self.latencies.as_ref().filter(|h| !h.is_empty())?;
        Some(Latency {
            samples: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }

    /// The latency distribution, (quantile, µs): every percent, then the tail to the maximum.
    fn latency_cdf(&self) -> Vec<(f64, u64)> {
        let Some(h) = self.latencies.as_ref().filter(|h| !h.is_empty()) else {
            return Vec::new();
        };
        (0..100)
            .map(|percent| f64::from(percent) / 100.0)
            .chain([0.995, 0.999, 0.9995, 0.9999, 1.0])
            .map(|q| (q, h.value_at_quantile(q)))
            .collect()
    }
}

/// Wall and CPU time of the bench (and the server) phase by phase.
struct PhaseClock {
    server: Option<ServerProcess>,
    since: Instant,
    bench_cpu: CpuTime,
    server_cpu: Option<CpuTime>,
    phases: Vec<Phase>,
}

impl PhaseClock {
    fn new(server: Option<ServerProcess>) -> PhaseClock {
        let server_cpu = server.as_ref().and_then(ServerProcess::cpu);
        PhaseClock {
            server,
            since: Instant::now(),
            bench_cpu: system::own_cpu(),
            server_cpu,
            phases: Vec::new(),
        }
    }

    /// Ends the phase `name` now, starts the next one and returns the phase's wall seconds.
    fn lap(&mut self, name: &str) -> f64 {
        let wall = self.since.elapsed().as_secs_f64();
        let bench_cpu = system::own_cpu();
        let server_cpu = self.server.as_ref().and_then(ServerProcess::cpu);
        let bench = bench_cpu.since(self.bench_cpu);
        let server = match (server_cpu, self.server_cpu) {
            (Some(now), Some(then)) => Some(now.since(then)),
            _ => None,
        };
        let share = |cpu: f64| {
            if wall > 0.0 {
                cpu / (wall * cores() as f64)
            } else {
                0.0
            }
        };
        self.phases.push(Phase {
            name: name.to_owned(),
            wall_seconds: wall,
            bench_user_seconds: bench.user.as_secs_f64(),
            bench_system_seconds: bench.system.as_secs_f64(),
            bench_cores_share: share(bench.total().as_secs_f64()),
            server_cpu_seconds: server.map(|s| s.total().as_secs_f64()),
            server_user_seconds: server.map(|s| s.user.as_secs_f64()),
            server_system_seconds: server.map(|s| s.system.as_secs_f64()),
            server_cores_share: server.map(|s| share(s.total().as_secs_f64())),
        });
        self.since = Instant::now();
        self.bench_cpu = bench_cpu;
        self.server_cpu = server_cpu;
        wall
    }
}
