//! Idempotent retries: a write sent with `request_id=<id>` and sent again with the same id (its
//! first answer lost) is answered with the original results and `lsn`, and applied once,
//! whichever node the retry reaches and whoever leads by then.

use integration_tests::{Response, TestCluster};
use serde_json::{Value, json};

/// `POST /db/execute?request_id=<id>` on node `id`.
fn execute_with_id(c: &TestCluster, node: u64, request_id: &str, statements: Value) -> Response {
    c.execute_with(node, &format!("request_id={request_id}"), statements)
}

/// The rows of `kv`, as node `id` sees them in its own database.
fn kv_rows(c: &TestCluster, id: u64) -> Vec<Vec<Value>> {
    c.rows(id, "SELECT k, v FROM kv ORDER BY k")
}

/// Asserts that `retry` is the same answer as `original`: the same results and the same lsn.
fn assert_same_answer(original: &Response, retry: &Response, what: &str) {
    assert_eq!(retry.lsn(), original.lsn(), "{what}: lsn");
    assert_eq!(retry.results(), original.results(), "{what}: results");
}

/// The same insert sent twice with one id: one row on every node, the same answer twice, and the
/// retry takes no log index. Also for a failing request (its error is the answer) and for
/// `/db/request` returning rows.
#[test]
fn a_retry_gets_the_original_answer_and_applies_nothing() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    c.execute_ok(leader, json!(["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)"]));

    let insert = json!([["INSERT INTO kv(k, v) VALUES(?, ?)", "a", "1"]]);
    let first = execute_with_id(&c, leader, "abc", insert.clone());
    first.assert_ok();
    assert_eq!(first.rows_affected(0), 1);
    let retry = execute_with_id(&c, leader, "abc", insert.clone());
    assert_same_answer(&first, &retry, "retry on the leader");

    // The retry took no log index: the next write follows the original directly.
    let next = c.execute_ok(leader, json!([["INSERT INTO kv(k, v) VALUES(?, ?)", "b", "2"]]));
    assert_eq!(next, first.lsn() + 1, "the retry was not written to the log");

    // Without an id, the same insert runs again, and fails on the key.
    let again = c.execute(leader, insert);
    assert!(again.error(0).is_some_and(|e| e.contains("UNIQUE")), "{again:?}");

    c.assert_consistent();
    for id in c.ids() {
        assert_eq!(
            kv_rows(&c, id),
            vec![vec![json!("a"), json!("1")], vec![json!("b"), json!("2")]],
            "node {id}"
        );
    }

    // A failing request's answer is its error: the retry gets it even though the statement
    // would now succeed.
    let clash = json!([["INSERT INTO kv(k, v) VALUES(?, ?)", "b", "clash"]]);
    let failed = execute_with_id(&c, leader, "fails", clash.clone());
    assert!(failed.error(0).is_some_and(|e| e.contains("UNIQUE")), "{failed:?}");
    c.execute_ok(leader, json!(["DELETE FROM kv WHERE k = 'b'"]));
    let retry = execute_with_id(&c, leader, "fails", clash);
    assert_same_answer(&failed, &retry, "retry of a failed request");

    // /db/request takes request_id too; rows returned by the write are part of the answer.
    let returning = json!([["INSERT INTO kv(k, v) VALUES(?, ?) RETURNING k, v", "c", "3"]]);
    let post = |body: &Value| {
        let reply = c.post(leader, "/db/request?request_id=ret", body.to_string());
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.answer()
    };
    let first = post(&returning);
    assert_eq!(first.rows(0), vec![vec![json!("c"), json!("3")]]);
    let retry = post(&returning);
    assert_same_answer(&first, &retry, "retry on /db/request");

    c.assert_consistent();
    for id in c.ids() {
        assert_eq!(
            kv_rows(&c, id),
            vec![vec![json!("a"), json!("1")], vec![json!("c"), json!("3")]],
            "node {id}"
        );
    }
}

