//! A cluster carries any fan-out, body and session count over its link: a 64 KiB body to 5,000
//! terminals on two comets, a comet rejoining a restarted router with 15,000 sessions, a 1 MiB
//! message to one terminal. Terminals here are raw sockets (`auth.mode = "open"`): thousands of
//! them cost the test a few kilobytes each.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::BytesMut;
use futures_util::future::join_all;
use galopush_protocol::frame::Frame;
use galopush_protocol::message::{Register, Up};
use galopush_protocol::{Encoding, TermType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::nodes::*;

fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (i % 250) as u8))
}

fn frame(tid: u32, up: Up) -> BytesMut {
    let mut out = BytesMut::new();
    Frame::new(Encoding::None, tid, up)
        .encode(&mut out)
        .expect("encodable");
    out
}

/// A registered Android terminal `uid` with `token` on the comet at `addr`, from a spread
/// source address.
async fn terminal(addr: &str, uid: &str, token: &str, i: usize) -> TcpStream {
    let addr: SocketAddr = addr.parse().expect("host:port");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source(i), 0)).expect("bind");
    let mut stream = socket.connect(addr).await.expect("connect");
    let register = Up::Register(Register {
        version: 1,
        term_type: TermType::Android.bit(),
        id: uid.to_owned(),
        token: token.to_owned(),
    });
    stream
        .write_all(&frame(1, register))
        .await
        .expect("REGISTER");
    let mut answer = [0u8; 10];
    tokio::time::timeout(SOON, stream.read_exact(&mut answer))
        .await
        .expect("REGRESP in time")
        .expect("REGRESP");
    assert_eq!(answer[0] & 0x3f, 2, "REGRESP");
    assert_eq!(answer[9], 0, "registered");
    stream
}

/// Registers `n` terminals named `prefix-<i>` with `token`, 500 at a time, spread over
/// `comets`.
async fn terminals(comets: &[String], prefix: &str, token: &str, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    let indexes: Vec<usize> = (0..n).collect();
    for chunk in indexes.chunks(500) {
        let opened = join_all(chunk.iter().map(|&i| {
            let addr = comets[i % comets.len()].clone();
            let uid = format!("{prefix}-{i}");
            async move { terminal(&addr, &uid, token, i).await }
        }))
        .await;
        out.extend(opened);
    }
    out
}

/// Reads the next PUSH from `stream` without keeping its body (only its length and first byte),
/// and acks it.
async fn next_push_acked(stream: &mut TcpStream) -> (usize, u8) {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.expect("a frame header");
    assert_eq!(head[0] & 0x3f, 5, "PUSH");
    let tid = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
    let mut left = len;
    let mut chunk = [0u8; 4096];
    let mut first = None;
    while left > 0 {
        let n = stream
            .read(&mut chunk[..left.min(4096)])
            .await
            .expect("body");
        assert!(n > 0, "closed in the middle of a PUSH");
        // The body after offline (2 bytes) and flag (1 byte).
        if first.is_none() && len - left + n > 3 {
            first = Some(chunk[3 - (len - left).min(3)]);
        }
        left -= n;
    }
    stream
        .write_all(&frame(tid, Up::PushResp { code: 0 }))
        .await
        .expect("ack");
    (len - 3, first.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_kib_body_reaches_5000_terminals_on_two_comets() {
    const TERMINALS: usize = 5000;
    const BODY: usize = 64 * 1024;
    if !redis_or_skip(REDIS).await {
        return;
    }
    let cluster = Cluster::new(
        REDIS,
        &[
            ("auth.mode", "open"),
            ("log.level", "galopush_server=info,warn"),
        ],
    );
    let router = cluster.router(None, &[]).await;
    let rpc = router.addr("rpc");
    let a = cluster.comet("comet-a", &[&rpc]).await;
    let b = cluster.comet("comet-b", &[&rpc]).await;
    router.wait_comets(2, 0).await;
    let comets = [a.addr("tcp"), b.addr("tcp")];
    let streams = terminals(&comets, "fan", "open", TERMINALS).await;
    router.wait_comets(2, TERMINALS as i64).await;

    let receivers: Vec<serde_json::Value> = (0..TERMINALS)
        .map(|i| serde_json::json!({"uid": format!("fan-{i}"), "termtype": 1}))
        .collect();
    let body = "b".repeat(BODY);
    let mut readers = JoinSet::new();
    for mut stream in streams {
        readers.spawn(async move { next_push_acked(&mut stream).await });
    }
    router
        .publish(
            "push",
            serde_json::json!({"receivers": receivers, "flag": 0, "body": body}),
        )
        .await;
    let mut got = 0;
    while let Some(read) = readers.join_next().await {
        assert_eq!(read.expect("reader"), (BODY, b'b'));
        got += 1;
    }
    assert_eq!(got, TERMINALS);
    router
        .wait_metric(
            "galopush_deliveries_total{kind=\"push\",outcome=\"acked\"}",
            |v| v == TERMINALS as f64,
        )
        .await;
    assert_eq!(
        router
            .metric("galopush_deliveries_total{kind=\"push\",outcome=\"failed\"}")
            .await,
        0.0,
        "the link held"
    );
    drop((a, b));
    cluster.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comet_with_15000_sessions_rejoins_a_restarted_router() {
    const TERMINALS: usize = 15_000;
    if !redis_or_skip(REDIS).await {
        return;
    }
    let cluster = Cluster::new(
        REDIS,
        &[
            ("auth.mode", "open"),
            ("log.level", "galopush_server=info,warn"),
        ],
    );
    let router = cluster.router(None, &[]).await;
    let rpc = router.addr("rpc");
    let comet = cluster.comet("comet-a", &[&rpc]).await;
    router.wait_comets(1, 0).await;
    // Ids and tokens of the full 32 bytes, so that the sessions take more than one message to
    // report.
    let prefix = "a-user-with-a-long-id";
    let token = "a-login-code-of-thirty-two-bytes";
    let mut streams = terminals(&[comet.addr("tcp")], prefix, token, TERMINALS).await;
    router.wait_comets(1, TERMINALS as i64).await;

    let router = router.crash_and_restart(&[("router.rpc_addr", &rpc)]).await;
    router.wait_comets(1, TERMINALS as i64).await;
    let last = TERMINALS - 1;
    router
        .push(&format!("{prefix}-{last}"), 1, "x after the rejoin")
        .await;
    let (len, first) = next_push_acked(&mut streams[last]).await;
    assert_eq!((len, first), ("x after the rejoin".len(), b'x'));
    drop(comet);
    cluster.clean().await;
}

#[tokio::test]
async fn a_1_mib_message_reaches_one_terminal() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    let cluster = Cluster::new(REDIS, &[("auth.mode", "open")]);
    let router = cluster.router(None, &[]).await;
    let rpc = router.addr("rpc");
    let comet = cluster.comet("comet-a", &[&rpc]).await;
    router.wait_comets(1, 0).await;
    let mut stream = terminal(&comet.addr("tcp"), "big", "open", 0).await;
    router.wait_comets(1, 1).await;
    let body = "m".repeat(1 << 20);
    let line =
        serde_json::json!({"receivers": [{"uid": "big", "termtype": 1}], "flag": 0, "body": body});
    router.publish_many("push", &[line]).await;
    assert_eq!(next_push_acked(&mut stream).await, (1 << 20, b'm'));
    drop(comet);
    cluster.clean().await;
}
