//! The fuzz targets' inputs replayed without fuzzing, on the stable toolchain: every seed under
//! `fuzz/seeds/<target>/` and every input a fuzzer once crashed on, kept under
//! `fuzz/regressions/<target>/`, goes through the same check the target runs (the crates'
//! `fuzzing` modules), so a crash found once stays fixed.

use std::path::{Path, PathBuf};

/// Runs `check` on every file of the target's seeds and regressions; there must be seeds.
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let seeds = files(&fuzz.join("seeds").join(target));
    assert!(!seeds.is_empty(), "no seeds for {target}");
    let regressions = files(&fuzz.join("regressions").join(target));
    for path in seeds.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{target} fails on {}", path.display());
        }
    }
}

/// The files of `dir`, none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
}

#[test]
fn frame_decoder() {
    replay("frame_decoder", galopush_protocol::fuzzing::frame_decoder);
}

#[test]
fn web_decoder() {
    replay("web_decoder", galopush_protocol::fuzzing::web_decoder);
}

#[test]
fn bus_json() {
    replay("bus_json", galopush_protocol::fuzzing::bus_json);
}

#[test]
fn mpub() {
    replay("mpub", galopush_protocol::fuzzing::mpub);
}

#[test]
fn nsq_frame_decoder() {
    replay("nsq_frame_decoder", galopush_nsq::fuzzing::frame_decoder);
}

#[test]
fn redis_replies() {
    replay(
        "redis_replies",
        galopush_server::store::redis::fuzzing::redis_replies,
    );
}
