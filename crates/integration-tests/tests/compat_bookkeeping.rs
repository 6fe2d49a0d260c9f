//! Keel's bookkeeping (`_keel_meta`, `_keel_requests`) is invisible to clients, as rqlite's is.
//!
//! rqlite keeps its Raft log, term and applied index outside the SQLite file (BoltDB `raft.db`,
//! `store/store.go`: `raftDBPath = "raft.db"`), so its SQLite file holds the user's objects
//! only: `sqlite_master` of a fresh node is empty, and a client that lists the schema can drop
//! everything it listed. Keel keeps its bookkeeping inside the database (atomic with the data),
//! and hides it: listings leave it out, and every client access to it is refused.
//!
//! One 3-node cluster runs the whole scenario in order, because each step builds on the
//! previous one and a cluster start dominates the cost.

use integration_tests::{Level, TestCluster};
use serde_json::{Value, json};

/// The `name` column (second) of every row of `sql` read from node `id` at `level=none`.
fn names(c: &TestCluster, id: u64, sql: &str) -> Vec<String> {
    c.rows(id, sql).iter().map(|row| row[1].as_str().unwrap_or_default().to_string()).collect()
}

/// Asserts that reading `sql` on node `id` (`level=none`) is refused with an error naming
/// `table`, and returns no row.
fn assert_refused(c: &TestCluster, id: u64, sql: &str, table: &str) {
    let response = c.query(id, sql, Level::None);
    let error = response
        .error(0)
        .unwrap_or_else(|| panic!("node {id}: {sql} was not refused: {response:?}"));
    assert!(error.contains(table), "node {id}: {sql}: {error}");
    assert!(response.result(0).values.is_none(), "node {id}: {sql}: {response:?}");
}

/// Whether any listed name is one of Keel's.
fn any_keel(names: &[String]) -> bool {
    names.iter().any(|name| name.to_ascii_lowercase().starts_with("_keel_"))
}

