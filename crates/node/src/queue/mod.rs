//! The write queue behind `POST /db/execute?queue`, rqlite's asynchronous write path, and
//! `GET /db/queue/{sequence_number}`, Keel's way to learn how each one ended (both routes are
//! the `keel` binary's; this module is the queue they use).
//!
//! How a queued write flows:
//!
//! 1. The `/db/execute` handler, when `queue` is present, checks that a leader is
//!    known (rqlite's leader check, skipped with `noleader`), parses and validates the body
//!    exactly as a normal execute does (a malformed one is a 400 at once), and pushes the
//!    request onto this node's queue ([`Queue::push`]). The answer is immediate:
//!    `{"results": [], "sequence_number": N}`; N comes from the [`ledger::Ledger`], grows on
//!    each node and starts from the wall clock, so it keeps growing across restarts. A full
//!    queue answers 503 with `Retry-After` and takes nothing: a request either has a number
//!    and is queued, or is refused.
//! 2. One task per node, [`flush::run`], takes the queue in batches (`--write-queue-batch-size`
//!    requests, or whatever arrived within `--write-queue-timeout` of the first) and runs each
//!    batch through the ordinary write path: on the leader [`leader::Leader::write_all`], from
//!    any other node forwarded to the leader's `/keel/queue` (Raft port), which does the same.
//!    Each request is its own write (as rqlite's batch is not a transaction) unless
//!    `--write-queue-tx` makes the batch one transaction. So queued writes are replicated and
//!    committed like any other write (semi-sync: a majority has them durably).
//! 3. Each request ends committed (at an lsn) or failed (with the error); [`verdict`] decides,
//!    and transient failures (no leader, leadership changed, a forward that failed, an outcome
//!    the leader could not tell) are retried with backoff instead. Every flushed request carries
//!    a request id (the client's `request_id`, else one made from the node and its number), so
//!    a retry of a write that did commit is answered from the stored answer, never run twice.
//! 4. The outcome is recorded in the ledger, counted in `/metrics`, logged if it failed, and
//!    handed to a client waiting with `wait`.
//!
//! What it does not do: keep the queue on disk. A queued write lives in the memory of the node
//! that queued it until it is committed; if that node dies first, it is lost (rqlite's queue
//! is in memory too). On SIGINT/SIGTERM the node flushes what it can within [`DRAIN`] and logs
//! what it could not ([`Queue::drain`]).

pub mod flush;
pub mod ledger;
pub mod verdict;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

pub use ledger::{Lookup, Outcome, Seq};

/// How long a stopping node tries to flush its queue before it gives up on what is left.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Settings of the write queue (`--write-queue-*`, rqlite's flags and defaults).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Requests waiting to be flushed at most; more are refused with 503.
    pub capacity: usize,
    /// Requests per flushed batch at most.
    pub batch_size: usize,
    /// How long the first request of a batch waits for others; zero: a batch is flushed only
    /// when it is full (rqlite's meaning of 0).
    pub timeout: Duration,
    /// Run each flushed batch as one transaction.
    pub transaction: bool,
    /// How many outcomes are kept, and for how long.
    pub retention: ledger::Retention,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            capacity: 1024,
            batch_size: 128,
            timeout: Duration::from_millis(50),
            transaction: false,
            retention: ledger::Retention::default(),
        }
    }
}

/// One queued request as it travels to the leader, and one flush (`/keel/queue`'s body): the
/// wire types.
pub use keel_api::queue::{Batch, Request};

/// The number of statements of a queued request.
fn statement_count(request: &Request) -> usize {
    request.statements.as_array().map_or(0, Vec::len)
}

/// A request in the queue.
struct Item {
    /// What to flush.
    request: Request,
    /// When it was queued (the batch timer starts at its first request's arrival).
    arrived: Instant,
    /// A client waiting for the outcome (`wait`).
    waiter: Option<oneshot::Sender<Outcome>>,
}

/// Why a request was not queued.
#[derive(Debug)]
pub enum Refused {
    /// The queue holds `--write-queue-capacity` requests.
    Full,
    /// The node is shutting down.
    Closing,
}

/// Handle to this node's write queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    /// The shared state.
    inner: Arc<Inner>,
}

/// What every handle shares.
struct Inner {
    /// This node's id (in generated request ids).
    node: raft::NodeId,
    /// The settings.
    options: Options,
    /// Sequence numbers and outcomes; also held while pushing, so numbers enter the channel
    /// in order.
    ledger: Mutex<ledger::Ledger>,
    /// Into the flusher; bounded by the capacity.
    tx: mpsc::Sender<Item>,
    /// Pending requests, for [`Queue::drain`].
    depth: watch::Sender<u64>,
    /// Set when the node stops: refuse new requests, flush without waiting for the timer.
    closing: watch::Sender<bool>,
    /// When a stopping node stops retrying.
    give_up_at: Mutex<Option<Instant>>,
}

/// The receiving end of the queue, for [`flush::run`].
pub struct Receiver {
    /// Queued requests, in order.
    rx: mpsc::Receiver<Item>,
}

