//! Fuzz target: the decoder of nsqd's frames (`galopush_nsq::fuzzing::frame_decoder`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| galopush_nsq::fuzzing::frame_decoder(data));
