//! The repository documents itself: README's and docs/'s links resolve inside the repository,
//! `galopush --version` names the commit, `galopush config` checks and prints configurations,
//! and the systemd units of deploy/systemd pass `systemd-analyze verify` where it is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn galopush(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_galopush"))
        .args(args)
        .env_remove("GALOPUSH_API__TOKEN")
        .output()
        .expect("run galopush")
}

/// The targets of a Markdown text's inline links, `[text](target)`.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = markdown;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn every_link_of_readme_and_docs_resolves_inside_the_repository() {
    let root = root();
    let mut pages = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("page");
        for target in link_targets(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            if path.is_empty() {
                continue;
            }
            let resolved = page
                .parent()
                .expect("a page's folder")
                .join(path)
                .canonicalize()
                .unwrap_or_else(|_| panic!("{}: link to {target} leads nowhere", page.display()));
            assert!(
                resolved.starts_with(&root),
                "{}: link to {target} leaves the repository",
                page.display()
            );
            checked += 1;
        }
        assert!(
            !text.contains("../shared/"),
            "{} refers outside the repository",
            page.display()
        );
    }
    assert!(checked > 5, "only {checked} links found");
}

#[test]
fn the_version_names_the_commit() {
    let out = galopush(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(concat!("galopush ", env!("CARGO_PKG_VERSION"), " (")),
        "{text}"
    );
    let commit = text
        .trim()
        .rsplit_once('(')
        .map(|(_, c)| c.trim_end_matches(')'))
        .unwrap_or_default();
    let hash = commit.trim_end_matches("-modified");
    assert!(
        hash == "unknown" || (hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit())),
        "{text}"
    );
}

#[test]
fn every_example_config_in_deploy_is_valid() {
    let mut checked = 0;
    for dir in ["deploy/local", "deploy/multi-host", "deploy/tls"] {
        for entry in std::fs::read_dir(root().join(dir)).expect(dir) {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            // The secrets an operator sets in the environment, as the files say.
            let out = Command::new(env!("CARGO_BIN_EXE_galopush"))
                .args(["config", "--check"])
                .arg(&path)
                .env("GALOPUSH_API__TOKEN", "a-token")
                .env("GALOPUSH_CLUSTER__SECRET", "a-secret")
                .current_dir(root())
                .output()
                .expect("run galopush");
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} example configs found");
}

#[test]
fn config_checks_files_and_prints_every_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defaults = galopush(&["config", "--defaults"]);
    assert!(defaults.status.success());
    let file = dir.path().join("defaults.toml");
    std::fs::write(&file, &defaults.stdout).expect("write");
    let file = file.display().to_string();
    let checked = galopush(&["config", "--check", &file]);
    assert!(
        checked.status.success(),
        "the defaults file is a valid config"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nim_inflight = 0\n").expect("write");
    let checked = galopush(&["config", "--check", &bad.display().to_string()]);
    assert_eq!(checked.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&checked.stderr).contains("limits.im_inflight"));

    // The configuration in force: the file, then the environment; secrets redacted.
    let mine = dir.path().join("mine.toml");
    std::fs::write(
        &mine,
        "[comet]\nid = \"from-the-file\"\n[api]\ntoken = \"s3cret\"\n",
    )
    .expect("write");
    let shown = Command::new(env!("CARGO_BIN_EXE_galopush"))
        .args(["--config", &mine.display().to_string(), "config"])
        .env("GALOPUSH_LIMITS__IM_INFLIGHT", "3")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(text.contains("id = \"from-the-file\""), "{text}");
    assert!(text.contains("im_inflight = 3"), "{text}");
    assert!(
        !text.contains("s3cret") && text.contains("<redacted>"),
        "{text}"
    );
}

#[test]
fn the_systemd_units_verify() {
    let installed = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let units = root().join("deploy/systemd");
    let mut verified = 0;
    for entry in std::fs::read_dir(&units).expect("deploy/systemd") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "service") {
            continue;
        }
        // The unit as installed, but with the binary this test built.
        let text = std::fs::read_to_string(&path).expect("unit");
        let text = text.replace("/usr/local/bin/galopush", env!("CARGO_BIN_EXE_galopush"));
        let copy = dir.path().join(path.file_name().expect("name"));
        std::fs::write(&copy, text).expect("write");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("systemd-analyze");
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        verified += 1;
    }
    assert_eq!(verified, 3, "standalone, router and comet");
}
