//! Starts the real `galopush standalone` for the bench tests: fresh ports, its own data
//! directory, killed when dropped.

use crate::common::process::{API_TOKEN, Process, env_name};

/// A running `galopush standalone`.
pub struct Gateway {
    pub pid: u32,
    pub http: String,
    pub api: String,
    pub tcp: String,
    _process: Process,
    _data: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway with default settings plus `settings` (`("auth.mode", "open")`).
    pub async fn start(settings: &[(&str, &str)]) -> Gateway {
        let data = tempfile::tempdir().expect("temp dir");
        let store = data.path().join("store").display().to_string();
        let env: Vec<(String, String)> = [
            ("router.http_addr", "127.0.0.1:0"),
            ("api.addr", "127.0.0.1:0"),
            ("api.token", API_TOKEN),
            ("comet.tcp_addr", "127.0.0.1:0"),
            ("comet.ws_addr", "127.0.0.1:0"),
            ("comet.advertise_tcp", "127.0.0.1:0"),
            ("comet.advertise_ws", "127.0.0.1:0"),
            ("log.level", "warn"),
            ("store.path", &store),
        ]
        .iter()
        .chain(settings)
        .map(|(k, v)| (env_name(k), (*v).to_owned()))
        .collect();
        let process = Process::start("standalone", data.path(), &env).await;
        Gateway {
            pid: process.pid,
            http: format!("http://{}", process.addr("http")),
            api: format!("http://{}", process.addr("api")),
            tcp: process.addr("tcp"),
            _process: process,
            _data: data,
        }
    }
}
