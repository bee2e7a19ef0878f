//! The terminals of a run: one task each, which connects, registers (galopush) or subscribes
//! (MQTT), then acks and checks every message it receives until the run stops. A terminal owns everything it records (which
//! messages it saw, their latencies); the only things shared on the receive path are a few
//! atomic counters the controller polls.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use galopush_client::{Down, TermType, Terminal, Tls, Transport};
use galopush_protocol::message::{REGRESP_AUTH_FAILED, REGRESP_OK};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::soak::LatencyWindow;
use crate::{body, mqtt};

/// How long a terminal waits before trying again after REGRESP 3 while the logins may still be
/// on their way through the bus.
const LOGIN_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Which messages a terminal should receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expectation {
    /// None at all.
    Nothing,
    /// Message `seq` (of `messages`) goes to terminal `seq % terminals` only.
    Unicast { terminals: u64, messages: u64 },
    /// Every message (of `messages`) goes to every terminal.
    Fanout { messages: u64 },
}

impl Expectation {
    /// How many messages terminal `index` should receive.
    pub fn count_for(self, index: u64) -> u64 {
        match self {
            Expectation::Nothing => 0,
            Expectation::Unicast {
                terminals,
                messages,
            } => messages.saturating_sub(index).div_ceil(terminals),
            Expectation::Fanout { messages } => messages,
        }
    }

    /// How many deliveries `seq_count` messages make among `terminals` terminals.
    pub fn deliveries_of(self, seq_count: u64, terminals: u64) -> u64 {
        match self {
            Expectation::Nothing => 0,
            Expectation::Unicast { .. } => seq_count,
            Expectation::Fanout { .. } => seq_count * terminals,
        }
    }

    /// Where message `seq` goes among terminal `index`'s expected messages, or `None` when it
    /// is not for that terminal.
    fn slot(self, index: u64, seq: u64) -> Option<usize> {
        match self {
            Expectation::Nothing => None,
            Expectation::Unicast {
                terminals,
                messages,
            } => (seq < messages && seq % terminals == index)
                .then(|| usize::try_from(seq / terminals).ok())
                .flatten(),
            Expectation::Fanout { messages } => (seq < messages)
                .then(|| usize::try_from(seq).ok())
                .flatten(),
        }
    }
}

/// Counters every terminal adds to and the controller reads while the run goes on.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Terminals whose connection is open.
    pub connected: AtomicU64,
    /// Terminals that got REGRESP 0.
    pub registered: AtomicU64,
    /// Terminals done with connecting and registering, either way.
    pub settled: AtomicU64,
    /// Expected messages received for the first time.
    pub delivered: AtomicU64,
    /// When the last connection opened (µs since the bench started).
    pub last_connect_us: AtomicU64,
    /// When the last REGRESP 0 arrived (µs since the bench started).
    pub last_register_us: AtomicU64,
}

/// What the terminals speak.
#[derive(Debug)]
pub(crate) enum Protocol {
    /// galopush: the SDK's transport, TLS to the comet when the run is over TLS, and the
    /// terminal type they register as.
    Galopush {
        transport: Transport,
        tls: Option<Tls>,
        term: TermType,
    },
    /// MQTT 3.1.1: each terminal a client subscribed at QoS 1 to the topic named as its user id,
    /// and to `shared` when given (fan-out).
    Mqtt { shared: Option<String> },
}

/// What all terminals of a run share.
#[derive(Debug)]
pub(crate) struct Fleet {
    pub protocol: Protocol,
    /// The bench's clock: every time in a body or a report is µs since this instant.
    pub epoch: Instant,
    pub expectation: Expectation,
    pub progress: Progress,
    /// Cancelled when the run is over: every terminal hands its outcome back.
    pub stop: CancellationToken,
    /// Bound on a connect and on waiting for a REGRESP.
    pub register_timeout: Duration,
    /// Connects and registrations in flight at once.
    pub gate: Semaphore,
    /// New connections per second, if paced, from when the connect phase started.
    pub connect_pace: Option<(Instant, f64)>,
    /// Until when REGRESP 3 is taken as "the login is not in force yet" and retried (a bus
    /// such as NSQ does not keep the logins in order, so the probe proves less there).
    pub login_deadline: Option<Instant>,
    /// The latencies since the last sample, when the run is sampled (`--sample`).
    pub window: Option<LatencyWindow>,
}

