//! One node of an in-process cluster, wired as `node::Node::start` (`crates/node`) wires one,
//! minus HTTP: the database, the follower's state machine on it, Raft over the switchboard, and
//! the leader's writer.
//!
//! What `serve` does and this does not: the client and Raft-port HTTP servers, the write queue,
//! TLS, the applied-position reports to the leader (so `sync` and `replicas:K` writes cannot be
//! confirmed here: use semi-sync, Raft's own commit), and the bootstrap or join, which the
//! cluster does once for every node ([`super::Cluster::new`]).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use raft::network::Contact;
use raft::network::memory::Switchboard;
use tokio::sync::watch;

use super::Options;

/// The handles of one running node. Dropping them (after [`raft::Raft::shutdown`]) is a crash:
/// nothing else of the node survives but its directory.
pub struct Node {
    /// The node's id.
    pub id: raft::NodeId,
    /// Its Raft node.
    pub raft: raft::Raft,
    /// Its write path (the writer task: speculation, conditional proposal).
    pub leader: leader::Leader,
    /// Read-only connections to its database.
    pub readers: sql::Readers,
    /// The index it has applied, published after every apply.
    pub applied: watch::Receiver<wal::Lsn>,
    /// Its database thread, owning the read-write database, shared by the state machine and
    /// the writer (a job that blocks holds both back).
    pub db: sql::Worker,
    /// When it last heard from a leader (recorded by the switchboard's delivery of appends).
    pub contact: Arc<Contact>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Node {
    /// Opens (or creates) node `id`'s database and log in `dir`, starts Raft over `board`, and
    /// connects the node to it. Nothing is initialized: a new node waits to be told its
    /// cluster, a restarted one carries on from its directory.
    pub async fn start(
        id: raft::NodeId,
        dir: &Path,
        options: &Options,
        board: &Switchboard,
    ) -> anyhow::Result<Node> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let db = sql::Db::open(&dir.join("db"))
            .with_context(|| format!("opening node {id}'s database in {}", dir.display()))?;
        let readers = db.readers(2).context("opening read connections")?;
        let replica = follower::Replica::new(db).context("starting the database thread")?;
        let db = replica.db();
        let started =
            raft::start_with(id, dir, &options.raft, Arc::new(replica.clone()), |stats| {
                board.network(id, stats)
            })
            .await
            .with_context(|| format!("starting node {id}'s Raft"))?;
        let leader = leader::Leader::spawn(
            started.raft.clone(),
            db.clone(),
            replica.applied(),
            Arc::new(leader::Progress::default()),
            leader::Options { sync_timeout: options.write_timeout, ..Default::default() },
        );
        let contact = Arc::new(Contact::default());
        board.connect(id, started.raft.clone(), contact.clone());
        Ok(Node {
            id,
            raft: started.raft,
            leader,
            readers,
            applied: replica.applied(),
            db,
            contact,
        })
    }

    /// The node's view of itself and the cluster (role, term, positions).
    pub fn state(&self) -> raft::cluster::State {
        raft::cluster::state(&self.raft)
    }

    /// The index this node has applied.
    pub fn applied(&self) -> wal::Lsn {
        *self.applied.borrow()
    }

    /// A dump of the node's database (schema and rows, Keel's tables left out), read through
    /// the read-write connection so it shows exactly what was applied.
    pub async fn dump(&self) -> anyhow::Result<String> {
        self.db
            .run(|db| db.dump())
            .await
            .with_context(|| format!("dumping node {}'s database", self.id))
    }
}
