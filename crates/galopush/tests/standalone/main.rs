//! End-to-end tests of `galopush standalone` (SPEC §3–§10, §13): each starts the real binary on its
//! own ports and data directory and talks to it over real sockets, as terminals and as the
//! business side.

#[path = "../common/mod.rs"]
mod common;

mod harness;

mod admin;
mod bus;
mod delivery;
mod errors;
mod http;
mod parking;
mod restart;
mod sessions;
mod web;
