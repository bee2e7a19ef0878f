//! Prometheus metrics (SPEC §8 `/metrics`). Every label combination is created at start and
//! kept as a handle, so counting on the hot path is one atomic add, never a map lookup.
//!
//! Refusals of SPEC §10 are counted here too, each with a warning logged at most once a second
//! per reason: a flood of refusals must not become a flood of log lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use galopush_protocol::TermType;
use galopush_protocol::message::KickReason;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::bus::Topic;
use crate::link::{DeliveryKind, Outcome};
use crate::phones::{Provider, ProviderOutcome};
use crate::router::reports::ReportOutcome;

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Counters of one inbound topic.
#[derive(Clone, Default)]
pub struct TopicCounters {
    pub received: Counter,
    pub retired: Counter,
    pub requeued: Counter,
    pub malformed: Counter,
}

/// Why a message reached no terminal and no store.
#[derive(Debug, Clone, Copy)]
pub enum Dropped {
    /// The uid has no login record and no live connection for any type in the mask.
    NoLogin,
    /// A Web terminal was not live (nothing is stored for Web).
    WebOffline,
}

impl Dropped {
    pub const ALL: [Dropped; 2] = [Dropped::NoLogin, Dropped::WebOffline];

    /// The metric's `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Dropped::NoLogin => "no_login",
            Dropped::WebOffline => "web_offline",
        }
    }
}

/// The KICK reasons with their metric label, in the order of their codes.
pub const KICK_REASONS: [(KickReason, &str); 4] = [
    (KickReason::RepeatLogin, "repeat_login"),
    (KickReason::MutualExclusion, "mutual_exclusion"),
    (KickReason::SessionTimeout, "session_timeout"),
    (KickReason::LoggedOut, "logged_out"),
];

/// A bound of SPEC §10 that something went over; the label is the `[limits]` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxBody,
    MaxUnregisteredFrame,
    MaxConnections,
    ConnectionsPerIp,
    ImInflight,
    ConnQueueBytes,
    InboxPending,
    OutboxPending,
    MaxMpub,
    HttpConcurrency,
    HttpHeaderTimeout,
    HttpRequestTimeout,
}

impl Refusal {
    pub const ALL: [Refusal; 12] = [
        Refusal::MaxBody,
        Refusal::MaxUnregisteredFrame,
        Refusal::MaxConnections,
        Refusal::ConnectionsPerIp,
        Refusal::ImInflight,
        Refusal::ConnQueueBytes,
        Refusal::InboxPending,
        Refusal::OutboxPending,
        Refusal::MaxMpub,
        Refusal::HttpConcurrency,
        Refusal::HttpHeaderTimeout,
        Refusal::HttpRequestTimeout,
    ];

    /// The `[limits]` key, which is also the metric's `reason` label.
    pub fn key(self) -> &'static str {
        match self {
            Refusal::MaxBody => "max_body",
            Refusal::MaxUnregisteredFrame => "max_unregistered_frame",
            Refusal::MaxConnections => "max_connections",
            Refusal::ConnectionsPerIp => "connections_per_ip",
            Refusal::ImInflight => "im_inflight",
            Refusal::ConnQueueBytes => "conn_queue_bytes",
            Refusal::InboxPending => "inbox_pending",
            Refusal::OutboxPending => "outbox_pending",
            Refusal::MaxMpub => "max_mpub",
            Refusal::HttpConcurrency => "http_concurrency",
            Refusal::HttpHeaderTimeout => "http_header_timeout",
            Refusal::HttpRequestTimeout => "http_request_timeout",
        }
    }

    /// What going over the bound does, for the log line.
    fn consequence(self) -> &'static str {
        match self {
            Refusal::MaxBody | Refusal::MaxUnregisteredFrame => "connection closed",
            Refusal::MaxConnections | Refusal::ConnectionsPerIp => "new connection closed",
            Refusal::ImInflight => "connection not read until an IM is answered",
            Refusal::ConnQueueBytes => {
                "terminal not reading: connection closed, its messages go to the offline rule"
            }
            Refusal::InboxPending => "answered 503 with Retry-After",
            Refusal::OutboxPending => "IM answered IMRESP 1 / answer requeued",
            Refusal::MaxMpub => "answered 413",
            Refusal::HttpConcurrency => "answered 503",
            Refusal::HttpHeaderTimeout => "connection closed",
            Refusal::HttpRequestTimeout => "answered 408",
        }
    }
}

/// How one refusal reason is counted and logged.
#[derive(Default)]
struct RefusalCounter {
    counter: Counter,
    /// When a refusal of this reason was last logged, in ms since the epoch.
    logged_at: AtomicU64,
    /// Refusals counted at the last log line, to say how many went unlogged since.
    logged_count: AtomicU64,
}