/// Mirrors rqlite's fresh node: `SELECT * FROM sqlite_master` has no rows (rqlite's SQLite file
/// has no objects of its own, `store/store.go` keeps Raft state in `raft.db`), on the leader and
/// on a follower. Then a client creates tables, an index, a view and a trigger, lists them
/// through `sqlite_master`, `sqlite_schema` and `PRAGMA table_list`, sees only its own objects,
/// and drops every one it listed, which succeeds (on rqlite any listed object can be dropped,
/// `db/db.go` runs the client's DROP on a database holding only its objects). Keel's tables stay
/// unreadable, directly, through pragmas and through a view, while a request-id retry is still
/// answered from them and the data replicates.
#[test]
fn clients_see_and_drop_only_their_own_objects() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let follower = c.followers(leader)[0];

    // A fresh cluster lists nothing (PRAGMA table_list lists SQLite's own schema tables only).
    for id in [leader, follower] {
        assert_eq!(
            c.rows(id, "SELECT * FROM sqlite_master"),
            Vec::<Vec<Value>>::new(),
            "node {id}"
        );
        assert_eq!(
            c.rows(id, "SELECT * FROM sqlite_schema"),
            Vec::<Vec<Value>>::new(),
            "node {id}"
        );
        let mut tables = names(&c, id, "PRAGMA table_list");
        tables.sort();
        assert_eq!(tables, ["sqlite_schema", "sqlite_temp_schema"], "node {id}");
    }

    // A client's schema, written with a request id.
    let schema = json!([
        "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE)",
        "CREATE TABLE log (item INTEGER, at TEXT)",
        "CREATE INDEX log_item ON log (item)",
        "CREATE VIEW named AS SELECT name FROM items",
        "CREATE TRIGGER audit AFTER INSERT ON items BEGIN INSERT INTO log VALUES (new.id, 'now'); END",
        "INSERT INTO items (name) VALUES ('a')"
    ]);
    let first = c.execute_with(leader, "request_id=schema-1", schema.clone());
    first.assert_ok();
    c.wait_all_applied(first.lsn());

    // Listings show the client's objects and SQLite's, never Keel's, however they are spelled.
    let expected = [
        "audit",
        "items",
        "log",
        "log_item",
        "named",
        "sqlite_autoindex_items_1",
        "sqlite_sequence",
    ];
    for id in [leader, follower] {
        for sql in [
            "SELECT * FROM sqlite_master ORDER BY name",
            "SELECT * FROM main.SQLITE_SCHEMA ORDER BY name",
            "SELECT * FROM \"sqlite_master\" WHERE name <> 'sqlite_master' ORDER BY name",
        ] {
            assert_eq!(names(&c, id, sql), expected, "node {id}: {sql}");
        }
        let listed = names(&c, id, "PRAGMA table_list");
        assert!(!any_keel(&listed), "node {id}: PRAGMA table_list: {listed:?}");
        assert!(listed.contains(&"items".to_string()), "node {id}: {listed:?}");
        let counted = c.rows(id, "SELECT count(*) FROM pragma_table_list WHERE name LIKE '%keel%'");
        assert_eq!(counted, vec![vec![json!(0)]], "node {id}");
    }

    // Keel's tables cannot be read: directly, by pragma, or through a view.
    for id in [leader, follower] {
        assert_refused(&c, id, "SELECT * FROM _keel_requests", "_keel_requests");
        assert_refused(&c, id, "SELECT idx FROM _keel_meta", "_keel_meta");
        assert_refused(&c, id, "PRAGMA table_info(_keel_requests)", "_keel_requests");
        assert_refused(
            &c,
            id,
            "SELECT * FROM pragma_index_list('_keel_requests')",
            "_keel_requests",
        );
    }
    let view = c.execute(leader, json!(["CREATE VIEW answers AS SELECT * FROM _keel_requests"]));
    assert!(
        view.error(0).is_some_and(|e| e.contains("_keel_requests")),
        "a view over Keel's table was created: {view:?}"
    );
    let view = c.execute(leader, json!(["CREATE VIEW everything AS SELECT * FROM sqlite_master"]));
    assert!(view.error(0).is_some(), "a view over the unfiltered schema was created: {view:?}");
    let mixed =
        c.request(leader, json!(["SELECT * FROM _keel_requests", "SELECT count(*) FROM items"]));
    assert!(mixed.error(0).is_some_and(|e| e.contains("_keel_requests")), "{mixed:?}");
    assert_eq!(mixed.rows(1), vec![vec![json!(1)]]);

    // The hidden table still answers retries: the same results and lsn, nothing run twice.
    let retry = c.execute_with(leader, "request_id=schema-1", schema);
    assert_eq!(retry.lsn(), first.lsn(), "retry lsn");
    assert_eq!(retry.results(), first.results(), "retry results");

    // The client drops every object it listed (as sqlite3's tools do, SQLite's own objects are
    // not theirs to drop), and every DROP succeeds.
    let listed: Vec<Vec<Value>> = c.rows(
        follower,
        "SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    );
    let drops: Vec<Value> = listed
        .iter()
        .map(|row| {
            let (kind, name) = (row[0].as_str().unwrap(), row[1].as_str().unwrap());
            json!(format!("DROP {} IF EXISTS \"{name}\"", kind.to_ascii_uppercase()))
        })
        .collect();
    assert_eq!(drops.len(), 5, "{listed:?}");
    let dropped = c.execute(leader, Value::Array(drops));
    dropped.assert_ok();
    c.wait_all_applied(dropped.lsn());
    for id in [leader, follower] {
        assert_eq!(names(&c, id, "SELECT * FROM sqlite_master"), ["sqlite_sequence"], "node {id}");
    }

    // Writes still replicate and Keel still records its position: a new table reaches every node.
    let lsn =
        c.execute_ok(leader, json!(["CREATE TABLE after (x)", "INSERT INTO after VALUES (1)"]));
    c.wait_all_applied(lsn);
    for id in c.ids() {
        assert_eq!(c.rows(id, "SELECT x FROM after"), vec![vec![json!(1)]], "node {id}");
    }
    let listed = c.rows(follower, "SELECT count(*) FROM sqlite_master WHERE name = 'after'");
    assert_eq!(listed, vec![vec![json!(1)]]);
    c.assert_consistent();
}
