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
//!    ([`raft::client::Proposal`]) and wait until it is committed (a quorum has it durably) and
//!    applied here. Only the apply changes the database: on the followers from the record's
//!    changesets, here by committing the open transaction, which holds the same rows (it is
//!    rolled back, and the record applied from its changesets, if anything else reaches the
//!    database first).
//!    A batch that changes nothing (every statement failed or matched no row) is not
//!    proposed; its answer is a read of this node's state, so it first confirms leadership
//!    with a quorum (read index), as a linearizable read does.
//! 5. Answer every request with its results and the record's log index (`lsn`), once this
//!    node's database has committed it. A request that asked for `sync` or `replicas:K`
//!    ([`Durability`]) then waits, in its own task so the writer goes on, until enough
//!    followers report having applied it ([`Progress`]).
//!
//! **Pipelining.** A batch that arrives while fewer than [`Options::pipeline`] batches are in
//! flight does not wait for their round trip: it is speculated on top of them, inside the same
//! open transaction ([`sql::Db::execute_stacked`]), so its changeset is computed against their
//! effects, and proposed right after them in the same term. Before proposing it the writer
//! makes sure openraft has appended the ones before it ([`raft::client::order_barrier`]): a
//! proposal refused before its append (a leader lease not yet established, a leadership
//! transfer) must not be overtaken, or the later record would be applied to a state that lacks
//! the earlier one. SQLite cannot commit part of a transaction, so the batches in it commit
//! together when the last one's entry is applied; the first batch's clients wait for that too,
//! and every batch in flight is answered at once (`land`). Anything that breaks the stack (a
//! failed proposal, another entry between them, a new term) rolls the transaction back, and
//! every record in it is applied from its changesets like on a follower. A batch that came
//! while the pipeline was full, or could not be stacked, waits for the batches in flight to
//! land and is speculated afresh. With closed-loop clients the gain is that a request no
//! longer waits for one round trip of the batch before it and then one of its own
//! (docs/benchmarks.md).
//!
//! **VACUUM.** [`Leader::vacuum`] puts a record holding only [`wal::Op::Vacuum`] in the log
//! between batches, once every batch in flight has landed, and speculates nothing until it is
//! applied here: `VACUUM` renumbers some rowids, so no changeset computed before it may be
//! applied after it.
//!
//! A request carrying a client request id that was already applied (a retry whose first answer
//! was lost) is not run by the speculation: it comes back in [`sql::Speculation::duplicates`]
//! with the stored results and the log index of the entry that applied it, and is answered
//! with that index instead of the new record's. A repeat of an id within one batch runs once
//! and both requests get the new record's index. The ids live in every replica's database
//! (`sql::answers`), so a retry is recognised after a failover too; a batch repeating an id
//! of a batch in flight is not stacked.
//!
//! Because a speculation runs on the applied state plus exactly the batches in flight, which
//! the log holds right before its own record, its changeset is applied to exactly the state
//! it was computed against; a conflict on apply can only mean divergence, and stops the node.
//!
//! **A full disk.** A batch is not proposed when this node's disk cannot take it
//! ([`raft::space::Space::admit_write`]: free space below the reserve, or no room in the log
//! for the record): it is answered [`Error::DiskFull`] (nothing written), checked before
//! speculating and again, with the record's size, right before proposing. What is admitted
//! then cannot fail to append: the log holds that room preallocated.
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
    /// How many batches may be in flight at once (at least 1): a batch that comes while
    /// fewer are is speculated on top of them and proposed after them (see the crate docs).
    pub pipeline: usize,
    /// The data directory's free space: while the disk is full, batches are answered
    /// [`Error::DiskFull`] before anything is proposed (`None`: never).
    pub space: Option<Arc<raft::space::Space>>,
    /// Peers that refused this node's appends for lack of space: while too many voters are
    /// full for a majority to take a write, batches are answered [`Error::DiskFull`] before
    /// anything is proposed (`None`: never).
    pub peers_full: Option<Arc<raft::space::PeersFull>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: batch::Limits::default(),
            sync_timeout: Duration::from_secs(5),
            queue: 4096,
            unsafe_ack_before_commit: false,
            pipeline: 1,
            space: None,
            peers_full: None,
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
    /// `VACUUM`s waiting for the writer ([`Leader::vacuum`]).
    vacuums: mpsc::Sender<oneshot::Sender<Result<Outcome>>>,
    /// The Raft node, for the membership a durability wait counts.
    raft: raft::Raft,
    /// Followers' applied positions.
    progress: Arc<Progress>,
    /// How long durability waits may take.
    sync_timeout: Duration,
    /// What the writer did.
    counters: Arc<Counters>,
}

