//! Protocol scenarios on the in-process cluster (`integration_tests::inproc`): three real nodes
//! in this process over the in-memory network, with the network in the test's hands.
//!
//! - failover: acknowledged writes survive the leader's crash; the restarted node catches up.
//! - fencing: a leader cut off from the majority acknowledges nothing; after healing it steps
//!   down and holds the majority's data.
//! - read index: a linearizable read on a follower sees every acknowledged write, and fails
//!   rather than answer from a stale or cut-off copy.
//! - one exact message: the append that carries a given entry to one follower is dropped
//!   (retransmitted) or held (commit goes on with the other follower; with both held it waits).
//! - a leader change between the writer's term check and its proposal: the conditional
//!   proposal fails cleanly and nothing speculated is visible anywhere.
//! - snapshot: a node behind the leader's purged log catches up by a snapshot streamed through
//!   the switchboard.
//!
//! These live in one file (one test binary) because each binary links the whole stack.

use std::time::Duration;

use integration_tests::inproc::{Cluster, request};
use raft::network::memory::{Fate, Kind, Match, Message};

/// Logs to stderr when `RUST_LOG` is set (shown for failing tests).
fn trace() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The single integer a `SELECT count(*)`-like read returned.
fn integer(result: sql::StatementResult) -> i64 {
    match result {
        sql::StatementResult::Rows { values, .. } => values[0][0].as_i64().expect("an integer"),
        other => panic!("expected rows, got {other:?}"),
    }
}

async fn count_linearizable(c: &Cluster, id: u64) -> anyhow::Result<i64> {
    Ok(integer(c.read_linearizable(id, "SELECT count(*) FROM t").await?))
}

fn count_local(c: &Cluster, id: u64) -> i64 {
    integer(c.read_local(id, "SELECT count(*) FROM t").unwrap())
}

