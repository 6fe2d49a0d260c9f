//! `keel check`: replica checksums at one log index, against real nodes. A row changed by hand
//! in one follower's database file is found (that node, that table, that key, exit 1) and
//! `keel admin rebuild` repairs it; checks under a write load find nothing (exit 0).
//!
//! The apply hash beside it: it does not see the hand-made change (the record path was the
//! same), and it flags a node whose record path differs (a planted fault) while `keel check`,
//! which reads the data, finds nothing; under the write load it finds nothing either.
//!
//! Pipelined writes (batches speculated on top of batches in flight, the leader committing
//! them together) leave every replica identical, with every acknowledged write on each.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use integration_tests::{TestCluster, keel_binary};
use serde_json::json;

/// Runs `keel check` against node `via`; returns its exit code and standard output.
fn keel_check(c: &TestCluster, via: u64, extra: &[&str]) -> (i32, String) {
    let output = Command::new(keel_binary())
        .arg("check")
        .arg("--cluster")
        .arg(format!("http://{}", c.http_addr(via)))
        .args(extra)
        .output()
        .expect("running keel check");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), format!("{stdout}\n(stderr: {stderr})"))
}

/// Waits (up to 20 s) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The live database file of node `id` (`db/CURRENT` names it).
fn database_file(c: &TestCluster, id: u64) -> std::path::PathBuf {
    let db = c.data_dir(id).join("db");
    let current = std::fs::read_to_string(db.join("CURRENT")).expect("db/CURRENT");
    db.join(current.trim())
}

