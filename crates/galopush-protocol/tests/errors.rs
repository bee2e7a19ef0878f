//! Bad input gets a typed error, never a panic: frames a terminal must not send, oversized
//! lengths (refused before any room is reserved), short bodies, invalid text, over-long REGISTER
//! fields, and malformed web and bus messages.

use bytes::{BufMut, Bytes, BytesMut};
use galopush_protocol::bus::{self, Downward, SessionTimeout, UserOnlineState};
use galopush_protocol::frame::{self, Frame};
use galopush_protocol::message::{Down, MessageType, Register, Up};
use galopush_protocol::web::{self, WebFraming};
use galopush_protocol::{EncodeError, Encoding, FrameError, WebError};

fn decode_up(bytes: &[u8]) -> Result<Option<Frame<Up>>, FrameError> {
    frame::decode::<Up>(&mut BytesMut::from(bytes), 1024)
}

#[test]
fn type_zero_is_refused_from_the_first_byte() {
    assert!(matches!(decode_up(&[0x00]), Err(FrameError::ZeroType)));
    assert!(matches!(
        decode_up(&[0xc0, 1, 2]),
        Err(FrameError::ZeroType)
    ));
}

#[test]
fn unknown_types_are_refused() {
    for ty in 13u8..64 {
        assert!(
            matches!(decode_up(&[ty]), Err(FrameError::UnknownType(t)) if t == ty),
            "type {ty}"
        );
    }
}

#[test]
fn server_only_types_from_a_terminal_are_refused() {
    for ty in [2u8, 4, 5, 7, 11] {
        let wire = [ty, 0, 0, 0, 1, 0, 0, 0, 1, 0];
        match decode_up(&wire) {
            Err(FrameError::WrongDirection(t)) => assert_eq!(t as u8, ty),
            other => panic!("type {ty}: {other:?}"),
        }
    }
    for ty in [1u8, 3, 6, 8, 12] {
        let wire = [ty, 0, 0, 0, 1, 0, 0, 0, 1, 0];
        let got = frame::decode::<Down>(&mut BytesMut::from(&wire[..]), 1024);
        assert!(
            matches!(got, Err(FrameError::WrongDirection(_))),
            "type {ty}"
        );
    }
}

#[test]
fn oversized_length_is_refused_before_reserving() {
    let mut src = BytesMut::with_capacity(16);
    src.put_slice(&[9, 0, 0, 0, 1]);
    src.put_u32(u32::MAX);
    let before = src.capacity();
    let got = frame::decode::<Up>(&mut src, 1024 * 1024);
    assert!(matches!(
        got,
        Err(FrameError::BodyTooLong {
            len: u32::MAX,
            max: 1048576
        })
    ));
    assert_eq!(
        src.capacity(),
        before,
        "no room reserved for a refused body"
    );
}

#[test]
fn length_at_the_limit_waits_for_the_body() {
    let mut src = BytesMut::new();
    src.put_slice(&[9, 0, 0, 0, 1]);
    src.put_u32(1024);
    assert!(matches!(frame::decode::<Up>(&mut src, 1024), Ok(None)));
    src.put_bytes(b'x', 1024);
    let f = frame::decode::<Up>(&mut src, 1024)
        .expect("ok")
        .expect("whole");
    assert_eq!(
        f.message,
        Up::Im {
            msg: Bytes::from(vec![b'x'; 1024])
        }
    );
}

#[test]
fn short_register_body_is_refused() {
    let mut wire = vec![1, 0, 0, 0, 1, 0, 0, 0, 65];
    wire.extend(std::iter::repeat_n(b'a', 65));
    assert!(matches!(
        decode_up(&wire),
        Err(FrameError::BodyTooShort {
            ty: MessageType::Register,
            len: 65,
            need: 66
        })
    ));
}

#[test]
fn empty_ack_body_is_refused() {
    let wire = [6, 0, 0, 0, 1, 0, 0, 0, 0];
    assert!(matches!(
        decode_up(&wire),
        Err(FrameError::BodyTooShort { .. })
    ));
}

#[test]
fn register_id_that_is_not_utf8_is_refused() {
    let mut wire = vec![1, 0, 0, 0, 1, 0, 0, 0, 66, 1, 1, 0xff, 0xfe];
    wire.extend(std::iter::repeat_n(0, 64));
    assert!(matches!(
        decode_up(&wire),
        Err(FrameError::InvalidText { field: "id" })
    ));
}

#[test]
fn register_with_a_longer_body_reads_the_fields() {
    let reg = Register {
        version: 1,
        term_type: 16,
        id: "u".into(),
        token: "t".into(),
    };
    let mut wire = BytesMut::new();
    Frame::new(Encoding::None, 5, Up::Register(reg.clone()))
        .encode(&mut wire)
        .expect("encodes");
    wire[8] = 70;
    wire.put_slice(b"more");
    let f = frame::decode::<Up>(&mut wire, 1024)
        .expect("ok")
        .expect("whole");
    assert_eq!(f.message, Up::Register(reg));
}

