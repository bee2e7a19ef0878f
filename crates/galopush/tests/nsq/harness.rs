//! Test harness: a fake nsqd and nsqlookupd (protocol-level, from `galopush-nsq`) and the real
//! `galopush` binary started as `standalone` with `bus.kind = "nsq"` on fresh ports and its own
//! data directory. The business side publishes into the fake nsqd; terminals use the client
//! SDK; the fake's counters show what galopush FINished, REQueued and published.

use std::sync::Arc;
use std::time::Duration;

use galopush_client::{Terminal, Transport};
use galopush_nsq::fake::{ChannelStats, FakeLookupd, FakeNsqd, FakeNsqdOptions};
use galopush_protocol::message::Down;
use galopush_protocol::{Encoding, TermType};

pub use crate::common::process::env_name;
use crate::common::process::{API_TOKEN, Process, api_client};
pub use crate::common::terminal::{SOON, next, next_acked};

/// The channel galopush consumes on (the default `bus.channel`).
pub const CHANNEL: &str = "galopush";

pub const TCP: Transport = Transport::Tcp {
    encoding: Encoding::None,
};

/// The inbound topics of SPEC §7 (default names).
pub const INBOUND: [&str; 5] = [
    "userOnlineState",
    "push",
    "callback",
    "msgDownward",
    "sessionTimeout",
];

/// A fake NSQ deployment: one nsqd, listed by one nsqlookupd for every inbound topic.
pub struct Nsq {
    pub nsqd: FakeNsqd,
    pub lookupd: FakeLookupd,
}

impl Nsq {
    pub async fn start() -> Nsq {
        Nsq::start_with(FakeNsqdOptions::default()).await
    }

    /// As [`Nsq::start`], with an nsqd started with `options` (TLS, AUTH).
    pub async fn start_with(options: FakeNsqdOptions) -> Nsq {
        let nsqd = FakeNsqd::start_with(options).await.expect("fake nsqd");
        let lookupd = FakeLookupd::start().await.expect("fake nsqlookupd");
        for topic in INBOUND {
            lookupd.register(topic, nsqd.addr());
        }
        Nsq { nsqd, lookupd }
    }

    /// Publishes a business message into nsqd as a business service would.
    pub fn publish(&self, topic: &str, body: impl Into<bytes::Bytes>) {
        self.nsqd.publish(topic, body.into());
    }

    /// The counters of galopush's channel on `topic`.
    pub fn stats(&self, topic: &str) -> ChannelStats {
        self.nsqd.stats(topic, CHANNEL)
    }

