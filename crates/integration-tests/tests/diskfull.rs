//! A full disk does not stop a node. Every node's data directory is a tmpfs of its own, and a
//! balloon file fills one of them:
//!
//! * the leader's: writes answer 507 saying the disk is full and nothing was written (also
//!   when sent to a follower, which forwards them), reads go on, `/readyz` and `/status` say
//!   why, and the node stays up; once the balloon is gone, writes succeed again without a
//!   restart, and every write acknowledged before, during and after is there;
//! * one follower's: writes keep succeeding (semi-sync with the other voter), the full
//!   follower refuses the appends and stays up; once space returns it catches up by itself and
//!   `keel check` finds every replica identical;
//! * both followers': once the leader has seen them refuse, writes answer 507 naming them
//!   (no majority can take a write, and nothing was written); once space returns, writes
//!   succeed again and the write caught in between lands.
//!
//! Mounting needs root (CI runs as root); without it each test says so loudly and checks
//! nothing.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use integration_tests::{Level, NodeId, TIMEOUT, TestCluster, keel_binary, tmpfs, wait_for};
use serde_json::{Value, json};

/// Each node's file system: small, so a balloon fills it at once.
const TMPFS: &str = "96m";
/// Flags of every node: a reserve that fits the small disk, and short waits.
const FLAGS: &[&str] = &["--disk-reserve", "8MiB", "--sync-timeout", "2s"];

/// A cluster of three voters on tmpfs, or `None` (said loudly) when this machine cannot mount.
fn cluster(test: &str) -> Option<TestCluster> {
    if let Err(why) = tmpfs::available() {
        eprintln!("\n\n*** SKIPPED {test}: cannot mount a tmpfs ({why}); run as root ***\n\n");
        return None;
    }
    let c = TestCluster::start_on_tmpfs(3, 0, FLAGS, TMPFS);
    c.execute_ok(c.leader(), json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));
    Some(c)
}

/// An insert of `v`.
fn insert(v: &str) -> Value {
    json!([["INSERT INTO t (v) VALUES (?)", v]])
}

/// Every `v` in `t`, read from node `id` at `level`.
fn values(c: &TestCluster, id: NodeId, level: Level) -> BTreeSet<String> {
    c.query(id, "SELECT v FROM t", level)
        .rows(0)
        .into_iter()
        .map(|row| row[0].as_str().expect("v is text").to_string())
        .collect()
}

/// Waits until node `id`'s `/status` says its disk is `full` (or not).
fn wait_disk(c: &TestCluster, id: NodeId, full: bool) {
    wait_for(TIMEOUT, format!("node {id}'s /status to say disk full = {full}"), || {
        c.try_status(id).and_then(|s| s.disk).filter(|d| d.full == full).map(drop)
    });
}

/// Writes `prefix-N` to node `id` until `stop`, returning the values acknowledged (200).
fn write_until(c: &TestCluster, id: NodeId, prefix: &str, stop: &AtomicBool) -> BTreeSet<String> {
    let mut acked = BTreeSet::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let v = format!("{prefix}-{n}");
        if c.try_execute(id, "", &insert(&v)).is_ok() {
            acked.insert(v);
        }
    }
    acked
}

#[test]
fn a_full_leader_refuses_writes_keeps_reading_and_resumes_by_itself() {
    let Some(c) = cluster("a_full_leader_refuses_writes_keeps_reading_and_resumes_by_itself")
    else {
        return;
    };
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    let pid = c.pid(leader);

    // Fill the leader's disk while a client writes: writes in flight then either land or are
    // refused, and none that was acknowledged may be lost.
    let stop = AtomicBool::new(false);
    let mut acked = std::thread::scope(|s| {
        let writer = s.spawn(|| write_until(&c, leader, "during", &stop));
        wait_for(TIMEOUT, "a few writes before the disk fills", || {
            c.try_status(leader).filter(|s| s.node.applied_index > 10).map(drop)
        });
        c.fill_disk(leader);
        wait_disk(&c, leader, true);
        stop.store(true, Ordering::Relaxed);
        writer.join().expect("the writer thread")
    });
    assert!(!acked.is_empty(), "some writes were acknowledged before the disk filled");

    // Writes are refused with 507, on the leader and through a follower, and say why.
    for via in [leader, follower] {
        let reply = c.post(via, "/db/execute", insert("refused").to_string());
        assert_eq!(reply.status, 507, "a write through node {via}: {}", reply.body);
        let error = reply.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("the disk is full"), "{error}");
        assert!(error.contains("nothing was written"), "{error}");
    }
    // Reads go on, at every level that the leader serves.
    for level in [Level::None, Level::Weak, Level::Linearizable] {
        assert_eq!(values(&c, leader, level), acked, "a {level:?} read on the leader");
    }
    let ready = c.get(leader, "/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("disk full"), "{}", ready.body);
    let disk = c.status(leader).disk.expect("/status has a disk section");
    assert!(disk.full && disk.refused_writes >= 2, "{disk:?}");
    let metrics = c.get(leader, "/metrics").body;
    assert!(metrics.contains("keel_disk_full 1"), "keel_disk_full in:\n{metrics}");
    c.assert_alive(leader);

    // Space returns: the same process takes writes again.
    c.free_disk(leader);
    wait_disk(&c, leader, false);
    let lsn = c.execute_ok(leader, insert("after"));
    acked.insert("after".to_string());
    assert_eq!(c.pid(leader), pid, "the leader was not restarted");
    c.wait_all_applied(lsn);
    assert!(!values(&c, leader, Level::None).contains("refused"), "a refused write was applied");
    assert!(
        values(&c, leader, Level::Linearizable).is_superset(&acked),
        "an acknowledged write is lost"
    );
    c.assert_consistent();
    c.assert_all_alive();
}

