//! Storage damaged on one node: a bit flipped in the middle of a follower's Raft log, or its
//! database file no longer a SQLite database. The node refuses to start (it neither votes nor
//! serves on state it cannot trust) and says what it found and the command that repairs it;
//! the other nodes go on taking writes; `keel admin rebuild --data-dir` removes it and deletes
//! its data (refused while it runs); started again with `--join`, it rejoins and holds every
//! row.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::{NodeId, TestCluster, keel_binary};
use serde_json::json;

/// Runs `keel admin --cluster <via> rebuild --node ID --data-dir DIR`.
fn rebuild_offline(c: &TestCluster, via: NodeId, id: NodeId, dir: &Path) -> Output {
    Command::new(keel_binary())
        .args(["admin", "--cluster", &format!("http://{}", c.http_addr(via))])
        .args(["rebuild", "--node", &id.to_string(), "--data-dir"])
        .arg(dir)
        .output()
        .expect("cannot run keel admin rebuild")
}

/// The first (oldest) segment of node `id`'s Raft log.
fn first_segment(c: &TestCluster, id: NodeId) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(c.data_dir(id).join("raft"))
        .expect("the node has a Raft log")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    segments.into_iter().next().expect("at least one segment")
}

/// A 3-node cluster with table `t`, its leader, and the follower to damage: not node 1, which
/// bootstrapped and has no `--join` of its own (the victim rejoins through its flags).
fn cluster_and_victim() -> (TestCluster, NodeId, NodeId) {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let victim = *c.followers(leader).iter().find(|&&id| id != 1).expect("a follower besides 1");
    c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"]));
    (c, leader, victim)
}

/// Starts the rebuilt `victim` again as before (its flags have `--join`): it joins anew,
/// copies the data, and after one more write holds the leader's `rows` rows of `t`.
fn rejoins_with_every_row(c: &TestCluster, leader: NodeId, victim: NodeId, rows: usize) {
    c.restart(victim);
    c.wait_joined(victim);
    let last = c.execute_ok(leader, json!(["INSERT INTO t(v) VALUES('after the rebuild')"]));
    c.wait_applied(victim, last);
    let table = |id| c.rows(id, "SELECT id, v FROM t ORDER BY id");
    assert_eq!(table(victim).len(), rows);
    assert_eq!(table(victim), table(leader));
}

#[test]
fn a_follower_with_a_damaged_log_refuses_to_start_and_is_rebuilt_by_one_command() {
    let (c, leader, victim) = cluster_and_victim();
    let mut lsn = 0;
    for i in 1..=60 {
        lsn = c.execute_ok(leader, json!([format!("INSERT INTO t(v) VALUES('row {i}')")]));
    }
    c.wait_applied(victim, lsn);
    let dir = c.data_dir(victim).to_path_buf();

    // Refused on a running node, before anything changes: it stays a member.
    let out = rebuild_offline(&c, leader, victim, &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(err.contains("in use by another keel process"), "{err}");
    assert!(err.contains("must be stopped"), "{err}");
    assert_eq!(c.members(leader).map(|m| m.contains_key(&victim)), Some(true));

    // One bit flipped halfway through the first segment: frames before and after it are
    // intact, so this is not a torn write at the end of the log.
    c.kill(victim);
    let segment = first_segment(&c, victim);
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();

    let said = c.start_refused(victim);
    assert!(said.contains(&format!("node {victim} will not start: its stored state is damaged")));
    assert!(said.contains("wal corrupt"), "{said}");
    assert!(said.contains(&segment.display().to_string()), "names the file: {said}");
    assert!(said.contains("does not vote or serve"), "{said}");
    assert!(
        said.contains(&format!("rebuild --node {victim} --data-dir {}", dir.display())),
        "{said}"
    );

    // The other two go on: writes are acknowledged meanwhile.
    let during = c.execute_ok(leader, json!(["INSERT INTO t(v) VALUES('while damaged')"]));
    assert!(during > lsn);

    let out = rebuild_offline(&c, leader, victim, &dir);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(printed.contains(&format!("node {victim} removed from the cluster")), "{printed}");
    assert!(printed.contains("start it again"), "{printed}");
    assert_eq!(c.members(leader).map(|m| m.contains_key(&victim)), Some(false));
    assert!(!dir.join("raft").exists() && !dir.join("db").exists(), "its data is deleted");

    rejoins_with_every_row(&c, leader, victim, 62);
    c.assert_consistent();
}

#[test]
fn a_follower_whose_database_file_is_damaged_refuses_to_start_and_is_rebuilt() {
    let (c, leader, victim) = cluster_and_victim();
    let lsn = c.execute_ok(leader, json!(["INSERT INTO t(v) VALUES('one'), ('two')"]));
    c.wait_applied(victim, lsn);
    // The file is overwritten with something that is not a database, and SQLite's -wal and
    // -shm beside it go (pages in the -wal would otherwise stand in for the file's own).
    c.stop(victim);
    let db = c.data_dir(victim).join("db");
    let current = std::fs::read_to_string(db.join("CURRENT")).expect("db/CURRENT");
    let file = db.join(current.trim());
    for side in ["-wal", "-shm"] {
        let mut path = file.clone().into_os_string();
        path.push(side);
        let _ = std::fs::remove_file(path);
    }
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[..16].copy_from_slice(b"not a database!\0");
    std::fs::write(&file, &bytes).unwrap();

    let said = c.start_refused(victim);
    assert!(said.contains(&format!("node {victim} will not start: its stored state is damaged")));
    assert!(said.contains("database file"), "{said}");
    assert!(said.contains("rebuild --node"), "{said}");

    let dir = c.data_dir(victim).to_path_buf();
    let out = rebuild_offline(&c, leader, victim, &dir);
    assert!(out.status.success(), "{out:?}");
    rejoins_with_every_row(&c, leader, victim, 3);
}

/// Damage under a running leader, met when it reads the frame to send it: the leader stops
/// (it neither sends nor serves what it cannot trust), a new leader brings the new replica up
/// from its own intact log, and nothing damaged reaches anyone.
#[test]
fn a_leader_that_reads_a_damaged_frame_stops_and_the_damage_goes_nowhere() {
    let (mut c, leader, _) = cluster_and_victim();
    for i in 1..=60 {
        c.execute_ok(leader, json!([format!("INSERT INTO t(v) VALUES('row {i}')")]));
    }
    let segment = first_segment(&c, leader);
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();

    // A new replica needs the whole log: the leader reads the damaged frame to send it.
    let log = std::fs::metadata(c.dir().join(format!("node{leader}.log"))).map_or(0, |m| m.len());
    let learner = c.launch_node(true);
    let said = c.wait_failed(leader, log);
    assert!(said.contains(&format!("node {leader} stopped: its stored state is damaged")));
    assert!(said.contains("wal corrupt"), "{said}");
    assert!(said.contains(&format!("rebuild --node {leader} --data-dir")), "{said}");

    let new_leader = c.leader();
    assert_ne!(new_leader, leader);
    c.wait_joined(learner);
    let last = c.execute_ok(new_leader, json!(["INSERT INTO t(v) VALUES('after')"]));
    c.wait_applied(learner, last);
    let table = |id| c.rows(id, "SELECT id, v FROM t ORDER BY id");
    assert_eq!(table(learner).len(), 61);
    assert_eq!(table(learner), table(new_leader));
}
