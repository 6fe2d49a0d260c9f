//! [`TestCluster`]: starting a cluster, its topology, faults, and waiting on it.
//!
//! The life cycle is in the crate docs. This module lays the nodes out ([`TestCluster::start`]),
//! boots and joins them one at a time, grows the cluster, injects process faults (SIGKILL,
//! SIGTERM, SIGSTOP/SIGCONT) and waits for leaders and applied positions. Requests are in
//! `http`, comparing nodes in `dump`.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::Instant;

use keel_api::status::{Role, Status};
use reqwest::header::HeaderMap;

use crate::api::Clients;
use crate::process::{Node, Process, free_ports, keel_binary, read_purge_point};
use crate::{
    LOG_TAIL_LINES, Lsn, NodeId, POLL_INTERVAL, START_ATTEMPTS, TIMEOUT, lock, poll, wait_for,
};

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
    pub(crate) nodes: BTreeMap<NodeId, Node>,
    /// Nodes lost for good ([`TestCluster::retire`]): no longer counted or asked, kept so that
    /// their ids are not reused and their logs are printed on failure.
    pub(crate) retired: BTreeMap<NodeId, Node>,
    /// The clients requests go out with (raw HTTP and `keel_api`).
    pub(crate) clients: Clients,
    /// The tmpfs mounted on each node's data directory, if the cluster was started on them
    /// ([`TestCluster::start_on_tmpfs`]); unmounted before the directory is removed.
    mounts: Vec<crate::tmpfs::Tmpfs>,
    /// The cluster's directory: one data directory and one log file per node.
    pub(crate) dir: tempfile::TempDir,
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
        Self::launch(voters, learners, extra_args, &[], headers, None)
    }

    /// [`TestCluster::start_with_headers`] whose `keel` processes also get the environment
    /// variables `env` (e.g. an object store's endpoint and keys), on every start.
    pub fn start_with_env(
        voters: usize,
        learners: usize,
        extra_args: &[&str],
        env: &[(&str, &str)],
        headers: HeaderMap,
    ) -> Self {
        Self::launch(voters, learners, extra_args, env, headers, None)
    }

    /// [`TestCluster::start_with`] with every node's data directory on a tmpfs of its own of
    /// `size` (`64m`), so that a test can fill one node's disk ([`TestCluster::fill_disk`]).
    /// Needs root: check [`crate::tmpfs::available`] first.
    pub fn start_on_tmpfs(voters: usize, learners: usize, extra_args: &[&str], size: &str) -> Self {
        Self::launch(voters, learners, extra_args, &[], HeaderMap::new(), Some(size))
    }

    /// Lays out, mounts (with `tmpfs`) and boots a cluster, retrying on fresh ports when a
    /// node found its port taken.
    fn launch(
        voters: usize,
        learners: usize,
        extra_args: &[&str],
        env: &[(&str, &str)],
        headers: HeaderMap,
        tmpfs: Option<&str>,
    ) -> Self {
        assert!(voters >= 1, "a cluster needs at least one voter");
        keel_binary();
        let mut attempt = 1;
        loop {
            let mut cluster = Self::new(voters, learners, extra_args, env, headers.clone());
            if let Some(size) = tmpfs {
                cluster.mounts = cluster
                    .nodes
                    .values()
                    .map(|node| crate::tmpfs::Tmpfs::mount(&node.data_dir, size))
                    .collect::<Result<_, _>>()
                    .unwrap_or_else(|e| panic!("cannot put the nodes on tmpfs: {e}"));
            }
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
    pub(crate) fn new(
        voters: usize,
        learners: usize,
        extra_args: &[&str],
        env: &[(&str, &str)],
        headers: HeaderMap,
    ) -> Self {
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
                    env: env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect(),
                    process: Mutex::new(Process::default()),
                },
            );
        }
        let clients = Clients::new(&bootstrap_http, headers);
        Self { nodes, clients, mounts: Vec::new(), dir, retired: BTreeMap::new(), _slot: slot }
    }

    /// Starts node 1, then joins the others one at a time; see the module docs.
    fn boot(&self) -> Result<(), StartError> {
        let bootstrap = self.node(1);
        bootstrap.spawn();
        self.await_start(1, "node 1 to bootstrap and become ready", || {
            self.ready(1) && self.try_status(1).is_some_and(|s| s.node.role == Role::Leader)
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
        let role = self.try_status(id).map(|status| status.node.role);
        let role_ok = if learner {
            role == Some(Role::Learner)
        } else {
            matches!(role, Some(Role::Follower | Role::Leader))
        };
        listed && role_ok
    }

    /// The node with id `id`; panics if there is none.
    pub(crate) fn node(&self, id: NodeId) -> &Node {
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
        let extra_args = self.node(leader).extra_args.clone();
        let env = self.node(leader).env.clone();
        let id = self.nodes.keys().chain(self.retired.keys()).max().copied().unwrap_or(0) + 1;
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
            env,
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
                self.try_status(id).map(|status| describe(&status))
            );
        }
    }

    /// Treats node `id` as lost for good (after [`TestCluster::kill`], for a lost majority):
    /// it is killed if running and no longer counted among the voters, asked for its status or
    /// compared. Its id is not given to a new node.
    pub fn retire(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).unwrap_or_else(|| panic!("no node {id} in this cluster"));
        node.terminate();
        self.retired.insert(id, node);
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

    /// Waits until node `id` exits on its own (a node that stops on a fatal error), reaps it and
    /// returns how it exited, so that the cluster's `Drop` does not count it as a crash. Panics
    /// if it still runs after [`TIMEOUT`].
    pub fn wait_exited(&self, id: NodeId) -> ExitStatus {
        let status =
            wait_for(TIMEOUT, format!("node {id} to exit on its own"), || self.node(id).exited());
        lock(&self.node(id).process).child = None;
        status
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
        self.restart_with(id, &[]);
    }

    /// [`TestCluster::restart`] with `more` `keel serve` arguments for this start only (a later
    /// restart drops them), e.g. a planted bug in one node.
    pub fn restart_with(&self, id: NodeId, more: &[&str]) {
        self.restart_until(id, more, "be ready", || self.ready(id));
    }

    /// Restarts node `id` like [`TestCluster::restart`], but waits only until it answers
    /// (`/readyz?noleader`), not until it is ready: for a node that comes back where it cannot
    /// be (a leader of a stale term whose peers are paused says it cannot reach a quorum).
    pub fn restart_answering(&self, id: NodeId) {
        self.restart_until(id, &[], "answer", || self.answering(id));
    }

    /// Stops node `id` if it runs, starts it with `more` arguments, and waits until `done`.
    fn restart_until(&self, id: NodeId, more: &[&str], what: &str, done: impl FnMut() -> bool) {
        if lock(&self.node(id).process).child.is_some() {
            self.stop(id);
        }
        self.node(id).spawn_with(more);
        if let Err(error) =
            self.await_start(id, format!("node {id} to {what} after a restart"), done)
        {
            panic!("node {id} did not restart: {error}");
        }
    }

    /// Starts node `id` (stopped, e.g. killed) with its usual arguments and waits until it
    /// exits by itself, as a node that refuses to start does; returns what it wrote to its log
    /// during this start. Panics if it has not exited within [`TIMEOUT`] or exits with success.
    pub fn start_refused(&self, id: NodeId) -> String {
        let node = self.node(id);
        let before = std::fs::metadata(&node.log_path).map_or(0, |m| m.len());
        node.spawn();
        self.wait_failed(id, before)
    }

    /// Waits until running node `id` exits by itself with a failure, as a node that stops on
    /// an error does; returns what it wrote to its log after byte `from`. Panics if it has not
    /// exited within [`TIMEOUT`] or exits with success.
    pub fn wait_failed(&self, id: NodeId, from: u64) -> String {
        let status = self.wait_exited(id);
        assert!(!status.success(), "node {id} exited with success");
        let log = std::fs::read(&self.node(id).log_path).unwrap_or_default();
        String::from_utf8_lossy(&log[usize::try_from(from).unwrap_or(0).min(log.len())..])
            .into_owned()
    }

    /// Freezes node `id` with SIGSTOP. It keeps its sockets but answers nothing. Returns once
    /// every thread of the process has stopped: the signal alone only asks for it, and a thread
    /// busy on another core could still answer a message sent after this call.
    pub fn pause(&self, id: NodeId) {
        let node = self.node(id);
        let mut process = lock(&node.process);
        assert!(!process.paused, "node {id} is already paused");
        node.signal(&process, libc::SIGSTOP);
        process.paused = true;
        let pid = process.child.as_ref().map(std::process::Child::id);
        drop(process);
        if let Some(pid) = pid {
            wait_for(TIMEOUT, format!("node {id} to stop"), || all_stopped(pid).then_some(()));
        }
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

    /// The leader right now, if a majority of all voters (counting only those that answer)
    /// names the same leader in the same term and that node says it leads.
    pub fn current_leader(&self) -> Option<NodeId> {
        let majority = self.voters().len() / 2 + 1;
        let statuses: Vec<keel_api::status::Node> =
            self.voters().into_iter().filter_map(|id| Some(self.try_status(id)?.node)).collect();
        statuses
            .iter()
            .filter(|s| s.role == Role::Leader && s.leader_id == Some(s.id))
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
                    Some(status) => describe(&status),
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
            self.try_status(id).filter(|s| s.node.applied_index >= lsn)
        });
        if applied.is_none() {
            let now = self.try_status(id).map(|status| describe(&status));
            panic!(
                "timed out after {TIMEOUT:?} waiting for node {id} to apply lsn {lsn}; its status now: {now:?}"
            );
        }
    }

    /// Fills node `id`'s disk with a balloon file (its data directory must be on a tmpfs of its
    /// own: [`TestCluster::start_on_tmpfs`]).
    pub fn fill_disk(&self, id: NodeId) {
        assert!(!self.mounts.is_empty(), "fill_disk needs a cluster started on tmpfs");
        crate::tmpfs::fill(self.data_dir(id));
    }

    /// Removes node `id`'s balloon file.
    pub fn free_disk(&self, id: NodeId) {
        crate::tmpfs::free(self.data_dir(id));
    }

    /// Waits until every running, unpaused node has applied `lsn`.
    pub fn wait_all_applied(&self, lsn: Lsn) {
        for id in self.up() {
            self.wait_applied(id, lsn);
        }
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
            for node in self.nodes.values().chain(self.retired.values()) {
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

/// What a failure message shows of a node's `/status`: its Raft state, not the whole document.
fn describe(status: &Status) -> String {
    let node = &status.node;
    format!(
        "node {} {} term {} leader {:?} log {} commit {} applied {}",
        node.id,
        node.role.as_str(),
        node.term,
        node.leader_id,
        node.last_log_index,
        node.commit_index,
        node.applied_index
    )
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc/PID/task/*/stat`).
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses and may hold spaces.
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    })
}
