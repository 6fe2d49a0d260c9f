//! Bad input is the client's problem, never the cluster's: malformed requests get a 400,
//! statements that would break replication are refused with a clear error, and afterwards the
//! cluster still takes writes and every node holds the same data.

use integration_tests::{Level, NodeId, TestCluster};
use serde_json::json;

/// Asserts that `statement`, sent alone to `/db/execute` on `node`, is refused: either the request
/// is rejected (400) or the statement carries an error.
fn assert_refused(c: &TestCluster, node: NodeId, statement: serde_json::Value) {
    let reply = c.post(node, "/db/execute", json!([statement]).to_string());
    match reply.status {
        400 => assert!(!reply.body.trim().is_empty(), "a 400 for {statement} says why"),
        200 => {
            let response = reply.answer();
            let error = response
                .error(0)
                .unwrap_or_else(|| panic!("node {node} accepted {statement}: {}", reply.body));
            assert!(!error.trim().is_empty(), "the error for {statement} says why");
        }
        status => panic!("node {node} answered {status} to {statement}: {}", reply.body),
    }
}

/// Malformed bodies, SQL errors and statements a replicated database must refuse (ATTACH,
/// explicit transactions, VACUUM, writable PRAGMAs, writes through the read endpoint), sent to
/// the leader and to a follower. No node crashes, nothing refused is applied anywhere, and the
/// cluster still takes writes afterwards. The nodes run with `--fk`, to show that a client's
/// `PRAGMA foreign_keys=OFF` cannot turn enforcement off.
#[test]
fn bad_input_is_refused_and_the_cluster_carries_on() {
    let c = TestCluster::start_with(3, 0, &["--fk"]);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
            "INSERT INTO t(v) VALUES('before')"
        ]),
    );
    let attached = c.dir().join("attached.db");

    for node in [leader, follower] {
        // Malformed requests.
        for body in [
            "[\"INSERT INTO t(v) VALUES('x')\"",
            "not json",
            "",
            "[]",
            "{\"statements\": []}",
            "42",
        ] {
            let reply = c.post(node, "/db/execute", body);
            assert_eq!(
                reply.status, 400,
                "node {node}: /db/execute with body {body:?}: {}",
                reply.body
            );
        }
        for body in ["[\"SELECT 1\"", "not json", "[]"] {
            let reply = c.post(node, "/db/query", body);
            assert_eq!(
                reply.status, 400,
                "node {node}: /db/query with body {body:?}: {}",
                reply.body
            );
        }
        let reply = c.get(node, "/db/query?q=");
        assert_eq!(reply.status, 400, "node {node}: empty q: {}", reply.body);

        // SQL errors are per statement, with 200.
        let syntax = c.execute(node, json!(["INSRT INTO t(v) VALUES('x')"]));
        assert!(syntax.error(0).is_some_and(|e| e.contains("syntax error")), "{syntax:?}");
        let missing = c.execute(node, json!(["INSERT INTO nosuch VALUES(1)"]));
        assert!(missing.error(0).is_some_and(|e| e.contains("no such table")), "{missing:?}");

        // Statements that would make the nodes diverge, or escape the replicated database.
        let attach = format!("ATTACH DATABASE '{}' AS other", attached.display());
        for sql in [
            attach.as_str(),
            "DETACH DATABASE other",
            "BEGIN",
            "BEGIN IMMEDIATE TRANSACTION",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT s1",
            "RELEASE s1",
            "VACUUM",
            "PRAGMA foreign_keys=OFF",
            "PRAGMA journal_mode=DELETE",
            "PRAGMA synchronous=OFF",
            "PRAGMA wal_checkpoint(TRUNCATE)",
        ] {
            assert_refused(&c, node, json!(sql));
        }
        // Parameters that cannot be bound.
        assert_refused(&c, node, json!(["INSERT INTO t(v) VALUES(?)", "a", "b", "c"]));
        assert_refused(&c, node, json!(["INSERT INTO t(v) VALUES(:v)", {"v": {"nested": true}}]));

        // A write sent to the read endpoint is not executed, at any level.
        for level in [Level::None, Level::Weak] {
            let write = c.query(node, "INSERT INTO t(v) VALUES('via-query')", level);
            assert!(
                write.error(0).is_some(),
                "node {node}: a write through /db/query at {level:?}: {write:?}"
            );
        }
        c.assert_all_alive();
    }
    assert!(!attached.exists(), "ATTACH created {}", attached.display());

    // `PRAGMA foreign_keys=OFF` was refused, so foreign keys are still enforced.
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE child (pid INT REFERENCES parent(id))"
        ]),
    );
    let orphan = c.execute(follower, json!(["INSERT INTO child VALUES(99)"]));
    assert!(
        orphan.error(0).is_some_and(|e| e.contains("FOREIGN KEY")),
        "foreign keys are enforced: {orphan:?}"
    );

    // A refused statement in the middle of a batch: whatever the server decides for the rest of
    // the batch, it decides it once, for every node.
    let mixed = c.post(
        follower,
        "/db/execute",
        json!([
            "CREATE TABLE mixed (v TEXT)",
            "INSERT INTO mixed VALUES('1')",
            "BEGIN",
            "INSERT INTO mixed VALUES('2')"
        ])
        .to_string(),
    );
    assert!(mixed.status == 200 || mixed.status == 400, "{}: {}", mixed.status, mixed.body);

    // The cluster still takes writes, through either node.
    c.execute_ok(leader, json!(["INSERT INTO t(v) VALUES('after-leader')"]));
    c.execute_ok(follower, json!(["INSERT INTO t(v) VALUES('after-follower')"]));
    c.assert_consistent();
    for id in c.ids() {
        assert_eq!(
            c.rows(id, "SELECT v FROM t ORDER BY id"),
            vec![vec![json!("before")], vec![json!("after-leader")], vec![json!("after-follower")]],
            "node {id}: only the valid writes are applied"
        );
    }
}
