//! The adversarial suite (SPEC §8, §10): the real `galopush standalone`, attacked the way an
//! exposed service is — cross-origin pages, missing tokens, stalled and oversized requests,
//! floods, terminals that never read, garbage — and for each attack both the refusal and the
//! server's health afterwards: other terminals keep receiving, memory stays within a stated
//! bound, nothing accepted is lost.

#[path = "../common/mod.rs"]
mod common;
#[path = "../standalone/harness.rs"]
mod harness;

mod floods;
mod http;
mod raw;
mod terminals;
