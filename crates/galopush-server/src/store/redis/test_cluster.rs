//! A throw-away Redis Cluster for tests (this crate's, and galopush's end-to-end tests through
//! the `test-support` feature): three masters started from `redis-server` on free loopback
//! ports, joined with `redis-cli --cluster create`, killed (and their files removed) when
//! dropped, whether the test passed or not. Without the two programs a test says so and skips,
//! or fails in CI.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::CLUSTER_SCHEME;

/// Masters of a test cluster.
const MASTERS: usize = 3;
/// How long the cluster may take to start.
const START_WITHIN: Duration = Duration::from_secs(20);

/// The running nodes; dropping it kills them and removes their files.
pub struct RedisCluster {
    ports: Vec<u16>,
    nodes: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

impl RedisCluster {
    /// Starts a cluster and waits until every node reports `cluster_state:ok`; `None` (after
    /// saying so) when `redis-server` or `redis-cli` cannot run outside CI.
    pub async fn start_or_skip() -> Option<RedisCluster> {
        for tool in ["redis-server", "redis-cli"] {
            if let Err(e) = Command::new(tool).arg("--version").output() {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "cannot run {tool} for a Redis Cluster (required in CI): {e}"
                );
                eprintln!("SKIPPED: cannot run {tool} for a Redis Cluster: {e}");
                return None;
            }
        }
        let mut cluster = RedisCluster {
            ports: Vec::new(),
            nodes: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let deadline = tokio::time::Instant::now() + START_WITHIN;
        while cluster.nodes.len() < MASTERS {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nodes did not start"
            );
            cluster.start_node().await;
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        for port in &cluster.ports {
            loop {
                let info = tokio::process::Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .await
                    .expect("redis-cli cluster info");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "node {port} not ok");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Some(cluster)
    }

    /// Starts one node on a free port whose cluster bus port (+10000) is free too; a node that
    /// exits at once (its port taken meanwhile) is dropped and the caller tries again.
    async fn start_node(&mut self) {
        let port = loop {
            let port = fastrand::u16(20000..30000);
            let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
            if !self.ports.contains(&port) && free(port) && free(port + 10000) {
                break port;
            }
        };
        let mut node = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        for _ in 0..250 {
            if node.try_wait().ok().flatten().is_some() {
                return;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                self.ports.push(port);
                self.nodes.push(node);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = node.kill();
        let _ = node.wait();
    }

    /// `store.redis_url` for this cluster: every node (one would do; the rest are found).
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("{CLUSTER_SCHEME}{}", nodes.join(","))
    }

    /// The masters' ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }
}
