//! Keel's node as typed calls: the service layer between the HTTP adapters of the `keel`
//! binary and the engine crates (`sql`, `raft`, `leader`, `follower`).
//!
//! [`Node::start`] opens the database, starts Raft, the writer ([`leader::Leader`]) and the
//! state machine ([`follower::Replica`], which runs on every node, the leader included), and
//! the write queue's flusher. It decides who talks to the database on which thread: the one
//! read-write `Db` lives on the node's database thread ([`sql::Worker`]), which runs the
//! writer's speculations, the state machine's applies and a load's schema read as jobs, one
//! after another; reads never go through it: they run on the read-only pool
//! ([`sql::Readers`]), inline on the async worker when they finish within [`read::INLINE_READ`],
//! else on a blocking thread.
//!
//! The calls, each in its own module:
//!
//! - [`route`]: who serves a request that needs the leader. The node answers "here", "node N
//!   leads, here is its address" or "no leader"; forwarding or redirecting is the HTTP layer's
//!   job, because it holds the request as received.
//! - [`mod@write`]: a write with its durability and request id, through the writer.
//! - [`read`]: a read at a consistency level (`none`, `weak`, `linearizable`, `strong`), with
//!   `freshness`, `min_lsn` and `qualify_columns`; the read-index protocol of a linearizable
//!   read on a follower lives here.
//! - [`health`]: `/readyz`'s checks and the member list of `/nodes` with reachability probes.
//! - [`membership`]: adding a node (with proof of its identity under mutual TLS) and joining a
//!   cluster on start; for orchestrators, [`bootstrap`]: several nodes started at once form one
//!   cluster (`--bootstrap-expect`), with the others found through DNS by [`discovery`]
//!   (`--discovery`), [`leave`]: leaving it on shutdown (`--leave-on-shutdown`),
//!   [`reap`]: the leader removes members silent for long (`--reap-after`).
//! - [`peer`]: the node-to-node protocol in one place: Raft's own RPCs (from
//!   [`raft::network`]) plus Keel's (`/keel/applied`, `/keel/read-index`, `/keel/queue`), both
//!   their routes and their calls.
//! - [`queue`]: the write queue of `/db/execute?queue`.
//! - [`outcome`]: what became of a write, looked up by its request id.
//! - [`checksum`]: table checksums at a pinned log index, for `keel check`; [`rebuild`]: a
//!   node whose data differs deletes it and rejoins; [`apply_hash`]: the leader compares its
//!   followers' apply hashes with its own, continuously, and tells one that differs.
//! - [`metrics`]: Prometheus counters, updated where things happen; [`backup_report`]: what
//!   the scheduled backups to object storage did, for `/status` and `/metrics`.
//! - `maintenance`: upkeep of this node's own file outside the log (`PRAGMA optimize`).
//!
//! Errors ([`Error`]) say what the caller should do; the HTTP layer maps each to one answer.
//! What this crate does not do: parse HTTP requests, build rqlite's JSON envelopes, TLS,
//! authentication, or the CLI. Those are the `keel` binary's.

#![allow(clippy::result_large_err)]
// Module tours name the private functions they describe; `cargo doc --document-private-items`
// renders those links.
#![allow(rustdoc::private_intra_doc_links)]

pub mod apply_hash;
pub mod backup;
pub mod backup_report;
pub mod bootstrap;
pub mod changes;
pub mod checksum;
pub mod discovery;
pub mod error;
pub mod health;
pub mod leave;
mod maintenance;
pub mod membership;
pub mod metrics;
pub mod outcome;
pub mod peer;
pub mod queue;
pub mod read;
pub mod reap;
pub mod rebuild;
pub mod route;
pub mod write;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::sync::watch;

pub use error::Error;
pub use outcome::RequestOutcome;
pub use peer::Peers;
pub use read::{Level, ReadCall, ReadOutcome};
pub use route::Route;
pub use write::WriteCall;