/// What the writer has done since it started, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Batches whose record was proposed.
    proposed: std::sync::atomic::AtomicU64,
    /// Of those, the ones speculated on top of a batch in flight (pipelining).
    stacked: std::sync::atomic::AtomicU64,
}

impl Counters {
    /// Batches whose record was proposed.
    pub fn proposed(&self) -> u64 {
        self.proposed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Batches proposed on top of a batch in flight.
    pub fn stacked(&self) -> u64 {
        self.stacked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a proposed batch.
    fn count(&self, stacked: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.proposed.fetch_add(1, Relaxed);
        if stacked {
            self.stacked.fetch_add(1, Relaxed);
        }
    }
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
        let (vacuums, vacuum_rx) = mpsc::channel(VACUUM_QUEUE);
        let sync_timeout = options.sync_timeout;
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            raft: raft.clone(),
            db,
            applied,
            progress: progress.clone(),
            options,
            counters: counters.clone(),
        };
        tokio::spawn(run(writer, rx, vacuum_rx));
        Leader { tx, vacuums, raft, progress, sync_timeout, counters }
    }

    /// Runs SQLite's `VACUUM` on every replica at one log position: the writer lands the
    /// batches in flight, proposes a record holding only [`wal::Op::Vacuum`], and answers once
    /// it is committed and applied here (each replica runs it when it applies the entry). Nothing
    /// is speculated meanwhile, so no changeset computed before it is applied after it: it
    /// renumbers some rowids (see [`wal::Op::Vacuum`]). The answer's `lsn` is the entry's.
    pub async fn vacuum(&self) -> Result<Outcome> {
        let (reply, rx) = oneshot::channel();
        self.vacuums
            .try_send(reply)
            .map_err(|_| Error::Unavailable("a VACUUM is already queued; retry later".into()))?;
        rx.await.map_err(|_| Error::Internal("writer stopped".to_string()))?
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
        let size = size_of(&request);
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
                let size = size_of(&request);
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

    /// What the writer has done.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The members other than this node (voters and learners).
    fn others(&self) -> Vec<raft::NodeId> {
        let state = raft::cluster::state(&self.raft);
        state.members.iter().map(|m| m.id).filter(|id| *id != state.id).collect()
    }
}

/// How many `VACUUM`s may wait for the writer.
const VACUUM_QUEUE: usize = 1;

/// How long a `VACUUM`'s entry may take to commit and apply (it rewrites the whole file).
const VACUUM_WAIT: Duration = Duration::from_secs(3600);

/// The writer loop: batches, speculates, proposes, answers; runs a `VACUUM` between batches.
/// Ends when every [`Leader`] handle is dropped.
async fn run(
    writer: Writer,
    mut rx: mpsc::Receiver<Pending>,
    mut vacuums: mpsc::Receiver<oneshot::Sender<Result<Outcome>>>,
) {
    let mut carry: Option<Pending> = None;
    let mut again: Option<Vec<Pending>> = None;
    let mut flights: Vec<Flight> = Vec::new();
    loop {
        // A VACUUM goes before the next batch, so a steady stream of writes cannot starve it.
        if let Ok(reply) = vacuums.try_recv() {
            writer.land(&mut flights).await;
            let _ = reply.send(writer.vacuum().await);
        }
        let batch = match again.take() {
            Some(batch) => batch,
            None => {
                let first = match carry.take() {
                    Some(p) => p,
                    None => {
                        // Land what is in flight as soon as its answer comes, unless a request
                        // comes first; a VACUUM lands what is in flight, then runs.
                        let next = tokio::select! {
                            biased;
                            Some(reply) = vacuums.recv() => {
                                writer.land(&mut flights).await;
                                let _ = reply.send(writer.vacuum().await);
                                continue;
                            }
                            p = rx.recv() => p,
                            () = settled(&mut flights) => {
                                writer.land(&mut flights).await;
                                continue;
                            }
                        };
                        match next {
                            Some(p) => p,
                            None => {
                                writer.land(&mut flights).await;
                                return;
                            }
                        }
                    }
                };
                take_batch(&writer.options, first, &mut rx, &mut carry)
            }
        };
        if !flights.is_empty() {
            if flights.len() < writer.options.pipeline {
                match writer.stack(&mut flights, batch).await {
                    Took::Flying(flight) => {
                        flights.push(*flight);
                        if flights.len() >= writer.options.pipeline {
                            writer.land(&mut flights).await;
                        }
                    }
                    Took::Done => {}
                    Took::Again(batch) => {
                        writer.land(&mut flights).await;
                        again = Some(batch);
                    }
                }
                continue;
            }
            writer.land(&mut flights).await;
        }
        if let Some(flight) = writer.fresh(batch).await {
            flights.push(flight);
            if writer.options.pipeline <= 1 {
                writer.land(&mut flights).await;
            }
        }
    }
}

/// Resolves when the oldest batch in flight has its answer; never if none is in flight.
async fn settled(flights: &mut [Flight]) {
    match flights.first_mut() {
        Some(oldest) => oldest.proposal.settle().await,
        None => std::future::pending().await,
    }
}

/// Takes `first` and whatever else is queued, within the group-commit limits; a request that
/// does not fit is left in `carry` for the next batch.
fn take_batch(
    options: &Options,
    first: Pending,
    rx: &mut mpsc::Receiver<Pending>,
    carry: &mut Option<Pending>,
) -> Vec<Pending> {
    let mut limits = batch::Batch::default();
    limits.admit(&options.batch, first.size);
    let mut pending = vec![first];
    while let Ok(p) = rx.try_recv() {
        if limits.admit(&options.batch, p.size) {
            pending.push(p);
        } else {
            *carry = Some(p);
            break;
        }
    }
    pending
}

/// A batch whose record is proposed and not yet answered.
struct Flight {
    /// Where its requests' answers go (empty under the planted ack-before-commit bug).
    replies: Vec<oneshot::Sender<Result<Outcome>>>,
    /// Its requests' results.
    results: Vec<Vec<sql::StatementResult>>,
    /// For each request, the index of the entry that applied it if it was a retry.
    duplicates: Vec<Option<wal::Lsn>>,
    /// The proposal.
    proposal: raft::client::Proposal,
    /// When it was proposed.
    proposed: std::time::Instant,
    /// The term it was proposed in.
    term: wal::Term,
}

/// What became of a batch.
enum Took {
    /// Its record is proposed: answered when it lands.
    Flying(Box<Flight>),
    /// Its requests are answered.
    Done,
    /// It could not be speculated on top of the batches in flight: speculate it again once they
    /// have landed.
    Again(Vec<Pending>),
}

/// The writer's parts.
struct Writer {
    raft: raft::Raft,
    db: sql::Worker,
    applied: tokio::sync::watch::Receiver<wal::Lsn>,
    progress: Arc<Progress>,
    options: Options,
    counters: Arc<Counters>,
}

impl Writer {
    /// Speculates a batch on the applied state, nothing being in flight, and proposes its
    /// record; `None` when its requests are answered already.
    async fn fresh(&self, batch: Vec<Pending>) -> Option<Flight> {
        let (requests, mut replies) = split(batch);
        let span =
            tracing::debug_span!("batch", requests = requests.len(), term = tracing::field::Empty);
        let outcome = async {
            self.admit(0)?;
            let term = raft::client::leader_term(&self.raft)?;
            tracing::Span::current().record("term", term);
            // Everything this leader appended (its term's blank entry included) must be applied
            // before speculating, or the changeset would be computed against a stale state.
            raft::client::wait_caught_up(&self.raft, self.options.sync_timeout).await?;
            let speculation = self.db.run(move |db| db.execute_held(&requests, term)).await;
            Ok::<_, Error>((term, speculation.map_err(speculation_error)?))
        }
        .instrument(span)
        .await;
        let (term, speculation) = match outcome {
            Ok(done) => done,
            Err(e) => {
                answer_all(replies, &e);
                return None;
            }
        };
        let sql::Speculation { record, results, duplicates } = speculation;
        if record.ops.is_empty() && record.requests.is_empty() {
            // Nothing to replicate: every statement failed or changed nothing, or every request
            // was a retry of an applied one. The answer is then a read of this node's state (a
            // CAS that found another value, an UPDATE that matched no row), so it must be as
            // current as a linearizable read: confirm with a quorum that this node still leads.
            // Without this, a node that restarts believing it leads an old term (openraft
            // restores a committed vote for itself as leadership) answers from its stale copy;
            // keel-chaos found exactly that.
            let lsn = raft::client::barrier(&self.raft, raft::ReadPolicy::ReadIndex)
                .await
                .map(|_| *self.applied.borrow());
            answer(replies, lsn.map_err(Error::from).map(|lsn| answers(results, &duplicates, lsn)));
            return None;
        }
        if let Err(e) = self.admit(raft::space::record_bytes(&record)) {
            self.release().await;
            answer_all(replies, &e);
            return None;
        }
        self.ack_early(&mut replies, &results, &duplicates);
        self.propose(record, term, replies, results, duplicates, false).await
    }

