//! Queued writes (`POST /db/execute?queue`), compared with rqlite's: `http/service.go`
//! (`queuedExecute`, `runQueue`), `queue/queue.go` (batching, sequence numbers) and
//! `cmd/rqlited/config_flags.go` (`-write-queue-*`). Keel's additions (`GET /db/queue/{n}`,
//! the queue's metrics, a 503 for a full queue, flushing at shutdown) are checked beside them.

use integration_tests::{Level, Reply, TIMEOUT, TestCluster, wait_for};
use serde_json::{Value, json};

/// `POST /db/execute?queue<params>` with a JSON body.
fn queue(c: &TestCluster, id: u64, params: &str, body: Value) -> Reply {
    c.post(id, &format!("/db/execute?queue{params}"), body.to_string())
}

/// The sequence number of an accepted queued write, checking rqlite's answer shape: 200 and
/// `{"results": [], "sequence_number": N}` with N > 0 (plus Keel's `lsn`/`error` with `wait`).
fn accepted(reply: &Reply) -> i64 {
    assert_eq!(reply.status, 200, "queued write refused: {}", reply.body);
    let body = reply.json();
    assert_eq!(body["results"], json!([]), "{body}");
    let seq = body["sequence_number"].as_i64().unwrap_or_else(|| panic!("no number: {body}"));
    assert!(seq > 0, "sequence numbers are non-zero: {body}");
    seq
}

/// `GET /db/queue/{seq}` on node `id`, as JSON (any status).
fn outcome(c: &TestCluster, id: u64, seq: i64) -> Value {
    c.get(id, &format!("/db/queue/{seq}")).json()
}

/// Waits until queued write `seq` of node `id` is no longer pending and returns its outcome.
fn finished(c: &TestCluster, id: u64, seq: i64) -> Value {
    wait_for(TIMEOUT, format!("queued write {seq} of node {id} to finish"), || {
        let o = outcome(c, id, seq);
        (o["state"] != "pending").then_some(o)
    })
}

