//! `POST /db/load` (and `/boot`): the answer to loading a SQLite file or SQL text.
//!
//! rqlite's shape, `{"results": […]}`, with Keel's counters beside it. A SQLite file answers
//! no results; SQL text answers one result, as rqlite runs the whole text as one statement:
//! the counters its last statement left, or the error that stopped it (HTTP 200 either way:
//! check [`LoadAnswer::failure`]). A failing statement of a SQLite file is a 400 with an
//! [`ErrorAnswer`](crate::ErrorAnswer) instead.

use serde::{Deserialize, Serialize};

use crate::Lsn;
use crate::db::StatementResult;

/// The 200 answer of a load.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadAnswer {
    /// Batches applied (each one log record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches: Option<u64>,
    /// Bytes of the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// After a failure: the failing statement's position in the text, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_statement: Option<u64>,
    /// The last batch's log position, 0 before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<Lsn>,
    /// No result for a SQLite file; one for SQL text.
    #[serde(default)]
    pub results: Vec<StatementResult>,
    /// Statements applied, when the load ran to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statements: Option<u64>,
    /// After a failure: statements before the failing one's batch, which stay applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statements_applied: Option<u64>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<f64>,
}

impl LoadAnswer {
    /// What failed, in words, if a statement of SQL text failed (its batch was rolled back).
    pub fn failure(&self) -> Option<String> {
        let error = self.results.iter().find_map(|r| r.error.as_deref())?;
        Some(match (self.failed_statement, self.statements_applied) {
            (Some(n), applied) => format!(
                "statement {n} failed: {error}; its batch was rolled back, {} statements before it stay applied",
                applied.unwrap_or(0)
            ),
            (None, _) => error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told() {
        let ok: LoadAnswer =
            serde_json::from_str(r#"{"results":[{"last_insert_id":3}],"lsn":4}"#).unwrap();
        assert_eq!(ok.failure(), None);
        let failed: LoadAnswer = serde_json::from_str(
            r#"{"results":[{"error":"no such table: x"}],"failed_statement":7,"statements_applied":5}"#,
        )
        .unwrap();
        assert_eq!(
            failed.failure().as_deref(),
            Some(
                "statement 7 failed: no such table: x; its batch was rolled back, 5 statements before it stay applied"
            )
        );
    }
}
