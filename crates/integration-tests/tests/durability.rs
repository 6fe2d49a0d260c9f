//! Replication modes: how many members must hold a write before it is acknowledged.
//!
//! * `semi-sync` (the default): a majority of voters has it durably (the Raft commit).
//! * `sync`: every other member, voters and learners, has applied it, so a `level=none` read
//!   on any node right after the answer sees it.
//! * `replicas:K`: K other members have applied it.
//!
//! A mode that cannot be met within `--sync-timeout` answers 503 and never hangs; for `sync`
//! and `replicas:K` the answer says the write is committed and which members have not applied
//! it. The leader reports how far behind each member is in `/status` and `/metrics`.

use std::time::{Duration, Instant};

use integration_tests::{Level, Lsn, NodeId, Reply, Response, TIMEOUT, TestCluster, wait_for};
use serde_json::{Value, json};

/// `--sync-timeout` of the clusters whose tests expect a mode not to be met.
const SYNC_TIMEOUT: &str = "1s";

/// How long an answer may take when the mode cannot be met with a one-second sync timeout:
/// the timeout plus a generous margin for a loaded machine. More than that is a hang.
const UNMET_ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// How long a semi-sync write may take while a quorum of voters is up and a learner is not.
const PROMPT_WRITE_WITHIN: Duration = Duration::from_secs(1);

/// `POST <endpoint>` on node `id` with `statements`, with `?durability=<durability>` when
/// given; returns the answer and how long it took.
fn write(
    c: &TestCluster,
    id: NodeId,
    endpoint: &str,
    durability: Option<&str>,
    statements: &Value,
) -> (Reply, Duration) {
    let path = match durability {
        Some(durability) => format!("{endpoint}?durability={durability}"),
        None => endpoint.to_string(),
    };
    let started = Instant::now();
    let reply = c.post(id, &path, statements.to_string());
    (reply, started.elapsed())
}

/// Like [`write`] on `/db/execute`, asserting a 200 answer in which every statement succeeded;
/// returns the answer and how long it took.
fn write_ok(
    c: &TestCluster,
    id: NodeId,
    durability: Option<&str>,
    statements: &Value,
) -> (Response, Duration) {
    let (reply, took) = write(c, id, "/db/execute", durability, statements);
    assert_eq!(
        reply.status, 200,
        "node {id} /db/execute durability={durability:?} {statements}: {}",
        reply.body
    );
    let response = reply.answer();
    response.assert_ok();
    (response, took)
}

/// The `v` of row `id` of table `t`, read from node `node`'s own data (`level=none`), and the
/// applied index the read was served at.
fn local_value(c: &TestCluster, node: NodeId, id: i64) -> (Vec<Vec<Value>>, Lsn) {
    let read = c.query(node, &format!("SELECT v FROM t WHERE id = {id}"), Level::None);
    (read.rows(0), read.lsn())
}

/// Asserts that row `id` of table `t` holds `v` on node `node`, read from its own data.
fn assert_local_row(c: &TestCluster, node: NodeId, id: i64, v: &str) {
    let (rows, lsn) = local_value(c, node, id);
    assert_eq!(rows, vec![vec![json!(v)]], "row {id} on node {node} (read at applied index {lsn})");
}

