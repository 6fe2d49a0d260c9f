//! Operator controls: moving leadership on purpose (`/admin/promote`, rqlite's `POST /leader`),
//! changing the membership (`/admin/membership`, rqlite's `DELETE /remove`), the refusals that
//! keep a cluster working, and the `keel admin` command a person runs against it.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use integration_tests::{NodeId, Reply, Role, TIMEOUT, TestCluster, keel_binary, wait_for};
use keel_api::ErrorAnswer;
use keel_api::cluster::{LeaderChanged, MembershipChanged, NodeMap, Removed};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Acknowledged writes the load test waits for before and after the promotion.
const WRITES_PER_PHASE: usize = 60;

/// Concurrent writer threads in the load test.
const WRITERS: i64 = 4;

/// Asserts a 200 answer and returns it as `T`.
fn ok<T: DeserializeOwned>(what: &str, reply: Reply) -> T {
    assert_eq!(reply.status, 200, "{what}: {}", reply.body);
    reply.parse()
}

/// Asserts an error answer with `status` whose message contains `needle`.
fn refused(what: &str, reply: Reply, status: u16, needle: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    let error = reply.parse::<ErrorAnswer>().error;
    assert!(error.contains(needle), "{what}: error {error:?} should mention {needle:?}");
}

/// Node `via`'s `/nodes?nonvoters` as `{id: voter}`.
fn membership(c: &TestCluster, via: NodeId) -> Vec<(NodeId, bool)> {
    let nodes: NodeMap = ok("/nodes", c.get(via, "/nodes?nonvoters"));
    let mut members: Vec<(NodeId, bool)> =
        nodes.iter().map(|(id, n)| (id.parse().unwrap(), n.voter)).collect();
    members.sort_unstable();
    members
}

/// Waits until every node in `ids` names `leader` as its leader.
fn wait_everyone_follows(c: &TestCluster, ids: &[NodeId], leader: NodeId) {
    for &id in ids {
        wait_for(TIMEOUT, format!("node {id} to follow node {leader}"), || {
            c.try_status(id).filter(|s| s.node.leader_id == Some(leader))
        });
    }
}

/// Asserts that every node in `ids` has the same data as `reference`, once all have applied
/// `lsn`.
fn assert_same_data(c: &TestCluster, ids: &[NodeId], reference: NodeId, lsn: u64) {
    for &id in ids {
        c.wait_applied(id, lsn);
    }
    let expected = c.dump(reference);
    for &id in ids {
        assert_eq!(c.dump(id), expected, "node {id} differs from node {reference}");
    }
}

/// The `n`s of table `w` on node `id`, from its own data.
fn written(c: &TestCluster, id: NodeId) -> BTreeSet<i64> {
    c.rows(id, "SELECT n FROM w")
        .iter()
        .map(|row| row[0].as_i64().expect("n is an integer"))
        .collect()
}

