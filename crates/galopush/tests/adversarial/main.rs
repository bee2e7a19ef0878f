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

use galopush_client::Terminal;

use crate::common::process::rss_kib;
use crate::harness::{Gateway, next_acked, push};

/// The series counting refusals for one `[limits]` key.
fn refused(reason: &str) -> String {
    format!("galopush_refused_total{{reason=\"{reason}\"}}")
}

/// After an attack: the gateway's memory grew by less than `bound_kib` since `rss_before`,
/// and `bystander` (uid `uid`, a terminal type in `mask`) still gets a push.
async fn still_serves(
    g: &Gateway,
    rss_before: u64,
    bound_kib: u64,
    bystander: &mut Terminal,
    uid: &str,
    mask: u8,
) {
    let grown = rss_kib(g.pid()).saturating_sub(rss_before);
    assert!(
        grown < bound_kib,
        "RSS grew by {grown} KiB (bound {bound_kib} KiB)"
    );
    g.send_down("push", uid, mask, "still served").await;
    assert_eq!(push(&next_acked(bystander).await.1).2, "still served");
}
