//! What one statement may cost: a statement that runs too long is interrupted with a clear
//! error (the node's `--max-statement-time`, or less with rqlite's `db_timeout`), a result over
//! `--max-result-rows` is refused, a value over `--max-result-bytes` cannot even be built, and
//! afterwards the cluster takes writes as before and every node holds the same data.

use integration_tests::{Level, TestCluster};
use serde_json::json;

/// A statement that never ends on its own: counts forever.
const RUNAWAY_SELECT: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
/// The same as a write: inserts forever.
const RUNAWAY_INSERT: &str = "INSERT INTO t(v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c";

#[test]
fn runaway_statements_are_interrupted_and_large_results_refused() {
    let c =
        TestCluster::start_with(3, 0, &["--max-statement-time", "2s", "--max-result-rows", "1000"]);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    c.execute_ok(leader, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"]));

    // A runaway write, with a per-request limit below the node's.
    let answer = c.execute_with(leader, "db_timeout=300ms", json!([RUNAWAY_INSERT]));
    let error = answer.error(0).expect("the runaway insert fails");
    assert!(error.contains("time limit of 300ms"), "{error}");

    // Without db_timeout, or asking for more than the node allows, the node's limit holds.
    for params in ["", "db_timeout=1h"] {
        let answer = c.execute_with(follower, params, json!([RUNAWAY_INSERT]));
        let error = answer.error(0).expect("the runaway insert fails");
        assert!(error.contains("time limit of 2s"), "with {params:?}: {error}");
    }

    // In a transaction the whole request is undone, including the statement before it.
    let answer = c.execute_with(
        leader,
        "transaction&db_timeout=200ms",
        json!(["INSERT INTO t(v) VALUES (-1)", RUNAWAY_INSERT]),
    );
    assert!(answer.error(1).is_some_and(|e| e.contains("time limit")), "{answer}");

    // A runaway read, on a follower's own copy and through the leader.
    for level in ["none", "weak"] {
        let mut url = format!("/db/query?level={level}&db_timeout=250ms&q=");
        url.push_str(&RUNAWAY_SELECT.replace(' ', "%20").replace('+', "%2B"));
        let reply = c.get(follower, &url);
        assert_eq!(reply.status, 200, "{}", reply.body);
        let error = reply.json()["results"][0]["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("time limit of 250ms"), "level {level}: {}", reply.body);
    }

    // A bad db_timeout is the client's mistake.
    let reply = c.post(leader, "/db/execute?db_timeout=soon", json!(["SELECT 1"]).to_string());
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("db_timeout is not a valid duration"), "{}", reply.body);

    // Result rows: 1000 is fine, 1001 is refused with the limit named.
    let rows = |n: u32| {
        format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) \
             SELECT x FROM c"
        )
    };
    let answer = c.query(follower, &rows(1000), Level::None);
    assert_eq!(answer.rows(0).len(), 1000);
    let answer = c.query(follower, &rows(1001), Level::None);
    let error = answer.error(0).expect("1001 rows are refused");
    assert!(
        error.contains("more than 1000 rows") && error.contains("--max-result-rows"),
        "{error}"
    );

    // A statement may not build a value bigger than --max-result-bytes (64 MiB by default),
    // even one it never returns: reads on any node and writes on the leader.
    let huge = "SELECT length(zeroblob(900000000) || 'x')";
    let error = c.query(follower, huge, Level::None).error(0).map(str::to_string);
    assert!(error.as_deref().is_some_and(|e| e.contains("too big")), "{error:?}");
    let answer =
        c.execute(follower, json!(["INSERT INTO t(v) VALUES (length(zeroblob(900000000)))"]));
    assert!(answer.error(0).is_some_and(|e| e.contains("too big")), "{answer}");

    // Nothing the interrupted statements did is anywhere, and writes go on as before.
    let lsn = c.execute_ok(follower, json!(["INSERT INTO t(v) VALUES (1)"]));
    c.wait_all_applied(lsn);
    for node in c.ids() {
        let answer = c.query(node, "SELECT count(*), sum(v) FROM t", Level::None);
        assert_eq!(answer.rows(0), vec![vec![json!(1), json!(1)]], "node {node}");
    }
    c.assert_all_alive();
}

/// Rows of the table [`a_statement_inside_one_long_instruction_stops_at_its_time_limit`]
/// counts.
const COUNTED_ROWS: u64 = 1_000_000;
/// How many times its statement counts them.
const COUNT_WALKS: usize = 300;

/// A statement that spends its time inside single SQLite instructions still stops at its time
/// limit. `count(*)` walks a whole table in one instruction (`Count`), where SQLite calls no
/// progress handler; the statement below chains 300 of them and executes about 3,000
/// instructions in all, fewer than the progress handler's interval (4,096), so only the
/// watchdog's timer thread (`sqlite3_interrupt`) can stop it. Run to the end it takes far
/// longer than its limit (about 0.8 s here, against a limit of 50 ms).
#[test]
fn a_statement_inside_one_long_instruction_stops_at_its_time_limit() {
    use std::time::{Duration, Instant};

    let c = TestCluster::start(1, 0);
    let node = c.leader();
    c.execute_ok(node, json!(["CREATE TABLE big (id INTEGER PRIMARY KEY)"]));
    let fill = format!(
        "INSERT INTO big(id) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
         WHERE x < {COUNTED_ROWS}) SELECT x FROM c"
    );
    c.execute_ok(node, json!([fill]));
    let walks = vec!["SELECT count(*) AS n FROM big"; COUNT_WALKS].join(" UNION ALL ");
    let sql = format!("SELECT sum(n) FROM ({walks})");

    let started = Instant::now();
    let limited = c.post(node, "/db/query?level=none&db_timeout=50ms", json!([sql]).to_string());
    let stopped_after = started.elapsed();
    assert_eq!(limited.status, 200, "{}", limited.body);
    let error = limited.json()["results"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("time limit of 50ms"), "{}", limited.body);
    assert!(stopped_after < Duration::from_millis(500), "answered after {stopped_after:?}");

    // With time to spare the same statement runs to the end, and takes far longer.
    let started = Instant::now();
    let full = c.post(node, "/db/query?level=none", json!([sql]).to_string());
    let ran = started.elapsed();
    assert_eq!(full.status, 200, "{}", full.body);
    let total = COUNTED_ROWS * COUNT_WALKS as u64;
    assert_eq!(full.json()["results"][0]["values"], json!([[total]]), "{}", full.body);
    assert!(ran > Duration::from_millis(250), "the full run took only {ran:?}");
}
