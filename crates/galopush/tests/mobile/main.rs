//! End-to-end tests of SPEC §12 on `galopush standalone`: notifications to the phones' push
//! services (APNs and FCM, played by stand-ins in the test), and delivery reports of
//! down-messages, published to the business side's webhook for each receiving terminal. Each
//! test starts the real binary on its own ports and data directory.

#[path = "../common/mod.rs"]
mod common;
#[path = "../standalone/harness.rs"]
mod harness;

mod providers;
mod reports;
mod standin;
