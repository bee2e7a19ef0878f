//! Helpers shared by the integration tests: logging, fast client settings and bounded waits.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use galopush_nsq::{ConnectionConfig, Consumer, ConsumerConfig, Message};

/// Generous upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(5);

/// Logs to the test output (shown for failing tests); `RUST_LOG` overrides the filter.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("galopush_nsq=debug"));
    // Ignored: another test of this binary installed it first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Connection settings that reconnect quickly.
pub fn fast_connection() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..ConnectionConfig::default()
    }
}

/// A consumer config for one direct nsqd with fast reconnection.
pub fn direct_config(nsqd: &str, topic: &str, channel: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(topic, channel);
    config.nsqd_tcp_addresses = vec![nsqd.to_owned()];
    config.connection = fast_connection();
    config
}

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(WAIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The next message, failing the test if none arrives within [`WAIT`].
pub async fn next_message(consumer: &mut Consumer) -> Message {
    match within("a message", consumer.recv()).await {
        Some(message) => message,
        None => panic!("consumer stopped"),
    }
}

/// Whether a message arrives within `wait` (for asserting that none does).
pub async fn message_within(consumer: &mut Consumer, wait: Duration) -> Option<Message> {
    tokio::time::timeout(wait, consumer.recv())
        .await
        .ok()
        .flatten()
}

/// Polls `condition` until it holds, failing the test after [`WAIT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Unwraps a setup result, failing the test with the error.
pub fn ok<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what}: {error}"),
    }
}
