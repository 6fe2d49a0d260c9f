//! Client statements run from the statement cache with the authorizer's stored verdict: the
//! verdict must follow every schema change, or a statement would run under rules made for
//! another schema.
//!
//! The probe: an `INSERT INTO t` whose verdict lists the tables it writes. A trigger added later
//! makes it also write `n`, whose primary key may hold NULL, which sessions cannot record; the
//! write path refuses such a row only if it knows the statement now writes `n`.

mod support;

use sql::statement::Value;
use sql::{Db, Statement, StatementResult, WriteRequest};
use support::commit;

const INSERT: &str = "INSERT INTO t (v) VALUES (?)";
const TRIGGER: &str =
    "CREATE TRIGGER copy AFTER INSERT ON t BEGIN INSERT INTO n (k, v) VALUES (NULL, new.v); END";
const NULL_KEY: &str = "NULL in the PRIMARY KEY of table n";

/// A request of `sql` with one positional parameter, or none.
fn request(sql: &str, param: Option<i64>) -> WriteRequest {
    support::request(sql, param.map(Value::Integer).into_iter().collect())
}

/// A database with tables `t` and `n`, where `INSERT` has run (and is cached) twice.
fn setup(dir: &std::path::Path) -> Db {
    let mut db = Db::open(&dir.join("db")).unwrap();
    commit(&mut db, 1, &[request("CREATE TABLE t (id INTEGER PRIMARY KEY, v)", None)]);
    commit(&mut db, 2, &[request("CREATE TABLE n (k TEXT PRIMARY KEY, v)", None)]);
    for (i, v) in [(3, 1), (4, 2)] {
        let results = commit(&mut db, i, &[request(INSERT, Some(v))]);
        assert!(
            matches!(results[0], StatementResult::Exec { rows_affected: 1, .. }),
            "{results:?}"
        );
    }
    db
}

/// The error message of a statement result; panics on success.
fn error_of(result: &StatementResult) -> &str {
    match result {
        StatementResult::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_trigger_applied_later_changes_what_a_cached_insert_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = setup(dir.path());
    let created = commit(&mut db, 5, &[request(TRIGGER, None)]);
    assert!(!created[0].is_error(), "{created:?}");
    let results = db.execute(&[request(INSERT, Some(3))]).unwrap().results.concat();
    assert!(error_of(&results[0]).contains(NULL_KEY), "{results:?}");
}

#[test]
fn a_trigger_created_earlier_in_the_same_group_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = setup(dir.path());
    let results = db
        .execute(&[request(INSERT, Some(3)), request(TRIGGER, None), request(INSERT, Some(4))])
        .unwrap()
        .results
        .concat();
    assert!(!results[0].is_error() && !results[1].is_error(), "{results:?}");
    assert!(error_of(&results[2]).contains(NULL_KEY), "{results:?}");
}

#[test]
fn a_trigger_that_was_never_committed_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = setup(dir.path());
    // Speculated, not applied: the schema goes back to the cookie it had before.
    let results =
        db.execute(&[request(TRIGGER, None), request(INSERT, Some(3))]).unwrap().results.concat();
    assert!(error_of(&results[1]).contains(NULL_KEY), "{results:?}");
    let results = db.execute(&[request(INSERT, Some(3))]).unwrap().results.concat();
    assert!(matches!(results[0], StatementResult::Exec { rows_affected: 1, .. }), "{results:?}");
}

#[test]
fn cached_reads_follow_schema_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = setup(dir.path());
    let readers = db.readers(1).unwrap();
    let select = [Statement::new("SELECT * FROM t ORDER BY id")];
    let columns = |results: &[StatementResult]| match &results[0] {
        StatementResult::Rows { columns, .. } => columns.clone(),
        other => panic!("{other:?}"),
    };
    for _ in 0..2 {
        assert_eq!(columns(&readers.query(&select, false).unwrap()), ["id", "v"]);
    }
    let altered = commit(&mut db, 5, &[request("ALTER TABLE t ADD COLUMN w", None)]);
    assert!(!altered[0].is_error(), "{altered:?}");
    assert_eq!(columns(&readers.query(&select, false).unwrap()), ["id", "v", "w"]);
    // A write sent to a read connection is refused every time, never remembered as a read.
    for _ in 0..2 {
        let results = readers.query(&[Statement::new("DELETE FROM t")], false).unwrap();
        assert!(error_of(&results[0]).contains("attempt to change database"), "{results:?}");
    }
}
