//! Queued writes: the answer of `POST /db/execute?queue`, `GET /db/queue/{n}`, the queue's part
//! of `/status`, and the node-to-node batch a follower flushes to the leader (`/keel/queue`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Lsn;
use crate::db::StatementResult;

/// A queued request's sequence number on the node that queued it (rqlite's int64: it starts
/// from the wall clock in nanoseconds).
pub type Seq = i64;

/// The answer of `POST /db/execute?queue`. Without `wait` it is `{"results": [],
/// "sequence_number": n}`; with `wait`, Keel adds the outcome: `lsn` when it committed, `error`
/// when it failed (and `lsn` if some of its statements took effect).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    /// With `wait`: why the request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `wait`: the record that holds the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<Lsn>,
    /// Always empty (rqlite's shape).
    #[serde(default)]
    pub results: Vec<StatementResult>,
    /// The request's number on this node: look its outcome up with `GET /db/queue/{n}`.
    pub sequence_number: Seq,
    /// `?timings`: seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<f64>,
}

impl Queued {
    /// The answer for request `seq`, before any outcome is known.
    pub fn new(sequence_number: Seq) -> Queued {
        Queued { sequence_number, ..Queued::default() }
    }

    /// Adds the outcome `wait` waited for.
    pub fn with_outcome(mut self, outcome: &Outcome) -> Queued {
        match outcome {
            Outcome::Committed { lsn } => self.lsn = Some(*lsn),
            Outcome::Failed { error, lsn, .. } => {
                self.error = Some(error.clone());
                self.lsn = *lsn;
            }
        }
        self
    }
}

/// How a queued write ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Outcome {
    /// Every statement succeeded; the changes are in the record at `lsn`. A request without
    /// statements (a `wait` checkpoint) carries the latest lsn the queue committed before it.
    Committed {
        /// The log index of the record holding the write.
        lsn: Lsn,
    },
    /// A statement failed (SQL error), or the request was refused, or (with
    /// `--write-queue-tx`) another request of its batch failed and took it down with it.
    Failed {
        /// The reason: SQLite's message, or Keel's.
        error: String,
        /// The index (from 0) of the failed statement within the request, if one failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        statement: Option<usize>,
        /// When other statements of the request did take effect (without `transaction`):
        /// the log index of their record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lsn: Option<Lsn>,
    },
}

/// Where a queued write stands: `GET /db/queue/{n}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    /// The request's number.
    pub sequence_number: Seq,
    /// Its state.
    #[serde(flatten)]
    pub state: State,
}

/// The `state` of a queued write, with its fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Queued or being flushed.
    Pending,
    /// See [`Outcome::Committed`].
    Committed {
        /// The log index of the record holding the write.
        lsn: Lsn,
    },
    /// See [`Outcome::Failed`].
    Failed {
        /// The reason.
        error: String,
        /// The failed statement's index, if one failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        statement: Option<usize>,
        /// The record of the statements that took effect, if any did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lsn: Option<Lsn>,
    },
}

impl From<Outcome> for State {
    fn from(outcome: Outcome) -> State {
        match outcome {
            Outcome::Committed { lsn } => State::Committed { lsn },
            Outcome::Failed { error, statement, lsn } => State::Failed { error, statement, lsn },
        }
    }
}

/// The write queue in `/status` (`http.queue._default`): rqlite's fields plus `depth` and
/// `transaction`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// `--write-queue-batch-size`.
    pub batch_size: usize,
    /// Requests queued and not finished.
    pub depth: usize,
    /// `--write-queue-capacity`.
    pub max_size: usize,
    /// The last sequence number flushed, 0 before the first.
    pub sequence_number: Seq,
    /// `--write-queue-timeout`, as Rust prints a duration (`50ms`).
    pub timeout: String,
    /// `--write-queue-tx`.
    pub transaction: bool,
}

/// One queued request as it travels to the leader (`/keel/queue`, node to node).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Its sequence number on the node that queued it.
    pub seq: Seq,
    /// The statements, in rqlite's JSON form (an array, validated when queued; empty for a
    /// `wait` checkpoint).
    pub statements: Value,
    /// `?transaction`: the request's statements stand or fall together.
    pub transaction: bool,
    /// `?db_timeout`, in milliseconds.
    pub db_timeout_ms: Option<u64>,
    /// The idempotency key the write is proposed with.
    pub request_id: String,
}

/// One flush: requests in queue order (the body of `/keel/queue`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The requests (only those with statements).
    pub requests: Vec<Request>,
    /// Run them as one transaction (`--write-queue-tx`).
    pub transaction: bool,
    /// The request id of that one transaction.
    pub id: String,
}

/// What one flush attempt came to for one request (`/keel/queue` answers one per request).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Final: record it.
    Done(Outcome),
    /// Transient: try again later (the reason, for the log).
    Retry(String),
}
