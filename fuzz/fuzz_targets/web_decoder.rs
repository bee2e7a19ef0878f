//! Fuzz target: the WebSocket message decoders, both framings (`galopush_protocol::fuzzing::web_decoder`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| galopush_protocol::fuzzing::web_decoder(data));
