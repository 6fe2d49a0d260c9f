//! The outcome of a write, looked up by its client request id: how a client whose write timed
//! out (or whose connection dropped) learns whether it was applied.
//!
//! Every write that carries a request id leaves its answer in the replicated database
//! (`sql::answers`), in the same transaction as its changes, at the log index that carried it.
//! [`Node::request_outcome`] first does what a linearizable read does: the leader confirms its
//! leadership with a quorum and names its commit index, and this node waits until it has
//! applied it. Then one read transaction looks the id up and reads the applied index `M`:
//!
//! - found: [`RequestOutcome::Applied`], with the entry's index and the original results;
//! - not found, and every answer since the request could have been applied is still kept:
//!   [`RequestOutcome::NotApplied`] as of `M`: no entry through `M` carried the request;
//! - not found, and answers it may have had were pruned (they are kept for
//!   `sql::answers::RETENTION` log entries): [`RequestOutcome::Pruned`]. A client that says
//!   when it sent the write (`after`: an lsn it had seen before sending) narrows this: entries
//!   up to `after` cannot hold it.
//!
//! "Not applied as of `M`" is about the log through `M`. A write still on its way (its HTTP
//! request not yet at the leader, a retry running) can commit later; a client that has stopped
//! sending it, and whose requests have all ended, can rely on it not happening. A retry with the
//! same id remains the way to make a write happen exactly once.

use std::time::Duration;

use crate::read::READ_WAIT;
use crate::{Error, Node};

/// What became of the write that carried a request id.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestOutcome {
    /// Applied by the entry at `lsn`, with these results (the original answer).
    Applied {
        /// The log index of the entry that carried it.
        lsn: wal::Lsn,
        /// Its per-statement results.
        results: Vec<sql::StatementResult>,
    },
    /// No entry through `as_of` carried it.
    NotApplied {
        /// The applied (and at the start of the lookup, committed) index the answer covers.
        as_of: wal::Lsn,
    },
    /// Unknown, but an entry before `oldest_kept` could have carried it and its answer has
    /// been pruned since.
    Pruned {
        /// The oldest log index whose answers are still kept.
        oldest_kept: wal::Lsn,
        /// The applied index of the lookup.
        as_of: wal::Lsn,
    },
}

impl Node {
    /// Looks up the outcome of the write that carried request id `id` (see the module docs).
    /// `after`: the write was sent after its client had seen this lsn. `timeout` bounds the
    /// read index round and the wait to apply it (default [`READ_WAIT`]).
    pub async fn request_outcome(
        &self,
        id: &str,
        after: Option<wal::Lsn>,
        timeout: Option<Duration>,
    ) -> Result<RequestOutcome, Error> {
        if id.is_empty() {
            return Err(Error::InvalidInput("the request id is empty".into()));
        }
        self.read_index_applied(timeout.unwrap_or(READ_WAIT)).await?;
        let readers = self.readers.clone();
        let id = id.to_string();
        let lookup = tokio::task::spawn_blocking(move || readers.request_answer(&id)).await??;
        Ok(classify(lookup, after))
    }
}

/// The outcome a lookup shows, given that the write was sent after lsn `after` (if known).
fn classify(lookup: sql::answers::Lookup, after: Option<wal::Lsn>) -> RequestOutcome {
    let as_of = lookup.applied;
    if let Some((lsn, results)) = lookup.answer {
        return RequestOutcome::Applied { lsn, results };
    }
    let oldest_kept = lookup.oldest_kept();
    // Entries from `after + 1` on could hold it; their answers are all kept if that is no
    // earlier than the oldest kept index.
    let first_possible = after.map_or(1, |a| a.saturating_add(1));
    if first_possible >= oldest_kept {
        RequestOutcome::NotApplied { as_of }
    } else {
        RequestOutcome::Pruned { oldest_kept, as_of }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sql::answers::{Lookup, RETENTION};

    #[test]
    fn found_unknown_and_pruned() {
        let result =
            vec![sql::StatementResult::Exec { last_insert_id: 1, rows_affected: 1, time: 0.0 }];
        let found = Lookup { answer: Some((7, result.clone())), applied: 9 };
        assert_eq!(classify(found, None), RequestOutcome::Applied { lsn: 7, results: result });
        // Nothing pruned yet: an unknown id was not applied, whenever it was sent.
        let young = Lookup { answer: None, applied: 500 };
        assert_eq!(classify(young, None), RequestOutcome::NotApplied { as_of: 500 });
        // After pruning: unknown unless the client says it sent the write recently enough.
        let old = Lookup { answer: None, applied: RETENTION + 500 };
        let pruned = RequestOutcome::Pruned { oldest_kept: 500, as_of: RETENTION + 500 };
        assert_eq!(classify(old.clone(), None), pruned);
        assert_eq!(classify(old.clone(), Some(498)), pruned);
        let as_of = RETENTION + 500;
        assert_eq!(classify(old.clone(), Some(499)), RequestOutcome::NotApplied { as_of });
        assert_eq!(classify(old, Some(as_of)), RequestOutcome::NotApplied { as_of });
    }
}
