//! Protocol-level fakes of nsqd and nsqlookupd on 127.0.0.1, for tests (cargo feature
//! `fake`). They speak the real wire protocols, so the client under test runs unchanged.

mod lookupd;
mod nsqd;

pub use lookupd::FakeLookupd;
pub use nsqd::{ChannelStats, FakeNsqd, FakeNsqdOptions, ServerStats};
