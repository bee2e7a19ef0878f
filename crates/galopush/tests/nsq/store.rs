//! A store outage with the NSQ bus: messages whose effect cannot be written are REQueued
//! (never dropped, never FINished), without spinning, and applied once the store is back.
//! Uses a `redis-server` of the test's own; skipped when there is none, unless `CI=true`.

use std::process::Stdio;
use std::time::Duration;

use galopush_protocol::TermType;
use tokio::process::{Child, Command};

use crate::harness::*;

/// A `redis-server` on a free port that the test stops and starts.
struct OwnRedis {
    port: u16,
    server: Option<Child>,
}

impl OwnRedis {
    async fn start() -> Option<OwnRedis> {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let mut own = OwnRedis { port, server: None };
        match own.run().await {
            Ok(()) => Some(own),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("cannot start redis-server: {e} (CI=true: Redis tests must run)")
            }
            Err(e) => {
                eprintln!("skipping this Redis test: cannot start redis-server: {e}");
                None
            }
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn run(&mut self) -> std::io::Result<()> {
        let server = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.server = Some(server);
        let deadline = tokio::time::Instant::now() + SOON;
        while tokio::time::Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(std::io::Error::other(
            "redis-server did not start listening",
        ))
    }

    async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.kill().await.expect("kill our redis-server");
        }
    }
}

#[tokio::test]
async fn a_store_outage_requeues_without_spinning_and_resumes_when_the_store_is_back() {
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let nsq = Nsq::start().await;
    let url = redis.url();
    let g = Gateway::start(&nsq, &[("store.kind", "redis"), ("store.redis_url", &url)]).await;

    redis.stop().await;
    let login = serde_json::json!({
        "uid": "roy", "termtype": 16, "code": "c-roy", "deviceToken": "", "online": true
    });
    nsq.publish("userOnlineState", login.to_string());
    nsq.wait("userOnlineState", "a REQ while the store is down", |s| {
        s.requeued >= 1
    })
    .await;
    // The outage goes on: the message is retried with growing delays, not in a loop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = nsq.stats("userOnlineState");
    assert_eq!(during.finished, 0, "{during:?}");
    assert!(during.requeued <= 4, "requeued too eagerly: {during:?}");
    assert!(g.bus_metric("userOnlineState", "requeued").await >= 1.0);

    redis.run().await.expect("redis-server restarts");
    nsq.wait("userOnlineState", "finished once the store is back", |s| {
        s.finished == 1 && s.in_flight == 0 && s.deferred == 0 && s.depth == 0
    })
    .await;
    // The record was written: the terminal can register with it.
    let _roy = g.register("roy", "c-roy", TermType::Pc).await;
}