/// The node ids of a JSON array, whether written as numbers or as strings.
fn node_ids(value: &Value) -> Vec<NodeId> {
    let ids = value.as_array().unwrap_or_else(|| panic!("not an array of node ids: {value}"));
    let mut ids: Vec<NodeId> = ids
        .iter()
        .map(|id| {
            id.as_u64()
                .or_else(|| id.as_str().and_then(|s| s.parse().ok()))
                .unwrap_or_else(|| panic!("not a node id: {id} in {value}"))
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// The `replication` subtree of node `id`'s `/status`.
fn replication(c: &TestCluster, id: NodeId) -> Value {
    let reply = c.get(id, "/status");
    assert_eq!(reply.status, 200, "node {id} /status: {}", reply.body);
    let status = reply.json();
    status
        .get("replication")
        .unwrap_or_else(|| panic!("node {id} /status has no replication field: {status}"))
        .clone()
}

/// `lag_entries` of member `node` in the leader's `/status`, if known.
fn lag_entries(c: &TestCluster, leader: NodeId, node: NodeId) -> Option<u64> {
    c.status(leader).replication?.get(&node.to_string())?.lag_entries
}

/// Node `id`'s `/metrics`, as text.
fn metrics(c: &TestCluster, id: NodeId) -> String {
    let reply = c.get(id, "/metrics");
    assert_eq!(reply.status, 200, "node {id} /metrics: {}", reply.body);
    reply.body
}

/// The samples of metric `name` in a Prometheus text exposition: each with its label set (the
/// text between the braces, empty without labels) and its value.
fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, rest) = if let Some(labelled) = rest.strip_prefix('{') {
                let end = labelled.find('}')?;
                (&labelled[..end], &labelled[end + 1..])
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                // Another metric whose name starts with `name`.
                return None;
            };
            let value = rest.split_whitespace().next()?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                value => value.parse().ok()?,
            };
            Some((labels.to_string(), value))
        })
        .collect()
}

/// The value of metric `name` for member `node` (the sample labelled `node="<node>"`).
fn node_sample(text: &str, name: &str, node: NodeId) -> Option<f64> {
    let label = format!("node=\"{node}\"");
    samples(text, name)
        .into_iter()
        .find(|(labels, _)| labels.split(',').any(|l| l.trim() == label))
        .map(|(_, value)| value)
}

/// A sync write is applied on every member, learner included, before it is acknowledged: a
/// `level=none` read on any node right after the answer sees it, through `/db/execute` and
/// `/db/request` alike, with no waiting in between.
#[test]
fn sync_write_is_visible_on_every_node_at_once() {
    let c = TestCluster::start(3, 1);
    let leader = c.leader();
    write_ok(&c, leader, Some("sync"), &json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));

    for i in 0..50_i64 {
        let v = format!("sync {i}");
        let statements = json!([["INSERT INTO t(id, v) VALUES(?, ?)", i, v]]);
        let endpoint = if i % 2 == 0 { "/db/execute" } else { "/db/request" };
        let (reply, _) = write(&c, leader, endpoint, Some("sync"), &statements);
        assert_eq!(reply.status, 200, "{endpoint}?durability=sync, row {i}: {}", reply.body);
        let response = reply.answer();
        response.assert_ok();
        let lsn = response.lsn();
        for node in c.ids() {
            let (rows, applied) = local_value(&c, node, i);
            assert_eq!(
                rows,
                vec![vec![json!(v)]],
                "row {i} (lsn {lsn}, written via {endpoint}) on node {node} right after the sync answer; \
                 the node read at applied index {applied}"
            );
            assert!(
                applied >= lsn,
                "node {node} served the read at applied index {applied}, before the sync write's lsn {lsn}"
            );
        }
    }
    c.assert_consistent();
}

/// Semi-sync needs a majority of voters, no more: with one of three voters down writes go on;
/// with two down a write answers 503 (no quorum) within about the sync timeout instead of
/// hanging; once they are back the cluster takes writes again and nothing acknowledged is lost.
#[test]
fn semi_sync_needs_a_majority_and_fails_fast_without_one() {
    let c = TestCluster::start_with(3, 0, &["--sync-timeout", SYNC_TIMEOUT]);
    let leader = c.leader();
    let followers = c.followers(leader);
    write_ok(&c, leader, None, &json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));

    c.kill(followers[0]);
    let mut expected = Vec::new();
    for i in 0..10_i64 {
        let v = format!("one down {i}");
        // The cluster default is semi-sync: alternate between asking for it and not.
        let durability = (i % 2 == 0).then_some("semi-sync");
        write_ok(&c, leader, durability, &json!([["INSERT INTO t(id, v) VALUES(?, ?)", i, v]]));
        expected.push(vec![json!(i), json!(v)]);
    }

    c.kill(followers[1]);
    for (i, durability) in [(100_i64, Some("semi-sync")), (101, None)] {
        let statements = json!([["INSERT INTO t(id, v) VALUES(?, 'no quorum')", i]]);
        let (reply, took) = write(&c, leader, "/db/execute", durability, &statements);
        assert_eq!(
            reply.status, 503,
            "durability={durability:?} with two of three voters down: {}",
            reply.body
        );
        assert!(
            took < UNMET_ANSWER_WITHIN,
            "durability={durability:?} without a quorum took {took:?} to answer 503"
        );
        let error = reply.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("no quorum"), "the 503 says why: {}", reply.body);
    }

    c.restart(followers[0]);
    c.restart(followers[1]);
    let leader = c.leader();
    for i in 200..205_i64 {
        let v = format!("back {i}");
        write_ok(
            &c,
            leader,
            Some("semi-sync"),
            &json!([["INSERT INTO t(id, v) VALUES(?, ?)", i, v]]),
        );
        expected.push(vec![json!(i), json!(v)]);
    }
    c.assert_consistent();
    // The writes refused without a quorum may or may not have been committed later; every
    // acknowledged one must be there.
    for node in c.ids() {
        assert_eq!(
            c.rows(node, "SELECT id, v FROM t WHERE v <> 'no quorum' ORDER BY id"),
            expected,
            "node {node}"
        );
    }
}

