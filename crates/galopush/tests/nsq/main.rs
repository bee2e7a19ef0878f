//! End-to-end tests of `galopush standalone` on the NSQ bus (SPEC §7, `bus.kind = "nsq"`):
//! each starts a protocol-level fake nsqd and nsqlookupd and the real binary, publishes into
//! nsqd as the business side does, and checks what terminals receive and what galopush
//! FINished, REQueued and published.

#[path = "../common/mod.rs"]
mod common;

mod harness;

mod delivery;
mod outbound;
mod requeue;
mod restart;
mod store;
mod tls;
