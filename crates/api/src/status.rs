//! `GET /status`: a node's view of itself, in rqlite's shape with Keel's sections beside it.
//!
//! rqlite's sections keep rqlite's field names and types (`build`, `runtime` with Go's names,
//! `os`, `http`, `node`, `store`); Keel adds `cluster`, `replication`, `snapshot` and its own
//! fields inside `node`. See `docs/http-api.md` for what each field means. `?key=a.b` answers a
//! sub-document, which is not a [`Status`]: read it as a `serde_json::Value`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::Replication;
use crate::queue::QueueStatus;
use crate::{Lsn, NodeId, Term};

/// The whole `/status` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Keel's: scheduled backups to object storage (`keel serve --backup-to`); absent on a
    /// node started without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Backup>,
    /// rqlite's `build`.
    pub build: Build,
    /// Keel's: the members.
    pub cluster: Cluster,
    /// Keel's: the data directory's free space, and what a full disk refused; absent from
    /// nodes of versions before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Disk>,
    /// Keel's: this node's data was found to differ from the other replicas' (`keel check`);
    /// absent otherwise. It stays until the node's data is rebuilt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divergence: Option<crate::checksum::Divergence>,
    /// rqlite's `http`.
    pub http: Http,
    /// rqlite's `node` times, and Keel's facts about the node.
    pub node: Node,
    /// rqlite's `os`.
    pub os: Os,
    /// Keel's: on the leader, each other member's progress keyed by id; `null` elsewhere.
    pub replication: Option<BTreeMap<String, Replication>>,
    /// rqlite's `runtime`, with Go's field names.
    pub runtime: Runtime,
    /// Keel's: snapshot counters.
    pub snapshot: Snapshot,
    /// rqlite's `store`.
    pub store: Store,
}

/// `disk`: the data directory's free space, and what a full disk refused. While `full`, writes
/// answer 507 on this node (when it leads), appends from a leader are refused (when it
/// follows) and `/readyz` fails; it all resumes by itself once `free_bytes` is back above
/// `reserve_bytes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Applies of committed entries that found the disk full and were tried again.
    pub apply_retries: u64,
    /// Free bytes at the last observation (every 250 ms).
    pub free_bytes: u64,
    /// Whether the disk is full now.
    pub full: bool,
    /// Times the disk became full since the node started.
    pub full_episodes: u64,
    /// Bytes the log holds preallocated past its end, so that what it took cannot fail;
    /// absent when the file system cannot preallocate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_room_bytes: Option<u64>,
    /// Appends from a leader refused since start.
    pub refused_appends: u64,
    /// Write batches refused (507) since start.
    pub refused_writes: u64,
    /// Free bytes below which the node takes no new writes (`--disk-reserve`).
    pub reserve_bytes: u64,
}

/// `build`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    /// The git branch, `unknown` outside a checkout.
    pub branch: String,
    /// RFC 3339.
    pub build_time: String,
    /// The git commit, `unknown` outside a checkout.
    pub commit: String,
    /// `rustc`.
    pub compiler_toolchain: String,
    /// Keel's version.
    pub version: String,
}

/// `cluster`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Every member, voters and learners.
    pub members: Vec<Member>,
}

/// A member in `cluster.members`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id (for a named node, the Raft id of its name).
    pub id: NodeId,
    /// Its name, for a node named by one (`keel serve --id keel-0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its addresses.
    pub node: Addresses,
    /// Voter or learner.
    pub voter: bool,
}

/// A node's two addresses, `host:port`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    /// The client API.
    pub http_addr: String,
    /// Node-to-node traffic.
    pub raft_addr: String,
}

/// `http`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Http {
    /// Keel's: the address the node advertises to clients.
    pub advertised_addr: String,
    /// `--http-allow-origin`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_origin: Option<String>,
    /// `enabled` or `disabled`.
    pub auth: String,
    /// The address the client API listens on.
    pub bind_addr: String,
    /// The write queue.
    pub queue: Queues,
    /// TLS.
    pub tls: Tls,
}