impl Fleet {
    /// µs since the bench started.
    pub fn now_us(&self) -> u64 {
        micros(self.epoch.elapsed())
    }

    /// Waits for terminal `spec`'s turn to connect (the connect pace) and for a place among the
    /// connects in flight, held until the permit is dropped.
    pub async fn admit(&self, spec: &TerminalSpec) -> Option<SemaphorePermit<'_>> {
        if let Some((start, rate)) = self.connect_pace {
            let due = start + Duration::from_secs_f64(spec.index as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        // The semaphore is never closed, so acquiring only fails if it were.
        self.gate.acquire().await.ok()
    }

    /// Counts a terminal's connection open.
    pub fn count_connect(&self) {
        self.progress.connected.fetch_add(1, Ordering::Relaxed);
        self.progress
            .last_connect_us
            .fetch_max(self.now_us(), Ordering::Relaxed);
    }

    /// Counts a terminal registered (galopush) or subscribed (MQTT).
    pub fn count_register(&self, outcome: &mut Outcome) {
        outcome.registered = true;
        self.progress.registered.fetch_add(1, Ordering::Relaxed);
        self.progress
            .last_register_us
            .fetch_max(self.now_us(), Ordering::Relaxed);
    }
}

/// µs in `d`, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Connects to the comet at `addr` over `transport`, inside TLS when `tls` is given, from
/// `source` when given.
pub(crate) async fn connect(
    addr: &str,
    transport: Transport,
    tls: Option<&Tls>,
    source: Option<IpAddr>,
) -> galopush_client::Result<Terminal> {
    match tls {
        Some(tls) => Terminal::connect_tls(addr, transport, tls, source).await,
        None => Terminal::connect_from(addr, transport, source).await,
    }
}

/// Who one terminal is and where it connects.
#[derive(Debug, Clone)]
pub(crate) struct TerminalSpec {
    pub index: u64,
    pub uid: String,
    pub token: String,
    /// The comet's listener, `host:port`.
    pub addr: Arc<str>,
    /// The local address to connect from, when spread over several.
    pub source: Option<IpAddr>,
}

/// Where a terminal failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Connect,
    Register,
    Protocol,
}

/// What one terminal saw, handed back when the run stops.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub registered: bool,
    /// REGISTERs repeated after REGRESP 3 while the logins were not in force yet.
    pub register_retries: u64,
    pub connect_errors: u64,
    pub register_errors: u64,
    pub protocol_errors: u64,
    pub first_error: Option<String>,
    /// Expected messages received (each once).
    pub received: u64,
    pub duplicates: u64,
    /// When the last expected message arrived (µs since the bench started).
    pub last_delivery_us: u64,
    /// Publish-to-receive latency of each expected message, in µs.
    pub latencies: Vec<u32>,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            registered: false,
            register_retries: 0,
            connect_errors: 0,
            register_errors: 0,
            protocol_errors: 0,
            first_error: None,
            received: 0,
            duplicates: 0,
            last_delivery_us: 0,
            latencies: Vec::new(),
        }
    }

    /// A terminal task that ended without handing back what it saw.
    pub fn lost_task(why: String) -> Outcome {
        let mut outcome = Outcome::new();
        outcome.fail(FailureKind::Protocol, why);
        outcome
    }

    pub fn fail(&mut self, kind: FailureKind, why: String) {
        match kind {
            FailureKind::Connect => self.connect_errors += 1,
            FailureKind::Register => self.register_errors += 1,
            FailureKind::Protocol => self.protocol_errors += 1,
        }
        self.first_error.get_or_insert(why);
    }
}

