//! The web console in a real browser: Debian's Chromium, driven by Playwright
//! (`crates/integration-tests/browser/console.mjs`), against a real cluster of three voters
//! and a learner.
//!
//! Built only with `--features browser`, since it needs Chromium at `/usr/bin/chromium` (or
//! `KEEL_CHROMIUM`) and Node.js with npm (`npm ci` runs on first use):
//!
//! ```sh
//! cargo test -p integration-tests --features browser --test console_browser
//! ```
//!
//! The test and the script talk over the script's stdin and stdout, one line each. The script
//! loads the console from a follower and checks that it shows every node, all reachable, with
//! their roles and the same leader as the cluster; writes and reads through the SQL editor;
//! checks how refusals (401, 403, a bad learner id) are shown; promotes the other follower
//! with the Promote button (its confirmation dialog cancelled once, then confirmed); then
//! prints `READY_TO_KILL <leader>`. The test kills that process and answers `KILLED`; the
//! script waits for the page to show another leader, prints `NEW_LEADER <id>` and writes the
//! screenshot to `docs/console.png`. Then `READY_TO_KILL_PAGE <id>`: the test kills the node
//! that served the page, and the script waits for the page to say so and move to the console
//! of a node still running (`MOVED <id>`), and prints `DONE`. Every step on both sides has a
//! deadline; a failure prints the page's console messages.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime};

use integration_tests::{TIMEOUT, TestCluster};
use serde_json::json;

/// The deadline of each step of the script, which includes starting Chromium.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `npm ci` may take.
const NPM_TIMEOUT: Duration = Duration::from_secs(300);

/// The Node project of the script.
fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Runs `npm ci` in the browser directory unless its `node_modules` already has Playwright.
fn install_playwright() {
    let dir = browser_dir();
    if dir.join("node_modules/playwright-core/package.json").exists() {
        return;
    }
    let mut npm = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run npm ci in {} (is Node.js installed?): {e}", dir.display())
        });
    let status =
        integration_tests::wait_for(NPM_TIMEOUT, "npm ci", || npm.try_wait().ok().flatten());
    assert!(status.success(), "npm ci in {} failed: {status}", dir.display());
}

/// The running script: its stdin, and its stdout lines as they arrive. Killed on drop.
struct Script {
    /// The `node` process.
    child: Child,
    /// Its standard input, for the test's answers.
    stdin: ChildStdin,
    /// Its standard output, line by line (read on a thread, so reads can have a deadline).
    lines: Receiver<String>,
}

impl Script {
    fn start(config: &serde_json::Value) -> Script {
        let mut child = Command::new("node")
            .arg("console.mjs")
            .arg(config.to_string())
            .current_dir(browser_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node (is Node.js installed?): {e}"));
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("console.mjs: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Script { child, stdin, lines }
    }

    /// Waits for the next line starting with `prefix` and returns the rest of it; fails on a
    /// `FAILED` line, on the script's exit, or after `timeout`.
    fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("FAILED") => {
                    panic!("the browser script failed: {line}")
                }
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {prefix} from the browser script within {timeout:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    panic!("the browser script ended ({status}) before printing {prefix}")
                }
            }
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("cannot write to the browser script: {e}"));
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A follower's console shows the cluster (three voters, a learner) and the leader, runs SQL,
/// promotes a node, shows the new leader after that one is killed, and moves to a live node
/// when its own dies.
#[test]
fn console_in_chromium_follows_a_failover() {
    let chromium = std::env::var("KEEL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (apt-get install -y chromium) or set KEEL_CHROMIUM"
    );
    install_playwright();

    let c = TestCluster::start(3, 1);
    let first = c.leader();
    let learner = c.learners()[0];
    let page = c.followers(first)[0];
    let target = c.followers(first)[1];
    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/console.png");
    let started = SystemTime::now();
    let config = json!({
        "url": c.url(page, "/console").as_str(),
        "page": page.to_string(),
        "nodes": c.ids().iter().map(u64::to_string).collect::<Vec<_>>(),
        "leader": first.to_string(),
        "learners": [learner.to_string()],
        "screenshot": screenshot,
        "timeoutMs": STEP_TIMEOUT.as_millis() as u64,
        "chromium": chromium,
    });
    let mut script = Script::start(&config);

    // Starting Chromium and the checks before the kill take several steps.
    let shown = script.expect("READY_TO_KILL", 6 * STEP_TIMEOUT);
    // The page's Promote button moved leadership to the other follower.
    assert_eq!(shown, target.to_string(), "the leader the page shows after promoting");
    assert_eq!(c.leader(), target, "the leader after the page's promotion");
    // What the page wrote through its SQL editor is in the cluster.
    assert_eq!(
        c.rows(page, "SELECT name, note FROM console_t ORDER BY id"),
        vec![vec![json!("fiona"), json!(null)], vec![json!("<b>declan</b>"), json!("a;b")]]
    );

    c.kill(target);
    script.send("KILLED");
    let new = script.expect("NEW_LEADER", STEP_TIMEOUT + TIMEOUT);
    let elected = c.leader();
    assert_ne!(elected, target);
    assert_eq!(new, elected.to_string(), "the page shows the leader the cluster elected");

    let serving = script.expect("READY_TO_KILL_PAGE", 2 * STEP_TIMEOUT);
    assert_eq!(serving, page.to_string());
    c.kill(page);
    script.send("KILLED");
    let moved = script.expect("MOVED", 3 * STEP_TIMEOUT);
    assert!(
        [first, learner].map(|id| id.to_string()).contains(&moved),
        "the page moved to node {moved}, which is not running"
    );

    script.expect("DONE", STEP_TIMEOUT);
    let status = integration_tests::wait_for(STEP_TIMEOUT, "the browser script to exit", || {
        script.child.try_wait().ok().flatten()
    });
    assert!(status.success(), "the browser script exited with {status}");
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", screenshot.display());
    let written = std::fs::metadata(&screenshot).and_then(|m| m.modified()).expect("file time");
    assert!(written >= started, "the screenshot was not written by this run");
}
