//! The properties the fuzz targets in `fuzz/` check, one function per target, so that the
//! corpus replay test (`crates/galopush/tests/fuzz_corpus.rs`) runs the very same checks on a
//! stable toolchain. Each function takes any bytes; a panic is a bug.

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bus::{self, Downward, MsgUpward, SessionTimeout, UserOnlineState};
use crate::frame;
use crate::message::{Down, Up, WireMessage};
use crate::web::{self, WebFraming};

/// The binary frame decoder, both directions, fed the input after its first byte in pieces
/// whose size and body limit come from that first byte. A decoded frame must encode to bytes
/// that decode to the same frame (not always the same bytes: a code message may carry trailing
/// bytes the decoder ignores), and what the slice reader reads must be what it decodes.
pub fn frame_decoder(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(control % 16) + 1;
    let max_body = u32::from(control) * 64;
    frames::<Up>(rest, step, max_body);
    frames::<Down>(rest, step, max_body);
}

fn frames<M: WireMessage + PartialEq + Debug>(data: &[u8], step: usize, max_body: u32) {
    let mut buf = BytesMut::new();
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let sliced = frame::decode_slice::<M>(&buf, max_body);
            let before = buf.len();
            let decoded = frame::decode::<M>(&mut buf, max_body);
            match (&sliced, &decoded) {
                (Ok(Some((s, len))), Ok(Some(d))) => {
                    assert_eq!(s, d, "decode_slice reads what decode reads");
                    assert_eq!(before - buf.len(), *len, "and takes as many bytes");
                }
                (Ok(Some(_)), _) => panic!("decode_slice read a frame decode did not"),
                (Err(s), Err(d)) => assert_eq!(s.to_string(), d.to_string()),
                (Err(_), Ok(_)) => panic!("decode_slice refused what decode took"),
                (Ok(None), _) => {}
            }
            match decoded {
                Ok(Some(f)) => {
                    let again = f.to_bytes().expect("a decoded frame encodes");
                    let mut again = BytesMut::from(&again[..]);
                    let back = frame::decode::<M>(&mut again, u32::MAX)
                        .expect("an encoded frame decodes")
                        .expect("an encoded frame is whole");
                    assert_eq!(back, f);
                    assert!(again.is_empty());
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// The WebSocket message decoders, both framings and both directions: a decoded message must
/// decode again from its own encoding.
pub fn web_decoder(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for framing in [
        WebFraming::detect(text),
        WebFraming::Plain,
        WebFraming::Compatible,
    ] {
        if let Ok((tid, up)) = web::decode_up(text, framing) {
            let again = web::encode_up(tid, &up, framing);
            assert_eq!(web::decode_up(&again, framing).ok(), Some((tid, up)));
        }
        if let Ok((tid, down)) = web::decode_down(text, framing) {
            let again = web::encode_down(tid, &down, framing);
            assert_eq!(web::decode_down(&again, framing).ok(), Some((tid, down)));
        }
    }
}

/// The bus body of every topic (SPEC §7: `userOnlineState`; `push`, `callback` and
/// `msgDownward`; `sessionTimeout`; `msgUpward`), raw or base64: a message read must read back
/// the same from what it writes, raw and base64.
pub fn bus_json(data: &[u8]) {
    round_trip::<UserOnlineState>(data);
    round_trip::<Downward>(data);
    // Down-messages' own reader reads what serde_json reads, or leaves the text to it.
    assert_eq!(
        bus::decode_downward(data).ok(),
        bus::decode::<Downward>(data).ok()
    );
    round_trip::<SessionTimeout>(data);
    round_trip::<MsgUpward>(data);
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    let Ok(msg) = bus::decode::<T>(data) else {
        return;
    };
    for base64 in [false, true] {
        let again = bus::encode(&msg, base64);
        assert_eq!(bus::decode::<T>(&again).ok().as_ref(), Some(&msg));
    }
}

/// `/mpub` splitting: the messages are exactly the non-empty lines, each without its `\r\n`
/// or `\n`, in order.
pub fn mpub(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    let messages = bus::split_mpub(&body);
    let expected: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty())
        .collect();
    assert_eq!(messages, expected);
}
