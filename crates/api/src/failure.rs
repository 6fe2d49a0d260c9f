//! The body of an answer that is not a success: `{"error": "…"}`, with the fields some
//! refusals add.
//!
//! Every non-2xx JSON answer of Keel has this shape (404 and 405 have empty bodies, and 413
//! and `/readyz` answer plain text). The extra fields:
//! * a `sync`/`replicas:K` write that committed but was not confirmed in time (503):
//!   `committed: true`, `lsn`, `unconfirmed` (the members that did not confirm);
//! * a `min_lsn` not reached in time (503): `applied_index`, how far the node got;
//! * a change stream whose start was compacted away (410, and the stream's `end` event):
//!   `first_lsn`, the first it can stream;
//! * a SQLite-file load whose statement failed (400): `statements_applied` and `lsn`.

use serde::{Deserialize, Serialize};

use crate::{Lsn, NodeId};

/// `{"error": "…", …}`: see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// With a `min_lsn` timeout: the index this node had applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<Lsn>,
    /// With a replication wait that timed out: the write IS committed; do not retry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<bool>,
    /// What went wrong, and what to do about it.
    pub error: String,
    /// With a compacted change-stream start: the first position the node can stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_lsn: Option<Lsn>,
    /// With `committed`: the record's position; with a failed load: the last batch applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<Lsn>,
    /// With a failed load: statements before the failing one's batch, which stay applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statements_applied: Option<u64>,
    /// With `committed`: the members that had not confirmed applying the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed: Option<Vec<NodeId>>,
}

impl ErrorAnswer {
    /// `{"error": message}`.
    pub fn new(message: impl Into<String>) -> ErrorAnswer {
        ErrorAnswer { error: message.into(), ..ErrorAnswer::default() }
    }

    /// The answer to a write that is committed at `lsn` but that `unconfirmed` members did
    /// not confirm applying within the durability wait.
    pub fn not_replicated(message: impl Into<String>, lsn: Lsn, unconfirmed: Vec<NodeId>) -> Self {
        ErrorAnswer {
            committed: Some(true),
            lsn: Some(lsn),
            unconfirmed: Some(unconfirmed),
            ..ErrorAnswer::new(message)
        }
    }

    /// Whether the write this answers is known to be committed.
    pub fn is_committed(&self) -> bool {
        self.committed == Some(true)
    }
}
