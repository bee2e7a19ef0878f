//! Checks every entry of `tests/data/vectors.json` (a copy of `shared/conformance/vectors.json`):
//! body encodings, whole binary frames in all four encodings, and compatible web frames.
//! Each entry is decoded, compared field by field, and re-encoded byte for byte.

use bytes::{Bytes, BytesMut};
use galopush_protocol::frame::{self, Frame};
use galopush_protocol::message::{Down, MessageType, Register, Up, WireMessage};
use galopush_protocol::web::{self, WebFraming};
use galopush_protocol::{DEFAULT_MAX_BODY, Encoding};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vectors.json");
    let text = std::fs::read_to_string(path).expect("tests/data/vectors.json is readable");
    serde_json::from_str(&text).expect("vectors.json is JSON")
}

fn list<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("vectors.json has a `{key}` list"))
}

fn unhex(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().expect("hex field is a string")).expect("valid hex")
}

fn num(fields: &Value, key: &str) -> u64 {
    fields[key]
        .as_u64()
        .unwrap_or_else(|| panic!("field {key} in {fields}"))
}

fn code(fields: &Value) -> u8 {
    num(fields, "code") as u8
}

fn msg(fields: &Value) -> Bytes {
    Bytes::from(fields["msg"].as_str().expect("msg is a string").to_owned())
}

fn up_from_fields(ty: u8, f: &Value) -> Up {
    match ty {
        1 => Up::Register(Register {
            version: num(f, "version") as u8,
            term_type: num(f, "termType") as u8,
            id: f["id"].as_str().expect("id").to_owned(),
            token: f["token"].as_str().expect("token").to_owned(),
        }),
        3 => Up::Ping,
        6 => Up::PushResp { code: code(f) },
        8 => Up::CbResp { code: code(f) },
        9 => Up::Im { msg: msg(f) },
        10 => Up::ImResp { code: code(f) },
        12 => Up::KickResp { code: code(f) },
        other => panic!("type {other} is not an up type"),
    }
}

fn down_from_fields(ty: u8, f: &Value) -> Down {
    match ty {
        2 => Down::RegResp { code: code(f) },
        4 => Down::Pong { code: code(f) },
        5 => Down::Push {
            offline: num(f, "offline") as u16,
            flag: num(f, "flag") as u8,
            msg: msg(f),
        },
        7 => Down::Callback { msg: msg(f) },
        9 => Down::Im {
            flag: num(f, "flag") as u8,
            msg: msg(f),
        },
        10 => Down::ImResp { code: code(f) },
        11 => Down::Kick {
            reason: num(f, "reason") as u8,
        },
        other => panic!("type {other} is not a down type"),
    }
}

/// Decodes `wire` whole and one byte at a time, checks it against `expected`, and re-encodes it.
fn check_frame<M: WireMessage + PartialEq + std::fmt::Debug>(
    name: &str,
    wire: &[u8],
    expected: Frame<M>,
) {
    let mut whole = BytesMut::from(wire);
    let decoded = frame::decode::<M>(&mut whole, DEFAULT_MAX_BODY)
        .unwrap_or_else(|e| panic!("{name}: decode failed: {e}"))
        .unwrap_or_else(|| panic!("{name}: frame incomplete"));
    assert_eq!(decoded, expected, "{name}: decoded fields");
    assert!(whole.is_empty(), "{name}: bytes left over");

    let mut trickle = BytesMut::new();
    let mut got = None;
    for (i, b) in wire.iter().enumerate() {
        trickle.extend_from_slice(&[*b]);
        let step = frame::decode::<M>(&mut trickle, DEFAULT_MAX_BODY)
            .unwrap_or_else(|e| panic!("{name}: byte-wise decode failed at {i}: {e}"));
        if let Some(f) = step {
            assert_eq!(i, wire.len() - 1, "{name}: frame ended early");
            got = Some(f);
        }
    }
    assert_eq!(got.as_ref(), Some(&expected), "{name}: byte-wise decode");

    let encoded = expected
        .to_bytes()
        .unwrap_or_else(|e| panic!("{name}: encode failed: {e}"));
    assert_eq!(
        hex::encode(&encoded),
        hex::encode(wire),
        "{name}: encoded bytes"
    );
    assert_eq!(expected.encoded_len(), wire.len(), "{name}: encoded_len");
}

