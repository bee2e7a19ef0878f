//! What a run found: rates, deliveries, latency percentiles, errors, CPU per phase and the
//! server's memory, as plain text for people and as JSON for scripts (read back by
//! `galopush bench plot`).

use std::fmt::Write;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::args::{Framing, MessageKind, Scenario, TransportKind};
use crate::soak::{self, Sample};

/// The full result of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: Scenario,
    /// The run's name in pictures (`--label`, else e.g. "galopush tcp" or "mqtt").
    pub label: String,
    /// The MQTT broker the run was against (`--target`), or none for a galopush server.
    pub broker: Option<String>,
    pub transport: TransportKind,
    /// The terminals connected over TLS (TCP inside TLS, or WSS).
    pub tls: bool,
    /// Body encoding of TCP terminals.
    pub encoding: Option<u8>,
    /// Framing of WebSocket terminals.
    pub framing: Option<Framing>,
    pub terminals: u64,
    /// Cores of the machine (CPU shares below are of all of them).
    pub cores: usize,
    /// The bench's open-files limit.
    pub open_files_limit: u64,
    /// The `userOnlineState` logins, when published.
    pub login: Option<Rate>,
    /// The dispatcher's answers, when asked.
    pub dispatch: Option<Rate>,
    /// How many terminals the dispatcher sent to each comet address, busiest first (empty when
    /// the comet was given).
    pub comets: Vec<CometShare>,
    pub connect: ConnectReport,
    /// How long idle held the terminals.
    pub hold_seconds: Option<f64>,
    /// Unicast and fanout.
    pub delivery: Option<DeliveryReport>,
    pub errors: ErrorReport,
    pub phases: Vec<Phase>,
    /// Given --server-pid.
    pub server: Option<ServerReport>,
}

/// The terminals the dispatcher sent to one comet address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CometShare {
    pub addr: String,
    pub terminals: u64,
}

/// `count` things done in `seconds`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Rate {
    pub count: u64,
    pub seconds: f64,
    pub per_second: f64,
}

impl Rate {
    pub fn new(count: u64, seconds: f64) -> Rate {
        Rate {
            count,
            seconds,
            per_second: per_second(count, seconds),
        }
    }
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Connecting and registering, timed from the start of the connect phase.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ConnectReport {
    /// Connections opened until the last one opened.
    pub connects: Rate,
    /// REGRESP 0 received until the last one arrived.
    pub registrations: Rate,
    /// REGISTERs repeated after REGRESP 3 because a login was not in force yet.
    pub register_retries: u64,
}

/// Publishing and delivering messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryReport {
    pub kind: MessageKind,
    pub topic: String,
    pub messages: u64,
    /// `--body-size`: each body is padded up to it (0: not padded).
    pub body_size: u64,
    /// Messages per `/mpub` request.
    pub batch: u64,
    pub publishers: usize,
    /// Messages per second asked for, if paced.
    pub rate: Option<f64>,
    /// Messages the server accepted, from the first request to the last answer.
    pub published: Rate,
    /// Deliveries expected from the accepted messages.
    pub expected: u64,
    /// Expected deliveries received and acked (each counted once), from the first publish to
    /// the last of them.
    pub delivered: Rate,
    /// Expected but never received within the drain timeout.
    pub lost: u64,
    /// Deliveries received more than once.
    pub duplicates: u64,
    /// Publish-to-receive latency of the deliveries.
    pub latency: Option<Latency>,
    /// Expected deliveries received so far, sampled during the run: (seconds since the first
    /// publish, deliveries).
    pub timeline: Vec<(f64, u64)>,
    /// The latency distribution: (quantile, µs) from 0 to 1.
    pub latency_cdf: Vec<(f64, u64)>,
    /// With `--sample`: one per interval, from the first publish on.
    #[serde(default)]
    pub samples: Vec<Sample>,
}

