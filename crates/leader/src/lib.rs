//! The writer: the only code in Keel that executes client SQL. It speculates, proposes, and
//! waits for durability; it runs on the node that leads, and only while it leads.
//!
//! The crate is named after the role in the design (`leader`), but what it holds is the write
//! path: one writer per leader, group commit, speculative execution, conditional proposal.
//! It never changes the database itself. Every change, this node's included, is applied by
//! the state machine of the `follower` crate, which runs on every node, the leader included,
//! once Raft has committed the record; on the leader that apply commits the writer's
//! speculation instead of replaying its changesets. The two crates never depend on each other; they share
//! the node's database thread ([`sql::Worker`]: speculation and apply are jobs on the one
//! thread that owns the read-write [`sql::Db`]) and meet in `node`.
//!
//! A client write becomes a [`sql::WriteRequest`] and is sent to [`Leader::write`] (or, several
//! at once in a given order, such as a batch of queued writes, to [`Leader::write_all`]). One task
//! (`run`) owns the write path:
//!
//! 1. Take the next batch of queued requests ([`batch::Batch`] decides how many: group commit).
//! 2. Check that this node leads, in term T, and wait until it has applied every entry in its
//!    log ([`raft::client::wait_caught_up`]): a new leader must have applied what earlier
//!    leaders committed, and a record whose answer timed out must land, before the next
//!    speculation runs on top of them.
//! 3. Speculate: [`sql::Db::execute_held`], a job on the database thread, runs every request
//!    in its own savepoint inside one transaction with session capture and takes the
//!    changeset. The transaction stays open, unseen by readers; the per-statement results are
//!    known.
//! 4. Propose the resulting [`wal::Record`] conditional on term T
//!    ([`raft::client::propose`]) and wait until it is committed (a quorum has it durably) and
//!    applied here. Only the apply changes the database: on the followers from the record's
//!    changesets, here by committing the open transaction, which holds the same rows (it is
//!    rolled back, and the record applied from its changesets, if anything else reaches the
//!    database first).
//!    A batch that changes nothing (every statement failed or matched no row) is not
//!    proposed; its answer is a read of this node's state, so it first confirms leadership
//!    with a quorum (read index), as a linearizable read does.
//! 5. Answer every request with its results and the record's log index (`lsn`). A request
//!    that asked for `sync` or `replicas:K` ([`Durability`]) then waits, in its own task so
//!    the writer goes on, until enough followers report having applied it ([`Progress`]).
//!
//! A request carrying a client request id that was already applied (a retry whose first answer
//! was lost) is not run by the speculation: it comes back in [`sql::Speculation::duplicates`]
//! with the stored results and the log index of the entry that applied it, and is answered
//! with that index instead of the new record's. A repeat of an id within one batch runs once
//! and both requests get the new record's index. The ids live in every replica's database
//! (`sql::answers`), so a retry is recognised after a failover too.
//!
//! Because the writer waits for its own record to be applied before speculating the next, a
//! speculation always runs against exactly the state its changeset will be applied to; a
//! conflict on apply can only mean divergence, and stops the node.
//!
//! What it does not do: HTTP, forwarding to the leader, or reads.

pub mod batch;
pub mod durability;
mod error;
pub mod progress;

use std::sync::Arc;
use std::time::Duration;

pub use durability::Durability;
pub use error::{Error, Result};
pub use progress::Progress;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Settings of the write path.
#[derive(Debug, Clone)]
pub struct Options {
    /// Group-commit limits.
    pub batch: batch::Limits,
    /// How long a write waits to be committed (and, for `sync` / `replicas:K`, applied by the
    /// followers it needs) before answering that the wait was not met.
    pub sync_timeout: Duration,
    /// How many requests may wait for the writer before new ones are refused.
    pub queue: usize,
    /// A planted bug, for testing the fault harness only (`keel serve --unsafe-plant-bug
    /// ack-before-commit`): answer each write as soon as its speculation succeeds, before
    /// its record is committed. Acknowledged writes are then lost when the leader is deposed.
    pub unsafe_ack_before_commit: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: batch::Limits::default(),
            sync_timeout: Duration::from_secs(5),
            queue: 4096,
            unsafe_ack_before_commit: false,
        }
    }
}

/// A write's answer: one result per statement, and the log index of the record that carried it.
#[derive(Debug)]
pub struct Outcome {
    /// Per-statement results, in request order.
    pub results: Vec<sql::StatementResult>,
    /// The log index of the record holding the write's changes; when the request changed
    /// nothing, the index applied when it was answered; for a retry of a request id already
    /// applied, the index of the entry that applied the original (whose results these are).
    pub lsn: wal::Lsn,
}

