//! Read scaling: reads served by followers and learners without giving up the guarantees a
//! client asks for.
//!
//! * Every answer carries `lsn`: for a write its log index, for a read the index the node had
//!   applied when it served it. A client that passes the highest `lsn` it has seen as
//!   `min_lsn=` gets read-your-writes and monotonic reads from any replica: the node waits
//!   until it has applied that index (up to `timeout=`, 5 s by default) and answers 503 with
//!   its `applied_index` if it cannot.
//! * `level=linearizable` is served by the node that receives it, follower and learner
//!   included, after it has applied the leader's commit index (a read index): never stale,
//!   not even across a leader change.
//! * `level=none` reads the node's own data, always a prefix of the log; `freshness=` refuses
//!   (rqlite's `stale read`) when the node has not heard from a leader for that long.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use integration_tests::{Lsn, NodeId, Response, TIMEOUT, TestCluster, wait_for};
use serde_json::{Value, json};

/// How long a `min_lsn` read that cannot be met with `timeout=300ms` may take to answer 503:
/// the timeout plus a generous margin for a loaded machine. More than that is a hang.
const MIN_LSN_ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// How long a `min_lsn` read waits without `timeout=`.
const DEFAULT_MIN_LSN_WAIT: Duration = Duration::from_secs(5);

/// Sets a flag when dropped, so that threads watching it stop even if the test panics.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Creates table `t (id INTEGER PRIMARY KEY, v TEXT)` at the leader and waits until every node
/// has applied it; returns its lsn.
fn create_table(c: &TestCluster, leader: NodeId) -> Lsn {
    let lsn = c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));
    c.wait_all_applied(lsn);
    lsn
}

/// Inserts row `(id, v)` into `t` through node `node` with `durability=semi-sync`, asserting
/// that it succeeded; returns the write's lsn.
fn insert(c: &TestCluster, node: NodeId, id: i64, v: &str) -> Lsn {
    c.execute_with(
        node,
        "durability=semi-sync",
        json!([["INSERT INTO t(id, v) VALUES(?, ?)", id, v]]),
    )
    .assert_ok()
    .lsn()
}

/// `GET /db/query?<params>&q=<sql>` on node `node`, asserting a 200 answer without any error;
/// returns it.
fn read_ok(c: &TestCluster, node: NodeId, sql: &str, params: &str) -> Response {
    let reply = c.query_with(node, sql, params);
    assert_eq!(reply.status, 200, "node {node} ?{params} {sql}: {}", reply.body);
    let response = reply.answer();
    response.assert_ok();
    response
}

/// The single integer a one-row, one-column query returned (0 for NULL).
fn single_int(read: &Response) -> i64 {
    let rows = read.rows(0);
    assert_eq!(rows.len(), 1, "one row expected: {read}");
    match &rows[0][0] {
        Value::Null => 0,
        value => value.as_i64().unwrap_or_else(|| panic!("not an integer: {read}")),
    }
}

/// `SELECT v FROM t WHERE id = <id>`.
fn select_v(id: i64) -> String {
    format!("SELECT v FROM t WHERE id = {id}")
}

/// Read-your-writes from replicas: right after a semi-sync write is acknowledged, a
/// `level=none` read with the write's lsn as `min_lsn` sees it on a follower and on a learner,
/// and reports an lsn at least the write's. Without the token such a read may miss the write;
/// how often it does depends on timing, so it is only printed.
#[test]
fn min_lsn_reads_see_the_write_on_followers_and_learners() {
    const WRITES: i64 = 100;
    let c = TestCluster::start(3, 1);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    let learner = c.learners()[0];
    create_table(&c, leader);

    for i in 0..WRITES {
        let v = format!("token {i}");
        let lsn = insert(&c, leader, i, &v);
        // Alternate which replica is asked first, so that each is sometimes asked at once.
        let replicas = if i % 2 == 0 { [follower, learner] } else { [learner, follower] };
        for node in replicas {
            let read = read_ok(&c, node, &select_v(i), &format!("level=none&min_lsn={lsn}"));
            assert_eq!(
                read.rows(0),
                vec![vec![json!(v)]],
                "row {i} (lsn {lsn}) on node {node} with min_lsn={lsn}: {read}",
            );
            assert!(
                read.lsn() >= lsn,
                "node {node} served min_lsn={lsn} at applied index {}",
                read.lsn()
            );
        }
    }

    let mut misses: BTreeMap<NodeId, usize> = BTreeMap::new();
    for i in WRITES..2 * WRITES {
        let v = format!("no token {i}");
        insert(&c, leader, i, &v);
        let replicas = if i % 2 == 0 { [follower, learner] } else { [learner, follower] };
        for node in replicas {
            let read = read_ok(&c, node, &select_v(i), "level=none");
            if read.rows(0).is_empty() {
                *misses.entry(node).or_default() += 1;
            }
        }
    }
    println!(
        "level=none right after a semi-sync write, without min_lsn, missed it: {}/{WRITES} on \
         follower {follower}, {}/{WRITES} on learner {learner}",
        misses.get(&follower).copied().unwrap_or_default(),
        misses.get(&learner).copied().unwrap_or_default(),
    );
    c.assert_consistent();
}