/// Latency percentiles, µs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Failures, counted by where they happened, with the first few described.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorReport {
    /// Connections that could not be opened.
    pub connect: u64,
    /// REGISTERs refused, unanswered or failed.
    pub register: u64,
    /// Broken connections, kicks, undecodable or unexpected messages.
    pub protocol: u64,
    /// `/mpub` requests refused or failed.
    pub publish: u64,
    pub samples: Vec<String>,
}

impl ErrorReport {
    /// How many samples a report keeps.
    pub const SAMPLES: usize = 8;

    pub fn total(&self) -> u64 {
        self.connect + self.register + self.protocol + self.publish
    }

    /// Keeps `why` if there is room for another sample.
    pub fn sample(&mut self, why: String) {
        if self.samples.len() < Self::SAMPLES {
            self.samples.push(why);
        }
    }
}

/// Wall and CPU time of one phase of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub wall_seconds: f64,
    pub bench_user_seconds: f64,
    pub bench_system_seconds: f64,
    /// The bench's CPU time over the wall time of all cores (1.0: every core busy).
    pub bench_cores_share: f64,
    pub server_cpu_seconds: Option<f64>,
    /// Of `server_cpu_seconds`, in the server's own code and in the kernel for it.
    pub server_user_seconds: Option<f64>,
    pub server_system_seconds: Option<f64>,
    pub server_cores_share: Option<f64>,
}

/// The server's resident memory (VmRSS) at the points of the run, added up over its processes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerReport {
    pub pids: Vec<u32>,
    pub rss_kib_start: Option<u64>,
    pub rss_kib_before_connect: Option<u64>,
    /// After every terminal registered (for idle: at the end of the hold).
    pub rss_kib_after_connect: Option<u64>,
    /// At the end of the run, before the terminals disconnect.
    pub rss_kib_end: Option<u64>,
    /// (after connect − before connect) / registered terminals.
    pub rss_bytes_per_connection: Option<f64>,
}

impl Report {
    /// Expected deliveries never received.
    pub fn lost(&self) -> u64 {
        self.delivery.as_ref().map_or(0, |d| d.lost)
    }

    /// Nothing lost and no error: what the exit code tells.
    pub fn is_clean(&self) -> bool {
        self.lost() == 0 && self.errors.total() == 0
    }

