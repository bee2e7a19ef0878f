//! The `galopush client` shell over in-memory input and output: what it prints, what it acks,
//! the IMs it sends, its PINGs, the login and dispatch, TLS, and how it ends.

use std::time::Duration;

use bytes::Bytes;
use galopush_client::shell::{self, DEFAULT_PING_INTERVAL, ShellOptions};
use galopush_client::{ClientError, Down, Encoding, TermType, Transport, Up, WebFraming};

use crate::fake::{TcpComet, WebComet, bounded, http_responder, https_responder};
use crate::pki::Pki;

fn options(addr: Option<String>, transport: Transport) -> ShellOptions {
    ShellOptions {
        http: "http://127.0.0.1:9".to_owned(),
        api: "http://127.0.0.1:9".to_owned(),
        api_token: None,
        uid: "shell-user".to_owned(),
        token: "shell-token".to_owned(),
        term: TermType::Android,
        transport,
        addr,
        login: false,
        ping_interval: DEFAULT_PING_INTERVAL,
        tls: false,
        ca: None,
    }
}

fn lines(output: &[u8]) -> Vec<String> {
    String::from_utf8(output.to_vec())
        .expect("UTF-8 output")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_shell_can_run_on_any_thread() {
    fn assert_send<T: Send>(_: T) {}
    let opts = options(
        None,
        Transport::Tcp {
            encoding: Encoding::None,
        },
    );
    assert_send(shell::run(opts, tokio::io::empty(), tokio::io::sink()));
}

#[tokio::test]
async fn prints_and_acks_a_push_then_returns_on_kick() {
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let server = tokio::spawn(async move {
        let (mut conn, register, encoding) = comet.accept_registered().await;
        assert_eq!(register.id, "shell-user");
        assert_eq!(register.token, "shell-token");
        assert_eq!(register.term_type, TermType::Android.bit());
        assert_eq!(encoding, Encoding::RingXor);
        conn.send(
            encoding,
            7,
            Down::Push {
                offline: 2,
                flag: 1,
                msg: Bytes::from_static(b"hello from the business"),
            },
        )
        .await;
        let ack = conn.next().await;
        assert_eq!((ack.tid, ack.message), (7, Up::PushResp { code: 0 }));
        conn.send(encoding, 8, Down::Kick { reason: 1 }).await;
        let ack = conn.next().await;
        assert_eq!((ack.tid, ack.message), (8, Up::KickResp { code: 0 }));
    });

    let mut output = Vec::new();
    let opts = options(
        Some(addr.clone()),
        Transport::Tcp {
            encoding: Encoding::RingXor,
        },
    );
    bounded("shell", shell::run(opts, tokio::io::empty(), &mut output))
        .await
        .expect("shell ends cleanly on KICK");
    server.await.expect("fake comet");
    assert_eq!(
        lines(&output),
        vec![
            format!("registered on {addr}"),
            "push tid=7 offline=2 flag=1: hello from the business".to_owned(),
            "kick reason=1".to_owned(),
        ]
    );
}

#[tokio::test]
async fn logs_in_dispatches_and_sends_input_lines_as_ims_over_web() {
    let comet = WebComet::bind().await;
    let comet_addr = comet.addr();
    let (http, router) =
        http_responder(vec![(200, String::new()), (200, comet_addr.clone())]).await;
    let server = tokio::spawn(async move {
        let mut conn = comet.accept().await;
        let (tid, register) = conn.next().await;
        assert_eq!(conn.framing, Some(WebFraming::Compatible));
        assert!(matches!(register, Up::Register(_)), "{register:?}");
        conn.send(tid, &Down::RegResp { code: 0 }).await;

        let (first_tid, first) = conn.next().await;
        assert_eq!(
            first,
            Up::Im {
                msg: Bytes::from_static(b"hello comet")
            }
        );
        conn.send(first_tid, &Down::ImResp { code: 0 }).await;
        let (second_tid, second) = conn.next().await;
        assert_eq!(
            second,
            Up::Im {
                msg: Bytes::from_static(b"second line")
            }
        );
        conn.send(second_tid, &Down::ImResp { code: 1 }).await;

        conn.send(
            9,
            &Down::Callback {
                msg: Bytes::from_static(b"a callback"),
            },
        )
        .await;
        assert_eq!(conn.next().await, (9, Up::CbResp { code: 0 }));
        conn.send(
            10,
            &Down::Im {
                flag: 0,
                msg: Bytes::from_static(b"an im"),
            },
        )
        .await;
        assert_eq!(conn.next().await, (10, Up::ImResp { code: 0 }));
        conn.close().await;
        (first_tid, second_tid)
    });

    let mut output = Vec::new();
    let mut opts = options(
        None,
        Transport::Web {
            framing: WebFraming::Compatible,
        },
    );
    opts.http = http.clone();
    opts.api = http;
    opts.api_token = Some("api-secret".to_owned());
    opts.term = TermType::Web;
    opts.login = true;
    let input: &[u8] = b"hello comet\n\nsecond line\r\n";
    bounded("shell", shell::run(opts, input, &mut output))
        .await
        .expect("shell ends cleanly when the comet closes");
    let (first_tid, second_tid) = server.await.expect("fake comet");

    let requests = router.await.expect("fake router");
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].target, "/pub?topic=userOnlineState");
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer api-secret"),
        "the login goes to the business API with its token"
    );
    assert_eq!(
        requests[1].authorization, None,
        "the dispatcher needs no token"
    );
    let login: serde_json::Value = serde_json::from_str(&requests[0].body).expect("raw JSON");
    assert_eq!(
        login,
        serde_json::json!({
            "uid": "shell-user",
            "termtype": 8,
            "code": "shell-token",
            "deviceToken": "",
            "online": true,
        })
    );
    assert_eq!(requests[1].target, "/v1/gComet.addr");
    assert_eq!(requests[1].body, "id=shell-user&termtype=Web");

    assert_eq!(
        lines(&output),
        vec![
            "logged in uid=shell-user termtype=Web".to_owned(),
            format!("registered on {comet_addr}"),
            format!("im sent tid={first_tid} accepted"),
            format!("im sent tid={second_tid} failed"),
            "callback tid=9: a callback".to_owned(),
            "im tid=10 flag=0: an im".to_owned(),
            "connection closed by the comet".to_owned(),
        ]
    );
}

