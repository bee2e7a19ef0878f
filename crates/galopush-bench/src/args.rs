//! The command line of `galopush bench`: which server to drive, how many terminals, which
//! scenario and how hard. The same struct is the library's input, so scripts and tests set up a
//! run exactly as a person would type it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

/// The largest `--body-size`: a body must fit in one `/mpub` request of at most 4 MiB.
pub const MAX_BODY_SIZE: u64 = 1024 * 1024;

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Connect and register the terminals, hold them for --hold, report (memory per connection).
    Idle,
    /// --messages messages with one receiver each, message `seq` to terminal `seq % terminals`.
    Unicast,
    /// --messages messages whose receivers list every terminal.
    Fanout,
    /// Connect and register as fast as the server accepts, --concurrency at a time.
    Storm,
    /// Drive nothing: draw the runs saved with --json (the RUN.json arguments) side by side
    /// into --plot FILE.svg, one row per scenario.
    Plot,
}

/// How the terminals connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// The binary protocol (docs/protocol.md), as Android terminals.
    Tcp,
    /// WebSocket (docs/protocol.md), as Web terminals.
    Ws,
}

/// The WebSocket framing of Web terminals (docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// base64 of the ring-xor of the JSON, as the original.
    Compatible,
    /// The JSON itself.
    Plain,
}

/// Which kind of down-message the run publishes (docs/business.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// Topic `push`, delivered as PUSH.
    Push,
    /// Topic `callback`, delivered as CALLBACK.
    Callback,
    /// Topic `msgDownward`, delivered as IM.
    Im,
}

impl MessageKind {
    /// The default topic of this kind (docs/business.md).
    pub fn default_topic(self) -> &'static str {
        match self {
            MessageKind::Push => "push",
            MessageKind::Callback => "callback",
            MessageKind::Im => "msgDownward",
        }
    }
}

