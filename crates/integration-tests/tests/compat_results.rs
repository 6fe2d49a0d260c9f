//! rqlite compatibility of write results, of `/db/load`'s answer, and of foreign keys (`--fk`).
//!
//! Each test names the rqlite source it mirrors (rqlite/rqlite at the commit cited in
//! `reference/rqlite-api.md`). Results are compared as whole JSON values where rqlite's shape is
//! fixed, so a missing or extra field fails the test.

use integration_tests::{Level, NodeId, TestCluster};
use serde_json::{Value, json};

/// The `results` of `POST path` on node `id`, as the JSON the node sent. The shape is the point
/// here, so the answer is not read into `keel_api`'s types, which would drop a field rqlite
/// does not have.
fn results(c: &TestCluster, id: NodeId, path: &str, body: Value) -> Vec<Value> {
    let reply = c.post(id, path, body.to_string());
    assert_eq!(reply.status, 200, "node {id} {path}: {}", reply.body);
    let answer = reply.json();
    answer["results"].as_array().cloned().unwrap_or_else(|| panic!("no results: {answer}"))
}

/// `execute` results are the connection's `sqlite3_last_insert_rowid()` and `sqlite3_changes()`
/// after each statement, whatever the statement, and zero values are left out.
///
/// rqlite: `db/db.go`, `executeStmtWithConn` reads `LastInsertId()` and `RowsAffected()` of the
/// go-sqlite3 result, which are those two connection values after the statement
/// (`_sqlite3_step_row_internal` in rqlite/go-sqlite3 `sqlite3.go`), for DDL too;
/// `command/encoding/json.go`, `Result`: both fields `omitempty`. So a CREATE TABLE on a fresh
/// connection answers `{}`, and a DROP TABLE after 100 inserts answers the last insert's values,
/// also inside `?transaction` (`executeWithConn` runs the same per statement in a transaction)
/// and for the execute results of `/db/request`.
#[test]
fn execute_results_are_what_sqlite_reports() {
    let c = TestCluster::start(1, 0);
    let node = c.leader();

    let created = results(
        &c,
        node,
        "/db/execute",
        json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]),
    );
    assert_eq!(created, [json!({})], "CREATE TABLE on a fresh connection: {created:?}");
    let timed = results(
        &c,
        node,
        "/db/execute?timings",
        json!(["CREATE TABLE e (id INTEGER PRIMARY KEY)"]),
    );
    let keys: Vec<&String> = timed[0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["time"], "zero values are left out, time stays: {timed:?}");

    let inserts: Vec<Value> =
        (0..100).map(|i| json!(["INSERT INTO t(v) VALUES(?)", format!("row {i}")])).collect();
    let inserted = results(&c, node, "/db/execute", Value::Array(inserts));
    assert!(inserted.iter().all(|r| r.get("error").is_none()), "{inserted:?}");
    assert_eq!(inserted[99], json!({"last_insert_id": 100, "rows_affected": 1}));

    // A later request, as rqlite's one write connection carries the values over.
    let dropped = results(&c, node, "/db/execute", json!(["DROP TABLE e"]));
    assert_eq!(
        dropped,
        [json!({"last_insert_id": 100, "rows_affected": 1})],
        "DROP TABLE after 100 inserts: {dropped:?}"
    );

    // Inside ?transaction: the same rule per statement.
    let tx = results(
        &c,
        node,
        "/db/execute?transaction",
        json!([
            "UPDATE t SET v = 'x' WHERE id <= 3",
            "CREATE INDEX t_v ON t(v)",
            "INSERT INTO t(v) VALUES('a'), ('b')",
            "SELECT count(*) FROM t",
            "DROP INDEX t_v",
        ]),
    );
    assert_eq!(
        tx,
        [
            json!({"last_insert_id": 100, "rows_affected": 3}),
            json!({"last_insert_id": 100, "rows_affected": 3}),
            json!({"last_insert_id": 102, "rows_affected": 2}),
            json!({"last_insert_id": 102, "rows_affected": 2}),
            json!({"last_insert_id": 102, "rows_affected": 2}),
        ],
        "?transaction: {tx:?}"
    );

    // /db/request: execute results follow the same rule; reads give rows.
    let mixed = results(
        &c,
        node,
        "/db/request",
        json!([
            "DELETE FROM t WHERE id > 100",
            "CREATE TABLE u (id INTEGER PRIMARY KEY)",
            "SELECT count(*) FROM t"
        ]),
    );
    assert_eq!(mixed[0], json!({"last_insert_id": 102, "rows_affected": 2}), "{mixed:?}");
    assert_eq!(mixed[1], json!({"last_insert_id": 102, "rows_affected": 2}), "{mixed:?}");
    assert!(mixed[2].get("error").is_none(), "{mixed:?}");
    assert_eq!(mixed[2]["values"], json!([[100]]), "{mixed:?}");
}

