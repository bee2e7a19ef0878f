//! Fuzz target: the bus JSON of every topic, raw or base64 (`galopush_protocol::fuzzing::bus_json`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| galopush_protocol::fuzzing::bus_json(data));