#[test]
fn body_encodings_match_vectors() {
    let v = vectors();
    let entries = list(&v, "encodings");
    assert!(!entries.is_empty());
    for e in entries {
        let encoding = Encoding::from_bits(num(e, "encoding") as u8);
        assert_eq!(encoding.bits() as u64, num(e, "encoding"));
        let plain = unhex(e, "plain_hex");
        let encoded = unhex(e, "encoded_hex");
        let mut buf = plain.clone();
        encoding.encode(&mut buf);
        assert_eq!(buf, encoded, "encode {encoding:?} {}", hex::encode(&plain));
        encoding.decode(&mut buf);
        assert_eq!(buf, plain, "decode {encoding:?} {}", hex::encode(&encoded));
    }
    for encoding in Encoding::ALL {
        assert!(
            entries
                .iter()
                .any(|e| num(e, "encoding") == encoding.bits() as u64),
            "no vector for {encoding:?}"
        );
    }
}

#[test]
fn frames_match_vectors() {
    let v = vectors();
    let entries = list(&v, "frames");
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        let name = format!(
            "{} (encoding {})",
            e["name"].as_str().expect("name"),
            num(e, "encoding")
        );
        let ty = num(e, "type") as u8;
        let tid = num(e, "tid") as u32;
        let encoding = Encoding::from_bits(num(e, "encoding") as u8);
        let wire = unhex(e, "wire_hex");
        assert_eq!(wire[0] & 0x3f, ty, "{name}: type in header");
        assert!(MessageType::from_u8(ty).is_ok(), "{name}: type {ty}");
        match e["direction"].as_str() {
            Some("up") => {
                let f = Frame::new(encoding, tid, up_from_fields(ty, &e["fields"]));
                check_frame(&name, &wire, f);
            }
            Some("down") => {
                let f = Frame::new(encoding, tid, down_from_fields(ty, &e["fields"]));
                check_frame(&name, &wire, f);
            }
            other => panic!("{name}: direction {other:?}"),
        }
        seen.insert((ty, encoding.bits()));
    }
    for ty in 1..=12u8 {
        for encoding in Encoding::ALL {
            assert!(
                seen.contains(&(ty, encoding.bits())),
                "no frame vector for type {ty} in {encoding:?}"
            );
        }
    }
}

#[test]
fn web_frames_match_vectors() {
    let v = vectors();
    let entries = list(&v, "web");
    assert!(!entries.is_empty());
    for e in entries {
        let json = e["json"].as_str().expect("json");
        let wire = e["wire_text"].as_str().expect("wire_text");
        assert_eq!(WebFraming::detect(wire), WebFraming::Compatible, "{json}");
        assert_eq!(WebFraming::detect(json), WebFraming::Plain, "{json}");
        assert_eq!(
            WebFraming::Compatible.wrap(json.as_bytes().to_vec()),
            wire,
            "wrap {json}"
        );
        let unwrapped = WebFraming::Compatible.unwrap(wire).expect("unwrap");
        assert_eq!(&*unwrapped, json.as_bytes(), "unwrap {wire}");

        let cmd = serde_json::from_str::<Value>(json).expect("json")["cmd"]
            .as_u64()
            .expect("cmd") as u8;
        let ty = MessageType::from_u8(cmd).expect("known cmd");
        if ty.is_up() {
            let (tid, up) = web::decode_up(wire, WebFraming::Compatible)
                .unwrap_or_else(|err| panic!("decode_up {json}: {err}"));
            assert_eq!(web::up_json(tid, &up), json.as_bytes(), "up JSON {json}");
            assert_eq!(web::encode_up(tid, &up, WebFraming::Compatible), wire);
            assert_eq!(web::encode_up(tid, &up, WebFraming::Plain), json);
            assert_eq!(
                web::decode_up(json, WebFraming::Plain).expect("plain"),
                (tid, up)
            );
        } else {
            let (tid, down) = web::decode_down(wire, WebFraming::Compatible)
                .unwrap_or_else(|err| panic!("decode_down {json}: {err}"));
            assert_eq!(
                web::down_json(tid, &down),
                json.as_bytes(),
                "down JSON {json}"
            );
            assert_eq!(web::encode_down(tid, &down, WebFraming::Compatible), wire);
            assert_eq!(web::encode_down(tid, &down, WebFraming::Plain), json);
            assert_eq!(
                web::decode_down(json, WebFraming::Plain).expect("plain"),
                (tid, down)
            );
        }
    }
}
