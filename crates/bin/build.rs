//! Build facts for `/status` (`build` and `runtime` sections): the git commit and branch, the
//! build time and the compiler's version, as `KEEL_*` environment variables for `env!`.
//!
//! Every fact is `unknown` when it cannot be learned (no git, not a git checkout), so a build
//! never fails for want of one. The script runs again when the checked-out commit changes
//! (git's `HEAD` and the branch's ref), not on every build: the build time is the time of the
//! build that first saw this commit.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "HEAD"]);
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]);
    // Run again when HEAD moves: HEAD itself (a checkout) and the ref it names (a commit).
    // A path that does not exist would make cargo run the script on every build.
    let refs = [Some("HEAD".to_string()), branch.as_ref().map(|b| format!("refs/heads/{b}"))];
    for path in refs.into_iter().flatten().chain(Some("packed-refs".to_string())) {
        if let Some(file) = git(&["rev-parse", "--git-path", &path])
            && std::path::Path::new(&file).exists()
        {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let compiler = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string());
    let built = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let unknown = || "unknown".to_string();
    println!("cargo:rustc-env=KEEL_GIT_COMMIT={}", commit.unwrap_or_else(unknown));
    println!("cargo:rustc-env=KEEL_GIT_BRANCH={}", branch.unwrap_or_else(unknown));
    println!("cargo:rustc-env=KEEL_BUILD_UNIX_TIME={built}");
    println!("cargo:rustc-env=KEEL_RUSTC_VERSION={}", compiler.unwrap_or_else(unknown));
}

/// The trimmed output of a successful `git` command, or `None`.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_string())
}