/// What `galopush_dispatch_total` counts: how the dispatcher answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchResult {
    /// An address, for a known terminal type and an id.
    Ok,
    /// `termtype` missing or not one of SPEC §2: answered as a non-Web terminal.
    UnknownTermtype,
    /// `id` missing or empty: answered with the least-loaded comet.
    NoId,
    /// No comet to send the terminal to: `503`.
    Unavailable,
}

/// What the router refused on the link from the comets (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// A join without the right `cluster.secret`.
    Secret,
    /// A join with the id of another comet still joined.
    IdTaken,
    /// A settle for a delivery that was sent to another comet.
    ForeignSettle,
    /// An IM up for a session another comet holds.
    ForeignIm,
}

/// All metrics of a process.
pub struct Metrics {
    registry: Registry,
    connections: [Gauge; 5],
    pub connections_unregistered: Gauge,
    pub connections_parked: Gauge,
    pub revivals: Counter,
    deliveries: [[Counter; 2]; 3],
    offline_stored: [Counter; 3],
    offline_delivered: [Counter; 3],
    dropped: [Counter; 2],
    reports: [Counter; 5],
    providers: [[Counter; 6]; 2],
    topics: [TopicCounters; 5],
    kicks: [Counter; 4],
    pub registrations_accepted: Counter,
    pub registrations_refused: Counter,
    pub im_up_accepted: Counter,
    pub im_up_failed: Counter,
    pub protocol_errors: Counter,
    pub slow_terminals: Counter,
    pub webhook_delivered: Counter,
    pub webhook_failures: Counter,
    pub outbox_pending: Gauge,
    pub inbox_pending: Gauge,
    /// Embedded bus: inbox messages retired before their write reached the store.
    pub inbox_unwritten: Counter,
    pub store_errors: Counter,
    /// Embedded store: each write transaction, from its start to its fsynced commit.
    pub store_commit_seconds: Histogram,
    refusals: [RefusalCounter; 12],
    dispatches: [Counter; 4],
    link_refusals: [Counter; 4],
}

/// The buckets of `galopush_store_commit_seconds`, in seconds: a healthy local disk commits in
/// 1–5 ms; the tail an operator needs to see (a `/pub` waits for its commit) is 10 ms to seconds.
pub fn commit_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

fn kind_index(kind: DeliveryKind) -> usize {
    match kind {
        DeliveryKind::Push { .. } => 0,
        DeliveryKind::Callback => 1,
        DeliveryKind::Im => 2,
    }
}

