//! The processes a chaos run breaks: a `redis-server` of its own with persistence on (every
//! write in its append-only file before it answers), routers and comets as `galopush` child
//! processes on ports fixed for the whole run so that a killed part comes back where the others
//! look for it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::common::process::{API_TOKEN, Process, env_name, unique};
use crate::common::terminal::SOON;

/// A free port on 127.0.0.1 outside the kernel's ephemeral range: a part comes back on its
/// port after a kill, and an ephemeral port could meanwhile have become the local end of some
/// outgoing connection.
pub fn free_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_default();
    let mut bounds = range.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    let (low, high) = (bounds.next().unwrap_or(32768), bounds.next().unwrap_or(60999));
    let candidates: Vec<u16> = (high.saturating_add(1)..=u16::MAX)
        .chain(10_000..low)
        .collect();
    let mut rng = fastrand::Rng::new();
    (0..1000)
        .map(|_| candidates[rng.usize(0..candidates.len())])
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port outside the ephemeral range")
}

/// A `redis-server` on a port of its own that keeps every acknowledged write across a SIGKILL
/// (`appendfsync always`), so that a kill of the store is a fault the gateway must survive,
/// not data thrown away by the test.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    server: Option<Child>,
}

impl Redis {
    /// Starts it in `dir`; `None` (with the reason printed) when `redis-server` cannot run here,
    /// which fails the run in CI.
    pub async fn start(dir: &Path) -> Option<Redis> {
        let mut redis = Redis {
            port: free_port(),
            dir: dir.to_owned(),
            server: None,
        };
        match redis.run().await {
            Ok(()) => Some(redis),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("cannot start redis-server: {e} (CI=true: the chaos run must run)")
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot start redis-server: {e}");
                None
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs (again) on the same port and directory: a restart reads the append-only file back.
    pub async fn run(&mut self) -> std::io::Result<()> {
        let server = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--dir", &self.dir.display().to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.server = Some(server);
        // Loading the append-only file takes a moment; PING answers PONG only once it is done.
        let deadline = tokio::time::Instant::now() + SOON;
        while tokio::time::Instant::now() < deadline {
            if self.pong().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(std::io::Error::other("redis-server did not answer PING"))
    }

    async fn pong(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").await.is_ok()
            && s.read_exact(&mut buf).await.is_ok()
            && &buf == b"+PONG\r\n"
    }

    /// SIGKILL.
    pub async fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.kill().await.expect("kill -9 redis-server");
        }
    }
}

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
        let mut env = common.to_vec();
        for (k, v) in [
            ("router.http_addr", http.to_owned()),
            ("api.addr", api.to_owned()),
            ("router.rpc_addr", rpc.to_owned()),
            (
                "store.path",
                dir.join(format!("{name}-{}", unique()))
                    .display()
                    .to_string(),
            ),
        ] {
            env.push((env_name(k), v));
        }
        Part::new(name, "router", dir, env)
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
        let mut env = common.to_vec();
        for (k, v) in [
            ("comet.id", name.to_owned()),
            ("comet.tcp_addr", tcp.to_owned()),
            ("comet.advertise_tcp", tcp.to_owned()),
            ("comet.ws_addr", "127.0.0.1:0".to_owned()),
            ("comet.advertise_ws", "127.0.0.1:0".to_owned()),
            ("comet.http_addr", http.to_owned()),
            ("comet.router_rpc", routers.join(",")),
        ] {
            env.push((env_name(k), v));
        }
        Part::new(name, "comet", dir, env)
    }

    fn new(name: &str, role: &'static str, dir: &Path, env: Vec<(String, String)>) -> Part {
        Part {
            name: name.to_owned(),
            role,
            dir: dir.to_owned(),
            env,
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

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, name: &str) {
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

/// The settings every part of a chaos cluster shares.
pub fn common_settings(redis_url: &str, webhook: &str, ack_timeout: &str) -> Vec<(String, String)> {
    [
        ("api.token", API_TOKEN),
        ("store.kind", "redis"),
        ("store.redis_url", redis_url),
        ("bus.webhook_url", webhook),
        ("log.level", "info"),
        ("delivery.ack_timeout", ack_timeout),
        ("delivery.callback_ack_timeout", ack_timeout),
        // The run counts every callback and IM, so none may be pushed out of a full offline
        // list: the lists are made long enough for the longest absence of a run.
        ("delivery.max_offline_callbacks", "100000"),
        ("delivery.max_offline_im", "100000"),
    ]
    .into_iter()
    .map(|(k, v)| (env_name(k), v.to_owned()))
    .collect()
}
