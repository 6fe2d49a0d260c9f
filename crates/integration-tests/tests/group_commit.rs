//! Many clients writing at once: requests that share a log record must still succeed or fail
//! one by one, exactly as if each had been executed alone.

use std::collections::BTreeSet;
use std::sync::Barrier;

use integration_tests::{Response, TestCluster};
use serde_json::{Value, json};

/// Concurrent clients.
const CLIENTS: i64 = 32;

/// Requests per client.
const ROUNDS: i64 = 4;

/// What a request does and which rows it must leave behind.
enum Kind {
    /// One valid insert of (client, n).
    Insert,
    /// A syntax error: nothing.
    BadSql,
    /// `?transaction`: a valid insert, then a primary key violation: nothing.
    FailedTransaction,
    /// No transaction: insert, primary key violation, insert: both inserts.
    PartialBatch,
}

impl Kind {
    fn of(client: i64, round: i64) -> Self {
        match (client + round) % 4 {
            0 => Kind::Insert,
            1 => Kind::BadSql,
            2 => Kind::FailedTransaction,
            _ => Kind::PartialBatch,
        }
    }
}

fn insert(client: i64, n: i64) -> Value {
    json!(["INSERT INTO g(client, n) VALUES(?, ?)", client, n])
}

/// 32 clients send 128 requests at once to all three nodes, a mix of good writes, SQL errors,
/// failing transactions and batches with one bad statement. Every answer says exactly what
/// happened, and exactly the rows of the successful statements are on every node.
#[test]
fn concurrent_writes_apply_exactly_the_successful_statements() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE g (id INTEGER PRIMARY KEY, client INT NOT NULL, n INT NOT NULL, UNIQUE (client, n))",
            "INSERT INTO g(id, client, n) VALUES(0, -1, -1)",
        ]),
    );

    let voters = c.voters();
    let barrier = Barrier::new(usize::try_from(CLIENTS).unwrap());
    let expected: BTreeSet<(i64, i64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (c, barrier) = (&c, &barrier);
                let node = voters[usize::try_from(client).unwrap() % voters.len()];
                s.spawn(move || {
                    barrier.wait();
                    let mut expected = Vec::new();
                    for round in 0..ROUNDS {
                        let duplicate =
                            json!(["INSERT INTO g(id, client, n) VALUES(0, ?, ?)", client, round]);
                        match Kind::of(client, round) {
                            Kind::Insert => {
                                let r = c.execute(node, json!([insert(client, round)]));
                                r.assert_ok();
                                assert_eq!(r.rows_affected(0), 1, "{r:?}");
                                expected.push((client, round));
                            }
                            Kind::BadSql => {
                                let r = c.execute(
                                    node,
                                    json!([format!("INSRT INTO g VALUES({client})")]),
                                );
                                assert_failed(&r, 0, "syntax error");
                            }
                            Kind::FailedTransaction => {
                                let r = c.execute_with(
                                    node,
                                    "transaction",
                                    json!([insert(client, round), duplicate]),
                                );
                                assert!(r.error(0).is_none(), "{r:?}");
                                assert_failed(&r, 1, "UNIQUE");
                            }
                            Kind::PartialBatch => {
                                let r = c.execute(
                                    node,
                                    json!([
                                        insert(client, round),
                                        duplicate,
                                        insert(client, round + 100)
                                    ]),
                                );
                                assert!(r.error(0).is_none() && r.error(2).is_none(), "{r:?}");
                                assert_failed(&r, 1, "UNIQUE");
                                expected.extend([(client, round), (client, round + 100)]);
                            }
                        }
                    }
                    expected
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("client thread panicked"))
            .collect()
    });
    assert_eq!(
        expected.len(),
        usize::try_from(3 * CLIENTS).unwrap(),
        "each client leaves three rows"
    );

    let dump = c.assert_consistent();
    let expected_rows: Vec<Vec<Value>> =
        expected.iter().map(|&(client, n)| vec![json!(client), json!(n)]).collect();
    for id in c.ids() {
        assert_eq!(
            c.rows(id, "SELECT client, n FROM g WHERE id <> 0 ORDER BY client, n"),
            expected_rows,
            "node {id}"
        );
        assert_eq!(
            c.rows(id, "SELECT count(*) FROM g"),
            vec![vec![json!(expected.len() + 1)]],
            "node {id}"
        );
    }
    assert_eq!(dump["tables"]["g"]["values"].as_array().map(Vec::len), Some(expected.len() + 1));
}

/// Asserts that statement `i` failed with an error mentioning `needle`.
fn assert_failed(response: &Response, i: usize, needle: &str) {
    let error = response
        .error(i)
        .unwrap_or_else(|| panic!("statement {i} should have failed: {response:?}"));
    assert!(error.contains(needle), "statement {i} failed with {error:?}, expected {needle:?}");
}
