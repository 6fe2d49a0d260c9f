//! The openraft adapter: everything Keel needs from Raft, and the only crate that names
//! openraft types.
//!
//! Raft decides three things for Keel: which node leads (so two nodes never both accept
//! writes), which records are committed (a quorum of voters has them durably), and in which
//! order every node applies them. This crate wires openraft to the rest of the system:
//!
//! - [`types`]: the type configuration. An entry carries a [`wal::Record`]; log ids are
//!   `(term, index)` (classic Raft, one leader per term).
//! - [`log_store`]: openraft's `RaftLogStorage` on the segmented [`wal::Log`]. The Raft log IS
//!   the WAL: one fsync per appended batch, vote and committed position persisted.
//! - [`log_reader`]: [`LogReader`], bounded reads of the log for readers outside Raft (the
//!   change stream), refusing starts that were compacted away.
//! - [`state_machine`]: openraft's `RaftStateMachine`, delegating to a [`state_machine::Store`]
//!   (implemented by the `follower` crate on SQLite) so SQL stays out of this crate.
//!   Snapshots are SQLite database images kept as files beside the log.
//! - [`snapshot`]: the file a snapshot travels as ([`snapshot::SnapshotFile`]: never loaded
//!   into memory, streamed from disk to disk), checksums, and [`SnapshotStats`] for operators.
//! - [`space`]: the data directory's free space, and the checks that keep a full disk from
//!   stopping the node (writes refused before they are proposed, appends refused before Raft
//!   sees them, applies tried again once space returns).
//! - [`client`]: the calls the leader makes (leadership check, read barrier, conditional
//!   proposal), with openraft's errors folded into one enum.
//! - [`cluster`]: members, roles and positions read from Raft's metrics; bootstrap and joins.
//! - [`network`]: node-to-node RPC as HTTP/JSON (append, vote, snapshot, transfer-leader), the
//!   client side on reqwest and the server side as an axum router; and
//!   [`network::memory`], the same RPCs between nodes of one process, for tests.
//! - [`prompt_election`]: an election as soon as a crashed leader's lease has run out, instead
//!   of a random election timeout later.
//! - [`recover`]: quorum recovery, offline: a membership entry naming the surviving voters
//!   appended to a stopped node's log (`keel admin recover`).
//! - [`Options`] and [`start`]: build a running [`Raft`] from a data directory
//!   ([`start_with`]: over a network of the caller's choice); a data directory whose recovery
//!   was interrupted is refused.
//!
//! What it deliberately does not do: execute SQL, talk to clients, or decide durability modes
//! (the `leader` crate does that on top of [`Raft`]).

pub mod client;
pub mod cluster;
pub mod log_reader;
pub mod log_store;
pub mod network;
pub mod prompt_election;
pub mod recover;
pub mod snapshot;
pub mod space;
pub mod state_machine;
pub mod types;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use log_reader::{LogEntry, LogReader};
pub use openraft::ServerState;
pub use openraft::metrics::RaftMetrics;
pub use openraft::{ChangeMembers, ReadPolicy};
pub use snapshot::{SnapshotCounts, SnapshotStats};
pub use types::*;

/// A running Raft node with Keel's types.
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
/// Raft's view of this node, published on every change.
pub type Metrics = RaftMetrics<TypeConfig>;

/// Timing and compaction settings of the Raft node.
///
/// # Why these snapshot defaults
///
/// A snapshot is a full copy of the database: building one reads and writes the whole database
/// (and checksums it), and sending one moves the whole database over the network, however few
/// rows changed. The log is the cheap way to catch up: a follower that was briefly away (a
/// restart, a network blip, a slow disk) only needs the entries it missed. So snapshots are
/// rare (`snapshot_entries` = 20,000 entries between them) and the log keeps
/// `max_in_snapshot_log_to_keep` = 1,000 entries that a snapshot already covers, so a follower
/// just behind the latest snapshot still catches up from the log instead of receiving the
/// whole database. The log on disk is bounded too (at most about 21,000 entries). A restart
/// does not depend on either: the database holds its applied position, and only entries after
/// it are replayed.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often the leader sends heartbeats to followers.
    pub heartbeat_interval: Duration,
    /// A follower that hears nothing from a leader for a random time in
    /// `[election_timeout_min, 4/3 * election_timeout_min)` after the leader lease (the upper
    /// bound) starts an election.
    pub election_timeout_min: Duration,
    /// Build a snapshot (and allow the log before it to be purged) after this many entries
    /// since the last one (openraft's `SnapshotPolicy::LogsSinceLast`).
    pub snapshot_entries: u64,
    /// Entries already covered by the latest snapshot that stay in the log, so a follower a
    /// little behind it catches up from the log rather than by a snapshot.
    pub max_in_snapshot_log_to_keep: u64,
    /// Options of the log's files (sync marks and the planted skip-fsync bug are for fault
    /// testing only).
    pub wal: wal::Options,
    /// How RPCs reach other nodes (plain HTTP, or the binary's mutual TLS).
    pub transport: network::Transport,
    /// Free bytes in the data directory below which the node takes no new writes or appends
    /// ([`space::Space`]).
    pub disk_reserve: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(40),
            election_timeout_min: Duration::from_millis(90),
            snapshot_entries: 20_000,
            max_in_snapshot_log_to_keep: 1_000,
            wal: wal::Options::default(),
            transport: network::Transport::plain(),
            disk_reserve: 64 << 20,
        }
    }
}