#[test]
fn a_row_changed_by_hand_is_found() {
    let c = TestCluster::start(3, 1);
    let leader = c.leader();
    let lsn = c.execute_ok(
        leader,
        json!([
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v)",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) INSERT INTO t SELECT i, 'v' || i FROM n",
            "CREATE TABLE other (k TEXT PRIMARY KEY) WITHOUT ROWID",
            "INSERT INTO other VALUES ('a'), ('b')"
        ]),
    );
    c.wait_all_applied(lsn);
    let (code, out) = keel_check(&c, leader, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("t: ok (3000 rows"), "{out}");

    // An operator edits one follower's file while it is stopped: an INTEGER becomes a REAL
    // of the same value, which only an exact checksum tells apart.
    let victim = c.followers(leader)[0];
    c.stop(victim);
    // Through Keel's page-checksum VFS, as any tool editing a Keel database must: the change is
    // a real one, not damage, so the pages it writes carry their checksums.
    sql::pagesum::register().unwrap();
    let conn = rusqlite::Connection::open(database_file(&c, victim)).unwrap();
    assert_eq!(conn.execute("UPDATE t SET v = 2.0 WHERE id = 2345", []).unwrap(), 1);
    drop(conn);
    c.restart(victim);
    c.wait_all_applied(lsn);

    // The apply hash does not see it: the edited node applied the same entries as the leader.
    // With the other follower stopped, every report the leader compares is the victim's.
    let other = c.followers(leader).into_iter().find(|&id| id != victim).unwrap();
    c.stop(other);
    let compared = c.metric(leader, "keel_apply_hash_compared_total");
    let next = c.execute_ok(leader, json!(["INSERT INTO other VALUES ('c')"]));
    c.wait_applied(victim, next);
    wait_until("the leader compared the edited node's report", || {
        c.metric(leader, "keel_apply_hash_compared_total") > compared
    });
    assert_eq!(c.metric(leader, "keel_apply_hash_mismatches_total"), 0.0);
    assert_eq!(c.status(victim).divergence, None, "the apply hash saw no difference");
    c.restart(other);
    c.wait_all_applied(next);

    let (code, out) = keel_check(&c, leader, &["--chunk-rows", "500"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("t: DIFFERENT in 1 of 7 chunks"), "{out}");
    assert!(out.contains(&format!("node(s) [{victim}]: keys after 2000 through 2500")), "{out}");
    assert!(out.contains("differing keys: 2345"), "{out}");
    assert!(out.contains("other: ok (3 rows"), "{out}");

    // The node remembers it, across a restart, until rebuilt; the others agree.
    c.restart(victim);
    let divergence = c.status(victim).divergence.expect("the changed node says so");
    assert_eq!(divergence.tables, vec!["t".to_string()]);
    for id in c.ids().into_iter().filter(|&id| id != victim) {
        assert_eq!(c.status(id).divergence, None, "node {id}");
    }
    let metrics = c.get(leader, "/metrics").body;
    assert!(metrics.contains("keel_check_mismatches_total 1"), "{metrics}");

    // A member is never told to forget its log and votes while it keeps its seat.
    let join = json!({ "join": [format!("http://{}", c.http_addr(leader))] }).to_string();
    let refused = c.post_raw(victim, "/admin/rebuild", "application/json", join);
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(refused.text().contains("still a member"), "{}", refused.text());

    // The repair is one command: the node leaves, deletes its data, rejoins from the leader.
    let rebuilt = Command::new(keel_binary())
        .args(["admin", "--cluster", &format!("http://{}", c.http_addr(leader))])
        .args(["rebuild", "--node", &victim.to_string()])
        .output()
        .expect("running keel admin rebuild");
    let said = String::from_utf8_lossy(&rebuilt.stdout).into_owned();
    assert!(rebuilt.status.success(), "{said} {}", String::from_utf8_lossy(&rebuilt.stderr));
    assert!(said.contains(&format!("node {victim} rebuilt")), "{said}");
    assert_eq!(c.status(victim).divergence, None, "a rebuilt node starts clean");
    let (code, out) = keel_check(&c, leader, &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(c.rows(victim, "SELECT v FROM t WHERE id = 2345"), vec![vec![json!("v2345")]]);
}

#[test]
fn checks_under_writes_find_nothing() {
    let c = TestCluster::start(3, 1);
    let leader = c.leader();
    c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, client, v)"]));
    let url = format!("http://{}/db/execute", c.http_addr(leader));
    let http = reqwest::blocking::Client::new();
    let stop = AtomicBool::new(false);
    let duration = Duration::from_secs(
        std::env::var("KEEL_CHECK_LOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60),
    );
    let (checks, writes) = std::thread::scope(|s| {
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let (http, url, stop) = (&http, &url, &stop);
                s.spawn(move || {
                    let mut ok = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // Inserts and updates of rows other writers also touch.
                        let body = json!([
                            ["INSERT INTO t (client, v) VALUES (?, ?)", w, ok],
                            ["UPDATE t SET v = v + 1 WHERE id % 16 = ?", w]
                        ]);
                        if http.post(url).json(&body).send().is_ok_and(|r| r.status().is_success())
                        {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let started = Instant::now();
        let mut checks = 0;
        while started.elapsed() < duration {
            let (code, out) = keel_check(&c, leader, &["--chunk-rows", "200", "--max-rate", "0"]);
            assert_eq!(code, 0, "check {checks} under load: {out}");
            checks += 1;
        }
        stop.store(true, Ordering::Relaxed);
        (checks, writers.into_iter().map(|w| w.join().unwrap()).sum::<u64>())
    });
    println!("{checks} checks, 0 mismatches, during {writes} writes in {duration:?}");
    assert!(checks >= 3 && writes >= 100, "{checks} checks during {writes} writes");
    // The apply hash compared the followers' reports all along and found nothing either.
    assert!(c.metric(leader, "keel_apply_hash_compared_total") > 0.0);
    assert_eq!(c.metric(leader, "keel_apply_hash_mismatches_total"), 0.0);
    for id in c.ids() {
        assert_eq!(c.status(id).divergence, None, "node {id}");
    }
}

#[test]
fn a_node_whose_record_path_differs_is_flagged_by_the_apply_hash() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let lsn = c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v)"]));
    c.wait_all_applied(lsn);
    assert_eq!(c.metric(leader, "keel_apply_hash_mismatches_total"), 0.0);

    // One follower records its apply hash as if it had applied an entry differently; its data
    // stays right.
    let victim = c.followers(leader)[0];
    c.restart_with(victim, &["--unsafe-plant-bug", "skew-apply-hash"]);
    let lsn = c.execute_ok(leader, json!([["INSERT INTO t VALUES (1, 'a')"]]));
    c.wait_all_applied(lsn);
    wait_until("the victim to say it diverged", || c.status(victim).divergence.is_some());
    let divergence = c.status(victim).divergence.unwrap();
    let mismatch = divergence.apply_hash.clone().expect("found by the apply hash");
    assert_eq!(mismatch.leader, leader);
    assert_ne!(mismatch.leader_hash, mismatch.node_hash);
    assert!(divergence.tables.is_empty(), "{divergence:?}");
    assert_eq!(c.metric(leader, "keel_apply_hash_mismatches_total"), 1.0);
    for id in c.ids().into_iter().filter(|&id| id != victim) {
        assert_eq!(c.status(id).divergence, None, "node {id}");
    }
    let log = std::fs::read_to_string(c.dir().join(format!("node{leader}.log"))).unwrap();
    assert!(log.contains("apply hash mismatch"), "the leader logs it");

    // The data is the same everywhere, so a table check finds nothing: the two mechanisms see
    // different things.
    let (code, out) = keel_check(&c, leader, &[]);
    assert_eq!(code, 0, "{out}");
    // The node remembers it across a restart (without the fault), until rebuilt.
    c.restart(victim);
    assert!(c.status(victim).divergence.is_some_and(|d| d.apply_hash.is_some()));
}

#[test]
fn pipelined_writes_leave_the_replicas_identical() {
    let c = TestCluster::start_with(3, 1, &["--write-pipeline", "3"]);
    let leader = c.leader();
    c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, client, n, v)"]));
    let url = format!("http://{}/db/execute", c.http_addr(leader));
    let http = reqwest::blocking::Client::new();
    let stop = AtomicBool::new(false);
    // Until enough batches were stacked on batches in flight (with a deadline).
    // (On a loaded machine batches are few: 129 in 60 s once, 76 of them stacked.)
    let enough = 100.0;
    let started = Instant::now();
    let acked: Vec<u64> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let (http, url, stop) = (&http, &url, &stop);
                s.spawn(move || {
                    let mut acked = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // A new row, and an update of this client's previous one: each batch
                        // depends on the ones before it.
                        let body = json!([
                            ["INSERT INTO t (client, n, v) VALUES (?, ?, random())", w, acked],
                            [
                                "UPDATE t SET v = v + 1 WHERE client = ? AND n = ?",
                                w,
                                acked.max(1) - 1
                            ]
                        ]);
                        let ok = http
                            .post(url)
                            .json(&body)
                            .send()
                            .is_ok_and(|r| r.status().is_success());
                        assert!(ok, "writer {w}: write {acked} failed");
                        acked += 1;
                    }
                    acked
                })
            })
            .collect();
        while c.metric(leader, "keel_write_batches_stacked_total") < enough {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "only {} of {} batches were stacked within 120 s",
                c.metric(leader, "keel_write_batches_stacked_total"),
                c.metric(leader, "keel_write_batches_total")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let total: u64 = acked.iter().sum();
    println!(
        "{total} writes, {} batches, {} stacked",
        c.metric(leader, "keel_write_batches_total"),
        c.metric(leader, "keel_write_batches_stacked_total")
    );
    // Every acknowledged write is on every node (read-your-writes on the leader included).
    let lsn = c.execute_ok(leader, json!(["INSERT INTO t (client, n) VALUES (-1, 0)"]));
    for id in c.ids() {
        c.wait_applied(id, lsn);
        for (w, &n) in acked.iter().enumerate() {
            let rows = c.rows(id, &format!("SELECT count(*) FROM t WHERE client = {w}"));
            assert_eq!(rows, vec![vec![json!(n)]], "node {id}, writer {w}");
        }
    }
    let (code, out) = keel_check(&c, leader, &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(c.metric(leader, "keel_apply_hash_mismatches_total"), 0.0);
}