/// A retry sent to a follower is forwarded to the leader with its id, and recognised there.
#[test]
fn a_retry_through_a_follower_is_deduplicated() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let followers = c.followers(leader);
    c.execute_ok(leader, json!(["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)"]));

    let insert = json!([["INSERT INTO kv(k, v) VALUES(?, ?)", "f", "1"]]);
    let first = execute_with_id(&c, leader, "via-follower", insert.clone());
    first.assert_ok();
    for &follower in &followers {
        let retry = execute_with_id(&c, follower, "via-follower", insert.clone());
        assert_same_answer(&first, &retry, &format!("retry through node {follower}"));
    }

    // And the other way round: first through a follower, retried on the leader.
    let insert = json!([["INSERT INTO kv(k, v) VALUES(?, ?)", "g", "2"]]);
    let first = execute_with_id(&c, followers[0], "from-follower", insert.clone());
    first.assert_ok();
    let retry = execute_with_id(&c, leader, "from-follower", insert);
    assert_same_answer(&first, &retry, "retry on the leader");

    c.assert_consistent();
    for id in c.ids() {
        assert_eq!(
            kv_rows(&c, id),
            vec![vec![json!("f"), json!("1")], vec![json!("g"), json!("2")]],
            "node {id}"
        );
    }
}

/// The ids live in every replica's database: after the leader is killed, the new leader
/// recognises a retry of a write the old one acknowledged.
#[test]
fn a_retry_after_failover_is_deduplicated() {
    let c = TestCluster::start(3, 0);
    let old = c.leader();
    c.execute_ok(old, json!(["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)"]));

    let insert = json!([["INSERT INTO kv(k, v) VALUES(?, ?)", "x", "1"]]);
    // The answer the client supposedly lost; no waiting for followers to apply it.
    let first = execute_with_id(&c, old, "before-failover", insert.clone());
    first.assert_ok();

    c.kill(old);
    let new = c.leader();
    assert_ne!(new, old, "a killed node cannot lead");
    let other = c.followers(new).into_iter().find(|&id| id != old).expect("a third voter");

    let retry = execute_with_id(&c, new, "before-failover", insert.clone());
    assert_same_answer(&first, &retry, "retry on the new leader");
    let forwarded = execute_with_id(&c, other, "before-failover", insert);
    assert_same_answer(&first, &forwarded, "retry through the other survivor");

    // New writes go on after it, at later indexes.
    let after = c.execute_ok(new, json!([["INSERT INTO kv(k, v) VALUES(?, ?)", "y", "2"]]));
    assert!(after > first.lsn());

    c.assert_consistent();
    for id in c.up() {
        assert_eq!(
            kv_rows(&c, id),
            vec![vec![json!("x"), json!("1")], vec![json!("y"), json!("2")]],
            "node {id}"
        );
    }
}

/// `GET /db/requests/{id}` on node `node`.
fn outcome(c: &TestCluster, node: u64, id: &str) -> integration_tests::Reply {
    c.get(node, &format!("/db/requests/{id}"))
}

/// Any node tells what became of a write by its request id: applied (with the original
/// results and lsn, a failed statement's error included) or not applied as of its applied
/// index; a malformed `after_lsn` is refused.
#[test]
fn outcomes_are_looked_up_on_any_node() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    c.execute_ok(leader, json!(["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)"]));
    let first =
        execute_with_id(&c, leader, "w1", json!([["INSERT INTO kv VALUES(?, ?)", "a", "1"]]));
    first.assert_ok();
    let clash =
        execute_with_id(&c, leader, "w2", json!([["INSERT INTO kv VALUES(?, ?)", "a", "2"]]));
    assert!(clash.error(0).is_some_and(|e| e.contains("UNIQUE")), "{clash:?}");

    for node in c.ids() {
        let applied = outcome(&c, node, "w1");
        assert_eq!(applied.status, 200, "node {node}: {}", applied.body);
        let body = applied.json();
        assert_eq!(body["status"], "applied", "node {node}: {body}");
        assert_eq!(body["lsn"], json!(first.lsn()), "node {node}");
        assert_eq!(body["results"][0]["rows_affected"], 1, "node {node}: {body}");
        let failed = outcome(&c, node, "w2").json();
        assert_eq!(failed["status"], "applied", "a failed write's answer is its error: {failed}");
        assert!(failed["results"][0]["error"].as_str().is_some_and(|e| e.contains("UNIQUE")));

        // Never sent: not applied, as of everything this node had applied, the last write
        // included (the lookup waited for the leader's commit index).
        let unknown = outcome(&c, node, "never-sent").json();
        assert_eq!(unknown["status"], "not_applied", "node {node}: {unknown}");
        assert!(unknown["as_of_lsn"].as_u64().unwrap() >= clash.lsn(), "node {node}: {unknown}");
    }
    let bad = c.get(leader, "/db/requests/w1?after_lsn=x");
    assert_eq!(bad.status, 400, "{}", bad.body);
}

