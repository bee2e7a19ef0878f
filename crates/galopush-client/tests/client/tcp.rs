//! Terminals on the binary TCP protocol: REGISTER in each encoding, acks, IMs, the queue of
//! frames that arrive while waiting for an answer, and the error paths.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::Bytes;
use galopush_client::{ClientError, Down, Encoding, TermType, Terminal, Transport, Up};

use crate::fake::{TcpComet, bounded};

fn tcp(encoding: Encoding) -> Transport {
    Transport::Tcp { encoding }
}

#[tokio::test]
async fn registers_in_each_encoding() {
    for encoding in Encoding::ALL {
        let comet = TcpComet::bind().await;
        let addr = comet.addr();
        let server = tokio::spawn(async move {
            let mut conn = comet.accept().await;
            let frame = conn.next().await;
            assert_eq!(frame.encoding, encoding);
            let Up::Register(register) = frame.message else {
                panic!("expected REGISTER, got {:?}", frame.message);
            };
            assert_eq!(register.version, 1);
            assert_eq!(register.term_type, TermType::Android.bit());
            assert_eq!(register.id, "user-1");
            assert_eq!(register.token, "secret-token");
            conn.send(encoding, frame.tid, Down::RegResp { code: 0 })
                .await;
        });

        let mut terminal = Terminal::connect(&addr, tcp(encoding))
            .await
            .expect("connect");
        let code = bounded(
            "register",
            terminal.register("user-1", "secret-token", TermType::Android),
        )
        .await
        .expect("register");
        assert_eq!(code, 0, "{encoding:?}");
        server.await.expect("fake comet");
    }
}

#[tokio::test]
async fn acks_each_down_message_with_its_tid() {
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let downs = [
        (
            100,
            Down::Push {
                offline: 2,
                flag: 1,
                msg: Bytes::from_static(b"push body"),
            },
        ),
        (
            101,
            Down::Callback {
                msg: Bytes::from_static(b"callback body"),
            },
        ),
        (
            102,
            Down::Im {
                flag: 0,
                msg: Bytes::from_static(b"im body"),
            },
        ),
        (103, Down::Kick { reason: 1 }),
    ];
    let sent = downs.clone();
    let server = tokio::spawn(async move {
        let (mut conn, _, encoding) = comet.accept_registered().await;
        let mut acks = Vec::new();
        for (tid, down) in sent {
            conn.send(encoding, tid, down).await;
            let ack = conn.next().await;
            assert_eq!(ack.encoding, encoding);
            acks.push((ack.tid, ack.message));
        }
        acks
    });

    let mut terminal = Terminal::connect(&addr, tcp(Encoding::PairSwap))
        .await
        .expect("connect");
    let code = bounded("register", terminal.register("u", "t", TermType::Pc))
        .await
        .expect("register");
    assert_eq!(code, 0);
    for expected in &downs {
        let received = bounded("recv", terminal.recv())
            .await
            .expect("recv")
            .expect("a message");
        assert_eq!(&received, expected);
        terminal.ack(received.0, &received.1).await.expect("ack");
    }

    let acks = server.await.expect("fake comet");
    assert_eq!(
        acks,
        vec![
            (100, Up::PushResp { code: 0 }),
            (101, Up::CbResp { code: 0 }),
            (102, Up::ImResp { code: 0 }),
            (103, Up::KickResp { code: 0 }),
        ]
    );
}

#[tokio::test]
async fn im_round_trip() {
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let server = tokio::spawn(async move {
        let (mut conn, _, encoding) = comet.accept_registered().await;
        let im = conn.next().await;
        assert_eq!(im.encoding, Encoding::RingXor);
        assert_eq!(
            im.message,
            Up::Im {
                msg: Bytes::from_static(b"hello, business")
            }
        );
        conn.send(encoding, im.tid, Down::ImResp { code: 0 }).await;
        im.tid
    });

    let mut terminal = Terminal::connect(&addr, tcp(Encoding::RingXor))
        .await
        .expect("connect");
    bounded("register", terminal.register("u", "t", TermType::Ios))
        .await
        .expect("register");
    let tid = terminal
        .send_im(Bytes::from_static(b"hello, business"))
        .await
        .expect("send IM");
    let answer = bounded("IMRESP", terminal.recv())
        .await
        .expect("recv")
        .expect("a message");
    assert_eq!(answer, (tid, Down::ImResp { code: 0 }));
    assert_eq!(server.await.expect("fake comet"), tid);
}

#[tokio::test]
async fn frames_arriving_during_register_and_ping_come_out_of_recv_in_order() {
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let push = Down::Push {
        offline: 3,
        flag: 0,
        msg: Bytes::from_static(b"stored push"),
    };
    let callback = Down::Callback {
        msg: Bytes::from_static(b"stored callback"),
    };
    let im = Down::Im {
        flag: 1,
        msg: Bytes::from_static(b"live im"),
    };
    let (p, c, i) = (push.clone(), callback.clone(), im.clone());
    let server = tokio::spawn(async move {
        let mut conn = comet.accept().await;
        let register = conn.next().await;
        let encoding = register.encoding;
        conn.send(encoding, 7, p).await;
        conn.send(encoding, 8, c).await;
        conn.send(encoding, register.tid, Down::RegResp { code: 0 })
            .await;
        let ping = conn.next().await;
        assert_eq!(ping.message, Up::Ping);
        conn.send(encoding, 9, i).await;
        conn.send(encoding, ping.tid, Down::Pong { code: 0 }).await;
        conn.send(encoding, 10, Down::Kick { reason: 2 }).await;
    });

    let mut terminal = Terminal::connect(&addr, tcp(Encoding::BitNot))
        .await
        .expect("connect");
    let code = bounded("register", terminal.register("u", "t", TermType::Android))
        .await
        .expect("register");
    assert_eq!(code, 0);
    let pong = bounded("ping", terminal.ping()).await.expect("ping");
    assert_eq!(pong, 0);
    let mut received = Vec::new();
    for _ in 0..4 {
        received.push(
            bounded("recv", terminal.recv())
                .await
                .expect("recv")
                .expect("a message"),
        );
    }
    assert_eq!(
        received,
        vec![
            (7, push),
            (8, callback),
            (9, im),
            (10, Down::Kick { reason: 2 })
        ]
    );
    server.await.expect("fake comet");
    let end = bounded("recv after close", terminal.recv())
        .await
        .expect("a clean close");
    assert_eq!(end, None);
}