    /// The report as JSON.
    pub fn json(&self) -> String {
        // Plain numbers, strings and enums: serialising cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        let how = match (self.encoding, self.framing) {
            (Some(encoding), _) => format!("encoding {encoding}"),
            (None, Some(framing)) => format!("{} framing", name(framing)),
            (None, None) => "MQTT 3.1.1".to_owned(),
        };
        let transport = match (&self.broker, self.transport, self.tls) {
            (Some(broker), ..) => format!("mqtt (QoS 1, {broker})"),
            (None, TransportKind::Tcp, true) => "tls tcp".to_owned(),
            (None, TransportKind::Ws, true) => "wss".to_owned(),
            (None, transport, false) => name(transport),
        };
        writeln!(
            out,
            "galopush bench {}: {} {transport} terminals ({how}); {} cores, open files limit {}",
            name(self.scenario),
            self.terminals,
            self.cores,
            self.open_files_limit
        )?;
        if let Some(login) = &self.login {
            writeln!(
                out,
                "login      {} in force after {}",
                login.count,
                rate(login)
            )?;
        }
        if let Some(dispatch) = &self.dispatch {
            writeln!(
                out,
                "dispatch   {} answers in {}",
                dispatch.count,
                rate(dispatch)
            )?;
            for share in &self.comets {
                writeln!(
                    out,
                    "  comet    {} terminals on {}",
                    share.terminals, share.addr
                )?;
            }
        }
        let c = &self.connect;
        writeln!(
            out,
            "connect    {} connected in {}; {} registered in {}; {} register retries",
            c.connects.count,
            rate(&c.connects),
            c.registrations.count,
            rate(&c.registrations),
            c.register_retries
        )?;
        if let Some(hold) = self.hold_seconds {
            writeln!(out, "hold       {hold:.1} s")?;
        }
        if let Some(d) = &self.delivery {
            let pace = d
                .rate
                .map_or("at full speed".to_owned(), |r| format!("paced at {r:.0}/s"));
            writeln!(
                out,
                "publish    {} {} messages{} on {} in {} batches of {} by {} publishers \
                 {pace}: {} accepted in {}",
                d.messages,
                if self.broker.is_some() {
                    "mqtt".to_owned()
                } else {
                    name(d.kind)
                },
                if d.body_size > 0 {
                    format!(" of {} bytes", d.body_size)
                } else {
                    String::new()
                },
                d.topic,
                if self.broker.is_some() {
                    "PUBLISH"
                } else {
                    "/mpub"
                },
                d.batch,
                d.publishers,
                d.published.count,
                rate(&d.published)
            )?;
            writeln!(
                out,
                "deliver    {} of {} acked in {} (first publish to last ack); lost {}, duplicates {}",
                d.delivered.count,
                d.expected,
                rate(&d.delivered),
                d.lost,
                d.duplicates
            )?;
            if let Some(l) = &d.latency {
                writeln!(
                    out,
                    "latency    p50 {}, p99 {}, p99.9 {}, max {}, mean {} ({} samples)",
                    ms(l.p50_us as f64),
                    ms(l.p99_us as f64),
                    ms(l.p999_us as f64),
                    ms(l.max_us as f64),
                    ms(l.mean_us),
                    l.samples
                )?;
            }
            if !d.samples.is_empty() {
                writeln!(out, "samples    every {:.0} s:", d.samples[0].at_seconds)?;
                writeln!(out, "{}", soak::HEADER)?;
                for sample in &d.samples {
                    writeln!(out, "{sample}")?;
                }
            }
        }
        let e = &self.errors;
        writeln!(
            out,
            "errors     {} (connect {}, register {}, protocol {}, publish {})",
            e.total(),
            e.connect,
            e.register,
            e.protocol,
            e.publish
        )?;
        for sample in &e.samples {
            writeln!(out, "           {sample}")?;
        }
        writeln!(
            out,
            "phase      {:>8} {:>10} {:>10} {:>7} {:>10} {:>7} {:>10} {:>10}",
            "wall s",
            "bench usr",
            "bench sys",
            "share",
            "server cpu",
            "share",
            "server usr",
            "server sys"
        )?;
        let seconds = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.2}"));
        for p in &self.phases {
            writeln!(
                out,
                "{:<10} {:>8.2} {:>10.2} {:>10.2} {:>6.0}% {:>10} {:>7} {:>10} {:>10}",
                p.name,
                p.wall_seconds,
                p.bench_user_seconds,
                p.bench_system_seconds,
                p.bench_cores_share * 100.0,
                seconds(p.server_cpu_seconds),
                p.server_cores_share
                    .map_or("-".to_owned(), |s| format!("{:.0}%", s * 100.0)),
                seconds(p.server_user_seconds),
                seconds(p.server_system_seconds),
            )?;
        }
        if let Some(s) = &self.server {
            writeln!(
                out,
                "server rss pid {}: {} at start, {} before connecting, {} after, {} at the end; \
                 {} per connection",
                s.pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join("+"),
                kib(s.rss_kib_start),
                kib(s.rss_kib_before_connect),
                kib(s.rss_kib_after_connect),
                kib(s.rss_kib_end),
                s.rss_bytes_per_connection
                    .map_or("-".to_owned(), |b| format!("{:.0} bytes", b))
            )?;
        }
        if self.is_clean() {
            writeln!(out, "result     OK")
        } else {
            writeln!(
                out,
                "result     FAILED: {} lost, {} errors",
                self.lost(),
                self.errors.total()
            )
        }
    }
}

/// The command-line name of a value.
fn name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned())
}

