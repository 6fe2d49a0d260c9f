//! Catching up: a node that is behind gets the entries it misses from the leader's log while the
//! leader still has them, and a snapshot (a streamed image of the database) once the leader has
//! compacted its log past it or when it joins a cluster whose log no longer starts at 1.
//!
//! Whether a node caught up through a snapshot is read from its `/status` `snapshot` counters,
//! which count since the process started.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use integration_tests::{Lsn, NodeId, TIMEOUT, TestCluster, poll_every, wait_for};
use serde_json::json;

/// One MiB.
const MIB: u64 = 1024 * 1024;

/// How long writing the load of one test may take: thousands of requests against a debug build
/// on a small machine.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends `total` single-row inserts of `n = first..first+total` into `load(n)` to `target`, each
/// as its own request, from `threads` threads at once; returns the highest lsn acknowledged.
/// Every request must succeed.
fn insert_concurrently(
    c: &TestCluster,
    target: NodeId,
    threads: usize,
    first: usize,
    total: usize,
) -> Lsn {
    let next = AtomicUsize::new(0);
    let max_lsn = Mutex::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let n = first + i;
                    let lsn = c.execute_ok(target, json!([["INSERT INTO load(n) VALUES(?)", n]]));
                    let mut max = max_lsn.lock().unwrap();
                    *max = (*max).max(lsn);
                }
            });
        }
    });
    max_lsn.into_inner().unwrap()
}

/// Sends single-row inserts into `load(n)` to `target` one at a time (so each is its own log
/// entry), numbering from `*next`, until `done` holds for the current leader, checking it every
/// 50 writes. Returns the last lsn written (0 if `done` held at once). Panics, naming `what`, if
/// that takes longer than [`LOAD_TIMEOUT`].
fn insert_until(
    c: &TestCluster,
    target: NodeId,
    next: &mut usize,
    what: &str,
    done: impl Fn(NodeId) -> bool,
) -> Lsn {
    let mut lsn = 0;
    wait_for(LOAD_TIMEOUT, what, || {
        if done(c.leader()) {
            return Some(());
        }
        for _ in 0..50 {
            lsn = c.execute_ok(target, json!([["INSERT INTO load(n) VALUES(?)", *next]]));
            *next += 1;
        }
        None
    });
    lsn
}

/// Asserts that node `id`'s `load` table holds exactly `n = 0..count`.
fn assert_load_rows(c: &TestCluster, id: NodeId, count: usize) {
    let rows = c.rows(id, "SELECT count(*), count(DISTINCT n), min(n), max(n) FROM load");
    assert_eq!(
        rows,
        vec![vec![json!(count), json!(count), json!(0), json!(count - 1)]],
        "node {id}: (count, distinct, min, max) of load.n"
    );
}

/// Creates the tables of a big database: `big` (filled by [`fill_big_table`]), `load` (for
/// small writes) and a few ordinary tables with some rows.
fn create_tables(c: &TestCluster, leader: NodeId) {
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE big (id INTEGER PRIMARY KEY, v BLOB NOT NULL)",
            "CREATE TABLE load (id INTEGER PRIMARY KEY, n INT NOT NULL UNIQUE)",
            "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, born INT)",
            "CREATE INDEX people_name ON people(name)",
            "CREATE TABLE tags (tag TEXT PRIMARY KEY, weight REAL) WITHOUT ROWID",
            "CREATE TABLE notes (body TEXT)",
            "INSERT INTO people(name, born) VALUES('ada', 1815), ('grace', 1906), ('edsger', 1930)",
            "INSERT INTO tags VALUES('red', 0.5), ('green', 1.5), ('blue', NULL)",
            "INSERT INTO notes VALUES('one'), ('two'), ('three')",
            "DELETE FROM notes WHERE body = 'two'",
        ]),
    );
}