/// A `min_lsn` no node has reached is answered 503 after `timeout=` (5 s without it), at every
/// level and on every node, with an error naming the `min_lsn` and the node's applied index;
/// one that is reached while the read waits is answered 200 at or past it.
#[test]
fn unreachable_min_lsn_answers_503_with_the_applied_index() {
    let c = TestCluster::start(3, 1);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    let learner = c.learners()[0];
    create_table(&c, leader);
    let lsn = insert(&c, leader, 1, "present");
    c.wait_all_applied(lsn);
    let target = lsn + 1000;

    let unmet = |node: NodeId, params: &str| -> (u64, Duration) {
        let started = Instant::now();
        let reply = c.query_with(node, "SELECT count(*) FROM t", params);
        let took = started.elapsed();
        assert_eq!(reply.status, 503, "node {node} ?{params}: {}", reply.body);
        let body = reply.json();
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("min_lsn") && error.contains(&target.to_string()),
            "node {node} ?{params}: the 503 names min_lsn {target}: {body}"
        );
        let applied = body["applied_index"].as_u64().unwrap_or_else(|| {
            panic!("node {node} ?{params}: the 503 has no applied_index: {body}")
        });
        assert!(
            (lsn..target).contains(&applied),
            "node {node} ?{params}: applied_index {applied} is not in {lsn}..{target}: {body}"
        );
        (applied, took)
    };

    for node in [leader, follower, learner] {
        for level in ["none", "weak", "linearizable", "strong"] {
            let params = format!("level={level}&min_lsn={target}&timeout=300ms");
            let (_, took) = unmet(node, &params);
            assert!(
                took >= Duration::from_millis(300),
                "node {node} ?{params} answered after {took:?}, before the timeout"
            );
            assert!(took < MIN_LSN_ANSWER_WITHIN, "node {node} ?{params} took {took:?}");
        }
    }

    let params = format!("level=none&min_lsn={target}");
    let (_, took) = unmet(learner, &params);
    assert!(
        took >= DEFAULT_MIN_LSN_WAIT && took < DEFAULT_MIN_LSN_WAIT * 2,
        "node {learner} ?{params} (no timeout) answered 503 after {took:?}"
    );

    // An index not applied yet when the read arrives, and applied while it waits.
    let next = lsn + 1;
    let params = format!("level=none&min_lsn={next}&timeout=10s");
    let (reply, written) = std::thread::scope(|s| {
        let waiting = s.spawn(|| c.query_with(learner, "SELECT count(*) FROM t", &params));
        let written = insert(&c, leader, 2, "awaited");
        (waiting.join().expect("the waiting reader panicked"), written)
    });
    assert_eq!(
        reply.status, 200,
        "node {learner} ?{params} (write at lsn {written}): {}",
        reply.body
    );
    let read = reply.answer();
    read.assert_ok();
    assert!(
        read.lsn() >= next,
        "node {learner} served min_lsn={next} at applied index {}: {}",
        read.lsn(),
        read
    );
    c.assert_consistent();
}