/// Runs one terminal: connect, register (or subscribe), then receive until the run stops.
pub(crate) async fn run_terminal(spec: TerminalSpec, fleet: Arc<Fleet>) -> Outcome {
    let mut outcome = Outcome::new();
    match &fleet.protocol {
        Protocol::Galopush {
            transport,
            tls,
            term,
        } => {
            let session = (*transport, tls.as_ref(), *term);
            let terminal = connect_and_register(&spec, &fleet, session, &mut outcome).await;
            fleet.progress.settled.fetch_add(1, Ordering::Relaxed);
            if let Some(terminal) = terminal {
                receive(terminal, &spec, &fleet, &mut outcome).await;
            }
        }
        Protocol::Mqtt { shared } => {
            let client =
                mqtt::connect_and_subscribe(&spec, &fleet, shared.as_deref(), &mut outcome).await;
            fleet.progress.settled.fetch_add(1, Ordering::Relaxed);
            if let Some(client) = client {
                mqtt::receive(client, &spec, &fleet, &mut outcome).await;
            }
        }
    }
    outcome
}

async fn connect_and_register(
    spec: &TerminalSpec,
    fleet: &Fleet,
    (transport, tls, term): (Transport, Option<&Tls>, TermType),
    outcome: &mut Outcome,
) -> Option<Terminal> {
    let _permit = fleet.admit(spec).await?;
    let mut counted_connect = false;
    loop {
        let connect = connect(&spec.addr, transport, tls, spec.source);
        let mut terminal = match tokio::time::timeout(fleet.register_timeout, connect).await {
            Ok(Ok(terminal)) => terminal,
            Ok(Err(e)) => {
                outcome.fail(
                    FailureKind::Connect,
                    format!("connect to {}: {e}", spec.addr),
                );
                return None;
            }
            Err(_) => {
                outcome.fail(
                    FailureKind::Connect,
                    format!(
                        "connect to {}: no answer within {:?}",
                        spec.addr, fleet.register_timeout
                    ),
                );
                return None;
            }
        };
        if !counted_connect {
            counted_connect = true;
            fleet.count_connect();
        }
        let register = terminal.register(&spec.uid, &spec.token, term);
        let why = match tokio::time::timeout(fleet.register_timeout, register).await {
            Ok(Ok(REGRESP_OK)) => {
                fleet.count_register(outcome);
                return Some(terminal);
            }
            Ok(Ok(REGRESP_AUTH_FAILED))
                if fleet.login_deadline.is_some_and(|d| Instant::now() < d) =>
            {
                outcome.register_retries += 1;
                drop(terminal);
                tokio::time::sleep(LOGIN_RETRY_PAUSE).await;
                continue;
            }
            Ok(Ok(code)) => format!("REGRESP {code}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no REGRESP within {:?}", fleet.register_timeout),
        };
        outcome.fail(
            FailureKind::Register,
            format!("register {}: {why}", spec.uid),
        );
        return None;
    }
}

/// Acks and checks every message until the run stops or the connection fails. What has
/// arrived together is acked in one write, as a terminal on a busy link would.
async fn receive(
    mut terminal: Terminal,
    spec: &TerminalSpec,
    fleet: &Fleet,
    outcome: &mut Outcome,
) {
    let mut seen = Seen::new(spec, fleet, outcome);
    let stopped = fleet.stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let mut next = tokio::select! {
            biased;
            () = &mut stopped => return,
            next = terminal.recv() => next,
        };
        // What one read brought arrived at one time, and is counted in one go.
        let now_us = fleet.now_us();
        let received_before = outcome.received;
        let go_on = loop {
            let (tid, down) = match next {
                Ok(Some(message)) => message,
                Ok(None) => {
                    outcome.fail(
                        FailureKind::Protocol,
                        format!("{}: the comet closed the connection", spec.uid),
                    );
                    break false;
                }
                Err(e) => {
                    outcome.fail(FailureKind::Protocol, format!("{}: {e}", spec.uid));
                    break false;
                }
            };
            if let Err(e) = terminal.feed_ack(tid, &down).await {
                outcome.fail(FailureKind::Protocol, format!("{}: ack: {e}", spec.uid));
                break false;
            }
            if !check(&down, spec, fleet, now_us, &mut seen, outcome) {
                break false;
            }
            match terminal.try_recv() {
                Some(more) => next = more,
                None => break true,
            }
        };
        fleet
            .progress
            .delivered
            .fetch_add(outcome.received - received_before, Ordering::Relaxed);
        if !go_on {
            return;
        }
        if let Err(e) = terminal.flush().await {
            outcome.fail(FailureKind::Protocol, format!("{}: ack: {e}", spec.uid));
            return;
        }
    }
}

