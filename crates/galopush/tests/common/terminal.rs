//! Reading what a terminal is sent, with a bound on the wait: the next message, the next one
//! acked, nothing for a while, or the connection closing.

use std::time::Duration;

use galopush_client::{ClientError, Terminal};
use galopush_protocol::message::Down;

/// Upper bound for anything the gateway should do "at once"; generous for loaded machines.
pub const SOON: Duration = Duration::from_secs(15);

/// The next message, which must arrive within [`SOON`].
pub async fn next(t: &mut Terminal) -> (u32, Down) {
    t.recv_timeout(SOON)
        .await
        .expect("a message in time")
        .expect("connection open")
}

/// Receives the next message and acks it.
pub async fn next_acked(t: &mut Terminal) -> (u32, Down) {
    let (tid, down) = next(t).await;
    t.ack(tid, &down).await.expect("ack");
    (tid, down)
}

/// Asserts that nothing arrives for `wait`.
pub async fn nothing_for(t: &mut Terminal, wait: Duration) {
    match t.recv_timeout(wait).await {
        Err(ClientError::Timeout(_)) => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

/// Asserts that the server closes the connection (after any frames it still sends); returns
/// those frames.
pub async fn closed(t: &mut Terminal) -> Vec<Down> {
    let mut seen = Vec::new();
    loop {
        match t.recv_timeout(SOON).await {
            Ok(Some((_, d))) => seen.push(d),
            Ok(None)
            | Err(ClientError::Io(_) | ClientError::Closed | ClientError::WebSocket(_)) => {
                return seen;
            }
            Err(e) => panic!("expected the connection to close, got {e}"),
        }
    }
}