/// A follower promoted while writers keep inserting becomes the leader, and no acknowledged
/// write is lost on any node: the writers retry what was refused with 503 during the handover
/// with the same request id, so no write fails for good and none is applied twice.
#[test]
fn promoting_a_follower_under_write_load_loses_no_acknowledged_write() {
    let c = TestCluster::start(3, 0);
    let old = c.leader();
    let followers = c.followers(old);
    let (target, other) = (followers[0], followers[1]);
    c.execute_ok(old, json!(["CREATE TABLE w (n INTEGER NOT NULL)"]));

    let stop = AtomicBool::new(false);
    let refusals = AtomicUsize::new(0);
    let acked: Mutex<BTreeSet<i64>> = Mutex::new(BTreeSet::new());
    let acked_count = || acked.lock().unwrap().len();
    let wait_for_more = |phase: &str| {
        let goal = acked_count() + WRITES_PER_PHASE;
        wait_for(TIMEOUT, format!("{WRITES_PER_PHASE} acknowledged writes {phase}"), || {
            (acked_count() >= goal).then_some(())
        });
    };
    let ids = c.ids();
    // Writer `w` inserts w * 1_000_000 + 1, + 2, …, each to the next node in turn (followers
    // forward), retrying a refused write until it is acknowledged or the test stops.
    let writer = |w: i64| {
        let mut n = w * 1_000_000;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let to = ids[usize::try_from(n).unwrap() % ids.len()];
            let insert = json!([["INSERT INTO w(n) VALUES(?)", n]]).to_string();
            while !stop.load(Ordering::Relaxed) {
                let reply = c.post(to, &format!("/db/execute?request_id=w{n}"), insert.clone());
                match reply.status {
                    200 => {
                        reply.answer().assert_ok();
                        acked.lock().unwrap().insert(n);
                        break;
                    }
                    503 => {
                        refusals.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    status => panic!("write {n} to node {to}: status {status}: {}", reply.body),
                }
            }
        }
    };
    let promoted = std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS).map(|w| s.spawn(move || writer(w))).collect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for_more("before the promotion");
            // Sent to the third node: the request is forwarded to the leader.
            let answer: LeaderChanged =
                ok("promote", c.post(other, &format!("/admin/promote?node={target}"), ""));
            wait_for_more("after the promotion");
            answer
        }));
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.join().expect("writer thread panicked");
        }
        result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });

    assert_eq!(promoted.leader, target, "{promoted:?}");
    assert_eq!(c.leader(), target);
    let term = c.status(target).node.term;
    assert_eq!(promoted.term, term, "{promoted:?}");
    eprintln!("writes refused with 503 during the handover: {}", refusals.load(Ordering::Relaxed));

    c.assert_consistent();
    let acked = acked.into_inner().unwrap();
    assert!(acked.len() >= 2 * WRITES_PER_PHASE);
    for id in c.ids() {
        let present = written(&c, id);
        let lost: Vec<&i64> = acked.difference(&present).collect();
        assert!(lost.is_empty(), "node {id} lost acknowledged writes {lost:?}");
        let twice = c.rows(id, "SELECT n FROM w GROUP BY n HAVING count(*) > 1");
        assert!(twice.is_empty(), "node {id}: retried writes applied twice: {twice:?}");
    }
}

/// A learner named for promotion is made a voter first, then handed leadership; the old
/// leader forwards to it, and every node ends with the same data.
#[test]
fn promoting_a_learner_makes_it_a_voter_and_the_leader() {
    let c = TestCluster::start(3, 1);
    let learner = c.learners()[0];
    let old = c.leader();
    let before = c.status(old).node.term;
    c.execute_ok(
        old,
        json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO t(v) VALUES('a')"]),
    );

    let answer: LeaderChanged =
        ok("promote learner", c.post(old, &format!("/admin/promote?node={learner}"), ""));
    assert_eq!(answer.leader, learner, "{answer:?}");
    assert!(answer.term > before, "{answer:?}");

    let status = c.status(learner).node;
    assert_eq!((status.role.as_str(), status.leader_id), ("leader", Some(learner)), "{status:?}");
    let voters: Vec<NodeId> =
        membership(&c, learner).into_iter().filter(|&(_, v)| v).map(|(id, _)| id).collect();
    assert_eq!(voters, c.ids(), "every node votes now");
    wait_everyone_follows(&c, &c.ids(), learner);

    // Written through the old leader, which forwards to the new one.
    let lsn = c.execute_ok(old, json!(["INSERT INTO t(v) VALUES('after')"]));
    assert_same_data(&c, &c.ids(), learner, lsn);
    assert_eq!(
        c.rows(old, "SELECT v FROM t ORDER BY id"),
        vec![vec![json!("a")], vec![json!("after")]]
    );
}

/// A follower killed for good is removed with rqlite's `DELETE /remove`: two voters remain and
/// writes commit with the one live follower. With that follower gone too, writes are refused:
/// two voters need both.
#[test]
fn removing_a_dead_voter_restores_quorum_math_of_two() {
    let c = TestCluster::start_with(3, 0, &["--sync-timeout", "1s"]);
    let leader = c.leader();
    let followers = c.followers(leader);
    let (dead, survivor) = (followers[0], followers[1]);
    c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));

    c.kill(dead);
    // Sent to the follower (forwarded), with the id as a string as rqlite clients send it.
    let answer: Removed =
        ok("remove", c.delete(survivor, "/remove", json!({"id": dead.to_string()}).to_string()));
    assert_eq!(answer.removed, dead, "{answer:?}");
    let mut expected = vec![(leader, true), (survivor, true)];
    expected.sort_unstable();
    wait_for(TIMEOUT, "both remaining nodes to list only each other", || {
        (membership(&c, leader) == expected && membership(&c, survivor) == expected).then_some(())
    });

    // Two voters: the leader and the survivor form the quorum.
    let lsn = c.execute_ok(leader, json!(["INSERT INTO t(v) VALUES('two voters')"]));
    let forwarded = c.execute_ok(survivor, json!(["INSERT INTO t(v) VALUES('forwarded')"]));
    assert!(forwarded > lsn);
    assert_same_data(&c, &[leader, survivor], leader, forwarded);

    // Removing it again names what is wrong.
    refused(
        "remove again",
        c.delete(leader, "/remove", json!({"id": dead}).to_string()),
        400,
        "not a member",
    );

    c.kill(survivor);
    let reply =
        c.post(leader, "/db/execute", json!(["INSERT INTO t(v) VALUES('alone')"]).to_string());
    assert_eq!(reply.status, 503, "a write without the second voter: {}", reply.body);
}

