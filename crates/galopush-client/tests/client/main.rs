//! Tests of the terminal SDK against fakes of the comet and the router's HTTP side.
#![forbid(unsafe_code)]

mod dispatch;
mod fake;
mod pki;
mod shell;
mod tcp;
mod tls;
mod web;
