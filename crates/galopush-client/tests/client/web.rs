//! Terminals on WebSocket, in both framings: the path, what the text frames look like, REGISTER,
//! acks, PING, IM, raw and text frames, and the close.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use galopush_client::{Down, Encoding, TermType, Terminal, Transport, Up, WebFraming};
use tokio_tungstenite::tungstenite::Message;

use crate::fake::{WebComet, bounded};

/// Checks that a compatible frame is padded standard base64 of ring-xor'ed JSON.
fn assert_compatible_text(text: &str) {
    assert!(!text.starts_with('{'), "not base64: {text}");
    let mut json = STANDARD.decode(text).expect("standard padded base64");
    Encoding::RingXor.decode(&mut json);
    let value: serde_json::Value = serde_json::from_slice(&json).expect("JSON inside");
    assert!(value.get("cmd").is_some(), "{value}");
}

#[tokio::test]
async fn registers_acks_pings_and_sends_ims_in_both_framings() {
    for framing in [WebFraming::Compatible, WebFraming::Plain] {
        let comet = WebComet::bind().await;
        let addr = comet.addr();
        let server = tokio::spawn(async move {
            let mut conn = comet.accept().await;
            assert_eq!(conn.path, "/ws");

            let first = conn.next_text().await;
            match framing {
                WebFraming::Compatible => assert_compatible_text(&first),
                WebFraming::Plain => assert!(first.starts_with('{'), "{first}"),
            }
            conn.framing = Some(WebFraming::detect(&first));
            assert_eq!(conn.framing, Some(framing));
            let (tid, up) = galopush_protocol::web::decode_up(&first, framing).expect("REGISTER");
            let Up::Register(register) = up else {
                panic!("expected REGISTER, got {up:?}");
            };
            assert_eq!(register.version, 1);
            assert_eq!(register.term_type, TermType::Web.bit());
            assert_eq!(register.id, "web-user");
            assert_eq!(register.token, "web-token");
            conn.send(tid, &Down::RegResp { code: 0 }).await;

            let push = Down::Push {
                offline: 0,
                flag: 1,
                msg: Bytes::from_static(b"web push"),
            };
            conn.send(41, &push).await;
            assert_eq!(conn.next().await, (41, Up::PushResp { code: 0 }));

            let (ping_tid, ping) = conn.next().await;
            assert_eq!(ping, Up::Ping);
            conn.send(ping_tid, &Down::Pong { code: 0 }).await;

            let (im_tid, im) = conn.next().await;
            assert_eq!(
                im,
                Up::Im {
                    msg: Bytes::from_static(b"from the browser")
                }
            );
            conn.send(im_tid, &Down::ImResp { code: 1 }).await;
            conn.close().await;
        });

        let mut terminal = Terminal::connect(&addr, Transport::Web { framing })
            .await
            .expect("connect");
        let code = bounded(
            "register",
            terminal.register("web-user", "web-token", TermType::Web),
        )
        .await
        .expect("register");
        assert_eq!(code, 0);

        let (tid, push) = bounded("recv", terminal.recv())
            .await
            .expect("recv")
            .expect("a message");
        assert_eq!(tid, 41);
        assert_eq!(
            push,
            Down::Push {
                offline: 0,
                flag: 1,
                msg: Bytes::from_static(b"web push"),
            }
        );
        terminal.ack(tid, &push).await.expect("ack");

        assert_eq!(bounded("ping", terminal.ping()).await.expect("ping"), 0);

        let im_tid = terminal
            .send_im(Bytes::from_static(b"from the browser"))
            .await
            .expect("send IM");
        let answer = bounded("IMRESP", terminal.recv())
            .await
            .expect("recv")
            .expect("a message");
        assert_eq!(answer, (im_tid, Down::ImResp { code: 1 }));

        let end = bounded("recv after close", terminal.recv())
            .await
            .expect("a clean close");
        assert_eq!(end, None, "{framing:?}");
        server.await.expect("fake comet");
    }
}

#[tokio::test]
async fn send_text_and_send_raw_put_frames_as_they_are() {
    let comet = WebComet::bind().await;
    let addr = comet.addr();
    let server = tokio::spawn(async move {
        let mut conn = comet.accept().await;
        let text = conn.next_message().await;
        let raw_text = conn.next_message().await;
        let raw_binary = conn.next_message().await;
        (text, raw_text, raw_binary)
    });

    let mut terminal = Terminal::connect(
        &addr,
        Transport::Web {
            framing: WebFraming::Plain,
        },
    )
    .await
    .expect("connect");
    terminal.send_text("not json").await.expect("send text");
    terminal
        .send_raw(b"{\"cmd\":3")
        .await
        .expect("send raw text");
    terminal
        .send_raw(&[0xff, 0xfe, 0x00])
        .await
        .expect("send raw binary");
    let (text, raw_text, raw_binary) = server.await.expect("fake comet");
    assert_eq!(text, Message::text("not json"));
    assert_eq!(raw_text, Message::text("{\"cmd\":3"));
    assert_eq!(
        raw_binary,
        Message::binary(Bytes::from_static(&[0xff, 0xfe, 0x00]))
    );
    terminal.close().await.expect("close");
}
