//! A `galopush` child process for the end-to-end tests, shared by the standalone, NSQ, cluster
//! and bench test binaries: started with `GALOPUSH_*` settings and its stderr in a log file,
//! ready once it prints its `galopush ready …` line (whose `name=host:port` pairs it keeps),
//! and killed when dropped — with the log's last lines printed when the test is failing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a process may take to print its ready line, or to exit after SIGTERM; generous
/// for loaded machines.
pub const WITHIN: Duration = Duration::from_secs(10);

/// One running `galopush` process.
pub struct Process {
    child: Child,
    pub pid: u32,
    /// The addresses of its ready line, by name (`http`, `api`, `tcp`, `ws`, `rpc`).
    pub addrs: HashMap<String, String>,
    role: String,
    log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- {} log (last lines) ---", self.role);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Process {
    /// Runs `galopush <role>` with `env`, its log in `dir`, and waits for its ready line.
    pub async fn start(role: &str, dir: &Path, env: &[(String, String)]) -> Process {
        let log = dir.join(format!("{role}-{}.log", unique()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_galopush"))
            .arg(role)
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("galopush starts");
        let pid = child.id().expect("a running child has a pid");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(WITHIN, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("galopush ready ") {
                    return Some(line);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("{role} did not get ready; its log:\n{log}")
        });
        let addrs = ready
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Process {
            child,
            pid,
            addrs,
            role: role.to_owned(),
            log,
        }
    }

    /// The address of the ready line named `name`.
    pub fn addr(&self, name: &str) -> String {
        self.addrs
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("{} has no {name} address", self.role))
    }

    /// Sends a signal (`TERM`, `STOP`, `CONT`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{name} {}", self.pid);
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill -9");
    }

    /// Waits for the process to exit by itself; it must within [`WITHIN`].
    pub async fn exited(mut self) -> ExitStatus {
        tokio::time::timeout(WITHIN, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit", self.role))
            .expect("wait")
    }

    /// Waits up to `wait` for the process to exit by itself; returns how, and its log.
    pub async fn exit_within(mut self, wait: Duration) -> (ExitStatus, String) {
        let status = tokio::time::timeout(wait, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {wait:?}", self.role))
            .expect("wait");
        (
            status,
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (what Ctrl-C and service managers send), then waits for a clean exit.
    pub async fn stop(self) {
        self.signal("TERM");
        let status = self.exited().await;
        assert!(status.success(), "clean exit, got {status}");
    }
}

/// The business API token the test processes run with (`api.token`), so every test goes
/// through the API's authentication as a deployment does.
pub const API_TOKEN: &str = "test-api-token";

/// An HTTP client that sends [`API_TOKEN`] with every request.
pub fn api_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_static("Bearer test-api-token"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("HTTP client")
}

/// The value of one metric line at `{api}/metrics`, e.g.
/// `galopush_kicks_total{reason="logged_out"}`; 0 when the series is absent.
pub async fn metric(client: &reqwest::Client, api: &str, series: &str) -> f64 {
    metric_if_present(client, api, series).await.unwrap_or(0.0)
}

/// The value of one metric line; `None` when the series is not there at all.
pub async fn metric_if_present(client: &reqwest::Client, api: &str, series: &str) -> Option<f64> {
    let text = client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A setting's environment variable: `auth.mode` → `GALOPUSH_AUTH__MODE`.
pub fn env_name(key: &str) -> String {
    let (section, name) = key.split_once('.').expect("section.key");
    format!(
        "GALOPUSH_{}__{}",
        section.to_ascii_uppercase(),
        name.to_ascii_uppercase()
    )
}

/// The resident memory of process `pid`, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// A free port on 127.0.0.1 outside the kernel's ephemeral range: a part comes back on its
/// port after a kill, and an ephemeral port could meanwhile have become the local end of some
/// outgoing connection.
pub fn free_port() -> u16 {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = range
        .split_whitespace()
        .filter_map(|p| p.parse::<u16>().ok());
    let (low, high) = (
        bounds.next().unwrap_or(32768),
        bounds.next().unwrap_or(60999),
    );
    let candidates: Vec<u16> = (high.saturating_add(1)..=u16::MAX)
        .chain(10_000..low)
        .collect();
    let mut rng = fastrand::Rng::new();
    (0..1000)
        .map(|_| candidates[rng.usize(0..candidates.len())])
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port outside the ephemeral range")
}

/// A number unlikely to repeat, for names that must not collide between tests.
pub fn unique() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