/// Bugs a node can be started with on purpose (`--unsafe-plant-bug`), so the fault campaign
/// can prove it catches them. All off in any real use.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlantedBugs {
    /// Acknowledge writes before they are committed.
    pub ack_before_commit: bool,
    /// Serve `linearizable` reads from the local copy without a read index.
    pub stale_linearizable: bool,
    /// Record an apply hash as if an earlier entry had been applied with other bytes, from the
    /// first apply on (the data stays right): the leader's comparison must flag this node.
    pub skew_apply_hash: bool,
}

/// How the node was started, as `/status` reports it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The client API's bind address.
    pub http_bind: String,
    /// Whether the client API requires credentials.
    pub auth: bool,
    /// Whether the client API is served over HTTPS.
    pub tls: bool,
    /// `--http-allow-origin`, if set.
    pub allow_origin: Option<String>,
    /// Raft's heartbeat interval.
    pub heartbeat: Duration,
    /// Raft's minimum election timeout.
    pub election_timeout: Duration,
    /// Log entries between snapshots.
    pub snapshot_entries: u64,
    /// Log entries kept behind a snapshot.
    pub trailing_logs: u64,
    /// When the node started (wall clock).
    pub started: SystemTime,
    /// When the node started (monotonic).
    pub started_at: Instant,
}

/// What [`Node::start`] needs.
pub struct Config {
    /// This node's id.
    pub id: raft::NodeId,
    /// The data directory: `db/`, `raft/`, `snapshots/`, `tmp/`.
    pub data_dir: PathBuf,
    /// The addresses other nodes and clients are told to use.
    pub me: raft::MemberAddr,
    /// Limits on client SQL.
    pub limits: sql::Limits,
    /// Read-only connections in the pool.
    pub readers: usize,
    /// Raft's settings, with the transport to other nodes.
    pub raft: raft::Options,
    /// Durability of writes that do not ask for one.
    pub durability: leader::Durability,
    /// How long `sync` and `replicas:K` writes wait for replicas.
    pub sync_timeout: Duration,
    /// How many write batches may be in flight at once ([`leader::Options::pipeline`]).
    pub write_pipeline: usize,
    /// How often this node runs `PRAGMA optimize` on its copy ([`maintenance`]); `None`: never.
    pub optimize_interval: Option<Duration>,
    /// How often the leader checks whether a `VACUUM` is due ([`maintenance`]): when free pages
    /// are a quarter of the file or more; `None`: never.
    pub auto_vacuum_interval: Option<Duration>,
    /// The write queue's settings.
    pub queue: queue::Options,
    /// How this node reaches other nodes.
    pub peers: Peers,
    /// How the node was started, for `/status`.
    pub settings: Settings,
    /// Bugs planted on purpose.
    pub planted: PlantedBugs,
}

