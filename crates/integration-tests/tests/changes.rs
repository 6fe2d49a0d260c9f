//! Change data capture: `GET /db/changes` streams every committed row change exactly once, in
//! log order, from any node; resumes from any retained position; refuses compacted and bad
//! starts; and `keel changes` follows the stream across a leader crash without printing a
//! change twice or skipping one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::{TestCluster, keel_binary, poll, wait_for};
use serde_json::{Value, json};

/// How long a test waits for the stream to deliver what it expects.
const DEADLINE: Duration = Duration::from_secs(20);

/// One server-sent event as the test client saw it.
#[derive(Clone, Debug)]
struct Sse {
    /// `message` (a change), `caught-up` or `end`.
    event: String,
    /// The `id` field.
    id: Option<String>,
    /// The data, parsed as JSON.
    data: Value,
}

/// A change stream read on a thread of its own: events arrive on a channel, so the test can
/// wait for them with a deadline.
struct Stream {
    /// The events, in the order received.
    events: Receiver<Sse>,
    /// Everything received so far.
    seen: Vec<Sse>,
}

impl Stream {
    /// Opens `GET url` (with `Last-Event-ID` if given) and asserts a 200 answer.
    fn open(url: &str, last_event_id: Option<&str>) -> Stream {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(None::<Duration>)
            .build()
            .unwrap();
        let mut request = client.get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "GET {url}");
        let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        let (sender, events) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut event, mut id, mut data) = (String::new(), None, String::new());
            for line in BufReader::new(response).lines() {
                let Ok(line) = line else { return };
                if line.is_empty() {
                    if !data.is_empty() {
                        let sse = Sse {
                            event: if event.is_empty() { "message".into() } else { event.clone() },
                            id: id.take(),
                            data: serde_json::from_str(&data).expect("event data is JSON"),
                        };
                        if sender.send(sse).is_err() {
                            return;
                        }
                    }
                    (event, data) = (String::new(), String::new());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push_str(value);
                } else if let Some(value) = line.strip_prefix("id: ") {
                    id = Some(value.to_string());
                } else if let Some(value) = line.strip_prefix("event: ") {
                    event = value.to_string();
                }
            }
        });
        Stream { events, seen: Vec::new() }
    }

    /// Receives events until one satisfies `done`; panics after [`DEADLINE`].
    fn until(&mut self, what: &str, mut done: impl FnMut(&Sse) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    let stop = done(&event);
                    self.seen.push(event);
                    if stop {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {what}; received {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the stream ended while waiting for {what}; received {:#?}", self.seen)
                }
            }
        }
    }

    /// Receives events until one whose id says everything through `lsn` was sent: the last
    /// event of a record (id `<lsn>`) or a `caught-up` event.
    fn through(&mut self, lsn: u64) {
        self.until(&format!("everything through {lsn}"), |e| {
            e.id.as_deref().and_then(|id| id.parse::<u64>().ok()).is_some_and(|id| id >= lsn)
        });
    }

    /// The change events received (`caught-up` left out).
    fn changes(&self) -> Vec<Value> {
        self.seen.iter().filter(|e| e.event == "message").map(|e| e.data.clone()).collect()
    }
}

/// The LSN of a change event.
fn lsn(change: &Value) -> u64 {
    change["lsn"].as_u64().unwrap_or_else(|| panic!("no lsn in {change}"))
}

/// A change with the fields that do not depend on the order of rows inside one changeset.
fn summary(change: &Value) -> Value {
    let mut change = change.clone();
    change.as_object_mut().unwrap().remove("seq");
    change
}

/// Asserts the stream's own invariants: LSNs never go back, and inside one record `seq` counts
/// 0, 1, 2, …
fn assert_ordered(changes: &[Value]) {
    for pair in changes.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(lsn(a) <= lsn(b), "out of order: {a} then {b}");
        if lsn(a) == lsn(b) {
            assert_eq!(b["seq"].as_u64(), a["seq"].as_u64().map(|s| s + 1), "{a} then {b}");
        } else {
            assert_eq!(b["seq"], 0, "first event of a record: {b}");
        }
    }
}

