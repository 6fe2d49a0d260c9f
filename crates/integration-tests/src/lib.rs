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
//! Everything is blocking (`keel_api::blocking`, `reqwest::blocking`, `std::thread`): tests that need concurrency use
//! `std::thread::scope`, and every method takes `&self`, so a [`TestCluster`] can be shared by
//! the writer threads and the thread that restarts nodes under them.
//!
//! # Modules
//!
//! * `process`: building `keel`, picking ports, one node's process (start, signal, reap, log).
//! * `cluster`: [`TestCluster`]: boot and join, topology, growing, faults, waiting.
//! * `api`: the calls whose answers tests read, through `keel_api` with its wire types
//!   ([`Response`], [`Status`]); [`TestCluster::client`] for a client of the whole cluster.
//! * `http`: raw requests to one node ([`Reply`], [`RawReply`]), for tests about bytes,
//!   statuses and headers.
//! * `dump`: comparing nodes ([`TestCluster::dump`], [`TestCluster::assert_consistent`]).
//! * `orchestrate`: clusters formed as orchestrators form them: `--bootstrap-expect`
//!   ([`TestCluster::start_expecting`]), with the nodes found through DNS
//!   ([`TestCluster::discovering`], served by `dns`: [`DnsServer`], a small authoritative
//!   DNS server whose records the test changes).
//! * [`tmpfs`]: a tmpfs per node ([`TestCluster::start_on_tmpfs`]) and a balloon to fill it
//!   ([`TestCluster::fill_disk`]), for full-disk tests.
//! * [`chaos`]: `keel-chaos`, the fault harness with network faults; [`tour`]: the documentation
//!   run as a test.
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

mod api;
pub mod chaos;
mod cluster;
mod dns;
mod dump;
mod http;
pub mod inproc;
mod orchestrate;
mod process;
pub mod tmpfs;
pub mod tour;

use std::fmt::Display;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub use api::Response;
pub use cluster::TestCluster;
pub use dns::DnsServer;
pub use dump::assert_same_dump;
pub use http::{RawReply, Reply};
pub use keel_api::Level;
pub use keel_api::status::{Role, Status};
pub use orchestrate::{DISCOVERY_HOST, Discover};
pub use process::{free_ports, keel_binary};

/// A node's id, as passed to `keel serve --id`. Nodes of a [`TestCluster`] are numbered from 1:
/// voters first, then learners.
pub type NodeId = u64;

/// A log index: the `lsn` of a write answer, or an index reported by `/status`.
pub type Lsn = u64;

/// How long any wait (readiness, election, apply, a test's own conditions) may take before the
/// test fails. Generous, because tests share a small machine with each other and with builds.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Pause between two polls of a condition.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Timeout of a request that only probes a node (`/status`, `/readyz`): a node that does not
/// answer within it counts as not ready, and the poll goes on.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Timeout of a client request (execute, query). Writes may wait for an election or a
/// forwarded round trip, so this is longer than a probe.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How many times [`TestCluster::start`] retries on fresh ports when a node finds its port
/// taken.
pub(crate) const START_ATTEMPTS: usize = 3;

/// How many lines of each node's log are printed when a test fails.
pub(crate) const LOG_TAIL_LINES: usize = 60;

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

/// Locks a mutex, ignoring poisoning: a test that panicked while holding a lock must still be
/// able to kill its nodes and print their logs.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