/// `/db/load` with SQL text answers like `/db/execute` with one result: the values the text's
/// last statement left, or the error that stopped it, with 200 either way; a SQLite file
/// answers `{"results": []}`.
///
/// rqlite: `http/service.go`, `handleLoad`: a body that is not a SQLite file is sent as ONE
/// statement (`executeRequestFromStrings([]string{string(b)}, qp.Timings(), false)` with
/// `RollbackOnError`), so `results` has one element (go-sqlite3's `exec` returns the last
/// statement's result, or the first error), with a per-result `time` under `?timings`; a SQLite
/// file goes to `proxy.Load` and the answer is `NewResponse()`, `{"results": []}`. Keel's own
/// counters (`statements`, `batches`, `bytes`, `lsn`, `time`; after a failure
/// `statements_applied` and `failed_statement`) are additions.
#[test]
fn load_answers_in_rqlites_shape() {
    let c = TestCluster::start(1, 0);
    let node = c.leader();

    let text = "CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT);\n\
                INSERT INTO a VALUES (1, 'x');\n\
                INSERT INTO a VALUES (2, 'y'), (3, 'z');\n\
                CREATE INDEX a_v ON a(v);\n";
    let loaded = c.post_raw(node, "/db/load", "text/plain", text);
    assert_eq!(loaded.status, 200, "SQL text load: {}", loaded.text());
    let answer: Value = serde_json::from_slice(&loaded.body).unwrap();
    assert_eq!(
        answer["results"],
        json!([{"last_insert_id": 3, "rows_affected": 2}]),
        "one result, the last statement's values: {answer}"
    );
    assert_eq!(answer["statements"], json!(4), "{answer}");
    assert!(answer["lsn"].as_u64().is_some_and(|lsn| lsn > 0), "{answer}");
    assert_eq!(c.rows(node, "SELECT count(*) FROM a"), vec![vec![json!(3)]]);

    let timed =
        c.post_raw(node, "/db/load?timings", "text/plain", "INSERT INTO a VALUES (4, 'w');");
    assert_eq!(timed.status, 200, "{}", timed.text());
    let timed: Value = serde_json::from_slice(&timed.body).unwrap();
    let result = &timed["results"][0];
    assert_eq!(
        (result["last_insert_id"].clone(), result["rows_affected"].clone()),
        (json!(4), json!(1))
    );
    assert!(result["time"].is_f64(), "?timings gives the result a time: {timed}");

    // A failing statement: 200, its error as the one result, its batch rolled back.
    let failing = "CREATE TABLE b (id INTEGER PRIMARY KEY);\n\
                   INSERT INTO b VALUES (1);\n\
                   INSERT INTO nowhere VALUES (1);\n\
                   INSERT INTO b VALUES (2);\n";
    let failed = c.post_raw(node, "/db/load", "text/plain", failing);
    assert_eq!(failed.status, 200, "a failing SQL text load: {}", failed.text());
    let failed: Value = serde_json::from_slice(&failed.body).unwrap();
    assert_eq!(failed["results"], json!([{"error": "no such table: nowhere"}]), "{failed}");
    assert_eq!(
        (failed["failed_statement"].clone(), failed["statements_applied"].clone()),
        (json!(3), json!(0))
    );
    assert!(failed.get("error").is_none(), "no request-level error for a SQL error: {failed}");
    let missing = c.query(node, "SELECT count(*) FROM b", Level::None);
    assert!(missing.error(0).is_some_and(|e| e.contains("no such table")), "{missing:?}");

    // A SQLite file (this node's own backup): `{"results": []}` plus Keel's counters.
    let file = c.get_raw(node, "/db/backup");
    assert_eq!(file.status, 200, "GET /db/backup");
    let loaded = c.post_raw(node, "/db/load", "application/octet-stream", file.body);
    assert_eq!(loaded.status, 200, "SQLite file load: {}", loaded.text());
    let answer: Value = serde_json::from_slice(&loaded.body).unwrap();
    assert_eq!(answer["results"], json!([]), "{answer}");
    assert!(answer["statements"].as_u64().is_some_and(|n| n > 0), "{answer}");
    assert_eq!(c.rows(node, "SELECT id, v FROM a ORDER BY id").len(), 4);
}