/// Inserts, updates, deletes, a DDL, `random()`, a rowid table and a multi-statement
/// transaction: a follower's stream shows each change once, in LSN order, with the values the
/// database holds; the leader's stream is the same.
#[test]
fn every_change_appears_once_in_order_with_its_values() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let follower = c.followers(leader)[0];
    let mut stream = Stream::open(c.url(follower, "/db/changes?from=0").as_str(), None);

    let create = c.execute_ok(
        leader,
        json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, r INTEGER, b BLOB)"]),
    );
    let insert = c.execute_ok(leader, json!(["INSERT INTO t VALUES (1, 'a', random(), x'0102')"]));
    let update = c.execute_ok(leader, json!(["UPDATE t SET name = 'b' WHERE id = 1"]));
    // The value random() gave, as the database holds it.
    let r1 = c.rows(leader, "SELECT r FROM t WHERE id = 1")[0][0].clone();
    assert!(r1.is_i64(), "{r1}");
    let rowid = c.execute_ok(
        follower,
        json!(["CREATE TABLE nopk (msg TEXT, n REAL)", "INSERT INTO nopk VALUES ('x', 1.5)"]),
    );
    let transaction = c
        .execute_with(
            leader,
            "transaction",
            json!([
                "INSERT INTO t (id, name, r) VALUES (2, 'c', 0)",
                "INSERT INTO t (id, name, r) VALUES (3, 'd', 0)",
                "DELETE FROM t WHERE id = 1",
                "UPDATE nopk SET n = 2.5",
            ]),
        )
        .assert_ok()
        .lsn();
    let delete = c.execute_ok(leader, json!(["DELETE FROM nopk"]));
    stream.through(delete);
    let changes = stream.changes();
    assert_ordered(&changes);

    let expected = [
        json!({"lsn": create, "op": "ddl",
               "sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, r INTEGER, b BLOB)"}),
        json!({"lsn": insert, "table": "t", "op": "insert", "key": {"id": 1}, "old": null,
               "new": {"id": 1, "name": "a", "r": r1, "b": "AQI="}}),
        json!({"lsn": update, "table": "t", "op": "update", "key": {"id": 1},
               "old": {"id": 1, "name": "a"}, "new": {"id": 1, "name": "b"}}),
        json!({"lsn": rowid, "op": "ddl", "sql": "CREATE TABLE nopk (msg TEXT, n REAL)"}),
        json!({"lsn": rowid, "table": "nopk", "op": "insert", "key": {"rowid": 1}, "old": null,
               "new": {"msg": "x", "n": 1.5}}),
    ];
    // The rows of one changeset come in the session's order, not the statements': compare the
    // transaction's events as a set.
    let mut in_transaction = vec![
        json!({"lsn": transaction, "table": "t", "op": "insert", "key": {"id": 2}, "old": null,
               "new": {"id": 2, "name": "c", "r": 0, "b": null}}),
        json!({"lsn": transaction, "table": "t", "op": "insert", "key": {"id": 3}, "old": null,
               "new": {"id": 3, "name": "d", "r": 0, "b": null}}),
        json!({"lsn": transaction, "table": "t", "op": "delete", "key": {"id": 1},
               "old": {"id": 1, "name": "b", "r": r1, "b": "AQI="}, "new": null}),
        json!({"lsn": transaction, "table": "nopk", "op": "update", "key": {"rowid": 1},
               "old": {"n": 1.5}, "new": {"n": 2.5}}),
    ];
    let after = [json!({"lsn": delete, "table": "nopk", "op": "delete", "key": {"rowid": 1},
                            "old": {"msg": "x", "n": 2.5}, "new": null})];

    let got: Vec<Value> = changes.iter().map(summary).collect();
    assert_eq!(got.len(), expected.len() + in_transaction.len() + after.len(), "{got:#?}");
    let (head, rest) = got.split_at(expected.len());
    let (middle, tail) = rest.split_at(in_transaction.len());
    assert_eq!(head, &expected[..]);
    let sort = |v: &mut Vec<Value>| v.sort_by_key(|x| x.to_string());
    let mut middle = middle.to_vec();
    sort(&mut middle);
    sort(&mut in_transaction);
    assert_eq!(middle, in_transaction);
    assert_eq!(tail, &after[..]);

    // The SSE ids: the last event of a record is its lsn, the others lsn:seq.
    let ids: Vec<&str> = stream
        .seen
        .iter()
        .filter(|e| e.event == "message")
        .filter_map(|e| e.id.as_deref())
        .collect();
    let transaction_ids: Vec<String> =
        (0..3).map(|seq| format!("{transaction}:{seq}")).chain([transaction.to_string()]).collect();
    assert!(ids.windows(4).any(|w| w == transaction_ids), "{ids:?}");

    // Every node streams the same log.
    let mut from_leader = Stream::open(c.url(leader, "/db/changes?from=0").as_str(), None);
    from_leader.through(delete);
    assert_eq!(from_leader.changes(), changes);
}