/// `http.queue`: rqlite names its one queue `_default`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queues {
    /// The write queue.
    #[serde(rename = "_default")]
    pub default: QueueStatus,
}

/// `http.tls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    /// `"true"` or `"false"`: a string, as in rqlite.
    pub enabled: String,
}

/// A node's role, as Keel names it (`node.role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// It leads.
    Leader,
    /// A voter that follows.
    Follower,
    /// Standing for election.
    Candidate,
    /// A non-voting replica.
    Learner,
    /// Raft stopped.
    Shutdown,
}

impl Role {
    /// The name Keel gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// `node`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The last log index applied to the database.
    pub applied_index: Lsn,
    /// The last log index known committed.
    pub commit_index: Lsn,
    /// RFC 3339 with nanoseconds (rqlite's).
    pub current_time: String,
    /// The client API address.
    pub http_addr: String,
    /// The node id (for a named node, the Raft id of its name).
    pub id: NodeId,
    /// The last log index.
    pub last_log_index: Lsn,
    /// The leader, if known.
    pub leader_id: Option<NodeId>,
    /// The leader's name, when it is known and named by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_name: Option<String>,
    /// The node's name, for a node named by one (`keel serve --id keel-0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The Raft address.
    pub raft_addr: String,
    /// The role.
    pub role: Role,
    /// The last snapshot's index, if any.
    pub snapshot_index: Option<Lsn>,
    /// RFC 3339 (rqlite's).
    pub start_time: String,
    /// Why Raft stopped, after a fatal error.
    pub stopped: Option<String>,
    /// The current term.
    pub term: Term,
    /// A Go duration (rqlite's).
    pub uptime: String,
}

/// `os`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Os {
    /// The executable's path, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// The host name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The memory page size.
    pub page_size: i64,
    /// The process id.
    pub pid: u32,
    /// The parent's process id.
    pub ppid: i32,
}

/// `runtime`, with Go's names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_snake_case, reason = "rqlite's field names are Go's")]
pub struct Runtime {
    /// The architecture in Go's spelling (`amd64`, `arm64`).
    pub GOARCH: String,
    /// The async runtime's worker threads.
    pub GOMAXPROCS: usize,
    /// The operating system in Go's spelling.
    pub GOOS: String,
    /// Whether `KUBERNETES_SERVICE_HOST` is set.
    pub kubernetes_hint: bool,
    /// CPUs available.
    pub num_cpu: usize,
    /// Live async tasks.
    pub num_goroutine: usize,
    /// The compiler's version.
    pub version: String,
}

/// `backup`: what the scheduled backups of `keel serve --backup-to` did on this node (only the
/// leader uploads; counters are this process's, since it started).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    /// Uploads that failed (each is retried with backoff).
    pub failures: u64,
    /// Ticks skipped because nothing was applied since the last upload.
    pub skipped: u64,
    /// The last upload that succeeded, if any since start.
    pub last: Option<LastBackup>,
    /// The last failure's message, if the last attempt failed.
    pub last_error: Option<String>,
    /// The target, as given to `--backup-to`.
    pub target: String,
    /// Uploads that succeeded.
    pub uploads: u64,
}

/// One uploaded backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LastBackup {
    /// How long taking the image and uploading it took, in seconds.
    pub duration_secs: f64,
    /// The log index the image holds.
    pub lsn: Lsn,
    /// The object's name in the target.
    pub name: String,
    /// The object's size in bytes (compressed if `--backup-compress`).
    pub size: u64,
    /// When the upload finished, RFC 3339.
    pub time: String,
}

