//! Cluster test harness: starts `galopush router` and `galopush comet` processes on 127.0.0.1
//! with fresh ports, sharing a Redis key prefix of their own, and drives them like an operator
//! and terminals would.

use std::sync::Arc;
use std::time::Duration;

use galopush_client::{Terminal, Transport};
use galopush_protocol::message::Down;
use galopush_protocol::{Encoding, TermType};

use crate::common::process::{API_TOKEN, Process, api_client};
pub use crate::common::process::{env_name, unique};
pub use crate::common::terminal::{SOON, closed, next, next_acked};

pub const TCP: Transport = Transport::Tcp {
    encoding: Encoding::None,
};
pub const REDIS: &str = "127.0.0.1:6379";

/// Whether Redis answers; outside CI a test without it says so and skips, in CI it fails.
pub async fn redis_or_skip(addr: &str) -> bool {
    let answers = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        (&buf == b"+PONG\r\n").then_some(())
    };
    let up = tokio::time::timeout(Duration::from_secs(2), answers)
        .await
        .ok()
        .flatten()
        .is_some();
    if !up {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Redis is not answering on {addr} (required in CI)"
        );
        eprintln!("SKIPPED: Redis is not answering on {addr}; start it to run this test");
    }
    up
}

/// Settings shared by the processes of one test cluster.
pub struct Cluster {
    pub data: Arc<tempfile::TempDir>,
    pub common: Vec<(String, String)>,
    pub prefix: String,
    redis: String,
}

impl Cluster {
    /// A cluster on the Redis at `redis` (`host:port`, or a Redis Cluster's
    /// `redis+cluster://…` URL) with a key prefix of its own.
    pub fn new(redis: &str, settings: &[(&str, &str)]) -> Cluster {
        let prefix = format!("galopush-test:{}:", unique());
        let mut common: Vec<(String, String)> = vec![
            ("api.token", API_TOKEN),
            ("store.kind", "redis"),
            ("log.level", "galopush_server=debug,info"),
            ("delivery.ack_timeout", "2s"),
        ]
        .into_iter()
        .chain(settings.iter().copied())
        .map(|(k, v)| (env_name(k), v.to_owned()))
        .collect();
        let url = if redis.starts_with("redis+cluster://") {
            redis.to_owned()
        } else {
            format!("redis://{redis}/0")
        };
        common.push((env_name("store.redis_url"), url));
        common.push((env_name("store.redis_prefix"), prefix.clone()));
        Cluster {
            data: Arc::new(tempfile::tempdir().expect("tempdir")),
            common,
            prefix,
            redis: redis.to_owned(),
        }
    }

    /// Starts a router on fresh ports (or on `rpc` when given, to restart it in place).
    pub async fn router(&self, rpc: Option<&str>, extra: &[(&str, &str)]) -> Node {
        let rpc = rpc.unwrap_or("127.0.0.1:0");
        let mut env = self.common.clone();
        env.push((env_name("router.http_addr"), "127.0.0.1:0".into()));
        env.push((env_name("api.addr"), "127.0.0.1:0".into()));
        env.push((env_name("router.rpc_addr"), rpc.into()));
        env.push((
            env_name("store.path"),
            self.data
                .path()
                .join(format!("router-{}", unique()))
                .display()
                .to_string(),
        ));
        env.extend(extra.iter().map(|(k, v)| (env_name(k), (*v).to_owned())));
        Node::spawn("router", self.data.clone(), env).await
    }

    /// Starts a comet named `id` that joins the given routers (their `rpc` addresses).
    pub async fn comet(&self, id: &str, routers: &[&str]) -> Node {
        self.comet_with(id, routers, &[]).await
    }

    /// As [`Cluster::comet`], with `extra` settings.
    pub async fn comet_with(&self, id: &str, routers: &[&str], extra: &[(&str, &str)]) -> Node {
        let mut env = self.common.clone();
        for (k, v) in [
            ("comet.id", id.to_owned()),
            ("comet.tcp_addr", "127.0.0.1:0".into()),
            ("comet.ws_addr", "127.0.0.1:0".into()),
            ("comet.advertise_tcp", "127.0.0.1:0".into()),
            ("comet.advertise_ws", "127.0.0.1:0".into()),
            ("comet.http_addr", "127.0.0.1:0".into()),
            ("comet.router_rpc", routers.join(",")),
        ] {
            env.push((env_name(k), v));
        }
        env.extend(extra.iter().map(|(k, v)| (env_name(k), (*v).to_owned())));
        Node::spawn("comet", self.data.clone(), env).await
    }

    /// Deletes the cluster's keys from Redis (a test's Redis Cluster goes away whole instead).
    pub async fn clean(&self) {
        if self.redis.starts_with("redis+cluster://") {
            return;
        }
        let script = "for _,k in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do redis.call('DEL', k) end return 0";
        let _ = redis_command(&self.redis, &["EVAL", script, "0", &self.prefix]).await;
    }
}

/// Sends one command to Redis (RESP), ignoring the answer.
async fn redis_command(addr: &str, args: &[&str]) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await?;
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf).await?;
    Ok(())
}

/// One running process of the cluster.
pub struct Node {
    process: Process,
    role: &'static str,
    data: Arc<tempfile::TempDir>,
    env: Vec<(String, String)>,
}

