//! SPEC §4: Web terminals over WebSocket, in the compatible (base64 + ring-xor) and plain
//! framings, detected from the first frame.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use galopush_client::Transport;
use galopush_protocol::TermType;
use galopush_protocol::message::Down;
use galopush_protocol::web::WebFraming;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test]
async fn web_terminal_in_both_framings() {
    let g = Gateway::start(&[]).await;
    for (uid, framing) in [("w1", WebFraming::Compatible), ("w2", WebFraming::Plain)] {
        let mut t = g
            .terminal(uid, TermType::Web, Transport::Web { framing })
            .await;
        assert_eq!(t.ping().await.expect("pong"), 0);
        g.send_down("push", uid, 8, "to the browser").await;
        let (_, down) = next_acked(&mut t).await;
        assert_eq!(
            push(&down),
            (0, 1, Bytes::from("to the browser")),
            "{framing:?}"
        );
        g.send_down("callback", uid, 8, "cb").await;
        assert_eq!(
            next_acked(&mut t).await.1,
            Down::Callback {
                msg: Bytes::from("cb")
            }
        );
    }
    g.wait_metric(
        "galopush_deliveries_total{kind=\"push\",outcome=\"acked\"}",
        2.0,
    )
    .await;
}

type RawWebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket on `/`, registered as Web terminal `uid` in the plain framing (open auth), its
/// REGRESP checked byte for byte.
async fn raw_web_terminal(g: &Gateway, uid: &str) -> RawWebSocket {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", g.ws))
        .await
        .expect("upgrade on /");
    ws.send(Message::text(format!(
        r#"{{"cmd":1,"tid":1,"data":{{"version":1,"termType":8,"id":"{uid}","token":"t"}}}}"#
    )))
    .await
    .expect("send");
    let answer = ws.next().await.expect("answer").expect("frame");
    assert_eq!(
        answer.to_text().expect("text"),
        r#"{"cmd":2,"tid":1,"data":{"code":0}}"#
    );
    ws
}

/// The server answers in the framing the terminal used, byte for byte as SPEC §4 shows.
#[tokio::test]
async fn raw_websocket_frames_are_answered_in_kind() {
    let g = Gateway::start(&[("auth.mode", "open")]).await;
    let mut ws = raw_web_terminal(&g, "raw").await;

    let (mut compat, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", g.ws))
        .await
        .expect("upgrade on /ws");
    // The register frame of the conformance vectors (termType 8, id 13996130360, token 000000).
    compat
        .send(Message::text(
            "blk6VzMRKxo2FGAJbU91RGhKLk87WnhCORttCHoJYA9hQ3lIZEYyVyVIHGUVcFJoUHxeN1NxS2lYa1JrXWxfb1xqWnhUdgJtBmMNLxU3BzcHNwc3FWgV",
        ))
        .await
        .expect("send");
    let answer = compat.next().await.expect("answer").expect("frame");
    // REGRESP 0 with TID 1, compatible framing (the vector's bytes).
    assert_eq!(
        answer.to_text().expect("text"),
        "Rlk6VzMRKxk1F2MKbkx2R2tJLUw4WXtBOhh7FHAVNw09QD0="
    );

    // A kick carries `reason` and, for old clients, `reson`.
    g.login("raw", TermType::Web, "new").await;
    let kick = ws.next().await.expect("kick").expect("frame");
    assert_eq!(
        kick.to_text()
            .expect("text")
            .split_once(r#""data":"#)
            .map(|(_, d)| d),
        Some(r#"{"reason":1,"reson":1}}"#)
    );
}

#[tokio::test]
async fn upgrade_on_another_path_is_refused() {
    let g = Gateway::start(&[]).await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/other", g.ws)).await;
    assert!(refused.is_err());
}

/// Down-messages that leave together are each their own text frame, whole and in order, and a
/// pong the server owes goes out between frames, never inside one.
#[tokio::test]
async fn messages_written_together_are_separate_frames_in_order() {
    let g = Gateway::start(&[("auth.mode", "open")]).await;
    let mut ws = raw_web_terminal(&g, "many").await;

    const N: usize = 40;
    let lines: Vec<String> = (0..N)
        .map(|i| {
            format!(r#"{{"receivers":[{{"uid":"many","termtype":8}}],"flag":0,"body":"m{i}"}}"#)
        })
        .collect();
    let r = g
        .client()
        .post(format!("{}/mpub", g.api))
        .query(&[("topic", "push")])
        .body(lines.join("\n"))
        .send()
        .await
        .expect("POST /mpub");
    assert_eq!(r.status().as_u16(), 200);
    ws.send(Message::Ping(Bytes::from_static(b"still there?")))
        .await
        .expect("ping");

    let mut bodies = Vec::new();
    let mut pongs = 0;
    while bodies.len() < N {
        let frame = tokio::time::timeout(SOON, ws.next())
            .await
            .expect("the pushes arrive")
            .expect("open")
            .expect("a whole frame");
        match frame {
            Message::Text(text) => {
                let (_, down) = galopush_protocol::web::decode_down(&text, WebFraming::Plain)
                    .expect("a down-message");
                bodies.push(push(&down).2);
            }
            Message::Pong(data) => {
                assert_eq!(&data[..], b"still there?");
                pongs += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: Vec<Bytes> = (0..N).map(|i| Bytes::from(format!("m{i}"))).collect();
    assert_eq!(bodies, expected);
    if pongs == 0 {
        let pong = tokio::time::timeout(SOON, ws.next())
            .await
            .expect("the pong arrives")
            .expect("open")
            .expect("frame");
        assert!(matches!(pong, Message::Pong(_)), "{pong:?}");
    }
}