/// `galopush bench`: drives a galopush-protocol server through its public surfaces only
/// (dispatcher, comet listeners, nsqd-style `/pub` and `/mpub`) and reports connection rates,
/// delivery throughput, publish-to-ack latency, losses and the server's memory.
#[derive(Debug, Clone, Parser)]
#[command(name = "galopush bench")]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// With `plot`: the runs to draw, each the `--json` report of a run.
    #[arg(value_name = "RUN.json")]
    pub runs: Vec<PathBuf>,
    /// Run against an MQTT 3.1.1 broker instead of a galopush server: mqtt://host:port.
    /// Each terminal is a client (named as its user id) subscribed at QoS 1 to the topic of its
    /// user id, and for fanout also to one shared topic; --publishers connections publish at
    /// QoS 1, --batch PUBLISHes in one write, the batch accepted when every PUBACK is in; a
    /// delivery counts when its terminal has it and acks it. The dispatcher, the API, logins,
    /// TLS and the galopush transports are not used.
    #[arg(long, value_name = "mqtt://HOST:PORT")]
    pub target: Option<String>,

    /// The dispatcher, e.g. http://127.0.0.1:5150/v1/gComet.addr (or https://…): every
    /// terminal asks it for its comet. A base URL without a path gets /v1/gComet.addr added.
    #[arg(long)]
    pub dispatch_url: Option<String>,
    /// The comet's binary TCP listener `host:port` (with --tls, its TLS listener), instead of
    /// asking the dispatcher.
    #[arg(long)]
    pub comet_tcp: Option<String>,
    /// The comet's WebSocket listener `host:port` (with --tls, its WSS listener), instead of
    /// asking the dispatcher.
    #[arg(long)]
    pub comet_ws: Option<String>,
    /// Terminals connect over TLS: TCP terminals with the binary protocol inside TLS, ws
    /// terminals over WSS. The dispatcher is asked with tls=1 for the comet's TLS listeners;
    /// --comet-tcp / --comet-ws name them. Every terminal makes a full handshake (no session
    /// resumption), as distinct devices do, so storm measures TLS handshakes and registrations
    /// per second.
    #[arg(long)]
    pub tls: bool,
    /// A PEM file of CA certificates to trust instead of the system's roots: for the comet's
    /// TLS listeners and for https:// --dispatch-url and --api-url.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// HTTP base with nsqd's `/pub` and `/mpub` semantics: galopush's business API
    /// (`api.addr`, e.g. http://127.0.0.1:5152, or https://…) or nsqd itself. Logins and
    /// messages are published there.
    #[arg(long, alias = "pub-url")]
    pub api_url: Option<String>,
    /// The business API's bearer token (`api.token`), sent with every publish.
    #[arg(long, env = "GALOPUSH_API__TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Do not publish `userOnlineState` logins first (the server must run with
    /// auth.mode = "open").
    #[arg(long)]
    pub no_login: bool,

    /// How many terminals.
    #[arg(long, default_value_t = 1000)]
    pub terminals: usize,
    /// Binary TCP terminals (Android) or WebSocket terminals (Web).
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    pub transport: TransportKind,
    /// Body encoding of TCP terminals: 0 none, 1 bit-not, 2 pair-swap, 3 ring-xor.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub encoding: u8,
    /// Framing of WebSocket terminals.
    #[arg(long, value_enum, default_value_t = Framing::Compatible)]
    pub framing: Framing,
    /// New connections per second (0: as fast as --concurrency allows). Storm ignores it.
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Connects and registrations in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Connections per source address when the comet is on 127.0.0.0/8: terminals bind to
    /// consecutive addresses (from a random 127.x.y.1 each run), so that more than ~28k
    /// connections to one port work and binds stay cheap.
    #[arg(long, default_value_t = 1000)]
    pub per_source_ip: usize,
    /// How long idle holds the terminals before reporting (e.g. 30s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,

    /// Messages to publish (unicast and fanout; a fanout message reaches every terminal).
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Messages per `/mpub` request (fanout batches are also kept under 4 MiB).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Messages per second to publish at (0: as fast as the server accepts them). With a rate,
    /// a batch sent behind schedule carries the time it was due as its send time, so a
    /// publisher held up by the server shows up as latency instead of hiding it; a batch on
    /// schedule carries the time it left (the timer wakes up to a millisecond late).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// `/mpub` requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Bytes of each message's body: the sequence number and send time it always carries are
    /// padded up to this size (smaller values leave them as they are, about 30 bytes).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=MAX_BODY_SIZE))]
    pub body_size: u64,
    /// The kind of down-message to publish.
    #[arg(long, value_enum, default_value_t = MessageKind::Push)]
    pub kind: MessageKind,
    /// Topic to publish messages on (default: that of --kind: push, callback, msgDownward).
    #[arg(long)]
    pub topic: Option<String>,
    /// Topic of the logins.
    #[arg(long, default_value = "userOnlineState")]
    pub login_topic: String,
    /// When every message is published, how long to go on waiting for the deliveries still
    /// expected while none arrives; what has not arrived then counts as lost.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// For soaks: every DURATION while messages are delivered (unicast and fanout), sample the
    /// deliveries per second and their latency in that interval, the server's RSS and open
    /// files (with --server-pid) and the bench's own RSS; printed to stderr as they are taken
    /// and kept in the report.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub sample: Option<Duration>,
    /// Bound on one connect and on one REGISTER's answer; also how long the logins may take to
    /// be in force.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub register_timeout: Duration,

    /// Prefix of the terminals' user ids (default: `b` and 6 random hex digits and `-`, so runs
    /// against the same server never meet each other's records).
    #[arg(long)]
    pub uid_prefix: Option<String>,
    /// The server's process id: its RSS (VmRSS) and CPU time are read from /proc before and
    /// after connecting. Against a cluster, give the router's and every comet's (repeated, or
    /// separated by commas): their figures are added up.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Print the report as JSON instead of text (with what `--plot` draws, so that
    /// `galopush bench plot` can draw it later beside other runs).
    #[arg(long)]
    pub json: bool,
    /// Draw the run's acked deliveries per second over time and its latency distribution into
    /// this SVG file (with `plot`: the saved runs).
    #[arg(long, short = 'o', value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// The run's name in the report and in pictures (default: the target and transport, e.g.
    /// "galopush tcp", "mqtt").
    #[arg(long)]
    pub label: Option<String>,
    /// Worker threads of the bench's runtime (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Reads `250ms`, `5s`, `2m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 5s or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        other => return Err(format!("unknown duration unit {other:?} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn defaults_parse() {
        let args = BenchArgs::parse_from(["bench", "unicast", "--terminals", "20"]);
        assert_eq!(args.scenario, Scenario::Unicast);
        assert_eq!(args.terminals, 20);
        assert_eq!(args.transport, TransportKind::Tcp);
        assert!(!args.tls);
        assert_eq!(args.ca, None);
        assert_eq!(args.hold, Duration::from_secs(5));
        assert_eq!(args.kind.default_topic(), "push");
    }

    #[test]
    fn tls_parses() {
        let args = BenchArgs::parse_from([
            "bench",
            "storm",
            "--tls",
            "--ca",
            "/etc/galopush/ca.pem",
            "--comet-tcp",
            "127.0.0.1:5163",
        ]);
        assert!(args.tls);
        assert_eq!(args.ca, Some(PathBuf::from("/etc/galopush/ca.pem")));
    }

    #[test]
    fn mqtt_and_plot_parse() {
        let args = BenchArgs::parse_from([
            "bench",
            "fanout",
            "--target",
            "mqtt://127.0.0.1:18830",
            "--plot",
            "run.svg",
            "--label",
            "mosquitto",
        ]);
        assert_eq!(args.target.as_deref(), Some("mqtt://127.0.0.1:18830"));
        assert_eq!(args.plot, Some(PathBuf::from("run.svg")));
        assert_eq!(args.label.as_deref(), Some("mosquitto"));
        let args = BenchArgs::parse_from(["bench", "plot", "a.json", "b.json", "-o", "peers.svg"]);
        assert_eq!(args.scenario, Scenario::Plot);
        assert_eq!(
            args.runs,
            [PathBuf::from("a.json"), PathBuf::from("b.json")]
        );
        assert_eq!(args.plot, Some(PathBuf::from("peers.svg")));
    }

    #[test]
    fn a_cluster_has_several_server_pids() {
        let args = BenchArgs::parse_from([
            "bench",
            "idle",
            "--server-pid",
            "10,11",
            "--server-pid",
            "12",
        ]);
        assert_eq!(args.server_pid, [10, 11, 12]);
    }
}