/// A request waiting for the writer.
struct Pending {
    /// The request.
    request: sql::WriteRequest,
    /// Approximate size, for batching.
    size: usize,
    /// Where to send the answer.
    reply: oneshot::Sender<Result<Outcome>>,
}

/// Handle to the write path. Cheap to clone.
#[derive(Clone)]
pub struct Leader {
    /// Queue into the writer task.
    tx: mpsc::Sender<Pending>,
    /// The Raft node, for the membership a durability wait counts.
    raft: raft::Raft,
    /// Followers' applied positions.
    progress: Arc<Progress>,
    /// How long durability waits may take.
    sync_timeout: Duration,
}

impl Leader {
    /// Starts the writer task on the current tokio runtime.
    pub fn spawn(
        raft: raft::Raft,
        db: sql::Worker,
        applied: tokio::sync::watch::Receiver<wal::Lsn>,
        progress: Arc<Progress>,
        options: Options,
    ) -> Leader {
        let (tx, rx) = mpsc::channel(options.queue);
        let sync_timeout = options.sync_timeout;
        tokio::spawn(run(raft.clone(), db, applied, progress.clone(), options, rx));
        Leader { tx, raft, progress, sync_timeout }
    }

    /// Executes a write through Raft; resolves once it is committed and applied on this node,
    /// and then as durable as `durability` asks.
    pub async fn write(
        &self,
        request: sql::WriteRequest,
        durability: Durability,
    ) -> Result<Outcome> {
        // Check up front that the mode can be met at all, so nothing is written in vain.
        // Semi-sync needs nothing beyond the commit: skip the membership lookups entirely.
        let needed = match durability {
            Durability::SemiSync => 0,
            d => d.needed(self.others().len()).map_err(Error::InvalidInput)?,
        };
        let size = request.statements.iter().map(|s| s.sql.len() + 16).sum();
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Pending { request, size, reply })
            .map_err(|_| Error::Unavailable("write queue full".to_string()))?;
        let outcome = rx.await.map_err(|_| Error::Internal("writer stopped".to_string()))??;
        if needed == 0 {
            return Ok(outcome);
        }
        // Members may have changed while the write was queued: count the current ones.
        let others = self.others();
        let needed = needed.min(others.len());
        match self.progress.wait(outcome.lsn, &others, needed, self.sync_timeout).await {
            Ok(()) => Ok(outcome),
            Err(unconfirmed) => {
                Err(Error::NotReplicated { lsn: outcome.lsn, durability, unconfirmed })
            }
        }
    }

    /// Executes `requests` with semi-sync durability, in the given order: every request joins
    /// the writer's queue before any answer is awaited, so they are speculated in this order
    /// (usually in one record, since they arrive together). One answer per request, in order.
    ///
    /// For callers that hand over several independent writes at once, such as the queue of
    /// `POST /db/execute?queue`; a request refused because the writer's queue is full gets
    /// [`Error::Unavailable`] without the others being affected.
    pub async fn write_all(&self, requests: Vec<sql::WriteRequest>) -> Vec<Result<Outcome>> {
        let waiting: Vec<_> = requests
            .into_iter()
            .map(|request| {
                let size = request.statements.iter().map(|s| s.sql.len() + 16).sum();
                let (reply, rx) = oneshot::channel();
                self.tx
                    .try_send(Pending { request, size, reply })
                    .map(|()| rx)
                    .map_err(|_| Error::Unavailable("write queue full".to_string()))
            })
            .collect();
        let mut outcomes = Vec::with_capacity(waiting.len());
        for w in waiting {
            outcomes.push(match w {
                Ok(rx) => {
                    rx.await.unwrap_or_else(|_| Err(Error::Internal("writer stopped".to_string())))
                }
                Err(e) => Err(e),
            });
        }
        outcomes
    }

    /// How many requests wait in the writer's queue, not yet taken by the writer. A request
    /// that has left the queue is in the writer's current batch (or, when that batch was
    /// full, the next one); the writer reads the batch's term in the same step as it takes
    /// the batch's first request, before any `.await`.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The members other than this node (voters and learners).
    fn others(&self) -> Vec<raft::NodeId> {
        let state = raft::cluster::state(&self.raft);
        state.members.iter().map(|m| m.id).filter(|id| *id != state.id).collect()
    }
}

