//! Stored answers of requests that carried a client request id: how a retry is recognised and
//! answered without running twice.
//!
//! A client may send a write with a request id (`request_id=…`). If the answer is lost (a
//! timeout, a dropped connection, a leader that died after committing), the client retries with
//! the same id, and must get the ORIGINAL answer, the same per-statement results and the same
//! `lsn`, without the write being applied again.
//!
//! ## Data flow
//!
//! ```text
//! Db::execute: for each request with an id:
//!   lookup(id) in _keel_requests ─ found ─▶ not run; answer the stored results, stored lsn
//!   same id earlier in the group ─────────▶ not run; answer that request's results
//!   otherwise ─ run ─▶ RequestAnswer { id, results: encode(results) } into the wal::Record
//! Db::apply, per entry, in the apply transaction:
//!   ops; store(entry index, record.requests); prune(entry index)
//! ```
//!
//! The answers live in the `_keel_requests` table of the replicated database, written in the
//! same transaction as the data they describe, so every replica has them at the same applied
//! position: a retry is recognised by whichever node leads when it arrives, after any number of
//! failovers, and a snapshot carries them along.
//!
//! `_keel_requests (id TEXT PRIMARY KEY, lsn INTEGER NOT NULL, results TEXT NOT NULL)` holds the
//! log index of the entry that carried the request and its results as JSON (the serde form of
//! [`StatementResult`], see [`encode`]). An index on `lsn` keeps pruning cheap. Clients cannot
//! read or write it, nor see it listed (the authorizer refuses every client action on `_keel_*`
//! tables and `mask` hides them from `sqlite_master`): one client's stored results are no
//! other client's business. Dumps and backups leave it out.
//!
//! ## Retention
//!
//! After applying entry `i`, `prune` deletes the answers of entries before `i - RETENTION`. The
//! table's content after each entry is thus a function of the log alone, identical on every
//! replica whatever batches it applied in (which matters for `ANALYZE`, whose statistics cover
//! Keel's tables too). A retry arriving more than [`RETENTION`] log entries after its original
//! is not recognised and runs again.
//!
//! ## What it does not do
//!
//! It does not compare a retry's statements with the original's: the id alone identifies the
//! request, as with any idempotency key, and the stored answer is returned even if the
//! statements differ. It does not expire answers by time, only by log position.

use rusqlite::{Connection, OptionalExtension as _, params};
use wal::{Lsn, RequestAnswer};

use crate::error::{Error, Result};
use crate::result::StatementResult;

/// How many log entries a request's answer is kept for: after applying entry `i`, answers of
/// entries with an index below `i - RETENTION` are deleted.
pub const RETENTION: u64 = 100_000;

/// The table of stored answers, created by `Db::open` (and after a restore) if missing.
pub(crate) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS _keel_requests (
    id TEXT PRIMARY KEY,
    lsn INTEGER NOT NULL,
    results TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS _keel_requests_lsn ON _keel_requests (lsn);";

/// Encodes one request's per-statement results as stored in a [`wal::RequestAnswer`] and in
/// `_keel_requests`: a JSON array of the serde form of [`StatementResult`].
pub fn encode(results: &[StatementResult]) -> Vec<u8> {
    // Serializing plain data (strings, integers, finite floats, JSON values) cannot fail.
    serde_json::to_vec(results).expect("statement results always serialize to JSON")
}

/// Decodes what [`encode`] produced.
pub fn decode(bytes: &[u8]) -> Result<Vec<StatementResult>> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Corrupt(format!("stored request answer is not valid: {e}")))
}

/// What a node knows of a request id at one applied position ([`crate::Readers::request_answer`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// The index of the entry that carried the request and its results, if stored here.
    pub answer: Option<(Lsn, Vec<StatementResult>)>,
    /// The applied log index the lookup saw (0 before the first apply).
    pub applied: Lsn,
}

impl Lookup {
    /// The oldest log index whose requests' answers are still kept at this applied position:
    /// a request carried by an entry at or after it is found if it was applied; one before it
    /// may have been pruned ([`RETENTION`]). 1 while nothing has been pruned.
    pub fn oldest_kept(&self) -> Lsn {
        self.applied.saturating_sub(RETENTION).max(1)
    }
}

