//! Test harness: starts the real `galopush` binary as `standalone` on fresh ports and its own
//! data directory, and drives it like a user would — HTTP for the business side, the client
//! SDK for terminals, `/metrics` to see what happened.
// Shared by the standalone and the adversarial test binaries, each using its own part of it.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use galopush_client::{Terminal, Transport};
use galopush_protocol::message::Down;
use galopush_protocol::web::WebFraming;
use galopush_protocol::{Encoding, TermType};
use tokio::sync::Mutex;

pub use crate::common::process::env_name;
use crate::common::process::{API_TOKEN, Process, api_client};
pub use crate::common::terminal::{SOON, closed, next, next_acked, nothing_for};

pub const TCP: Transport = Transport::Tcp {
    encoding: Encoding::None,
};
pub const WEB: Transport = Transport::Web {
    framing: WebFraming::Compatible,
};

/// A running `galopush standalone`.
pub struct Gateway {
    process: Process,
    /// The public listener (dispatcher, health).
    pub http: String,
    /// The business API.
    pub api: String,
    pub tcp: String,
    pub ws: String,
    data: Arc<tempfile::TempDir>,
    env: Vec<(String, String)>,
    client: reqwest::Client,
}

impl Gateway {
    /// Starts a gateway with default settings plus `settings` (`("comet.idle_timeout", "2s")`).
    pub async fn start(settings: &[(&str, &str)]) -> Gateway {
        let data = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut env: Vec<(String, String)> = vec![
            ("router.http_addr", "127.0.0.1:0"),
            ("api.addr", "127.0.0.1:0"),
            ("api.token", API_TOKEN),
            ("comet.tcp_addr", "127.0.0.1:0"),
            ("comet.ws_addr", "127.0.0.1:0"),
            ("comet.advertise_tcp", "127.0.0.1:0"),
            ("comet.advertise_ws", "127.0.0.1:0"),
            ("log.level", "galopush_server=debug,info"),
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
            http: format!("http://{}", process.addr("http")),
            api: format!("http://{}", process.addr("api")),
            tcp: process.addr("tcp"),
            ws: process.addr("ws"),
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

    /// Stops the process the way an operator does (SIGTERM, what Ctrl-C and service managers
    /// send), waits for it to exit by itself, and starts it again on the same data directory.
    pub async fn stop_and_restart(self) -> Gateway {
        let (data, env) = (self.data, self.env);
        self.process.stop().await;
        Gateway::spawn(data, env).await
    }

    /// The process id of the gateway.
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the gateway.
    pub fn signal(&self, name: &str) {
        self.process.signal(name);
    }

    /// Whether the process is still running (not exited, not a zombie).
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/status", self.process.pid))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("State:")
                        .map(|st| !st.trim().starts_with('Z'))
                })
            })
            .unwrap_or(false)
    }

    /// Changes a setting for the next restart.
    pub fn set(&mut self, key: &str, value: &str) {
        let name = env_name(key);
        self.env.retain(|(k, _)| *k != name);
        self.env.push((name, value.to_owned()));
    }

    /// An HTTP client carrying the API token.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `GET /v1/comets`.
    pub async fn comets(&self) -> serde_json::Value {
        let text = self
            .client
            .get(format!("{}/v1/comets", self.api))
            .send()
            .await
            .expect("GET /v1/comets")
            .text()
            .await
            .expect("comets text");
        serde_json::from_str(&text).expect("comets JSON")
    }

    /// `POST /pub?topic=`; returns the status and body.
    pub async fn publish(&self, topic: &str, body: impl Into<String>) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}/pub", self.api))
            .query(&[("topic", topic)])
            .body(body.into())
            .send()
            .await
            .expect("POST /pub");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// `POST /pub` that must be accepted.
    pub async fn publish_ok(&self, topic: &str, body: impl Into<String>) {
        let (status, text) = self.publish(topic, body).await;
        assert_eq!(status, 200, "/pub?topic={topic} answered {status}: {text}");
    }

    /// The value of one metric line, e.g. `galopush_kicks_total{reason="logged_out"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        crate::common::process::metric(&self.client, &self.api, series).await
    }

    /// Waits until a metric reaches `at_least`.
    pub async fn wait_metric(&self, series: &str, at_least: f64) {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let v = self.metric(series).await;
            if v >= at_least {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stayed at {v}, expected at least {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a metric the caller saw above `value` falls to it. The series must be there:
    /// a missing series is not a value (it would read 0 and pass at once).
    pub async fn wait_metric_falls_to(&self, series: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let v =
                crate::common::process::metric_if_present(&self.client, &self.api, series).await;
            if v.is_some_and(|v| v <= value) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stayed at {v:?}, expected it to fall to {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The entry of `uid`'s terminal of `term` in `GET /v1/users/<uid>` (SPEC §13), if the
    /// router knows it (a login record or a live session).
    pub async fn user_terminal(&self, uid: &str, term: TermType) -> Option<serde_json::Value> {
        let text = self
            .client
            .get(format!("{}/v1/users/{uid}", self.api))
            .send()
            .await
            .expect("GET /v1/users")
            .text()
            .await
            .expect("text");
        let user: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        user["terminals"]
            .as_array()
            .expect("terminals")
            .iter()
            .find(|t| t["termtype"] == term.bit())
            .cloned()
    }

    /// Whether the router holds a live session for `uid`'s terminal of `term`.
    pub async fn live(&self, uid: &str, term: TermType) -> bool {
        self.user_terminal(uid, term)
            .await
            .is_some_and(|t| !t["live"].is_null())
    }

    /// Waits until the router holds (`live`) or no longer holds a session for `uid`'s terminal
    /// of `term`.
    pub async fn wait_live(&self, uid: &str, term: TermType, live: bool) {
        let deadline = tokio::time::Instant::now() + SOON;
        while self.live(uid, term).await != live {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{uid}'s {term:?} terminal stayed {}",
                if live { "away" } else { "live" }
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes `uid`'s terminal of `term` and waits until the router has seen it go (so what is
    /// sent to it from now on is stored, and a new REGISTER is not a repeated login). It must
    /// have been live.
    pub async fn close(&self, t: Terminal, uid: &str, term: TermType) {
        self.wait_live(uid, term, true).await;
        t.close().await.expect("close");
        self.wait_live(uid, term, false).await;
    }

    /// Waits until `check` holds for a metric's value.
    pub async fn wait_until(&self, series: &str, check: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let v = self.metric(series).await;
            if check(v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stayed at {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` messages of `topic` have been retired (their effects are durable).
    pub async fn wait_retired(&self, topic: &str, n: u64) {
        self.wait_metric(
            &format!("galopush_bus_messages_total{{topic=\"{topic}\",event=\"retired\"}}"),
            n as f64,
        )
        .await;
    }

    /// Publishes a login record and waits until it is in force.
    pub async fn login(&self, uid: &str, term: TermType, code: &str) {
        let before = self.retired("userOnlineState").await;
        self.publish_ok(
            "userOnlineState",
            serde_json::json!({
                "uid": uid, "termtype": term.bit(), "code": code,
                "deviceToken": "", "online": true
            })
            .to_string(),
        )
        .await;
        self.wait_retired("userOnlineState", before + 1).await;
    }

    pub async fn retired(&self, topic: &str) -> u64 {
        self.metric(&format!(
            "galopush_bus_messages_total{{topic=\"{topic}\",event=\"retired\"}}"
        ))
        .await as u64
    }

    /// Logs a terminal in, connects it and registers it; the REGRESP must be 0.
    pub async fn terminal(&self, uid: &str, term: TermType, transport: Transport) -> Terminal {
        let code = format!("code-{uid}-{}", term.bit());
        self.login(uid, term, &code).await;
        self.register(uid, &code, term, transport).await
    }

    /// Connects and registers with `token`; the REGRESP must be 0.
    pub async fn register(
        &self,
        uid: &str,
        token: &str,
        term: TermType,
        transport: Transport,
    ) -> Terminal {
        let mut t = self.connect(term, transport).await;
        let code = tokio::time::timeout(SOON, t.register(uid, token, term))
            .await
            .expect("REGRESP in time")
            .expect("register");
        assert_eq!(code, 0, "REGRESP for {uid}");
        t
    }

    /// A connection to the comet listener for the transport.
    pub async fn connect(&self, term: TermType, transport: Transport) -> Terminal {
        let _ = term;
        let addr = match transport {
            Transport::Tcp { .. } => &self.tcp,
            Transport::Web { .. } => &self.ws,
        };
        Terminal::connect(addr, transport).await.expect("connect")
    }

    /// Publishes a push/callback/msgDownward to one receiver.
    pub async fn send_down(&self, topic: &str, uid: &str, mask: u8, body: &str) {
        self.publish_ok(
            topic,
            serde_json::json!({
                "receivers": [{"uid": uid, "termtype": mask}],
                "flag": 0, "body": body
            })
            .to_string(),
        )
        .await;
    }
}

/// A PUSH's fields.
pub fn push(down: &Down) -> (u16, u8, Bytes) {
    match down {
        Down::Push { offline, flag, msg } => (*offline, *flag, msg.clone()),
        other => panic!("expected PUSH, got {other:?}"),
    }
}

type Received = Arc<Mutex<Vec<(String, serde_json::Value)>>>;
type HookState = (Received, Arc<std::sync::atomic::AtomicUsize>);

/// A webhook receiver: records every POST (topic, JSON body); can refuse the first few.
pub struct Webhook {
    pub url: String,
    received: Received,
}

impl Webhook {
    /// Starts a receiver that answers 500 to the first `refuse` POSTs.
    pub async fn start(refuse: usize) -> Webhook {
        use axum::extract::{Query, State};
        let received: Received = Arc::default();
        let refusals = Arc::new(std::sync::atomic::AtomicUsize::new(refuse));
        let state = (received.clone(), refusals);
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |State((received, refusals)): State<HookState>,
                     Query(q): Query<HashMap<String, String>>,
                     body: Bytes| async move {
                        use std::sync::atomic::Ordering;
                        if refusals
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
                            .is_ok()
                        {
                            return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                        received
                            .lock()
                            .await
                            .push((q.get("topic").cloned().unwrap_or_default(), json));
                        axum::http::StatusCode::OK
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook");
        let addr = listener.local_addr().expect("webhook addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Webhook {
            url: format!("http://{addr}/hook"),
            received,
        }
    }

    /// Waits until `n` messages have arrived and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<(String, serde_json::Value)> {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let got = self.received.lock().await.clone();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "webhook got {} messages, expected {n}: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