const KINDS: [&str; 3] = ["push", "callback", "im"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("galopush");

        let connections_family = Family::<Labels, Gauge>::default();
        registry.register(
            "connections",
            "Live registered terminal connections by terminal type",
            connections_family.clone(),
        );
        let connections = TermType::ALL.map(|t| {
            connections_family
                .get_or_create(&[("termtype", t.name())])
                .clone()
        });
        let connections_unregistered = Gauge::default();
        registry.register(
            "connections_unregistered",
            "Open connections that have not registered yet",
            connections_unregistered.clone(),
        );
        let connections_parked = Gauge::default();
        registry.register(
            "connections_parked",
            "Registered connections kept without a task, quiet for comet.park_after",
            connections_parked.clone(),
        );
        let revivals = Counter::default();
        registry.register(
            "revivals",
            "Parked connections given a task again (something was sent to or by the terminal, or it went idle)",
            revivals.clone(),
        );

        let deliveries_family = Family::<Labels2, Counter>::default();
        registry.register(
            "deliveries",
            "Live deliveries by kind and outcome (failed ones go to the offline rule)",
            deliveries_family.clone(),
        );
        let deliveries = KINDS.map(|k| {
            ["acked", "failed"].map(|o| {
                deliveries_family
                    .get_or_create(&[("kind", k), ("outcome", o)])
                    .clone()
            })
        });

        let kind_family = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<Labels, Counter>::default();
            registry.register(name, help, family.clone());
            KINDS.map(|k| family.get_or_create(&[("kind", k)]).clone())
        };
        let offline_stored = kind_family(
            &mut registry,
            "offline_stored",
            "Messages written to the offline store by kind",
        );
        let offline_delivered = kind_family(
            &mut registry,
            "offline_delivered",
            "Stored messages delivered and acked by kind",
        );

        let dropped_family = Family::<Labels, Counter>::default();
        registry.register(
            "dropped",
            "Messages that reached neither a terminal nor the store, by reason",
            dropped_family.clone(),
        );
        let dropped = Dropped::ALL.map(|r| {
            dropped_family
                .get_or_create(&[("reason", r.label())])
                .clone()
        });

        let reports_family = Family::<Labels, Counter>::default();
        registry.register(
            "delivery_reports",
            "Delivery reports the bus took (topics.delivery_report), by outcome",
            reports_family.clone(),
        );
        let reports = ReportOutcome::ALL.map(|o| {
            reports_family
                .get_or_create(&[("outcome", o.label())])
                .clone()
        });

        let providers_family = Family::<Labels2, Counter>::default();
        registry.register(
            "provider",
            "Notifications for phones' push services (apns.*, fcm.*), by provider and outcome",
            providers_family.clone(),
        );
        let providers = Provider::ALL.map(|p| {
            ProviderOutcome::ALL.map(|o| {
                providers_family
                    .get_or_create(&[("provider", p.label()), ("outcome", o.label())])
                    .clone()
            })
        });

        let topic_family = Family::<Labels2, Counter>::default();
        registry.register(
            "bus_messages",
            "Inbound bus messages by topic and event (received, retired, requeued, malformed)",
            topic_family.clone(),
        );
        let topics = Topic::ALL.map(|t| {
            let c = |event| {
                topic_family
                    .get_or_create(&[("topic", t.label()), ("event", event)])
                    .clone()
            };
            TopicCounters {
                received: c("received"),
                retired: c("retired"),
                requeued: c("requeued"),
                malformed: c("malformed"),
            }
        });

        let kicks_family = Family::<Labels, Counter>::default();
        registry.register("kicks", "KICKs sent by reason", kicks_family.clone());
        let kicks = KICK_REASONS.map(|(_, r)| kicks_family.get_or_create(&[("reason", r)]).clone());

        let registrations = Family::<Labels, Counter>::default();
        registry.register(
            "registrations",
            "REGISTERs by result",
            registrations.clone(),
        );
        let im_up = Family::<Labels, Counter>::default();
        registry.register("im_up", "IMs from terminals by result", im_up.clone());
        let webhook = Family::<Labels, Counter>::default();
        registry.register(
            "webhook",
            "Outbound webhook POSTs by result",
            webhook.clone(),
        );

        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let protocol_errors = counter(
            &mut registry,
            "protocol_errors",
            "Connections closed for a malformed, oversized or misplaced frame",
        );
        let slow_terminals = counter(
            &mut registry,
            "slow_terminals",
            "Connections closed because the terminal did not read its messages",
        );
        let store_errors = counter(
            &mut registry,
            "store_errors",
            "Store operations that failed (the message is requeued)",
        );
        let store_commit_seconds = commit_histogram();
        registry.register(
            "store_commit_seconds",
            "Embedded store: how long each write transaction took, from its start to its fsynced commit",
            store_commit_seconds.clone(),
        );
        let outbox_pending = Gauge::default();
        registry.register(
            "outbox_pending",
            "Outbound messages (msgUpward, sessionTimeout answers, delivery reports) waiting for the webhook or nsqd",
            outbox_pending.clone(),
        );

        let inbox_pending = Gauge::default();
        registry.register(
            "inbox_pending",
            "Messages accepted by /pub and /mpub and not yet retired (limits.inbox_pending)",
            inbox_pending.clone(),
        );
        let inbox_unwritten = Counter::default();
        registry.register(
            "inbox_unwritten",
            "Inbox messages retired (acked, or stored offline) before their inbox write was taken: never written",
            inbox_unwritten.clone(),
        );
        let refused = Family::<Labels, Counter>::default();
        registry.register(
            "refused",
            "Refusals by the limits.* bound that was reached",
            refused.clone(),
        );
        let refusals = Refusal::ALL.map(|r| RefusalCounter {
            counter: refused.get_or_create(&[("reason", r.key())]).clone(),
            ..RefusalCounter::default()
        });
        let dispatch = Family::<Labels, Counter>::default();
        registry.register("dispatch", "Dispatcher answers by result", dispatch.clone());
        let dispatches = ["ok", "unknown_termtype", "no_id", "unavailable"]
            .map(|r| dispatch.get_or_create(&[("result", r)]).clone());

        let link = Family::<Labels, Counter>::default();
        registry.register(
            "link_refused",
            "What routers refused on the link from comets, by reason",
            link.clone(),
        );
        let link_refusals = ["secret", "id_taken", "foreign_settle", "foreign_im"]
            .map(|r| link.get_or_create(&[("reason", r)]).clone());

        // Each handle is taken in its own statement: a family's lookup guard lives until the end
        // of the statement, and two in one would deadlock.
        let label = |family: &Family<Labels, Counter>, value: &'static str| -> Counter {
            family.get_or_create(&[("result", value)]).clone()
        };
        let registrations_accepted = label(&registrations, "accepted");
        let registrations_refused = label(&registrations, "refused");
        let im_up_accepted = label(&im_up, "accepted");
        let im_up_failed = label(&im_up, "failed");
        let webhook_delivered = label(&webhook, "delivered");
        let webhook_failures = label(&webhook, "failed");
        Metrics {
            connections,
            connections_unregistered,
            connections_parked,
            revivals,
            deliveries,
            offline_stored,
            offline_delivered,
            dropped,
            reports,
            providers,
            topics,
            kicks,
            registrations_accepted,
            registrations_refused,
            im_up_accepted,
            im_up_failed,
            protocol_errors,
            slow_terminals,
            webhook_delivered,
            webhook_failures,
            outbox_pending,
            inbox_pending,
            inbox_unwritten,
            store_errors,
            store_commit_seconds,
            refusals,
            dispatches,
            link_refusals,
            registry,
        }
    }

    pub fn connections(&self, term: TermType) -> &Gauge {
        &self.connections[term.index()]
    }

    pub fn delivery(&self, kind: DeliveryKind, outcome: Outcome) -> &Counter {
        let o = match outcome {
            Outcome::Acked => 0,
            Outcome::Failed => 1,
        };
        &self.deliveries[kind_index(kind)][o]
    }

    pub fn offline_stored(&self, kind: DeliveryKind) -> &Counter {
        &self.offline_stored[kind_index(kind)]
    }

    pub fn offline_delivered(&self, kind: DeliveryKind) -> &Counter {
        &self.offline_delivered[kind_index(kind)]
    }

    pub fn dropped(&self, why: Dropped) -> &Counter {
        &self.dropped[why as usize]
    }

    pub fn report(&self, outcome: ReportOutcome) -> &Counter {
        &self.reports[outcome as usize]
    }

    pub fn provider(&self, provider: Provider, outcome: ProviderOutcome) -> &Counter {
        &self.providers[provider as usize][outcome as usize]
    }

    pub fn topic(&self, topic: Topic) -> &TopicCounters {
        &self.topics[topic as usize]
    }

    pub fn kick(&self, reason: KickReason) -> &Counter {
        &self.kicks[reason as usize - 1]
    }

    /// Counts a refusal and logs it, at most once a second per reason.
    pub fn refused(&self, why: Refusal) {
        let r = &self.refusals[why as usize];
        r.counter.inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = r.logged_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && r.logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let total = r.counter.get();
            let since = total - r.logged_count.swap(total, Ordering::Relaxed);
            tracing::warn!(
                limit = format_args!("limits.{}", why.key()),
                refusals_since_last_line = since,
                total,
                "{}",
                why.consequence()
            );
        }
    }

    /// How many refusals of a reason were counted.
    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refusals[why as usize].counter.get()
    }

    pub fn link_refused(&self, why: LinkRefusal) -> &Counter {
        &self.link_refusals[why as usize]
    }

    pub fn dispatched(&self, result: DispatchResult) -> &Counter {
        &self.dispatches[result as usize]
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.connections(TermType::Web).inc();
        m.delivery(DeliveryKind::Callback, Outcome::Failed).inc();
        m.kick(KickReason::LoggedOut).inc();
        m.topic(Topic::SessionTimeout).malformed.inc();
        let text = m.render();
        assert!(
            text.contains("galopush_connections{termtype=\"Web\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("galopush_deliveries_total{kind=\"callback\",outcome=\"failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("galopush_kicks_total{reason=\"logged_out\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "galopush_bus_messages_total{topic=\"sessionTimeout\",event=\"malformed\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("galopush_registrations_total{result=\"refused\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn every_metric_is_described_in_docs_operations_md() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        let text = Metrics::new().render();
        let mut missing = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let exposed = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if !doc.contains(&format!("`{exposed}`")) {
                missing.push(exposed);
            }
        }
        assert!(
            missing.is_empty(),
            "metrics not described in docs/operations.md: {missing:?}"
        );
    }

    #[test]
    fn every_refusal_reason_is_a_series_from_the_start() {
        let m = Metrics::new();
        m.refused(Refusal::ConnQueueBytes);
        m.refused(Refusal::ConnQueueBytes);
        m.dispatched(DispatchResult::NoId).inc();
        let text = m.render();
        for r in Refusal::ALL {
            let n = if r == Refusal::ConnQueueBytes { 2 } else { 0 };
            let line = format!("galopush_refused_total{{reason=\"{}\"}} {n}", r.key());
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
        assert!(text.contains("galopush_dispatch_total{result=\"no_id\"} 1"));
        assert_eq!(m.refusals(Refusal::ConnQueueBytes), 2);
    }
}
