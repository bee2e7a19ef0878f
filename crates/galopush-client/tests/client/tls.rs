//! Terminals over TLS: the binary protocol inside TLS and WebSocket over TLS (WSS) against fake
//! comets with a certificate from a test CA; terminals that do not trust it, or verify another
//! name, fail with a TLS error; CA files, good and bad.

use std::time::Duration;

use bytes::Bytes;
use galopush_client::{
    CaError, ClientError, Down, Encoding, TermType, Terminal, Transport, Trust, Up, WebFraming,
};
use rustls::{CertificateError, HandshakeKind};
use rustls_pki_types::pem;

use crate::fake::{TcpComet, WebComet, bounded, tls_refuser};
use crate::pki::Pki;

#[tokio::test]
async fn registers_receives_and_acks_with_the_binary_protocol_inside_tls() {
    let pki = Pki::localhost();
    let comet = TcpComet::bind_tls(pki.acceptor()).await;
    let addr = comet.addr();
    let server = tokio::spawn(async move {
        let (mut conn, register, encoding) = comet.accept_registered().await;
        assert_eq!(encoding, Encoding::RingXor);
        assert_eq!(register.id, "tls-user");
        assert_eq!(register.token, "tls-token");
        let push = Down::Push {
            offline: 0,
            flag: 1,
            msg: Bytes::from_static(b"over tls"),
        };
        conn.send(encoding, 51, push).await;
        let ack = conn.next().await;
        assert_eq!((ack.tid, ack.message), (51, Up::PushResp { code: 0 }));
        let ping = conn.next().await;
        assert_eq!(ping.message, Up::Ping);
        conn.send(encoding, ping.tid, Down::Pong { code: 0 }).await;
        conn.peer
    });

    let transport = Transport::Tcp {
        encoding: Encoding::RingXor,
    };
    let mut terminal = bounded(
        "connect",
        Terminal::connect_tls(&addr, transport, &pki.tls(), None),
    )
    .await
    .expect("connect over TLS");
    let code = bounded(
        "register",
        terminal.register("tls-user", "tls-token", TermType::Android),
    )
    .await
    .expect("register");
    assert_eq!(code, 0);
    let (tid, push) = bounded("recv", terminal.recv())
        .await
        .expect("recv")
        .expect("a message");
    assert_eq!(tid, 51);
    assert!(
        matches!(&push, Down::Push { msg, .. } if msg.as_ref() == b"over tls"),
        "{push:?}"
    );
    terminal.ack(tid, &push).await.expect("ack");
    assert_eq!(bounded("ping", terminal.ping()).await.expect("ping"), 0);
    let peer = server.await.expect("fake comet");
    assert_eq!(peer, terminal.local_addr());
    terminal.close().await.expect("close with close_notify");
}

#[tokio::test]
async fn registers_receives_and_acks_over_wss_in_both_framings() {
    let pki = Pki::localhost();
    for framing in [WebFraming::Compatible, WebFraming::Plain] {
        let comet = WebComet::bind_tls(pki.acceptor()).await;
        let addr = comet.addr();
        let server = tokio::spawn(async move {
            let mut conn = comet.accept().await;
            assert_eq!(conn.path, "/ws");
            let (tid, register) = conn.next().await;
            assert_eq!(conn.framing, Some(framing));
            let Up::Register(register) = register else {
                panic!("expected REGISTER, got {register:?}");
            };
            assert_eq!(register.id, "wss-user");
            conn.send(tid, &Down::RegResp { code: 0 }).await;
            let callback = Down::Callback {
                msg: Bytes::from_static(b"over wss"),
            };
            conn.send(61, &callback).await;
            assert_eq!(conn.next().await, (61, Up::CbResp { code: 0 }));
            let (im_tid, im) = conn.next().await;
            assert_eq!(
                im,
                Up::Im {
                    msg: Bytes::from_static(b"up over wss")
                }
            );
            conn.send(im_tid, &Down::ImResp { code: 0 }).await;
            conn.close().await;
        });

        let mut terminal = bounded(
            "connect",
            Terminal::connect_tls(&addr, Transport::Web { framing }, &pki.tls(), None),
        )
        .await
        .expect("connect over WSS");
        let code = bounded(
            "register",
            terminal.register("wss-user", "wss-token", TermType::Web),
        )
        .await
        .expect("register");
        assert_eq!(code, 0);
        let (tid, callback) = bounded("recv", terminal.recv())
            .await
            .expect("recv")
            .expect("a message");
        assert_eq!(tid, 61);
        terminal.ack(tid, &callback).await.expect("ack");
        let im_tid = terminal
            .send_im(Bytes::from_static(b"up over wss"))
            .await
            .expect("send IM");
        let answer = bounded("IMRESP", terminal.recv())
            .await
            .expect("recv")
            .expect("a message");
        assert_eq!(answer, (im_tid, Down::ImResp { code: 0 }));
        let end = bounded("recv after close", terminal.recv())
            .await
            .expect("a clean close");
        assert_eq!(end, None, "{framing:?}");
        server.await.expect("fake comet");
    }
}

