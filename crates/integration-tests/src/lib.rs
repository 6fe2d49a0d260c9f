//! End-to-end tests of Keel: clusters of real `keel` processes on loopback, driven over the
//! rqlite-compatible HTTP API exactly as a client would drive them.
//!
//! # Why real processes
//!
//! Unit tests and goldenscripts in the other crates pin down each layer. What only a real process
//! shows is the whole: CLI parsing, bootstrap and join, the HTTP router, forwarding between
//! nodes, Raft over real sockets, fsync and restart from a data directory, and what happens when
//! a process dies with SIGKILL in the middle of it all. Child processes also make failure
//! injection honest: `kill -9` cannot run a destructor, so nothing gets flushed that a real crash
//! would lose (toyDB's `tests/testcluster.rs` makes the same choice, for the same reasons).
//!
//! # How a test flows
//!
//! 1. [`TestCluster::start`] (or [`TestCluster::start_with`], which adds `keel serve` flags to
//!    every node, such as `--sync-timeout 1s`) finds the binary with [`keel_binary`], which runs
//!    `cargo build -p keel --bin keel --message-format=json` once per test process (guarded by a
//!    `OnceLock`, so tests running in parallel share one build) and takes the path of the `keel`
//!    executable from cargo's JSON messages. Setting `KEEL_BIN=/path/to/keel` skips the build.
//! 2. It picks free loopback ports (bind port 0, note the port, release it; a process-wide set
//!    keeps two clusters of the same test process from picking the same port), makes a temporary
//!    directory, and starts node 1 without `--join`, which bootstraps a one-node cluster. Once it
//!    is ready, the other nodes start one at a time with `--join http://<node 1>` (learners also
//!    with `--learner`), each awaited until its own `/status` shows the role it joined with, its
//!    `/nodes` lists it and `/readyz` answers 200. Finally the leader's `/nodes` must list every
//!    node with the right `voter` flag. If a node dies at startup because its port was taken in
//!    the meantime, the whole start is retried on fresh ports.
//! 3. The test drives the cluster through [`TestCluster::execute`], [`TestCluster::query`] and
//!    friends, injects faults with [`TestCluster::kill`], [`TestCluster::stop`],
//!    [`TestCluster::restart`], [`TestCluster::pause`] and [`TestCluster::resume`], grows the
//!    cluster with [`TestCluster::add_node`] (or [`TestCluster::launch_node`], which does not
//!    wait for the join), and waits for conditions with [`TestCluster::leader`],
//!    [`TestCluster::wait_applied`], [`wait_for`] and [`poll`].
//! 4. It checks replication with [`TestCluster::assert_consistent`]: every running node applies
//!    the leader's commit index, then the [`TestCluster::dump`] of every node must equal the
//!    leader's. A dump is the schema plus every row of every table, rowids included, read with
//!    `level=none` so each node answers from its own database.
//! 5. Dropping the cluster SIGKILLs every node. If the test is panicking, the tail of each node's
//!    log (stdout and stderr go to `node<id>.log` in the cluster's directory; nodes inherit
//!    `RUST_LOG`) is printed so a failure can be read without rerunning it; with
//!    `KEEL_TEST_KEEP=1` the directory is kept too. If the test passed but a node exited on its
//!    own (a crash nobody noticed), the drop panics and fails the test.
//!
//! Nothing here sleeps to "let things settle": every wait polls a condition until a deadline
//! ([`TIMEOUT`]) and fails with a message naming the condition. Short sleeps between polls are
//! the only sleeps.
//!
//! Everything is blocking (`reqwest::blocking`, `std::thread`): tests that need concurrency use
//! `std::thread::scope`, and every method takes `&self`, so a [`TestCluster`] can be shared by
//! the writer threads and the thread that restarts nodes under them.
//!
//! # What it deliberately does not do
//!
//! * No network partitions or packet loss: there is no proxy between nodes, only process faults
//!   (SIGKILL, SIGTERM, SIGSTOP). A paused process is the closest thing to a partition.
//! * No fixed ports: ports are picked at runtime, so several test processes can run at once.
//! * No assertions about timing or performance; a slow machine only makes tests slower, up to
//!   the deadlines.
//!
//! Protocol cases that need the network in the test's hands (a partition at one exact message,
//! a leader change between two steps of the writer) run on [`inproc::Cluster`] instead: real
//! nodes in one process over an in-memory network.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * A port is free when it is picked and taken when the node binds it; something else can grab
//!   it in between. At startup this is detected (the node exits and its log says the address is
//!   in use) and retried; on [`TestCluster::restart`] the node must reuse its address, so a
//!   collision there fails the test.
//! * If the test process itself is killed (not a panic: SIGKILL, or an aborted `cargo test`),
//!   `Drop` does not run and the `keel` processes keep running until killed by hand.

pub mod chaos;
pub mod inproc;
pub mod tour;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{Display, Write as _};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use reqwest::Url;
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// A node's id, as passed to `keel serve --id`. Nodes of a [`TestCluster`] are numbered from 1:
/// voters first, then learners.
pub type NodeId = u64;

/// A log index: the `lsn` of a write answer, or an index reported by `/status`.
pub type Lsn = u64;

/// How long any wait (readiness, election, apply, a test's own conditions) may take before the
/// test fails. Generous, because tests share a small machine with each other and with builds.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Pause between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Timeout of a request that only probes a node (`/status`, `/readyz`): a node that does not
/// answer within it counts as not ready, and the poll goes on.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Timeout of a client request (execute, query). Writes may wait for an election or a
/// forwarded round trip, so this is longer than a probe.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How many times [`TestCluster::start`] retries on fresh ports when a node finds its port
/// taken.
const START_ATTEMPTS: usize = 3;

/// How many lines of each node's log are printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Polls `probe` until it returns `Some`, and returns that value; `None` once `timeout` has
/// passed without it.
pub fn poll<T>(timeout: Duration, probe: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(POLL_INTERVAL, timeout, probe)
}

/// Like [`poll`], pausing `interval` between probes: for conditions that hold only briefly,
/// such as a temporary file that exists while a transfer runs.
pub fn poll_every<T>(
    interval: Duration,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// Polls `probe` until it returns `Some`, and returns that value. Panics, naming `what`, once
/// `timeout` has passed.
pub fn wait_for<T>(timeout: Duration, what: impl Display, probe: impl FnMut() -> Option<T>) -> T {
    poll(timeout, probe).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Returns the path of the `keel` binary, building it the first time it is called in this test
/// process.
///
/// `KEEL_BIN`, if set, names the binary and nothing is built. Otherwise this runs
/// `cargo build -p keel --bin keel --message-format=json` in the workspace root (with
/// `--release` when the tests themselves were built without debug assertions) and takes the
/// `executable` of the `keel` bin artifact. The result, success or failure, is computed once:
/// parallel tests wait for one build, and a failed build fails every test with its output.
pub fn keel_binary() -> &'static Path {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(build_keel) {
        Ok(path) => path,
        Err(error) => panic!("{error}"),
    }
}

