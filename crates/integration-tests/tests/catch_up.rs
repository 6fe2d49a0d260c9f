//! A follower that misses writes (stopped, or frozen) catches up once it is back, while the rest
//! of the cluster keeps acknowledging writes without it.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use integration_tests::{NodeId, TIMEOUT, TestCluster, wait_for};
use serde_json::json;

/// Acknowledged writes the test waits for in each phase (before, during and after the outage).
const WRITES_PER_PHASE: usize = 20;

/// A writer thread inserts numbered rows through the leader and the follower that stays up,
/// while the other follower is stopped (SIGTERM) and restarted. Every acknowledged row is on
/// every node afterwards, no row appears that was never sent, and the dumps are identical.
#[test]
fn follower_restarted_under_write_load_catches_up() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let followers = c.followers(leader);
    let (restarted, steady) = (followers[0], followers[1]);
    c.execute_ok(
        leader,
        json!(["CREATE TABLE load (id INTEGER PRIMARY KEY, n INT NOT NULL UNIQUE)"]),
    );

    let stop = AtomicBool::new(false);
    let acked: Mutex<BTreeSet<i64>> = Mutex::new(BTreeSet::new());
    let acked_count = || acked.lock().unwrap().len();
    let wait_for_more = |phase: &str| {
        let target = acked_count() + WRITES_PER_PHASE;
        wait_for(TIMEOUT, format!("{WRITES_PER_PHASE} acknowledged writes {phase}"), || {
            (acked_count() >= target).then_some(())
        });
    };

    let sent = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let targets: [NodeId; 2] = [leader, steady];
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let target = targets[usize::try_from(n).unwrap() % targets.len()];
                // A failed or unanswered write is neither required nor forbidden on the nodes.
                if let Ok(response) =
                    c.try_execute(target, "", &json!([["INSERT INTO load(n) VALUES(?)", n]]))
                    && response.error(0).is_none()
                {
                    acked.lock().unwrap().insert(n);
                }
            }
            n
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for_more("before the restart");
            c.stop(restarted);
            wait_for_more("while a follower is down");
            c.restart(restarted);
            wait_for_more("after the restart");
        }));
        stop.store(true, Ordering::Relaxed);
        let sent = writer.join().expect("writer thread panicked");
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        sent
    });

    c.assert_consistent();
    let acked = acked.into_inner().unwrap();
    assert!(acked.len() >= 3 * WRITES_PER_PHASE);
    for id in c.ids() {
        let present: BTreeSet<i64> = c
            .rows(id, "SELECT n FROM load")
            .iter()
            .map(|row| row[0].as_i64().expect("n is an integer"))
            .collect();
        let lost: Vec<&i64> = acked.difference(&present).collect();
        assert!(lost.is_empty(), "node {id} lost acknowledged writes {lost:?}");
        assert!(
            present.iter().all(|n| (1..=sent).contains(n)),
            "node {id} has rows that were never sent"
        );
    }
}

/// A follower frozen with SIGSTOP holds its sockets but answers nothing: the other two voters
/// still commit, and once thawed the follower catches up.
#[test]
fn paused_follower_catches_up_after_resume() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let paused = c.followers(leader)[0];
    c.execute_ok(leader, json!(["CREATE TABLE p (id INTEGER PRIMARY KEY, v TEXT)"]));

    c.pause(paused);
    // Each write must be acknowledged by the two voters that still answer.
    let mut lsn = 0;
    for i in 0..20 {
        lsn = c.execute_ok(leader, json!([["INSERT INTO p(v) VALUES(?)", format!("row {i}")]]));
    }
    c.resume(paused);

    c.wait_applied(paused, lsn);
    c.assert_consistent();
    assert_eq!(c.rows(paused, "SELECT count(*) FROM p"), vec![vec![json!(20)]]);
}