/// A learner never counts for a semi-sync commit: frozen (SIGSTOP) or killed, it slows no
/// write; afterwards it catches up and holds the same data as the leader.
#[test]
fn stopped_learner_does_not_slow_semi_sync_writes() {
    let c = TestCluster::start(3, 1);
    let leader = c.leader();
    let learner = c.learners()[0];
    let (created, _) =
        write_ok(&c, leader, None, &json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));
    c.wait_applied(learner, created.lsn());

    c.pause(learner);
    let mut lsn = 0;
    for i in 0..20_i64 {
        let statements = json!([["INSERT INTO t(id, v) VALUES(?, ?)", i, format!("paused {i}")]]);
        let (response, took) = write_ok(&c, leader, Some("semi-sync"), &statements);
        assert!(
            took < PROMPT_WRITE_WITHIN,
            "semi-sync write {i} took {took:?} with the learner stopped"
        );
        lsn = response.lsn();
    }
    c.resume(learner);
    c.wait_applied(learner, lsn);
    assert_eq!(c.dump(learner), c.dump(leader), "the learner caught up with the leader");

    c.kill(learner);
    for i in 100..110_i64 {
        let statements = json!([["INSERT INTO t(id, v) VALUES(?, ?)", i, format!("killed {i}")]]);
        let (_, took) = write_ok(&c, leader, Some("semi-sync"), &statements);
        assert!(
            took < PROMPT_WRITE_WITHIN,
            "semi-sync write {i} took {took:?} with the learner killed"
        );
    }
    c.restart(learner);
    let dump = c.assert_consistent();
    assert_eq!(
        dump["tables"]["t"]["values"].as_array().map(Vec::len),
        Some(30),
        "every acknowledged row is there: {dump}"
    );
}