/// Monotonic reads across replicas: a client that keeps the highest lsn it has seen and sends
/// it as `min_lsn`, alternating between a follower and a learner while a writer inserts rows,
/// never sees the row count go down; once it also holds the writer's last lsn, it sees every
/// row.
#[test]
fn min_lsn_token_gives_monotonic_reads_across_replicas() {
    const WRITES: i64 = 200;
    let c = TestCluster::start(3, 1);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    let learner = c.learners()[0];
    let mut highest = create_table(&c, leader);

    let done = AtomicBool::new(false);
    let last_write = AtomicU64::new(0);
    let reads = std::thread::scope(|s| {
        s.spawn(|| {
            let _done = SetOnDrop(&done);
            for i in 0..WRITES {
                last_write.fetch_max(insert(&c, leader, i, "monotonic"), Ordering::SeqCst);
            }
        });
        let mut count = 0;
        let mut reads = 0_usize;
        // (node, min_lsn sent, lsn served at, row count) of the latest reads, for failures.
        let mut history: Vec<(NodeId, Lsn, Lsn, i64)> = Vec::new();
        // One more round after the writer finishes, so the last reads see every row.
        let mut rounds_after_done = 0;
        while rounds_after_done < 2 {
            if done.load(Ordering::SeqCst) {
                rounds_after_done += 1;
                // The writer hands over its token: the reads must now cover every write.
                highest = highest.max(last_write.load(Ordering::SeqCst));
            }
            let node = if reads.is_multiple_of(2) { follower } else { learner };
            let params = format!("level=none&min_lsn={highest}");
            let read = read_ok(&c, node, "SELECT count(*) FROM t", &params);
            let now = single_int(&read);
            history.push((node, highest, read.lsn(), now));
            let recent = &history[history.len().saturating_sub(6)..];
            assert!(
                read.lsn() >= highest,
                "node {node} served min_lsn={highest} at applied index {}; latest reads \
                 (node, min_lsn, served at, rows): {recent:?}",
                read.lsn()
            );
            assert!(
                now >= count,
                "node {node} read {now} rows after {count} had been seen; latest reads \
                 (node, min_lsn, served at, rows): {recent:?}"
            );
            count = now;
            highest = highest.max(read.lsn());
            reads += 1;
        }
        assert_eq!(count, WRITES, "the last reads, after every write, see every row");
        reads
    });
    println!("{reads} monotonic reads alternating between nodes {follower} and {learner}");
    c.assert_consistent();
}

/// What the threads of [`linearizable_reads_on_replicas_are_never_stale_across_failover`]
/// share.
#[derive(Default)]
struct Failover {
    /// The highest id acknowledged so far and its lsn; writes are acknowledged in id order.
    /// Starts at the last row written before the threads.
    acked: Mutex<(i64, Lsn)>,
    /// Every acknowledged id.
    acked_ids: Mutex<Vec<i64>>,
    /// Writes that failed (tolerated during the election).
    write_errors: AtomicUsize,
    /// 0 before the leader is killed, 1 after, 2 after it restarted.
    phase: AtomicUsize,
    /// Successful reads by node and phase.
    reads: Mutex<BTreeMap<(NodeId, usize), usize>>,
    /// Reads that failed (tolerated during the election).
    read_errors: AtomicUsize,
    /// Stale reads seen, described.
    stale: Mutex<Vec<String>>,
    /// Set to stop the threads.
    stop: AtomicBool,
}