/// One running node. Shared by the HTTP handlers behind an `Arc`.
///
/// Its handles are its own: callers go through its methods (the calls of the modules below,
/// and read-only accessors for the facts `/status` and the console report, such as
/// [`Node::cluster`] and [`Node::settings`]).
pub struct Node {
    /// This node's id.
    pub(crate) id: raft::NodeId,
    /// This node's addresses.
    pub(crate) me: raft::MemberAddr,
    /// The Raft node.
    pub(crate) raft: raft::Raft,
    /// The writer.
    pub(crate) leader: leader::Leader,
    /// Read-only connections.
    pub(crate) readers: Arc<sql::Readers>,
    /// The applied log index, published by the state machine after every apply.
    pub(crate) applied: watch::Receiver<wal::Lsn>,
    /// The same index with the apply hash after it, for the reports to the leader.
    pub(crate) position: watch::Receiver<wal::Position>,
    /// Compares followers' apply hashes with this node's (meaningful on the leader).
    pub(crate) apply_hashes: Arc<apply_hash::Comparer>,
    /// Followers' applied positions (meaningful on the leader).
    pub(crate) progress: Arc<leader::Progress>,
    /// When this node last heard from a leader.
    pub(crate) contact: Arc<raft::network::Contact>,
    /// Durability of writes that do not ask for one.
    pub(crate) durability: leader::Durability,
    /// Prometheus metrics.
    pub(crate) metrics: metrics::Metrics,
    /// Serializes membership changes: Raft allows one at a time, and concurrent joins would
    /// otherwise fail each other.
    pub(crate) membership: tokio::sync::Mutex<()>,
    /// Nodes that told this one their addresses while it waits to form a new cluster
    /// (`--bootstrap-expect`, [`bootstrap`]).
    pub(crate) notified:
        std::sync::Mutex<std::collections::BTreeMap<raft::NodeId, raft::MemberAddr>>,
    /// The database thread owning the write connections (loads read the schema they replace
    /// from it).
    pub(crate) db: sql::Worker,
    /// Consistent copies of the database, for backups.
    pub(crate) image_source: sql::ImageSource,
    /// Snapshots at pinned log indexes, for table checks.
    pub(crate) pins: Arc<sql::checksum::Pins>,
    /// What a table check found wrong with this node's data (also kept in the data dir).
    pub(crate) divergence: std::sync::Mutex<Option<keel_api::checksum::Divergence>>,
    /// Set when this node is asked to rebuild: the members to rejoin through.
    pub(crate) rebuild: watch::Sender<Option<Vec<String>>>,
    /// The node's data directory (backups and loads spool under `tmp/` in it).
    pub(crate) data_dir: PathBuf,
    /// Snapshot counters, for `/status`.
    pub(crate) snapshots: Arc<raft::SnapshotStats>,
    /// The data directory's free space: full disks refuse writes and appends.
    pub(crate) space: Arc<raft::space::Space>,
    /// Reads this node's Raft log (the change stream).
    pub(crate) log: raft::LogReader,
    /// How this node reaches other nodes.
    pub(crate) peers: Peers,
    /// How the node was started.
    pub(crate) settings: Settings,
    /// The write queue of `/db/execute?queue`.
    pub(crate) queue: queue::Queue,
    /// Bugs planted on purpose.
    pub(crate) planted: PlantedBugs,
}

impl Node {
    /// Opens the node's database in `config.data_dir`, starts Raft, the writer, the state
    /// machine, the write queue's flusher and the applied-position reports to the leader.
    /// Does not bootstrap or join a cluster (see [`Node::bootstrap_or_join`]) and serves
    /// nothing: the caller serves [`peer::router`] on the Raft address and its client API.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Node>> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
        let db_dir = dir.join("db");
        let mut db = sql::Db::open(&db_dir)
            .with_context(|| format!("opening database in {}", db_dir.display()))?;
        db.set_limits(config.limits);
        if config.planted.skew_apply_hash {
            db.plant_apply_hash_skew();
        }
        let recent = db.recent_hashes();
        let readers = db.readers(config.readers.max(1)).context("opening read connections")?;
        let image_source = db.image_source();
        let pins = db.pins();
        let replica = follower::Replica::new(db).context("starting the database thread")?;
        let db = replica.db();
        // Spooled backups and loads of a previous run are garbage now.
        let _ = std::fs::remove_dir_all(dir.join("tmp"));