/// Errors from starting the Raft node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The WAL could not be opened (I/O error, or damage that is not a torn tail).
    #[error("write-ahead log: {0}")]
    Wal(#[from] wal::Error),
    /// Raft configuration or startup failed.
    #[error("raft: {0}")]
    Raft(String),
    /// Reading the state machine failed.
    #[error("state machine: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the log in `dir/raft`, the snapshot directory `dir/snapshots`, and starts Raft.
/// Returns the node and its snapshot counters (shared with the state machine and network).
pub async fn start(
    id: NodeId,
    dir: &Path,
    options: &Options,
    store: Arc<dyn state_machine::Store>,
) -> Result<(Raft, Arc<SnapshotStats>), Error> {
    let started = start_node(id, dir, options, store).await?;
    Ok((started.raft, started.stats))
}

/// A Raft node started by [`start_node`], with the handles that live beside it.
#[derive(Clone)]
pub struct Started {
    /// The running node.
    pub raft: Raft,
    /// Its snapshot counters (shared with the state machine and network).
    pub stats: Arc<SnapshotStats>,
    /// A read handle on its log, for readers outside Raft.
    pub log: LogReader,
    /// The data directory's free space (watched every [`space::OBSERVE_EVERY`]).
    pub space: Arc<space::Space>,
}

/// [`start`], also returning a [`LogReader`] on the node's log.
pub async fn start_node(
    id: NodeId,
    dir: &Path,
    options: &Options,
    store: Arc<dyn state_machine::Store>,
) -> Result<Started, Error> {
    let transport = options.transport.clone();
    start_with(id, dir, options, store, |stats| {
        network::Network::with_transport(id, stats, transport)
    })
    .await
}

/// [`start_node`] over the network `network` builds from the node's snapshot counters:
/// the HTTP [`network::Network`] (what [`start_node`] passes, over `options.transport`), or a
/// test's in-memory [`network::memory::Network`] (then `options.transport` is not used).
pub async fn start_with<N>(
    id: NodeId,
    dir: &Path,
    options: &Options,
    store: Arc<dyn state_machine::Store>,
    network: impl FnOnce(Arc<SnapshotStats>) -> N,
) -> Result<Started, Error>
where
    N: openraft::network::RaftNetworkFactory<TypeConfig>,
    N::Network: openraft::network::NetSnapshot<TypeConfig, SnapshotData = snapshot::SnapshotFile>,
{
    let ms = |d: Duration| d.as_millis() as u64;
    let config = openraft::Config {
        cluster_name: "keel".to_string(),
        heartbeat_interval: ms(options.heartbeat_interval),
        election_timeout_min: ms(options.election_timeout_min),
        // openraft's leader lease equals election_timeout_max: voters refuse to elect anyone
        // for that long after the last heartbeat, and a follower's own timer adds a random
        // election timeout after it. A crashed leader is replaced by a prompt election
        // (`prompt_election`) right after the lease, so the lease is most of a failover: the
        // jitter is kept narrow (a third of the minimum; 90–120 ms by default), enough to spread
        // candidates of the timer's elections.
        election_timeout_max: ms(options.election_timeout_min) * 4 / 3,
        // A snapshot is one streamed HTTP request (`network::Peer::full_snapshot`): this is
        // not a limit on the whole transfer (a big database takes longer), only on waiting for
        // the receiver's answer after the last byte (its fsync and install). While the body
        // streams, a transfer fails if no progress is made for `network::SNAPSHOT_IDLE_TIMEOUT`.
        install_snapshot_timeout: 120_000,
        // `snapshot_max_chunk_size` is irrelevant: snapshots are sent whole (`full_snapshot`),
        // never in openraft's chunks.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(options.snapshot_entries),
        max_in_snapshot_log_to_keep: options.max_in_snapshot_log_to_keep,
        enable_pre_vote: Some(true),
        // A restarted leader must win an election in a new term before it leads again, never
        // take its old term's leadership back (openraft's default). Two reasons, both found by
        // the fault campaign: the leader sends entries before its own fsync, so after a crash
        // it may have lost an entry a follower holds, and a new entry written at the same term
        // and index would be taken by that follower as the one it has (replicas diverge); and
        // the committed index a restarted node loads is a hint written after the fact, so a
        // read index taken from it in the old term can be stale. A new term fixes both: Raft's
        // log matching replaces the orphaned entry, and the new term's blank entry must commit
        // before any read index is given.
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::Raft(e.to_string()))?;
    recover::refuse_pending(&dir.join("raft")).map_err(|e| Error::Raft(e.to_string()))?;
    let log = log_store::LogStore::open_with(&dir.join("raft"), options.wal.clone())?;
    let space = Arc::new(space::Space::new(dir, options.disk_reserve, log.clone()));
    space::Space::watch(&space);
    let sm =
        state_machine::StateMachine::open(&dir.join("snapshots"), store)?.with_space(space.clone());
    let stats = sm.stats();
    let network = network(stats.clone());
    let reader = LogReader::new(log.clone());
    let raft = Raft::new(id, Arc::new(config), network, log, sm)
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
    Ok(Started { raft, stats, log: reader, space })
}
