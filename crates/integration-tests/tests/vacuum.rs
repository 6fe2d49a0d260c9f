//! `VACUUM` through the log (`POST /admin/vacuum`, `keel admin vacuum`,
//! `--auto-vacuum-interval`): every replica runs it at the same log position, gives its free
//! pages back, and renumbers the rowids of tables with neither an INTEGER PRIMARY KEY nor an
//! index the same way, so later changes keyed by those rowids keep replicating.

use std::process::Command;

use integration_tests::{NodeId, TIMEOUT, TestCluster, keel_binary, wait_for};
use serde_json::{Value, json};

/// A table without primary key or index (`bare`, rowids renumbered by VACUUM) and one with an
/// INTEGER PRIMARY KEY (`keyed`, kept), 3,000 rows each of which all but every third are
/// deleted. Returns the last write's index.
fn fill_and_thin(c: &TestCluster) -> u64 {
    let leader = c.leader();
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE bare (n INTEGER, pad BLOB)",
            "CREATE TABLE keyed (id INTEGER PRIMARY KEY, pad BLOB)",
            "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 3000) INSERT INTO bare SELECT x, zeroblob(600) FROM s",
            "INSERT INTO keyed SELECT n, pad FROM bare",
        ]),
    );
    c.execute_ok(
        leader,
        json!(["DELETE FROM bare WHERE n % 3 != 0", "DELETE FROM keyed WHERE id % 3 != 0"]),
    )
}

/// Node `id`'s free pages, from `/status`.
fn free_pages(c: &TestCluster, id: NodeId) -> u64 {
    let status = c.get(id, "/status").json();
    status["store"]["sqlite3"]["freelist_count"].as_u64().expect("freelist_count")
}

/// `(rowid, n)` of `bare` on node `id`, in rowid order.
fn bare_rows(c: &TestCluster, id: NodeId) -> Vec<Vec<Value>> {
    c.rows(id, "SELECT rowid, n FROM bare ORDER BY rowid")
}

#[test]
fn vacuum_runs_on_every_replica_at_one_position() {
    let c = TestCluster::start(3, 0);
    let lsn = fill_and_thin(&c);
    c.wait_all_applied(lsn);
    for id in c.ids() {
        assert!(free_pages(&c, id) > 500, "node {id}: free pages before VACUUM");
        assert_eq!(bare_rows(&c, id)[0], vec![json!(3), json!(3)], "node {id}: rowids before");
    }
    // Through a follower, which forwards it to the leader.
    let follower = c.followers(c.leader())[0];
    let answer = c.post(follower, "/admin/vacuum", "");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = answer.json();
    let at = answer["lsn"].as_u64().expect("lsn");
    assert!(at > lsn, "{answer}");
    c.wait_all_applied(at);
    let expected: Vec<Vec<Value>> = (1..=1000).map(|i| vec![json!(i), json!(3 * i)]).collect();
    for id in c.ids() {
        assert_eq!(free_pages(&c, id), 0, "node {id}: free pages after VACUUM");
        assert_eq!(bare_rows(&c, id), expected, "node {id}: bare's rowids renumbered");
        let kept = c.rows(id, "SELECT min(id), count(*) FROM keyed");
        assert_eq!(kept, vec![vec![json!(3), json!(1000)]], "node {id}: keyed's ids kept");
    }
    // A change keyed by a renumbered rowid reaches every replica as made on the leader.
    let lsn = c.execute_ok(c.leader(), json!(["UPDATE bare SET n = -1 WHERE rowid = 500"]));
    c.wait_all_applied(lsn);
    for id in c.ids() {
        assert_eq!(c.rows(id, "SELECT n FROM bare WHERE rowid = 500"), vec![vec![json!(-1)]]);
    }
    c.assert_consistent();
    // The command line does the same, from any member's address.
    let out = Command::new(keel_binary())
        .args(["admin", "--cluster", &format!("http://{}", c.http_addr(follower)), "vacuum"])
        .output()
        .expect("running keel admin vacuum");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("VACUUM ran at log index"), "{stdout}");
    assert_eq!(c.metric(c.leader(), "keel_vacuums_total"), 2.0);
    // Client SQL still cannot run it, and says where to go.
    let refused = c.execute(c.leader(), json!(["VACUUM"]));
    assert!(refused.error(0).is_some_and(|e| e.contains("/admin/vacuum")), "{refused:?}");
}

#[test]
fn the_leader_vacuums_when_a_quarter_of_the_file_is_free() {
    let c = TestCluster::start_with(3, 0, &["--auto-vacuum-interval", "300ms"]);
    let lsn = fill_and_thin(&c);
    c.wait_all_applied(lsn);
    for id in c.ids() {
        wait_for(TIMEOUT, format!("node {id} vacuumed"), || {
            (free_pages(&c, id) == 0).then_some(())
        });
        assert_eq!(bare_rows(&c, id)[0], vec![json!(1), json!(3)], "node {id}: renumbered");
    }
    assert!(c.metric(c.leader(), "keel_vacuums_total") >= 1.0);
    c.assert_consistent();
}

/// Eight clients write without pause (batches stacked, `--write-pipeline 3`) into both tables
/// while `VACUUM` runs: it is answered, every acknowledged insert is on every replica, and the
/// replicas are identical.
#[test]
fn vacuum_under_load_is_answered_and_loses_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let c = Arc::new(TestCluster::start_with(3, 0, &["--write-pipeline", "3"]));
    let lsn = fill_and_thin(&c);
    c.wait_all_applied(lsn);
    let leader = c.leader();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (c, stop, acked) = (c.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let n = 1_000_000 + w * 100_000 + i;
                    let sql = format!("INSERT INTO bare VALUES ({n}, NULL)");
                    if c.execute(leader, json!([sql])).error(0).is_none() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    wait_for(TIMEOUT, "writes under way", || (acked.load(Ordering::Relaxed) > 200).then_some(()));
    let started = std::time::Instant::now();
    let answer = c.post(leader, "/admin/vacuum", "");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let took = started.elapsed();
    let at = acked.load(Ordering::Relaxed);
    wait_for(TIMEOUT, "more writes after the VACUUM", || {
        (acked.load(Ordering::Relaxed) > at + 200).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let acked = acked.load(Ordering::Relaxed);
    let lsn = c.execute_ok(leader, json!(["SELECT 1"]));
    c.wait_all_applied(lsn);
    for id in c.ids() {
        let rows = c.rows(id, "SELECT count(*) FROM bare WHERE n >= 1000000");
        assert_eq!(rows, vec![vec![json!(acked)]], "node {id}: acknowledged inserts");
    }
    c.assert_consistent();
    assert!(took < std::time::Duration::from_secs(30), "VACUUM took {took:?} under load");
}
