//! The client-side Raft calls the rest of Keel makes, with openraft's errors folded into one
//! [`ClientError`] that says what the caller should do.
//!
//! - [`leader_term`]: is this node the leader, and in which term.
//! - [`barrier`]: a read index (or lease) check: returns the log index that a read must see,
//!   after this node has applied through it.
//! - [`propose`]: append a record *conditional on the term* the caller speculated in, and wait
//!   until it is committed and applied on this node; [`Proposal`] does it in two steps, for a
//!   caller that goes on meanwhile, with [`order_barrier`] to know it was appended.

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

/// The voters of the effective membership, as this node knows it.
pub fn voter_ids(raft: &Raft) -> std::collections::BTreeSet<crate::NodeId> {
    use openraft::async_runtime::WatchReceiver as _;
    raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect()
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

/// Appends `record` *conditional on `term`*: if this node no longer leads in `term`, nothing
/// is appended and [`ClientError::NotLeader`] is returned. Otherwise waits until the entry
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
    Proposal::submit(raft, record, term, timeout).await?.wait().await
}

/// The answer openraft gives a proposal.
type Answer = Result<ClientWriteResult<TypeConfig>, ClientError>;

/// A proposal handed to openraft and not yet answered: [`propose`] in two steps, for a caller
/// that goes on while the entry replicates (the writer's pipelining).
///
/// openraft takes proposals in the order they are submitted and appends or refuses each
/// when it takes it. So after [`order_barrier`] returns, a proposal submitted before it that
/// is not [`Proposal::answered`] has been appended, and anything submitted afterwards lands
/// after it in the log or not at all.
pub struct Proposal {
    /// The node it was submitted to.
    raft: Raft,
    /// The record, for submitting again after a lease refusal.
    record: wal::Record,
    /// The term it is conditional on.
    term: Term,
    /// How long it may take.
    timeout: Duration,
    /// When to stop waiting.
    deadline: tokio::time::Instant,
    /// Where openraft's answer comes.
    answer: tokio::sync::oneshot::Receiver<ClientWriteResult<TypeConfig>>,
    /// The answer, once received.
    settled: Option<Answer>,
}

impl Proposal {
    /// Submits `record` conditional on `term` (see [`propose`]); `timeout` bounds the wait.
    pub async fn submit(
        raft: &Raft,
        record: wal::Record,
        term: Term,
        timeout: Duration,
    ) -> Result<Proposal, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let answer = send(raft, &record, term).await?;
        Ok(Proposal { raft: raft.clone(), record, term, timeout, deadline, answer, settled: None })
    }

    /// Whether openraft has answered already, without waiting.
    pub fn answered(&mut self) -> bool {
        use futures::FutureExt as _;
        if self.settled.is_none()
            && let Some(answer) = (&mut self.answer).now_or_never()
        {
            self.settled = Some(answer.map_err(|_| dropped()));
        }
        self.settled.is_some()
    }

    /// Whether openraft has answered already with a refusal or an error, without waiting: the
    /// entry was not appended, or its fate is unknown.
    pub fn failed(&mut self) -> bool {
        self.answered();
        matches!(self.settled, Some(Err(_) | Ok(Err(_))))
    }

    /// Waits until openraft answers or the deadline passes, without acting on the answer.
    /// Cancel-safe: for `select!`.
    pub async fn settle(&mut self) {
        if self.settled.is_none() {
            self.settled =
                Some(match tokio::time::timeout_at(self.deadline, &mut self.answer).await {
                    Err(_) => Err(timed_out(self.timeout)),
                    Ok(answer) => answer.map_err(|_| dropped()),
                });
        }
    }

    /// Waits until the entry is committed and applied here, submitting it again after a lease
    /// refusal (see [`propose`]); returns its log index.
    pub async fn wait(mut self) -> Result<Lsn, ClientError> {
        loop {
            self.settle().await;
            match self.settled.take().expect("settled") {
                Err(e) => return Err(e),
                Ok(Ok(resp)) => return Ok(resp.log_id.index),
                Ok(Err(ClientWriteError::ForwardToLeader(f)))
                    if f.reason == ForwardReason::LeaseExpired
                        && tokio::time::Instant::now() < self.deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    self.answer = send(&self.raft, &self.record, self.term).await?;
                }
                Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                    return Err(ClientError::NotLeader { leader: f.leader_id });
                }
                Ok(Err(e)) => return Err(ClientError::Unknown(e.to_string())),
            }
        }
    }
}

/// Sends one proposal of `record` conditional on `term` to openraft; returns where its answer
/// comes.
async fn send(
    raft: &Raft,
    record: &wal::Record,
    term: Term,
) -> Result<tokio::sync::oneshot::Receiver<ClientWriteResult<TypeConfig>>, ClientError> {
    // Only the final answer is waited for; openraft warns when a commit notice finds no one.
    let (responder, answer) =
        ProgressResponder::<TypeConfig, ClientWriteResult<TypeConfig>>::complete_only();
    raft.write(record.clone())
        .with_leader(CommittedLeaderId::new(term))
        .responder(responder)
        .await
        .map_err(|f| ClientError::Fatal(f.to_string()))?;
    Ok(answer)
}

/// Returns once openraft has taken every proposal submitted before the call (appended or
/// refused it): see [`Proposal`].
pub async fn order_barrier(raft: &Raft) -> Result<(), ClientError> {
    raft.with_raft_state(|_| ()).await.map_err(|f| ClientError::Fatal(f.to_string()))
}

/// The error of a proposal whose answer did not come within `timeout`.
fn timed_out(timeout: Duration) -> ClientError {
    ClientError::Unknown(format!(
        "no quorum: not committed within {timeout:?} (a majority of voters did not acknowledge it; it may still commit if they return)"
    ))
}

/// The error of a proposal openraft dropped without answering.
fn dropped() -> ClientError {
    ClientError::Unknown("raft dropped the proposal".to_string())
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