/// Checks one message, received at `now_us`, against what the terminal expects and records it;
/// false when the terminal is to stop (it was kicked).
fn check(
    down: &Down,
    spec: &TerminalSpec,
    fleet: &Fleet,
    now_us: u64,
    seen: &mut Seen,
    outcome: &mut Outcome,
) -> bool {
    let msg = match down {
        Down::Push {
            offline: 0, msg, ..
        }
        | Down::Callback { msg }
        | Down::Im { msg, .. } => msg,
        Down::Kick { reason } => {
            outcome.fail(
                FailureKind::Protocol,
                format!("{}: kicked with reason {reason}", spec.uid),
            );
            return false;
        }
        other => {
            outcome.fail(
                FailureKind::Protocol,
                format!("{}: unexpected {other:?}", spec.uid),
            );
            return true;
        }
    };
    seen.record(msg, spec, fleet, now_us, outcome);
    true
}

/// Which of its expected messages a terminal has received, one bit each.
pub(crate) struct Seen(Vec<u64>);

impl Seen {
    /// Room for what terminal `spec` expects, and for their latencies in `outcome`.
    pub fn new(spec: &TerminalSpec, fleet: &Fleet, outcome: &mut Outcome) -> Seen {
        let expected = fleet.expectation.count_for(spec.index);
        let expected_len = usize::try_from(expected).unwrap_or(usize::MAX);
        outcome.latencies.reserve_exact(expected_len);
        Seen(vec![0u64; expected_len.div_ceil(64)])
    }

    /// Records the message whose body is `msg`, received at `now_us`: once, with its latency,
    /// or as a duplicate; a body that is not one of the terminal's messages is a protocol error.
    pub fn record(
        &mut self,
        msg: &[u8],
        spec: &TerminalSpec,
        fleet: &Fleet,
        now_us: u64,
        outcome: &mut Outcome,
    ) {
        let slot = body::parse(msg)
            .and_then(|(seq, sent_us)| Some((fleet.expectation.slot(spec.index, seq)?, sent_us)));
        let Some((slot, sent_us)) = slot else {
            outcome.fail(
                FailureKind::Protocol,
                format!(
                    "{}: a message that is not one of its own: {:?}",
                    spec.uid,
                    String::from_utf8_lossy(msg)
                ),
            );
            return;
        };
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        match self.0.get_mut(word) {
            Some(w) if *w & bit != 0 => outcome.duplicates += 1,
            Some(w) => {
                *w |= bit;
                outcome.received += 1;
                outcome.last_delivery_us = now_us;
                let latency_us = now_us.saturating_sub(sent_us);
                if let Some(window) = &fleet.window {
                    window.record(latency_us);
                }
                outcome
                    .latencies
                    .push(u32::try_from(latency_us).unwrap_or(u32::MAX));
            }
            None => outcome.fail(
                FailureKind::Protocol,
                format!("{}: message slot {slot} out of range", spec.uid),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicast_shares_messages_round_robin() {
        let e = Expectation::Unicast {
            terminals: 3,
            messages: 7,
        };
        assert_eq!(
            (0..3).map(|i| e.count_for(i)).collect::<Vec<_>>(),
            [3, 2, 2]
        );
        assert_eq!(e.slot(1, 4), Some(1));
        assert_eq!(e.slot(1, 3), None);
        assert_eq!(e.slot(1, 7), None);
        let few = Expectation::Unicast {
            terminals: 5,
            messages: 2,
        };
        assert_eq!(few.count_for(4), 0);
        assert_eq!(e.deliveries_of(7, 3), 7);
    }

    #[test]
    fn fanout_sends_everything_everywhere() {
        let e = Expectation::Fanout { messages: 4 };
        assert_eq!(e.count_for(9), 4);
        assert_eq!(e.slot(9, 3), Some(3));
        assert_eq!(e.slot(9, 4), None);
        assert_eq!(e.deliveries_of(4, 10), 40);
        assert_eq!(Expectation::Nothing.slot(0, 0), None);
    }
}