/// A cluster of three with table `t` created; returns it and its leader.
async fn three() -> (Cluster, u64) {
    trace();
    let c = Cluster::new(3).await.unwrap();
    let leader = c.leader().await.unwrap();
    c.execute(leader, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").await.unwrap();
    c.assert_consistent().await.unwrap();
    (c, leader)
}

fn others(c: &Cluster, id: u64) -> Vec<u64> {
    c.running().into_iter().filter(|&o| o != id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_acknowledged_writes_and_the_old_leader_catches_up() {
    let (mut c, first) = three().await;
    for i in 1..=5 {
        c.execute(first, &format!("INSERT INTO t VALUES ({i}, 'first')")).await.unwrap();
    }
    c.crash(first).await.unwrap();

    let second = c.leader().await.unwrap();
    assert_ne!(second, first, "a crashed node cannot lead");
    assert_eq!(count_linearizable(&c, second).await.unwrap(), 5, "acknowledged writes survive");
    c.execute(second, "INSERT INTO t VALUES (6, 'second')").await.unwrap();

    c.restart(first).await.unwrap();
    c.assert_consistent().await.unwrap();
    assert_eq!(count_local(&c, first), 6, "the restarted node caught up");
    assert_eq!(c.leader().await.unwrap(), second, "a restarted node does not depose the leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_majority_acknowledges_nothing() {
    let (c, old) = three().await;
    c.execute(old, "INSERT INTO t VALUES (1, 'before')").await.unwrap();
    let majority = others(&c, old);
    c.partition(&[old], &majority);

    let lost = c.write(old, "INSERT INTO t VALUES (2, 'minority')").await;
    assert!(lost.is_err(), "a leader without a quorum acknowledged a write: {lost:?}");

    let new = c.leader_among(&majority).await.unwrap();
    c.execute(new, "INSERT INTO t VALUES (3, 'majority')").await.unwrap();

    c.heal();
    c.poll("the old leader to step down", || {
        (c.node(old).state().role != raft::cluster::Role::Leader).then_some(())
    })
    .await
    .unwrap();
    let dump = c.assert_consistent().await.unwrap();
    assert!(dump.contains("majority") && !dump.contains("minority"), "{dump}");
    for id in c.running() {
        assert_eq!(count_local(&c, id), 2, "node {id} has exactly rows 1 and 3");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_see_every_acknowledged_write_or_fail() {
    let (c, leader) = three().await;
    let followers = others(&c, leader);
    let (f, g) = (followers[0], followers[1]);

    // Each read starts after the write was acknowledged and must see it.
    for i in 1..=5 {
        c.execute(leader, &format!("INSERT INTO t VALUES ({i}, 'x')")).await.unwrap();
        assert_eq!(count_linearizable(&c, f).await.unwrap(), i, "follower {f} after write {i}");
    }

    // Follower f stops receiving entries: writes commit with g, f's copy is stale, and a
    // linearizable read on f must not answer from it.
    c.board().hold_all(Match::kind(Kind::Append).to(f));
    c.execute(leader, "INSERT INTO t VALUES (6, 'x')").await.unwrap();
    assert_eq!(count_local(&c, f), 5, "f's own copy is stale, as the test means it to be");
    let stale = count_linearizable(&c, f).await;
    assert!(stale.is_err(), "a lagging follower answered a linearizable read: {stale:?}");
    c.board().clear_rules();
    c.board().release_all();
    assert_eq!(count_linearizable(&c, f).await.unwrap(), 6);

    // A follower cut off from the leader cannot get a read index.
    c.isolate(g);
    let cut = count_linearizable(&c, g).await;
    assert!(cut.is_err(), "a follower cut off from the leader served a linearizable read: {cut:?}");
    c.heal();
    assert_eq!(count_linearizable(&c, g).await.unwrap(), 6);

    // Nor can a leader cut off from every follower confirm that it still leads.
    c.isolate(leader);
    let alone = count_linearizable(&c, leader).await;
    assert!(alone.is_err(), "an isolated leader served a linearizable read: {alone:?}");
    c.heal();
    let now = c.leader().await.unwrap();
    assert_eq!(count_linearizable(&c, now).await.unwrap(), 6);
}

/// The appends to `to` that carried entry `index`, in order.
fn carrying(c: &Cluster, index: u64, to: u64) -> Vec<Message> {
    c.board().matching(&Match::carrying(index).to(to))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_append_is_sent_again() {
    let (c, leader) = three().await;
    let f = others(&c, leader)[0];
    let next = c.node(leader).state().last_log_index + 1;
    c.board().drop_next(Match::carrying(next).to(f));

    let lsn = c.execute(leader, "INSERT INTO t VALUES (1, 'x')").await.unwrap();
    assert_eq!(lsn, next, "no other entry came between (no election)");
    c.wait_applied(f, next).await.unwrap();

    let sent = carrying(&c, next, f);
    assert_eq!(sent[0].fate, Fate::Dropped, "{sent:#?}");
    assert_eq!(sent.iter().filter(|m| m.fate == Fate::Dropped).count(), 1, "{sent:#?}");
    assert!(sent[1..].iter().any(|m| m.fate == Fate::Delivered), "{sent:#?}");
    assert_eq!(count_local(&c, f), 1);
    c.assert_consistent().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_append_delays_only_its_follower_and_commit_needs_one_of_two() {
    let (c, leader) = three().await;
    let followers = others(&c, leader);
    let (f, g) = (followers[0], followers[1]);

    // Held to f only: g's acknowledgement is the quorum.
    let next = c.node(leader).state().last_log_index + 1;
    c.board().hold_next(Match::carrying(next).to(f));
    assert_eq!(c.execute(leader, "INSERT INTO t VALUES (1, 'x')").await.unwrap(), next);
    // Committed with g alone; the append to f may not even have been sent yet.
    let to_f = Match::carrying(next).to(f);
    let wait = c.options().wait;
    let sent = |log: &[Message]| log.iter().any(|m| to_f.matches(m));
    c.board().wait_for("the append to f", wait, sent).await.unwrap();
    let held = carrying(&c, next, f);
    assert_eq!(held.iter().map(|m| m.fate).collect::<Vec<_>>(), vec![Fate::Held]);
    assert!(c.node(f).state().last_log_index < next, "f has no other way to get entry {next}");
    assert_eq!(count_local(&c, f), 0);
    assert!(c.board().release(held[0].seq));
    c.wait_applied(f, next).await.unwrap();
    assert_eq!(carrying(&c, next, f)[0].fate, Fate::Released);

    // Held to both: nothing can commit until one of them arrives.
    let next = next + 1;
    c.board().hold_next(Match::carrying(next).to(f));
    c.board().hold_next(Match::carrying(next).to(g));
    let writer = c.node(leader).leader.clone();
    let write = tokio::spawn(async move {
        writer.write(request("INSERT INTO t VALUES (2, 'x')"), leader::Durability::SemiSync).await
    });
    let both_held = |log: &[Message]| {
        let held = |to| log.iter().any(|m| m.to == to && m.fate == Fate::Held);
        held(f) && held(g)
    };
    let log = c.board().wait_for("both appends held", c.options().wait, both_held).await.unwrap();
    assert!(!write.is_finished(), "acknowledged while no follower had the entry");
    assert!(c.node(leader).state().commit_index < next);
    let to_g = log.iter().find(|m| m.to == g && m.fate == Fate::Held).unwrap();
    assert!(c.board().release(to_g.seq));
    let outcome = write.await.unwrap().unwrap();
    assert_eq!(outcome.lsn, next);
    assert_eq!(c.board().release_all(), 1, "f's append was still held");
    c.assert_consistent().await.unwrap();
}

/// The writer on `old` takes a request (fixing term T) and is stopped at its speculation by
/// holding `old`'s database thread with a job that waits. Meanwhile leadership moves to another node (T+1), which
/// writes, and back to `old` (T+2). When the speculation then runs, its proposal is
/// conditional on T: it must be refused although `old` leads again, and nothing it speculated
/// may reach any database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_change_between_speculation_and_proposal_fails_the_write_cleanly() {
    let (c, old) = three().await;
    c.execute(old, "INSERT INTO t VALUES (1, 'before')").await.unwrap();
    let other = others(&c, old)[0];

    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let db = c.node(old).db.clone();
    let holder = std::thread::spawn(move || {
        db.run_blocking(move |_| {
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            Ok(())
        })
        .unwrap();
    });
    locked_rx.recv().unwrap();

    let writer = c.node(old).leader.clone();
    let speculated =
        writer.write(request("INSERT INTO t VALUES (2, 'speculated')"), Default::default());
    let mut speculated = std::pin::pin!(speculated);
    // One poll puts the request in the writer's queue; it cannot be answered yet.
    tokio::select! {
        biased;
        answer = &mut speculated => panic!("answered before its speculation could run: {answer:?}"),
        () = std::future::ready(()) => {}
    }
    // Out of the queue means taken, and the writer read term T in that same step.
    c.poll("the writer to take the request", || (writer.queued() == 0).then_some(()))
        .await
        .unwrap();
    let term = c.node(old).state().term;

    let deadlines = raft::cluster::Deadlines::default();
    raft::cluster::transfer_leader(&c.node(old).raft, other, &deadlines).await.unwrap();
    c.execute(other, "INSERT INTO t VALUES (3, 'other')").await.unwrap();
    let back = raft::cluster::transfer_leader(&c.node(other).raft, old, &deadlines).await.unwrap();
    assert!(back >= term + 2, "old leads again in a later term ({back}, was {term})");
    assert_eq!(c.leader().await.unwrap(), old);

    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let answer = tokio::time::timeout(c.options().wait, speculated).await.unwrap();
    assert!(
        matches!(answer, Err(leader::Error::NotLeader { .. })),
        "a changeset speculated in term {term} was proposed in term {back}: {answer:?}"
    );

    let dump = c.assert_consistent().await.unwrap();
    assert!(!dump.contains("speculated") && dump.contains("other"), "{dump}");
    // The writer goes on in the new term.
    c.execute(old, "INSERT INTO t VALUES (4, 'after')").await.unwrap();
    c.assert_consistent().await.unwrap();
}

/// The switchboard's log shows a partition for what it is: nothing crosses a cut link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_crosses_a_cut_link() {
    let (c, leader) = three().await;
    let f = others(&c, leader)[0];
    c.isolate(f);
    let start = c.board().messages().len();
    c.execute(leader, "INSERT INTO t VALUES (1, 'x')").await.unwrap();
    let wait = Duration::from_secs(5);
    let cut = |log: &[Message]| log[start..].iter().any(|m| m.from == f || m.to == f);
    let log = c.board().wait_for("a message on f's links", wait, cut).await.unwrap();
    for m in &log[start..] {
        if m.from == f || m.to == f {
            assert_eq!(m.fate, Fate::Cut, "{m:?}");
        }
    }
    assert_eq!(count_local(&c, f), 0);
    c.heal();
    c.assert_consistent().await.unwrap();
    assert_eq!(count_local(&c, f), 1);
}

/// A node that missed entries the leader has purged catches up by a snapshot, streamed through
/// the switchboard into its snapshot directory and installed as its database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_purged_log_catches_up_by_snapshot() {
    trace();
    let mut options = integration_tests::inproc::Options::default();
    options.raft.snapshot_entries = 5;
    options.raft.max_in_snapshot_log_to_keep = 0;
    let mut c = Cluster::with_options(3, options).await.unwrap();
    let leader = c.leader().await.unwrap();
    let f = others(&c, leader)[0];
    let created =
        c.execute(leader, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").await.unwrap();
    c.crash(f).await.unwrap();
    for i in 1..=20 {
        c.execute(leader, &format!("INSERT INTO t VALUES ({i}, 'x')")).await.unwrap();
    }
    // f has nothing after the table's creation; once the leader's log no longer holds the
    // entry after it, a snapshot is the only way for f to catch up.
    let raft = &c.node(leader).raft;
    let purged = |m: &raft::Metrics| m.purged.is_some_and(|p| p.index > created);
    raft.wait(Some(c.options().wait)).metrics(purged, "the leader purging").await.unwrap();

    c.restart(f).await.unwrap();
    c.assert_consistent().await.unwrap();
    assert_eq!(count_local(&c, f), 20);
    let snapshots = c.board().matching(&Match::kind(Kind::Snapshot).to(f));
    assert!(snapshots.iter().any(|m| m.fate == Fate::Delivered), "{snapshots:#?}");
}