impl Failover {
    fn acked(&self) -> (i64, Lsn) {
        *self.acked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reads(&self, node: NodeId, phase: usize) -> usize {
        let reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        reads.get(&(node, phase)).copied().unwrap_or_default()
    }

    fn stale(&self) -> Vec<String> {
        self.stale.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits until `done` holds or a stale read was seen.
    fn wait(&self, what: &str, done: impl Fn() -> bool) {
        wait_for(TIMEOUT, what, || (!self.stale().is_empty() || done()).then_some(()));
    }
}

/// Linearizable reads on followers and learners are served there, never forwarded, and are
/// never stale: each sees every write acknowledged before it started, also while the leader
/// is killed (-9), replaced and restarted under a steady stream of writes. Reads and writes
/// may fail while there is no leader; none may return old data.
#[test]
fn linearizable_reads_on_replicas_are_never_stale_across_failover() {
    /// Rows written before the failover starts.
    const BEFORE: i64 = 20;
    let c = TestCluster::start(3, 1);
    let old = c.leader();
    let learner = c.learners()[0];
    let readers: Vec<NodeId> = c.ids().into_iter().filter(|&id| id != old).collect();
    create_table(&c, old);

    // Served where asked: with ?redirect a forwarded read would be a 301 to the leader.
    for &node in &readers {
        let reply = c.query_with(node, "SELECT count(*) FROM t", "level=linearizable&redirect");
        assert_eq!(
            reply.status, 200,
            "node {node} serves a linearizable read itself, not through the leader: {}",
            reply.body
        );
    }
    // Right after the write is acknowledged, with no waiting in between.
    let mut lsn = 0;
    for id in 1..=BEFORE {
        lsn = insert(&c, old, id, "before");
        for &node in &readers {
            let read = read_ok(&c, node, &select_v(id), "level=linearizable");
            assert_eq!(read.rows(0), vec![vec![json!("before")]], "node {node}, lsn {lsn}");
            assert!(read.lsn() >= lsn, "node {node} read at {} < lsn {lsn}", read.lsn());
        }
    }

    let shared = Failover { acked: Mutex::new((BEFORE, lsn)), ..Failover::default() };
    std::thread::scope(|s| {
        let _stop = SetOnDrop(&shared.stop);
        let shared = &shared;
        let c = &c;
        // The learner is never killed: writes sent to it are forwarded to whoever leads.
        s.spawn(move || {
            let mut id = BEFORE;
            while !shared.stop.load(Ordering::SeqCst) {
                id += 1;
                let statements = json!([["INSERT INTO t(id, v) VALUES(?, 'failover')", id]]);
                match c.try_execute(learner, "", &statements) {
                    Ok(answer) if answer.0.error.is_none() && answer.error(0).is_none() => {
                        *shared.acked.lock().unwrap_or_else(PoisonError::into_inner) =
                            (id, answer.lsn());
                        shared.acked_ids.lock().unwrap_or_else(PoisonError::into_inner).push(id);
                    }
                    _ => {
                        shared.write_errors.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        });
        for &node in &readers {
            s.spawn(move || {
                while !shared.stop.load(Ordering::SeqCst) {
                    let (acked, acked_lsn) = shared.acked();
                    let phase = shared.phase.load(Ordering::SeqCst);
                    let answer = c
                        .try_query_with(node, "SELECT max(id) FROM t", "level=linearizable")
                        .ok()
                        .filter(|reply| reply.status == 200)
                        .and_then(|reply| serde_json::from_str(&reply.body).ok())
                        .map(Response)
                        .filter(|read| read.0.error.is_none() && read.error(0).is_none());
                    let Some(read) = answer else {
                        shared.read_errors.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let seen = single_int(&read);
                    if seen < acked || read.lsn() < acked_lsn {
                        shared.stale.lock().unwrap_or_else(PoisonError::into_inner).push(format!(
                            "node {node} (phase {phase}) read max(id) = {seen} at lsn {}, after \
                             id {acked} was acknowledged at lsn {acked_lsn}",
                            read.lsn()
                        ));
                    }
                    let mut reads = shared.reads.lock().unwrap_or_else(PoisonError::into_inner);
                    *reads.entry((node, phase)).or_default() += 1;
                }
            });
        }

        let every_reader =
            |phase: usize, n: usize| readers.iter().all(|&r| shared.reads(r, phase) >= n);
        shared.wait("reads on every replica and writes before the kill", || {
            every_reader(0, 20) && shared.acked().0 >= 20
        });
        c.kill(old);
        shared.phase.store(1, Ordering::SeqCst);
        let at_kill = shared.acked().0;
        let new = c.leader();
        assert_ne!(new, old, "a killed node cannot lead");
        shared.wait("reads on every replica and writes under the new leader", || {
            every_reader(1, 20) && shared.acked().0 >= at_kill + 20
        });
        c.restart(old);
        shared.phase.store(2, Ordering::SeqCst);
        let at_restart = shared.acked().0;
        shared.wait("reads on every replica and writes after the restart", || {
            every_reader(2, 20) && shared.acked().0 >= at_restart + 20
        });
    });

    let stale = shared.stale();
    assert!(stale.is_empty(), "{} stale linearizable reads: {stale:#?}", stale.len());
    let reads = shared.reads.lock().unwrap_or_else(PoisonError::into_inner).clone();
    println!(
        "linearizable reads by (node, phase): {reads:?}; {} failed reads, {} failed writes",
        shared.read_errors.load(Ordering::SeqCst),
        shared.write_errors.load(Ordering::SeqCst)
    );

    c.assert_consistent();
    let leader = c.leader();
    let present: Vec<i64> = c
        .rows(leader, "SELECT id FROM t ORDER BY id")
        .iter()
        .map(|row| row[0].as_i64().expect("id is an integer"))
        .collect();
    let acked = shared.acked_ids.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let lost: Vec<i64> =
        acked.iter().copied().filter(|id| present.binary_search(id).is_err()).collect();
    assert!(lost.is_empty(), "acknowledged ids lost: {lost:?}");
}

/// `freshness=` bounds how long ago a follower last heard from the leader: within the bound a
/// `level=none` read is served; once the follower is cut off from any leader (the other two
/// voters killed) it answers 200 with rqlite's `stale read` error and no rows, while a bound it
/// still meets is served. The leader ignores `freshness`; `freshness_strict` without
/// `freshness` is a 400.
#[test]
fn freshness_refuses_reads_on_a_follower_cut_off_from_the_leader() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let followers = c.followers(leader);
    let follower = followers[0];
    create_table(&c, leader);
    let lsn = insert(&c, leader, 1, "fresh");
    c.wait_all_applied(lsn);
    let sql = "SELECT v FROM t";
    let expected = vec![vec![json!("fresh")]];

    for params in ["level=none&freshness=1s", "level=none&freshness=1s&freshness_strict"] {
        assert_eq!(
            read_ok(&c, follower, sql, params).rows(0),
            expected,
            "node {follower} ?{params}"
        );
    }
    assert_eq!(
        read_ok(&c, leader, sql, "level=none&freshness=1ns").rows(0),
        expected,
        "the leader ignores freshness"
    );
    for node in [leader, follower] {
        let reply = c.query_with(node, sql, "level=none&freshness_strict");
        assert_eq!(
            reply.status, 400,
            "node {node}: freshness_strict without freshness: {}",
            reply.body
        );
    }

    c.kill(leader);
    c.kill(followers[1]);
    let params = "level=none&freshness=500ms";
    let stale = wait_for(TIMEOUT, format!("node {follower} to refuse ?{params} as stale"), || {
        let reply = c.query_with(follower, sql, params);
        assert_eq!(reply.status, 200, "node {follower} ?{params}: {}", reply.body);
        let body = reply.json();
        let refused = body["error"].as_str().is_some_and(|error| error.contains("stale read"));
        if !refused {
            assert_eq!(reply.answer().assert_ok().rows(0), expected, "node {follower} ?{params}");
        }
        refused.then_some(body)
    });
    let results = stale.get("results").and_then(Value::as_array).map_or(0, Vec::len);
    assert_eq!(results, 0, "a stale read returns no rows: {stale}");

    for params in
        ["level=none&freshness=1h", "level=none&freshness=1h&freshness_strict", "level=none"]
    {
        assert_eq!(
            read_ok(&c, follower, sql, params).rows(0),
            expected,
            "node {follower} ?{params}, last heard from the leader well within the bound"
        );
    }
    let reply = c.query_with(follower, sql, "level=none&freshness_strict");
    assert_eq!(reply.status, 400, "freshness_strict without freshness: {}", reply.body);
}

/// Consistent prefix: while rows 1..=200 are inserted in order, one per request, `level=none`
/// reads on every node (leader, followers, learner) only ever see rows 1..=k for some k that
/// never decreases on a node: no gaps, no going back.
#[test]
fn local_reads_see_a_prefix_of_the_writes() {
    const ROWS: i64 = 200;
    let c = TestCluster::start(3, 1);
    let leader = c.leader();
    create_table(&c, leader);

    let done = AtomicBool::new(false);
    let (last, reads) = std::thread::scope(|s| {
        let readers: Vec<_> = c
            .ids()
            .into_iter()
            .map(|node| {
                let (c, done) = (&c, &done);
                s.spawn(move || {
                    let mut reads = 0_usize;
                    let mut k = 0;
                    while !done.load(Ordering::SeqCst) {
                        let read = read_ok(c, node, "SELECT id FROM t ORDER BY id", "level=none");
                        let ids: Vec<i64> = read
                            .rows(0)
                            .iter()
                            .map(|row| row[0].as_i64().expect("id is an integer"))
                            .collect();
                        let len = i64::try_from(ids.len()).expect("row count fits i64");
                        assert!(
                            ids.iter().copied().eq(1..=len),
                            "node {node} (at lsn {}) read ids that are not 1..={len}: {ids:?}",
                            read.lsn()
                        );
                        assert!(len >= k, "node {node} read {len} rows after {k}");
                        k = len;
                        reads += 1;
                    }
                    (node, reads)
                })
            })
            .collect();
        let last = {
            let _done = SetOnDrop(&done);
            let mut last = 0;
            for id in 1..=ROWS {
                last =
                    c.execute_ok(leader, json!([["INSERT INTO t(id, v) VALUES(?, 'prefix')", id]]));
            }
            last
        };
        let reads: Vec<(NodeId, usize)> =
            readers.into_iter().map(|reader| reader.join().expect("a reader panicked")).collect();
        (last, reads)
    });
    println!("prefix reads by node: {reads:?}");
    for (node, n) in reads {
        assert!(n > 0, "node {node} was never read");
    }

    c.wait_all_applied(last);
    let all: Vec<Vec<Value>> = (1..=ROWS).map(|id| vec![json!(id)]).collect();
    for node in c.ids() {
        assert_eq!(c.rows(node, "SELECT id FROM t ORDER BY id"), all, "node {node}");
    }
    c.assert_consistent();
}