#[tokio::test]
async fn pings_at_the_configured_interval() {
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let server = tokio::spawn(async move {
        let (mut conn, _, encoding) = comet.accept_registered().await;
        let ping = conn.next().await;
        assert_eq!(ping.message, Up::Ping);
        conn.send(encoding, ping.tid, Down::Pong { code: 0 }).await;
        conn.send(encoding, 3, Down::Kick { reason: 3 }).await;
    });

    let mut output = Vec::new();
    let mut opts = options(
        Some(addr.clone()),
        Transport::Tcp {
            encoding: Encoding::None,
        },
    );
    opts.ping_interval = Duration::from_millis(50);
    bounded("shell", shell::run(opts, tokio::io::empty(), &mut output))
        .await
        .expect("shell ends cleanly on KICK");
    server.await.expect("fake comet");
    assert_eq!(
        lines(&output),
        vec![format!("registered on {addr}"), "kick reason=3".to_owned()]
    );
}

#[tokio::test]
async fn a_refused_register_prints_the_code_and_fails() {
    let comet = TcpComet::bind().await;
    let addr = comet.addr();
    let server = tokio::spawn(async move {
        let mut conn = comet.accept().await;
        let register = conn.next().await;
        conn.send(register.encoding, register.tid, Down::RegResp { code: 3 })
            .await;
    });

    let mut output = Vec::new();
    let opts = options(
        Some(addr),
        Transport::Tcp {
            encoding: Encoding::BitNot,
        },
    );
    let result = bounded("shell", shell::run(opts, tokio::io::empty(), &mut output)).await;
    assert!(
        matches!(result, Err(ClientError::Rejected(3))),
        "{result:?}"
    );
    server.await.expect("fake comet");
    assert_eq!(lines(&output), vec!["register failed: code 3".to_owned()]);
}

#[tokio::test]
async fn with_tls_dispatches_with_tls_1_and_registers_over_tls_trusting_the_ca_file() {
    let pki = Pki::localhost();
    let comet = TcpComet::bind_tls(pki.acceptor()).await;
    let comet_addr = comet.addr();
    let (http, router) = https_responder(vec![(200, comet_addr.clone())], pki.acceptor()).await;
    let server = tokio::spawn(async move {
        let (mut conn, register, encoding) = comet.accept_registered().await;
        assert_eq!(register.id, "shell-user");
        assert_eq!(encoding, Encoding::PairSwap);
        conn.send(encoding, 4, Down::Kick { reason: 2 }).await;
        let ack = conn.next().await;
        assert_eq!((ack.tid, ack.message), (4, Up::KickResp { code: 0 }));
    });

    let ca = pki.ca_file();
    let mut output = Vec::new();
    let mut opts = options(
        None,
        Transport::Tcp {
            encoding: Encoding::PairSwap,
        },
    );
    opts.http = http;
    opts.tls = true;
    opts.ca = Some(ca.path().to_owned());
    bounded("shell", shell::run(opts, tokio::io::empty(), &mut output))
        .await
        .expect("shell ends cleanly on KICK");
    server.await.expect("fake comet");
    let requests = router.await.expect("fake router");
    assert_eq!(requests[0].target, "/v1/gComet.addr");
    assert_eq!(requests[0].body, "id=shell-user&termtype=Android&tls=1");
    assert_eq!(
        lines(&output),
        vec![
            format!("registered on {comet_addr} over TLS"),
            "kick reason=2".to_owned(),
        ]
    );
}

#[tokio::test]
async fn a_bad_ca_file_stops_the_shell_before_it_connects() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("ca.pem");
    let mut opts = options(
        Some("127.0.0.1:9".to_owned()),
        Transport::Tcp {
            encoding: Encoding::None,
        },
    );
    opts.tls = true;
    opts.ca = Some(missing.clone());
    let mut output = Vec::new();
    let result = bounded("shell", shell::run(opts, tokio::io::empty(), &mut output)).await;
    assert!(
        matches!(&result, Err(ClientError::CaFile { path, .. }) if *path == missing),
        "{result:?}"
    );
    assert!(output.is_empty());
}
