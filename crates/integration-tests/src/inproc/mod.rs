//! An in-process cluster: N real Keel nodes in one test process, connected by the in-memory
//! Raft network ([`raft::network::memory`]) instead of HTTP.
//!
//! Each node is what `keel serve` runs, minus HTTP ([`Node`]): its own directory, the real
//! `wal` log store, the real [`sql::Db`], the real [`follower::Replica`] state machine and the
//! real [`leader::Leader`] writer. What connects them is a [`Switchboard`] the test holds, so
//! a test can do what is awkward with processes: cut the network between two node sets
//! ([`Cluster::partition`], [`Cluster::isolate`], [`Cluster::heal`]), lose or hold one exact
//! message ([`Switchboard::drop_next`], [`Switchboard::hold_next`] with a
//! [`raft::network::memory::Match`]), read the log of every message, or hold a node's database
//! mutex so its writer stops between two steps.
//!
//! It complements the real-process [`crate::TestCluster`]; it does not replace it. Processes test
//! the whole binary (CLI, HTTP, forwarding, TLS, kill -9); this tests the protocol, with the
//! network in the test's hands.
//!
//! # How a test flows
//!
//! 1. [`Cluster::new`] (or [`Cluster::with_options`]) starts nodes 1..=N in a temporary
//!    directory, initializes the cluster on node 1 with every node a voter, and waits for a
//!    leader.
//! 2. The test writes through a node's writer ([`Cluster::write`]; a node that does not lead
//!    answers [`leader::Error::NotLeader`], as the HTTP layer would before forwarding), reads
//!    ([`Cluster::read_linearizable`], [`Cluster::read_local`]), injects faults
//!    ([`Cluster::partition`], [`Cluster::crash`], [`Cluster::restart`], rules on
//!    [`Cluster::board`]) and waits for conditions ([`Cluster::leader`],
//!    [`Cluster::leader_among`], [`Cluster::wait_applied`], [`Switchboard::wait_for`]).
//! 3. [`Cluster::assert_consistent`] waits until every running node has applied the leader's
//!    log and checks that every database dump equals the leader's.
//!
//! Every wait has a deadline ([`Options::wait`]) and fails naming its condition; nothing sleeps
//! to let things settle. Polls of Raft's state pause [`POLL`] between looks.
//!
//! Why it lives here, as a library module of `integration-tests`, rather than in a `testing`
//! module of `raft` or `leader`: it needs every layer (wal, sql, raft, follower, leader), which
//! only a crate above them all may depend on, and as a library module any test of this crate
//! (and any later crate that depends on this one) can use it.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * Time is real, not paused: the log store fsyncs on a thread of its own, which tokio's
//!   paused clock would not wait for, so elections would fire while an fsync runs. The
//!   switchboard makes the network deterministic; timing (elections, heartbeats) is openraft's.
//! * A crash stops the node's Raft and drops its handles: like kill -9 of a process, the page
//!   cache survives. Losing unsynced writes (power loss) is the fault harness's job (`keel-chaos`).

mod node;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
pub use node::Node;
use raft::NodeId;
use raft::network::memory::Switchboard;

/// Pause between two looks at Raft's state while waiting for a condition.
pub const POLL: Duration = Duration::from_millis(10);

/// Timing of an in-process cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Raft's timing. The defaults are a little slower than `keel serve`'s (50 ms heartbeats,
    /// 300 ms election timeout): tests share a small machine with builds, and a spurious
    /// election would make a scenario test something else than it means to.
    pub raft: raft::Options,
    /// How long a write may wait to commit before its answer says so (the writer's
    /// `sync_timeout`).
    pub write_timeout: Duration,
    /// How long a linearizable read may wait for a read index and for this node to apply it.
    pub read_timeout: Duration,
    /// How long any wait of the harness may take before the test fails.
    pub wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            raft: raft::Options {
                heartbeat_interval: Duration::from_millis(50),
                election_timeout_min: Duration::from_millis(300),
                ..raft::Options::default()
            },
            write_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(2),
            wait: Duration::from_secs(20),
        }
    }
}

/// N nodes in one process over one switchboard. See the module docs.
pub struct Cluster {
    /// Holds every node's directory (`node<id>/`); deleted on drop.
    dir: tempfile::TempDir,
    /// The network.
    board: Switchboard,
    /// Timing.
    options: Options,
    /// Every node by id; `None` while crashed.
    nodes: BTreeMap<NodeId, Option<Node>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir.path())
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

