//! The client-side Raft calls the rest of Keel makes, with openraft's errors folded into one
//! [`ClientError`] that says what the caller should do.
//!
//! - [`leader_term`]: is this node the leader, and in which term.
//! - [`barrier`]: a read index (or lease) check: returns the log index that a read must see,
//!   after this node has applied through it.
//! - [`propose`]: append a record *conditional on the term* the caller speculated in, and wait
//!   until it is committed and applied on this node.

use std::time::Duration;

use openraft::errors::{ClientWriteError, ForwardReason, LinearizableReadError, RaftError};
use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResult;
use openraft::vote::leader_id_std::CommittedLeaderId;

use crate::types::{Lsn, NodeId, Term, TypeConfig};
use crate::{Raft, ReadPolicy};

/// Why a client call through Raft did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// This node is not the leader (or stopped being it before the proposal was appended):
    /// nothing was written; send the request to `leader`.
    #[error("not the leader{}", leader.map(|l| format!("; node {l} leads")).unwrap_or_default())]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// A quorum could not be reached to confirm leadership; nothing was written.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The proposal was appended but its fate is unknown (leadership lost, or the wait timed
    /// out): it may or may not commit. A retry needs a request id to be safe.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The Raft node has stopped.
    #[error("raft stopped: {0}")]
    Fatal(String),
}

/// The current term if this node is the leader.
pub fn leader_term(raft: &Raft) -> Result<Term, ClientError> {
    match raft.as_leader() {
        Ok(leader) => Ok(leader.term()),
        Err(f) => Err(ClientError::NotLeader { leader: f.leader_id }),
    }
}

/// Confirms leadership with `policy` and waits until this node has applied everything committed
/// when the call began. Returns that log index.
pub async fn barrier(raft: &Raft, policy: ReadPolicy) -> Result<Lsn, ClientError> {
    match raft.ensure_linearizable(policy).await {
        Ok(read) => Ok(read.log_id().index),
        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
            Err(ClientError::NotLeader { leader: f.leader_id })
        }
        Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q))) => {
            Err(ClientError::NoQuorum(q.to_string()))
        }
        Err(RaftError::Fatal(f)) => Err(ClientError::Fatal(f.to_string())),
    }
}

/// Proposes `record` only if this node still leads in `term`; waits (up to `timeout`) until it
/// is committed and applied here. Returns its log index.
///
/// A leader that has just been elected refuses proposals until a quorum has acknowledged it
/// (its lease); such a refusal happens before anything is appended, so the proposal is retried
/// until the lease is established or `timeout` passes.
pub async fn propose(
    raft: &Raft,
    record: wal::Record,
    term: Term,
    timeout: Duration,
) -> Result<Lsn, ClientError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (responder, _commit, applied) =
            ProgressResponder::<TypeConfig, ClientWriteResult<TypeConfig>>::new();
        raft.write(record.clone())
            .with_leader(CommittedLeaderId::new(term))
            .responder(responder)
            .await
            .map_err(|f| ClientError::Fatal(f.to_string()))?;
        let answer = match tokio::time::timeout_at(deadline, applied).await {
            Err(_) => {
                return Err(ClientError::Unknown(format!(
                    "no quorum: not committed within {timeout:?} (a majority of voters did not acknowledge it; it may still commit if they return)"
                )));
            }
            Ok(Err(_)) => {
                return Err(ClientError::Unknown("raft dropped the proposal".to_string()));
            }
            Ok(Ok(answer)) => answer,
        };
        match answer {
            Ok(resp) => return Ok(resp.log_id.index),
            Err(ClientWriteError::ForwardToLeader(f))
                if f.reason == ForwardReason::LeaseExpired
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(ClientWriteError::ForwardToLeader(f)) => {
                return Err(ClientError::NotLeader { leader: f.leader_id });
            }
            Err(e) => return Err(ClientError::Unknown(e.to_string())),
        }
    }
}

/// Waits (up to `timeout`) until this node has applied every entry in its log. On a leader
/// this means every entry it appended, including its own term's first (blank) entry, has
/// committed and been applied: the database is exactly the state the next proposal will be
/// applied to.
pub async fn wait_caught_up(raft: &Raft, timeout: Duration) -> Result<Lsn, ClientError> {
    let caught_up =
        |m: &crate::Metrics| m.last_applied.as_ref().map(|l| l.index) == m.last_log_index;
    match raft.wait(Some(timeout)).metrics(caught_up, "applied through the last log entry").await {
        Ok(m) => Ok(m.last_applied.map_or(0, |l| l.index)),
        Err(_) => Err(ClientError::NoQuorum(format!(
            "earlier entries were not committed within {timeout:?} (a majority of voters is not acknowledging)"
        ))),
    }
}

/// A barrier through the log: appends a blank entry and waits until it is applied here. A read
/// after it sees every write committed before it began. Leader only.
pub async fn log_barrier(raft: &Raft) -> Result<Lsn, ClientError> {
    match raft.write_blank().await {
        Ok(resp) => Ok(resp.log_id.index),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(ClientError::NotLeader { leader: f.leader_id })
        }
        Err(RaftError::APIError(e)) => Err(ClientError::Unknown(e.to_string())),
        Err(RaftError::Fatal(f)) => Err(ClientError::Fatal(f.to_string())),
    }
}
