//! Property tests: every frame type in every encoding survives encode → decode, whole and split
//! into arbitrary pieces; web messages survive both framings; bus messages survive raw and
//! base64; and no input, however random, makes a decoder panic.

use bytes::{Bytes, BytesMut};
use galopush_protocol::bus::{self, Downward, MsgUpward, Receiver, UserOnlineState};
use galopush_protocol::frame::{self, Frame};
use galopush_protocol::message::{Down, MessageType, Register, Up, WireMessage};
use galopush_protocol::web::{self, WebFraming};
use galopush_protocol::{ClientCodec, Encoding, ServerCodec};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn encoding() -> impl Strategy<Value = Encoding> {
    (0u8..4).prop_map(Encoding::from_bits)
}

fn body() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn text_body() -> impl Strategy<Value = Bytes> {
    ".{0,80}".prop_map(Bytes::from)
}

/// Up to 32 bytes of UTF-8 without NUL (the field is NUL-padded).
fn register_text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,32}".prop_filter("fits 32 bytes", |s| s.len() <= 32)
}

fn up_with(msg: BoxedStrategy<Bytes>) -> impl Strategy<Value = Up> {
    prop_oneof![
        (any::<u8>(), any::<u8>(), register_text(), register_text()).prop_map(
            |(version, term_type, id, token)| Up::Register(Register {
                version,
                term_type,
                id,
                token
            })
        ),
        Just(Up::Ping),
        any::<u8>().prop_map(|code| Up::PushResp { code }),
        any::<u8>().prop_map(|code| Up::CbResp { code }),
        msg.prop_map(|msg| Up::Im { msg }),
        any::<u8>().prop_map(|code| Up::ImResp { code }),
        any::<u8>().prop_map(|code| Up::KickResp { code }),
    ]
}

fn down_with(msg: BoxedStrategy<Bytes>) -> impl Strategy<Value = Down> {
    prop_oneof![
        any::<u8>().prop_map(|code| Down::RegResp { code }),
        any::<u8>().prop_map(|code| Down::Pong { code }),
        (any::<u16>(), any::<u8>(), msg.clone()).prop_map(|(offline, flag, msg)| Down::Push {
            offline,
            flag,
            msg
        }),
        msg.clone().prop_map(|msg| Down::Callback { msg }),
        (any::<u8>(), msg).prop_map(|(flag, msg)| Down::Im { flag, msg }),
        any::<u8>().prop_map(|code| Down::ImResp { code }),
        any::<u8>().prop_map(|reason| Down::Kick { reason }),
    ]
}

/// Decodes `wire` fed in pieces cut at `cuts` (positions modulo the length).
fn decode_in_pieces<M: WireMessage>(wire: &[u8], cuts: &[usize]) -> Vec<Frame<M>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    for p in points {
        buf.extend_from_slice(&wire[at..p]);
        at = p;
        while let Some(f) = frame::decode::<M>(&mut buf, u32::MAX).expect("valid stream") {
            out.push(f);
        }
    }
    assert!(buf.is_empty());
    out
}