/// `replicas:2` with one of two followers down cannot be met: the answer is a 503 that says
/// the write is committed, at which lsn, and that the down follower has not applied it. The
/// write is indeed kept, `replicas:1` is met by the live follower, and once the down follower
/// is back it has every row and `replicas:2` is met again.
#[test]
fn replicas_not_met_answers_503_but_the_write_is_committed() {
    let c = TestCluster::start_with(3, 0, &["--sync-timeout", SYNC_TIMEOUT]);
    let leader = c.leader();
    let followers = c.followers(leader);
    let (up, down) = (followers[0], followers[1]);
    write_ok(&c, leader, Some("sync"), &json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));

    c.kill(down);
    let (reply, took) = write(
        &c,
        leader,
        "/db/execute",
        Some("replicas:2"),
        &json!(["INSERT INTO t VALUES(1, 'unmet')"]),
    );
    assert_eq!(reply.status, 503, "replicas:2 with one of two followers down: {}", reply.body);
    assert!(took < UNMET_ANSWER_WITHIN, "replicas:2 took {took:?} to answer 503");
    let body = reply.json();
    assert!(
        body["error"].as_str().is_some_and(|error| !error.trim().is_empty()),
        "the 503 says why: {body}"
    );
    assert_eq!(body["committed"], json!(true), "{body}");
    let lsn = body["lsn"].as_u64().unwrap_or_else(|| panic!("the 503 has no lsn: {body}"));
    assert_eq!(
        node_ids(&body["unconfirmed"]),
        vec![down],
        "only the down follower (node {down}) has not applied lsn {lsn}: {body}"
    );

    // Committed, so kept.
    c.wait_applied(leader, lsn);
    c.wait_applied(up, lsn);
    assert_local_row(&c, leader, 1, "unmet");
    assert_local_row(&c, up, 1, "unmet");

    // One other member is up, so one replica can be had, and it has the row at once.
    write_ok(&c, leader, Some("replicas:1"), &json!(["INSERT INTO t VALUES(2, 'one replica')"]));
    assert_local_row(&c, up, 2, "one replica");

    c.restart(down);
    let (last, _) =
        write_ok(&c, leader, None, &json!(["INSERT INTO t VALUES(3, 'after restart')"]));
    c.wait_all_applied(last.lsn());
    for node in c.ids() {
        assert_eq!(
            c.rows(node, "SELECT id, v FROM t ORDER BY id"),
            vec![
                vec![json!(1), json!("unmet")],
                vec![json!(2), json!("one replica")],
                vec![json!(3), json!("after restart")],
            ],
            "node {node}"
        );
    }

    // Both followers are up and caught up: replicas:2 is met again.
    write_ok(&c, leader, Some("replicas:2"), &json!(["INSERT INTO t VALUES(4, 'two replicas')"]));
    for node in followers {
        assert_local_row(&c, node, 4, "two replicas");
    }
    c.assert_consistent();
}

/// The leader reports each member's replication in `/status` (non-leaders report none) and in
/// `/metrics`: a frozen learner's lag grows with the writes it misses while the voters stay
/// current, and returns to zero once it is thawed.
#[test]
fn replica_lag_is_reported_and_recovers() {
    const WRITES: u64 = 30;
    let c = TestCluster::start(3, 1);
    let leader = c.leader();
    let learner = c.learners()[0];
    let others: Vec<NodeId> = c.ids().into_iter().filter(|&id| id != leader).collect();

    let (created, _) =
        write_ok(&c, leader, None, &json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));
    c.wait_all_applied(created.lsn());

    let members = replication(&c, leader);
    let mut listed: Vec<NodeId> = members
        .as_object()
        .unwrap_or_else(|| panic!("the leader's replication is not an object: {members}"))
        .keys()
        .map(|key| key.parse().unwrap_or_else(|_| panic!("not a node id: {key} in {members}")))
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, others, "the leader lists every other member: {members}");
    for &node in &others {
        let member = &members[node.to_string()];
        let role = if node == learner { "learner" } else { "follower" };
        assert_eq!(member["role"], json!(role), "node {node} in {members}");
        for field in ["matched_index", "applied_index", "lag_entries", "lag_ms"] {
            let value = member
                .get(field)
                .unwrap_or_else(|| panic!("node {node} has no {field} in {members}"));
            assert!(value.is_null() || value.is_u64(), "node {node} {field} in {members}");
        }
    }
    for &node in &others {
        assert_eq!(replication(&c, node), Value::Null, "node {node} does not lead");
    }
    wait_for(TIMEOUT, "every member to be reported with no lag", || {
        others.iter().all(|&node| lag_entries(&c, leader, node) == Some(0)).then_some(())
    });

    c.pause(learner);
    for i in 0..WRITES {
        write_ok(&c, leader, None, &json!([["INSERT INTO t(id, v) VALUES(?, 'lag')", i]]));
    }
    let lag = wait_for(TIMEOUT, format!("a lag of {WRITES}+ entries for node {learner}"), || {
        lag_entries(&c, leader, learner).filter(|&lag| lag >= WRITES)
    });
    wait_for(TIMEOUT, "the voters to be reported with no lag", || {
        others
            .iter()
            .filter(|&&node| node != learner)
            .all(|&node| lag_entries(&c, leader, node) == Some(0))
            .then_some(())
    });
    let text = wait_for(TIMEOUT, format!("/metrics to show node {learner}'s lag"), || {
        let text = metrics(&c, leader);
        node_sample(&text, "keel_replica_lag_entries", learner)
            .is_some_and(|lag| lag > 0.0)
            .then_some(text)
    });
    assert!(
        node_sample(&text, "keel_replica_lag_seconds", learner).is_some(),
        "keel_replica_lag_seconds for node {learner} (its lag is {lag} entries):\n{text}"
    );
    assert!(
        samples(&text, "keel_applied_index").iter().any(|&(_, index)| index > 0.0),
        "keel_applied_index:\n{text}"
    );
    assert!(
        samples(&text, "keel_writes_total").iter().map(|(_, n)| n).sum::<f64>() >= WRITES as f64,
        "keel_writes_total counts the writes:\n{text}"
    );
    assert!(!samples(&text, "keel_errors_total").is_empty(), "keel_errors_total:\n{text}");
    let buckets = samples(&text, "keel_commit_seconds_bucket");
    assert!(
        buckets.iter().any(|(labels, n)| labels.contains("durability=")
            && labels.contains("le=")
            && *n > 0.0),
        "keel_commit_seconds is a histogram by durability:\n{text}"
    );
    assert!(
        !samples(&text, "keel_commit_seconds_count").is_empty()
            && !samples(&text, "keel_commit_seconds_sum").is_empty(),
        "keel_commit_seconds has a count and a sum:\n{text}"
    );

    c.resume(learner);
    wait_for(TIMEOUT, "every member to be reported with no lag again", || {
        others.iter().all(|&node| lag_entries(&c, leader, node) == Some(0)).then_some(())
    });
    wait_for(TIMEOUT, format!("/metrics to show no lag for node {learner}"), || {
        (node_sample(&metrics(&c, leader), "keel_replica_lag_entries", learner) == Some(0.0))
            .then_some(())
    });
    c.assert_consistent();
}

