//! What one flush attempt came to for each queued request: a final [`Outcome`], or "try again".
//! Pure: it reads the write path's answers and decides.
//!
//! The line between final and transient follows what the caller can do about it. A statement's
//! own SQL error, or a request the leader refuses as invalid, will fail again on every retry:
//! final. Everything else (no leader, leadership changed, no quorum, an outcome the leader
//! could not tell, a forward that failed) may succeed later: transient, as rqlite's `runQueue`
//! treats every error it gets. Retrying is safe because every flushed request carries a
//! request id: a retry of a write that did commit is answered from the stored answer instead of
//! running twice (see `sql::answers`).

use super::ledger::{Outcome, Seq};

/// The result of one attempt at flushing one queued request (the wire type: `/keel/queue`
/// answers one per request).
pub use keel_api::queue::Verdict;

/// A request's outcome from its statements' results, once its record is committed at `lsn`.
/// The first failed statement fails the request; without `transaction` the statements that
/// did succeed still took effect (each stands alone, as in rqlite), so the outcome keeps `lsn`.
pub fn of_results(results: &[sql::StatementResult], transaction: bool, lsn: wal::Lsn) -> Outcome {
    let failed = results.iter().enumerate().find_map(|(i, r)| match r {
        sql::StatementResult::Error(message) => Some((i, message)),
        _ => None,
    });
    match failed {
        None => Outcome::Committed { lsn },
        Some((i, message)) => {
            let some_succeeded =
                results.iter().any(|r| !matches!(r, sql::StatementResult::Error(_)));
            let lsn = (!transaction && some_succeeded).then_some(lsn);
            crate::queue::ledger::failed(message, Some(i), lsn)
        }
    }
}

/// The verdict for one request from the write path's answer to it.
pub fn of_write(answer: leader::Result<leader::Outcome>, transaction: bool) -> Verdict {
    match answer {
        Ok(outcome) => Verdict::Done(of_results(&outcome.results, transaction, outcome.lsn)),
        // Committed; only a wait for more replicas timed out (queued writes ask for semi-sync,
        // so this does not happen, but the write is committed either way).
        Err(leader::Error::NotReplicated { lsn, .. }) => Verdict::Done(Outcome::Committed { lsn }),
        Err(leader::Error::InvalidInput(message)) => {
            Verdict::Done(crate::queue::ledger::failed(&message, None, None))
        }
        Err(e) => Verdict::Retry(e.to_string()),
    }
}

/// With `--write-queue-tx` a batch runs as one transaction of all its requests' statements
/// (`counts[i]` statements of the request numbered `seqs[i]`, in order). This splits the one
/// answer back: all committed, or all failed, the one whose statement failed with SQLite's
/// message and the others saying which request took them down.
pub fn split_transaction(
    answer: leader::Result<leader::Outcome>,
    counts: &[usize],
    seqs: &[Seq],
) -> Vec<Verdict> {
    assert_eq!(counts.len(), seqs.len(), "one statement count per request");
    let outcome = match answer {
        Ok(outcome) => outcome,
        Err(e) => {
            let verdict = of_write(Err(e), true);
            return vec![verdict; counts.len()];
        }
    };
    let failed = outcome.results.iter().enumerate().find_map(|(i, r)| match r {
        sql::StatementResult::Error(message) => Some((i, message.as_str())),
        _ => None,
    });
    let Some((at, message)) = failed else {
        return vec![Verdict::Done(Outcome::Committed { lsn: outcome.lsn }); counts.len()];
    };
    // The request holding statement `at` of the whole batch, and the statement's index in it.
    let mut start = 0;
    let mut culprit = (counts.len(), 0);
    for (r, &count) in counts.iter().enumerate() {
        if at < start + count {
            culprit = (r, at - start);
            break;
        }
        start += count;
    }
    let (culprit, statement) = culprit;
    let culprit_seq = seqs.get(culprit).copied().unwrap_or_default();
    (0..counts.len())
        .map(|r| {
            Verdict::Done(if r == culprit {
                crate::queue::ledger::failed(message, Some(statement), None)
            } else {
                crate::queue::ledger::failed(
                    &format!(
                        "rolled back with its batch (--write-queue-tx): queued write {culprit_seq} failed: {message}"
                    ),
                    None,
                    None,
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sql::StatementResult;

    fn ok() -> StatementResult {
        StatementResult::Exec { last_insert_id: 1, rows_affected: 1, time: 0.0 }
    }

    fn err(m: &str) -> StatementResult {
        StatementResult::Error(m.to_string())
    }

    #[test]
    fn results_to_outcomes() {
        assert_eq!(of_results(&[ok(), ok()], false, 7), Outcome::Committed { lsn: 7 });
        assert_eq!(
            of_results(&[ok(), err("boom"), ok()], false, 7),
            crate::queue::ledger::failed("boom", Some(1), Some(7)),
            "without a transaction the others took effect"
        );
        assert_eq!(
            of_results(&[ok(), err("boom")], true, 7),
            crate::queue::ledger::failed("boom", Some(1), None),
            "a failed transaction took no effect"
        );
        assert_eq!(
            of_results(&[err("boom")], false, 7),
            crate::queue::ledger::failed("boom", Some(0), None)
        );
    }

    #[test]
    fn transient_errors_are_retried_and_refusals_are_final() {
        let retry = of_write(Err(leader::Error::NotLeader { leader: None }), false);
        assert!(matches!(retry, Verdict::Retry(_)));
        let unknown = of_write(Err(leader::Error::Unknown("timed out".into())), false);
        assert!(matches!(unknown, Verdict::Retry(_)));
        let refused = of_write(Err(leader::Error::InvalidInput("too big".into())), false);
        assert_eq!(refused, Verdict::Done(crate::queue::ledger::failed("too big", None, None)));
    }

    #[test]
    fn a_failed_batch_transaction_fails_every_request() {
        let answer = Ok(leader::Outcome { results: vec![ok(), ok(), err("boom")], lsn: 3 });
        let verdicts = split_transaction(answer, &[1, 2, 1], &[10, 11, 12]);
        assert_eq!(verdicts[1], Verdict::Done(crate::queue::ledger::failed("boom", Some(1), None)));
        for other in [&verdicts[0], &verdicts[2]] {
            let Verdict::Done(Outcome::Failed { error, .. }) = other else { panic!("{other:?}") };
            assert!(error.contains("queued write 11 failed: boom"), "{error}");
        }
        let answer = Ok(leader::Outcome { results: vec![ok(), ok()], lsn: 4 });
        let all = split_transaction(answer, &[1, 1], &[1, 2]);
        assert_eq!(all, vec![Verdict::Done(Outcome::Committed { lsn: 4 }); 2]);
    }
}