    /// Waits until the channel's counters satisfy `ok`; `what` names the expectation.
    pub async fn wait(&self, topic: &str, what: &str, ok: impl Fn(&ChannelStats) -> bool) {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let stats = self.stats(topic);
            if ok(&stats) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{topic}: expected {what}, got {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until galopush has FINished `n` messages of `topic`.
    pub async fn wait_finished(&self, topic: &str, n: u64) {
        self.wait(topic, &format!("{n} finished"), |s| s.finished >= n)
            .await;
    }

    /// Publishes a login record and waits until galopush has made it durable (FIN).
    pub async fn login(&self, uid: &str, term: TermType, code: &str) {
        let before = self.stats("userOnlineState").finished;
        self.publish(
            "userOnlineState",
            serde_json::json!({
                "uid": uid, "termtype": term.bit(), "code": code,
                "deviceToken": "", "online": true
            })
            .to_string(),
        );
        self.wait_finished("userOnlineState", before + 1).await;
    }

    /// A `push`/`callback`/`msgDownward` body for one receiver.
    pub fn down(uid: &str, mask: u8, body: &str) -> String {
        serde_json::json!({"receivers": [{"uid": uid, "termtype": mask}], "flag": 0, "body": body})
            .to_string()
    }
}

/// A running `galopush standalone` on the NSQ bus.
pub struct Gateway {
    process: Process,
    /// The business API.
    pub api: String,
    pub tcp: String,
    data: Arc<tempfile::TempDir>,
    env: Vec<(String, String)>,
    client: reqwest::Client,
}

impl Gateway {
    /// Starts a gateway consuming from `nsq` (through its nsqlookupd) and publishing to its
    /// nsqd, with `settings` on top (`("bus.base64", "false")`).
    pub async fn start(nsq: &Nsq, settings: &[(&str, &str)]) -> Gateway {
        let data = Arc::new(tempfile::tempdir().expect("temp dir"));
        let nsqd = nsq.nsqd.tcp_address();
        let lookupd = nsq.lookupd.http_address();
        let mut env: Vec<(String, String)> = vec![
            ("router.http_addr", "127.0.0.1:0"),
            ("api.addr", "127.0.0.1:0"),
            ("api.token", API_TOKEN),
            ("comet.tcp_addr", "127.0.0.1:0"),
            ("comet.ws_addr", "127.0.0.1:0"),
            ("comet.advertise_tcp", "127.0.0.1:0"),
            ("comet.advertise_ws", "127.0.0.1:0"),
            ("log.level", "galopush_server=debug,galopush_nsq=debug,info"),
            ("bus.kind", "nsq"),
            ("bus.nsqd_tcp", &nsqd),
            ("bus.nsqlookupd_http", &lookupd),
        ]
        .into_iter()
        .chain(settings.iter().copied())
        .map(|(k, v)| (env_name(k), v.to_owned()))
        .collect();
        env.push((
            env_name("store.path"),
            data.path().join("store").display().to_string(),
        ));
        Gateway::spawn(data, env).await
    }

    async fn spawn(data: Arc<tempfile::TempDir>, env: Vec<(String, String)>) -> Gateway {
        let process = Process::start("standalone", data.path(), &env).await;
        Gateway {
            api: format!("http://{}", process.addr("api")),
            tcp: process.addr("tcp"),
            process,
            data,
            env,
            client: api_client(),
        }
    }

    /// Kills the process with SIGKILL and starts it again on the same data directory.
    pub async fn crash_and_restart(self) -> Gateway {
        let (data, env) = (self.data, self.env);
        self.process.kill().await;
        Gateway::spawn(data, env).await
    }

    /// Sends SIGTERM (what Ctrl-C and service managers send) without waiting; returns the
    /// process, to wait for its exit.
    pub fn stop(self) -> Process {
        self.process.signal("TERM");
        self.process
    }

    /// `POST {path}?topic=` (`/pub` or `/mpub`); returns the status and body.
    pub async fn post(&self, path: &str, topic: &str, body: impl Into<String>) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}{path}", self.api))
            .query(&[("topic", topic)])
            .body(body.into())
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// The value of one metric line, e.g.
    /// `galopush_bus_messages_total{topic="push",event="malformed"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        crate::common::process::metric(&self.client, &self.api, series).await
    }

    /// The bus counter of `topic` for `event` (received, retired, requeued, malformed).
    pub async fn bus_metric(&self, topic: &str, event: &str) -> f64 {
        self.metric(&format!(
            "galopush_bus_messages_total{{topic=\"{topic}\",event=\"{event}\"}}"
        ))
        .await
    }

    /// Connects a TCP terminal and registers it with `token`; the REGRESP must be 0.
    pub async fn register(&self, uid: &str, token: &str, term: TermType) -> Terminal {
        let mut t = Terminal::connect(&self.tcp, TCP).await.expect("connect");
        let code = tokio::time::timeout(SOON, t.register(uid, token, term))
            .await
            .expect("REGRESP in time")
            .expect("register");
        assert_eq!(code, 0, "REGRESP for {uid}");
        t
    }

    /// Logs a terminal in through NSQ, then connects and registers it.
    pub async fn terminal(&self, nsq: &Nsq, uid: &str, term: TermType) -> Terminal {
        let code = format!("code-{uid}-{}", term.bit());
        nsq.login(uid, term, &code).await;
        self.register(uid, &code, term).await
    }
}

/// The message bytes of a PUSH or CALLBACK.
pub fn body(down: &Down) -> bytes::Bytes {
    match down {
        Down::Push { msg, .. } | Down::Callback { msg } => msg.clone(),
        other => panic!("expected PUSH or CALLBACK, got {other:?}"),
    }
}
