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
        c.status(old).node.leader_id,
        Some(leader),
        "the restarted node follows the current leader"
    );
}

/// Kill -9 the leader while writers are inserting: every write acknowledged before and after
/// the crash is on every surviving node, and a writer that retries with its request id never
/// gives up on a write and never applies one twice.
#[test]
fn leader_killed_under_write_load_loses_no_acknowledged_write() {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    let c = TestCluster::start(3, 0);
    let old = c.leader();
    c.execute_ok(old, json!(["CREATE TABLE w (n INTEGER NOT NULL)"]));
    let stop = AtomicBool::new(false);
    let acked: Mutex<BTreeSet<i64>> = Mutex::new(BTreeSet::new());
    let count = || acked.lock().unwrap().len();
    let ids = c.ids();
    let writer = |w: i64| {
        let mut n = w * 1_000_000;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let insert = json!([["INSERT INTO w(n) VALUES(?)", n]]);
            // Retry the same write (same request id) through the live nodes until it lands.
            let mut attempt = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let to = ids[(n as usize + attempt) % ids.len()];
                attempt += 1;
                if let Ok(r) = c.try_execute(to, &format!("request_id=k{n}"), &insert) {
                    r.assert_ok();
                    acked.lock().unwrap().insert(n);
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    };
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..4).map(|w| s.spawn(move || writer(w))).collect();
        let wait_more = |what: &str| {
            let goal = count() + 40;
            integration_tests::wait_for(integration_tests::TIMEOUT, what, || {
                (count() >= goal).then_some(())
            });
        };
        wait_more("writes before the crash");
        c.kill(old);
        wait_more("writes after the crash");
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().expect("writer thread");
        }
    });
    let new = c.leader();
    assert_ne!(new, old);
    let acked = acked.into_inner().unwrap();
    let lsn = c.execute_ok(new, json!(["SELECT 1"]));
    for id in c.ids().into_iter().filter(|id| *id != old) {
        c.wait_applied(id, lsn);
        let rows = c.rows(id, "SELECT n FROM w");
        let present: BTreeSet<i64> = rows.iter().filter_map(|r| r[0].as_i64()).collect();
        let lost: Vec<&i64> = acked.difference(&present).collect();
        assert!(lost.is_empty(), "node {id} lost acknowledged writes {lost:?}");
        assert_eq!(rows.len(), present.len(), "node {id}: a retried write was applied twice");
    }
    c.restart(old);
    c.assert_consistent();
}

/// A write forwarded to a leader that freezes (SIGSTOP: its sockets stay open, nothing
/// answers) is not left waiting for the whole forward timeout. Without a request id its
/// outcome is unknown, and the follower says so in about an election; with one, the follower
/// sends it again to the leader elected next, where it is applied once.
#[test]
fn a_write_forwarded_to_a_frozen_leader_fails_fast_or_is_rerouted() {
    // A long election timeout keeps the follower sure of the frozen leader while the writes
    // are forwarded to it.
    let c = TestCluster::start_with(3, 0, &["--election-timeout", "2s"]);
    let old = c.leader();
    c.execute_ok(old, json!(["CREATE TABLE f (id INTEGER PRIMARY KEY, v TEXT)"]));
    let follower = c.followers(old)[0];
    c.pause(old);

    let (plain, with_id) = std::thread::scope(|s| {
        let plain = s.spawn(|| {
            let started = std::time::Instant::now();
            let body = json!(["INSERT INTO f VALUES (1, 'plain')"]).to_string();
            (c.post(follower, "/db/execute", body), started.elapsed())
        });
        let with_id = s.spawn(|| {
            let body = json!(["INSERT INTO f VALUES (2, 'with id')"]).to_string();
            c.post(follower, "/db/execute?request_id=frozen-1", body)
        });
        (plain.join().expect("plain write"), with_id.join().expect("write with an id"))
    });
    let (plain, waited) = plain;
    assert_eq!(plain.status, 503, "{}", plain.body);
    assert!(plain.body.contains("may or may not have been applied"), "{}", plain.body);
    // The election timeout (2 s) plus a second of silence, or a new leader, whichever comes
    // first; the forward timeout is 30 s.
    assert!(waited < std::time::Duration::from_secs(10), "answered after {waited:?}");
    assert_eq!(with_id.status, 200, "{}", with_id.body);

    let new = c.leader();
    assert_ne!(new, old);
    c.resume(old);
    let lsn = c.execute_ok(new, json!(["INSERT INTO f VALUES (3, 'after')"]));
    c.wait_applied(new, lsn);
    assert_eq!(
        c.rows(new, "SELECT id FROM f WHERE id >= 2 ORDER BY id"),
        vec![vec![json!(2)], vec![json!(3)]]
    );
}

