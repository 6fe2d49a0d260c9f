//! Learners (`--learner`) are asynchronous read replicas: they receive every write, serve reads
//! of their own data, forward writes, and are never needed for a commit nor elected.

use integration_tests::{Level, Role, TestCluster};
use serde_json::json;

/// A learner joins as a non-voter, receives the data, serves `level=none` reads from it and
/// forwards writes; writes commit while it is frozen, and it catches up when thawed.
#[test]
fn learner_receives_writes_and_serves_local_reads() {
    let c = TestCluster::start(3, 1);
    let learner = c.learners()[0];
    let leader = c.leader();
    assert_ne!(leader, learner);

    let status = c.status(learner).node;
    assert_eq!(status.role, Role::Learner, "{status:?}");
    assert_eq!(status.leader_id, Some(leader), "{status:?}");
    let nodes = c.get(leader, "/nodes?nonvoters").json();
    for id in c.ids() {
        assert_eq!(nodes[id.to_string()]["voter"], json!(id != learner), "node {id} in {nodes}");
    }

    let lsn = c.execute_ok(
        leader,
        json!([
            "CREATE TABLE l (id INTEGER PRIMARY KEY, v TEXT)",
            "INSERT INTO l(v) VALUES('one'), ('two')",
        ]),
    );
    c.wait_applied(learner, lsn);
    let read = c.query(learner, "SELECT id, v FROM l ORDER BY id", Level::None);
    assert_eq!(read.rows(0), vec![vec![json!(1), json!("one")], vec![json!(2), json!("two")]]);
    assert!(read.lsn() >= lsn, "a local read reports the applied index it saw: {read:?}");

    // A write sent to the learner is executed by the leader.
    let forwarded = c.execute(learner, json!(["INSERT INTO l(v) VALUES('via-learner')"]));
    forwarded.assert_ok();
    assert_eq!(forwarded.last_insert_id(0), 3);
    for id in c.ids() {
        c.wait_applied(id, forwarded.lsn());
        assert_eq!(c.rows(id, "SELECT count(*) FROM l"), vec![vec![json!(3)]], "node {id}");
    }

    // The learner is not part of the quorum: writes commit while it is frozen.
    c.pause(learner);
    let mut lsn = 0;
    for i in 0..10 {
        lsn = c.execute_ok(
            leader,
            json!([["INSERT INTO l(v) VALUES(?)", format!("while paused {i}")]]),
        );
    }
    c.resume(learner);
    c.wait_applied(learner, lsn);
    assert_eq!(c.rows(learner, "SELECT count(*) FROM l"), vec![vec![json!(13)]]);

    // Restarted from its data directory, it is still a learner.
    c.restart(learner);
    c.execute_ok(leader, json!(["INSERT INTO l(v) VALUES('after restart')"]));
    c.assert_consistent();
    assert_eq!(c.status(learner).node.role, Role::Learner);
    assert_eq!(c.rows(learner, "SELECT count(*) FROM l"), vec![vec![json!(14)]]);
}