/// A write request of one statement, as `/db/execute` makes it.
pub fn request(sql: &str) -> sql::WriteRequest {
    sql::WriteRequest {
        statements: vec![sql::Statement::new(sql)],
        transaction: false,
        timeout: None,
        rows: false,
        request_id: None,
    }
}

impl Cluster {
    /// Starts `n` voters with the default [`Options`] and waits for a leader.
    pub async fn new(n: u64) -> anyhow::Result<Cluster> {
        Cluster::with_options(n, Options::default()).await
    }

    /// Starts `n` voters (ids 1..=n), initializes the cluster on node 1 with all of them, and
    /// waits for a leader.
    pub async fn with_options(n: u64, options: Options) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("keel-inproc-").tempdir()?;
        let mut cluster =
            Cluster { dir, board: Switchboard::new(), options, nodes: BTreeMap::new() };
        for id in 1..=n {
            let node =
                Node::start(id, &cluster.dir_of(id), &cluster.options, &cluster.board).await?;
            cluster.nodes.insert(id, Some(node));
        }
        let members: BTreeMap<NodeId, raft::MemberAddr> = (1..=n)
            .map(|id| {
                let addr = format!("memory:{id}");
                (id, raft::MemberAddr::new(addr.clone(), addr))
            })
            .collect();
        cluster.node(1).raft.initialize(members).await.map_err(|e| anyhow!("initialize: {e}"))?;
        cluster.leader().await?;
        Ok(cluster)
    }

    fn dir_of(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    /// The switchboard: rules on single messages, and the log of every message.
    pub fn board(&self) -> &Switchboard {
        &self.board
    }

    /// The timing the cluster runs with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Running node `id`. Panics if it is crashed or unknown: a test that asks for a node it
    /// crashed is wrong.
    pub fn node(&self, id: NodeId) -> &Node {
        match self.nodes.get(&id) {
            Some(Some(node)) => node,
            Some(None) => panic!("node {id} is crashed; restart it first"),
            None => panic!("node {id} is not a member of this cluster"),
        }
    }

    /// The ids of the running nodes.
    pub fn running(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.is_some()).map(|(id, _)| *id).collect()
    }

    /// Waits for the leader: the running node that leads in the highest term any running node
    /// knows of (an old leader cut off from the majority may still think it leads, in an older
    /// term).
    pub async fn leader(&self) -> anyhow::Result<NodeId> {
        self.leader_among(&self.running()).await
    }

    /// [`Cluster::leader`] among `ids` only: the node of `ids` that leads in the highest term
    /// any of them knows of.
    pub async fn leader_among(&self, ids: &[NodeId]) -> anyhow::Result<NodeId> {
        self.poll(&format!("a leader among nodes {ids:?}"), || {
            let states: Vec<_> = ids.iter().map(|&id| self.node(id).state()).collect();
            let term = states.iter().map(|s| s.term).max()?;
            states
                .iter()
                .find(|s| s.role == raft::cluster::Role::Leader && s.term == term)
                .map(|s| s.id)
        })
        .await
    }

    /// Writes `sql` through node `id`'s writer with semi-sync durability: the answer comes once
    /// a majority has the record durably and node `id` has applied it.
    pub async fn write(&self, id: NodeId, sql: &str) -> leader::Result<leader::Outcome> {
        self.node(id).leader.write(request(sql), leader::Durability::SemiSync).await
    }

    /// [`Cluster::write`], failing also when the statement itself failed; returns its log index.
    pub async fn execute(&self, id: NodeId, sql: &str) -> anyhow::Result<wal::Lsn> {
        let outcome = self.write(id, sql).await.with_context(|| format!("node {id}: {sql}"))?;
        for result in &outcome.results {
            if let sql::StatementResult::Error(e) = result {
                bail!("node {id}: {sql}: {e}");
            }
        }
        Ok(outcome.lsn)
    }

    /// Reads `sql` from node `id`'s own copy, whatever it has applied (`level=none`).
    pub fn read_local(&self, id: NodeId, sql: &str) -> anyhow::Result<sql::StatementResult> {
        let mut results = self.node(id).readers.query(&[sql::Statement::new(sql)], false)?;
        results.pop().ok_or_else(|| anyhow!("no result for {sql}"))
    }

    /// A linearizable read on node `id`, as `level=linearizable` serves it on any node: the
    /// leader confirms its leadership with a quorum and names a read index (node `id` itself
    /// if it leads, else through the switchboard, as `/keel/read-index`); node `id` waits until
    /// it has applied that index and reads its own copy. Fails, reading nothing, if that does
    /// not happen within [`Options::read_timeout`].
    pub async fn read_linearizable(
        &self,
        id: NodeId,
        sql: &str,
    ) -> anyhow::Result<sql::StatementResult> {
        let limit = self.options.read_timeout;
        let node = self.node(id);
        let index = async {
            if raft::client::leader_term(&node.raft).is_ok() {
                return raft::client::barrier(&node.raft, raft::ReadPolicy::ReadIndex)
                    .await
                    .map_err(anyhow::Error::from);
            }
            let leader = loop {
                match raft::cluster::leader(&node.raft) {
                    Some(l) if l.id != id => break l.id,
                    _ => tokio::time::sleep(POLL).await,
                }
            };
            self.board.read_index(id, leader, limit).await.map_err(anyhow::Error::from)
        };
        let index = tokio::time::timeout(limit, index)
            .await
            .map_err(|_| anyhow!("node {id}: no read index within {limit:?}"))??;
        let mut applied = node.applied.clone();
        match tokio::time::timeout(limit, applied.wait_for(|a| *a >= index)).await {
            Ok(Ok(_)) => self.read_local(id, sql),
            Ok(Err(_)) => bail!("node {id} stopped before applying read index {index}"),
            Err(_) => bail!("node {id}: read index {index} not applied within {limit:?}"),
        }
    }

    /// Waits until node `id` has applied `index`.
    pub async fn wait_applied(&self, id: NodeId, index: wal::Lsn) -> anyhow::Result<()> {
        let mut applied = self.node(id).applied.clone();
        let wait = self.options.wait;
        let reached = tokio::time::timeout(wait, applied.wait_for(|a| *a >= index)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => bail!("node {id} stopped before applying {index}"),
            Err(_) => bail!("node {id} did not apply {index} within {wait:?}: it has {}", {
                *self.node(id).applied.borrow()
            }),
        }
    }

    /// Cuts every link between `a` and `b`, both directions.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        self.board.partition(a, b);
    }

    /// Cuts node `id` off from every other node.
    pub fn isolate(&self, id: NodeId) {
        self.board.isolate(id);
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.board.heal();
    }

    /// Crashes node `id`: it leaves the switchboard, its Raft stops, and every handle on it is
    /// dropped. Its directory stays, for [`Cluster::restart`].
    pub async fn crash(&mut self, id: NodeId) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).and_then(Option::take);
        let node = node.ok_or_else(|| anyhow!("node {id} is not running"))?;
        self.board.disconnect(id);
        node.raft.shutdown().await.map_err(|e| anyhow!("stopping node {id}: {e}"))?;
        Ok(())
    }

    /// Restarts crashed node `id` from its directory.
    pub async fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        if !matches!(self.nodes.get(&id), Some(None)) {
            bail!("node {id} is not crashed");
        }
        let node = Node::start(id, &self.dir_of(id), &self.options, &self.board).await?;
        self.nodes.insert(id, Some(node));
        Ok(())
    }

    /// Waits until every running node has applied the leader's whole log, then checks that
    /// every database equals the leader's. Returns the leader's dump.
    pub async fn assert_consistent(&self) -> anyhow::Result<String> {
        let leader = self.leader().await?;
        let last = self.node(leader).state().last_log_index;
        for id in self.running() {
            self.wait_applied(id, last).await?;
        }
        let expected = self.node(leader).dump().await?;
        for id in self.running() {
            let dump = self.node(id).dump().await?;
            if dump != expected {
                bail!("node {id} differs from leader {leader}:\n{dump}\n--- leader:\n{expected}");
            }
        }
        Ok(expected)
    }

    /// Polls `probe` until it returns `Some`, up to [`Options::wait`].
    pub async fn poll<T>(
        &self,
        what: &str,
        mut probe: impl FnMut() -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + self.options.wait;
        loop {
            if let Some(value) = probe() {
                return Ok(value);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("waited {:?} for {what}", self.options.wait);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
