//! Fuzz target: the Redis store's hand-written reply and stored-value readers
//! (`galopush_server::store::redis::fuzzing::redis_replies`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| galopush_server::store::redis::fuzzing::redis_replies(data));
