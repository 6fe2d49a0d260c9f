//! The fault harness must catch bugs: each planted bug (`keel serve --unsafe-plant-bug`) is
//! run under `keel-chaos` with the faults that expose it, and the run must report violations
//! and exit non-zero. (A correct cluster passing the harness is `.ci/run`'s campaign.)
//!
//! A schedule is random, so a bug gets up to three seeds to show itself; each run prints its
//! summary, so a failure here shows what the harness saw.

use std::path::Path;
use std::process::Command;

/// Runs `keel-chaos run` with `bug` planted; returns (exit code, summary text).
fn chaos_run(bug: &str, workload: &str, faults: &str, seed: u64, dir: &Path) -> (i32, String) {
    let keel = integration_tests::keel_binary();
    let output = Command::new(env!("CARGO_BIN_EXE_keel-chaos"))
        .args(["run", "--workload", workload, "--faults", faults, "--time", "20s"])
        .args(["--seed", &seed.to_string(), "--plant-bug", bug])
        .arg("--dir")
        .arg(dir)
        .arg("--keel")
        .arg(keel)
        .output()
        .expect("cannot run keel-chaos");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    println!("--- {bug} seed {seed}:\n{stdout}");
    (output.status.code().unwrap_or(-1), stdout)
}

/// Asserts that `bug` is reported within three seeds, with a violation containing `expect`.
fn assert_caught(bug: &str, workload: &str, faults: &str, expect: &[&str]) {
    let dir = tempfile::Builder::new().prefix("keel-chaos-test-").tempdir().unwrap();
    for seed in 1..=3 {
        let (code, summary) = chaos_run(bug, workload, faults, seed, dir.path());
        assert_ne!(code, 3, "the run could not be carried out:\n{summary}");
        let summary_line = summary.lines().find(|l| l.starts_with("chaos: ops="));
        assert!(summary_line.is_some(), "no summary line in:\n{summary}");
        if code != 0 {
            assert_eq!(code, 1, "a run with violations exits 1");
            assert!(
                summary
                    .lines()
                    .any(|l| l.starts_with("VIOLATION") && expect.iter().any(|e| l.contains(e))),
                "{bug}: violations reported, but none of the expected kind {expect:?}:\n{summary}"
            );
            assert!(!summary_line.unwrap().ends_with("violations=0"));
            return;
        }
    }
    panic!("the planted bug {bug} was not reported in three 20-second runs");
}

#[test]
fn acknowledging_before_commit_is_caught() {
    // A deposed or killed leader's acknowledged but uncommitted inserts vanish.
    assert_caught(
        "ack-before-commit",
        "set",
        "partition,kill",
        &["acknowledged inserts lost", "misses"],
    );
}

#[test]
fn stale_linearizable_reads_are_caught() {
    // Followers answer from their own copy, which lags: not linearizable.
    assert_caught("stale-linearizable", "register", "partition,pause", &["not linearizable"]);
}

#[test]
fn skipping_fsync_is_caught() {
    // After a coordinated power loss the log has lost entries every database needs: writes
    // vanish or the cluster cannot come back.
    assert_caught(
        "skip-fsync",
        "set",
        "powerloss",
        &["acknowledged inserts lost", "did not recover", "did not settle", "no final read"],
    );
}

#[test]
fn starting_on_a_damaged_log_is_caught() {
    // A node that cuts its log at damage a torn write cannot explain, instead of refusing to
    // start, runs on a log that lost entries it may have acknowledged.
    assert_caught("trust-damaged-log", "set", "corrupt", &["started on a damaged log"]);
}
