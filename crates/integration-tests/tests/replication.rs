//! Writes reach every node: through the leader, through a follower (forwarded) and after a
//! redirect; and statements that are hard to replicate leave identical databases everywhere.

use integration_tests::{Level, TestCluster};
use serde_json::{Value, json};

/// Writes sent to the leader and to a follower are both applied once and read back from every
/// node's own data; `?redirect` on a follower answers 301 to the leader instead of executing.
#[test]
fn writes_through_leader_and_follower_reach_every_node() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let follower = c.followers(leader)[0];

    c.execute_ok(leader, json!(["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"]));
    let via_leader = c.execute(leader, json!([["INSERT INTO kv VALUES(?, ?)", "via-leader", "1"]]));
    via_leader.assert_ok();
    assert_eq!(via_leader.rows_affected(0), 1);
    let via_follower = c.execute(
        follower,
        json!([["INSERT INTO kv(k, v) VALUES(:k, :v)", {"k": "via-follower", "v": "2"}]]),
    );
    via_follower.assert_ok();
    assert_eq!(via_follower.rows_affected(0), 1);
    assert!(via_follower.lsn() > via_leader.lsn(), "later write has a later lsn");

    let expected =
        vec![vec![json!("via-follower"), json!("2")], vec![json!("via-leader"), json!("1")]];
    for id in c.ids() {
        c.wait_applied(id, via_follower.lsn());
        assert_eq!(c.rows(id, "SELECT k, v FROM kv ORDER BY k"), expected, "node {id}");
    }

    // Reads at levels other than none are served by the leader, whichever node is asked.
    for level in [Level::Weak, Level::Linearizable, Level::Strong] {
        let count = c.query(follower, "SELECT count(*) FROM kv", level);
        assert_eq!(count.rows(0), vec![vec![json!(2)]], "{level:?} read on a follower");
    }
    let posted = c.post(
        follower,
        "/db/query?level=weak",
        json!(["SELECT k FROM kv ORDER BY k", "SELECT 1"]).to_string(),
    );
    assert_eq!(posted.status, 200, "{}", posted.body);
    let posted = posted.answer();
    assert_eq!(posted.rows(0), vec![vec![json!("via-follower")], vec![json!("via-leader")]]);
    assert_eq!(posted.rows(1), vec![vec![json!(1)]]);

    // Mixed reads and writes on a follower.
    let mixed = c.request(
        follower,
        json!(["SELECT count(*) FROM kv", ["INSERT INTO kv VALUES(?, ?)", "via-request", "3"]]),
    );
    mixed.assert_ok();
    assert_eq!(mixed.rows(0), vec![vec![json!(2)]]);
    assert_eq!(mixed.rows_affected(1), 1);

    // With ?redirect a follower answers 301 to the leader and executes nothing itself.
    let body = json!([["INSERT INTO kv VALUES(?, ?)", "via-redirect", "4"]]).to_string();
    let redirect = c.post(follower, "/db/execute?redirect", body.clone());
    assert_eq!(redirect.status, 301, "{}", redirect.body);
    let location = redirect.location.expect("a 301 has a Location");
    assert_eq!(location, format!("http://{}/db/execute?redirect", c.http_addr(leader)));
    let absent = c.query(leader, "SELECT count(*) FROM kv WHERE k = 'via-redirect'", Level::Weak);
    assert_eq!(absent.rows(0), vec![vec![json!(0)]], "a redirected write is not executed");
    let followed = c.post_url(&location, body);
    assert_eq!(followed.status, 200, "{}", followed.body);
    followed.answer().assert_ok();

    // Every node agrees on who leads.
    for id in c.ids() {
        let reply = c.get(id, "/leader");
        assert_eq!(reply.status, 200, "node {id} /leader: {}", reply.body);
        let node = reply.json();
        assert_eq!(node["id"], json!(leader.to_string()), "node {id} /leader: {node}");
        assert_eq!(node["api_addr"], json!(format!("http://{}", c.http_addr(leader))));
        assert_eq!(node["addr"], json!(c.raft_addr(leader)));
        assert_eq!(node["leader"], json!(true));
    }
    let nodes = c.get(follower, "/nodes").json();
    let nodes = nodes.as_object().expect("/nodes is an object");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for id in c.ids() {
        let node = &nodes[&id.to_string()];
        assert_eq!(node["voter"], json!(true), "{node}");
        assert_eq!(node["leader"], json!(id == leader), "{node}");
        assert_eq!(node["api_addr"], json!(format!("http://{}", c.http_addr(id))), "{node}");
    }

    let dump = c.assert_consistent();
    let keys: Vec<&Value> =
        dump["tables"]["kv"]["values"].as_array().unwrap().iter().map(|row| &row[1]).collect();
    assert_eq!(keys.len(), 4, "each write applied exactly once: {keys:?}");
}