#[test]
fn a_full_follower_does_not_stop_the_cluster_and_catches_up_by_itself() {
    let Some(c) = cluster("a_full_follower_does_not_stop_the_cluster_and_catches_up_by_itself")
    else {
        return;
    };
    let leader = c.leader();
    let full = c.followers(leader)[0];
    c.execute_ok(leader, insert("before"));
    c.fill_disk(full);
    wait_disk(&c, full, true);

    // Semi-sync goes on with the other voter: every write succeeds, promptly.
    let mut acked = BTreeSet::from(["before".to_string()]);
    for n in 0..50 {
        let v = format!("while-full-{n}");
        c.execute_ok(leader, insert(&v));
        acked.insert(v);
    }
    wait_for(TIMEOUT, "the full follower to refuse appends", || {
        c.try_status(full).and_then(|s| s.disk).filter(|d| d.refused_appends > 0).map(drop)
    });
    let behind = c.status(full).node.applied_index;
    assert!(behind < c.status(leader).node.commit_index, "the full follower fell behind");
    // It still serves reads of what it has.
    assert!(values(&c, full, Level::None).contains("before"));
    c.assert_alive(full);

    // Space returns: it catches up by itself, and every replica is the same.
    c.free_disk(full);
    wait_disk(&c, full, false);
    let lsn = c.execute_ok(leader, insert("after"));
    acked.insert("after".to_string());
    c.wait_applied(full, lsn);
    assert_eq!(values(&c, full, Level::None), acked);
    c.assert_consistent();
    let check = Command::new(keel_binary())
        .arg("check")
        .arg("--cluster")
        .arg(format!("http://{}", c.http_addr(leader)))
        .args(["--wait", "10s"])
        .output()
        .expect("running keel check");
    assert_eq!(
        check.status.code(),
        Some(0),
        "keel check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    c.assert_all_alive();
}

#[test]
fn writes_no_majority_can_take_are_refused_507_and_resume_by_themselves() {
    let Some(c) = cluster("writes_no_majority_can_take_are_refused_507_and_resume_by_themselves")
    else {
        return;
    };
    let leader = c.leader();
    let followers = c.followers(leader);
    c.execute_ok(leader, insert("before"));
    for &f in &followers {
        c.fill_disk(f);
    }
    for &f in &followers {
        wait_disk(&c, f, true);
    }

    // The first write after the disks filled is appended on the leader alone and waits; its
    // outcome is unknown when it times out. Once the followers have refused it, writes are
    // refused before anything is written: 507, naming the full voters.
    let mut n = 0;
    let refusal = wait_for(TIMEOUT, "a write refused with 507", || {
        n += 1;
        let reply = c.post(leader, "/db/execute", insert(&format!("try-{n}")).to_string());
        (reply.status == 507).then_some(reply)
    });
    let refused = format!("try-{n}");
    let error = refusal.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("no majority of the 3 voters can take a write"), "{error}");
    assert!(error.contains("nothing was written"), "{error}");
    for f in &followers {
        assert!(error.contains(&f.to_string()), "{error} names node {f}");
    }
    // Through a follower, too (it forwards to the leader).
    let reply = c.post(followers[0], "/db/execute", insert("refused").to_string());
    assert_eq!(reply.status, 507, "{}", reply.body);
    c.assert_all_alive();

    // Space returns: writes succeed again without a restart, and no refused write landed.
    for &f in &followers {
        c.free_disk(f);
    }
    let lsn = wait_for(TIMEOUT, "a write to succeed again", || {
        c.try_execute(leader, "", &insert("after")).ok().map(|r| r.assert_ok().lsn())
    });
    c.wait_all_applied(lsn);
    let stored = values(&c, leader, Level::Linearizable);
    assert!(stored.contains("before") && stored.contains("after"), "{stored:?}");
    assert!(!stored.contains("refused"), "a write answered 507 was applied: {stored:?}");
    assert!(!stored.contains(&refused), "a write answered 507 was applied: {stored:?}");
    c.assert_consistent();
}
