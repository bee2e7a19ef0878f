//! Fuzz target: `/mpub` splitting (`galopush_protocol::fuzzing::mpub`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| galopush_protocol::fuzzing::mpub(data));
