//! A Mosquitto of the test's own for the bench's MQTT runs: the installed `mosquitto` on a free
//! loopback port, anonymous, no connection limit, no persistence, killed when dropped. Without
//! the program a test prints `SKIPPED: mosquitto missing` and passes, outside CI; in CI
//! (`CI=true`) it fails (`.ci/run` installs it).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// How long Mosquitto may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running Mosquitto.
pub struct Mosquitto {
    pub pid: u32,
    /// `mqtt://127.0.0.1:PORT`, as `--target` takes it.
    pub url: String,
    _process: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts one, or says `SKIPPED` and gives `None` when the program is missing outside CI.
    pub async fn start() -> Option<Mosquitto> {
        let Some(program) = program("mosquitto") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "mosquitto is required in CI (apt-get install mosquitto)"
            );
            eprintln!("SKIPPED: mosquitto missing");
            return None;
        };
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n\
                 persistence false\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\n"
            ),
        )
        .expect("write mosquitto.conf");
        let process = Command::new(program)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start mosquitto");
        let pid = process.id().expect("mosquitto runs");
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto does not listen on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(Mosquitto {
            pid,
            url: format!("mqtt://127.0.0.1:{port}"),
            _process: process,
            _dir: dir,
        })
    }
}

/// Where `name` is installed: on the PATH or in /usr/sbin, where Debian puts Mosquitto.
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