    /// Whether this node's disk can take a record of `bytes` (0: whether it is full);
    /// [`Error::DiskFull`] if not.
    fn admit(&self, bytes: u64) -> Result<()> {
        if let Some(space) = &self.options.space {
            space.admit_write(bytes)?;
        }
        match &self.options.peers_full {
            Some(peers) => self.admit_quorum(peers),
            None => Ok(()),
        }
    }

    /// Whether enough voters can take a write for it to commit: not if so many of the others
    /// refused appends for lack of space lately that the rest are no majority. Such a write
    /// would only wait, appended here, until it timed out; it is refused before it is written.
    fn admit_quorum(&self, peers: &raft::space::PeersFull) -> Result<()> {
        let full = peers.full();
        if full.is_empty() {
            return Ok(());
        }
        let voters = raft::client::voter_ids(&self.raft);
        let full: Vec<_> = voters.iter().filter(|v| full.contains(v)).collect();
        if (voters.len() - full.len()) * 2 > voters.len() {
            return Ok(());
        }
        let names: Vec<String> = full.iter().map(ToString::to_string).collect();
        Err(Error::DiskFull(format!(
            "the disks of voters {} are full, so no majority of the {} voters can take a write; \
             nothing was written: free space on those disks, and writes resume by themselves",
            names.join(", "),
            voters.len()
        )))
    }

