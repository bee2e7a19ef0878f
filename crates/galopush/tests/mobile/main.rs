//! End-to-end tests of SPEC §12 on `galopush standalone`: delivery reports of down-messages,
//! published to the business side's webhook for each receiving terminal. Each test starts the
//! real binary on its own ports and data directory.

#[path = "../common/mod.rs"]
mod common;
#[path = "../standalone/harness.rs"]
mod harness;

mod reports;