/// Foreign keys are off unless the node runs with `--fk`: a row referencing a missing parent
/// is accepted, and `PRAGMA foreign_keys` reads 0.
///
/// rqlite: `cmd/rqlited/flags.go`, `-fk` ("Enable SQLite foreign key constraints", default
/// false), passed to `db.Open(path, fkEnabled, …)` (`db/db.go`), which adds `_fk=true` to both
/// connections' DSNs only when set. Keel refuses `PRAGMA foreign_keys = …` from clients (rqlite
/// runs it on its write connection): the setting is the node's.
#[test]
fn foreign_keys_are_off_by_default() {
    let c = TestCluster::start(1, 0);
    let node = c.leader();
    c.execute_ok(
        node,
        json!([
            "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE child (id INTEGER PRIMARY KEY, pid INT REFERENCES parent(id) ON DELETE CASCADE)",
            "INSERT INTO parent VALUES (1)",
            "INSERT INTO child VALUES (10, 1)",
            "INSERT INTO child VALUES (11, 99)",
            "DELETE FROM parent WHERE id = 1",
        ]),
    );
    assert_eq!(
        c.rows(node, "SELECT id, pid FROM child ORDER BY id"),
        vec![vec![json!(10), json!(1)], vec![json!(11), json!(99)]],
        "no constraint and no cascade without --fk"
    );
    assert_eq!(c.rows(node, "PRAGMA foreign_keys"), vec![vec![json!(0)]]);
    let switch = c.execute(node, json!(["PRAGMA foreign_keys = ON"]));
    assert!(switch.error(0).is_some_and(|e| e.contains("--fk")), "{switch:?}");
}

/// With `--fk`, a row referencing a missing parent is refused with SQLite's message, and
/// ON DELETE CASCADE runs on the leader and reaches every node as rows.
///
/// rqlite: `-fk` (`cmd/rqlited/flags.go`) turns on `_fk=true` (`db/db.go`, `MakeDSN`), so SQLite
/// answers `FOREIGN KEY constraint failed` as a per-statement error (`executeStmtWithConn`).
#[test]
fn foreign_keys_with_fk_are_enforced_and_cascades_replicate() {
    let c = TestCluster::start_with(3, 0, &["--fk"]);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE child (id INTEGER PRIMARY KEY, pid INT REFERENCES parent(id) ON DELETE CASCADE)",
            "CREATE TABLE other (id INTEGER PRIMARY KEY, pid INT REFERENCES parent(id) ON DELETE SET NULL)",
            "INSERT INTO parent VALUES (1), (2)",
            "INSERT INTO child VALUES (10, 1), (11, 1), (20, 2)",
            "INSERT INTO other VALUES (30, 1)",
        ]),
    );
    let orphan = results(&c, follower, "/db/execute", json!(["INSERT INTO child VALUES (12, 99)"]));
    assert_eq!(orphan, [json!({"error": "FOREIGN KEY constraint failed"})]);
    let deleted = c.execute(follower, json!(["DELETE FROM parent WHERE id = 1"]));
    assert_eq!(deleted.rows_affected(0), 1, "cascaded rows do not count: {deleted:?}");
    c.assert_consistent();
    for id in c.ids() {
        assert_eq!(
            c.rows(id, "SELECT id, pid FROM child ORDER BY id"),
            vec![vec![json!(20), json!(2)]],
            "node {id}"
        );
        assert_eq!(c.rows(id, "SELECT id, pid FROM other"), vec![vec![json!(30), Value::Null]]);
        assert_eq!(c.rows(id, "PRAGMA foreign_keys"), vec![vec![json!(1)]], "node {id}");
    }
}