#[tokio::test]
async fn refused_register_returns_its_code_and_recv_sees_the_close() {
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let server = tokio::spawn(async move {
        let mut conn = comet.accept().await;
        let register = conn.next().await;
        conn.send(register.encoding, register.tid, Down::RegResp { code: 3 })
            .await;
    });

    let mut terminal = Terminal::connect(&addr, tcp(Encoding::None))
        .await
        .expect("connect");
    let code = bounded("register", terminal.register("u", "wrong", TermType::Web))
        .await
        .expect("register");
    assert_eq!(code, 3);
    server.await.expect("fake comet");
    let end = bounded("recv", terminal.recv())
        .await
        .expect("a clean close");
    assert_eq!(end, None);
}

#[tokio::test]
async fn register_on_a_closed_connection_is_closed_error() {
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let server = tokio::spawn(async move {
        let mut conn = comet.accept().await;
        conn.next().await;
    });

    let mut terminal = Terminal::connect(&addr, tcp(Encoding::None))
        .await
        .expect("connect");
    let result = bounded("register", terminal.register("u", "t", TermType::Web)).await;
    server.await.expect("fake comet");
    assert!(matches!(result, Err(ClientError::Closed)), "{result:?}");
}

#[tokio::test]
async fn an_answer_with_another_tid_is_unexpected() {
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let server = tokio::spawn(async move {
        let mut conn = comet.accept().await;
        let register = conn.next().await;
        conn.send(
            register.encoding,
            register.tid.wrapping_add(1),
            Down::RegResp { code: 0 },
        )
        .await;
    });

    let mut terminal = Terminal::connect(&addr, tcp(Encoding::None))
        .await
        .expect("connect");
    let result = bounded("register", terminal.register("u", "t", TermType::Web)).await;
    server.await.expect("fake comet");
    assert!(
        matches!(result, Err(ClientError::Unexpected(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_undecodable_frame_is_an_error() {
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let server = tokio::spawn(async move {
        let (mut conn, _, _) = comet.accept_registered().await;
        // Type 1 (REGISTER) only travels up.
        conn.send_bytes(&[0x01, 0, 0, 0, 1, 0, 0, 0, 0]).await;
        conn
    });

    let mut terminal = Terminal::connect(&addr, tcp(Encoding::None))
        .await
        .expect("connect");
    bounded("register", terminal.register("u", "t", TermType::Pc))
        .await
        .expect("register");
    let result = bounded("recv", terminal.recv()).await;
    assert!(matches!(result, Err(ClientError::Frame(_))), "{result:?}");
    drop(server.await.expect("fake comet"));
}

#[tokio::test]
async fn recv_timeout_times_out_and_loses_nothing() {
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut conn, _, encoding) = comet.accept_registered().await;
        wait.await.expect("go");
        conn.send(encoding, 5, Down::Kick { reason: 3 }).await;
        conn
    });

    let mut terminal = Terminal::connect(&addr, tcp(Encoding::None))
        .await
        .expect("connect");
    bounded("register", terminal.register("u", "t", TermType::WinPhone))
        .await
        .expect("register");
    let wait = Duration::from_millis(50);
    let result = terminal.recv_timeout(wait).await;
    assert!(
        matches!(result, Err(ClientError::Timeout(d)) if d == wait),
        "{result:?}"
    );
    go.send(()).expect("fake comet waiting");
    let kick = terminal
        .recv_timeout(crate::fake::BOUND)
        .await
        .expect("recv");
    assert_eq!(kick, Some((5, Down::Kick { reason: 3 })));
    drop(server.await.expect("fake comet"));
}

#[tokio::test]
async fn connect_from_binds_the_source_ip() {
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let server = tokio::spawn(async move { comet.accept().await.peer });

    let terminal = Terminal::connect_from(&addr, tcp(Encoding::None), Some(source))
        .await
        .expect("connect");
    assert_eq!(terminal.local_addr().ip(), source);
    let peer = server.await.expect("fake comet");
    assert_eq!(peer, terminal.local_addr());
    terminal.close().await.expect("close");
}

#[tokio::test]
async fn send_raw_writes_the_bytes_as_they_are() {
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let server = tokio::spawn(async move {
        let mut conn = comet.accept().await;
        conn.next().await
    });

    let mut terminal = Terminal::connect(&addr, tcp(Encoding::None))
        .await
        .expect("connect");
    // A PING in bit-not encoding with TID 7: header byte, TID, no length.
    terminal
        .send_raw(&[0x43, 0, 0, 0, 7])
        .await
        .expect("send raw");
    let frame = server.await.expect("fake comet");
    assert_eq!(frame.encoding, Encoding::BitNot);
    assert_eq!(frame.tid, 7);
    assert_eq!(frame.message, Up::Ping);
    let result = terminal.send_text("{}").await;
    assert!(matches!(result, Err(ClientError::WebOnly(_))), "{result:?}");
}