#[test]
fn register_fields_longer_than_32_bytes_are_refused_when_encoding() {
    let long = "x".repeat(33);
    for (id, token, field) in [
        (long.clone(), "t".to_owned(), "id"),
        ("u".to_owned(), long.clone(), "token"),
    ] {
        let f = Frame::new(
            Encoding::None,
            1,
            Up::Register(Register {
                version: 1,
                term_type: 1,
                id,
                token,
            }),
        );
        let mut dst = BytesMut::from(&b"keep"[..]);
        match f.encode(&mut dst) {
            Err(EncodeError::FieldTooLong {
                field: got,
                len: 33,
                max: 32,
            }) => assert_eq!(got, field),
            other => panic!("{field}: {other:?}"),
        }
        assert_eq!(&dst[..], b"keep", "nothing appended on error");
    }
    let exact = Register {
        version: 1,
        term_type: 1,
        id: "y".repeat(32),
        token: "z".repeat(32),
    };
    let wire = Frame::new(Encoding::RingXor, 1, Up::Register(exact.clone()))
        .to_bytes()
        .expect("fits");
    let back = frame::decode::<Up>(&mut BytesMut::from(&wire[..]), 1024)
        .expect("ok")
        .expect("whole");
    assert_eq!(back.message, Up::Register(exact));
}

#[test]
fn web_missing_fields_are_typed_errors() {
    let cases = [
        (r#"{"tid":1,"data":{}}"#, "cmd"),
        (r#"{"cmd":3,"data":{}}"#, "tid"),
    ];
    for (json, field) in cases {
        match web::decode_up(json, WebFraming::Plain) {
            Err(WebError::MissingEnvelopeField(f)) => assert_eq!(f, field),
            other => panic!("{json}: {other:?}"),
        }
    }
    let cases = [
        (
            r#"{"cmd":1,"tid":1,"data":{"version":1,"id":"a","token":"b"}}"#,
            "termType",
        ),
        (
            r#"{"cmd":1,"tid":1,"data":{"termType":8,"token":"b"}}"#,
            "id",
        ),
        (r#"{"cmd":6,"tid":1,"data":{}}"#, "code"),
        (r#"{"cmd":6,"tid":1}"#, "code"),
        (r#"{"cmd":9,"tid":1,"data":{"message":"x"}}"#, "msg"),
    ];
    for (json, field) in cases {
        match web::decode_up(json, WebFraming::Plain) {
            Err(WebError::MissingField { field: f, .. }) => assert_eq!(f, field, "{json}"),
            other => panic!("{json}: {other:?}"),
        }
    }
}

#[test]
fn web_ping_without_data_and_unknown_fields_are_accepted() {
    assert_eq!(
        web::decode_up(r#"{"cmd":3,"tid":7}"#, WebFraming::Plain).expect("ping"),
        (7, Up::Ping)
    );
    let json = r#"{"cmd":6,"tid":2,"extra":true,"data":{"code":0,"note":"x"}}"#;
    assert_eq!(
        web::decode_up(json, WebFraming::Plain).expect("ack"),
        (2, Up::PushResp { code: 0 })
    );
}

#[test]
fn web_bad_input_is_refused() {
    assert!(matches!(
        web::decode_up("%%%", WebFraming::Compatible),
        Err(WebError::Base64(_))
    ));
    assert!(matches!(
        web::decode_up("{not json", WebFraming::Plain),
        Err(WebError::Json(_))
    ));
    assert!(matches!(
        web::decode_up(r#"{"cmd":99,"tid":1}"#, WebFraming::Plain),
        Err(WebError::UnknownCmd(99))
    ));
    assert!(matches!(
        web::decode_up(r#"{"cmd":5,"tid":1,"data":{"msg":"x"}}"#, WebFraming::Plain),
        Err(WebError::WrongDirection(MessageType::Push))
    ));
}

#[test]
fn bus_messages_are_read_raw_or_base64_with_spec_field_names() {
    let raw = br#"{"uid":"u1","termtype":1,"code":"c","deviceToken":"d","online":true,"x":1}"#;
    let state: UserOnlineState = bus::decode(raw).expect("raw");
    assert_eq!(state.device_token, "d");
    let b64 = bus::encode(&state, true);
    assert!(!b64.starts_with(b"{"));
    assert_eq!(bus::decode::<UserOnlineState>(&b64).expect("base64"), state);
    assert_eq!(
        bus::encode(&state, false),
        br#"{"uid":"u1","termtype":1,"code":"c","deviceToken":"d","online":true}"#
    );

    let st = br#"{"backTopic":"back","key":"k","msg":{"ctype":2,"uid":"u","sessionId":"s","flag":0,"more":[1]},"z":"keep"}"#;
    let mut timeout: SessionTimeout = bus::decode(st).expect("sessionTimeout");
    timeout.msg.flag = 1;
    let answer: serde_json::Value =
        serde_json::from_slice(&bus::encode(&timeout, false)).expect("json");
    assert_eq!(
        answer,
        serde_json::json!({"backTopic":"back","key":"k","msg":{"ctype":2,"uid":"u","sessionId":"s","flag":1,"more":[1]},"z":"keep"})
    );

    assert!(bus::decode::<Downward>(br#"{"receivers":[{"uid":"a"}],"body":"x"}"#).is_err());
    assert!(bus::decode::<Downward>(b"not base64 at all!").is_err());
    assert!(bus::decode::<Downward>(b"").is_err());
}