        // Followers' applied positions arrive on the replication streams this node opens
        // while it leads (and by `/keel/applied` from nodes without one, see `peer`).
        let progress = Arc::new(leader::Progress::default());
        let metrics = metrics::Metrics::new();
        let (apply_hashes, mismatches) =
            apply_hash::Comparer::new(recent, metrics.apply_hash_counters());
        let apply_hashes = Arc::new(apply_hashes);
        let mut raft_options = config.raft.clone();
        let (reports, hashes) = (progress.clone(), apply_hashes.clone());
        raft_options.transport =
            raft_options.transport.with_applied(Arc::new(move |id, position: wal::Position| {
                reports.report(id, position.index);
                hashes.report(id, position);
            }));
        let raft::Started { raft, stats: snapshots, log, space } =
            raft::start_node(config.id, &dir, &raft_options, Arc::new(replica.clone())).await?;
        let leader = leader::Leader::spawn(
            raft.clone(),
            db.clone(),
            replica.applied(),
            progress.clone(),
            leader::Options {
                sync_timeout: config.sync_timeout,
                unsafe_ack_before_commit: config.planted.ack_before_commit,
                pipeline: config.write_pipeline.max(1),
                space: Some(space.clone()),
                peers_full: Some(raft_options.transport.peers_full()),
                ..Default::default()
            },
        );
        let (queue, queue_receiver) = queue::Queue::new(config.id, config.queue);
        let node = Arc::new(Node {
            id: config.id,
            me: config.me,
            raft: raft.clone(),
            leader,
            readers: Arc::new(readers),
            applied: replica.applied(),
            position: replica.position(),
            apply_hashes,
            progress,
            contact: Arc::new(raft::network::Contact::default()),
            durability: config.durability,
            metrics,
            membership: tokio::sync::Mutex::new(()),
            notified: std::sync::Mutex::default(),
            db,
            image_source,
            pins,
            divergence: std::sync::Mutex::new(checksum::load_divergence(&dir)),
            rebuild: watch::channel(None).0,
            data_dir: dir,
            snapshots,
            space,
            log,
            peers: config.peers,
            settings: config.settings,
            queue,
            planted: config.planted,
        });
        tokio::spawn(queue::flush::run(node.clone(), queue_receiver));
        tokio::spawn(peer::report_applied(node.clone()));
        tokio::spawn(apply_hash::tell(Arc::downgrade(&node), mismatches));
        let asked = node.metrics.prompt_elections.clone();
        tokio::spawn(raft::prompt_election::run(raft.clone(), node.contact.clone(), move || {
            asked.inc()
        }));
        tokio::spawn(raft::cluster::log_leadership(raft));
        if let Some(every) = config.optimize_interval {
            tokio::spawn(maintenance::optimize(Arc::downgrade(&node), every));
        }
        if let Some(every) = config.auto_vacuum_interval {
            tokio::spawn(maintenance::auto_vacuum(Arc::downgrade(&node), every));
        }
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> raft::NodeId {
        self.id
    }

    /// The addresses this node is known by.
    pub fn me(&self) -> &raft::MemberAddr {
        &self.me
    }

    /// Durability of writes that do not ask for one.
    pub fn durability(&self) -> leader::Durability {
        self.durability
    }