/// What would break the cluster is refused with a reason and changes nothing: promoting an
/// unknown node, demoting or removing the leader, demoting or removing the last voter. Voters
/// can be demoted to learners and promoted back, and rqlite's `POST /leader` moves leadership.
#[test]
fn refusals_and_membership_changes() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let followers = c.followers(leader);
    let (a, b) = (followers[0], followers[1]);
    let term = c.status(leader).node.term;
    let change = |via: NodeId, action: &str, id: NodeId| {
        c.post(via, "/admin/membership", json!({"action": action, "id": id}).to_string())
    };

    refused("promote unknown", c.post(a, "/admin/promote?node=9", ""), 400, "not a member");
    refused("promote without node", c.post(leader, "/admin/promote", ""), 400, "node");
    refused("demote the leader", change(a, "demote", leader), 409, "transfer leadership");
    let remove_leader = c.delete(a, "/remove", json!({"id": leader.to_string()}).to_string());
    refused("remove the leader", remove_leader, 409, "is the leader");
    refused("unknown action", change(leader, "explode", a), 400, "unknown action");
    refused("add-voter without addresses", change(leader, "add-voter", 7), 400, "raft_addr");
    refused(
        "add a member again at other addresses",
        c.post(
            leader,
            "/admin/membership",
            json!({"action": "add-voter", "id": a, "raft_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"}).to_string(),
        ),
        400,
        "already a member",
    );

    // Promoting the leader changes nothing.
    let same: LeaderChanged =
        ok("promote the leader", c.post(b, &format!("/admin/promote?node={leader}"), ""));
    assert_eq!((same.leader, same.term), (leader, term));

    // Demote both followers: the leader is the last voter.
    assert!(!ok::<MembershipChanged>("demote a", change(b, "demote", a)).voter);
    assert!(!ok::<MembershipChanged>("demote b", change(leader, "demote", b)).voter);
    let mut expected = vec![(leader, true), (a, false), (b, false)];
    expected.sort_unstable();
    assert_eq!(membership(&c, leader), expected);
    wait_for(TIMEOUT, format!("node {a} to see itself as a learner"), || {
        c.try_status(a).filter(|s| s.node.role == Role::Learner)
    });
    let remove_last = c.delete(leader, "/remove", json!({"id": leader}).to_string());
    refused("remove the last voter", remove_last, 409, "last voter");
    refused("demote the last voter", change(a, "demote", leader), 409, "last voter");
    refused(
        "step down without another voter",
        c.post(leader, "/leader", ""),
        409,
        "no other voter",
    );
    // Writes still commit on the one voter, and reach the learners.
    let lsn =
        c.execute_ok(a, json!(["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES('one voter')"]));
    assert_same_data(&c, &c.ids(), leader, lsn);

    // Promote a back to voter, then hand it leadership the rqlite way.
    assert!(ok::<MembershipChanged>("promote a", change(b, "promote", a)).voter);
    let moved: LeaderChanged =
        ok("POST /leader to a", c.post(b, "/leader", json!({"id": a.to_string()}).to_string()));
    assert_eq!(moved.leader, a, "{moved:?}");
    wait_everyone_follows(&c, &c.ids(), a);
    // Without an id, leadership goes to the other voter: the old leader.
    let back: LeaderChanged = ok("POST /leader without id", c.post(a, "/leader", ""));
    assert_eq!(back.leader, leader, "{back:?}");
    wait_everyone_follows(&c, &c.ids(), leader);

    // A learner can be removed outright.
    let removed: Removed =
        ok("remove learner b", c.delete(a, "/remove", json!({"id": b}).to_string()));
    assert_eq!(removed.removed, b);
    expected = vec![(leader, true), (a, true)];
    expected.sort_unstable();
    wait_for(TIMEOUT, "the leader to list only the voters", || {
        (membership(&c, leader) == expected).then_some(())
    });
    let lsn = c.execute_ok(leader, json!(["INSERT INTO t VALUES('after removal')"]));
    assert_same_data(&c, &[leader, a], leader, lsn);
}