/// On nodes that compact their log after a few dozen entries: a start before the first
/// retained entry is 410 naming it, a malformed start is 400, and a start in the middle of the
/// retained log (by `from` or by `Last-Event-ID`, also inside a record) gives exactly the
/// suffix.
#[test]
fn resumes_anywhere_retained_and_refuses_compacted_or_bad_starts() {
    let c = TestCluster::start_with(3, 0, &["--snapshot-entries=30", "--trailing-logs=5"]);
    let leader = c.leader();
    let node = c.followers(leader)[0];
    c.execute_ok(leader, json!(["CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)"]));
    let mut lsns = Vec::new();
    let mut k: i64 = 0;
    wait_for(DEADLINE, "node to compact its log", || {
        k += 1;
        lsns.push((k, c.execute_ok(leader, json!([["INSERT INTO kv VALUES (?, 'x')", k]]))));
        c.purged_index(node).is_some_and(|purged| purged > 10).then_some(())
    });
    // A few more, so that the retained log holds a tail of writes to resume in.
    for _ in 0..10 {
        k += 1;
        lsns.push((k, c.execute_ok(leader, json!([["INSERT INTO kv VALUES (?, 'x')", k]]))));
    }
    let last = lsns.last().unwrap().1;
    c.wait_applied(node, last);

    // Compacted: 410 with the first retained lsn.
    let gone = c.get(node, "/db/changes?from=1");
    assert_eq!(gone.status, 410, "{}", gone.body);
    let first = gone.json()["first_lsn"].as_u64().expect("first_lsn");
    let purged = c.purged_index(node).unwrap();
    assert!(first > purged, "first retained {first}, purged through {purged}");
    assert!(gone.json()["error"].as_str().unwrap().contains(&first.to_string()), "{}", gone.body);

    // Bad starts: 400.
    for bad in ["from=abc", "from=-1", "from=1.5"] {
        let reply = c.get(node, &format!("/db/changes?{bad}"));
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(reply.json()["error"].is_string(), "{}", reply.body);
    }

    // The first retained lsn streams; so does a start in the middle: exactly the suffix.
    let retained: Vec<(i64, u64)> = lsns.iter().copied().filter(|&(_, l)| l >= first).collect();
    assert!(retained.len() > 10, "retained {retained:?}");
    for start in [retained[0].1, retained[retained.len() / 2].1] {
        let mut stream =
            Stream::open(c.url(node, &format!("/db/changes?from={start}")).as_str(), None);
        stream.through(last);
        let got: Vec<(i64, u64)> =
            stream.changes().iter().map(|ch| (ch["key"]["k"].as_i64().unwrap(), lsn(ch))).collect();
        let expected: Vec<(i64, u64)> =
            retained.iter().copied().filter(|&(_, l)| l >= start).collect();
        assert_eq!(got, expected, "from={start}");
    }

    // Resuming inside a record: a transaction of three rows, resumed after its first event.
    let transaction = c
        .execute_with(
            leader,
            "transaction",
            json!([
                "INSERT INTO kv VALUES (1001, 'a')",
                "INSERT INTO kv VALUES (1002, 'b')",
                "INSERT INTO kv VALUES (1003, 'c')"
            ]),
        )
        .assert_ok()
        .lsn();
    c.wait_applied(node, transaction);
    let url = c.url(node, &format!("/db/changes?from={transaction}"));
    let mut whole = Stream::open(url.as_str(), None);
    whole.through(transaction);
    let whole = whole.changes();
    assert_eq!(whole.len(), 3, "{whole:#?}");
    let mut rest = Stream::open(url.as_str(), Some(&format!("{transaction}:0")));
    rest.through(transaction);
    assert_eq!(rest.changes(), whole[1..].to_vec(), "Last-Event-ID wins over from");
    let mut after = Stream::open(url.as_str(), Some(&transaction.to_string()));
    let next = c.execute_ok(leader, json!(["INSERT INTO kv VALUES (2000, 'z')"]));
    after.through(next);
    assert_eq!(after.changes().iter().map(lsn).collect::<Vec<_>>(), vec![next]);

    let garbage = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(c.url(node, "/db/changes"))
        .header("Last-Event-ID", "soon")
        .send()
        .unwrap();
    assert_eq!(garbage.status().as_u16(), 400);
}

/// A `keel changes` process, killed when dropped; its stdout lines and stderr collected by
/// threads.
struct Consumer {
    /// The process.
    child: Child,
    /// Lines printed on stdout so far.
    lines: Arc<Mutex<Vec<String>>>,
    /// Lines printed on stderr so far.
    errors: Arc<Mutex<Vec<String>>>,
}

impl Consumer {
    /// Starts `keel changes <args>`.
    fn start(args: &[&str]) -> Consumer {
        let mut child = Command::new(keel_binary())
            .arg("changes")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keel changes");
        let collect = |reader: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { return };
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let lines = collect(Box::new(child.stdout.take().unwrap()));
        let errors = collect(Box::new(child.stderr.take().unwrap()));
        Consumer { child, lines, errors }
    }

