//! Browser tests (SPEC §13): the real `galopush standalone`, and its pages in a real headless
//! Chromium driven over WebDriver — the demo web terminal (built on the browser SDK) registers,
//! receives a push and acks it, sends an IM up to the webhook; the operator console shows the
//! comet and a user, sends a push a TCP terminal receives, and logs that terminal out (KICK 4).
//! Each test leaves a screenshot under `<target>/browser-screenshots/` for a person to look at.

#[path = "../common/mod.rs"]
mod common;
#[path = "../standalone/harness.rs"]
mod harness;

mod console;
mod demo;
mod driver;
