//! The JavaScript SDK of web/sdk (SPEC §4, §5, §8; issue 14) under `cargo test`: its Node tests
//! (the framings against the conformance vectors, the client against a fake gateway) and its
//! type check, with `npm ci` first when its node_modules is missing or older than its lock file.
//! Without Node 20+ and npm the test is skipped outside CI and fails in CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The Node major version the SDK supports from.
const MIN_NODE: u32 = 20;

/// The SDK's folder.
fn sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../web/sdk")
        .canonicalize()
        .expect("web/sdk")
}

/// Whether Node (at least [`MIN_NODE`]) and npm run here. Outside CI a missing tool skips the
/// test with a line saying so; in CI it fails it.
fn node_or_skip() -> bool {
    let node = Command::new("node").arg("--version").output();
    let major = node
        .as_ref()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| {
            let version = String::from_utf8_lossy(&out.stdout);
            version
                .trim()
                .trim_start_matches('v')
                .split('.')
                .next()?
                .parse::<u32>()
                .ok()
        });
    let npm = Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    let missing = match major {
        None => Some("node is not installed".to_owned()),
        Some(major) if major < MIN_NODE => Some(format!("node {major} is older than {MIN_NODE}")),
        Some(_) if !npm => Some("npm is not installed".to_owned()),
        Some(_) => None,
    };
    let Some(missing) = missing else {
        return true;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{missing} (required in CI)"
    );
    eprintln!("SKIPPED: {missing}; install Node {MIN_NODE}+ and npm to run the web SDK's tests");
    false
}

/// Runs `npm args` in the SDK's folder and fails with its output unless it succeeds.
fn npm(args: &[&str]) -> Output {
    let out = Command::new("npm")
        .args(args)
        .current_dir(sdk())
        .output()
        .expect("run npm");
    assert!(
        out.status.success(),
        "npm {} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `npm ci` once per run, when node_modules is missing or older than package-lock.json (npm
/// writes node_modules/.package-lock.json on every install). Under a lock on package-lock.json:
/// test runners that run each test in a process of its own (nextest) would otherwise run two
/// `npm ci` at once, and one would delete what the other installs.
fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let lock_file = std::fs::File::open(sdk().join("package-lock.json")).expect("lock file");
        lock_file.lock().expect("lock package-lock.json");
        let modified = |path: PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let lock = modified(sdk().join("package-lock.json"));
        let installed = modified(sdk().join("node_modules/.package-lock.json"));
        if installed.is_none() || installed < lock {
            npm(&["ci", "--no-audit", "--no-fund"]);
        }
    });
}

#[test]
fn the_sdk_passes_its_node_tests() {
    if !node_or_skip() {
        return;
    }
    install();
    let out = npm(&["test"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.lines().any(|l| l.starts_with("# pass ")) && report.contains("# fail 0"),
        "npm test did not report its tests:\n{report}"
    );
}

#[test]
fn the_sdk_type_checks() {
    if !node_or_skip() {
        return;
    }
    install();
    npm(&["run", "check"]);
}
