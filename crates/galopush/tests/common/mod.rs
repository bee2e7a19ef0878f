//! What the end-to-end test binaries (standalone, NSQ, cluster, bench) share: the `galopush`
//! process they start, and the terminal helpers their tests read messages with.
// Each test binary includes this module and uses its own part of it.
#![allow(dead_code)]

pub mod pki;
pub mod process;
pub mod redis;
pub mod terminal;