/// Writers with request ids while the leader is killed: every write whose answer did not
/// arrive is looked up afterwards, and the lookup's answer agrees with the final data (a row
/// per applied write); every acknowledged write is found at the lsn it was acknowledged with.
#[test]
fn unknown_outcomes_after_a_failover_are_resolved() {
    let c = TestCluster::start(3, 0);
    let old = c.leader();
    c.execute_ok(old, json!(["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)"]));
    let url = format!("http://{}/db/execute", c.http_addr(old));
    let http = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()
        .unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Per writer: (id, Some(lsn) if acknowledged).
    let sent: Vec<Vec<(String, Option<u64>)>> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (http, url, stop) = (&http, &url, &stop);
                s.spawn(move || {
                    let mut sent = Vec::new();
                    for i in 0.. {
                        let id = format!("w{w}-{i}");
                        let body = json!([["INSERT INTO kv VALUES(?, ?)", id, "v"]]);
                        let answer = http
                            .post(format!("{url}?request_id={id}"))
                            .json(&body)
                            .send()
                            .ok()
                            .filter(|r| r.status().is_success())
                            .and_then(|r| r.json::<Value>().ok())
                            .filter(|a| a["results"][0]["error"].is_null());
                        let lsn = answer.and_then(|a| a["lsn"].as_u64());
                        sent.push((id, lsn));
                        // A writer stops at its first unanswered write, or when told to.
                        if lsn.is_none() || stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return sent;
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        // Kill the leader once the writers are well under way.
        integration_tests::wait_for(std::time::Duration::from_secs(60), "100 writes", || {
            let n = c.rows(old, "SELECT count(*) FROM kv")[0][0].as_u64().unwrap_or(0);
            (n >= 100).then_some(())
        });
        c.kill(old);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });

    let new = c.leader();
    let rows: std::collections::BTreeSet<String> = c
        .query(new, "SELECT k FROM kv", integration_tests::Level::Linearizable)
        .rows(0)
        .into_iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    let (mut acked, mut applied, mut not_applied) = (0, 0, 0);
    for (id, lsn) in sent.iter().flatten() {
        let node = c.up().into_iter().find(|&n| n != new).unwrap_or(new);
        let reply = outcome(&c, node, id);
        assert_eq!(reply.status, 200, "{id}: {}", reply.body);
        let body = reply.json();
        match (lsn, body["status"].as_str()) {
            (Some(lsn), Some("applied")) => {
                assert_eq!(body["lsn"], json!(lsn), "{id}: acknowledged at {lsn}: {body}");
                acked += 1;
            }
            (None, Some("applied")) => applied += 1,
            (None, Some("not_applied")) => not_applied += 1,
            _ => panic!("{id} (acknowledged at {lsn:?}) looked up as {body}"),
        }
        let found = body["status"] == "applied";
        assert_eq!(found, rows.contains(id), "{id}: lookup says {body}, data disagrees");
    }
    println!(
        "outcomes: {acked} acknowledged (found applied), of the unanswered {applied} applied and {not_applied} not applied"
    );
    // The old leader had applied (so committed) 100 rows before it was killed.
    assert!(rows.len() >= 100, "{} rows survived", rows.len());
    assert_eq!(rows.len(), acked + applied, "every row is a write looked up as applied");
}