/// Builds the `keel` binary with cargo; see [`keel_binary`].
fn build_keel() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("KEEL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut command = Command::new(&cargo);
    command.current_dir(&root).args([
        "build",
        "-p",
        "keel",
        "--bin",
        "keel",
        "--message-format=json",
    ]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run {}: {error}", Path::new(&cargo).display()))?;
    let messages: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    if !output.status.success() {
        // With --message-format=json the compiler's diagnostics are JSON on stdout.
        let errors: String = messages
            .iter()
            .filter(|message| {
                message["reason"] == "compiler-message" && message["message"]["level"] == "error"
            })
            .filter_map(|message| message["message"]["rendered"].as_str())
            .collect();
        return Err(format!(
            "`cargo build -p keel` failed ({}):\n{errors}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    messages
        .into_iter()
        .filter(|message| {
            message["reason"] == "compiler-artifact"
                && message["target"]["name"] == "keel"
                && message["target"]["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| {
            "`cargo build -p keel` reported no executable for the keel binary".to_string()
        })
}

/// Picks `n` distinct loopback ports that were free a moment ago.
///
/// Each port comes from binding port 0; all listeners stay open until `n` are picked, so one
/// call never returns a port twice, and a process-wide set keeps clusters started in parallel
/// by this test process apart. Another process can still take a port before the node binds it:
/// see the module's caveats.
pub fn free_ports(n: usize) -> Vec<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = lock(&HANDED_OUT);
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
        let port = listener.local_addr().expect("bound listener has an address").port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    ports
}

/// Locks a mutex, ignoring poisoning: a test that panicked while holding a lock must still be
/// able to kill its nodes and print their logs.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Quotes an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The read consistency level of a query (`level=` on `/db/query`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The node's own data, on any node.
    None,
    /// Served by the leader (forwarded), under its lease.
    Weak,
    /// Served by the leader after a read-index round.
    Linearizable,
    /// Sent through the Raft log.
    Strong,
}

impl Level {
    /// The value of the `level` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Weak => "weak",
            Level::Linearizable => "linearizable",
            Level::Strong => "strong",
        }
    }
}

/// A raw HTTP answer with a binary body, e.g. a database backup.
#[derive(Clone, Debug)]
pub struct RawReply {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The `Content-Encoding` header, if any.
    pub content_encoding: Option<String>,
    /// The body, as received (never decompressed).
    pub body: Vec<u8>,
}

impl RawReply {
    /// The body as text (lossily decoded), for failure messages and text formats.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP answer, for tests about status codes and headers.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The `Location` header, if any (redirects are never followed).
    pub location: Option<String>,
    /// The body, as text.
    pub body: String,
}

impl Reply {
    /// Parses the body as JSON; panics with the body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| {
            panic!("answer (status {}) is not JSON ({error}): {}", self.status, self.body)
        })
    }
}

/// The JSON answer of `/db/execute`, `/db/query` or `/db/request`.
///
/// Accessors follow the rqlite encoding: zero `last_insert_id`/`rows_affected` are omitted, and
/// so is `values` when a query returned no rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Response(pub Value);

impl Response {
    /// The per-statement results; panics if the answer has none.
    pub fn results(&self) -> &[Value] {
        self.0["results"]
            .as_array()
            .unwrap_or_else(|| panic!("answer has no results array: {}", self.0))
    }

    /// The result of statement `i`; panics if there is none.
    pub fn result(&self, i: usize) -> &Value {
        self.results().get(i).unwrap_or_else(|| panic!("answer has no result {i}: {}", self.0))
    }

    /// The error of statement `i`, if it failed.
    pub fn error(&self, i: usize) -> Option<&str> {
        self.result(i).get("error").map(|error| error.as_str().unwrap_or("<non-string error>"))
    }

    /// Panics if the request failed as a whole (a top-level `error`) or any statement failed.
    pub fn assert_ok(&self) -> &Self {
        assert!(self.0.get("error").is_none(), "request failed: {}", self.0);
        for (i, result) in self.results().iter().enumerate() {
            assert!(result.get("error").is_none(), "statement {i} failed: {}", self.0);
        }
        self
    }

    /// The log index of the write (execute) or the applied index it was served at (query).
    pub fn lsn(&self) -> Lsn {
        self.0["lsn"].as_u64().unwrap_or_else(|| panic!("answer has no lsn: {}", self.0))
    }

    /// `last_insert_id` of statement `i` (0 when omitted).
    pub fn last_insert_id(&self, i: usize) -> i64 {
        self.result(i)
            .get("last_insert_id")
            .map_or(0, |id| id.as_i64().expect("last_insert_id is an integer"))
    }

    /// `rows_affected` of statement `i` (0 when omitted).
    pub fn rows_affected(&self, i: usize) -> i64 {
        self.result(i)
            .get("rows_affected")
            .map_or(0, |n| n.as_i64().expect("rows_affected is an integer"))
    }

    /// The rows of query `i` (empty when `values` is omitted); panics if the statement failed.
    pub fn rows(&self, i: usize) -> Vec<Vec<Value>> {
        let result = self.result(i);
        assert!(result.get("error").is_none(), "statement {i} failed: {}", self.0);
        match result.get("values") {
            None => Vec::new(),
            Some(values) => values
                .as_array()
                .unwrap_or_else(|| panic!("values is not an array: {}", self.0))
                .iter()
                .map(|row| {
                    row.as_array()
                        .unwrap_or_else(|| panic!("row is not an array: {}", self.0))
                        .clone()
                })
                .collect(),
        }
    }
}

/// The `node` subtree of `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node's id.
    pub id: NodeId,
    /// `leader`, `follower`, `learner` or `candidate`.
    pub role: String,
    /// The node's current term.
    pub term: u64,
    /// The leader the node knows, if any.
    pub leader_id: Option<NodeId>,
    /// Index of the last entry in the node's log.
    pub last_log_index: Lsn,
    /// Index of the last entry the node knows to be committed.
    pub commit_index: Lsn,
    /// Index of the last entry applied to the node's database.
    pub applied_index: Lsn,
    /// Index of the node's latest snapshot, if it has one: `snapshot.index`, or
    /// `node.snapshot_index` from nodes that do not serve the `snapshot` subtree.
    pub snapshot_index: Option<Lsn>,
    /// The top-level `snapshot` subtree; `None` if the node does not serve one.
    pub snapshot: Option<SnapshotStatus>,
}

impl NodeStatus {
    /// Parses the `node` subtree of a `/status` answer (and the top-level `snapshot` subtree,
    /// if present); `None` if a field of the `node` subtree is missing.
    fn parse(status: &Value) -> Option<Self> {
        let node = status.get("node")?;
        let snapshot = status.get("snapshot").and_then(SnapshotStatus::parse);
        let snapshot_index = match &snapshot {
            Some(snapshot) => snapshot.index,
            None => node.get("snapshot_index").and_then(Value::as_u64),
        };
        Some(Self {
            id: node["id"].as_u64()?,
            role: node["role"].as_str()?.to_string(),
            term: node["term"].as_u64()?,
            leader_id: node["leader_id"].as_u64(),
            last_log_index: node["last_log_index"].as_u64()?,
            commit_index: node["commit_index"].as_u64()?,
            applied_index: node["applied_index"].as_u64()?,
            snapshot_index,
            snapshot,
        })
    }
}