/// The writer loop: batches, speculates, proposes, answers. Ends when every [`Leader`] handle is
/// dropped.
async fn run(
    raft: raft::Raft,
    db: sql::Worker,
    applied: tokio::sync::watch::Receiver<wal::Lsn>,
    progress: Arc<Progress>,
    options: Options,
    mut rx: mpsc::Receiver<Pending>,
) {
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut limits = batch::Batch::default();
        limits.admit(&options.batch, first.size);
        let mut pending = vec![first];
        while let Ok(p) = rx.try_recv() {
            if limits.admit(&options.batch, p.size) {
                pending.push(p);
            } else {
                carry = Some(p);
                break;
            }
        }
        let requests: Vec<sql::WriteRequest> = pending.iter().map(|p| p.request.clone()).collect();
        let mut replies: Vec<_> = pending.into_iter().map(|p| p.reply).collect();
        let span = tracing::debug_span!(
            "batch",
            requests = requests.len(),
            term = tracing::field::Empty,
            lsn = tracing::field::Empty
        );
        let outcome = commit(&raft, &db, &applied, &progress, &options, requests, &mut replies)
            .instrument(span)
            .await;
        // `replies` is empty here if the planted ack-before-commit bug answered them early.
        match outcome {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Speculates and commits one batch; returns one answer per request: its results, and the
/// record's index, or for a retry of an applied request the index that applied it.
///
/// `replies` are the requests' answer channels; they are left for the caller, except under
/// the planted ack-before-commit bug, which drains them before proposing.
async fn commit(
    raft: &raft::Raft,
    db: &sql::Worker,
    applied: &tokio::sync::watch::Receiver<wal::Lsn>,
    progress: &Progress,
    options: &Options,
    requests: Vec<sql::WriteRequest>,
    replies: &mut Vec<oneshot::Sender<Result<Outcome>>>,
) -> Result<Vec<Outcome>> {
    let term = raft::client::leader_term(raft)?;
    tracing::Span::current().record("term", term);
    // Everything this leader appended (its term's blank entry included) must be applied before
    // speculating, or the changeset would be computed against a stale state.
    raft::client::wait_caught_up(raft, options.sync_timeout).await?;
    let speculation =
        db.run(move |db| db.execute_held(&requests, term)).await.map_err(|e| match e {
            sql::Error::InvalidInput(m) => Error::InvalidInput(m),
            e => Error::Internal(e.to_string()),
        })?;
    let sql::Speculation { record, results, duplicates } = speculation;
    let lsn = if record.ops.is_empty() && record.requests.is_empty() {
        // Nothing to replicate: every statement failed or changed nothing, or every request was
        // a retry of an applied one. The answer is then a read of this node's state (a CAS
        // that found another value, an UPDATE that matched no row), so it must be as current
        // as a linearizable read: confirm with a quorum that this node still leads. Without
        // this, a node that restarts believing it leads an old term (openraft restores a
        // committed vote for itself as leadership) answers from its stale copy; keel-chaos
        // found exactly that.
        raft::client::barrier(raft, raft::ReadPolicy::ReadIndex).await?;
        *applied.borrow()
    } else {
        if options.unsafe_ack_before_commit {
            let guess = *applied.borrow() + 1;
            let early = answers(results.clone(), &duplicates, guess);
            for (reply, outcome) in replies.drain(..).zip(early) {
                let _ = reply.send(Ok(outcome));
            }
        }
        let proposed = std::time::Instant::now();
        let lsn = raft::client::propose(raft, record, term, options.sync_timeout).await?;
        progress.appended(lsn, proposed);
        tracing::Span::current().record("lsn", lsn);
        lsn
    };
    Ok(answers(results, &duplicates, lsn))
}

/// Pairs each request's results with the index to answer it with: the index that applied it
/// for a retry of an applied request (`duplicates`), `lsn` for the others.
fn answers(
    results: Vec<Vec<sql::StatementResult>>,
    duplicates: &[Option<wal::Lsn>],
    lsn: wal::Lsn,
) -> Vec<Outcome> {
    assert_eq!(results.len(), duplicates.len(), "a speculation answers every request once");
    results
        .into_iter()
        .zip(duplicates)
        .map(|(results, duplicate)| Outcome { results, lsn: duplicate.unwrap_or(lsn) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_keep_their_original_lsn() {
        let result = |id| {
            vec![sql::StatementResult::Exec { last_insert_id: id, rows_affected: 1, time: 0.0 }]
        };
        let outcomes = answers(vec![result(1), result(2), result(3)], &[None, Some(4), None], 9);
        let lsns: Vec<wal::Lsn> = outcomes.iter().map(|o| o.lsn).collect();
        assert_eq!(lsns, vec![9, 4, 9]);
        assert_eq!(outcomes[1].results, result(2));
    }
}
