//! Starts the real `galopush standalone` for the bench tests: fresh ports, its own data
//! directory, killed when dropped (the few pieces of the standalone tests' harness they need).

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long the gateway may take to print its ready line.
const READY: Duration = Duration::from_secs(10);

/// A running `galopush standalone`.
pub struct Gateway {
    child: Child,
    pub pid: u32,
    pub http: String,
    pub tcp: String,
    log: std::path::PathBuf,
    _data: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- gateway log (last lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Gateway {
    /// Starts a gateway with default settings plus `settings` (`("auth.mode", "open")`).
    pub async fn start(settings: &[(&str, &str)]) -> Gateway {
        let data = tempfile::tempdir().expect("temp dir");
        let log = data.path().join("gateway.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_galopush"));
        command
            .arg("standalone")
            .env_remove("RUST_LOG")
            .env(env_name("store.path"), data.path().join("store"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true);
        for (key, value) in [
            ("router.http_addr", "127.0.0.1:0"),
            ("comet.tcp_addr", "127.0.0.1:0"),
            ("comet.ws_addr", "127.0.0.1:0"),
            ("comet.advertise_tcp", "127.0.0.1:0"),
            ("comet.advertise_ws", "127.0.0.1:0"),
            ("log.level", "warn"),
        ]
        .iter()
        .chain(settings)
        {
            command.env(env_name(key), value);
        }
        let mut child = command.spawn().expect("galopush starts");
        let pid = child.id().expect("a running child has a pid");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY, async {
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
            panic!("gateway did not get ready; its log:\n{log}")
        });
        let addrs: HashMap<&str, &str> = ready
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        Gateway {
            child,
            pid,
            http: format!("http://{}", addrs["http"]),
            tcp: addrs["tcp"].to_owned(),
            log,
            _data: data,
        }
    }
}

/// `auth.mode` → `GALOPUSH_AUTH__MODE`.
fn env_name(key: &str) -> String {
    let (section, name) = key.split_once('.').expect("section.key");
    format!(
        "GALOPUSH_{}__{}",
        section.to_ascii_uppercase(),
        name.to_ascii_uppercase()
    )
}
