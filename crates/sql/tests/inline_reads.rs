//! `Readers::try_query_applied`: a read runs on the caller's thread only while it is cheap, and
//! says so when it is not, without a partial answer.

use std::time::{Duration, Instant};

mod support;

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

/// A read that counts to a hundred million: seconds of work.
const SLOW: &str = "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s \
                    WHERE x < 100000000) SELECT count(*) FROM s";

#[test]
fn a_cheap_read_runs_inline_with_the_applied_index() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, readers) = setup(dir.path(), 2);
    let statements = [Statement::new("SELECT count(*) FROM t")];
    let (results, applied) = readers
        .try_query_applied(&statements, false, None, Duration::from_millis(50))
        .expect("a point read fits the budget")
        .unwrap();
    assert_eq!(applied, 2);
    assert!(
        matches!(&results[0], StatementResult::Rows { values, .. } if values[0][0] == 3),
        "{results:?}"
    );
}

#[test]
fn a_read_past_the_budget_is_given_back_and_runs_whole_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, readers) = setup(dir.path(), 1);
    let statements = [Statement::new(SLOW)];
    let start = Instant::now();
    let inline = readers.try_query_applied(&statements, false, None, Duration::from_millis(5));
    assert!(inline.is_none(), "{inline:?}");
    assert!(start.elapsed() < Duration::from_secs(2), "gave up after {:?}", start.elapsed());
    // The connection went back to the pool: the same read runs to the end the blocking way.
    let limited = readers
        .query_applied(&[Statement::new(SLOW.replace("100000000", "100000"))], false, None)
        .unwrap();
    assert!(
        matches!(&limited.0[0], StatementResult::Rows { values, .. } if values[0][0] == 100000),
        "{limited:?}"
    );
}

#[test]
fn the_statements_own_time_limit_is_an_answer_not_a_give_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, readers) = setup(dir.path(), 1);
    // db_timeout 5 ms is below the budget: its interruption is the read's answer.
    let outcome = readers
        .try_query_applied(
            &[Statement::new(SLOW)],
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
    let two = [Statement::new("SELECT 1"), Statement::new("SELECT 2")];
    assert!(readers.try_query_applied(&two, false, None, Duration::from_secs(1)).is_none());
    // Hold the only connection with a slow read on another thread.
    std::thread::scope(|scope| {
        let busy = scope.spawn(|| {
            readers
                .query_applied(&[Statement::new(SLOW)], false, Some(Duration::from_millis(1500)))
                .unwrap()
        });
        let one = [Statement::new("SELECT 1")];
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
