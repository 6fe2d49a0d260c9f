//! Membership as orchestrators drive it: nodes that come back at new addresses, leave on
//! SIGTERM (`--leave-on-shutdown`), are reaped when silent (`--reap-after`), and clusters formed
//! by nodes started at once (`--bootstrap-expect`).

use integration_tests::{Level, TIMEOUT, TestCluster, wait_for};
use serde_json::json;

/// Waits until node `viewer` lists node `id` at Raft address `addr`.
fn wait_listed_at(c: &TestCluster, viewer: u64, id: u64, addr: &str) {
    wait_for(TIMEOUT, format!("node {viewer} to list node {id} at {addr}"), || {
        c.member_addrs(viewer)?.get(&id).filter(|(at, voter)| at == addr && *voter).map(|_| ())
    });
}

/// Waits until node `id` has row `v` in table `t` (read from its own copy).
fn wait_row(c: &TestCluster, id: u64, v: &str) {
    wait_for(TIMEOUT, format!("node {id} to have row {v}"), || {
        let sql = format!("SELECT count(*) FROM t WHERE v = '{v}'");
        let rows = c.try_query_with(id, &sql, "level=none").ok()?.answer().rows(0);
        (rows == vec![vec![json!(1)]]).then_some(())
    });
}

/// A follower stopped and started again with the same data directory on other ports, with
/// `--join`, is updated in the membership instead of refused: every node lists its new Raft
/// address, and writes reach it there. Then the same with an emptied data directory.
#[test]
fn a_node_rejoins_at_new_addresses() {
    let mut c = TestCluster::start(3, 0);
    let leader = c.leader();
    c.execute_ok(leader, json!(["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES ('before')"]));
    let moved = c.followers(leader)[0];
    let old = c.raft_addr(moved).to_string();

    c.move_node(moved, false);
    let new = c.raft_addr(moved).to_string();
    assert_ne!(old, new);
    for id in c.ids() {
        wait_listed_at(&c, id, moved, &new);
    }
    let leader = c.leader();
    let lsn = c.execute_ok(leader, json!(["INSERT INTO t VALUES ('after-move')"]));
    c.wait_applied(moved, lsn);
    wait_row(&c, moved, "after-move");
    assert!(c.log(moved).contains("asking the cluster to update them"), "{}", c.log(moved));

    // Fresh data: the node is a voter already; it gets everything again at its new place.
    c.move_node(moved, true);
    let newer = c.raft_addr(moved).to_string();
    for id in c.ids() {
        wait_listed_at(&c, id, moved, &newer);
    }
    let leader = c.leader();
    let lsn = c.execute_ok(leader, json!(["INSERT INTO t VALUES ('after-fresh')"]));
    c.wait_applied(moved, lsn);
    wait_row(&c, moved, "before");
    wait_row(&c, moved, "after-fresh");
    let count = c.query(moved, "SELECT count(*) FROM t", Level::None).rows(0);
    assert_eq!(count, vec![vec![json!(3)]]);
}
