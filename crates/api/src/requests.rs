//! `GET /db/requests/{request_id}`: what became of the write that carried a request id.
//!
//! Any node answers, after confirming the leader's commit index as a linearizable read does:
//! * `{"status": "applied", "lsn": N, "results": […]}`: the entry at `N` applied it, and these
//!   are its original results;
//! * `{"status": "not_applied", "as_of_lsn": M}`: no entry through `M` carried it;
//! * 410 with [`ErrorAnswer`](crate::ErrorAnswer) `first_lsn` (the oldest log index whose answers are
//!   still kept) and `applied_index` (`M`): it could have been applied before its answer was
//!   pruned. `?after_lsn=K` (an lsn the client had seen before sending the write) narrows this.

use serde::{Deserialize, Serialize};

use crate::Lsn;
use crate::db::StatementResult;

/// The answer of `GET /db/requests/{request_id}` (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RequestOutcome {
    /// The write was applied.
    Applied {
        /// The log index of the entry that carried it.
        lsn: Lsn,
        /// Its per-statement results, as first answered.
        results: Vec<StatementResult>,
    },
    /// No entry through `as_of_lsn` carried it.
    NotApplied {
        /// The applied index the answer covers.
        as_of_lsn: Lsn,
    },
}

/// A request id as one path segment: unreserved characters as they are, every other byte
/// percent-encoded.
pub fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        let applied: RequestOutcome = serde_json::from_str(
            r#"{"status":"applied","lsn":7,"results":[{"last_insert_id":3,"rows_affected":1}]}"#,
        )
        .unwrap();
        let RequestOutcome::Applied { lsn: 7, results } = &applied else { panic!("{applied:?}") };
        assert_eq!(results[0].last_insert_id, Some(3));
        let not: RequestOutcome =
            serde_json::from_str(r#"{"status":"not_applied","as_of_lsn":12}"#).unwrap();
        assert_eq!(not, RequestOutcome::NotApplied { as_of_lsn: 12 });
        assert_eq!(
            serde_json::to_string(&not).unwrap(),
            r#"{"status":"not_applied","as_of_lsn":12}"#
        );
    }

    #[test]
    fn ids_as_path_segments() {
        assert_eq!(path_segment("abc-1_2.3~"), "abc-1_2.3~");
        assert_eq!(path_segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(path_segment("é"), "%C3%A9");
    }
}
