//! Attacks on the terminal listeners (SPEC §3, §4, §10): thousands of connections stalled in an
//! oversized frame before REGISTER, slowloris on TCP and on the WebSocket handshake, oversized
//! ids and frames, too many connections, and garbage on every listener.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use galopush_protocol::TermType;
use galopush_protocol::message::{Down, Up};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::process::rss_kib;
use crate::harness::*;
use crate::raw;
use crate::{refused, still_serves};

/// A WebSocket upgrade request for the comet's listener.
fn upgrade(addr: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The header of a masked client text frame announcing `len` bytes, and its mask.
fn ws_header(len: u64) -> Vec<u8> {
    let mut out = vec![0x81, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

/// Opens `n` connections to `addr`, `at_once` at a time, from spread source addresses.
async fn open_many(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(250) {
        let opened = join_all(
            chunk
                .iter()
                .map(|&i| raw::connect(addr, Some(raw::source(i)), None)),
        )
        .await;
        out.extend(opened);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_stalled_in_an_oversized_frame_before_register_are_closed() {
    const TCP_CONNECTIONS: usize = 5000;
    const WS_CONNECTIONS: usize = 500;
    let g = Gateway::start(&[("log.level", "warn")]).await;
    let mut bystander = g.terminal("bystander", TermType::Android, TCP).await;
    let rss_before = rss_kib(g.pid());

    // Every connection is open before any of them sends its frame.
    let mut tcp = open_many(&g.tcp, TCP_CONNECTIONS).await;
    // A 1 MiB IM announced, and a first part of it sent: then nothing more.
    let mut stalled = raw::frame(
        7,
        Up::Im {
            msg: bytes::Bytes::new(),
        },
    );
    stalled[5..9].copy_from_slice(&(1u32 << 20).to_be_bytes());
    stalled.extend(std::iter::repeat_n(b'x', 1000));
    for s in &mut tcp {
        let _ = s.write_all(&stalled).await;
    }
    let closed = join_all(tcp.iter_mut().map(|s| raw::closed_within(s, SOON))).await;
    assert!(
        closed.iter().all(|c| *c),
        "every stalled TCP connection is closed"
    );

    let mut ws = open_many(&g.ws, WS_CONNECTIONS).await;
    for s in &mut ws {
        let _ = s.write_all(upgrade(&g.ws).as_bytes()).await;
        let _ = s.write_all(&ws_header(1 << 20)).await;
        let _ = s.write_all(&[b'x'; 1000]).await;
    }
    let closed = join_all(ws.iter_mut().map(|s| raw::closed_within(s, SOON))).await;
    assert!(
        closed.iter().all(|c| *c),
        "every stalled WebSocket is closed"
    );

    let expected = (TCP_CONNECTIONS + WS_CONNECTIONS) as f64;
    g.wait_until(&refused("max_unregistered_frame"), |v| v == expected)
        .await;
    still_serves(&g, rss_before, 20 * 1024, &mut bystander, "bystander", 1).await;
}

#[tokio::test]
async fn slowloris_is_closed_at_the_register_timeout() {
    let g = Gateway::start(&[("comet.register_timeout", "1s")]).await;
    let register = raw::register("slow", "token", TermType::Android);
    let handshake = upgrade(&g.ws);
    for (addr, bytes) in [(&g.tcp, register), (&g.ws, handshake.into_bytes())] {
        let mut s = raw::connect(addr, None, None).await;
        let started = Instant::now();
        let mut closed = false;
        // A byte every 150 ms: the REGISTER (or the upgrade) would take seconds to arrive.
        for byte in bytes.iter().take(bytes.len() - 1) {
            if s.write_all(&[*byte]).await.is_err()
                || raw::closed_within(&mut s, Duration::from_millis(150)).await
            {
                closed = true;
                break;
            }
            assert!(started.elapsed() < SOON, "{addr}: still open");
        }
        assert!(closed, "{addr}: the slow client was never cut off");
    }
    let mut t = g.terminal("after", TermType::Web, WEB).await;
    g.send_down("push", "after", 8, "fine").await;
    assert_eq!(push(&next_acked(&mut t).await.1).2, "fine");
}

#[tokio::test]
async fn oversized_ids_and_frames_are_refused() {
    let g = Gateway::start(&[("auth.mode", "open"), ("limits.max_body", "4096")]).await;
    // A WebSocket REGISTER's id and token are at most 32 bytes, as over TCP.
    for (id, token) in [
        ("i".repeat(33), "t".to_owned()),
        ("i".to_owned(), "t".repeat(33)),
    ] {
        let mut t = g.connect(TermType::Web, WEB).await;
        let code = t
            .register(&id, &token, TermType::Web)
            .await
            .expect("REGRESP");
        assert_eq!(
            code,
            3,
            "id {} bytes, token {} bytes",
            id.len(),
            token.len()
        );
        closed(&mut t).await;
    }
    let mut t = g.connect(TermType::Web, WEB).await;
    assert_eq!(
        t.register(&"i".repeat(32), &"t".repeat(32), TermType::Web)
            .await
            .expect("REGRESP"),
        0,
        "32 bytes each is fine"
    );

    // After REGISTER the bound is limits.max_body.
    let mut s = raw::connect(&g.tcp, None, None).await;
    s.write_all(&raw::register("big", "t", TermType::Android))
        .await
        .expect("register");
    let mut buf = bytes::BytesMut::new();
    let answer = raw::read_downs(&mut s, &mut buf, 1).await;
    assert!(matches!(answer[..], [(_, Down::RegResp { code: 0 })]));
    let fits = raw::frame(
        9,
        Up::Im {
            msg: "m".repeat(4096).into(),
        },
    );
    s.write_all(&fits).await.expect("IM of max_body");
    let answer = raw::read_downs(&mut s, &mut buf, 1).await;
    assert!(
        matches!(answer[..], [(9, Down::ImResp { .. })]),
        "{answer:?}"
    );
    let over = raw::frame(
        10,
        Up::Im {
            msg: "m".repeat(4097).into(),
        },
    );
    let _ = s.write_all(&over).await;
    assert!(raw::closed_within(&mut s, SOON).await);
    g.wait_until(&refused("max_body"), |v| v == 1.0).await;
}

#[tokio::test]
async fn connections_over_the_limits_are_closed_at_once() {
    let g = Gateway::start(&[("limits.connections_per_ip", "3")]).await;
    let from = |i: u8| Some(std::net::IpAddr::from([127, 0, 0, i]));
    let ping = [0x03, 0, 0, 0, 5];
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(raw::connect(&g.tcp, from(7), None).await);
    }
    let mut fourth = raw::connect(&g.tcp, from(7), None).await;
    assert!(raw::closed_within(&mut fourth, SOON).await);
    // Another address is not affected, nor are the three.
    let mut other = raw::connect(&g.tcp, from(8), None).await;
    other.write_all(&ping).await.expect("ping");
    let mut buf = bytes::BytesMut::new();
    let pong = raw::read_downs(&mut other, &mut buf, 1).await;
    assert!(
        matches!(pong[..], [(5, Down::Pong { code: 1 })]),
        "{pong:?}"
    );
    for s in &mut kept {
        s.write_all(&ping).await.expect("ping");
        let pong = raw::read_downs(s, &mut bytes::BytesMut::new(), 1).await;
        assert_eq!(pong.len(), 1);
    }
    assert_eq!(g.metric(&refused("connections_per_ip")).await, 1.0);
    // A closed connection gives its place back.
    drop(kept.pop());
    let deadline = Instant::now() + SOON;
    loop {
        let mut again = raw::connect(&g.tcp, from(7), None).await;
        again.write_all(&ping).await.expect("ping");
        if raw::read_downs(&mut again, &mut bytes::BytesMut::new(), 1)
            .await
            .len()
            == 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never given back");
    }

    let g = Gateway::start(&[("limits.max_connections", "4")]).await;
    let mut t = g.terminal("first", TermType::Android, TCP).await;
    let mut held = Vec::new();
    for i in 0..3 {
        // Answered, so the comet has taken it before the next one comes.
        let mut s = raw::connect(&g.tcp, from(10 + i), None).await;
        s.write_all(&ping).await.expect("ping");
        let pong = raw::read_downs(&mut s, &mut bytes::BytesMut::new(), 1).await;
        assert_eq!(pong.len(), 1);
        held.push(s);
    }
    let mut over = raw::connect(&g.tcp, from(20), None).await;
    assert!(raw::closed_within(&mut over, SOON).await);
    assert_eq!(g.metric(&refused("max_connections")).await, 1.0);
    g.send_down("push", "first", 1, "still served").await;
    assert_eq!(push(&next_acked(&mut t).await.1).2, "still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_listener_closes_only_its_own_connection() {
    let g = Gateway::start(&[("log.level", "warn")]).await;
    let mut tcp_bystander = g.terminal("tcp-b", TermType::Android, TCP).await;
    let mut web_bystander = g.terminal("web-b", TermType::Web, WEB).await;
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let host = |url: &str| url.trim_start_matches("http://").to_owned();
    let listeners = [g.tcp.clone(), g.ws.clone(), host(&g.http), host(&g.api)];
    for round in 0..200 {
        for (n, addr) in listeners.iter().enumerate() {
            let mut s = raw::connect(addr, Some(raw::source(round)), None).await;
            let mut junk: Vec<u8> = (0..rng.usize(1..2048)).map(|_| rng.u8(..)).collect();
            if n == 0 && round % 2 == 0 {
                // A frame header that parses, then nonsense: random type, TID and length.
                let head = [rng.u8(..), rng.u8(..), rng.u8(..), rng.u8(..), rng.u8(..)];
                junk.splice(0..0, head.iter().copied().chain(rng.u32(..).to_be_bytes()));
            }
            if n == 1 && round % 2 == 0 {
                // A proper upgrade, then random frames.
                junk.splice(0..0, upgrade(addr).into_bytes());
            }
            if n >= 2 && round % 2 == 0 {
                junk.splice(0..0, b"POST /pub?topic=push HTTP/1.1\r\n".iter().copied());
            }
            let _ = s.write_all(&junk).await;
            let _ = s.shutdown().await;
            assert!(
                raw::closed_within(&mut s, SOON).await,
                "round {round}: {addr} kept a garbage connection open"
            );
        }
    }
    assert!(g.alive());
    g.send_down("push", "tcp-b", 1, "after the garbage").await;
    g.send_down("push", "web-b", 8, "after the garbage").await;
    assert_eq!(
        push(&next_acked(&mut tcp_bystander).await.1).2,
        "after the garbage"
    );
    assert_eq!(
        push(&next_acked(&mut web_bystander).await.1).2,
        "after the garbage"
    );
    let r = reqwest::get(format!("{}/healthz", g.http))
        .await
        .expect("healthz");
    assert_eq!(r.status().as_u16(), 200);
}
