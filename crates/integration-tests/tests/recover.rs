//! Lost quorum: when most voters are gone for good, `keel admin recover` rewrites the survivors'
//! membership offline so that they elect a leader again; new nodes then join and get all the
//! data. And what it refuses: a running node, an id that is not a member, a directory that is
//! not a node's; and a node does not start on a recovery cut short.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use integration_tests::{NodeId, TIMEOUT, TestCluster, keel_binary, poll};
use serde_json::{Value, json};

/// Runs `keel admin recover --data-dir DIR --voters … [more]`.
fn recover(dir: &Path, voters: &[NodeId], more: &[&str]) -> Output {
    let voters: Vec<String> = voters.iter().map(|id| id.to_string()).collect();
    Command::new(keel_binary())
        .args(["admin", "recover", "--data-dir"])
        .arg(dir)
        .args(["--voters", &voters.join(",")])
        .args(more)
        .env_remove("KEEL_CLUSTER")
        .output()
        .expect("cannot run keel admin recover")
}

/// Runs [`recover`], asserting success; returns its standard output.
fn recover_ok(dir: &Path, voters: &[NodeId]) -> String {
    let out = recover(dir, voters, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "keel admin recover failed: {}\nstdout: {stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs [`recover`], asserting failure; returns its standard error.
fn recover_refused(dir: &Path, voters: &[NodeId]) -> String {
    let out = recover(dir, voters, &[]);
    assert!(!out.status.success(), "recover should have failed: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `keel check` against node `via`; returns its exit code and output.
fn keel_check(c: &TestCluster, via: NodeId) -> (i32, String) {
    let out = Command::new(keel_binary())
        .args(["check", "--cluster", &format!("http://{}", c.http_addr(via))])
        .output()
        .expect("cannot run keel check");
    let text = format!(
        "{}\n(stderr: {})",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Starts node `id` of `c` by hand on its data directory, expecting it to exit with an error
/// within [`TIMEOUT`]; returns what it printed.
fn serve_refused(c: &TestCluster, id: NodeId) -> String {
    let mut child = Command::new(keel_binary())
        .args(["serve", "--id", &id.to_string(), "--http-addr", c.http_addr(id)])
        .args(["--raft-addr", c.raft_addr(id), "--data-dir"])
        .arg(c.data_dir(id))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start keel serve");
    let status = poll(TIMEOUT, || child.try_wait().expect("cannot poll keel serve"));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("keel serve should have refused to start");
    };
    assert!(!status.success());
    let out = child.wait_with_output().expect("cannot read keel serve's output");
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

/// Writes `count` acknowledged rows through `leader`; returns the last write's lsn.
fn write_rows(c: &TestCluster, leader: NodeId, count: usize) -> u64 {
    c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"]));
    (1..=count)
        .map(|i| c.execute_ok(leader, json!([format!("INSERT INTO t(v) VALUES('row {i}')")])))
        .max()
        .expect("at least one row")
}

fn rows(c: &TestCluster, id: NodeId) -> Vec<Vec<Value>> {
    c.rows(id, "SELECT id, v FROM t ORDER BY id")
}

/// 3 voters, 2 killed with SIGKILL: the survivor, recovered alone, leads, takes writes and has
/// every acknowledged row; two fresh nodes join it and get all the data.
#[test]
fn a_lone_survivor_is_recovered_and_the_cluster_regrown() {
    let mut c = TestCluster::start(3, 0);
    let leader = c.leader();
    let lsn = write_rows(&c, leader, 20);
    let survivor = c.followers(leader)[0];
    // Only rows the survivor holds can survive: what the dead majority alone had is lost.
    c.wait_applied(survivor, lsn);
    let before = rows(&c, survivor);
    assert_eq!(before.len(), 20);
    for id in c.ids().into_iter().filter(|&id| id != survivor) {
        c.kill(id);
        c.retire(id);
    }
    c.stop(survivor);

    let dir = c.data_dir(survivor).to_path_buf();
    let dry = recover(&dir, &[survivor], &["--dry-run"]);
    assert!(dry.status.success(), "{dry:?}");
    assert!(String::from_utf8_lossy(&dry.stdout).contains("dry run: nothing was written"));
    let printed = recover_ok(&dir, &[survivor]);
    assert!(printed.contains("membership before: 1 (voter), 2 (voter), 3 (voter)"), "{printed}");
    let addr = c.raft_addr(survivor);
    assert!(printed.contains(&format!("new membership:    voters {survivor} (raft {addr}")));
    assert!(printed.contains("wrote the new membership at term"), "{printed}");
    assert!(printed.contains("next:"), "{printed}");
    // A second run finds the work done.
    assert!(recover_ok(&dir, &[survivor]).contains("nothing to do"));

    c.restart(survivor);
    assert_eq!(c.leader(), survivor);
    assert_eq!(rows(&c, survivor), before, "every acknowledged row is still there");
    c.execute_ok(survivor, json!(["INSERT INTO t(v) VALUES('after recovery')"]));

    let new = [c.add_node(false), c.add_node(false)];
    c.execute_ok(c.leader(), json!(["INSERT INTO t(v) VALUES('after regrowth')"]));
    let dump = c.assert_consistent();
    let all = rows(&c, survivor);
    assert_eq!(all.len(), 22);
    assert_eq!(all[..20], before[..]);
    for id in new {
        assert_eq!(rows(&c, id), all, "node {id}");
    }
    assert!(dump["tables"]["t"]["values"].as_array().is_some_and(|v| v.len() == 22));
    let (code, out) = keel_check(&c, survivor);
    assert_eq!(code, 0, "{out}");
}

/// 5 voters, 3 killed: the two survivors, both recovered with the same voters, elect one
/// leader between them and take writes; nothing acknowledged before is missing.
#[test]
fn two_survivors_of_five_elect_one_leader() {
    let mut c = TestCluster::start(5, 0);
    let leader = c.leader();
    let lsn = write_rows(&c, leader, 10);
    // The survivors: the leader and one follower, so the recovered leader may be either.
    let survivors = [leader, c.followers(leader)[0]];
    for &id in &survivors {
        c.wait_applied(id, lsn);
    }
    let before = rows(&c, leader);
    for id in c.ids().into_iter().filter(|id| !survivors.contains(id)) {
        c.kill(id);
        c.retire(id);
    }
    for &id in &survivors {
        c.stop(id);
    }
    for &id in &survivors {
        let printed = recover_ok(c.data_dir(id), &survivors);
        assert!(printed.contains("dropped:"), "{printed}");
    }
    // Neither is ready alone (the other's vote is needed): start both, then wait for a leader.
    for &id in &survivors {
        c.restart_answering(id);
    }
    let leader = c.leader();
    assert!(survivors.contains(&leader));
    let other = survivors.into_iter().find(|&id| id != leader).expect("two survivors");
    assert_eq!(c.status(other).node.leader_id, Some(leader));
    let lsn = c.execute_ok(leader, json!(["INSERT INTO t(v) VALUES('after recovery')"]));
    // Forwarded by the follower, too.
    c.execute_ok(other, json!(["INSERT INTO t(v) VALUES('forwarded')"]));
    c.wait_applied(other, lsn);
    c.assert_consistent();
    let all = rows(&c, other);
    assert_eq!(all.len(), before.len() + 2);
    assert_eq!(all[..before.len()], before[..]);
}

/// Refused: the directory of a running node, an id that is not a member, a directory without
/// a Raft log, and one whose log holds no membership. Nothing is changed by a refusal.
#[test]
fn recover_refuses_what_it_cannot_do_safely() {
    let c = TestCluster::start(1, 0);
    c.execute_ok(1, json!(["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES('kept')"]));
    let dir = c.data_dir(1).to_path_buf();

    let err = recover_refused(&dir, &[1]);
    assert!(err.contains("in use by another keel process (pid"), "{err}");
    assert!(err.contains("must be stopped"), "{err}");

    c.stop(1);
    let err = recover_refused(&dir, &[1, 7]);
    assert!(err.contains("node 7 is not a member of this node's cluster (members: 1 (voter))"));

    let empty = c.dir().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = recover_refused(&empty, &[1]);
    assert!(err.contains("holds no Raft log"), "{err}");
    std::fs::create_dir_all(empty.join("raft")).unwrap();
    let err = recover_refused(&empty, &[1]);
    assert!(err.contains("holds no cluster membership"), "{err}");
    let err = recover_refused(&c.dir().join("missing"), &[1]);
    assert!(err.contains("is not a directory"), "{err}");

    // A recovery cut short leaves its pending file: the node refuses to start on it.
    let pending = dir.join("raft").join("recovery.json");
    std::fs::write(&pending, "{}").unwrap();
    let err = serve_refused(&c, 1);
    assert!(err.contains("a recovery of this data directory was interrupted"), "{err}");
    std::fs::remove_file(&pending).unwrap();

    // The refusals changed nothing: the node starts as it was and still leads.
    c.restart(1);
    assert_eq!(c.leader(), 1);
    assert_eq!(c.rows(1, "SELECT v FROM t"), vec![vec![json!("kept")]]);
}