/// The value of an unlabelled metric in node `id`'s `/metrics`.
fn metric(c: &TestCluster, id: u64, name: &str) -> f64 {
    let text = c.get(id, "/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// The `v` column of table `q`, sorted, read through the leader with `level=strong`.
fn values(c: &TestCluster, id: u64) -> Vec<String> {
    let rows = c.query(id, "SELECT v FROM q ORDER BY v", Level::Strong).rows(0);
    rows.iter().map(|r| r[0].as_str().expect("text").to_string()).collect()
}

fn insert(v: &str) -> Value {
    json!([["INSERT INTO q(v) VALUES(?)", v]])
}

/// On the leader and through a follower, a queued write is answered at once with rqlite's
/// `{"results": [], "sequence_number": N}`, N growing on each node (rqlite `queuedExecute`;
/// `Queue.Write` increments a per-node number), and committed asynchronously: the rows appear.
/// With `wait` the answer comes once the batch has committed (rqlite closes the request's
/// flush channel after `runQueue` executed the batch), so a strong read right after sees it.
/// On a follower rqlite queues locally and `runQueue` forwards the batch to the leader; so does
/// Keel. rqlite discards a queued statement's SQL error; Keel reports it in
/// `GET /db/queue/{n}` and counts it in `/metrics`. An empty body with `wait` is rqlite's
/// checkpoint (`queuedExecute` lets `no statements` through when `wait` is set).
/// `/status` has rqlite's `http.queue._default.sequence_number`, the last number flushed.
/// A write queued on a follower while the leader is dead is flushed once a new leader is
/// elected.
#[test]
fn queued_writes_commit_and_report_their_outcome() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    c.execute_ok(leader, json!(["CREATE TABLE q (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"]));

    // On the leader: exactly rqlite's shape, at once; numbers grow.
    let first = queue(&c, leader, "", insert("leader-1"));
    assert_eq!(first.json().as_object().map(|o| o.len()), Some(2), "{}", first.body);
    let s1 = accepted(&first);
    let s2 = accepted(&queue(&c, leader, "", insert("leader-2")));
    assert!(s2 > s1, "{s2} follows {s1}");
    wait_for(TIMEOUT, "both queued rows on the leader", || {
        let rows = c.rows(leader, "SELECT v FROM q ORDER BY v");
        (rows == vec![vec![json!("leader-1")], vec![json!("leader-2")]]).then_some(())
    });
    let o1 = finished(&c, leader, s1);
    assert_eq!(o1["state"], "committed", "{o1}");
    assert_eq!(o1["sequence_number"], s1, "{o1}");
    assert!(o1["lsn"].as_u64().is_some_and(|l| l > 0), "{o1}");

    // `wait`: answered after the commit, so a strong read right after sees the row.
    let waited = queue(&c, leader, "&wait", insert("leader-wait"));
    let s3 = accepted(&waited);
    assert!(s3 > s2);
    assert!(waited.json()["lsn"].as_u64().is_some(), "Keel adds the lsn: {}", waited.body);
    assert!(values(&c, leader).contains(&"leader-wait".to_string()));

    // Through a follower: queued there, flushed to the leader.
    let f1 = accepted(&queue(&c, follower, "", insert("follower-1")));
    let f2 = accepted(&queue(&c, follower, "&wait", insert("follower-wait")));
    assert!(f2 > f1, "{f2} follows {f1} on the follower");
    assert!(values(&c, leader).contains(&"follower-wait".to_string()));
    assert_eq!(finished(&c, follower, f1)["state"], "committed");

    // A failing statement: failed, with SQLite's error, logged and counted.
    let bad = accepted(&queue(&c, follower, "", json!(["INSERT INTO missing VALUES(1)"])));
    let o = finished(&c, follower, bad);
    assert_eq!(o["state"], "failed", "{o}");
    assert!(o["error"].as_str().is_some_and(|e| e.contains("no such table: missing")), "{o}");
    assert_eq!(o["statement"], 0, "{o}");
    // Without `transaction` the request's other statements stand alone, as in rqlite.
    let partial =
        json!([["INSERT INTO q(v) VALUES(?)", "partial"], "INSERT INTO missing VALUES(1)"]);
    let o = finished(&c, follower, accepted(&queue(&c, follower, "", partial)));
    assert_eq!((o["state"].as_str(), o["statement"].as_u64()), (Some("failed"), Some(1)), "{o}");
    assert!(o["lsn"].as_u64().is_some(), "the first statement took effect: {o}");
    assert!(values(&c, leader).contains(&"partial".to_string()));
    assert_eq!(metric(&c, follower, "keel_queued_writes_failed_total"), 2.0);
    assert_eq!(metric(&c, follower, "keel_queued_writes_committed_total"), 2.0);
    assert_eq!(metric(&c, follower, "keel_queued_writes_accepted_total"), 4.0);
    assert_eq!(metric(&c, follower, "keel_queue_depth"), 0.0);

    // A checkpoint: `[]` with `wait` passes once everything before it is flushed.
    let checkpoint = c.post(follower, "/db/execute?queue&wait", "[]");
    assert!(accepted(&checkpoint) > f2);

    let status = c.get(follower, "/status").json();
    let flushed = &status["http"]["queue"]["_default"]["sequence_number"];
    assert!(flushed.as_i64().is_some_and(|n| n >= f2), "{status}");
    assert_eq!(status["http"]["queue"]["_default"]["max_size"], 1024, "rqlite's default");
    c.assert_consistent();

    // The leader dies: a write queued on a follower stays in the follower's queue, its flush is
    // retried (rqlite's `runQueue` retries the same way), and it commits once, under the new
    // leader. A client that finds no leader during the election is refused, and retries.
    c.kill(leader);
    let seq = wait_for(TIMEOUT, "the follower to accept a queued write", || {
        let r = queue(&c, follower, "", insert("after-failover"));
        (r.status == 200).then(|| accepted(&r))
    });
    assert_eq!(finished(&c, follower, seq)["state"], "committed");
    let now = c.leader();
    assert_ne!(now, leader);
    let count = c.query(now, "SELECT count(*) FROM q WHERE v = 'after-failover'", Level::Strong);
    assert_eq!(count.rows(0), vec![vec![json!(1)]], "committed exactly once");
}

/// A malformed queued request is refused at once with a normal execute's 400 and message
/// (rqlite's `ParseRequest` messages; rqlite itself answers 400 only for `no statements` and
/// queues an unparseable body as nothing, which Keel does not copy). `GET /db/queue/{n}` is
/// Keel's: 400 for a number that is not one, 404 for one this node did not hand out.
/// With `--write-queue-tx` a batch is one transaction (rqlite's `-write-queue-tx`:
/// `runQueue` sends `Transaction: DefaultQueueTx`): one failing statement fails every request
/// of the batch. A batch is flushed when `--write-queue-batch-size` requests are queued (rqlite
/// `Queue.run`). On SIGTERM the node flushes what is queued before exiting (rqlite's `Close`
/// stops the queue; Keel commits first), and numbers keep growing across the restart (rqlite
/// starts them from the wall clock in nanoseconds).
#[test]
fn bad_input_batch_transactions_and_flush_at_shutdown() {
    let c = TestCluster::start_with(
        1,
        0,
        &["--write-queue-tx", "--write-queue-batch-size", "3", "--write-queue-timeout", "1h"],
    );
    let node = c.leader();
    c.execute_ok(node, json!(["CREATE TABLE q (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"]));

    for (body, message) in [
        ("not json", "invalid JSON body"),
        ("[]", "no statements"),
        (r#"{"a": 1}"#, "invalid request"),
        (r#"[["INSERT INTO q(v) VALUES(?)", {"v": [1, {}]}]]"#, "unsupported type"),
    ] {
        let r = c.post(node, "/db/execute?queue", body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.json()["error"], message, "{body}");
    }
    assert_eq!(c.get(node, "/db/queue/abc").status, 400);
    let unknown = c.get(node, "/db/queue/1");
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(unknown.body.contains("kept 600 s"), "the answer says how long: {}", unknown.body);
    assert_eq!(metric(&c, node, "keel_queued_writes_accepted_total"), 0.0, "nothing queued");

    // Three requests fill a batch; the middle one fails, so the transaction fails them all.
    let seqs: Vec<i64> = [insert("tx-1"), json!(["INSERT INTO missing VALUES(1)"]), insert("tx-2")]
        .into_iter()
        .map(|body| accepted(&queue(&c, node, "", body)))
        .collect();
    let outcomes: Vec<Value> = seqs.iter().map(|&s| finished(&c, node, s)).collect();
    assert!(outcomes.iter().all(|o| o["state"] == "failed"), "{outcomes:?}");
    assert!(outcomes[1]["error"].as_str().unwrap().contains("no such table: missing"));
    for o in [&outcomes[0], &outcomes[2]] {
        let error = o["error"].as_str().unwrap();
        assert!(error.contains(&format!("queued write {} failed", seqs[1])), "{error}");
    }
    assert!(values(&c, node).is_empty(), "the batch was rolled back");

    // One request does not fill a batch and the timer is an hour: it waits in the queue until
    // the node is stopped, which flushes it.
    let last = accepted(&queue(&c, node, "", insert("at-shutdown")));
    assert_eq!(outcome(&c, node, last)["state"], "pending");
    assert_eq!(metric(&c, node, "keel_queue_depth"), 1.0);
    c.restart(node);
    assert_eq!(values(&c, node), vec!["at-shutdown".to_string()]);
    assert_eq!(c.get(node, &format!("/db/queue/{last}")).status, 404, "outcomes are in memory");
    let after = accepted(&queue(&c, node, "", insert("after-restart")));
    assert!(after > last, "{after} follows {last} across the restart");
}

/// A full queue answers 503 with `Retry-After` and queues nothing, and every write it did
/// acknowledge commits exactly once. (rqlite's `Queue.Write` blocks the request instead while
/// its channel of `-write-queue-capacity` requests is full.) With `wait`, a request whose
/// batch has not committed within `timeout` gets rqlite's 408 `queue wait timeout`
/// (`queuedExecute`), and the write stays queued. Flushing retries while the leader cannot
/// commit, as rqlite's `runQueue` does; the request id each flushed write carries keeps a retry
/// of a write that did commit from applying twice.
#[test]
fn full_queue_refuses_and_wait_times_out() {
    let c = TestCluster::start_with(
        3,
        0,
        &["--write-queue-capacity", "1", "--write-queue-batch-size", "1", "--sync-timeout", "1s"],
    );
    let leader = c.leader();
    c.execute_ok(leader, json!(["CREATE TABLE q (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"]));
    // Without its followers the leader cannot commit: the first batch stays in flight.
    let followers = c.followers(leader);
    for &f in &followers {
        c.pause(f);
    }

    let timed_out = queue(&c, leader, "&wait&timeout=500ms", insert("waited"));
    assert_eq!(timed_out.status, 408, "{}", timed_out.body);
    assert_eq!(timed_out.json()["error"], "queue wait timeout");

    // One batch is in flight and the queue holds one more request: at most one of these is
    // queued, and the next is refused.
    let client = reqwest::blocking::Client::builder().no_proxy().build().expect("client");
    let mut queued = Vec::new();
    let refused = (0..2).find_map(|i| {
        let v = format!("queued-{i}");
        let resp = client
            .post(c.url(leader, "/db/execute?queue"))
            .header("content-type", "application/json")
            .body(insert(&v).to_string())
            .send()
            .expect("POST");
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get("retry-after").map(|h| h.to_str().unwrap().to_string());
        let body: Value = resp.json().expect("JSON answer");
        match status {
            200 => {
                queued.push((v, body["sequence_number"].as_i64().expect("number")));
                None
            }
            _ => Some((status, retry_after, body)),
        }
    });
    let (status, retry_after, body) = refused.expect("a full queue refuses the second request");
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(body["error"].as_str().is_some_and(|e| e.contains("write queue full")), "{body}");
    assert_eq!(metric(&c, leader, "keel_queued_writes_refused_total"), 1.0);

    for &f in &followers {
        c.resume(f);
    }
    // The queue is the original leader's, whoever leads now: ask it how each write ended.
    for (_, seq) in &queued {
        assert_eq!(finished(&c, leader, *seq)["state"], "committed");
    }
    let mut expected: Vec<String> = queued.into_iter().map(|(v, _)| v).collect();
    expected.push("waited".to_string());
    expected.sort();
    let now = c.leader();
    wait_for(TIMEOUT, "the write that timed out waiting to commit too", || {
        (c.rows(now, "SELECT count(*) FROM q") == vec![vec![json!(expected.len())]]).then_some(())
    });
    assert_eq!(values(&c, now), expected, "each acknowledged write once, nothing refused");
    c.assert_consistent();
}