/// `snapshot`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Snapshots built since start.
    pub built: u64,
    /// Bytes of snapshots received.
    pub bytes_received: u64,
    /// Bytes of snapshots sent.
    pub bytes_sent: u64,
    /// Images found damaged (checksum differing from the one recorded when made) and rebuilt.
    #[serde(default)]
    pub damaged: u64,
    /// The current snapshot's index, if any.
    pub index: Option<Lsn>,
    /// Snapshots installed since start.
    pub installed: u64,
    /// The index of the last snapshot built, if any.
    pub last_built_index: Option<Lsn>,
    /// The index of the last snapshot installed, if any.
    pub last_installed_index: Option<Lsn>,
    /// Failed receptions.
    pub receive_failures: u64,
    /// Snapshots received.
    pub received: u64,
    /// Failed sends.
    pub send_failures: u64,
    /// Snapshots sent.
    pub sent: u64,
    /// The current snapshot's size in bytes.
    pub size: u64,
}

/// `store` (rqlite's `store.Stats`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// The Raft address.
    pub addr: String,
    /// The index applied to the database.
    pub db_applied_index: Lsn,
    /// The data directory.
    pub dir: String,
    /// Bytes under it.
    pub dir_size: u64,
    /// The same, for people (`293 kB`).
    pub dir_size_friendly: String,
    /// A Go duration.
    pub election_timeout: String,
    /// The index applied to the state machine.
    pub fsm_index: Lsn,
    /// A Go duration.
    pub heartbeat_timeout: String,
    /// The leader; empty strings when none is known.
    pub leader: StoreLeader,
    /// The node id, as a string.
    pub node_id: String,
    /// The members.
    pub nodes: Vec<StoreNode>,
    /// Always true.
    pub open: bool,
    /// Raft's state.
    pub raft: Raft,
    /// What `/readyz` checks for leader and store.
    pub ready: bool,
    /// `--snapshot-entries`.
    pub snapshot_threshold: u64,
    /// The database file.
    pub sqlite3: Sqlite3,
    /// `--trailing-logs`.
    pub trailing_logs: u64,
}

/// `store.leader`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreLeader {
    /// Its Raft address, or empty.
    pub addr: String,
    /// Its id as a string, or empty.
    pub node_id: String,
}

/// A member in `store.nodes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreNode {
    /// Its Raft address.
    pub addr: String,
    /// Its id, as a string.
    pub id: String,
    /// `voter` or `nonvoter`.
    pub suffrage: String,
}

/// `store.raft`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Raft {
    /// Applied index.
    pub applied_index: Lsn,
    /// Commit index.
    pub commit_index: Lsn,
    /// 0 on the leader, else a Go duration since the leader was heard from, or `never`.
    pub last_contact: LastContact,
    /// Last log index.
    pub last_log_index: Lsn,
    /// The last snapshot's index, 0 if none.
    pub last_snapshot_index: Lsn,
    /// Bytes of the Raft log.
    pub log_size: u64,
    /// The same, for people.
    pub log_size_friendly: String,
    /// Other voters.
    pub num_peers: usize,
    /// `Leader`, `Follower` (learners too), `Candidate` or `Shutdown`.
    pub state: String,
    /// Current term.
    pub term: Term,
    /// Whether this node votes.
    pub voter: bool,
}

/// `store.raft.last_contact`: the number 0 on the leader, else text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LastContact {
    /// On the leader: 0.
    Leader(u64),
    /// A Go duration, or `never`.
    Since(String),
}

/// `store.sqlite3`: when no read connection was free, only `version`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sqlite3 {
    /// Pages times page size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_size: Option<u64>,
    /// The same, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_size_friendly: Option<String>,
    /// Page reads that failed their checksum since the process started (Keel's page
    /// checksums): damage to the file on this node's disk; rebuild the node.
    #[serde(default)]
    pub page_checksum_failures: u64,
    /// Pages in the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_count: Option<u64>,
    /// Of those, the free ones (deleted data not yet given back to the file system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freelist_count: Option<u64>,
    /// Bytes per page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u64>,
    /// The live database file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Its size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// SQLite's version.
    pub version: String,
    /// Bytes of its `-wal` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_size: Option<u64>,
}