impl Node {
    async fn spawn(
        role: &'static str,
        data: Arc<tempfile::TempDir>,
        env: Vec<(String, String)>,
    ) -> Node {
        Node {
            process: Process::start(role, data.path(), &env).await,
            role,
            data,
            env,
        }
    }

    pub fn addr(&self, name: &str) -> String {
        self.process.addr(name)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// `http://host:port` of the node's public HTTP listener (a router's dispatcher).
    pub fn http(&self) -> String {
        format!("http://{}", self.addr("http"))
    }

    /// `http://host:port` of the node's business API (a router's `api`, a comet's `http`).
    pub fn api(&self) -> String {
        let name = if self.role == "router" { "api" } else { "http" };
        format!("http://{}", self.addr(name))
    }

    /// Sends a signal (`STOP`, `CONT`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        self.process.signal(name);
    }

    /// Waits up to `wait` for the process to exit by itself; returns how, and its log.
    pub async fn exit_within(self, wait: Duration) -> (std::process::ExitStatus, String) {
        self.process.exit_within(wait).await
    }

    /// SIGKILL.
    pub async fn kill(self) {
        self.process.kill().await;
    }

    /// SIGKILL, then the same process again with the same settings except `changes`.
    pub async fn crash_and_restart(self, changes: &[(&str, &str)]) -> Node {
        let (role, data, mut env) = (self.role, self.data, self.env);
        self.process.kill().await;
        for (k, v) in changes {
            let name = env_name(k);
            env.retain(|(n, _)| *n != name);
            env.push((name, (*v).to_owned()));
        }
        Node::spawn(role, data, env).await
    }

    /// The value of one metric line on this node.
    pub async fn metric(&self, series: &str) -> f64 {
        crate::common::process::metric(&api_client(), &self.api(), series).await
    }

    /// Waits until `check` holds for a metric's value.
    pub async fn wait_metric(&self, series: &str, check: impl Fn(f64) -> bool) {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let v = self.metric(series).await;
            if check(v) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stayed at {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /v1/comets` of a router.
    pub async fn comets(&self) -> serde_json::Value {
        let text = api_client()
            .get(format!("{}/v1/comets", self.api()))
            .send()
            .await
            .expect("GET /v1/comets")
            .text()
            .await
            .expect("text");
        serde_json::from_str(&text).expect("JSON")
    }

    /// Waits until the router sees `n` comets with `sessions` live sessions in all.
    pub async fn wait_comets(&self, n: usize, sessions: i64) {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let comets = self.comets().await;
            let list = comets.as_array().cloned().unwrap_or_default();
            let live: i64 = list.iter().filter_map(|c| c["sessions"].as_i64()).sum();
            if list.len() == n && live == sessions {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "router sees {comets}, expected {n} comets with {sessions} sessions"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /pub` to a router; must be accepted.
    pub async fn publish(&self, topic: &str, body: serde_json::Value) {
        let r = api_client()
            .post(format!("{}/pub", self.api()))
            .query(&[("topic", topic)])
            .body(body.to_string())
            .send()
            .await
            .expect("POST /pub");
        let status = r.status();
        assert!(
            status.is_success(),
            "/pub {topic}: {status} {}",
            r.text().await.unwrap_or_default()
        );
    }

    /// `POST /mpub` of `lines` to a router; must be accepted.
    pub async fn publish_many(&self, topic: &str, lines: &[serde_json::Value]) {
        let body: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let r = api_client()
            .post(format!("{}/mpub", self.api()))
            .query(&[("topic", topic)])
            .body(body.join("\n"))
            .send()
            .await
            .expect("POST /mpub");
        let status = r.status();
        assert!(
            status.is_success(),
            "/mpub {topic}: {status} {}",
            r.text().await.unwrap_or_default()
        );
    }

    /// Publishes a login record and waits until this router retired it.
    pub async fn login(&self, uid: &str, term: TermType, code: &str) {
        let series = "galopush_bus_messages_total{topic=\"userOnlineState\",event=\"retired\"}";
        let before = self.metric(series).await;
        self.publish(
            "userOnlineState",
            serde_json::json!({"uid": uid, "termtype": term.bit(), "code": code, "online": true}),
        )
        .await;
        self.wait_metric(series, |v| v > before).await;
    }

    /// Asks the router's dispatcher for a terminal's comet.
    pub async fn dispatch(&self, uid: &str, term: TermType) -> String {
        galopush_client::dispatch_get(&self.http(), uid, term)
            .await
            .expect("dispatch")
    }

    pub async fn push(&self, uid: &str, mask: u8, body: &str) {
        self.publish(
            "push",
            serde_json::json!({"receivers": [{"uid": uid, "termtype": mask}], "flag": 0, "body": body}),
        )
        .await;
    }
}

/// Connects to `addr` and registers; the REGRESP must be 0.
pub async fn register(addr: &str, uid: &str, code: &str, term: TermType) -> Terminal {
    let mut t = Terminal::connect(addr, TCP).await.expect("connect");
    let regresp = tokio::time::timeout(SOON, t.register(uid, code, term))
        .await
        .expect("REGRESP in time")
        .expect("register");
    assert_eq!(regresp, 0, "REGRESP for {uid} on {addr}");
    t
}

pub fn push_body(down: &Down) -> (u16, bytes::Bytes) {
    match down {
        Down::Push { offline, msg, .. } => (*offline, msg.clone()),
        other => panic!("expected PUSH, got {other:?}"),
    }
}
