//! The one typed configuration of SPEC §9: a TOML file, overridden key by key by
//! `GALOPUSH_<SECTION>__<KEY>` environment variables, with defaults that let
//! `galopush standalone` run with no file at all.
//!
//! Bad configuration stops the program at start with a message naming the key: an unknown key in
//! the file or an unknown `GALOPUSH_` variable, an unparsable address, duration or number.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod reference;

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "GALOPUSH_";

/// Every setting of the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub router: RouterConfig,
    pub api: ApiConfig,
    pub web: WebConfig,
    pub comet: CometConfig,
    pub delivery: DeliveryConfig,
    pub limits: LimitsConfig,
    pub tls: TlsConfig,
    pub cluster: ClusterConfig,
    pub auth: AuthConfig,
    pub bus: BusConfig,
    pub store: StoreConfig,
    pub topics: TopicsConfig,
    pub apns: ApnsConfig,
    pub fcm: FcmConfig,
    pub log: LogConfig,
}

/// The router's listeners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// The public HTTP of SPEC §8, reached by terminals: the dispatcher and `/healthz`.
    pub http_addr: SocketAddr,
    /// [ext] Serve `http_addr` over HTTPS with the certificate of `[tls]` (SPEC §11).
    pub http_tls: bool,
    /// The router's RPC listener that comets join (cluster).
    pub rpc_addr: SocketAddr,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            http_addr: addr("0.0.0.0:5150"),
            http_tls: false,
            rpc_addr: addr("0.0.0.0:5151"),
        }
    }
}

/// [ext] The business API of SPEC §8: `/pub`, `/mpub`, `/v1/…`, `/metrics`, reached by business
/// services and operators.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub addr: SocketAddr,
    /// The bearer token every API request but `/healthz` must carry; empty means none, which
    /// is allowed only on a loopback `addr`.
    pub token: String,
    /// Serve `addr` over HTTPS with the certificate of `[tls]` (SPEC §11).
    pub tls: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            addr: addr("127.0.0.1:5152"),
            token: String::new(),
            tls: false,
        }
    }
}

/// How a secret shows in logs: whether it is set, never its value.
fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { "<set>" }
}

/// Never prints the token.
impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("addr", &self.addr)
            .field("token", &redacted(&self.token))
            .field("tls", &self.tls)
            .finish()
    }
}

/// [ext] The browser pages of SPEC §13 that are off by default. (The operator console on the
/// business API is always there: it is no more reachable than the API itself.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the demo web terminal at `/demo/` on the public listener.
    pub demo: bool,
}

/// [ext] The certificate of the TLS listeners (SPEC §11): the comet's `tls_addr` and
/// `wss_addr`, and the HTTP listeners with `router.http_tls` / `api.tls`. Empty paths: no TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file of the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }
}

/// [ext] How the router–comet link is authenticated (SPEC §11).
#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Presented by a comet when it joins; a router refuses a join without it. Required on a
    /// router whose `router.rpc_addr` is not a loopback address.
    pub secret: String,
    /// PEM CA that signs every router's and comet's link certificate: with `cert` and `key`,
    /// the link runs over TLS with certificates checked both ways.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClusterConfig {
    /// Whether the link runs over mutual TLS.
    pub fn mutual_tls(&self) -> bool {
        !self.ca.as_os_str().is_empty()
    }
}

/// Never prints the secret.
impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("secret", &redacted(&self.secret))
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

/// A comet: its terminal listeners, what it advertises, the routers it joins, its timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CometConfig {
    /// Unique comet name.
    pub id: String,
    pub tcp_addr: SocketAddr,
    pub ws_addr: SocketAddr,
    /// `host:port` the dispatcher hands out for TCP terminals; port 0 means the bound port.
    pub advertise_tcp: String,
    /// `host:port` the dispatcher hands out for Web terminals; port 0 means the bound port.
    pub advertise_ws: String,
    /// [ext] The binary protocol inside TLS, with `[tls]` set (SPEC §11).
    pub tls_addr: SocketAddr,
    /// [ext] WebSocket over TLS (`wss://`), with `[tls]` set.
    pub wss_addr: SocketAddr,
    /// [ext] `host:port` the dispatcher hands out for `tls=1` TCP terminals.
    pub advertise_tls: String,
    /// [ext] `host:port` the dispatcher hands out for `tls=1` Web terminals.
    pub advertise_wss: String,
    /// A cluster comet's `/metrics` and `/healthz` (SPEC §8).
    pub http_addr: SocketAddr,
    /// Routers the comet joins (cluster).
    pub router_rpc: Vec<String>,
    pub register_timeout: Duration,
    pub idle_timeout: Duration,
    /// [ext] How long a write to a terminal may block before the terminal is disconnected.
    pub write_timeout: Duration,
    /// [ext] How long a registered TCP terminal stays quiet before it is kept without a task of
    /// its own; 0s: never.
    pub park_after: Duration,
}

impl Default for CometConfig {
    fn default() -> Self {
        CometConfig {
            id: "comet-1".into(),
            tcp_addr: addr("0.0.0.0:5161"),
            ws_addr: addr("0.0.0.0:5162"),
            advertise_tcp: "127.0.0.1:5161".into(),
            advertise_ws: "127.0.0.1:5162".into(),
            tls_addr: addr("0.0.0.0:5163"),
            wss_addr: addr("0.0.0.0:5164"),
            advertise_tls: "127.0.0.1:5163".into(),
            advertise_wss: "127.0.0.1:5164".into(),
            http_addr: addr("127.0.0.1:5160"),
            router_rpc: vec!["127.0.0.1:5151".into()],
            register_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(660),
            write_timeout: Duration::from_secs(10),
            park_after: Duration::from_secs(5),
        }
    }
}

