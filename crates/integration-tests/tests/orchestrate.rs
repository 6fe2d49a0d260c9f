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

/// Waits until the leader's members are exactly `expected` (id, voter).
fn wait_members(c: &TestCluster, expected: &[(u64, bool)], what: &str) {
    let expected: std::collections::BTreeMap<u64, bool> = expected.iter().copied().collect();
    wait_for(TIMEOUT, what, || (c.leader_members()? == expected).then_some(()));
}

/// With `--leave-on-shutdown`, a follower stopped with SIGTERM removes itself; a leader hands
/// leadership over first, then removes itself through the new leader; the last voter stays
/// (there is nobody to hand over to) and says so. Each step leaves a cluster that elects and
/// takes writes.
#[test]
fn nodes_leave_the_cluster_on_sigterm() {
    let mut c = TestCluster::start_with(3, 0, &["--leave-on-shutdown"]);
    let leader = c.leader();
    c.execute_ok(leader, json!(["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES ('three')"]));

    let follower = c.followers(leader)[0];
    c.stop(follower);
    assert!(c.log(follower).contains("left the cluster"), "{}", c.log(follower));
    c.retire(follower);
    let rest = c.voters();
    wait_members(&c, &[(rest[0], true), (rest[1], true)], "the leader to list the 2 others");
    c.execute_ok(c.leader(), json!(["INSERT INTO t VALUES ('two')"]));

    let leader = c.leader();
    c.stop(leader);
    let log = c.log(leader);
    assert!(log.contains("handed leadership over to node"), "{log}");
    assert!(log.contains("left the cluster"), "{log}");
    c.retire(leader);
    let last = c.voters()[0];
    wait_members(&c, &[(last, true)], "the last node to lead a cluster of itself");
    assert_eq!(c.leader(), last);
    c.execute_ok(last, json!(["INSERT INTO t VALUES ('one')"]));
    let rows = c.query(last, "SELECT count(*) FROM t", Level::None).rows(0);
    assert_eq!(rows, vec![vec![json!(3)]]);

    c.stop(last);
    let log = c.log(last);
    assert!(log.contains("is the last voter"), "{log}");
    assert!(!log.contains("left the cluster"), "{log}");
}

/// A node that left on SIGTERM and starts again with its data directory and `--join` finds
/// that the leader no longer lists it and joins again, catching up from where it stopped.
#[test]
fn a_node_that_left_joins_again_when_restarted() {
    let c = TestCluster::start_with(3, 0, &["--leave-on-shutdown"]);
    let leader = c.leader();
    c.execute_ok(leader, json!(["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES ('before')"]));
    let follower = c.followers(leader)[0];
    let others: Vec<(u64, bool)> =
        c.voters().into_iter().filter(|&id| id != follower).map(|id| (id, true)).collect();
    c.stop(follower);
    wait_members(&c, &others, "the leader to list the 2 others");
    c.execute_ok(c.leader(), json!(["INSERT INTO t VALUES ('while-away')"]));

    c.restart(follower);
    let all: Vec<(u64, bool)> = c.voters().into_iter().map(|id| (id, true)).collect();
    wait_members(&c, &all, "the node that left to be a voter again");
    assert!(c.log(follower).contains("not a member any more"), "{}", c.log(follower));
    let lsn = c.execute_ok(c.leader(), json!(["INSERT INTO t VALUES ('back')"]));
    c.wait_applied(follower, lsn);
    let rows = c.query(follower, "SELECT count(*) FROM t", Level::None).rows(0);
    assert_eq!(rows, vec![vec![json!(3)]]);
}

/// With `--reap-after`, the leader removes a learner it has not heard from for that long; a
/// silent voter of three is kept (fewer than 3 voters would remain), and the leader says why.
#[test]
fn silent_learners_are_reaped_and_three_voters_are_kept() {
    let c = TestCluster::start_with(3, 1, &["--reap-after", "2s"]);
    let learner = c.learners()[0];
    let voters = c.voters();
    c.kill(learner);
    let all: Vec<(u64, bool)> = voters.iter().map(|&id| (id, true)).collect();
    wait_members(&c, &all, "the leader to reap the killed learner");
    let log = c.log(c.leader());
    assert!(log.contains(&format!("id={learner}")) && log.contains("reaped a member"), "{log}");

    let leader = c.leader();
    let follower = c.followers(leader)[0];
    c.kill(follower);
    let refused = format!("not reaping node {follower}");
    wait_for(TIMEOUT, "the leader to refuse reaping a voter of three", || {
        c.log(leader).contains(&refused).then_some(())
    });
    assert!(c.log(leader).contains("reaping keeps at least 3"), "{}", c.log(leader));
    wait_members(&c, &all, "the leader to keep all three voters");
}

/// With `--reap-after`, a silent voter of five is removed: four remain and take writes.
#[test]
fn a_silent_voter_of_five_is_reaped() {
    let mut c = TestCluster::start_with(5, 0, &["--reap-after", "2s"]);
    let leader = c.leader();
    let victim = c.followers(leader)[0];
    c.kill(victim);
    c.retire(victim);
    let rest: Vec<(u64, bool)> = c.voters().iter().map(|&id| (id, true)).collect();
    wait_members(&c, &rest, "the leader to reap the killed voter");
    c.execute_ok(c.leader(), json!(["CREATE TABLE t (v TEXT)"]));
}

/// Three nodes started at once with `--bootstrap-expect 3` and the same `--join` list form one
/// cluster of three voters with one leader; started again with the same flags, they form the
/// same cluster, with its data, and nothing is bootstrapped again.
#[test]
fn nodes_started_at_once_form_one_cluster() {
    let c = TestCluster::start_expecting(3, &[]);
    let leader = c.leader();
    c.execute_ok(leader, json!(["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES ('formed')"]));
    let bootstraps = |c: &TestCluster| -> usize {
        c.ids().iter().map(|&id| c.log(id).matches("bootstrapping the cluster").count()).sum()
    };
    let formed = bootstraps(&c);
    assert!(formed >= 1, "some node bootstrapped the cluster");

    c.restart_all();
    assert_eq!(bootstraps(&c), formed, "a restart bootstraps nothing");
    for id in c.ids() {
        assert!(c.log(id).contains("already a cluster member"), "node {id}: {}", c.log(id));
    }
    let leader = c.leader();
    let lsn = c.execute_ok(leader, json!(["INSERT INTO t VALUES ('again')"]));
    for id in c.ids() {
        c.wait_applied(id, lsn);
        let rows = c.query(id, "SELECT v FROM t ORDER BY rowid", Level::None).rows(0);
        assert_eq!(rows, vec![vec![json!("formed")], vec![json!("again")]], "node {id}");
    }
}
