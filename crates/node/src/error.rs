//! The node's errors. Each variant says what the caller should do; the HTTP layer maps each to
//! exactly one answer (status code, body, `Retry-After`).

use std::time::Duration;

/// Why a call on the node did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The call needs the leader and another node leads: send it there (forward or redirect).
    #[error("node {} leads", leader.id)]
    NotLeader {
        /// The leader, with its addresses.
        leader: raft::cluster::Member,
    },
    /// From the writer or a Raft call; its variants say what to do (see [`leader::Error`]).
    #[error(transparent)]
    Leader(#[from] leader::Error),
    /// The request is invalid; retrying it unchanged will not help.
    #[error("{0}")]
    InvalidInput(String),
    /// Not served now (no leader, a peer unreachable); retry later.
    #[error("{0}")]
    Unavailable(String),
    /// This node had not applied `index` within `timeout` (a `min_lsn` or read index).
    #[error(
        "min_lsn {index} not reached within {:.3}s: node {node} has applied {applied}",
        timeout.as_secs_f64()
    )]
    NotApplied {
        /// The index waited for.
        index: wal::Lsn,
        /// What this node had applied when the wait ended.
        applied: wal::Lsn,
        /// This node.
        node: raft::NodeId,
        /// How long it waited.
        timeout: Duration,
    },
    /// A `level=none` read refused by its `freshness` bound; rqlite answers it as a 200 whose
    /// body carries the error.
    #[error("{0}")]
    Stale(String),
    /// The caller could not prove who it is (a joining node without its certificate).
    #[error("{0}")]
    Forbidden(String),
    /// A table check's snapshot cannot be served: the index was applied before it was pinned
    /// (pin a later one), the pin is gone, or it was not reached in time.
    #[error(transparent)]
    Pin(#[from] sql::checksum::PinError),
    /// Something failed inside the node (a database error, a task that died).
    #[error("{0}")]
    Internal(String),
}

impl From<raft::client::ClientError> for Error {
    fn from(e: raft::client::ClientError) -> Self {
        Error::Leader(e.into())
    }
}

impl From<sql::Error> for Error {
    fn from(e: sql::Error) -> Self {
        match e {
            sql::Error::InvalidInput(m) => Error::InvalidInput(m),
            e => Error::Internal(e.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(e.to_string())
    }
}

/// Every label [`kind`] gives, for `keel_errors_total{kind}`.
pub const KINDS: [&str; 7] = [
    "not_leader",
    "unavailable",
    "unknown_outcome",
    "not_replicated",
    "invalid_input",
    "disk_full",
    "internal",
];

/// A short label for a write-path error, for `keel_errors_total{kind}`.
pub fn kind(e: &leader::Error) -> &'static str {
    match e {
        leader::Error::NotLeader { .. } => "not_leader",
        leader::Error::Unavailable(_) => "unavailable",
        leader::Error::Unknown(_) => "unknown_outcome",
        leader::Error::NotReplicated { .. } => "not_replicated",
        leader::Error::InvalidInput(_) => "invalid_input",
        leader::Error::DiskFull(_) => "disk_full",
        leader::Error::Internal(_) => "internal",
    }
}

/// What a client is told about a write-path error: what happened and what to do.
pub fn describe(e: &leader::Error) -> String {
    match e {
        leader::Error::NotLeader { .. } => "leadership changed; nothing was written, retry".into(),
        leader::Error::Unknown(m) => format!(
            "{m}; the write may or may not have been committed: retry with the same request_id to be safe"
        ),
        leader::Error::NotReplicated { lsn, durability, .. } => format!(
            "the write is committed at lsn {lsn} but not every replica that {durability} needs confirmed applying it in time"
        ),
        leader::Error::Unavailable(m)
        | leader::Error::InvalidInput(m)
        | leader::Error::DiskFull(m)
        | leader::Error::Internal(m) => m.clone(),
    }
}
