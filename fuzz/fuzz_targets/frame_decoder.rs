//! Fuzz target: the binary frame decoder, both directions, fed the input in pieces whose sizes
//! come from the input itself. Any panic is a bug; decoded frames must re-encode to the bytes
//! they came from.
#![no_main]

use bytes::BytesMut;
use galopush_protocol::frame;
use galopush_protocol::message::{Down, Up, WireMessage};
use libfuzzer_sys::fuzz_target;

fn run<M: WireMessage>(data: &[u8], step: usize, max_body: u32) {
    let mut buf = BytesMut::new();
    let mut consumed = 0;
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match frame::decode::<M>(&mut buf, max_body) {
                Ok(Some(f)) => {
                    let taken = before - buf.len();
                    let wire = &data[consumed..consumed + taken];
                    consumed += taken;
                    // REGISTER bodies may be longer than 66 bytes or carry bytes after a NUL;
                    // everything else re-encodes exactly.
                    if let Ok(again) = f.to_bytes() {
                        if wire[0] & 0x3f != 1 {
                            assert_eq!(&again[..], wire);
                        }
                    }
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