/// A durability the cluster cannot understand or can never meet is refused with a 400 on both
/// write endpoints, whichever node receives it, and nothing is written; every valid one works.
#[test]
fn bad_durability_is_refused() {
    let c = TestCluster::start(3, 1);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    // Three other members: replicas:3 is the most that can be asked for.
    let bad = [
        "bogus",
        "SYNC!",
        "replicas",
        "replicas:",
        "replicas:x",
        "replicas:0",
        "replicas:-1",
        "replicas:1.5",
        "replicas:4",
        "replicas:99",
    ];
    let good = ["semi-sync", "sync", "replicas:1", "replicas:3"];
    write_ok(&c, leader, None, &json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));

    let mut id = 0_i64;
    let mut last = 0;
    for node in [leader, follower] {
        for endpoint in ["/db/execute", "/db/request"] {
            for durability in bad {
                let statements = json!(["INSERT INTO t(v) VALUES('refused')"]);
                let (reply, _) = write(&c, node, endpoint, Some(durability), &statements);
                assert_eq!(
                    reply.status, 400,
                    "node {node} {endpoint}?durability={durability}: {}",
                    reply.body
                );
                assert!(
                    !reply.body.trim().is_empty(),
                    "the 400 for durability={durability} says why"
                );
            }
            for durability in good {
                id += 1;
                let statements = json!([["INSERT INTO t(id, v) VALUES(?, ?)", id, durability]]);
                let (reply, _) = write(&c, node, endpoint, Some(durability), &statements);
                assert_eq!(
                    reply.status, 200,
                    "node {node} {endpoint}?durability={durability}: {}",
                    reply.body
                );
                let response = reply.answer();
                response.assert_ok();
                last = response.lsn();
            }
        }
    }
    c.wait_all_applied(last);
    c.assert_consistent();
    for node in c.ids() {
        assert_eq!(
            c.rows(node, "SELECT count(*), count(DISTINCT v) FROM t WHERE v <> 'refused'"),
            vec![vec![json!(id), json!(good.len())]],
            "node {node}"
        );
        assert_eq!(
            c.rows(node, "SELECT count(*) FROM t WHERE v = 'refused'"),
            vec![vec![json!(0)]],
            "node {node}: a refused write was applied"
        );
    }
}
