//! Fuzz target: the binary frame decoder, both directions, fed the input in pieces whose sizes
//! come from the input itself. Any panic is a bug; a decoded frame must encode to bytes that
//! decode to the same frame (not always the same bytes: a code message may carry trailing bytes
//! the decoder ignores).
#![no_main]

use bytes::BytesMut;
use galopush_protocol::frame;
use galopush_protocol::message::{Down, Up, WireMessage};
use std::fmt::Debug;
use libfuzzer_sys::fuzz_target;

fn run<M: WireMessage + PartialEq + Debug>(data: &[u8], step: usize, max_body: u32) {
    let mut buf = BytesMut::new();
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match frame::decode::<M>(&mut buf, max_body) {
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

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(control % 16) + 1;
    let max_body = u32::from(control) * 64;
    run::<Up>(rest, step, max_body);
    run::<Down>(rest, step, max_body);
});