impl Queue {
    /// Creates node `node`'s queue; the flusher ([`flush::run`]) takes the [`Receiver`].
    pub fn new(node: raft::NodeId, options: Options) -> (Queue, Receiver) {
        let (tx, rx) = mpsc::channel(options.capacity.max(1));
        // rqlite's start: the wall clock in nanoseconds.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX / 2));
        let inner = Inner {
            node,
            options,
            ledger: Mutex::new(ledger::Ledger::new(start, options.retention)),
            tx,
            depth: watch::channel(0).0,
            closing: watch::channel(false).0,
            give_up_at: Mutex::new(None),
        };
        (Queue { inner: Arc::new(inner) }, Receiver { rx })
    }

    /// The settings.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    fn ledger(&self) -> MutexGuard<'_, ledger::Ledger> {
        self.inner.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `request` and returns its sequence number, or refuses it without queueing
    /// anything. A request without a request id gets `keel-queue:<node>:<number>`.
    pub fn push(
        &self,
        mut request: Request,
        waiter: Option<oneshot::Sender<Outcome>>,
    ) -> Result<Seq, Refused> {
        if *self.inner.closing.borrow() {
            return Err(Refused::Closing);
        }
        let mut ledger = self.ledger();
        let permit = self.inner.tx.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => Refused::Full,
            mpsc::error::TrySendError::Closed(()) => Refused::Closing,
        })?;
        let seq = ledger.assign();
        request.seq = seq;
        if request.request_id.is_empty() {
            request.request_id = format!("keel-queue:{}:{seq}", self.inner.node);
        }
        permit.send(Item { request, arrived: Instant::now(), waiter });
        self.inner.depth.send_replace(ledger.depth());
        Ok(seq)
    }

    /// Records the outcomes of a flushed batch and tells waiting clients.
    fn finish(&self, items: Vec<Item>, outcomes: Vec<Outcome>) {
        let now = Instant::now();
        let mut waiters = Vec::new();
        let mut finished = Vec::with_capacity(items.len());
        for (item, outcome) in items.into_iter().zip(outcomes) {
            if let Some(w) = item.waiter {
                waiters.push((w, outcome.clone()));
            }
            finished.push((item.request.seq, outcome));
        }
        {
            let mut ledger = self.ledger();
            ledger.finish(finished, now);
            self.inner.depth.send_replace(ledger.depth());
        }
        for (w, outcome) in waiters {
            let _ = w.send(outcome);
        }
    }

    /// What is known about `seq`.
    pub fn lookup(&self, seq: Seq) -> Lookup {
        self.ledger().lookup(seq, Instant::now())
    }

    /// How many requests are queued and not finished.
    pub fn depth(&self) -> u64 {
        self.ledger().depth()
    }

    /// The last finished sequence number (0 if none since start): rqlite's
    /// `http.queue._default.sequence_number`.
    pub fn sequence_number(&self) -> Seq {
        self.ledger().flushed()
    }

    /// The queue's part of `/status` (`http.queue._default`), in rqlite's shape plus `depth`
    /// and `transaction`.
    pub fn status(&self) -> keel_api::queue::QueueStatus {
        let o = &self.inner.options;
        keel_api::queue::QueueStatus {
            max_size: o.capacity,
            batch_size: o.batch_size,
            timeout: format!("{:?}", o.timeout),
            transaction: o.transaction,
            sequence_number: self.sequence_number(),
            depth: usize::try_from(self.depth()).unwrap_or(usize::MAX),
        }
    }

    /// Whether the node is stopping.
    fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Whether a stopping node has run out of time to flush.
    fn gave_up(&self) -> bool {
        let at = *self.inner.give_up_at.lock().unwrap_or_else(PoisonError::into_inner);
        at.is_some_and(|at| Instant::now() >= at)
    }

    /// For a stopping node: refuses new requests, flushes what is queued for up to `limit`, and
    /// logs what could not be flushed (those writes are lost). Returns how many were lost.
    pub async fn drain(&self, limit: Duration) -> u64 {
        *self.inner.give_up_at.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Instant::now() + limit);
        self.inner.closing.send_replace(true);
        let mut depth = self.inner.depth.subscribe();
        let queued = *depth.borrow();
        if queued > 0 {
            tracing::info!(queued, "flushing the write queue before exit");
        }
        let _ = tokio::time::timeout(limit, depth.wait_for(|d| *d == 0)).await;
        let lost = self.report_lost();
        if queued > 0 && lost == 0 {
            tracing::info!(queued, "write queue flushed");
        }
        lost
    }

    /// Logs the queued writes that were not flushed (when the node stops) and returns how many.
    pub fn report_lost(&self) -> u64 {
        let pending = self.ledger().pending();
        match pending {
            None => 0,
            Some((first, last)) => {
                let lost = (last - first + 1).unsigned_abs();
                tracing::error!(
                    lost,
                    first,
                    last,
                    "queued writes were not flushed before the node stopped: they are lost, \
                     unless a flush under way had already reached the leader"
                );
                lost
            }
        }
    }
}