/// Ack timeouts and offline limits (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub ack_timeout: Duration,
    pub callback_ack_timeout: Duration,
    pub max_offline_callbacks: usize,
    pub max_offline_im: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            ack_timeout: Duration::from_secs(5),
            callback_ack_timeout: Duration::from_secs(60),
            max_offline_callbacks: 100,
            max_offline_im: 50,
        }
    }
}

/// Everything a terminal or an HTTP client can make the server hold (SPEC §10). Going over a
/// bound is refused as SPEC says and counted in `galopush_refused_total{reason="<key>"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest frame or WebSocket message body accepted from a registered terminal, in bytes;
    /// also the largest `/pub` body.
    pub max_body: u32,
    /// [ext] Largest frame or WebSocket message before REGISTER has succeeded.
    pub max_unregistered_frame: u32,
    /// Terminal connections one comet holds at once.
    pub max_connections: usize,
    /// [ext] Terminal connections one comet holds from one source address; 0 = no limit.
    pub connections_per_ip: usize,
    /// [ext] IMs of one connection not yet answered; beyond it the connection is not read.
    pub im_inflight: usize,
    /// [ext] Bytes of down-messages queued for one connection before it is closed as not
    /// reading.
    pub conn_queue_bytes: usize,
    /// [ext] Messages accepted by `/pub` and `/mpub` and not yet retired.
    pub inbox_pending: usize,
    /// [ext] Outbound messages not yet taken by the webhook or nsqd.
    pub outbox_pending: usize,
    /// [ext] Bytes of one `/mpub` request.
    pub max_mpub: usize,
    /// [ext] Requests in progress on one HTTP listener.
    pub http_concurrency: usize,
    /// [ext] How long an HTTP client may take to send a request's headers.
    pub http_header_timeout: Duration,
    /// [ext] How long one HTTP request may take, body included.
    pub http_request_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body: galopush_protocol::DEFAULT_MAX_BODY,
            max_unregistered_frame: 1024,
            max_connections: 1_000_000,
            connections_per_ip: 0,
            im_inflight: 16,
            conn_queue_bytes: 256 * 1024,
            inbox_pending: 100_000,
            outbox_pending: 100_000,
            max_mpub: 16 * 1024 * 1024,
            http_concurrency: 1024,
            http_header_timeout: Duration::from_secs(10),
            http_request_timeout: Duration::from_secs(30),
        }
    }
}

/// How REGISTER is authenticated (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A login record from the business side must match.
    #[default]
    Business,
    /// [ext] Every REGISTER succeeds and creates its login record (demos, tests).
    Open,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
}

/// Which bus carries business messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    #[default]
    Embedded,
    Nsq,
}

/// The business message bus (SPEC §7). Its `Debug` never prints `nsq_auth_secret`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    pub kind: BusKind,
    /// nsqd TCP address to publish to.
    pub nsqd_tcp: String,
    /// nsqlookupd HTTP addresses to discover the inbound topics' producers.
    pub nsqlookupd_http: Vec<String>,
    pub channel: String,
    /// Write bodies to NSQ as base64 JSON (as the original) instead of raw JSON.
    pub base64: bool,
    /// Where the embedded bus POSTs outbound topics; empty = unset (they stay in the store).
    pub webhook_url: String,
    /// [ext] PEM CA to trust for an `https://` webhook instead of the system roots.
    pub webhook_ca: PathBuf,
    /// [ext] NSQ: upgrade every nsqd connection to TLS (IDENTIFY `tls_v1`).
    pub nsq_tls: bool,
    /// [ext] NSQ: PEM CA to trust for nsqd instead of the system roots.
    pub nsq_ca: PathBuf,
    /// [ext] NSQ: the secret sent with AUTH when nsqd requires it.
    pub nsq_auth_secret: String,
    /// [ext] Messages the router may hold un-retired at once (NSQ: the total RDY).
    pub max_in_flight: usize,
    /// [ext] Embedded bus: make each accepted message durable before answering `/pub`.
    /// Off trades the at-least-once promise across a crash for throughput.
    pub durable: bool,
    /// [ext] NSQ: how often nsqd sends a heartbeat on each connection (nsqd accepts 1s up to
    /// its `--max-heartbeat-interval`, 60s by default); two missed ones drop the connection.
    pub heartbeat_interval: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            kind: BusKind::Embedded,
            nsqd_tcp: "127.0.0.1:4150".into(),
            nsqlookupd_http: vec!["127.0.0.1:4161".into()],
            channel: "galopush".into(),
            base64: true,
            webhook_url: String::new(),
            webhook_ca: PathBuf::new(),
            nsq_tls: false,
            nsq_ca: PathBuf::new(),
            nsq_auth_secret: String::new(),
            max_in_flight: 10_000,
            durable: true,
            heartbeat_interval: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusConfig")
            .field("kind", &self.kind)
            .field("nsqd_tcp", &self.nsqd_tcp)
            .field("nsqlookupd_http", &self.nsqlookupd_http)
            .field("channel", &self.channel)
            .field("base64", &self.base64)
            .field("webhook_url", &self.webhook_url)
            .field("webhook_ca", &self.webhook_ca)
            .field("nsq_tls", &self.nsq_tls)
            .field("nsq_ca", &self.nsq_ca)
            .field("nsq_auth_secret", &redacted(&self.nsq_auth_secret))
            .field("max_in_flight", &self.max_in_flight)
            .field("durable", &self.durable)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .finish()
    }
}

