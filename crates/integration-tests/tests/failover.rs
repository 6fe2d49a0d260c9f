//! Losing the leader: a crash (SIGKILL) must cost neither acknowledged writes nor availability
//! for longer than an election, and the crashed node must come back as a faithful replica.

use integration_tests::TestCluster;
use serde_json::json;

/// Kill -9 the leader right after it acknowledged writes: the survivors elect a new leader that
/// has those writes (including AUTOINCREMENT's high-water mark) and takes new ones, directly
/// and forwarded; the old leader restarts from its data directory and catches up.
#[test]
fn killed_leader_is_replaced_and_catches_up_after_restart() {
    let c = TestCluster::start(3, 0);
    let old = c.leader();

    c.execute_ok(
        old,
        json!([
            "CREATE TABLE f (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT NOT NULL)",
            "INSERT INTO f(v) VALUES('a'), ('b'), ('c')",
        ]),
    );
    // The last acknowledged write before the crash; no waiting for followers to apply it.
    let deleted = c.execute(old, json!(["DELETE FROM f WHERE id = 3"]));
    deleted.assert_ok();
    assert_eq!(deleted.rows_affected(0), 1);

    c.kill(old);
    let new = c.leader();
    assert_ne!(new, old, "a killed node cannot lead");
    let other = c.followers(new).into_iter().find(|&id| id != old).expect("a third voter");

    let after = c.execute(new, json!(["INSERT INTO f(v) VALUES('after-failover')"]));
    after.assert_ok();
    assert_eq!(after.last_insert_id(0), 4, "the new leader knows the AUTOINCREMENT sequence");
    let forwarded = c.execute(other, json!(["INSERT INTO f(v) VALUES('forwarded')"]));
    forwarded.assert_ok();
    assert_eq!(forwarded.last_insert_id(0), 5);

    c.restart(old);
    // Written after the old leader is back, so its log must accept entries from the new term.
    let back = c.execute(old, json!(["INSERT INTO f(v) VALUES('after-restart')"]));
    back.assert_ok();
    assert_eq!(back.last_insert_id(0), 6);
    assert!(back.lsn() > forwarded.lsn());

    c.assert_consistent();
    let expected = vec![
        vec![json!(1), json!("a")],
        vec![json!(2), json!("b")],
        vec![json!(4), json!("after-failover")],
        vec![json!(5), json!("forwarded")],
        vec![json!(6), json!("after-restart")],
    ];
    for id in c.ids() {
        assert_eq!(c.rows(id, "SELECT id, v FROM f ORDER BY id"), expected, "node {id}");
    }
    let leader = c.leader();
    assert_eq!(
        c.status(old).leader_id,
        Some(leader),
        "the restarted node follows the current leader"
    );
}
