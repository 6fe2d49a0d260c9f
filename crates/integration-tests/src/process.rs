//! One node's process: the `keel` binary it runs, the ports it listens on, and starting,
//! signalling and reaping it.
//!
//! [`keel_binary`] builds `keel` once per test process; [`free_ports`] hands out loopback ports;
//! a [`Node`] is one member's fixed command line (id, addresses, data directory, log file) with
//! its [`Process`] behind a mutex, so the cluster can start, signal and reap it from any thread.
//! What a node *is* to the cluster (its role, its readiness) is asked over HTTP elsewhere.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use crate::{LOG_TAIL_LINES, Lsn, NodeId, lock};

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

/// The process of a node, if it is running.
#[derive(Default)]
pub(crate) struct Process {
    /// The running process; `None` before the first start and after a kill or stop.
    pub(crate) child: Option<Child>,
    /// Whether the process is stopped with SIGSTOP.
    pub(crate) paused: bool,
    /// How many times the node was started; numbers the start markers in the log.
    pub(crate) starts: usize,
}

/// One node of a [`TestCluster`]: its fixed command line and its process.
///
/// Invariants:
/// * `data_dir` never changes, nor do `http_addr` and `raft_addr` except when a test moves the
///   node ([`TestCluster::move_node`](crate::TestCluster::move_node)): a restart reuses them, as
///   a real restart would.
/// * `process.child` is `Some` exactly while the harness considers the node started; a process
///   that exited on its own still has its `Child` until the harness reaps it.
pub(crate) struct Node {
    /// The node's id.
    pub(crate) id: NodeId,
    /// Whether the node joins as a learner (`--learner`).
    pub(crate) learner: bool,
    /// `127.0.0.1:<port>` of the HTTP API.
    pub(crate) http_addr: String,
    /// `127.0.0.1:<port>` of the Raft transport.
    pub(crate) raft_addr: String,
    /// The node's data directory (created by the node).
    pub(crate) data_dir: PathBuf,
    /// Where the node's stdout and stderr are appended, across restarts.
    pub(crate) log_path: PathBuf,
    /// The `--join` URL; `None` for node 1, which bootstraps the cluster.
    pub(crate) join: Option<String>,
    /// Further `keel serve` arguments, after the ones the harness sets (the same on every node
    /// of a cluster; see [`TestCluster::start_with`]).
    pub(crate) extra_args: Vec<String>,
    /// Environment variables of the process, besides the test's own (the same on every node).
    pub(crate) env: Vec<(String, String)>,
    /// The running process.
    pub(crate) process: Mutex<Process>,
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
    pub(crate) fn spawn(&self) {
        self.spawn_with(&[]);
    }

    /// [`Node::spawn`] with `more` arguments after the usual ones, for this start only.
    pub(crate) fn spawn_with(&self, more: &[&str]) {
        let mut process = lock(&self.process);
        assert!(process.child.is_none(), "node {} is already running", self.id);
        process.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|error| panic!("cannot open {}: {error}", self.log_path.display()));
        let mut args = self.args();
        args.extend(more.iter().map(|arg| (*arg).to_string()));
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
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start node {}: {error}", self.id));
        process.child = Some(child);
        process.paused = false;
    }

    /// Sends `signal` to the running process; panics if it is not running.
    pub(crate) fn signal(&self, process: &Process, signal: libc::c_int) {
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
    pub(crate) fn exited(&self) -> Option<ExitStatus> {
        let mut process = lock(&self.process);
        process.child.as_mut()?.try_wait().expect("cannot poll node process")
    }

    /// Whether the process is started and not paused, i.e. expected to answer requests.
    pub(crate) fn is_up(&self) -> bool {
        let process = lock(&self.process);
        process.child.is_some() && !process.paused
    }

    /// SIGKILLs the process, if running, and reaps it.
    pub(crate) fn terminate(&self) {
        let mut process = lock(&self.process);
        if let Some(mut child) = process.child.take() {
            // The process may have exited already; then kill fails and wait reaps it.
            let _ = child.kill();
            let _ = child.wait();
        }
        process.paused = false;
    }

    /// The last `lines` lines of the node's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
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
    pub(crate) fn log_says_port_taken(&self) -> bool {
        let tail = self.log_tail(LOG_TAIL_LINES).to_lowercase();
        tail.contains("address already in use") || tail.contains("addrinuse")
    }
}
/// Reads the purged index from a WAL purge-point file; see [`TestCluster::purged_index`].
pub(crate) fn read_purge_point(path: &Path) -> Option<Lsn> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
