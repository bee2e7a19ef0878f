//! A `redis-server` of a test's own, on a port of its own, that the test kills and starts again:
//! in memory only, or keeping every write it acknowledged on disk (`appendfsync always`), so
//! that a SIGKILL of the store is a fault the gateway must survive rather than data the test
//! threw away. When `redis-server` cannot run the test says so and skips, unless `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::common::process::free_port;
use crate::common::terminal::SOON;

pub struct OwnRedis {
    pub port: u16,
    /// Where its append-only file is kept; `None`: nothing on disk.
    persist_in: Option<PathBuf>,
    server: Option<Child>,
}

impl OwnRedis {
    /// Starts one, persistent in `persist_in` when given; `None` (the reason printed) when
    /// `redis-server` cannot run here, which fails the test in CI.
    pub async fn start(persist_in: Option<&Path>) -> Option<OwnRedis> {
        let mut redis = OwnRedis {
            port: free_port(),
            persist_in: persist_in.map(Path::to_owned),
            server: None,
        };
        match redis.run().await {
            Ok(()) => Some(redis),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("cannot start redis-server: {e} (CI=true: Redis tests must run)")
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

    /// Runs (again) on the same port and directory, and waits until it answers PING (after
    /// reading its append-only file back, when persistent).
    pub async fn run(&mut self) -> std::io::Result<()> {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", ""]);
        match &self.persist_in {
            Some(dir) => command.args(["--dir", &dir.display().to_string()]).args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ]),
            None => command.args(["--appendonly", "no"]),
        };
        self.server = Some(command.stdout(Stdio::null()).kill_on_drop(true).spawn()?);
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
