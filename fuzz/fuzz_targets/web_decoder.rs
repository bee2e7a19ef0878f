//! Fuzz target: the WebSocket message decoders, both framings and both directions. Any panic is
//! a bug; a decoded message must decode again from its own encoding.
#![no_main]

use galopush_protocol::web::{self, WebFraming};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for framing in [WebFraming::detect(text), WebFraming::Plain, WebFraming::Compatible] {
        if let Ok((tid, up)) = web::decode_up(text, framing) {
            let again = web::encode_up(tid, &up, framing);
            assert_eq!(web::decode_up(&again, framing).ok(), Some((tid, up)));
        }
        if let Ok((tid, down)) = web::decode_down(text, framing) {
            let again = web::encode_down(tid, &down, framing);
            assert_eq!(web::decode_down(&again, framing).ok(), Some((tid, down)));
        }
    }
});
