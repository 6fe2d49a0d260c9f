//! The write path's errors; each variant says what the caller (the HTTP layer) should do.

use raft::NodeId;

/// Why a write was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// This node is not the leader; nothing was written. Forward to `leader` (or retry later).
    #[error("not the leader")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// Nothing was written, but the request may succeed if retried (no quorum, leadership in
    /// flux).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write may or may not have been committed (leadership lost after append, or the wait
    /// timed out). Retrying without a request id may apply it twice.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The write IS committed (at `lsn`) and applied on the leader, but not every replica the
    /// requested durability needs confirmed applying it in time.
    #[error(
        "committed at {lsn} but not yet applied by every replica {durability} needs (unconfirmed: {unconfirmed:?})"
    )]
    NotReplicated {
        /// The record's log index.
        lsn: wal::Lsn,
        /// The durability asked for.
        durability: crate::Durability,
        /// Members that had not confirmed applying it.
        unconfirmed: Vec<NodeId>,
    },
    /// The request itself is invalid (e.g. too large); retrying will not help.
    #[error("{0}")]
    InvalidInput(String),
    /// This node's disk is full, or so many voters' disks that the rest are no majority:
    /// nothing was written. Writes succeed again once space returns, without a restart (HTTP
    /// 507).
    #[error("{0}")]
    DiskFull(String),
    /// The node cannot serve writes any more (Raft stopped, database failure).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Shorthand for results of the write path.
pub type Result<T> = std::result::Result<T, Error>;

impl From<raft::space::Full> for Error {
    fn from(full: raft::space::Full) -> Self {
        Error::DiskFull(full.to_string())
    }
}

impl From<raft::client::ClientError> for Error {
    fn from(e: raft::client::ClientError) -> Self {
        use raft::client::ClientError as C;
        match e {
            C::NotLeader { leader } => Error::NotLeader { leader },
            C::NoQuorum(m) => Error::Unavailable(format!("no quorum: {m}")),
            C::Unknown(m) => Error::Unknown(m),
            C::Fatal(m) => Error::Internal(m),
        }
    }
}
