//! The `galopush` processes a chaos run breaks — routers and comets, or one standalone gateway,
//! as child processes on ports fixed for the whole run, so that a killed part comes back where
//! the others look for it — and the settings they share. (A cluster's Redis is
//! `common::redis::OwnRedis`, persistent.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::process::{API_TOKEN, Process, env_name, unique};

/// One router or comet, with the settings it is started (and restarted) with.
pub struct Part {
    pub name: String,
    role: &'static str,
    dir: PathBuf,
    env: Vec<(String, String)>,
    process: Option<Process>,
}

impl Part {
    /// A router serving its dispatcher on `http`, its business API on `api`, its RPC on `rpc`.
    pub fn router(
        name: &str,
        dir: &Path,
        common: &[(String, String)],
        http: &str,
        api: &str,
        rpc: &str,
    ) -> Part {
        Part::new(
            name,
            "router",
            dir,
            common,
            [
                ("router.http_addr", http.to_owned()),
                ("api.addr", api.to_owned()),
                ("router.rpc_addr", rpc.to_owned()),
                (
                    "store.path",
                    dir.join(format!("{name}-{}", unique()))
                        .display()
                        .to_string(),
                ),
            ],
        )
    }

    /// A comet named `name` with terminals on `tcp`, its metrics on `http`, joining `routers`.
    pub fn comet(
        name: &str,
        dir: &Path,
        common: &[(String, String)],
        tcp: &str,
        http: &str,
        routers: &[String],
    ) -> Part {
        Part::new(
            name,
            "comet",
            dir,
            common,
            [
                ("comet.id", name.to_owned()),
                ("comet.tcp_addr", tcp.to_owned()),
                ("comet.advertise_tcp", tcp.to_owned()),
                ("comet.ws_addr", "127.0.0.1:0".to_owned()),
                ("comet.advertise_ws", "127.0.0.1:0".to_owned()),
                ("comet.http_addr", http.to_owned()),
                ("comet.router_rpc", routers.join(",")),
            ],
        )
    }

    /// A standalone gateway with its dispatcher on `http`, its business API on `api`, its
    /// terminals on `tcp`, and its embedded store in a directory it keeps across restarts.
    pub fn standalone(
        name: &str,
        dir: &Path,
        common: &[(String, String)],
        http: &str,
        api: &str,
        tcp: &str,
    ) -> Part {
        Part::new(
            name,
            "standalone",
            dir,
            common,
            [
                ("router.http_addr", http.to_owned()),
                ("api.addr", api.to_owned()),
                ("comet.tcp_addr", tcp.to_owned()),
                ("comet.advertise_tcp", tcp.to_owned()),
                ("comet.ws_addr", "127.0.0.1:0".to_owned()),
                ("comet.advertise_ws", "127.0.0.1:0".to_owned()),
                (
                    "store.path",
                    dir.join(format!("{name}-store")).display().to_string(),
                ),
            ],
        )
    }

    /// A `galopush <role>` with the run's `common` settings and its `own` (by key).
    fn new<const N: usize>(
        name: &str,
        role: &'static str,
        dir: &Path,
        common: &[(String, String)],
        own: [(&str, String); N],
    ) -> Part {
        let own = own.into_iter().map(|(k, v)| (env_name(k), v));
        Part {
            name: name.to_owned(),
            role,
            dir: dir.to_owned(),
            env: common.iter().cloned().chain(own).collect(),
            process: None,
        }
    }

    /// Starts the process and waits for its ready line.
    pub async fn start(&mut self) {
        self.process = Some(Process::start(self.role, &self.dir, &self.env).await);
    }

    /// SIGKILL.
    pub async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill().await;
        }
    }

    /// SIGKILL, and a restart after `outage`.
    pub async fn kill_for(&mut self, outage: Duration) {
        self.kill().await;
        tokio::time::sleep(outage).await;
        self.start().await;
    }

    /// SIGSTOP, and SIGCONT after `pause`.
    pub async fn pause_for(&self, pause: Duration) {
        self.signal("STOP");
        tokio::time::sleep(pause).await;
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        if let Some(process) = &self.process {
            process.signal(name);
        }
    }

    /// The log of the running process (empty when it is not running).
    pub fn log_text(&self) -> String {
        self.process
            .as_ref()
            .map(Process::log_text)
            .unwrap_or_default()
    }
}

/// The settings every process of a chaos run shares.
pub fn common_settings(webhook: &str, ack_timeout: Duration) -> Vec<(String, String)> {
    let ack_timeout = format!("{}ms", ack_timeout.as_millis());
    [
        ("api.token", API_TOKEN),
        ("bus.webhook_url", webhook),
        ("log.level", "info"),
        ("delivery.ack_timeout", &ack_timeout),
        ("delivery.callback_ack_timeout", &ack_timeout),
        // The run counts every callback and IM, so none may be pushed out of a full offline
        // list: the lists are made long enough for the longest absence of a run.
        ("delivery.max_offline_callbacks", "100000"),
        ("delivery.max_offline_im", "100000"),
    ]
    .into_iter()
    .map(|(k, v)| (env_name(k), v.to_owned()))
    .collect()
}

/// A cluster's store: the Redis at `redis_url`, shared by its routers.
pub fn cluster_store_settings(redis_url: &str) -> Vec<(String, String)> {
    [("store.kind", "redis"), ("store.redis_url", redis_url)]
        .into_iter()
        .map(|(k, v)| (env_name(k), v.to_owned()))
        .collect()
}
