//! Fuzz target: the binary frame decoder, both directions (`galopush_protocol::fuzzing::frame_decoder`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| galopush_protocol::fuzzing::frame_decoder(data));
