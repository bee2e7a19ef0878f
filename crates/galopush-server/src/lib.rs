//! The galopush server parts (ARCHITECTURE.md): the comet (terminal connections), the router
//! (login records, routing, kicks, offline rules, dispatch), the bus (embedded and NSQ), the
//! store (embedded, memory, Redis), the link between router and comet, the HTTP surface, and
//! the phones' push services (APNs, FCM).
// One `unsafe` call, commented where it is (comet/idle.rs): registering the comet's own epoll
// set with the runtime, which parking quiet connections needs (about 1 KB less per idle
// terminal, BENCHMARKS.md). Everything else stays safe.
#![deny(unsafe_code)]

pub mod bus;
pub mod cluster;
pub mod comet;
pub mod config;
pub mod http;
pub mod link;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod phones;
pub mod router;
pub mod sharded;
pub mod standalone;
pub mod start;
pub mod store;
pub mod tls;
