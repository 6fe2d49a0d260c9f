//! Fencing: a leader cut off from the majority (here frozen with SIGSTOP for longer than an
//! election) cannot acknowledge a write, and when it comes back it steps down and converges.

use std::time::{Duration, Instant};

use integration_tests::{Role, TIMEOUT, TestCluster, wait_for};
use serde_json::json;

#[test]
fn frozen_leader_is_replaced_and_steps_down_when_it_wakes() {
    let c = TestCluster::start(3, 0);
    let old = c.leader();
    c.execute_ok(old, json!(["CREATE TABLE f (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"]));
    let old_term = c.status(old).node.term;

    c.pause(old);
    let frozen_at = Instant::now();
    // A write sent to the frozen leader cannot be acknowledged while it is frozen.
    let to_frozen = std::thread::scope(|s| {
        let pending = s.spawn(|| {
            c.try_execute(
                old,
                "",
                &json!([["INSERT INTO f(v) VALUES(?)", "sent to the frozen leader"]]),
            )
        });

        // The two others elect a new leader in a later term.
        let new = wait_for(TIMEOUT, "a new leader other than the frozen one", || {
            let l = c.leader();
            (l != old).then_some(l)
        });
        let new_term = c.status(new).node.term;
        assert!(new_term > old_term, "the new leader's term {new_term} is later than {old_term}");

        let mut acked = Vec::new();
        for i in 0..10 {
            let v = format!("during-{i}");
            let r = c.execute(new, json!([["INSERT INTO f(v) VALUES(?)", v]]));
            r.assert_ok();
            acked.push(v);
        }
        assert!(!pending.is_finished(), "the frozen leader answered while frozen");

        c.resume(old);
        let answer = pending.join().expect("writer thread");
        (new, new_term, acked, answer)
    });
    let (new, new_term, acked, answer) = to_frozen;
    assert!(frozen_at.elapsed() > std::time::Duration::from_millis(300), "frozen past an election");

    // The old leader learns of the new term and follows the new leader.
    wait_for(TIMEOUT, "the old leader to step down and follow the new one", || {
        let s = c.try_status(old)?.node;
        (s.role == Role::Follower && s.term >= new_term && s.leader_id == Some(new)).then_some(())
    });

    // Its write was either refused or re-routed to the new leader; if acknowledged, it is kept.
    let mut expected = acked.clone();
    if let Ok(r) = &answer {
        r.assert_ok();
        assert!(r.lsn() > 0);
        expected.push("sent to the frozen leader".to_string());
    }
    c.assert_consistent();
    for id in c.ids() {
        let rows = c.rows(id, "SELECT v FROM f ORDER BY id");
        let present: Vec<String> =
            rows.iter().map(|r| r[0].as_str().unwrap_or_default().to_string()).collect();
        for v in &expected {
            assert!(present.contains(v), "node {id} lacks acknowledged row {v:?}: {present:?}");
        }
    }
    // And the cluster still takes writes, through the old leader too (forwarded).
    c.execute(old, json!([["INSERT INTO f(v) VALUES(?)", "after"]])).assert_ok();
}

/// A leader killed and restarted while the others are frozen does not take its old term's
/// leadership back: it leads again only after winning an election in a newer term, and a write
/// that changes nothing is not answered meanwhile. openraft restores a restarted leader's
/// leadership by default, which `keel-chaos` showed unsafe three ways: a restored leader
/// answered a failed compare-and-set from a stale copy (seed 112), gave a linearizable read a
/// stale read index taken from its unsynced committed-index hint (seed 4003), and, having lost
/// an unsynced entry that a learner held, wrote a different entry at the same term and index,
/// which the learner kept as the one it had (seed 4021: replicas differed).
#[test]
fn a_restarted_leader_leads_again_only_in_a_new_term() {
    let c = TestCluster::start_with(3, 0, &["--sync-timeout", "1s"]);
    let old = c.leader();
    c.execute_ok(old, json!(["CREATE TABLE r (k INTEGER PRIMARY KEY, v INTEGER)"]));
    c.execute_ok(old, json!(["INSERT INTO r VALUES(1, 1)"]));
    let term = c.status(old).node.term;
    let others: Vec<_> = c.ids().into_iter().filter(|&id| id != old).collect();
    for &id in &others {
        c.pause(id);
    }
    c.kill(old);
    // Not ready (no quorum answers it), so wait only until it answers.
    c.restart_answering(old);
    // For two seconds, about twenty election timeouts, it answers and never as the leader: the
    // old term's leadership is not restored, and no peer can vote it a new one.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if let Some(status) = c.try_status(old) {
            assert_ne!(
                status.node.role,
                Role::Leader,
                "node {old} leads term {} again without an election (it led term {term})",
                status.node.term
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.get(old, "/readyz").status, 503);
    // A write that would change nothing is not answered either.
    let answer =
        c.try_execute(old, "timeout=1s", &json!(["UPDATE r SET v = 3 WHERE k = 1 AND v = 2"]));
    if let Ok(response) = answer {
        panic!("a write was answered with no leader: {:?}", response.0);
    }
    for &id in &others {
        c.resume(id);
    }
    let (leader, now) = wait_for(TIMEOUT, "a leader", || {
        let leader = c.leader();
        Some((leader, c.try_status(leader)?.node.term))
    });
    assert!(now > term, "node {leader} leads term {now}, not newer than term {term}");
    c.execute_ok(leader, json!(["UPDATE r SET v = 2 WHERE k = 1"]));
    assert_eq!(c.rows(leader, "SELECT v FROM r WHERE k = 1"), vec![vec![json!(2)]]);
    c.assert_consistent();
}