proptest! {
    #[test]
    fn encodings_invert(enc in encoding(), data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut buf = data.clone();
        enc.encode(&mut buf);
        enc.decode(&mut buf);
        prop_assert_eq!(buf, data);
    }

    #[test]
    fn up_frames_round_trip(
        frames in proptest::collection::vec((encoding(), any::<u32>(), up_with(body().boxed())), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let frames: Vec<Frame<Up>> = frames.into_iter().map(|(e, t, m)| Frame::new(e, t, m)).collect();
        let mut wire = BytesMut::new();
        let mut codec = ClientCodec::default();
        for f in &frames {
            codec.encode(f, &mut wire).expect("encodes");
        }
        prop_assert_eq!(decode_in_pieces::<Up>(&wire, &cuts), frames.clone());
        let mut server = ServerCodec::new(u32::MAX);
        let mut whole = wire.clone();
        for f in &frames {
            prop_assert_eq!(server.decode(&mut whole).expect("decodes"), Some(f.clone()));
        }
    }

    #[test]
    fn down_frames_round_trip(
        frames in proptest::collection::vec((encoding(), any::<u32>(), down_with(body().boxed())), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let frames: Vec<Frame<Down>> = frames.into_iter().map(|(e, t, m)| Frame::new(e, t, m)).collect();
        let mut wire = BytesMut::new();
        let mut codec = ServerCodec::default();
        for f in &frames {
            codec.encode(f, &mut wire).expect("encodes");
        }
        prop_assert_eq!(decode_in_pieces::<Down>(&wire, &cuts), frames.clone());
        let mut client = ClientCodec::new(u32::MAX);
        let mut whole = wire.clone();
        for f in &frames {
            prop_assert_eq!(client.decode(&mut whole).expect("decodes"), Some(f.clone()));
        }
    }

    #[test]
    fn web_up_round_trips(tid in any::<u32>(), up in up_with(text_body().boxed()), plain in any::<bool>()) {
        let framing = if plain { WebFraming::Plain } else { WebFraming::Compatible };
        let text = web::encode_up(tid, &up, framing);
        prop_assert_eq!(WebFraming::detect(&text), framing);
        prop_assert_eq!(web::decode_up(&text, framing).expect("decodes"), (tid, up));
    }

    #[test]
    fn web_down_round_trips(tid in any::<u32>(), down in down_with(text_body().boxed()), plain in any::<bool>()) {
        let framing = if plain { WebFraming::Plain } else { WebFraming::Compatible };
        let text = web::encode_down(tid, &down, framing);
        prop_assert_eq!(WebFraming::detect(&text), framing);
        prop_assert_eq!(web::decode_down(&text, framing).expect("decodes"), (tid, down));
    }

    #[test]
    fn bus_messages_round_trip(
        uid in ".{0,20}", termtype in any::<u8>(), body in ".{0,50}", flag in any::<u8>(),
        online in any::<bool>(), base64 in any::<bool>(),
    ) {
        let state = UserOnlineState {
            uid: uid.clone(), termtype, code: body.clone(), device_token: body.clone(), online,
        };
        prop_assert_eq!(bus::decode::<UserOnlineState>(&bus::encode(&state, base64)).expect("state"), state);
        let down = Downward {
            receivers: vec![Receiver { uid: uid.clone(), termtype }].into(), flag, body: body.clone(),
            id: online.then(|| uid.clone()),
        };
        prop_assert_eq!(bus::decode::<Downward>(&bus::encode(&down, base64)).expect("downward"), down);
        let up = MsgUpward { uid, termtype, body };
        prop_assert_eq!(bus::decode::<MsgUpward>(&bus::encode(&up, base64)).expect("upward"), up);
    }

    #[test]
    fn random_bytes_never_panic_the_frame_decoders(
        data in proptest::collection::vec(any::<u8>(), 0..400),
        max in 0u32..2048,
    ) {
        let _ = frame::decode_slice::<Up>(&data, max);
        let _ = frame::decode_slice::<Down>(&data, max);
        let mut up = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = frame::decode::<Up>(&mut up, max) {}
        let mut down = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = frame::decode::<Down>(&mut down, max) {}
    }

    /// A reader with nothing buffered reads acks from the chunk they came in
    /// (`frame::decode_slice`): whatever it reads, how far, and every error, are `decode`'s.
    #[test]
    fn reading_from_a_slice_is_decoding_from_a_buffer(
        frames in proptest::collection::vec((encoding(), any::<u32>(), up_with(body().boxed())), 1..4),
        change in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
        cut in any::<prop::sample::Index>(),
        max in prop_oneof![Just(u32::MAX), 0u32..64],
    ) {
        let mut wire = BytesMut::new();
        for (encoding, tid, message) in frames {
            Frame::new(encoding, tid, message).encode(&mut wire).expect("encodes");
        }
        if let Some((at, byte)) = change {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        wire.truncate(cut.index(wire.len() + 1));
        let mut rest: &[u8] = &wire;
        loop {
            let mut buffered = BytesMut::from(rest);
            let decoded = frame::decode::<Up>(&mut buffered, max);
            match frame::decode_slice::<Up>(rest, max) {
                Ok(Some((frame, len))) => {
                    prop_assert_eq!(decoded.expect("decode agrees"), Some(frame));
                    prop_assert_eq!(buffered.len(), rest.len() - len, "the same length taken");
                    rest = &rest[len..];
                }
                Ok(None) => {
                    // Part of a frame (`decode` waits too), or a frame whose body is kept,
                    // which `decode` reads or refuses.
                    let kept = rest.first().is_some_and(|&b| {
                        matches!(MessageType::from_u8(b & 0x3f), Ok(MessageType::Register | MessageType::Im))
                    });
                    prop_assert!(kept || matches!(decoded, Ok(None)), "decode gave {:?}", decoded);
                    break;
                }
                Err(e) => {
                    prop_assert_eq!(decoded.expect_err("decode fails too").to_string(), e.to_string());
                    break;
                }
            }
        }
    }

    #[test]
    fn random_text_never_panics_the_web_decoders(text in ".{0,200}") {
        for framing in [WebFraming::Plain, WebFraming::Compatible] {
            let _ = web::decode_up(&text, framing);
            let _ = web::decode_down(&text, framing);
        }
    }
}