/// Which store keeps login records and offline messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Embedded,
    Redis,
    Memory,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// Directory of the embedded store.
    pub path: PathBuf,
    pub redis_url: String,
    /// [ext] Prefix of every Redis key, so several deployments can share one Redis.
    pub redis_prefix: String,
    /// [ext] Bytes of the embedded store's page cache (redb's, which would take up to 1 GiB).
    pub cache_bytes: usize,
}

/// The embedded store's page cache unless configured: holds the B-trees' inner pages and the
/// recently written ones; the login records are also kept in memory apart from it.
pub const DEFAULT_STORE_CACHE_BYTES: usize = 64 << 20;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Embedded,
            path: PathBuf::from("./data"),
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_prefix: "galopush:".into(),
            cache_bytes: DEFAULT_STORE_CACHE_BYTES,
        }
    }
}

/// Topic names of SPEC §7.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    pub user_online_state: String,
    pub push: String,
    pub callback: String,
    pub msg_downward: String,
    pub session_timeout: String,
    pub msg_upward: String,
    /// [ext] Outbound: delivery reports (SPEC §12); empty = none.
    pub delivery_report: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            user_online_state: "userOnlineState".into(),
            push: "push".into(),
            callback: "callback".into(),
            msg_downward: "msgDownward".into(),
            session_timeout: "sessionTimeout".into(),
            msg_upward: "msgUpward".into(),
            delivery_report: String::new(),
        }
    }
}

/// [ext] Apple Push Notification service (SPEC §12): on with `key_file` (token auth) or
/// `cert_file` (certificate auth).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApnsConfig {
    /// Token auth: the .p8 key (PEM, PKCS#8) that signs the ES256 JWT.
    pub key_file: PathBuf,
    /// Token auth: the key's id (the JWT's `kid`).
    pub key_id: String,
    /// Token auth: the team id (the JWT's `iss`).
    pub team_id: String,
    /// Certificate auth: a PEM file holding the certificate and its private key.
    pub cert_file: PathBuf,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// Base URL of the service; empty: Apple's production host, or its development host with
    /// `sandbox`.
    pub endpoint: String,
    pub sandbox: bool,
    /// PEM CAs to trust for the endpoint instead of the system roots.
    pub ca: PathBuf,
    /// How long Apple keeps a notification for a phone that is off (`apns-expiration`).
    pub ttl: Duration,
    /// How long a request answered 429 or 5xx is tried again.
    pub retry_for: Duration,
    /// Notifications waiting for the service; beyond it they are dropped (and counted).
    pub queue: usize,
    /// Send IMs too, not only pushes.
    pub im: bool,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        ApnsConfig {
            key_file: PathBuf::new(),
            key_id: String::new(),
            team_id: String::new(),
            cert_file: PathBuf::new(),
            topic: String::new(),
            endpoint: String::new(),
            sandbox: false,
            ca: PathBuf::new(),
            ttl: Duration::from_secs(24 * 3600),
            retry_for: Duration::from_secs(3600),
            queue: 10_000,
            im: false,
        }
    }
}

impl ApnsConfig {
    pub fn enabled(&self) -> bool {
        !self.key_file.as_os_str().is_empty() || !self.cert_file.as_os_str().is_empty()
    }
}

/// [ext] Firebase Cloud Messaging, HTTP v1 (SPEC §12): on with `service_account`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FcmConfig {
    /// The JSON key file of a Google service account.
    pub service_account: PathBuf,
    /// The Firebase project; empty: the service account's `project_id`.
    pub project_id: String,
    /// Base URL of the service.
    pub endpoint: String,
    /// PEM CAs to trust for the endpoint and the service account's `token_uri` instead of the
    /// system roots.
    pub ca: PathBuf,
    /// How long FCM keeps a message for a phone that is off (`android.ttl`).
    pub ttl: Duration,
    /// How long a request answered 429 or 5xx is tried again.
    pub retry_for: Duration,
    /// Messages waiting for the service; beyond it they are dropped (and counted).
    pub queue: usize,
    /// Send IMs too, not only pushes.
    pub im: bool,
}

impl Default for FcmConfig {
    fn default() -> Self {
        FcmConfig {
            service_account: PathBuf::new(),
            project_id: String::new(),
            endpoint: "https://fcm.googleapis.com".into(),
            ca: PathBuf::new(),
            ttl: Duration::from_secs(24 * 3600),
            retry_for: Duration::from_secs(3600),
            queue: 10_000,
            im: false,
        }
    }
}