    /// How this node reaches other nodes.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The node's counters (the HTTP layer counts what only it sees, such as refused queue
    /// requests).
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// `/metrics`: the counters, with the gauges read from Raft and replication progress now.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(
            &self.raft,
            &self.progress,
            self.leader.counters(),
            &self.space.report(),
        )
    }

    /// The write queue.
    pub fn queue(&self) -> &queue::Queue {
        &self.queue
    }

    /// How the node was started.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// The data directory's free space and what a full disk refused, now.
    pub fn space(&self) -> raft::space::Report {
        self.space.report()
    }

    /// Snapshot counters.
    pub fn snapshots(&self) -> &raft::SnapshotStats {
        &self.snapshots
    }

    /// The read-only connections (for facts about the database, off the write connection).
    pub fn readers(&self) -> Arc<sql::Readers> {
        self.readers.clone()
    }

    /// When this node last heard from a leader, and the commit index the leader had then.
    pub fn last_contact(&self) -> Option<(Instant, wal::Lsn)> {
        self.contact.last()
    }

    /// What Raft knows of the cluster now: members, leader, term, log positions.
    pub fn cluster(&self) -> raft::cluster::State {
        raft::cluster::state(&self.raft)
    }

    /// Member `id`, if it is one.
    pub fn member(&self, id: raft::NodeId) -> Option<raft::cluster::Member> {
        raft::cluster::member(&self.raft, id)
    }

    /// How member `id` is shown: its name if it has one, else its number.
    pub fn label(&self, id: raft::NodeId) -> String {
        if id == self.id {
            return self.me.label(id);
        }
        raft::cluster::label(&self.raft, id)
    }

    /// The leader this node knows of, if any (this node included).
    pub fn leader_member(&self) -> Option<raft::cluster::Member> {
        raft::cluster::leader(&self.raft)
    }

    /// The log index this node has applied.
    pub fn applied(&self) -> wal::Lsn {
        *self.applied.borrow()
    }

    /// Whether this node leads now.
    pub fn is_leader(&self) -> bool {
        raft::client::leader_term(&self.raft).is_ok()
    }

    /// Brings a fresh node into a cluster: with no `join` URLs it bootstraps a one-node
    /// cluster; otherwise it asks the cluster to add it (in the background, retrying; Raft
    /// is shut down if that fails for good). A member that joined as a voter but stopped
    /// before its promotion asks again. Anything else: nothing to do.
    pub async fn bootstrap_or_join(
        self: &Arc<Self>,
        join: &[String],
        voter: bool,
        credentials: Option<(String, String)>,
    ) -> anyhow::Result<()> {
        if !raft::cluster::is_initialized(&self.raft).await? {
            if join.is_empty() {
                tracing::info!(
                    "empty data directory and no --join: bootstrapping a one-node cluster"
                );
                raft::cluster::initialize(&self.raft, self.id, self.me.clone()).await?;
                return Ok(());
            }
            self.join_in_background(
                join.to_vec(),
                voter,
                credentials,
                "could not join the cluster",
            );
        } else if let Some(m) = raft::cluster::member(&self.raft, self.id)
            && m.node != self.me
        {
            // Restarted at new addresses (rescheduled by an orchestrator): the leader must
            // learn them, or it keeps replicating to the old ones.
            if join.is_empty() {
                tracing::warn!(old = %m.node, new = %self.me, "this node's addresses changed, but without --join it cannot tell the cluster: start it with --join");
            } else {
                tracing::info!(old = %m.node, new = %self.me, "this node's addresses changed: asking the cluster to update them");
                self.join_in_background(
                    join.to_vec(),
                    voter,
                    credentials,
                    "could not update this node's addresses",
                );
            }
        } else if !join.is_empty() {
            let me_now = raft::cluster::member(&self.raft, self.id);
            if voter && me_now.as_ref().is_some_and(|m| !m.voter) {
                // Joined as a voter but stopped before the promotion (the node is added as a
                // learner first and promoted once caught up): ask again, or it stays a learner.
                tracing::info!("a learner started without --learner: asking to be made a voter");
                self.join_in_background(
                    join.to_vec(),
                    true,
                    credentials,
                    "could not become a voter",
                );
            } else {
                tracing::info!("already a cluster member; --join ignored");
                // Unless it was removed meanwhile (--leave-on-shutdown, --reap-after): its
                // own view still lists it, the leader's does not.
                let node = self.clone();
                let join = join.to_vec();
                tokio::spawn(async move { node.rejoin_if_removed(join, voter, credentials).await });
            }
        }
        Ok(())
    }

    fn join_in_background(
        self: &Arc<Self>,
        join: Vec<String>,
        voter: bool,
        credentials: Option<(String, String)>,
        failure: &'static str,
    ) {
        let node = self.clone();
        tokio::spawn(async move {
            let me = node.me.clone();
            if let Err(e) =
                membership::join_cluster(node.id, me, &join, voter, credentials, &node.peers).await
            {
                tracing::error!(error = %e, "{failure}; stopping");
                let _ = node.raft.shutdown().await;
            }
        });
    }

    /// Waits until Raft stops on a fatal error, and returns why.
    pub async fn stopped(&self) -> String {
        raft::cluster::stopped(&self.raft).await
    }

    /// Stops the node: flushes the write queue for up to [`queue::DRAIN`] while this node can
    /// still reach the leader (or lead), then shuts Raft down.
    pub async fn shutdown(&self) {
        self.queue.drain(queue::DRAIN).await;
        let _ = self.raft.shutdown().await;
    }

    /// [`Node::shutdown`] that leaves the cluster first ([`Node::leave`], for up to `within`),
    /// after the write queue is flushed.
    pub async fn leave_and_shutdown(&self, within: Duration) {
        self.queue.drain(queue::DRAIN).await;
        self.leave(within).await;
        let _ = self.raft.shutdown().await;
    }

    /// Stops a node whose Raft already stopped on a fatal error: says how many queued writes
    /// are lost, and shuts Raft down.
    pub async fn shutdown_after_failure(&self) {
        self.queue.report_lost();
        let _ = self.raft.shutdown().await;
    }
}
