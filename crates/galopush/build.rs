//! Records the git commit the binary is built from, for `galopush --version`: the commit's
//! short hash, with `-modified` when the working tree differs from it, or `unknown` outside a
//! git checkout (a source tarball).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) if !hash.is_empty() => {
            let modified = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|changes| !changes.is_empty());
            if modified {
                format!("{hash}-modified")
            } else {
                hash
            }
        }
        _ => "unknown".to_owned(),
    };
    // Not named GALOPUSH_…: cargo also sets it when it runs the binary, and galopush refuses
    // GALOPUSH_ variables that are not settings.
    println!("cargo:rustc-env=BUILT_FROM_COMMIT={commit}");
    // Built again when the commit or the index changes.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/index");
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{reference}");
        }
    }
}