#[tokio::test]
async fn a_terminal_that_does_not_trust_the_ca_fails_with_a_tls_error() {
    let pki = Pki::localhost();
    let stranger = Pki::localhost();
    let transports = [
        Transport::Tcp {
            encoding: Encoding::None,
        },
        Transport::Web {
            framing: WebFraming::Plain,
        },
    ];
    for transport in transports {
        let (addr, server) = tls_refuser(pki.acceptor()).await;
        let result = bounded(
            "connect",
            Terminal::connect_tls(&addr, transport, &stranger.tls(), None),
        )
        .await;
        let error = result.expect_err("a certificate from an unknown CA is refused");
        let text = error.to_string();
        match error {
            ClientError::TlsHandshake {
                addr: failed,
                source: rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            } => assert_eq!(failed, addr),
            other => panic!("expected an unknown issuer, got {other:?}"),
        }
        assert_eq!(
            text,
            format!("TLS handshake with {addr} failed: invalid peer certificate: UnknownIssuer"),
            "{transport:?}"
        );
        server.await.expect("fake comet");
    }
}

#[tokio::test]
async fn the_certificate_is_verified_for_the_host_or_the_name_given() {
    let pki = Pki::for_names(&["comet.test"]);
    let transport = Transport::Tcp {
        encoding: Encoding::None,
    };

    let (addr, server) = tls_refuser(pki.acceptor()).await;
    let refused = bounded(
        "connect",
        Terminal::connect_tls(&addr, transport, &pki.tls(), None),
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(ClientError::TlsHandshake {
                source: rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                ),
                ..
            })
        ),
        "a certificate for comet.test is not one for 127.0.0.1: {refused:?}"
    );
    server.await.expect("fake comet");

    let comet = TcpComet::bind_tls(pki.acceptor()).await;
    let addr = comet.addr();
    let server = tokio::spawn(async move { comet.accept_registered().await.1 });
    let tls = pki
        .tls()
        .with_server_name("comet.test")
        .expect("a DNS name");
    let mut terminal = bounded(
        "connect",
        Terminal::connect_tls(&addr, transport, &tls, None),
    )
    .await
    .expect("the certificate is valid for the name given");
    let code = bounded("register", terminal.register("named", "t", TermType::Pc))
        .await
        .expect("register");
    assert_eq!(code, 0);
    assert_eq!(server.await.expect("fake comet").id, "named");

    assert!(matches!(
        pki.tls().with_server_name("not a name"),
        Err(ClientError::ServerName(name)) if name == "not a name"
    ));
}