/// The top-level `snapshot` subtree of `/status`: the node's latest snapshot and counters of
/// snapshot work since the process started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// Log index of the node's latest snapshot, if it has one.
    pub index: Option<Lsn>,
    /// Snapshots this node built.
    pub built: u64,
    /// Snapshots this node sent to other nodes.
    pub sent: u64,
    /// Snapshots this node received and installed.
    pub installed: u64,
    /// Bytes of snapshot data sent.
    pub bytes_sent: u64,
    /// Bytes of snapshot data received.
    pub bytes_received: u64,
    /// Log index of the last snapshot installed, if any.
    pub last_installed_index: Option<Lsn>,
}

impl SnapshotStatus {
    /// Parses the `snapshot` subtree; `None` if a counter is missing.
    fn parse(snapshot: &Value) -> Option<Self> {
        Some(Self {
            index: snapshot.get("index").and_then(Value::as_u64),
            built: snapshot["built"].as_u64()?,
            sent: snapshot["sent"].as_u64()?,
            installed: snapshot["installed"].as_u64()?,
            bytes_sent: snapshot["bytes_sent"].as_u64()?,
            bytes_received: snapshot["bytes_received"].as_u64()?,
            last_installed_index: snapshot.get("last_installed_index").and_then(Value::as_u64),
        })
    }
}

/// Why [`TestCluster::boot`] failed.
#[derive(Debug)]
enum StartError {
    /// A node exited while starting; `port_taken` if its log says its address was in use, in
    /// which case starting again on other ports may work.
    Exited {
        /// The node that exited.
        id: NodeId,
        /// How it exited.
        status: ExitStatus,
        /// Whether its log says an address was already in use.
        port_taken: bool,
    },
    /// A node did not reach the named condition in time.
    Timeout {
        /// The condition, in words.
        what: String,
    },
}

impl Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Exited { id, status, port_taken } => {
                write!(f, "node {id} exited with {status}")?;
                if *port_taken {
                    write!(f, " (address in use)")?;
                }
                Ok(())
            }
            StartError::Timeout { what } => {
                write!(f, "timed out after {TIMEOUT:?} waiting for {what}")
            }
        }
    }
}

/// The process of a node, if it is running.
#[derive(Default)]
struct Process {
    /// The running process; `None` before the first start and after a kill or stop.
    child: Option<Child>,
    /// Whether the process is stopped with SIGSTOP.
    paused: bool,
    /// How many times the node was started; numbers the start markers in the log.
    starts: usize,
}

/// One node of a [`TestCluster`]: its fixed command line and its process.
///
/// Invariants:
/// * `http_addr`, `raft_addr` and `data_dir` never change: a restart reuses them, as a real
///   restart would.
/// * `process.child` is `Some` exactly while the harness considers the node started; a process
///   that exited on its own still has its `Child` until the harness reaps it.
struct Node {
    /// The node's id.
    id: NodeId,
    /// Whether the node joins as a learner (`--learner`).
    learner: bool,
    /// `127.0.0.1:<port>` of the HTTP API.
    http_addr: String,
    /// `127.0.0.1:<port>` of the Raft transport.
    raft_addr: String,
    /// The node's data directory (created by the node).
    data_dir: PathBuf,
    /// Where the node's stdout and stderr are appended, across restarts.
    log_path: PathBuf,
    /// The `--join` URL; `None` for node 1, which bootstraps the cluster.
    join: Option<String>,
    /// Further `keel serve` arguments, after the ones the harness sets (the same on every node
    /// of a cluster; see [`TestCluster::start_with`]).
    extra_args: Vec<String>,
    /// The running process.
    process: Mutex<Process>,
}

impl Node {
    /// The arguments of `keel`, the same on every start.
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "serve".to_string(),
            "--id".to_string(),
            self.id.to_string(),
            "--http-addr".to_string(),
            self.http_addr.clone(),
            "--raft-addr".to_string(),
            self.raft_addr.clone(),
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
        ];
        if let Some(join) = &self.join {
            args.extend(["--join".to_string(), join.clone()]);
        }
        if self.learner {
            args.push("--learner".to_string());
        }
        // Test clusters share two cores with each other and the compiler: with the default
        // sub-second election timeout, a scheduling stall would start needless elections. A
        // test's own flags come after these, and the last occurrence wins.
        args.extend(["--heartbeat=60ms".to_string(), "--election-timeout=300ms".to_string()]);
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Starts the process; panics if it is already running.
    fn spawn(&self) {
        let mut process = lock(&self.process);
        assert!(process.child.is_none(), "node {} is already running", self.id);
        process.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|error| panic!("cannot open {}: {error}", self.log_path.display()));
        let args = self.args();
        writeln!(
            log,
            "==== start #{} of node {}: keel {}",
            process.starts,
            self.id,
            args.join(" ")
        )
        .expect("cannot write node log");
        let stdout = log.try_clone().expect("cannot clone node log handle");
        let child = Command::new(keel_binary())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start node {}: {error}", self.id));
        process.child = Some(child);
        process.paused = false;
    }

    /// Sends `signal` to the running process; panics if it is not running.
    fn signal(&self, process: &Process, signal: libc::c_int) {
        let child =
            process.child.as_ref().unwrap_or_else(|| panic!("node {} is not running", self.id));
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) takes plain integers and touches no memory of ours. The pid is that of
        // our own child, which is not reaped yet (we hold its `Child`), so it cannot have been
        // reused by another process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed: {}", std::io::Error::last_os_error());
    }

    /// The exit status if the process was started and has exited on its own.
    fn exited(&self) -> Option<ExitStatus> {
        let mut process = lock(&self.process);
        process.child.as_mut()?.try_wait().expect("cannot poll node process")
    }

    /// Whether the process is started and not paused, i.e. expected to answer requests.
    fn is_up(&self) -> bool {
        let process = lock(&self.process);
        process.child.is_some() && !process.paused
    }

    /// SIGKILLs the process, if running, and reaps it.
    fn terminate(&self) {
        let mut process = lock(&self.process);
        if let Some(mut child) = process.child.take() {
            // The process may have exited already; then kill fails and wait reaps it.
            let _ = child.kill();
            let _ = child.wait();
        }
        process.paused = false;
    }

    /// The last `lines` lines of the node's log.
    fn log_tail(&self, lines: usize) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(error) => format!("<cannot read {}: {error}>", self.log_path.display()),
        }
    }

    /// Whether the node's log says that an address it tried to bind was in use.
    fn log_says_port_taken(&self) -> bool {
        let tail = self.log_tail(LOG_TAIL_LINES).to_lowercase();
        tail.contains("address already in use") || tail.contains("addrinuse")
    }
}

/// A cluster of `keel` processes on loopback ports, in a temporary directory. Dropping it kills
/// the processes and removes the directory. See the module docs for the life cycle.
///
/// Invariants:
/// * Nodes are numbered `1..=voters` (voters) then `voters+1..=voters+learners` (learners),
///   then in the order [`TestCluster::launch_node`] added them.
/// * Node 1 bootstraps the cluster; every other node started with it joins through node 1's
///   HTTP address, an added node through the leader's at the time it was added.
/// * Every method takes `&self`; node state is behind per-node mutexes, so threads may share a
///   cluster (e.g. a writer thread while the test restarts a node).
pub struct TestCluster {
    /// The nodes by id.
    nodes: BTreeMap<NodeId, Node>,
    /// The HTTP client; never follows redirects, never uses a proxy, never pools connections (a
    /// pooled connection to a killed process would fail the next request).
    client: Client,
    /// The cluster's directory: one data directory and one log file per node.
    dir: tempfile::TempDir,
    /// This cluster's turn among the clusters of this test process (released last, after the
    /// nodes are stopped).
    _slot: Slot,
}