    /// Rolls back the held speculations (applying the entries deferred in them from their
    /// records), for a batch that will not be proposed.
    async fn release(&self) {
        if let Err(e) = self.db.run(|db| db.release_held()).await {
            tracing::warn!(error = %e, "releasing the held speculations");
        }
    }

    /// Speculates a batch on top of the ones in flight (pipelining: see the crate docs) and
    /// proposes its record after theirs.
    async fn stack(&self, flights: &mut Vec<Flight>, batch: Vec<Pending>) -> Took {
        let term = match raft::client::leader_term(&self.raft) {
            Ok(term) if flights.iter().all(|f| f.term == term) => term,
            _ => return Took::Again(batch),
        };
        let (requests, replies) = split(batch);
        let stacked = self
            .db
            .run(move |db| {
                let speculation = db.execute_stacked(&requests, term);
                Ok((requests, speculation))
            })
            .await;
        let (requests, speculation) = match stacked {
            Ok((requests, Ok(Some(speculation)))) => (requests, speculation),
            Ok((requests, Ok(None))) => return Took::Again(unsplit(requests, replies)),
            Ok((_, Err(e))) | Err(e) => {
                answer_all(replies, &speculation_error(e));
                return Took::Done;
            }
        };
        let sql::Speculation { record, results, duplicates } = speculation;
        if record.ops.is_empty() && record.requests.is_empty() {
            // The answer reads the state the batches in flight leave: valid once they commit,
            // which also confirms this node led after these requests came.
            let lsn = self.land_last(flights).await;
            answer(replies, lsn.map(|lsn| answers(results, &duplicates, lsn)));
            return Took::Done;
        }
        // The record goes after the ones in flight only if they were appended: one refused
        // (a lease not yet established, a leadership transfer) must not be overtaken.
        let gate = raft::client::order_barrier(&self.raft).await;
        if gate.is_err() || flights.iter_mut().any(|f| f.proposal.failed()) {
            if let Err(e) = self.db.run(|db| db.release_held()).await {
                tracing::warn!(error = %e, "releasing the held speculations");
            }
            return Took::Again(unsplit(requests, replies));
        }
        if let Err(e) = self.admit(raft::space::record_bytes(&record)) {
            self.release().await;
            answer_all(replies, &e);
            return Took::Done;
        }
        let mut replies = replies;
        self.ack_early(&mut replies, &results, &duplicates);
        match self.propose(record, term, replies, results, duplicates, true).await {
            Some(flight) => Took::Flying(Box::new(flight)),
            None => Took::Done,
        }
    }