/// Makes the database many times bigger than one snapshot chunk: `big` gets `mib` requests of
/// 1,000 rows of 1 KiB of random bytes each (random, so nothing along the way can compress it
/// away). Returns the lsn of the last write.
fn fill_big_table(c: &TestCluster, leader: NodeId, mib: u64) -> Lsn {
    let mut lsn = 0;
    for _ in 0..mib {
        lsn = c.execute_ok(
            leader,
            json!(["WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<1000) \
                 INSERT INTO big(v) SELECT randomblob(1024) FROM c"]),
        );
    }
    let stored = c.rows(leader, "SELECT count(*), sum(length(v)) FROM big");
    assert_eq!(stored, vec![vec![json!(1000 * mib), json!(1024 * 1000 * mib)]]);
    lsn
}

/// How [`TestCluster::assert_consistent_with`] reads `big`: tens of MiB of blobs are too much
/// to move through JSON from every node, so each row is summarized by its id, length and three
/// 8-byte slices (start, middle, end). A 1 KiB row sits inside one page, so a page that is
/// missing, out of place or holds other bytes still shows.
const BIG_SUMMARY: &[(&str, &str)] = &[(
    "big",
    "SELECT id, length(v), hex(substr(v, 1, 8)), hex(substr(v, 509, 8)), hex(substr(v, -8)) \
     FROM big ORDER BY id",
)];

/// Asserts that node `id` holds the whole `big` table of [`fill_big_table`].
fn assert_big_rows(c: &TestCluster, id: NodeId, mib: u64) {
    assert_eq!(
        c.rows(id, "SELECT count(*), sum(length(v)) FROM big"),
        vec![vec![json!(1000 * mib), json!(1024 * 1000 * mib)]],
        "node {id}: rows and bytes of big"
    );
}

/// Builds a cluster of 3 voters whose database is about `mib` MiB and whose leader has
/// compacted its log, so that a new node can only start from a snapshot, and the leader's
/// latest snapshot holds the whole database. Returns the cluster and the number of `load` rows
/// written.
///
/// Snapshots are taken every 50 entries and only 10 entries are kept in the log behind the
/// latest one (`--trailing-logs`), so the log is compacted after a few dozen entries. The small
/// writes that get there come first, while snapshots are cheap; the big table is filled after,
/// and then a few more small writes until a snapshot covers it.
fn big_compacted_cluster(mib: u64) -> (TestCluster, usize) {
    let c = TestCluster::start_with(3, 0, &["--snapshot-entries=50", "--trailing-logs=10"]);
    let leader = c.leader();
    create_tables(&c, leader);
    let started = Instant::now();
    let mut next = 0;
    insert_until(&c, leader, &mut next, "the leader to compact its log", |leader| {
        c.purged_index(leader).is_some()
    });
    let compacted = started.elapsed();
    let big_lsn = fill_big_table(&c, leader, mib);
    let filled = started.elapsed();
    let small = next;
    insert_until(&c, leader, &mut next, "a snapshot of the big table", |leader| {
        c.status(leader).snapshot.index.is_some_and(|index| index >= big_lsn)
    });
    eprintln!(
        "{small} small writes in {compacted:.1?}, {mib} MiB in {:.1?}, {} small writes in {:.1?}; \
         leader snapshot at {:?}, log purged through {:?}",
        filled - compacted,
        next - small,
        started.elapsed() - filled,
        c.status(leader).snapshot.index,
        c.purged_index(leader)
    );
    (c, next)
}

/// The `receiving-*.tmp` files in `dir` (a node's `snapshots/` directory); empty if the
/// directory does not exist (yet).
fn receiving_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("receiving-") && name.ends_with(".tmp"))
        })
        .collect()
}