impl FcmConfig {
    pub fn enabled(&self) -> bool {
        !self.service_account.as_os_str().is_empty()
    }
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `galopush_server=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    SocketAddr::from_str(s).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// A duration written as a string: `"500ms"`, `"5s"`, `"11m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Duration {
        Duration(std::time::Duration::from_secs(s))
    }

    pub const fn from_millis(ms: u64) -> Duration {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration {s:?} needs a unit: ms, s, m or h (e.g. \"5s\")"))?;
        let (number, unit) = s.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("duration {s:?} does not start with a whole number"))?;
        let ms = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => {
                return Err(format!(
                    "duration {s:?} has unit {unit:?}; use ms, s, m or h"
                ));
            }
        };
        ms.map(Duration::from_millis)
            .ok_or_else(|| format!("duration {s:?} is too long"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why the configuration cannot be used; the message names the key and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{var}: {message}")]
    Env { var: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Loads the file (if any), then applies `GALOPUSH_*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                // Parsing the file on its own first gives errors with the file's line numbers.
                toml::from_str::<Config>(&text).map_err(|e| ConfigError::File {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::File {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        let defaults = defaults_table();
        let mut overrides = Vec::new();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let (section, key) = split_env_key(&var, rest)?;
            let default = defaults
                .get(&section)
                .and_then(|s| s.as_table())
                .and_then(|s| s.get(&key))
                .ok_or_else(|| ConfigError::Env {
                    var: var.clone(),
                    message: format!("there is no setting {section}.{key}"),
                })?;
            let parsed = env_value(default, &value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
            let section_table = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(section_table) = section_table.as_table_mut() else {
                return Err(ConfigError::Env {
                    var,
                    message: format!("the file's {section} is not a section"),
                });
            };
            section_table.insert(key.clone(), parsed);
            overrides.push((var, section, key));
        }
        let config: Config = Config::deserialize(toml::Value::Table(table)).map_err(|e| {
            // Name the variable when the bad value came from the environment.
            let message = e.to_string();
            let culprit = overrides
                .iter()
                .find(|(_, section, key)| message.contains(&format!("{section}.{key}")));
            match culprit {
                Some((var, _, _)) => ConfigError::Env {
                    var: var.clone(),
                    message,
                },
                None => ConfigError::Invalid(message),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Loads from the file and the process environment.
    pub fn from_env(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load(file, std::env::vars())
    }

    /// Checks what types alone cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, why: &str| Err(ConfigError::Invalid(format!("{key}: {why}")));
        for (key, value) in [
            ("comet.advertise_tcp", &self.comet.advertise_tcp),
            ("comet.advertise_ws", &self.comet.advertise_ws),
            ("comet.advertise_tls", &self.comet.advertise_tls),
            ("comet.advertise_wss", &self.comet.advertise_wss),
        ] {
            if host_port(value).is_none() {
                return invalid(key, &format!("{value:?} is not host:port"));
            }
        }
        if self.comet.id.is_empty() {
            return invalid("comet.id", "must not be empty");
        }
        for (key, addr) in [
            ("api.addr", self.api.addr),
            ("comet.http_addr", self.comet.http_addr),
        ] {
            if !addr.ip().is_loopback() && self.api.token.is_empty() {
                return invalid(
                    key,
                    &format!(
                        "{addr} is not a loopback address and api.token is empty: set \
                         api.token (the business API and metrics must not be open to the \
                         network)"
                    ),
                );
            }
        }
        self.limits.validate()?;
        self.validate_tls()?;
        if self.delivery.max_offline_callbacks == 0 || self.delivery.max_offline_im == 0 {
            return invalid("delivery.max_offline_*", "must be at least 1");
        }
        if self.store.cache_bytes < 1 << 20 {
            return invalid("store.cache_bytes", "must be at least 1048576 (1 MiB)");
        }
        if self.bus.max_in_flight == 0 {
            return invalid("bus.max_in_flight", "must be at least 1");
        }
        if self.bus.heartbeat_interval < Duration::from_secs(1) {
            return invalid(
                "bus.heartbeat_interval",
                "must be at least 1s (nsqd refuses less)",
            );
        }
        let report = &self.topics.delivery_report;
        if !(report.is_empty() || galopush_nsq::is_valid_topic_name(report)) {
            return invalid(
                "topics.delivery_report",
                &format!("{report:?} is not a topic name (1-64 of [.a-zA-Z0-9_-])"),
            );
        }
        let url = &self.bus.webhook_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return invalid("bus.webhook_url", "must be an http:// or https:// URL");
        }
        self.validate_phones()?;
        if let Err(e) = tracing_filter_ok(&self.log.level) {
            return invalid("log.level", &e);
        }
        Ok(())
    }
}

impl Config {
    /// The TLS settings go together: a certificate with its key, a listener's TLS with a
    /// certificate, the link's CA with the link's own certificate and key.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let set = |p: &Path| !p.as_os_str().is_empty();
        let invalid = |key: &str, why: &str| Err(ConfigError::Invalid(format!("{key}: {why}")));
        if set(&self.tls.cert) != set(&self.tls.key) {
            return invalid("tls.cert", "tls.cert and tls.key go together");
        }
        for (key, on) in [
            ("router.http_tls", self.router.http_tls),
            ("api.tls", self.api.tls),
        ] {
            if on && !self.tls.enabled() {
                return invalid(key, "needs tls.cert and tls.key");
            }
        }
        let link = [&self.cluster.ca, &self.cluster.cert, &self.cluster.key];
        if link.iter().any(|p| set(p)) && !link.iter().all(|p| set(p)) {
            return invalid(
                "cluster.ca",
                "cluster.ca, cluster.cert and cluster.key go together",
            );
        }
        if set(&self.bus.nsq_ca) && !self.bus.nsq_tls {
            return invalid("bus.nsq_ca", "is used only with bus.nsq_tls = true");
        }
        let webhook = &self.bus.webhook_url;
        if set(&self.bus.webhook_ca) && !webhook.starts_with("https://") {
            return invalid(
                "bus.webhook_ca",
                "is used only with an https:// bus.webhook_url",
            );
        }
        Ok(())
    }
}

impl Config {
    /// The push services of SPEC §12: one way to authenticate to Apple, what each needs with
    /// it, and bounds that can work.
    fn validate_phones(&self) -> Result<(), ConfigError> {
        let set = |p: &Path| !p.as_os_str().is_empty();
        let invalid = |key: &str, why: &str| Err(ConfigError::Invalid(format!("{key}: {why}")));
        let url = |s: &str| s.starts_with("https://") || s.starts_with("http://");
        let apns = &self.apns;
        if set(&apns.key_file) && set(&apns.cert_file) {
            return invalid(
                "apns.key_file",
                "token auth (apns.key_file) and certificate auth (apns.cert_file) exclude each other",
            );
        }
        if set(&apns.key_file) {
            for (key, value) in [
                ("apns.key_id", &apns.key_id),
                ("apns.team_id", &apns.team_id),
            ] {
                if value.is_empty() {
                    return invalid(key, "token auth (apns.key_file) needs it");
                }
            }
        }
        if apns.enabled() && apns.topic.is_empty() {
            return invalid("apns.topic", "APNs needs the app's bundle id");
        }
        if !(apns.endpoint.is_empty() || url(&apns.endpoint)) {
            return invalid("apns.endpoint", "must be an https:// (or http://) URL");
        }
        if apns.sandbox && !apns.endpoint.is_empty() {
            return invalid("apns.sandbox", "is used only without apns.endpoint");
        }
        if !url(&self.fcm.endpoint) {
            return invalid("fcm.endpoint", "must be an https:// (or http://) URL");
        }
        for (key, queue) in [("apns.queue", apns.queue), ("fcm.queue", self.fcm.queue)] {
            if queue == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        for (key, ttl) in [("apns.ttl", apns.ttl), ("fcm.ttl", self.fcm.ttl)] {
            if ttl < Duration::from_secs(1) {
                return invalid(key, "must be at least 1s");
            }
        }
        Ok(())
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |key: &str, why: String| Err(ConfigError::Invalid(format!("limits.{key}: {why}")));
        // A REGISTER frame has a 66-byte body; a WebSocket one is ~150 bytes of JSON, a third
        // more in the compatible framing.
        const REGISTER_ROOM: u32 = 256;
        if self.max_unregistered_frame < REGISTER_ROOM {
            return invalid(
                "max_unregistered_frame",
                format!("must be at least {REGISTER_ROOM} to fit a REGISTER"),
            );
        }
        if self.max_body < self.max_unregistered_frame {
            return invalid(
                "max_body",
                "must not be smaller than limits.max_unregistered_frame".into(),
            );
        }
        for (key, value) in [
            ("max_connections", self.max_connections),
            ("im_inflight", self.im_inflight),
            ("conn_queue_bytes", self.conn_queue_bytes),
            ("inbox_pending", self.inbox_pending),
            ("outbox_pending", self.outbox_pending),
            ("max_mpub", self.max_mpub),
            ("http_concurrency", self.http_concurrency),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1".into());
            }
        }
        for (key, value) in [
            ("http_header_timeout", self.http_header_timeout),
            ("http_request_timeout", self.http_request_timeout),
        ] {
            if value.get().is_zero() {
                return invalid(key, "must be longer than 0s".into());
            }
        }
        Ok(())
    }
}

/// Splits `host:port`, the port a number.
pub fn host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

fn tracing_filter_ok(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("must not be empty".into());
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| format!("{level:?} is not a log filter: {e}"))
}

fn split_env_key(var: &str, rest: &str) -> Result<(String, String), ConfigError> {
    match rest.split_once("__") {
        Some((section, key)) if !section.is_empty() && !key.is_empty() => {
            Ok((section.to_ascii_lowercase(), key.to_ascii_lowercase()))
        }
        _ => Err(ConfigError::Env {
            var: var.to_owned(),
            message: "expected GALOPUSH_<SECTION>__<KEY>, e.g. GALOPUSH_COMET__TCP_ADDR".into(),
        }),
    }
}

fn defaults_table() -> toml::Table {
    toml::Table::try_from(Config::default()).unwrap_or_default()
}

/// Reads an environment value as the type of the setting's default.
fn env_value(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    Ok(match default {
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not a whole number"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(format!("{raw:?} is not true or false")),
        }),
        toml::Value::Array(_) => {
            let trimmed = raw.trim();
            if trimmed.starts_with('[') {
                let doc: toml::Table = toml::from_str(&format!("list = {trimmed}"))
                    .map_err(|e| format!("{raw:?} is not a list: {}", e.message()))?;
                doc.get("list")
                    .cloned()
                    .unwrap_or(toml::Value::Array(Vec::new()))
            } else {
                toml::Value::Array(
                    trimmed
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_owned()))
                        .collect(),
                )
            }
        }
        _ => toml::Value::String(raw.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::load(None, Vec::new()).expect("defaults load");
        assert_eq!(c.router.http_addr.to_string(), "0.0.0.0:5150");
        assert_eq!(c.router.rpc_addr.to_string(), "0.0.0.0:5151");
        assert_eq!(c.comet.id, "comet-1");
        assert_eq!(c.comet.tcp_addr.to_string(), "0.0.0.0:5161");
        assert_eq!(c.comet.ws_addr.to_string(), "0.0.0.0:5162");
        assert_eq!(c.comet.advertise_tcp, "127.0.0.1:5161");
        assert_eq!(c.comet.advertise_ws, "127.0.0.1:5162");
        assert_eq!(c.comet.http_addr.to_string(), "127.0.0.1:5160");
        assert_eq!(c.api.addr.to_string(), "127.0.0.1:5152");
        assert_eq!(c.api.token, "");
        assert!(!c.web.demo, "the demo terminal is off unless asked for");
        assert_eq!(c.comet.router_rpc, vec!["127.0.0.1:5151"]);
        assert_eq!(c.comet.tls_addr.to_string(), "0.0.0.0:5163");
        assert_eq!(c.comet.wss_addr.to_string(), "0.0.0.0:5164");
        assert!(!c.tls.enabled() && !c.router.http_tls && !c.api.tls);
        assert!(c.cluster.secret.is_empty() && !c.cluster.mutual_tls());
        assert!(!c.bus.nsq_tls);
        assert_eq!(c.comet.register_timeout, Duration::from_secs(10));
        assert_eq!(c.comet.idle_timeout, Duration::from_secs(660));
        assert_eq!(c.delivery.ack_timeout, Duration::from_secs(5));
        assert_eq!(c.delivery.callback_ack_timeout, Duration::from_secs(60));
        assert_eq!(c.delivery.max_offline_callbacks, 100);
        assert_eq!(c.delivery.max_offline_im, 50);
        assert_eq!(c.limits.max_body, 1_048_576);
        assert_eq!(c.limits.max_connections, 1_000_000);
        let l = &c.limits;
        assert_eq!(l.max_unregistered_frame, 1024);
        assert_eq!(l.connections_per_ip, 0);
        assert_eq!(l.im_inflight, 16);
        assert_eq!(l.conn_queue_bytes, 262_144);
        assert_eq!(l.inbox_pending, 100_000);
        assert_eq!(l.outbox_pending, 100_000);
        assert_eq!(l.max_mpub, 16_777_216);
        assert_eq!(l.http_concurrency, 1024);
        assert_eq!(l.http_header_timeout, Duration::from_secs(10));
        assert_eq!(l.http_request_timeout, Duration::from_secs(30));
        assert_eq!(c.auth.mode, AuthMode::Business);
        assert_eq!(c.bus.kind, BusKind::Embedded);
        assert_eq!(c.bus.nsqd_tcp, "127.0.0.1:4150");
        assert_eq!(c.bus.nsqlookupd_http, vec!["127.0.0.1:4161"]);
        assert_eq!(c.bus.channel, "galopush");
        assert!(c.bus.base64);
        assert_eq!(c.bus.webhook_url, "");
        assert_eq!(c.store.kind, StoreKind::Embedded);
        assert_eq!(c.store.path, PathBuf::from("./data"));
        assert_eq!(c.store.redis_url, "redis://127.0.0.1:6379/0");
        assert_eq!(c.topics.user_online_state, "userOnlineState");
        assert_eq!(c.topics.msg_downward, "msgDownward");
        assert_eq!(c.topics.session_timeout, "sessionTimeout");
        assert_eq!(c.topics.msg_upward, "msgUpward");
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            "[comet]\nid = \"c7\"\nidle_timeout = \"300s\"\n[auth]\nmode = \"open\"\n",
        )
        .expect("write");
        let c = Config::load(
            Some(&path),
            env(&[
                ("GALOPUSH_COMET__TCP_ADDR", "127.0.0.1:15161"),
                (
                    "GALOPUSH_COMET__ROUTER_RPC",
                    "127.0.0.1:5151, 10.0.0.2:5151",
                ),
                ("GALOPUSH_BUS__NSQLOOKUPD_HTTP", r#"["a:1","b:2"]"#),
                ("GALOPUSH_DELIVERY__MAX_OFFLINE_IM", "7"),
                ("GALOPUSH_BUS__BASE64", "false"),
                ("GALOPUSH_DELIVERY__ACK_TIMEOUT", "250ms"),
                ("PATH", "/bin"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.comet.id, "c7");
        assert_eq!(c.comet.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.auth.mode, AuthMode::Open);
        assert_eq!(c.comet.tcp_addr.to_string(), "127.0.0.1:15161");
        assert_eq!(c.comet.router_rpc, vec!["127.0.0.1:5151", "10.0.0.2:5151"]);
        assert_eq!(c.bus.nsqlookupd_http, vec!["a:1", "b:2"]);
        assert_eq!(c.delivery.max_offline_im, 7);
        assert!(!c.bus.base64);
        assert_eq!(c.delivery.ack_timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_settings_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g.toml");
        std::fs::write(&path, "[comet]\nbogus = 1\n").expect("write");
        let e = Config::load(Some(&path), Vec::new()).expect_err("unknown key");
        assert!(e.to_string().contains("bogus"), "{e}");

        std::fs::write(&path, "[comet]\ntcp_addr = \"nowhere\"\n").expect("write");
        let e = Config::load(Some(&path), Vec::new()).expect_err("bad address");
        assert!(e.to_string().contains("tcp_addr"), "{e}");

        let e = Config::load(None, env(&[("GALOPUSH_COMET__NOPE", "1")])).expect_err("unknown var");
        assert!(e.to_string().contains("GALOPUSH_COMET__NOPE"), "{e}");

        let e = Config::load(None, env(&[("GALOPUSH_NOPE", "1")])).expect_err("no section");
        assert!(e.to_string().contains("GALOPUSH_NOPE"), "{e}");

        let e = Config::load(None, env(&[("GALOPUSH_COMET__TCP_ADDR", "x:y")])).expect_err("addr");
        assert!(e.to_string().contains("GALOPUSH_COMET__TCP_ADDR"), "{e}");

        let e = Config::load(
            None,
            env(&[("GALOPUSH_DELIVERY__ACK_TIMEOUT", "5 parsecs")]),
        )
        .expect_err("duration");
        assert!(
            e.to_string().contains("GALOPUSH_DELIVERY__ACK_TIMEOUT"),
            "{e}"
        );

        let e = Config::load(None, env(&[("GALOPUSH_LIMITS__MAX_BODY", "big")])).expect_err("int");
        assert!(e.to_string().contains("GALOPUSH_LIMITS__MAX_BODY"), "{e}");

        let e = Config::load(None, env(&[("GALOPUSH_AUTH__MODE", "closed")])).expect_err("enum");
        assert!(e.to_string().contains("GALOPUSH_AUTH__MODE"), "{e}");

        let e = Config::load(None, env(&[("GALOPUSH_WEB__DEMO", "yes")])).expect_err("bool");
        assert!(e.to_string().contains("GALOPUSH_WEB__DEMO"), "{e}");
        std::fs::write(&path, "[web]\ndemo = \"on\"\n").expect("write");
        let e = Config::load(Some(&path), Vec::new()).expect_err("a string is no bool");
        assert!(e.to_string().contains("demo"), "{e}");
    }

    #[test]
    fn an_open_api_needs_a_token() {
        let e = Config::load(None, env(&[("GALOPUSH_API__ADDR", "0.0.0.0:5152")]))
            .expect_err("no token");
        assert!(
            e.to_string().contains("api.addr") && e.to_string().contains("api.token"),
            "{e}"
        );
        let c = Config::load(
            None,
            env(&[
                ("GALOPUSH_API__ADDR", "0.0.0.0:5152"),
                ("GALOPUSH_API__TOKEN", "s3cret"),
            ]),
        )
        .expect("a token makes it fine");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the token is not logged"
        );
        Config::load(None, env(&[("GALOPUSH_API__ADDR", "[::1]:5152")])).expect("loopback v6");
        let e = Config::load(None, env(&[("GALOPUSH_COMET__HTTP_ADDR", "10.1.2.3:5160")]))
            .expect_err("a comet's metrics off loopback need the token too");
        assert!(e.to_string().contains("comet.http_addr"), "{e}");
    }

    #[test]
    fn tls_settings_go_together_and_secrets_stay_out_of_logs() {
        for (pairs, key) in [
            (&[("GALOPUSH_TLS__CERT", "c.pem")][..], "tls.cert"),
            (&[("GALOPUSH_API__TLS", "true")][..], "api.tls"),
            (
                &[("GALOPUSH_ROUTER__HTTP_TLS", "true")][..],
                "router.http_tls",
            ),
            (&[("GALOPUSH_CLUSTER__CA", "ca.pem")][..], "cluster.ca"),
            (&[("GALOPUSH_BUS__NSQ_CA", "ca.pem")][..], "bus.nsq_ca"),
            (
                &[("GALOPUSH_BUS__WEBHOOK_CA", "ca.pem")][..],
                "bus.webhook_ca",
            ),
        ] {
            let e = Config::load(None, env(pairs)).expect_err(key);
            assert!(e.to_string().contains(key), "{pairs:?}: {e}");
        }
        let c = Config::load(
            None,
            env(&[
                ("GALOPUSH_TLS__CERT", "c.pem"),
                ("GALOPUSH_TLS__KEY", "k.pem"),
                ("GALOPUSH_API__TLS", "true"),
                ("GALOPUSH_CLUSTER__SECRET", "link-s3cret"),
                ("GALOPUSH_BUS__NSQ_AUTH_SECRET", "nsq-s3cret"),
            ]),
        )
        .expect("consistent");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn limits_that_cannot_work_are_refused() {
        for (var, value, key) in [
            ("GALOPUSH_LIMITS__IM_INFLIGHT", "0", "limits.im_inflight"),
            (
                "GALOPUSH_LIMITS__INBOX_PENDING",
                "0",
                "limits.inbox_pending",
            ),
            (
                "GALOPUSH_LIMITS__HTTP_CONCURRENCY",
                "0",
                "limits.http_concurrency",
            ),
            (
                "GALOPUSH_LIMITS__HTTP_HEADER_TIMEOUT",
                "0s",
                "limits.http_header_timeout",
            ),
            (
                "GALOPUSH_LIMITS__MAX_UNREGISTERED_FRAME",
                "60",
                "limits.max_unregistered_frame",
            ),
            ("GALOPUSH_LIMITS__MAX_BODY", "512", "limits.max_body"),
            ("GALOPUSH_STORE__CACHE_BYTES", "4096", "store.cache_bytes"),
            (
                "GALOPUSH_LIMITS__CONN_QUEUE_BYTES",
                "-1",
                "GALOPUSH_LIMITS__CONN_QUEUE_BYTES",
            ),
        ] {
            let e = Config::load(None, env(&[(var, value)])).expect_err(var);
            assert!(e.to_string().contains(key), "{var}={value}: {e}");
        }
    }

    #[test]
    fn the_deploy_examples_load() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        for file in [
            "local/router.toml",
            "local/comet-1.toml",
            "local/comet-2.toml",
            "multi-host/router.toml",
            "multi-host/comet.toml",
            "tls/router.toml",
            "tls/comet-1.toml",
            "tls/comet-2.toml",
        ] {
            let path = deploy.join(file);
            let c = Config::load(Some(&path), env(&[("GALOPUSH_API__TOKEN", "t")]))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            if file.starts_with("multi-host") {
                let e = Config::load(Some(&path), Vec::new()).expect_err(file);
                assert!(e.to_string().contains("api.token"), "{file}: {e}");
            } else {
                Config::load(Some(&path), Vec::new()).expect("loopback needs no token");
            }
            assert!(c.api.addr.port() == 5152 || c.comet.http_addr.port() != 0);
        }
    }

    #[test]
    fn a_delivery_report_topic_must_be_a_topic_name() {
        let c = Config::load(
            None,
            env(&[("GALOPUSH_TOPICS__DELIVERY_REPORT", "deliveryReport")]),
        )
        .expect("a topic name");
        assert_eq!(c.topics.delivery_report, "deliveryReport");
        assert_eq!(
            Config::load(None, Vec::new())
                .expect("defaults")
                .topics
                .delivery_report,
            ""
        );
        let e = Config::load(
            None,
            env(&[("GALOPUSH_TOPICS__DELIVERY_REPORT", "no spaces")]),
        )
        .expect_err("not a topic name");
        assert!(e.to_string().contains("topics.delivery_report"), "{e}");
    }

    #[test]
    fn push_services_are_off_by_default_and_refused_when_they_cannot_work() {
        let c = Config::load(None, Vec::new()).expect("defaults");
        assert!(!c.apns.enabled() && !c.fcm.enabled());
        assert_eq!(c.apns.ttl, Duration::from_secs(86_400));
        assert_eq!(c.apns.retry_for, Duration::from_secs(3600));
        assert_eq!((c.apns.queue, c.fcm.queue), (10_000, 10_000));
        assert_eq!(c.fcm.endpoint, "https://fcm.googleapis.com");
        assert_eq!(c.fcm.ttl, Duration::from_secs(86_400));
        let token = [
            ("GALOPUSH_APNS__KEY_FILE", "AuthKey.p8"),
            ("GALOPUSH_APNS__KEY_ID", "K"),
            ("GALOPUSH_APNS__TEAM_ID", "T"),
            ("GALOPUSH_APNS__TOPIC", "com.example.app"),
        ];
        let c = Config::load(None, env(&token)).expect("token auth");
        assert!(c.apns.enabled());
        for (extra, key) in [
            (
                &[("GALOPUSH_APNS__CERT_FILE", "c.pem")][..],
                "apns.key_file",
            ),
            (&[("GALOPUSH_APNS__KEY_ID", "")][..], "apns.key_id"),
            (&[("GALOPUSH_APNS__TOPIC", "")][..], "apns.topic"),
            (&[("GALOPUSH_APNS__QUEUE", "0")][..], "apns.queue"),
            (&[("GALOPUSH_APNS__ENDPOINT", "apple")][..], "apns.endpoint"),
            (
                &[
                    ("GALOPUSH_APNS__ENDPOINT", "https://proxy"),
                    ("GALOPUSH_APNS__SANDBOX", "true"),
                ][..],
                "apns.sandbox",
            ),
            (&[("GALOPUSH_FCM__QUEUE", "0")][..], "fcm.queue"),
            (&[("GALOPUSH_FCM__TTL", "0s")][..], "fcm.ttl"),
            (&[("GALOPUSH_FCM__ENDPOINT", "")][..], "fcm.endpoint"),
        ] {
            let mut pairs = token.to_vec();
            pairs.extend_from_slice(extra);
            let e = Config::load(None, env(&pairs)).expect_err(key);
            assert!(e.to_string().contains(key), "{extra:?}: {e}");
        }
        let c = Config::load(
            None,
            env(&[
                ("GALOPUSH_APNS__CERT_FILE", "push.pem"),
                ("GALOPUSH_APNS__TOPIC", "com.example.app"),
                ("GALOPUSH_APNS__SANDBOX", "true"),
                ("GALOPUSH_FCM__SERVICE_ACCOUNT", "sa.json"),
            ]),
        )
        .expect("certificate auth, sandbox, FCM");
        assert!(c.apns.enabled() && c.fcm.enabled());
    }

    #[test]
    fn durations_parse() {
        assert_eq!("5s".parse::<Duration>(), Ok(Duration::from_secs(5)));
        assert_eq!("660s".parse::<Duration>(), Ok(Duration::from_secs(660)));
        assert_eq!("150ms".parse::<Duration>(), Ok(Duration::from_millis(150)));
        assert_eq!("2m".parse::<Duration>(), Ok(Duration::from_secs(120)));
        assert_eq!("1h".parse::<Duration>(), Ok(Duration::from_secs(3600)));
        assert!("5".parse::<Duration>().is_err());
        assert!("s".parse::<Duration>().is_err());
        assert!("5d".parse::<Duration>().is_err());
    }
}