/// A write that reaches a follower whose leader is gone already (not heard from for the
/// election timeout plus a second) is not forwarded: nothing was sent, so the follower says at
/// once that it was not applied, instead of forwarding it and then calling its outcome unknown.
/// Two of three nodes are frozen, so no new leader can be elected and the follower keeps
/// naming the frozen one.
#[test]
fn a_write_to_a_follower_whose_leader_is_gone_is_refused_at_once_as_not_applied() {
    let c = TestCluster::start(3, 0);
    let old = c.leader();
    c.execute_ok(old, json!(["CREATE TABLE g (id INTEGER PRIMARY KEY)"]));
    let followers = c.followers(old);
    let (alone, other) = (followers[0], followers[1]);
    // The other follower first: the leader keeps its quorum until it is frozen too.
    c.pause(other);
    c.pause(old);
    integration_tests::wait_for(
        integration_tests::TIMEOUT,
        format!("node {alone} to find leader {old} not contactable"),
        || {
            let r = c.get(alone, "/readyz");
            (r.status == 503 && r.body.contains("leader not contactable")).then_some(())
        },
    );

    let started = std::time::Instant::now();
    let plain = c.post(alone, "/db/execute", json!(["INSERT INTO g VALUES (1)"]).to_string());
    let waited = started.elapsed();
    assert_eq!(plain.status, 503, "{}", plain.body);
    let error = plain.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("no leader is reachable"), "{error}");
    assert!(error.contains("not applied") && error.contains("nothing was written"), "{error}");
    assert!(!error.contains("may or may not"), "{error}");
    // No forward, no wait for an election: the forward timeout is 30 s, the wait for a leader 3 s.
    assert!(waited < std::time::Duration::from_secs(2), "answered after {waited:?}");

    c.resume(old);
    c.resume(other);
    let leader = c.leader();
    let lsn = c.execute_ok(leader, json!(["INSERT INTO g VALUES (2)"]));
    c.wait_all_applied(lsn);
    for id in c.ids() {
        assert_eq!(c.rows(id, "SELECT id FROM g"), vec![vec![json!(2)]], "node {id}");
    }
}

/// The sum of `keel_prompt_elections_total` over the nodes `ids`.
fn prompt_elections(c: &TestCluster, ids: &[u64]) -> f64 {
    ids.iter().map(|&id| c.metric(id, "keel_prompt_elections_total")).sum()
}

/// A leader that crashes takes its replication streams with it: the survivors ask for an
/// election as soon as its lease has run out (`raft::prompt_election`), not an election
/// timeout later, and count it. A leader that only freezes keeps its streams open, so nobody
/// asks early; openraft's own timer replaces it.
#[test]
fn a_crashed_leader_is_replaced_by_a_prompt_election_and_a_frozen_one_is_not() {
    let c = TestCluster::start(3, 0);
    let frozen = c.leader();
    c.execute_ok(frozen, json!(["CREATE TABLE f (id INTEGER PRIMARY KEY, v TEXT)"]));
    let others = c.followers(frozen);
    c.pause(frozen);
    // Asked of the two others only: a frozen node answers nothing until its client times out.
    let new = integration_tests::wait_for(integration_tests::TIMEOUT, "a new leader", || {
        others.iter().copied().find(|&id| {
            c.try_status(id).is_some_and(|s| s.node.role == integration_tests::Role::Leader)
        })
    });
    assert_eq!(prompt_elections(&c, &others), 0.0, "a frozen leader's streams stay open");
    c.resume(frozen);
    integration_tests::wait_for(integration_tests::TIMEOUT, "the resumed node to follow", || {
        let status = c.try_status(frozen)?;
        (status.node.leader_id == Some(new)).then_some(())
    });
    c.execute_ok(new, json!(["INSERT INTO f VALUES (1, 'before the crash')"]));

    let survivors = c.followers(new);
    let before = prompt_elections(&c, &survivors);
    c.kill(new);
    let next = c.leader();
    assert_ne!(next, new);
    assert!(
        prompt_elections(&c, &survivors) > before,
        "the survivors of a crashed leader asked for an election once its lease ran out"
    );
    let lsn = c.execute_ok(next, json!(["INSERT INTO f VALUES (2, 'after the crash')"]));
    c.wait_applied(next, lsn);
    assert_eq!(c.rows(next, "SELECT count(*) FROM f"), vec![vec![json!(2)]]);
}