/// Statements whose effects a naive statement-shipping replica would get wrong: functions with
/// random or time-dependent results, tables without a primary key, AUTOINCREMENT, triggers,
/// cascading foreign keys, DDL inside a request, a transaction that fails midway, WITHOUT ROWID
/// tables and BLOBs. Every node must end with the leader's exact database. The nodes run with
/// `--fk`, so that the cascade happens on the leader and reaches the others as rows.
#[test]
fn tricky_statements_replicate_identically() {
    let c = TestCluster::start_with(3, 0, &["--fk"]);
    let leader = c.leader();
    let follower = c.followers(leader)[0];

    // Non-deterministic functions, in INSERT, INSERT … SELECT, UPDATE and column defaults.
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE r (id INTEGER PRIMARY KEY, v INT, t TEXT, b BLOB, h TEXT, \
             created TEXT DEFAULT CURRENT_TIMESTAMP)",
            "INSERT INTO r(v, t, b, h) VALUES(random(), datetime('now'), randomblob(16), hex(randomblob(8)))",
            "INSERT INTO r(v, t, b, h) VALUES(random(), strftime('%Y-%m-%d %H:%M:%f', 'now'), randomblob(16), NULL)",
            "INSERT INTO r(v, t, b) SELECT random(), datetime('now', '+1 day'), randomblob(4) FROM r",
            "UPDATE r SET v = abs(random()) % 1000, t = julianday('now') WHERE id % 2 = 0",
        ]),
    );
    c.execute_ok(follower, json!(["UPDATE r SET h = hex(randomblob(4)) WHERE h IS NULL"]));

    // A table without a primary key: rows are identified by rowid only.
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE nopk (a TEXT, b INT)",
            "INSERT INTO nopk VALUES('x', 1), ('x', 1), ('y', 2), ('z', 3)",
            "UPDATE nopk SET b = b + 10 WHERE a = 'x'",
            "DELETE FROM nopk WHERE rowid = (SELECT min(rowid) FROM nopk WHERE a = 'x')",
            "DELETE FROM nopk WHERE a = 'z'",
            "INSERT INTO nopk VALUES('w', 4)",
        ]),
    );

    // AUTOINCREMENT never reuses the id of a deleted tail row; sqlite_sequence must replicate.
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE ai (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)",
            "INSERT INTO ai(v) VALUES('a'), ('b'), ('c')",
            "DELETE FROM ai WHERE id = 3",
        ]),
    );
    let again = c.execute(follower, json!(["INSERT INTO ai(v) VALUES('d')"]));
    again.assert_ok();
    assert_eq!(again.last_insert_id(0), 4, "AUTOINCREMENT continues after the deleted tail row");

    // A trigger writing an audit table, with a timestamp taken inside the trigger.
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INT NOT NULL)",
            "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, acct INT, old INT, new INT, at TEXT, salt INT)",
            "CREATE TRIGGER acct_audit AFTER UPDATE OF bal ON acct BEGIN \
             INSERT INTO audit(acct, old, new, at, salt) VALUES(old.id, old.bal, new.bal, datetime('now'), random()); \
             END",
            "INSERT INTO acct VALUES(1, 100), (2, 50)",
            "UPDATE acct SET bal = bal - 30 WHERE id = 1",
        ]),
    );
    c.execute_ok(follower, json!(["UPDATE acct SET bal = bal + 30 WHERE id = 2"]));

    // ON DELETE CASCADE.
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT)",
            "CREATE TABLE child (id INTEGER PRIMARY KEY, pid INT NOT NULL REFERENCES parent(id) ON DELETE CASCADE)",
            "INSERT INTO parent VALUES(1, 'p1'), (2, 'p2')",
            "INSERT INTO child VALUES(10, 1), (11, 1), (20, 2)",
            "DELETE FROM parent WHERE id = 1",
        ]),
    );

    // DDL and DML mixed in one request.
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE m (id INTEGER PRIMARY KEY, a TEXT)",
            "INSERT INTO m(a) VALUES('one')",
            "ALTER TABLE m ADD COLUMN b INT DEFAULT 7",
            "UPDATE m SET b = 8 WHERE id = 1",
            "INSERT INTO m(a) VALUES('two')",
            "CREATE INDEX m_b ON m(b)",
            "CREATE VIEW m_view AS SELECT a, b FROM m",
        ]),
    );

    // Without `transaction` every statement runs; the failing one reports an error in place.
    let partial = c.execute(
        leader,
        json!([
            "INSERT INTO m(a) VALUES('partial-1')",
            "INSERT INTO nosuch VALUES(1)",
            "INSERT INTO m(a) VALUES('partial-2')"
        ]),
    );
    assert!(partial.error(0).is_none() && partial.error(2).is_none(), "{partial:?}");
    assert!(partial.error(1).is_some_and(|e| e.contains("no such table")), "{partial:?}");

    // A transaction that fails midway applies nothing, anywhere; it stops at the failure.
    let failed = c.execute_with(
        follower,
        "transaction",
        json!([
            "INSERT INTO m(a) VALUES('tx-1')",
            "CREATE TABLE txt (x)",
            "INSERT INTO txt VALUES(1)",
            "INSERT INTO m(id, a) VALUES(1, 'duplicate id')",
            "INSERT INTO m(a) VALUES('tx-after-error')",
        ]),
    );
    assert_eq!(failed.results().len(), 4, "a transaction stops at its first error: {failed:?}");
    assert!((0..3).all(|i| failed.error(i).is_none()), "{failed:?}");
    assert!(failed.error(3).is_some_and(|e| e.to_lowercase().contains("unique")), "{failed:?}");

    // WITHOUT ROWID, with a composite key that gets updated.
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE wr (k TEXT, n INT, v BLOB, PRIMARY KEY (k, n)) WITHOUT ROWID",
            "INSERT INTO wr VALUES('a', 1, randomblob(3)), ('a', 2, NULL), ('b', 1, x'01')",
            "UPDATE wr SET n = 3 WHERE k = 'a' AND n = 2",
            "DELETE FROM wr WHERE k = 'b'",
        ]),
    );

    // BLOBs from a literal and from a byte-array parameter.
    let blobs = c.execute(
        leader,
        json!([
            "CREATE TABLE bl (id INTEGER PRIMARY KEY, b BLOB)",
            "INSERT INTO bl(b) VALUES(x'00FF7F80DEADBEEF')",
            ["INSERT INTO bl(b) VALUES(?)", [0, 1, 2, 255]],
        ]),
    );
    blobs.assert_ok();

    let dump = c.assert_consistent();

    // The consistent state is also the right one.
    let blob_rows = vec![
        vec![json!(1), json!("AP9/gN6tvu8="), json!("00FF7F80DEADBEEF"), json!("blob")],
        vec![json!(2), json!("AAEC/w=="), json!("000102FF"), json!("blob")],
    ];
    for id in c.ids() {
        let rows = |sql| c.rows(id, sql);
        assert_eq!(
            rows("SELECT id, b, hex(b), typeof(b) FROM bl ORDER BY id"),
            blob_rows,
            "node {id}"
        );
        assert_eq!(
            rows("SELECT seq FROM sqlite_sequence WHERE name = 'ai'"),
            vec![vec![json!(4)]],
            "node {id}"
        );
        assert_eq!(
            rows("SELECT id, v FROM ai ORDER BY id"),
            vec![
                vec![json!(1), json!("a")],
                vec![json!(2), json!("b")],
                vec![json!(4), json!("d")]
            ]
        );
        assert_eq!(
            rows("SELECT acct, old, new FROM audit ORDER BY id"),
            vec![vec![json!(1), json!(100), json!(70)], vec![json!(2), json!(50), json!(80)]],
            "node {id}"
        );
        assert_eq!(
            rows("SELECT id, pid FROM child ORDER BY id"),
            vec![vec![json!(20), json!(2)]],
            "node {id}"
        );
        assert_eq!(
            rows("SELECT a, b FROM m_view ORDER BY a"),
            vec![
                vec![json!("one"), json!(8)],
                vec![json!("partial-1"), json!(7)],
                vec![json!("partial-2"), json!(7)],
                vec![json!("two"), json!(7)],
            ],
            "node {id}"
        );
        assert_eq!(
            rows("SELECT count(*) FROM sqlite_schema WHERE name = 'txt'"),
            vec![vec![json!(0)]],
            "node {id}"
        );
        assert_eq!(
            rows("SELECT a, b FROM nopk ORDER BY rowid"),
            vec![
                vec![json!("x"), json!(11)],
                vec![json!("y"), json!(2)],
                vec![json!("w"), json!(4)],
            ],
            "node {id}"
        );
        assert_eq!(
            rows("SELECT k, n, v IS NULL FROM wr ORDER BY k, n"),
            vec![vec![json!("a"), json!(1), json!(0)], vec![json!("a"), json!(3), json!(1)]],
            "node {id}"
        );
        assert_eq!(
            rows("SELECT count(*) FROM r WHERE h IS NULL OR created IS NULL"),
            vec![vec![json!(0)]]
        );
    }
    assert_eq!(
        dump["tables"]["r"]["values"].as_array().map(Vec::len),
        Some(4),
        "{}",
        dump["tables"]["r"]
    );
}