fn rate(r: &Rate) -> String {
    format!("{:.2} s ({:.0}/s)", r.seconds, r.per_second)
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

fn kib(k: Option<u64>) -> String {
    k.map_or("-".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            scenario: Scenario::Unicast,
            label: "galopush tcp".into(),
            broker: None,
            transport: TransportKind::Tcp,
            tls: false,
            encoding: Some(0),
            framing: None,
            terminals: 2,
            cores: 2,
            open_files_limit: 20_000,
            login: Some(Rate::new(2, 0.5)),
            dispatch: None,
            comets: Vec::new(),
            connect: ConnectReport {
                connects: Rate::new(2, 0.1),
                registrations: Rate::new(2, 0.2),
                register_retries: 0,
            },
            hold_seconds: None,
            delivery: Some(DeliveryReport {
                kind: MessageKind::Push,
                topic: "push".into(),
                messages: 4,
                body_size: 0,
                batch: 2,
                publishers: 1,
                rate: None,
                published: Rate::new(4, 0.01),
                expected: 4,
                delivered: Rate::new(4, 0.02),
                lost: 0,
                duplicates: 0,
                latency: Some(Latency {
                    samples: 4,
                    mean_us: 1500.0,
                    p50_us: 1200,
                    p99_us: 2000,
                    p999_us: 2000,
                    max_us: 2100,
                }),
                timeline: vec![(0.0, 0), (0.01, 3), (0.02, 4)],
                latency_cdf: vec![(0.0, 900), (0.5, 1200), (1.0, 2100)],
                samples: Vec::new(),
            }),
            errors: ErrorReport::default(),
            phases: vec![],
            server: None,
        }
    }

    #[test]
    fn clean_and_failed() {
        let mut r = report();
        assert!(r.is_clean());
        assert!(r.text().contains("p99 2.00 ms"), "{}", r.text());
        assert!(r.text().ends_with("result     OK\n"));
        r.errors.protocol = 1;
        assert!(!r.is_clean());
        r.errors.protocol = 0;
        if let Some(d) = &mut r.delivery {
            d.lost = 1;
        }
        assert!(r.text().contains("FAILED: 1 lost"));
    }

    #[test]
    fn the_transport_says_tls() {
        let mut r = report();
        assert!(
            r.text()
                .starts_with("galopush bench unicast: 2 tcp terminals (encoding 0)")
        );
        r.tls = true;
        assert!(
            r.text()
                .starts_with("galopush bench unicast: 2 tls tcp terminals (encoding 0)"),
            "{}",
            r.text()
        );
        r.transport = TransportKind::Ws;
        r.encoding = None;
        r.framing = Some(Framing::Plain);
        assert!(
            r.text()
                .starts_with("galopush bench unicast: 2 wss terminals (plain framing)"),
            "{}",
            r.text()
        );
        let value: serde_json::Value = serde_json::from_str(&r.json()).expect("JSON");
        assert_eq!(value["tls"], true);
        assert_eq!(value["transport"], "ws");
    }

    #[test]
    fn json_has_the_numbers() {
        let value: serde_json::Value = serde_json::from_str(&report().json()).expect("JSON");
        assert_eq!(value["scenario"], "unicast");
        assert_eq!(value["delivery"]["delivered"]["per_second"], 200.0);
        assert_eq!(value["delivery"]["latency"]["p99_us"], 2000);
    }

    #[test]
    fn json_reads_back() {
        let back: Report = serde_json::from_str(&report().json()).expect("a report");
        assert_eq!(back.label, "galopush tcp");
        let delivery = back.delivery.expect("its deliveries");
        assert_eq!(delivery.timeline, [(0.0, 0), (0.01, 3), (0.02, 4)]);
        assert_eq!(delivery.latency_cdf[1], (0.5, 1200));
    }

    #[test]
    fn an_mqtt_run_says_so() {
        let mut r = report();
        r.broker = Some("mqtt://127.0.0.1:18830".into());
        r.encoding = None;
        let text = r.text();
        assert!(
            text.starts_with(
                "galopush bench unicast: 2 mqtt (QoS 1, mqtt://127.0.0.1:18830) terminals (MQTT 3.1.1)"
            ),
            "{text}"
        );
        assert!(text.contains("in PUBLISH batches of 2"), "{text}");
    }
}