#[tokio::test]
async fn sessions_resume_unless_resumption_is_off() {
    let pki = Pki::localhost();
    for (tls, second) in [
        (pki.tls(), HandshakeKind::Resumed),
        (pki.tls().without_resumption(), HandshakeKind::Full),
    ] {
        let comet = TcpComet::bind_tls(pki.acceptor()).await;
        let addr = comet.addr();
        let server = tokio::spawn(async move {
            let mut kinds = Vec::new();
            for _ in 0..2 {
                kinds.push(comet.accept_registered().await.0.handshake);
            }
            kinds
        });
        let transport = Transport::Tcp {
            encoding: Encoding::BitNot,
        };
        for uid in ["first", "second"] {
            let mut terminal = bounded(
                "connect",
                Terminal::connect_tls(&addr, transport, &tls, None),
            )
            .await
            .expect("connect");
            // The REGRESP comes after the session tickets, so they are in by then.
            let code = bounded("register", terminal.register(uid, "t", TermType::Ios))
                .await
                .expect("register");
            assert_eq!(code, 0);
        }
        let kinds = server.await.expect("fake comet");
        assert_eq!(kinds, [Some(HandshakeKind::Full), Some(second)]);
    }
}

#[tokio::test]
async fn a_ca_file_is_read_and_a_bad_one_is_named() {
    let pki = Pki::localhost();
    let file = pki.ca_file();
    let trust = Trust::ca_file(file.path()).expect("a PEM CA file");
    let comet = TcpComet::bind_tls(pki.acceptor()).await;
    let addr = comet.addr();
    let server = tokio::spawn(async move { comet.accept_registered().await.1 });
    let tls = galopush_client::Tls::new(&trust).expect("TLS configuration");
    let transport = Transport::Tcp {
        encoding: Encoding::None,
    };
    let mut terminal = bounded(
        "connect",
        Terminal::connect_tls(&addr, transport, &tls, None),
    )
    .await
    .expect("the CA of the file is trusted");
    let code = bounded(
        "register",
        terminal.register("filed", "t", TermType::Android),
    )
    .await
    .expect("register");
    assert_eq!(code, 0);
    server.await.expect("fake comet");

    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("missing.pem");
    let error = Trust::ca_file(&missing).expect_err("no such file");
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "the error names the file: {error}"
    );
    assert!(
        matches!(&error, ClientError::CaFile { path, source: CaError::Pem(pem::Error::Io(_)) } if *path == missing),
        "{error:?}"
    );

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    assert!(matches!(
        Trust::ca_file(&empty),
        Err(ClientError::CaFile {
            source: CaError::NoCertificate,
            ..
        })
    ));

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    assert!(matches!(
        Trust::ca_file(&garbage),
        Err(ClientError::CaFile {
            source: CaError::Certificate { index: 0, .. },
            ..
        })
    ));

    assert!(matches!(
        Trust::ca_certs([]),
        Err(ClientError::Ca(CaError::NoCertificate))
    ));
}

#[tokio::test]
async fn a_listener_that_closes_during_the_handshake_is_a_tls_handshake_error() {
    let pki = Pki::localhost();
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let server = tokio::spawn(async move {
        // A plain comet takes the ClientHello for a bad frame and closes the connection.
        drop(comet.accept().await);
    });
    let result = bounded(
        "connect",
        Terminal::connect_tls(
            &addr,
            Transport::Tcp {
                encoding: Encoding::None,
            },
            &pki.tls(),
            None,
        ),
    )
    .await;
    match result {
        Err(ClientError::TlsHandshakeIo { addr: failed, .. }) => assert_eq!(failed, addr),
        other => panic!("expected a handshake cut short, got {other:?}"),
    }
    server.await.expect("fake comet");
}

#[tokio::test]
async fn a_plain_comet_is_not_mistaken_for_a_tls_one() {
    let pki = Pki::localhost();
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let server = tokio::spawn(async move {
        let mut conn = comet.accept().await;
        // A plain comet reads the ClientHello as a frame and answers with bytes that are not
        // TLS.
        conn.send_bytes(b"not a TLS record at all").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let result = bounded(
        "connect",
        Terminal::connect_tls(
            &addr,
            Transport::Tcp {
                encoding: Encoding::None,
            },
            &pki.tls(),
            None,
        ),
    )
    .await;
    assert!(
        matches!(result, Err(ClientError::TlsHandshake { .. })),
        "{result:?}"
    );
    server.await.expect("fake comet");
}