/// How many clusters one test process runs at once unless `KEEL_TEST_CLUSTERS` says otherwise.
/// The tests of one file run in parallel threads; on a 2-core machine, more than a couple of
/// multi-node clusters at once starve each other of CPU until elections and commits time out.
const DEFAULT_CLUSTERS: usize = 2;

/// A counting gate limiting concurrent clusters in this process.
static GATE: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// One cluster's place at the [`GATE`]; leaving it lets the next cluster start.
struct Slot;

impl Slot {
    /// Waits until fewer than the allowed number of clusters are running.
    fn acquire() -> Slot {
        let max = std::env::var("KEEL_TEST_CLUSTERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_CLUSTERS)
            .max(1);
        let (lock, cvar) = &GATE;
        let mut running = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= max {
            running = cvar.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (lock, cvar) = &GATE;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        cvar.notify_one();
    }
}

impl TestCluster {
    /// Starts a cluster of `voters` voters and `learners` learners and waits until every node
    /// is a ready member. Panics (printing node logs) if that does not happen within
    /// [`TIMEOUT`] per step.
    pub fn start(voters: usize, learners: usize) -> Self {
        Self::start_with(voters, learners, &[])
    }

    /// Like [`TestCluster::start`], with `extra_args` appended to the `keel serve` command line
    /// of every node, on every start (e.g. `&["--sync-timeout", "1s"]`).
    pub fn start_with(voters: usize, learners: usize, extra_args: &[&str]) -> Self {
        Self::start_with_headers(voters, learners, extra_args, HeaderMap::new())
    }

    /// [`TestCluster::start_with`] whose own requests (readiness checks, helpers) all carry
    /// `headers`, e.g. the `Authorization` of a user allowed everything when the nodes require
    /// credentials.
    pub fn start_with_headers(
        voters: usize,
        learners: usize,
        extra_args: &[&str],
        headers: HeaderMap,
    ) -> Self {
        assert!(voters >= 1, "a cluster needs at least one voter");
        keel_binary();
        let mut attempt = 1;
        loop {
            let cluster = Self::new(voters, learners, extra_args, headers.clone());
            match cluster.boot() {
                Ok(()) => return cluster,
                Err(StartError::Exited { port_taken: true, .. }) if attempt < START_ATTEMPTS => {
                    // Reap every node first, so that Drop does not report the exit as a crash.
                    for node in cluster.nodes.values() {
                        node.terminate();
                    }
                    drop(cluster);
                    attempt += 1;
                }
                // Panicking with the cluster alive makes its Drop print the node logs.
                Err(error) => panic!("cluster did not start: {error}"),
            }
        }
    }

    /// Lays out a cluster (ports, directories, command lines) without starting anything.
    fn new(voters: usize, learners: usize, extra_args: &[&str], headers: HeaderMap) -> Self {
        let slot = Slot::acquire();
        let count = voters + learners;
        let mut dir = tempfile::Builder::new()
            .prefix("keel-test-")
            .tempdir()
            .expect("cannot create a temp dir");
        if std::env::var_os("KEEL_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
        }
        let ports = free_ports(2 * count);
        let mut nodes = BTreeMap::new();
        let bootstrap_http = format!("127.0.0.1:{}", ports[0]);
        for index in 0..count {
            let id = NodeId::try_from(index + 1).expect("node count fits u64");
            nodes.insert(
                id,
                Node {
                    id,
                    learner: index >= voters,
                    http_addr: format!("127.0.0.1:{}", ports[2 * index]),
                    raft_addr: format!("127.0.0.1:{}", ports[2 * index + 1]),
                    data_dir: dir.path().join(format!("node{id}")),
                    log_path: dir.path().join(format!("node{id}.log")),
                    join: (id != 1).then(|| format!("http://{bootstrap_http}")),
                    extra_args: extra_args.iter().map(|arg| (*arg).to_string()).collect(),
                    process: Mutex::new(Process::default()),
                },
            );
        }
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(REQUEST_TIMEOUT)
            .default_headers(headers)
            .build()
            .expect("cannot build HTTP client");
        Self { nodes, client, dir, _slot: slot }
    }

    /// Starts node 1, then joins the others one at a time; see the module docs.
    fn boot(&self) -> Result<(), StartError> {
        let bootstrap = self.node(1);
        bootstrap.spawn();
        self.await_start(1, "node 1 to bootstrap and become ready", || {
            self.ready(1) && self.try_status(1).is_some_and(|s| s.role == "leader")
        })?;
        for node in self.nodes.values().filter(|node| node.id != 1) {
            node.spawn();
            let id = node.id;
            let role = if node.learner { "learner" } else { "voter" };
            self.await_start(
                id,
                format!("node {id} to join as a {role} and become ready"),
                || self.is_member(id) && self.ready(id),
            )?;
        }
        let expected: BTreeMap<NodeId, bool> =
            self.nodes.values().map(|node| (node.id, !node.learner)).collect();
        self.await_start(1, "the leader to list every node with its voter flag", || {
            self.current_leader()
                .and_then(|leader| self.members(leader))
                .is_some_and(|members| members == expected)
        })
    }

    /// Polls `ready` for node `id`, which is starting; fails early if it exits.
    fn await_start(
        &self,
        id: NodeId,
        what: impl Display,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), StartError> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.node(id).exited() {
                return Err(StartError::Exited {
                    id,
                    status,
                    port_taken: self.node(id).log_says_port_taken(),
                });
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartError::Timeout { what: what.to_string() });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Whether node `id` sees itself as a member with the role it joined as: listed in its own
    /// `/nodes` with the right `voter` flag, and with the right role in its `/status`.
    fn is_member(&self, id: NodeId) -> bool {
        let learner = self.node(id).learner;
        let listed = self.members(id).is_some_and(|members| members.get(&id) == Some(&!learner));
        let role = self.try_status(id).map(|status| status.role).unwrap_or_default();
        let role_ok =
            if learner { role == "learner" } else { role == "follower" || role == "leader" };
        listed && role_ok
    }

    /// Node `id`'s `/nodes?nonvoters`, as a map from node id to its `voter` flag; `None` if the
    /// node does not answer.
    fn members(&self, id: NodeId) -> Option<BTreeMap<NodeId, bool>> {
        let reply = self.try_get(id, "/nodes?nonvoters")?;
        if reply.status != 200 {
            return None;
        }
        let nodes: Value = serde_json::from_str(&reply.body).ok()?;
        nodes
            .as_object()?
            .iter()
            .map(|(key, node)| Some((key.parse().ok()?, node["voter"].as_bool()?)))
            .collect()
    }

    /// Whether node `id`'s `/readyz` answers 200.
    fn ready(&self, id: NodeId) -> bool {
        self.try_get(id, "/readyz").is_some_and(|reply| reply.status == 200)
    }

    /// The node with id `id`; panics if there is none.
    fn node(&self, id: NodeId) -> &Node {
        self.nodes.get(&id).unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// Panics, with its log tail, if node `id` was started and has exited on its own.
    pub fn assert_alive(&self, id: NodeId) {
        let node = self.node(id);
        if let Some(status) = node.exited() {
            panic!(
                "node {id} exited with {status}; its log ends with:\n{}",
                node.log_tail(LOG_TAIL_LINES)
            );
        }
    }

    /// Panics if any started node has exited on its own.
    pub fn assert_all_alive(&self) {
        for &id in self.nodes.keys() {
            self.assert_alive(id);
        }
    }

    // ---- Topology --------------------------------------------------------------------------

    /// Every node id.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The ids of the voters.
    pub fn voters(&self) -> Vec<NodeId> {
        self.nodes.values().filter(|node| !node.learner).map(|node| node.id).collect()
    }

    /// The ids of the learners.
    pub fn learners(&self) -> Vec<NodeId> {
        self.nodes.values().filter(|node| node.learner).map(|node| node.id).collect()
    }

    /// The ids of the voters other than `leader`.
    pub fn followers(&self, leader: NodeId) -> Vec<NodeId> {
        self.voters().into_iter().filter(|&id| id != leader).collect()
    }

    /// The ids of the nodes that are started and not paused.
    pub fn up(&self) -> Vec<NodeId> {
        self.nodes.values().filter(|node| node.is_up()).map(|node| node.id).collect()
    }

    /// Node `id`'s HTTP address, `127.0.0.1:<port>`.
    pub fn http_addr(&self, id: NodeId) -> &str {
        &self.node(id).http_addr
    }

    /// Node `id`'s Raft address, `127.0.0.1:<port>`.
    pub fn raft_addr(&self, id: NodeId) -> &str {
        &self.node(id).raft_addr
    }

    /// Node `id`'s data directory (`--data-dir`; created by the node when it first starts).
    pub fn data_dir(&self, id: NodeId) -> &Path {
        &self.node(id).data_dir
    }

    /// The index through which node `id` has purged (compacted) its Raft log, read from its
    /// data directory; `None` if it never purged anything.
    ///
    /// `/status` does not report it, so this reads the WAL's metadata file `raft/purged`, which
    /// the `wal` crate replaces atomically (written aside, then renamed): a CRC-32 of the value,
    /// then the value, the purged index and its term as little-endian `u64`s
    /// (`crates/wal/src/disk.rs` `write_meta`, `crates/wal/src/log.rs` `encode_purged`). Panics
    /// if the file does not have that shape, so that a format change fails loudly instead of
    /// reading as "nothing purged".
    pub fn purged_index(&self, id: NodeId) -> Option<Lsn> {
        read_purge_point(&self.node(id).data_dir.join("raft").join("purged"))
    }

    /// The cluster's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    // ---- Growing the cluster -------------------------------------------------------------------

    /// Lays out a new node (the next free id, fresh ports, a data directory in the cluster's
    /// directory, the same extra `keel serve` flags as the other nodes) and starts it with
    /// `--join http://<the current leader>` (and `--learner` if `learner`), without waiting for
    /// anything: for tests that watch or fault a node while it joins. See
    /// [`TestCluster::add_node`] for the waiting variant.
    ///
    /// Unlike [`TestCluster::start`], a port taken between picking and binding is not retried:
    /// the node exits and the test fails.
    pub fn launch_node(&mut self, learner: bool) -> NodeId {
        let leader = self.leader();
        let join = format!("http://{}", self.node(leader).http_addr);
        let extra_args = self.node(1).extra_args.clone();
        let id = self.nodes.keys().next_back().copied().unwrap_or(0) + 1;
        let ports = free_ports(2);
        let node = Node {
            id,
            learner,
            http_addr: format!("127.0.0.1:{}", ports[0]),
            raft_addr: format!("127.0.0.1:{}", ports[1]),
            data_dir: self.dir.path().join(format!("node{id}")),
            log_path: self.dir.path().join(format!("node{id}.log")),
            join: Some(join),
            extra_args,
            process: Mutex::new(Process::default()),
        };
        node.spawn();
        self.nodes.insert(id, node);
        id
    }

    /// Adds a new node to the running cluster ([`TestCluster::launch_node`]) and waits until it
    /// has joined ([`TestCluster::wait_joined`]); returns its id.
    pub fn add_node(&mut self, learner: bool) -> NodeId {
        let id = self.launch_node(learner);
        self.wait_joined(id);
        id
    }

    /// Waits until node `id` is a ready member with the role it joined as (its own `/status`
    /// and `/nodes` say so and `/readyz` answers 200) and the leader lists it with the right
    /// `voter` flag. Panics if that takes longer than [`TIMEOUT`] or the node exits.
    pub fn wait_joined(&self, id: NodeId) {
        let voter = !self.node(id).learner;
        let role = if voter { "voter" } else { "learner" };
        let joined = self.await_start(id, format!("node {id} to join as a {role}"), || {
            self.is_member(id)
                && self.ready(id)
                && self
                    .current_leader()
                    .and_then(|leader| self.members(leader))
                    .is_some_and(|members| members.get(&id) == Some(&voter))
        });
        if let Err(error) = joined {
            let leader = self.current_leader();
            panic!(
                "node {id} did not join: {error}; the leader (node {leader:?}) lists (id, voter) \
                 {:?}; node {id}'s status: {:?}",
                leader.and_then(|leader| self.members(leader)),
                self.try_status(id)
            );
        }
    }

    // ---- Faults ----------------------------------------------------------------------------

    /// The process id of node `id`, if it is running.
    pub fn pid(&self, id: NodeId) -> Option<u32> {
        lock(&self.node(id).process).child.as_ref().map(std::process::Child::id)
    }

    /// Kills node `id` with SIGKILL and reaps it: a crash, nothing gets flushed.
    pub fn kill(&self, id: NodeId) {
        let node = self.node(id);
        let mut process = lock(&node.process);
        let mut child = process.child.take().unwrap_or_else(|| panic!("node {id} is not running"));
        child.kill().unwrap_or_else(|error| panic!("cannot kill node {id}: {error}"));
        child.wait().unwrap_or_else(|error| panic!("cannot reap node {id}: {error}"));
        process.paused = false;
    }

    /// Stops node `id` with SIGTERM and waits for it to exit. Panics (after SIGKILLing it) if it
    /// does not exit within [`TIMEOUT`].
    pub fn stop(&self, id: NodeId) {
        let node = self.node(id);
        let mut process = lock(&node.process);
        node.signal(&process, libc::SIGTERM);
        if process.paused {
            node.signal(&process, libc::SIGCONT);
            process.paused = false;
        }
        let mut child = process.child.take().expect("signalled node has a child");
        let deadline = Instant::now() + TIMEOUT;
        while child.try_wait().expect("cannot poll node process").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {id} did not exit within {TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Restarts node `id` with the same arguments and data directory, stopping it first (with
    /// SIGTERM) if it is running, and waits until `/readyz` answers 200.
    pub fn restart(&self, id: NodeId) {
        if lock(&self.node(id).process).child.is_some() {
            self.stop(id);
        }
        self.node(id).spawn();
        if let Err(error) =
            self.await_start(id, format!("node {id} to be ready after a restart"), || {
                self.ready(id)
            })
        {
            panic!("node {id} did not restart: {error}");
        }
    }

    /// Freezes node `id` with SIGSTOP. It keeps its sockets but answers nothing.
    pub fn pause(&self, id: NodeId) {
        let node = self.node(id);
        let mut process = lock(&node.process);
        assert!(!process.paused, "node {id} is already paused");
        node.signal(&process, libc::SIGSTOP);
        process.paused = true;
    }

    /// Thaws node `id`, paused by [`TestCluster::pause`], with SIGCONT.
    pub fn resume(&self, id: NodeId) {
        let node = self.node(id);
        let mut process = lock(&node.process);
        assert!(process.paused, "node {id} is not paused");
        node.signal(&process, libc::SIGCONT);
        process.paused = false;
    }

    // ---- Waiting on the cluster --------------------------------------------------------------

    /// Node `id`'s `/status` node subtree; panics if it does not answer.
    pub fn status(&self, id: NodeId) -> NodeStatus {
        let reply = self.get(id, "/status");
        assert_eq!(reply.status, 200, "node {id} /status: {}", reply.body);
        NodeStatus::parse(&reply.json())
            .unwrap_or_else(|| panic!("node {id} /status lacks node fields: {}", reply.body))
    }

    /// Node `id`'s `/status` node subtree, or `None` if it is down, paused or does not answer.
    pub fn try_status(&self, id: NodeId) -> Option<NodeStatus> {
        let reply = self.try_get(id, "/status")?;
        if reply.status != 200 {
            return None;
        }
        NodeStatus::parse(&serde_json::from_str(&reply.body).ok()?)
    }

    /// Node `id`'s `/status` `snapshot` subtree; panics if the node does not answer or serves
    /// no such subtree.
    pub fn snapshot_status(&self, id: NodeId) -> SnapshotStatus {
        let reply = self.get(id, "/status");
        assert_eq!(reply.status, 200, "node {id} /status: {}", reply.body);
        let status = reply.json();
        status.get("snapshot").and_then(SnapshotStatus::parse).unwrap_or_else(|| {
            panic!("node {id} /status has no complete `snapshot` subtree: {status}")
        })
    }

    /// The leader right now, if a majority of all voters (counting only those that answer)
    /// names the same leader in the same term and that node says it leads.
    fn current_leader(&self) -> Option<NodeId> {
        let majority = self.voters().len() / 2 + 1;
        let statuses: Vec<NodeStatus> =
            self.voters().into_iter().filter_map(|id| self.try_status(id)).collect();
        statuses
            .iter()
            .filter(|s| s.role == "leader" && s.leader_id == Some(s.id))
            .find(|leader| {
                statuses
                    .iter()
                    .filter(|s| s.leader_id == Some(leader.id) && s.term == leader.term)
                    .count()
                    >= majority
            })
            .map(|leader| leader.id)
    }

    /// Waits until a leader is known by a majority of the voters (see `current_leader`) and
    /// returns it. Nodes that are down or paused do not answer and so do not vote here.
    pub fn leader(&self) -> NodeId {
        poll(TIMEOUT, || self.current_leader()).unwrap_or_else(|| {
            let seen: Vec<String> = self
                .voters()
                .into_iter()
                .map(|id| match self.try_status(id) {
                    Some(status) => format!("{status:?}"),
                    None => format!("node {id}: no answer"),
                })
                .collect();
            panic!("timed out after {TIMEOUT:?} waiting for a leader known by a majority of voters; now: {seen:#?}")
        })
    }

    /// Waits until node `id` has applied `lsn`. Panics early if the node exits.
    pub fn wait_applied(&self, id: NodeId, lsn: Lsn) {
        let applied = poll(TIMEOUT, || {
            self.assert_alive(id);
            self.try_status(id).filter(|s| s.applied_index >= lsn)
        });
        if applied.is_none() {
            let now = self.try_status(id);
            panic!(
                "timed out after {TIMEOUT:?} waiting for node {id} to apply lsn {lsn}; its status now: {now:?}"
            );
        }
    }

    /// Waits until every running, unpaused node has applied `lsn`.
    pub fn wait_all_applied(&self, lsn: Lsn) {
        for id in self.up() {
            self.wait_applied(id, lsn);
        }
    }

    // ---- Client ----------------------------------------------------------------------------

    /// `http://<node id's HTTP address><path_and_query>`.
    pub fn url(&self, id: NodeId, path_and_query: &str) -> Url {
        let url = format!("http://{}{path_and_query}", self.node(id).http_addr);
        Url::parse(&url).unwrap_or_else(|error| panic!("bad URL {url}: {error}"))
    }

    /// Sends a request and collects the answer; `Err` on a transport error.
    fn send(request: RequestBuilder) -> Result<Reply, reqwest::Error> {
        let response = request.send()?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let body = response.text()?;
        Ok(Reply { status, location, body })
    }

    /// A probe: `GET` with a short timeout; `None` if the node is down, paused or silent.
    fn try_get(&self, id: NodeId, path_and_query: &str) -> Option<Reply> {
        if !self.node(id).is_up() {
            return None;
        }
        Self::send(self.client.get(self.url(id, path_and_query)).timeout(PROBE_TIMEOUT)).ok()
    }

    /// `GET path_and_query` on node `id`; panics on a transport error.
    pub fn get(&self, id: NodeId, path_and_query: &str) -> Reply {
        let url = self.url(id, path_and_query);
        Self::send(self.client.get(url.clone()))
            .unwrap_or_else(|error| panic!("GET {url}: {error}"))
    }

    /// Sends a request and collects the answer with its body as bytes; `Err` on a transport
    /// error.
    fn send_raw(request: RequestBuilder) -> Result<RawReply, reqwest::Error> {
        let response = request.send()?;
        let header = |name| {
            response.headers().get(name).map(|value: &reqwest::header::HeaderValue| {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            })
        };
        let status = response.status().as_u16();
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let content_encoding = header(reqwest::header::CONTENT_ENCODING);
        let body = response.bytes()?.to_vec();
        Ok(RawReply { status, content_type, content_encoding, body })
    }

    /// `GET path_and_query` on node `id`, keeping the body as bytes (e.g. `/db/backup`); panics
    /// on a transport error.
    pub fn get_raw(&self, id: NodeId, path_and_query: &str) -> RawReply {
        let url = self.url(id, path_and_query);
        Self::send_raw(self.client.get(url.clone()))
            .unwrap_or_else(|error| panic!("GET {url}: {error}"))
    }

    /// `POST path_and_query` on node `id` with `body` as is and the given `Content-Type` (e.g.
    /// `/db/load`); panics on a transport error.
    pub fn post_raw(
        &self,
        id: NodeId,
        path_and_query: &str,
        content_type: &str,
        body: impl Into<Vec<u8>>,
    ) -> RawReply {
        let url = self.url(id, path_and_query);
        let request = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.into());
        Self::send_raw(request).unwrap_or_else(|error| panic!("POST {url}: {error}"))
    }

    /// `POST path_and_query` on node `id` with a JSON body (sent as is, so it may be invalid);
    /// panics on a transport error.
    pub fn post(&self, id: NodeId, path_and_query: &str, body: impl Into<String>) -> Reply {
        self.post_url(self.url(id, path_and_query).as_str(), body)
    }

    /// `POST url` with a JSON body, e.g. to follow a redirect; panics on a transport error.
    pub fn post_url(&self, url: &str, body: impl Into<String>) -> Reply {
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.into());
        Self::send(request).unwrap_or_else(|error| panic!("POST {url}: {error}"))
    }

    /// `DELETE path_and_query` on node `id` with a JSON body (sent as is, e.g. rqlite's
    /// `/remove`); panics on a transport error.
    pub fn delete(&self, id: NodeId, path_and_query: &str, body: impl Into<String>) -> Reply {
        let url = self.url(id, path_and_query);
        let request = self
            .client
            .delete(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.into());
        Self::send(request).unwrap_or_else(|error| panic!("DELETE {url}: {error}"))
    }

    /// `POST /db/execute?<params>` on node `id`; `Err` with a description on a transport error
    /// or a status other than 200. For writers that expect some requests to fail.
    pub fn try_execute(
        &self,
        id: NodeId,
        params: &str,
        statements: &Value,
    ) -> Result<Response, String> {
        let path = if params.is_empty() {
            "/db/execute".to_string()
        } else {
            format!("/db/execute?{params}")
        };
        let url = self.url(id, &path);
        let request = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(statements.to_string());
        let reply = Self::send(request).map_err(|error| format!("POST {url}: {error}"))?;
        if reply.status != 200 {
            return Err(format!("POST {url}: status {}: {}", reply.status, reply.body));
        }
        serde_json::from_str(&reply.body)
            .map(Response)
            .map_err(|error| format!("POST {url}: {error}: {}", reply.body))
    }

    /// `POST /db/execute?<params>` (e.g. `"transaction"`, or `""`) on node `id`; panics unless
    /// the answer is 200 with JSON. Per-statement errors are in the [`Response`].
    pub fn execute_with(&self, id: NodeId, params: &str, statements: Value) -> Response {
        self.try_execute(id, params, &statements).unwrap_or_else(|error| panic!("{error}"))
    }

    /// `POST /db/execute` on node `id`; see [`TestCluster::execute_with`].
    pub fn execute(&self, id: NodeId, statements: Value) -> Response {
        self.execute_with(id, "", statements)
    }

    /// `POST /db/execute` on node `id`, asserting that every statement succeeded; returns the
    /// write's lsn.
    pub fn execute_ok(&self, id: NodeId, statements: Value) -> Lsn {
        self.execute(id, statements).assert_ok().lsn()
    }

    /// `POST /db/request` (mixed reads and writes) on node `id`; panics unless 200 with JSON.
    pub fn request(&self, id: NodeId, statements: Value) -> Response {
        let reply = self.post(id, "/db/request", statements.to_string());
        assert_eq!(reply.status, 200, "node {id} /db/request: {}", reply.body);
        Response(reply.json())
    }

    /// `GET /db/query?q=<sql>&level=<level>` on node `id`; panics unless 200 with JSON.
    pub fn query(&self, id: NodeId, sql: &str, level: Level) -> Response {
        let mut url = self.url(id, "/db/query");
        url.query_pairs_mut().append_pair("q", sql).append_pair("level", level.as_str());
        let reply = Self::send(self.client.get(url.clone()))
            .unwrap_or_else(|error| panic!("GET {url}: {error}"));
        assert_eq!(reply.status, 200, "GET {url}: {}", reply.body);
        Response(reply.json())
    }

    /// `GET /db/query?<params>&q=<sql>` on node `id`, e.g. with params
    /// `"level=none&min_lsn=7&timeout=300ms"` (sent as is, so presence-only flags such as
    /// `freshness_strict` work); the raw answer whatever its status, or `Err` with a description
    /// on a transport error. For tests about read parameters and for readers that expect some
    /// requests to fail.
    pub fn try_query_with(&self, id: NodeId, sql: &str, params: &str) -> Result<Reply, String> {
        let mut url = self.url(id, "/db/query");
        url.query_pairs_mut().append_pair("q", sql);
        if !params.is_empty() {
            let q = url.query().unwrap_or_default().to_string();
            url.set_query(Some(&format!("{params}&{q}")));
        }
        Self::send(self.client.get(url.clone())).map_err(|error| format!("GET {url}: {error}"))
    }

    /// Like [`TestCluster::try_query_with`], panicking on a transport error.
    pub fn query_with(&self, id: NodeId, sql: &str, params: &str) -> Reply {
        self.try_query_with(id, sql, params).unwrap_or_else(|error| panic!("{error}"))
    }

    /// The rows of `sql` read from node `id`'s own data (`level=none`); panics if it fails.
    pub fn rows(&self, id: NodeId, sql: &str) -> Vec<Vec<Value>> {
        self.query(id, sql, Level::None).rows(0)
    }

    // ---- Comparing nodes ---------------------------------------------------------------------

    /// Node `id`'s whole database, read with `level=none`:
    /// `{"schema": [[type, name, tbl_name, sql], …], "tables": {name: {"columns", "values"}}}`.
    ///
    /// The schema comes from `sqlite_schema` ordered by type and name, without Keel's own
    /// `_keel_*` objects. Rowid tables are read as `SELECT rowid AS _rowid_, *` in rowid order,
    /// so rowids must replicate too (they are visible to users and to later `INSERT`s);
    /// `WITHOUT ROWID` tables are ordered by all their columns; `sqlite_sequence` by table name
    /// (its own rowids are an implementation detail no user can observe).
    pub fn dump(&self, id: NodeId) -> Value {
        self.dump_with(id, &[])
    }

    /// Like [`TestCluster::dump`], reading each table named in `summaries` with the paired
    /// query instead of all its rows: for tables too big to move through JSON in a test (tens
    /// of MiB of blobs), summarized by a query that still catches a missing, moved or damaged
    /// row (e.g. rowid, length and a few slices of each blob).
    pub fn dump_with(&self, id: NodeId, summaries: &[(&str, &str)]) -> Value {
        let schema = self.rows(
            id,
            "SELECT type, name, tbl_name, sql FROM sqlite_schema \
             WHERE substr(name, 1, 6) <> '_keel_' AND substr(tbl_name, 1, 6) <> '_keel_' \
             ORDER BY type, name",
        );
        let mut tables = serde_json::Map::new();
        for entry in schema.iter().filter(|entry| entry[0] == "table") {
            let name = entry[1].as_str().expect("table name is text");
            let create = entry[3].as_str().unwrap_or_default();
            let table = quote_ident(name);
            let summary = summaries.iter().find(|(table, _)| *table == name);
            let sql = if let Some((_, query)) = summary {
                (*query).to_string()
            } else if name == "sqlite_sequence" {
                format!(
                    "SELECT name, seq FROM {table} WHERE substr(name, 1, 6) <> '_keel_' ORDER BY name"
                )
            } else if is_without_rowid(create) {
                let columns =
                    self.query(id, &format!("SELECT * FROM {table} LIMIT 0"), Level::None);
                let count = columns.result(0)["columns"].as_array().map_or(0, Vec::len);
                let order: Vec<String> = (1..=count).map(|i| i.to_string()).collect();
                format!("SELECT * FROM {table} ORDER BY {}", order.join(", "))
            } else {
                format!("SELECT rowid AS _rowid_, * FROM {table} ORDER BY rowid")
            };
            let result = self.query(id, &sql, Level::None);
            tables.insert(
                name.to_string(),
                json!({"columns": result.result(0)["columns"], "values": result.rows(0)}),
            );
        }
        json!({"schema": schema, "tables": tables})
    }

    /// Waits until every running node has applied the leader's commit index, then asserts that
    /// all their [`TestCluster::dump`]s equal the leader's, and returns it. Call it when no
    /// writes are in flight.
    pub fn assert_consistent(&self) -> Value {
        self.assert_consistent_with(&[])
    }

    /// Like [`TestCluster::assert_consistent`], comparing [`TestCluster::dump_with`]`(summaries)`.
    pub fn assert_consistent_with(&self, summaries: &[(&str, &str)]) -> Value {
        let leader = self.leader();
        let lsn = self.status(leader).commit_index;
        self.wait_all_applied(lsn);
        let expected = self.dump_with(leader, summaries);
        for id in self.up().into_iter().filter(|&id| id != leader) {
            let actual = self.dump_with(id, summaries);
            if actual != expected {
                panic!(
                    "node {id} diverges from the leader (node {leader}) after both applied lsn {lsn}: {}",
                    first_difference(&expected, &actual, "$")
                );
            }
        }
        expected
    }
}

impl Drop for TestCluster {
    /// Kills every node. Prints their log tails if the test is failing; fails the test if it
    /// passed but some node exited on its own.
    fn drop(&mut self) {
        let crashed: Vec<(NodeId, ExitStatus)> = self
            .nodes
            .values()
            .filter_map(|node| node.exited().map(|status| (node.id, status)))
            .collect();
        for node in self.nodes.values() {
            node.terminate();
        }
        let panicking = std::thread::panicking();
        if panicking || !crashed.is_empty() {
            for node in self.nodes.values() {
                eprintln!(
                    "---- node {} ({}) log tail, {} ----\n{}",
                    node.id,
                    node.http_addr,
                    node.log_path.display(),
                    node.log_tail(LOG_TAIL_LINES)
                );
            }
            if std::env::var_os("KEEL_TEST_KEEP").is_some() {
                eprintln!("---- cluster directory kept: {}", self.dir.path().display());
            }
        }
        if !panicking && !crashed.is_empty() {
            panic!("nodes exited on their own during the test: {crashed:?}");
        }
    }
}

/// Reads the purged index from a WAL purge-point file; see [`TestCluster::purged_index`].
fn read_purge_point(path: &Path) -> Option<Lsn> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => panic!("cannot read {}: {error}", path.display()),
    };
    let index: [u8; 8] = bytes
        .get(4..12)
        .filter(|_| bytes.len() == 20)
        .and_then(|index| index.try_into().ok())
        .unwrap_or_else(|| panic!("{} is not a 20-byte purge point: {bytes:02x?}", path.display()));
    Some(Lsn::from_le_bytes(index))
}

/// Panics, naming `what` and the first difference by path, unless two [`TestCluster::dump`]s
/// (possibly of different clusters) are equal.
pub fn assert_same_dump(expected: &Value, actual: &Value, what: impl Display) {
    if expected != actual {
        panic!(
            "{what}: dumps differ (\"leader\" is the expected dump, \"node\" the actual one) {}",
            first_difference(expected, actual, "$")
        );
    }
}

/// Whether a `CREATE TABLE` statement makes a `WITHOUT ROWID` table: the table options after
/// the closing parenthesis of the column list mention it.
fn is_without_rowid(create: &str) -> bool {
    let options = create.rfind(')').map_or("", |end| &create[end + 1..]);
    let words: Vec<String> = options
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .map(str::to_ascii_uppercase)
        .collect();
    words.windows(2).any(|pair| pair[0] == "WITHOUT" && pair[1] == "ROWID")
}

/// Describes the first place where two JSON values differ, by path, for failure messages.
fn first_difference(expected: &Value, actual: &Value, path: &str) -> String {
    match (expected, actual) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().chain(b.keys()) {
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) if x == y => {}
                    (Some(x), Some(y)) => return first_difference(x, y, &format!("{path}.{key}")),
                    (x, y) => return format!("at {path}.{key}: leader has {x:?}, node has {y:?}"),
                }
            }
            format!("at {path}: objects differ")
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    return first_difference(x, y, &format!("{path}[{i}]"));
                }
            }
            let mut message =
                format!("at {path}: leader has {} elements, node has {}", a.len(), b.len());
            let extra = if a.len() > b.len() { &a[b.len()..] } else { &b[a.len()..] };
            if let Some(first) = extra.first() {
                let _ = write!(message, "; first extra element: {first}");
            }
            message
        }
        (x, y) => format!("at {path}: leader has {x}, node has {y}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_rowid_is_detected_after_the_column_list() {
        assert!(is_without_rowid("CREATE TABLE t(k TEXT PRIMARY KEY) WITHOUT ROWID"));
        assert!(is_without_rowid("CREATE TABLE t(k TEXT PRIMARY KEY)\n  without\trowid, STRICT"));
        assert!(is_without_rowid("CREATE TABLE t(k TEXT PRIMARY KEY) STRICT, WITHOUT ROWID"));
        assert!(!is_without_rowid("CREATE TABLE t(k TEXT PRIMARY KEY)"));
        assert!(!is_without_rowid("CREATE TABLE t(without_rowid INT, \"without rowid\" INT)"));
        assert!(!is_without_rowid(""));
    }

    #[test]
    fn first_difference_names_the_path() {
        let a = json!({"tables": {"t": {"values": [[1, "a"], [2, "b"]]}}});
        let b = json!({"tables": {"t": {"values": [[1, "a"], [2, "c"]]}}});
        assert_eq!(
            first_difference(&a, &b, "$"),
            r#"at $.tables.t.values[1][1]: leader has "b", node has "c""#
        );
        let c = json!({"tables": {"t": {"values": [[1, "a"]]}}});
        assert_eq!(
            first_difference(&a, &c, "$"),
            r#"at $.tables.t.values: leader has 2 elements, node has 1; first extra element: [2,"b"]"#
        );
    }

    #[test]
    fn purge_point_is_read_from_the_wal_metadata_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("purged");
        assert_eq!(read_purge_point(&path), None);
        // As written by a node that purged through index 499 in term 1: CRC, index, term.
        let bytes =
            [0x3c, 0x7a, 0xb9, 0x33, 0xf3, 0x01, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0];
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(read_purge_point(&path), Some(499));
        std::fs::write(&path, &bytes[..16]).unwrap();
        assert!(std::panic::catch_unwind(|| read_purge_point(&path)).is_err());
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(16);
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 16);
        assert!(ports.iter().all(|&port| port != 0));
    }

    #[test]
    fn response_accessors_follow_the_rqlite_encoding() {
        let response = Response(json!({
            "results": [{}, {"last_insert_id": 3, "rows_affected": 1}, {"columns": ["a"], "types": [""]},
                        {"columns": ["a"], "types": ["integer"], "values": [[1], [2]]}, {"error": "boom"}],
            "lsn": 7
        }));
        assert_eq!(response.lsn(), 7);
        assert_eq!((response.last_insert_id(0), response.rows_affected(0)), (0, 0));
        assert_eq!((response.last_insert_id(1), response.rows_affected(1)), (3, 1));
        assert_eq!(response.rows(2), Vec::<Vec<Value>>::new());
        assert_eq!(response.rows(3), vec![vec![json!(1)], vec![json!(2)]]);
        assert_eq!(response.error(3), None);
        assert_eq!(response.error(4), Some("boom"));
    }
}
