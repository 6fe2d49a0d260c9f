//! `Readers::try_query_applied`: a read runs on the caller's thread only while it is cheap, and
//! says so when it is not, without a partial answer.

use std::time::{Duration, Instant};

mod support;

use sql::statement::{Params, Value};
use sql::{Db, Readers, Statement, StatementResult};

/// A database with a table `t` of 3 rows, applied at index 2, and a pool of `size` readers.
fn setup(dir: &std::path::Path, size: usize) -> (Db, Readers) {
    let mut db = Db::open(&dir.join("db")).unwrap();
    for (index, sql) in [
        (1, "CREATE TABLE t (id INTEGER PRIMARY KEY, v)"),
        (2, "INSERT INTO t (v) VALUES (1), (2), (3)"),
    ] {
        let results = support::commit(&mut db, index, &[support::request(sql, vec![])]);
        assert!(!results[0].is_error(), "{results:?}");
    }
    let readers = db.readers(size).unwrap();
    (db, readers)
}

/// A read that counts to `?1`: a hundred million is seconds of work, ten is nothing.
const COUNT: &str = "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s \
                     WHERE x < ?1) SELECT count(*) FROM s";

/// [`COUNT`] to `n`.
fn count_to(n: i64) -> [Statement; 1] {
    [Statement { sql: COUNT.to_string(), params: Params::Positional(vec![Value::Integer(n)]) }]
}

/// The single integer a one-row, one-column result holds.
fn single(results: &[StatementResult]) -> i64 {
    match &results[0] {
        StatementResult::Rows { values, .. } => values[0][0].as_i64().unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_read_that_ran_cheaply_before_runs_inline_with_the_applied_index() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, readers) = setup(dir.path(), 1);
    let statements = [Statement::new("SELECT count(*) FROM t")];
    let budget = Duration::from_millis(50);
    // Never run on this connection: its cost is unknown, so not inline.
    assert!(readers.try_query_applied(&statements, false, None, budget).is_none());
    let (results, applied) = readers.query_applied(&statements, false, None).unwrap();
    assert_eq!((single(&results), applied), (3, 2));
    let (results, applied) = readers
        .try_query_applied(&statements, false, None, budget)
        .expect("a read that ran cheaply before runs inline")
        .unwrap();
    assert_eq!((single(&results), applied), (3, 2));
}

#[test]
fn a_read_past_the_budget_is_given_back_and_runs_whole_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, readers) = setup(dir.path(), 1);
    let budget = Duration::from_millis(200);
    assert_eq!(single(&readers.query_applied(&count_to(10), false, None).unwrap().0), 10);
    // The same text, now with seconds of work: interrupted at the budget, nothing answered.
    let start = Instant::now();
    let inline = readers.try_query_applied(&count_to(100_000_000), false, None, budget);
    assert!(inline.is_none(), "{inline:?}");
    let took = start.elapsed();
    assert!(took >= budget && took < Duration::from_secs(2), "gave up after {took:?}");
    // It is known to be slow now: not even tried inline.
    let start = Instant::now();
    assert!(readers.try_query_applied(&count_to(100_000_000), false, None, budget).is_none());
    assert!(start.elapsed() < budget / 2, "tried again: {:?}", start.elapsed());
    // The connection went back to the pool: the read runs to the end the blocking way.
    assert_eq!(single(&readers.query_applied(&count_to(100_000), false, None).unwrap().0), 100_000);
}

#[test]
fn the_statements_own_time_limit_is_an_answer_not_a_give_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, readers) = setup(dir.path(), 1);
    readers.query_applied(&count_to(10), false, None).unwrap();
    // db_timeout 5 ms is below the budget: its interruption is the read's answer.
    let outcome = readers
        .try_query_applied(
            &count_to(100_000_000),
            false,
            Some(Duration::from_millis(5)),
            Duration::from_millis(50),
        )
        .expect("answered inline")
        .unwrap();
    assert!(
        matches!(&outcome.0[0], StatementResult::Error(e) if e.contains("time limit")),
        "{outcome:?}"
    );
}

#[test]
fn no_free_connection_or_several_statements_means_no_inline_read() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, readers) = setup(dir.path(), 1);
    let one = [Statement::new("SELECT 1")];
    readers.query_applied(&one, false, None).unwrap();
    let two = [Statement::new("SELECT 1"), Statement::new("SELECT 2")];
    assert!(readers.try_query_applied(&two, false, None, Duration::from_secs(1)).is_none());
    assert!(readers.try_query_applied(&one, false, None, Duration::from_secs(1)).is_some());
    // Hold the only connection with a slow read on another thread.
    std::thread::scope(|scope| {
        let busy = scope.spawn(|| {
            readers
                .query_applied(&count_to(100_000_000), false, Some(Duration::from_millis(1500)))
                .unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut refused = false;
        while Instant::now() < deadline && !busy.is_finished() {
            if readers.try_query_applied(&one, false, None, Duration::from_secs(1)).is_none() {
                refused = true;
                break;
            }
        }
        assert!(refused, "an inline read took the connection a slow read holds");
        busy.join().unwrap();
    });
}