    /// The changes printed so far.
    fn changes(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The acceptance test: `keel changes` reads from the leader while two writers write through
/// the followers; the leader is killed mid-stream; the consumer resumes on another node, and
/// in the end it has printed every committed change exactly once, in log order: each
/// acknowledged write with the lsn it was acknowledged with, and exactly the rows the table
/// holds.
#[test]
fn keel_changes_survives_a_leader_crash_without_loss_or_duplicates() {
    let c = TestCluster::start(3, 0);
    let leader = c.leader();
    let survivors = c.followers(leader);
    let create = c.execute_ok(leader, json!(["CREATE TABLE acc (k TEXT PRIMARY KEY, w INTEGER)"]));
    let url = format!("http://{}", c.http_addr(leader));
    let from = create.to_string();
    let consumer = Consumer::start(&[&url, "--from", &from, "--give-up-after", "30s"]);

    let stop = AtomicBool::new(false);
    let acked_after_kill = AtomicU64::new(0);
    let killed = AtomicBool::new(false);
    let acked: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    let attempted: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    std::thread::scope(|scope| {
        for (w, &target) in survivors.iter().enumerate() {
            let (c, stop, acked, attempted) = (&c, &stop, &acked, &attempted);
            let (killed, acked_after_kill) = (&killed, &acked_after_kill);
            scope.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let k = format!("w{w}-{n}");
                    attempted.lock().unwrap().insert(k.clone());
                    let statement = json!([["INSERT INTO acc VALUES (?, ?)", k, w]]);
                    // A write may fail while the cluster elects: it may or may not have been
                    // committed, and the stream decides which.
                    if let Ok(response) = c.try_execute(target, "", &statement)
                        && response.error(0).is_none()
                    {
                        acked.lock().unwrap().insert(k, response.lsn());
                        if killed.load(Ordering::SeqCst) {
                            acked_after_kill.fetch_add(1, Ordering::SeqCst);
                        }
                    } else {
                        // Back off a little while there is no leader, rather than spin.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            });
        }
        // Stops the writers however this scope ends, so that a failed wait fails the test
        // instead of waiting for them forever.
        let _stop = StopOnDrop(&stop);
        wait_for(DEADLINE, "the consumer to print 30 changes", || {
            (consumer.lines.lock().unwrap().len() >= 30).then_some(())
        });
        c.kill(leader);
        killed.store(true, Ordering::SeqCst);
        wait_for(DEADLINE, "30 writes acknowledged after the crash", || {
            (acked_after_kill.load(Ordering::SeqCst) >= 30).then_some(())
        });
        stop.store(true, Ordering::SeqCst);
    });

    let last = c.execute_ok(survivors[0], json!([["INSERT INTO acc VALUES ('last', -1)"]]));
    let printed =
        poll(DEADLINE, || consumer.changes().iter().any(|ch| lsn(ch) == last).then_some(()));
    assert!(
        printed.is_some(),
        "the consumer did not print the last write (lsn {last}); it printed {} lines, stderr:\n{}",
        consumer.lines.lock().unwrap().len(),
        consumer.errors.lock().unwrap().join("\n")
    );
    let changes = consumer.changes();
    let errors = consumer.errors.lock().unwrap().join("\n");
    drop(consumer);

    // In log order, each once.
    assert_eq!(changes[0]["op"], "ddl", "{}", changes[0]);
    assert_eq!(lsn(&changes[0]), create);
    assert_ordered(&changes);
    let inserts: Vec<(String, u64)> = changes[1..]
        .iter()
        .map(|ch| {
            assert_eq!(ch["op"], "insert", "{ch}");
            (ch["new"]["k"].as_str().unwrap().to_string(), lsn(ch))
        })
        .collect();
    let streamed: BTreeMap<String, u64> = inserts.iter().cloned().collect();
    assert_eq!(streamed.len(), inserts.len(), "a key was printed twice");

    // Every acknowledged write, at the lsn it was acknowledged with.
    let acked = acked.into_inner().unwrap();
    for (k, l) in &acked {
        assert_eq!(streamed.get(k), Some(l), "acknowledged write {k} at lsn {l}");
    }
    // Exactly the committed rows: what the table holds on a survivor.
    c.wait_applied(survivors[1], last);
    let rows: BTreeSet<String> = c
        .rows(survivors[1], "SELECT k FROM acc")
        .into_iter()
        .map(|row| row[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed.keys().cloned().collect::<BTreeSet<_>>(), rows);
    let attempted = attempted.into_inner().unwrap();
    assert!(streamed.keys().all(|k| k == "last" || attempted.contains(k)));
    assert!(acked.len() >= 60, "{} writes acknowledged", acked.len());
    assert!(errors.contains("resuming"), "the consumer reconnected: {errors}");
    eprintln!(
        "{} changes streamed, {} writes acknowledged, {} attempted; consumer stderr:\n{errors}",
        changes.len(),
        acked.len(),
        attempted.len()
    );
}
