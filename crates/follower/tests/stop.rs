//! A replica that cannot apply a committed entry stops, says why, and applies nothing of it.
//!
//! One node, a real Raft log and a real SQLite database: the node commits a record whose
//! changeset names a table this database does not have (as if it had diverged from the
//! leader that computed the record). Applying it fails with `sql::Error::Corrupt`; the node
//! must stop (openraft's fatal storage error), with a reason that keeps the database's own
//! message and says that restarting will not help, and must not skip the entry.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use follower::Replica;
use sql::{Db, Statement, WriteRequest};
use wal::{Op, Record};

/// How long any step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// A record inserting a row into table `t`, computed on a database of its own that has `t`,
/// without the DDL that made it: applied where `t` does not exist, it is corruption.
fn insert_into_missing_table(dir: &Path) -> Record {
    let mut other = Db::open(dir).unwrap();
    let request = |sql: &str| WriteRequest {
        statements: vec![Statement::new(sql)],
        transaction: false,
        timeout: None,
        rows: false,
        request_id: None,
    };
    let speculation = other
        .execute(&[
            request("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"),
            request("INSERT INTO t VALUES (1, 'x')"),
        ])
        .unwrap();
    let ops: Vec<Op> =
        speculation.record.ops.into_iter().filter(|op| matches!(op, Op::Changes(_))).collect();
    assert_eq!(ops.len(), 1, "the insert's changeset");
    Record { ops, requests: Vec::new() }
}

/// A one-node cluster in `dir` that leads, with its database and applied index.
struct Alone {
    raft: raft::Raft,
    db: sql::Worker,
    applied: tokio::sync::watch::Receiver<wal::Lsn>,
}

/// Starts a node in `dir` (database and Raft), makes it a cluster of one, and waits until it
/// leads.
async fn lead_alone(dir: &Path) -> Alone {
    let replica = Replica::new(Db::open(&dir.join("db")).unwrap()).unwrap();
    let db = replica.db();
    let applied = replica.applied();
    let started =
        raft::start_node(1, &dir.join("node"), &raft::Options::default(), Arc::new(replica))
            .await
            .unwrap();
    let raft = started.raft;
    let me = raft::MemberAddr::new("127.0.0.1:1", "127.0.0.1:2");
    raft::cluster::initialize(&raft, 1, me).await.unwrap();
    let leads = |m: &raft::Metrics| m.current_leader == Some(1);
    raft.wait(Some(DEADLINE)).metrics(leads, "leads").await.unwrap();
    Alone { raft, db, applied }
}

/// The term this node leads in, once its core says it leads (a moment after its metrics do).
async fn leader_term(raft: &raft::Raft) -> raft::Term {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match raft::client::leader_term(raft) {
            Ok(term) => return term,
            Err(e) if tokio::time::Instant::now() >= deadline => panic!("never led: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_entry_stops_the_node_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let record = insert_into_missing_table(&dir.path().join("other"));
    let Alone { raft, db, applied } = lead_alone(dir.path()).await;
    let term = leader_term(&raft).await;
    let before = raft::client::wait_caught_up(&raft, DEADLINE).await.unwrap();

    // The proposal never gets an answer of its own: the node stops while applying it.
    let proposal = {
        let raft = raft.clone();
        tokio::spawn(async move { raft::client::propose(&raft, record, term, DEADLINE).await })
    };
    let reason = tokio::time::timeout(DEADLINE, raft::cluster::stopped(&raft))
        .await
        .expect("the node stops");

    let bad = before + 1;
    assert!(reason.contains(&format!("entry {bad} (term {term})")), "{reason}");
    assert!(reason.contains("changeset for missing table t"), "{reason}");
    assert!(reason.contains("restarting will not help"), "{reason}");
    assert!(proposal.await.unwrap().is_err(), "a stopped node acknowledges nothing");
    // Not skipped: neither the watch nor the database moved past the entry before it.
    assert_eq!(*applied.borrow(), before);
    let stored = db.run(|db| db.applied()).await.unwrap().map(|a| a.index);
    assert_eq!(stored, Some(before));
    let _ = raft.shutdown().await;
}

/// A panic on the database thread (a broken invariant in some job) stops the node at its next
/// apply, with the panic's message in the reason, instead of leaving it running with a
/// database nothing can vouch for or hanging the apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_the_database_thread_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let Alone { raft, db, applied } = lead_alone(dir.path()).await;
    let before = raft::client::wait_caught_up(&raft, DEADLINE).await.unwrap();

    let panicked = db.run::<(), _>(|_| panic!("planted invariant failure")).await.unwrap_err();
    assert!(matches!(panicked, sql::Error::Stopped(_)), "{panicked}");

    // The next committed entry cannot be applied: the node stops, and says why.
    let barrier = {
        let raft = raft.clone();
        tokio::spawn(async move { raft::client::log_barrier(&raft).await })
    };
    let reason = tokio::time::timeout(DEADLINE, raft::cluster::stopped(&raft))
        .await
        .expect("the node stops");
    assert!(reason.contains("planted invariant failure"), "{reason}");
    assert!(reason.contains("database thread stopped"), "{reason}");
    assert!(barrier.await.unwrap().is_err(), "a stopped node acknowledges nothing");
    assert_eq!(*applied.borrow(), before);
    let _ = raft.shutdown().await;
}