    /// Proposes `record` in `term` for a batch (`stacked` on batches in flight, or not);
    /// `None` when its requests are answered already (the proposal could not be submitted).
    async fn propose(
        &self,
        record: wal::Record,
        term: wal::Term,
        replies: Vec<oneshot::Sender<Result<Outcome>>>,
        results: Vec<Vec<sql::StatementResult>>,
        duplicates: Vec<Option<wal::Lsn>>,
        stacked: bool,
    ) -> Option<Flight> {
        self.counters.count(stacked);
        let proposed = std::time::Instant::now();
        match raft::client::Proposal::submit(&self.raft, record, term, self.options.sync_timeout)
            .await
        {
            Ok(proposal) => Some(Flight { replies, results, duplicates, proposal, proposed, term }),
            Err(e) => {
                answer_all(replies, &e.into());
                None
            }
        }
    }

    /// Proposes a `VACUUM` record, nothing being in flight (see [`Leader::vacuum`]).
    async fn vacuum(&self) -> Result<Outcome> {
        let term = raft::client::leader_term(&self.raft)?;
        raft::client::wait_caught_up(&self.raft, self.options.sync_timeout).await?;
        let record = wal::Record { ops: vec![wal::Op::Vacuum], requests: Vec::new() };
        let proposed = std::time::Instant::now();
        let proposal =
            raft::client::Proposal::submit(&self.raft, record, term, VACUUM_WAIT).await?;
        let lsn = proposal.wait().await?;
        self.progress.appended(lsn, proposed);
        self.applied_here(lsn).await?;
        Ok(Outcome { results: Vec::new(), lsn })
    }

    /// Waits until every batch in flight is committed and applied here, and answers them, in
    /// order.
    async fn land(&self, flights: &mut Vec<Flight>) {
        // Each request has its answer; the last index is for `stack` only.
        let _ = self.land_last(flights).await;
    }