/// A follower stopped while 20,000 writes are acknowledged without it catches up from the
/// leader's log alone: snapshots are taken only every million entries, so the leader still has
/// every entry it missed, and the follower installs no snapshot.
#[test]
fn follower_catches_up_from_the_log() {
    const WRITES: usize = 20_000;
    const THREADS: usize = 16;
    let c = TestCluster::start_with(3, 0, &["--snapshot-entries=1000000"]);
    let leader = c.leader();
    let stopped = c.followers(leader)[0];
    c.execute_ok(
        leader,
        json!(["CREATE TABLE load (id INTEGER PRIMARY KEY, n INT NOT NULL UNIQUE)"]),
    );

    c.stop(stopped);
    let started = Instant::now();
    let lsn = insert_concurrently(&c, leader, THREADS, 0, WRITES);
    let elapsed = started.elapsed();
    eprintln!(
        "{WRITES} write requests from {THREADS} threads in {elapsed:.1?} ({:.0}/s), up to lsn {lsn}",
        WRITES as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(c.status(leader).snapshot.index, None, "the leader took a snapshot");
    assert_eq!(c.purged_index(leader), None, "the leader compacted its log");

    let restarted = Instant::now();
    c.restart(stopped);
    c.wait_applied(stopped, lsn);
    eprintln!("the follower caught up {lsn} entries in {:.1?}", restarted.elapsed());
    c.assert_consistent();
    assert_load_rows(&c, stopped, WRITES);
    let snapshot = c.snapshot_status(stopped);
    assert_eq!(snapshot.installed, 0, "the follower installed a snapshot: {snapshot:?}");
    assert_eq!(snapshot.bytes_received, 0, "{snapshot:?}");
}

/// A follower stopped while the leader writes, snapshots and compacts its log past the
/// follower's last entry can only catch up through a snapshot, and does: it ends up identical
/// to the others, and its `/status` says it installed one.
#[test]
fn follower_past_compaction_catches_up_through_a_snapshot() {
    const WRITES: usize = 3_000;
    let c = TestCluster::start_with(3, 0, &["--snapshot-entries=500"]);
    let leader = c.leader();
    let stopped = c.followers(leader)[0];
    c.execute_ok(
        leader,
        json!(["CREATE TABLE load (id INTEGER PRIMARY KEY, n INT NOT NULL UNIQUE)"]),
    );
    c.wait_applied(stopped, c.status(leader).node.commit_index);
    let behind_from = c.status(stopped).node.last_log_index;

    c.stop(stopped);
    let started = Instant::now();
    insert_concurrently(&c, leader, 4, 0, WRITES);
    // Group commit may have put several requests into one entry, and the leader does not purge
    // entries a replication stream is still trying to send: go on, one entry at a time, until
    // the leader has compacted its log past the stopped follower's last entry.
    let mut next = WRITES;
    let what = format!("the leader to compact its log past index {behind_from}");
    let lsn = insert_until(&c, leader, &mut next, &what, |leader| {
        c.purged_index(leader).is_some_and(|purged| purged > behind_from)
    });
    let lsn = lsn.max(c.status(leader).node.commit_index);
    eprintln!(
        "{next} write requests in {:.1?}; leader snapshot at {:?}, log purged through {:?}, \
         the follower stopped at {behind_from}",
        started.elapsed(),
        c.status(leader).snapshot.index,
        c.purged_index(leader)
    );

    c.restart(stopped);
    c.wait_applied(stopped, lsn);
    c.assert_consistent();
    assert_load_rows(&c, stopped, next);
    let snapshot = c.snapshot_status(stopped);
    assert!(snapshot.installed >= 1, "the follower installed no snapshot: {snapshot:?}");
    assert!(snapshot.last_installed_index.is_some_and(|index| index > behind_from), "{snapshot:?}");
    let sent: u64 = c.ids().into_iter().map(|id| c.snapshot_status(id).sent).sum();
    assert!(sent >= 1, "no node counts a snapshot sent");

    // The image carried the apply hash, so the follower's chain goes on from it: with the other
    // follower stopped, the reports the leader compares are this one's, and they match.
    let other = c.followers(leader).into_iter().find(|&id| id != stopped).unwrap();
    c.stop(other);
    let compared = c.metric(leader, "keel_apply_hash_compared_total");
    let lsn = c.execute_ok(leader, json!([["INSERT INTO load(n) VALUES(?)", next]]));
    c.wait_applied(stopped, lsn);
    wait_for(TIMEOUT, "the leader to compare the follower's report", || {
        (c.metric(leader, "keel_apply_hash_compared_total") > compared).then_some(())
    });
    assert_eq!(c.metric(leader, "keel_apply_hash_mismatches_total"), 0.0);
    assert_eq!(c.status(stopped).divergence, None);
}

/// A node added to a running cluster whose database (about 24 MiB) is many times the size of a
/// snapshot chunk, and whose log was compacted, starts from a streamed snapshot and ends up
/// identical to the others.
#[test]
fn new_node_joins_a_big_database() {
    const MIB_OF_DATA: u64 = 24;
    let (mut c, rows) = big_compacted_cluster(MIB_OF_DATA);

    let started = Instant::now();
    let added = c.add_node(false);
    let lsn = c.status(c.leader()).node.commit_index;
    c.wait_applied(added, lsn);
    eprintln!("node {added} joined and applied lsn {lsn} in {:.1?}", started.elapsed());
    c.assert_consistent_with(BIG_SUMMARY);
    assert_load_rows(&c, added, rows);
    assert_big_rows(&c, added, MIB_OF_DATA);
    let snapshot = c.snapshot_status(added);
    assert!(snapshot.installed >= 1, "the new node installed no snapshot: {snapshot:?}");
    assert!(
        snapshot.bytes_received >= 20 * MIB,
        "the new node received only {} bytes of snapshot: {snapshot:?}",
        snapshot.bytes_received
    );
    // Counted by whichever node led while the snapshot was sent.
    let (sent, bytes_sent) = c
        .voters()
        .into_iter()
        .filter(|&id| id != added)
        .map(|id| c.snapshot_status(id))
        .fold((0, 0), |(n, bytes), s| (n + s.sent, bytes + s.bytes_sent));
    assert!(sent >= 1 && bytes_sent >= 20 * MIB, "sent {sent} snapshots, {bytes_sent} bytes");
}

/// A new node killed with SIGKILL while it streams a snapshot of a 64 MiB database into
/// `snapshots/receiving-*.tmp` is restarted from what it left on disk, converges to the others'
/// data, leaves no partial snapshot file behind, and becomes the voter it joined as.
#[test]
fn kill_during_snapshot_install_then_restart_converges() {
    const MIB_OF_DATA: u64 = 64;
    let (mut c, rows) = big_compacted_cluster(MIB_OF_DATA);

    let target = c.status(c.leader()).node.commit_index;
    let added = c.launch_node(false);
    let snapshots = c.data_dir(added).join("snapshots");
    // Watch closely (the file exists only while the transfer runs), and give up early if the
    // node caught up without the file ever being seen.
    let mut probes = 0u64;
    let seen = poll_every(Duration::from_millis(1), TIMEOUT, || {
        c.assert_alive(added);
        if let Some(file) = receiving_files(&snapshots).into_iter().next() {
            return Some(Ok(file));
        }
        probes += 1;
        if probes.is_multiple_of(100)
            && let Some(status) = c.try_status(added)
            && status.node.applied_index >= target
        {
            return Some(Err(format!("node {added} caught up first: {:?}", status.node)));
        }
        None
    });
    // Kill first, then look: the node must die in the middle of the transfer.
    c.kill(added);
    let seen = match seen {
        Some(Ok(file)) => file,
        Some(Err(why)) => panic!("no receiving-*.tmp seen in {}: {why}", snapshots.display()),
        None => panic!("no receiving-*.tmp appeared in {} within {TIMEOUT:?}", snapshots.display()),
    };
    let left_by_kill = receiving_files(&snapshots);
    assert!(
        !left_by_kill.is_empty(),
        "{} was gone when the node was killed: the transfer was over before the kill",
        seen.display()
    );
    eprintln!("killed node {added} while it was receiving into {}", seen.display());

    let started = Instant::now();
    c.restart(added);
    let lsn = c.status(c.leader()).node.commit_index;
    c.wait_applied(added, lsn);
    eprintln!("node {added} restarted and applied lsn {lsn} in {:.1?}", started.elapsed());
    c.assert_consistent_with(BIG_SUMMARY);
    assert_load_rows(&c, added, rows);
    assert_big_rows(&c, added, MIB_OF_DATA);
    let snapshot = c.snapshot_status(added);
    assert!(snapshot.installed >= 1, "the restarted node installed no snapshot: {snapshot:?}");
    let left: BTreeSet<PathBuf> = receiving_files(&snapshots).into_iter().collect();
    assert!(left.is_empty(), "partial snapshot files left behind after catching up: {left:?}");
    // The crash cut its join short (the node was still a learner being caught up); it still
    // ends up the voter it asked to be.
    c.wait_joined(added);
}