/// The stored answer of request `id`, if its entry was applied here and not yet pruned: the
/// entry's index and the request's results.
pub(crate) fn lookup(conn: &Connection, id: &str) -> Result<Option<(Lsn, Vec<StatementResult>)>> {
    let row: Option<(i64, String)> = conn
        .prepare_cached("SELECT lsn, results FROM _keel_requests WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((lsn, results)) = row else {
        return Ok(None);
    };
    let lsn = Lsn::try_from(lsn)
        .map_err(|_| Error::Corrupt(format!("request {id:?} stored with log index {lsn}")))?;
    let results = decode(results.as_bytes()).map_err(|e| match e {
        Error::Corrupt(m) => Error::Corrupt(format!("request {id:?} at log index {lsn}: {m}")),
        e => e,
    })?;
    Ok(Some((lsn, results)))
}

/// Stores the answers carried by the entry at `index`. An id stored already keeps its first
/// answer: `Db::execute` never puts such an id in a record, and if one were committed anyway the
/// original answer is still the one a retry must get. Fails with [`Error::Corrupt`] if the
/// results are not UTF-8 (they are JSON written by [`encode`]).
pub(crate) fn store(conn: &Connection, index: Lsn, requests: &[RequestAnswer]) -> Result<()> {
    if requests.is_empty() {
        return Ok(());
    }
    let index = to_sql_int(index)?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO _keel_requests (id, lsn, results) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO NOTHING",
    )?;
    for request in requests {
        let results = std::str::from_utf8(&request.results).map_err(|e| {
            Error::Corrupt(format!("answer of request {:?} is not UTF-8: {e}", request.id))
        })?;
        if insert.execute(params![request.id, index, results])? == 0 {
            let id = &request.id;
            tracing::warn!(%id, index, "request id committed again; keeping its first answer");
        }
    }
    Ok(())
}

/// Deletes the answers that fall out of the retention window once the entry at `index` is
/// applied (see [`RETENTION`]).
pub(crate) fn prune(conn: &Connection, index: u64) -> Result<()> {
    let Some(oldest) = index.checked_sub(RETENTION).filter(|oldest| *oldest > 0) else {
        return Ok(());
    };
    conn.prepare_cached("DELETE FROM _keel_requests WHERE lsn < ?1")?
        .execute([to_sql_int(oldest)?])?;
    Ok(())
}

/// Converts a log index to SQLite's signed integer.
fn to_sql_int(index: Lsn) -> Result<i64> {
    i64::try_from(index).map_err(|_| Error::Corrupt(format!("log index {index} exceeds 2^63")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use test_case::test_case;

    use super::*;

    #[test_case(vec![] ; "no statements")]
    #[test_case(vec![StatementResult::Exec { last_insert_id: 7, rows_affected: 1, time: 0.000_123 }] ; "exec")]
    #[test_case(vec![StatementResult::Error("UNIQUE constraint failed: t.id".into())] ; "error")]
    #[test_case(vec![StatementResult::Rows {
        columns: vec!["id".into(), "r".into(), "b".into(), "s".into()],
        types: vec!["integer".into(), "real".into(), "blob".into(), "text".into()],
        values: vec![
            vec![json!(i64::MIN), json!(0.1), json!([0, 255]), json!("é\"✓")],
            vec![json!(i64::MAX), json!(1.0e-310), json!([]), json!(null)],
        ],
        time: 1.5,
    }] ; "rows")]
    fn round_trip(results: Vec<StatementResult>) {
        assert_eq!(decode(&encode(&results)).unwrap(), results);
    }

    /// REAL values come back with the same bits (they may be returned by `RETURNING`).
    #[test]
    fn reals_round_trip_exactly() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            // A fixed xorshift sequence: reproducible, and covers every exponent.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let real = f64::from_bits(x);
            if !real.is_finite() {
                continue;
            }
            let results =
                vec![StatementResult::Exec { last_insert_id: 0, rows_affected: 0, time: real }];
            let back = decode(&encode(&results)).unwrap();
            match &back[0] {
                StatementResult::Exec { time, .. } => assert_eq!(time.to_bits(), x, "{real:e}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_stored_form_is_plain_json() {
        let results = vec![
            StatementResult::Exec { last_insert_id: 1, rows_affected: 1, time: 0.5 },
            StatementResult::Error("no such table: x".into()),
        ];
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&encode(&results)).unwrap(),
            json!([
                {"exec": {"last_insert_id": 1, "rows_affected": 1, "time": 0.5}},
                {"error": "no such table: x"},
            ])
        );
    }

    #[test_case(b"" ; "empty")]
    #[test_case(b"{}" ; "not an array")]
    #[test_case(b"[{\"exec\": {}}]" ; "missing fields")]
    #[test_case(b"[{\"nope\": 1}]" ; "unknown kind")]
    fn garbage_is_corrupt(bytes: &[u8]) {
        assert!(matches!(decode(bytes), Err(Error::Corrupt(_))));
    }
}