    /// [`Writer::land`], returning the last batch's index, or the first failure.
    async fn land_last(&self, flights: &mut Vec<Flight>) -> Result<wal::Lsn> {
        let mut landed = Vec::with_capacity(flights.len());
        for flight in flights.drain(..) {
            let Flight { replies, results, duplicates, proposal, proposed, .. } = flight;
            landed.push((proposal.wait().await, replies, results, duplicates, proposed));
        }
        if landed.iter().any(|(outcome, ..)| outcome.is_err()) {
            // Entries committed behind a failed one wait in the held transaction for it:
            // apply them now.
            if let Err(e) = self.db.run(|db| db.release_held()).await {
                tracing::warn!(error = %e, "releasing the held speculations");
            }
        }
        let mut last: Option<Result<wal::Lsn>> = None;
        for (outcome, replies, results, duplicates, proposed) in landed {
            let outcome = match outcome {
                Ok(lsn) => {
                    self.progress.appended(lsn, proposed);
                    self.applied_here(lsn).await.map(|()| lsn)
                }
                Err(e) => Err(e.into()),
            };
            answer(replies, outcome.clone().map(|lsn| answers(results, &duplicates, lsn)));
            // The first failure stands; otherwise the last index.
            if !matches!(last, Some(Err(_))) {
                last = Some(outcome);
            }
        }
        last.unwrap_or_else(|| Err(Error::Internal("nothing in flight".to_string())))
    }

    /// Waits until this node's database has committed `lsn`: a committed entry held behind a
    /// later one is not visible before (see `sql::Db::execute_stacked`), and a client answered
    /// must see its write here.
    async fn applied_here(&self, lsn: wal::Lsn) -> Result<()> {
        let mut applied = self.applied.clone();
        match tokio::time::timeout(self.options.sync_timeout, applied.wait_for(|a| *a >= lsn)).await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::Unknown(format!(
                "entry {lsn} was committed but not applied on the leader within {:?}",
                self.options.sync_timeout
            ))),
        }
    }

    /// Under the planted ack-before-commit bug, answers a batch's requests now, before its
    /// record is even proposed.
    fn ack_early(
        &self,
        replies: &mut Vec<oneshot::Sender<Result<Outcome>>>,
        results: &[Vec<sql::StatementResult>],
        duplicates: &[Option<wal::Lsn>],
    ) {
        if self.options.unsafe_ack_before_commit {
            let guess = *self.applied.borrow() + 1;
            let early = answers(results.to_vec(), duplicates, guess);
            for (reply, outcome) in replies.drain(..).zip(early) {
                let _ = reply.send(Ok(outcome));
            }
        }
    }
}

/// The queue's view of a request's size, for group commit.
fn size_of(request: &sql::WriteRequest) -> usize {
    request.statements.iter().map(|s| s.sql.len() + 16).sum()
}

/// A batch again from its requests and answer channels.
fn unsplit(
    requests: Vec<sql::WriteRequest>,
    replies: Vec<oneshot::Sender<Result<Outcome>>>,
) -> Vec<Pending> {
    requests
        .into_iter()
        .zip(replies)
        .map(|(request, reply)| Pending { size: size_of(&request), request, reply })
        .collect()
}

/// A batch's requests and their answer channels.
fn split(batch: Vec<Pending>) -> (Vec<sql::WriteRequest>, Vec<oneshot::Sender<Result<Outcome>>>) {
    batch.into_iter().map(|p| (p.request, p.reply)).unzip()
}

/// Sends every request its answer, or all of them the error.
fn answer(replies: Vec<oneshot::Sender<Result<Outcome>>>, outcome: Result<Vec<Outcome>>) {
    match outcome {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => answer_all(replies, &e),
    }
}

/// Sends every request the error `e`.
fn answer_all(replies: Vec<oneshot::Sender<Result<Outcome>>>, e: &Error) {
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}

/// The writer's error for a failed speculation.
fn speculation_error(e: sql::Error) -> Error {
    match e {
        sql::Error::InvalidInput(m) => Error::InvalidInput(m),
        e if e.is_no_space() => Error::DiskFull(format!(
            "the disk is full ({e}); nothing was written: free space on this node's disk, and \
             writes resume by themselves"
        )),
        e => Error::Internal(e.to_string()),
    }
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