/// Runs `keel admin <args>` against the cluster.
fn keel_admin(args: &[&str]) -> Output {
    Command::new(keel_binary())
        .arg("admin")
        .args(args)
        .env_remove("KEEL_CLUSTER")
        .output()
        .expect("cannot run keel admin")
}

/// `keel admin status` prints one row per member; `promote` moves leadership and says so; an
/// error is one line on stderr and a non-zero exit. Any member's URL works.
#[test]
fn keel_admin_prints_status_and_promotes() {
    let c = TestCluster::start(3, 1);
    let leader = c.leader();
    let learner = c.learners()[0];
    let target = c.followers(leader)[0];
    let lsn = c.execute_ok(leader, json!(["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES('x')"]));
    c.wait_all_applied(lsn);
    // Through the learner: the command finds the leader itself.
    let url = format!("http://{}", c.http_addr(learner));

    let out = keel_admin(&["status", "--cluster", &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with(&format!("leader: node {leader}, term ")), "{stdout}");
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(header, ["ID", "ROLE", "HTTP", "APPLIED", "LAG"], "{stdout}");
    assert_eq!(lines.len(), 2 + c.ids().len(), "{stdout}");
    for id in c.ids() {
        let row = lines
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells[0] == id.to_string())
            .unwrap_or_else(|| panic!("no row for node {id}: {stdout}"));
        let role = if id == leader {
            "leader"
        } else if id == learner {
            "learner"
        } else {
            "follower"
        };
        assert_eq!(row[1], role, "{stdout}");
        assert_eq!(row[2], c.http_addr(id), "{stdout}");
        assert!(row[3].parse::<u64>().is_ok_and(|a| a >= lsn) || row[3] == "-", "{stdout}");
    }

    let out = keel_admin(&["promote", &target.to_string(), "--cluster", &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "promote failed: {}", String::from_utf8_lossy(&out.stderr));
    let term = c.status(target).node.term;
    assert_eq!(stdout.trim(), format!("node {target} is now the leader (term {term})"));
    assert_eq!(c.leader(), target);

    let out = keel_admin(&["remove", "9", "--cluster", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "removing an unknown node must fail");
    assert!(stderr.contains("node 9 is not a member of the cluster (HTTP 400)"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let out = keel_admin(&["status", "--cluster", "http://127.0.0.1:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no cluster member answered"), "{stderr}");
}

/// `POST /admin/promote` sent right after the leader was killed, while the survivors still name
/// the dead leader or are electing a new one, promotes the chosen follower without the client
/// retrying: the node that got the request routes it again until a leader can carry it out.
/// Each trial kills the current leader and sends the promotion at once, alternately through
/// the chosen node and through the other survivor, then restarts the killed node.
#[test]
fn promoting_during_a_failover_succeeds_without_a_retry() {
    let c = TestCluster::start(3, 0);
    for trial in 0..4 {
        let old = c.leader();
        let survivors = c.followers(old);
        let target = survivors[trial % 2];
        let via = if trial < 2 { target } else { survivors[(trial + 1) % 2] };
        c.kill(old);
        let reply = c.post(via, &format!("/admin/promote?node={target}"), "");
        let promoted: LeaderChanged = ok(&format!("trial {trial}: promote via node {via}"), reply);
        assert_eq!(promoted.leader, target, "trial {trial}: {promoted:?}");
        assert_eq!(c.leader(), target, "trial {trial}: the chosen node leads afterwards");
        c.restart(old);
    }
    let lsn = c.execute_ok(c.leader(), json!(["CREATE TABLE after_promotions (x)"]));
    c.wait_all_applied(lsn);
}
