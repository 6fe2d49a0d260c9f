//! The wire types against real answers.
//!
//! Every file in `tests/answers/` is an answer captured from a three-node `keel local` cluster
//! with curl, byte for byte (see `tests/answers/README.md`). Each must deserialize into its
//! type and serialize back to the same JSON: the same fields, nothing added, nothing left out,
//! the same numbers. Most types give the same bytes too (Keel writes sorted keys; the types
//! declare their fields alphabetically); those with flattened fields (a node's replication
//! progress, a queue lookup's state, a change's row) differ in field order only. The constructors the server uses are checked against the shapes
//! Keel's server builds too.

use std::collections::BTreeMap;

use keel_api::changes::{CaughtUp, Change, EventId, Op, What};
use keel_api::cluster::{
    JoinRequest, Joined, LeaderChanged, MembershipChange, MembershipChanged, NodeInfo, NodeList,
    NodeMap, NodeRef, Removed,
};
use keel_api::db::{Answer, Row, StatementResult};
use keel_api::internal::{AppliedReport, ReadIndex};
use keel_api::load::LoadAnswer;
use keel_api::queue::{self, Lookup, Outcome, Queued, Verdict};
use keel_api::status::{LastContact, Role, Sqlite3, Status};
use keel_api::{ErrorAnswer, Statement};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// A captured answer.
fn answer(name: &str) -> String {
    let path = format!("{}/tests/answers/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")).trim_end().to_string()
}

/// Reads `text` as a `T` and checks that it serializes back to the same bytes.
fn same_bytes<T: Serialize + DeserializeOwned>(text: &str) -> T {
    let typed: T = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(serde_json::to_string(&typed).unwrap(), text);
    typed
}

/// Reads `text` as a `T` and checks that it serializes back to the same JSON, field order
/// aside: for types with flattened fields, which serde writes after the others.
fn same_json<T: Serialize + DeserializeOwned>(text: &str) -> T {
    let typed: T = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let original: Value = serde_json::from_str(text).unwrap();
    // `Value` keeps 1 and 1.0 apart, so numbers must match in kind too.
    assert_eq!(serde_json::to_value(&typed).unwrap(), original, "{text}");
    typed
}

/// [`same_bytes`] on a captured answer.
fn round_trip<T: Serialize + DeserializeOwned>(name: &str) -> T {
    same_bytes(&answer(name))
}

/// [`same_json`] on a captured answer.
fn round_trip_json<T: Serialize + DeserializeOwned>(name: &str) -> T {
    same_json(&answer(name))
}

#[test]
fn database_answers() {
    for name in [
        "execute.json",
        "execute_timings.json",
        "execute_transaction.json",
        "query.json",
        "query_associative.json",
        "query_timings.json",
        "query_empty.json",
        "query_stale.json",
        "request.json",
        "request_associative.json",
    ] {
        round_trip::<Answer>(name);
    }
    let a: Answer = round_trip("execute_timings.json");
    assert_eq!((a.lsn, a.raft_index), (Some(9), Some(9)));
    assert_eq!(a.results[1].last_insert_id(), 1);
    assert_eq!(a.first_error(), Some((Some(2), "UNIQUE constraint failed: foo.id")));
    let q: Answer = round_trip("query.json");
    assert_eq!(q.results[0].values()[0][1], json!("fiona"));
    let r: Answer = round_trip("request_associative.json");
    assert_eq!(r.results[0].rows, Some(None));
    assert_eq!(r.results[1].assoc_rows()[0]["name"], json!("grainne"));
    let stale: Answer = round_trip("query_stale.json");
    assert!(stale.lsn.is_none() && stale.error.is_some());
}

#[test]
fn error_answers() {
    for name in ["error_min_lsn.json", "error_plain.json", "error_changes.json"] {
        round_trip::<ErrorAnswer>(name);
    }
    let e: ErrorAnswer = round_trip("error_min_lsn.json");
    assert_eq!(e.applied_index, Some(12));
    // docs/http-api.md: a sync write committed but not confirmed in time.
    let text = r#"{"committed":true,"error":"the write is committed at lsn 7 but not every replica that sync needs confirmed applying it in time","lsn":7,"unconfirmed":[3]}"#;
    let e: ErrorAnswer = same_bytes(text);
    assert!(e.is_committed());
    let built = ErrorAnswer::not_replicated(
        "the write is committed at lsn 7 but not every replica that sync needs confirmed applying it in time",
        7,
        vec![3],
    );
    assert_eq!(serde_json::to_string(&built).unwrap(), text);
    // The 410 of a compacted change-stream start, and a failed SQLite-file load.
    same_bytes::<ErrorAnswer>(r#"{"error":"changes from lsn 1 are gone","first_lsn":20}"#);
    same_bytes::<ErrorAnswer>(
        r#"{"error":"statement 3 of the load failed: x","lsn":5,"statements_applied":2}"#,
    );
}

#[test]
fn queue_answers() {
    for name in ["queued.json", "queued_wait.json", "queued_wait_failed.json"] {
        round_trip::<Queued>(name);
    }
    let committed: Lookup = round_trip_json("queue_committed.json");
    assert_eq!(committed.state, queue::State::Committed { lsn: 13 });
    let failed: Lookup = round_trip_json("queue_failed.json");
    assert!(matches!(failed.state, queue::State::Failed { statement: Some(0), .. }));
    same_json::<Lookup>(r#"{"sequence_number":6,"state":"pending"}"#);
    // What the server builds.
    let queued = Queued::new(5).with_outcome(&Outcome::Committed { lsn: 41 });
    assert_eq!(
        serde_json::to_string(&queued).unwrap(),
        r#"{"lsn":41,"results":[],"sequence_number":5}"#
    );
    let lookup = Lookup {
        sequence_number: 5,
        state: Outcome::Failed { error: "x".into(), statement: Some(1), lsn: Some(3) }.into(),
    };
    assert_eq!(
        serde_json::to_value(&lookup).unwrap(),
        json!({"error": "x", "lsn": 3, "sequence_number": 5, "state": "failed", "statement": 1})
    );
}

#[test]
fn membership_answers() {
    let list: NodeList = round_trip_json("nodes_v2_leader.json");
    assert_eq!(list.nodes.len(), 3);
    assert!(list.nodes[0].replication.is_none() && list.nodes[0].leader);
    let progress = list.nodes[1].replication.as_ref().expect("the leader reports progress");
    assert_eq!(progress.role, "follower");
    let map: NodeMap = round_trip_json("nodes_map_leader.json");
    assert!(map["2"].replication.is_some());
    let map: NodeMap = round_trip_json("nodes_map_follower.json");
    assert!(map.values().all(|n| n.replication.is_none()));
    let leader: NodeInfo = round_trip("leader.json");
    assert_eq!(leader.node_id(), Some(1));
    round_trip::<Joined>("joined.json");
    round_trip::<Removed>("removed.json");
    round_trip::<MembershipChanged>("membership.json");
    let promoted: LeaderChanged = round_trip("promoted.json");
    assert_eq!(promoted, LeaderChanged { leader: 2, name: None, term: 2 });
}

#[test]
fn membership_requests_as_keel_sends_them() {
    // `keel serve --join` (node.rs) and `keel admin` (admin.rs).
    let join = JoinRequest {
        id: 4,
        name: None,
        raft_addr: "127.0.0.1:4008".into(),
        http_addr: "127.0.0.1:4007".into(),
        voter: true,
    };
    assert_eq!(
        serde_json::to_value(&join).unwrap(),
        json!({"id": 4, "raft_addr": "127.0.0.1:4008", "http_addr": "127.0.0.1:4007", "voter": true})
    );
    let bare: JoinRequest =
        serde_json::from_str(r#"{"id": 7, "raft_addr": "a", "http_addr": "b"}"#).unwrap();
    assert!(bare.voter, "voter defaults to true");
    assert_eq!(
        serde_json::to_value(MembershipChange::of(keel_api::cluster::Action::Demote, 3)).unwrap(),
        json!({"action": "demote", "id": 3})
    );
    assert_eq!(
        serde_json::to_value(MembershipChange::add(5, false, "r:1".into(), "h:2".into())).unwrap(),
        json!({"action": "add-learner", "id": 5, "raft_addr": "r:1", "http_addr": "h:2"})
    );
    assert_eq!(serde_json::to_value(NodeRef::to(7)).unwrap(), json!({"id": "7"}));
    // A named node: its name, in the same places.
    assert_eq!(serde_json::to_value(NodeRef::to("keel-1")).unwrap(), json!({"id": "keel-1"}));
    assert_eq!(
        serde_json::to_value(MembershipChange::of(keel_api::cluster::Action::Promote, "keel-1"))
            .unwrap(),
        json!({"action": "promote", "id": "keel-1"})
    );
    let named = JoinRequest { name: Some("keel-1".into()), ..join };
    assert_eq!(serde_json::to_value(&named).unwrap()["name"], json!("keel-1"));
    assert_eq!(serde_json::to_value(NodeRef::default()).unwrap(), json!({}));
}

#[test]
fn status_documents() {
    let leader: Status = round_trip("status_leader.json");
    assert_eq!(leader.node.role, Role::Leader);
    assert_eq!(leader.store.raft.last_contact, LastContact::Leader(0));
    assert_eq!(leader.replication.as_ref().map(BTreeMap::len), Some(2));
    let follower: Status = round_trip("status_follower.json");
    assert_eq!(follower.node.role, Role::Follower);
    assert!(follower.replication.is_none());
    assert!(matches!(follower.store.raft.last_contact, LastContact::Since(_)));
    // Without a free read connection, `sqlite3` holds only the version and the page checksum
    // failures.
    let bare = Sqlite3 { version: "3.54.1".into(), ..Sqlite3::default() };
    assert_eq!(
        serde_json::to_string(&bare).unwrap(),
        r#"{"page_checksum_failures":0,"version":"3.54.1"}"#
    );
}

#[test]
fn load_answers() {
    for name in ["load_text.json", "load_text_failed.json", "load_sqlite.json"] {
        round_trip::<LoadAnswer>(name);
    }
    let failed: LoadAnswer = round_trip("load_text_failed.json");
    assert!(failed.failure().unwrap().starts_with("statement 2 failed: no such table: nowhere"));
}

#[test]
fn change_events() {
    let stream = answer("changes.sse");
    let mut changes = 0;
    let mut last: Option<EventId> = None;
    for line in stream.lines() {
        if let Some(id) = line.strip_prefix("id: ") {
            let id: EventId = id.parse().unwrap();
            assert!(last.is_none_or(|l| l.order() < id.order()), "{id} after {last:?}");
            last = Some(id);
        }
        if let Some(data) = line.strip_prefix("data: ") {
            let value: Value = serde_json::from_str(data).unwrap();
            if value.get("op").is_some() {
                let change: Change = same_json(data);
                assert_eq!(change.op == Op::Ddl, matches!(change.what, What::Ddl { .. }));
                changes += 1;
            } else {
                same_bytes::<CaughtUp>(data);
            }
        }
    }
    assert!(changes >= 10, "{changes} changes in the capture");
    // What the server builds for a deleted row.
    let key: Row = json!({"id": 2}).as_object().cloned().unwrap();
    let delete = Change {
        lsn: 7,
        op: Op::Delete,
        seq: 0,
        what: What::Row { key: key.clone(), new: None, old: Some(key), table: "t".into() },
    };
    assert_eq!(
        serde_json::to_value(&delete).unwrap(),
        json!({"key": {"id": 2}, "lsn": 7, "new": null, "old": {"id": 2}, "op": "delete", "seq": 0, "table": "t"})
    );
}

#[test]
fn results_built_as_the_server_builds_them() {
    // The shapes of `sql::StatementResult::to_json` (crates/sql/src/result.rs).
    let text = |r: &StatementResult| serde_json::to_string(r).unwrap();
    assert_eq!(text(&StatementResult::exec(0, 0)), "{}");
    assert_eq!(text(&StatementResult::exec(0, 0).with_time(0.25)), r#"{"time":0.25}"#);
    assert_eq!(text(&StatementResult::exec(3, 1)), r#"{"last_insert_id":3,"rows_affected":1}"#);
    let request_exec = StatementResult { rows: Some(None), ..StatementResult::exec(0, 0) };
    assert_eq!(text(&request_exec), r#"{"rows":null}"#);
    assert_eq!(
        text(&StatementResult::error("no such table: x")),
        r#"{"error":"no such table: x"}"#
    );
    let columns = vec!["id".to_string(), "data".to_string()];
    let types = vec!["integer".to_string(), "blob".to_string()];
    assert_eq!(
        text(&StatementResult::rows(columns.clone(), types.clone(), vec![])),
        r#"{"columns":["id","data"],"types":["integer","blob"]}"#
    );
    assert_eq!(
        text(&StatementResult::rows(columns, types, vec![vec![json!(1), json!("3q2+7w==")]])),
        r#"{"columns":["id","data"],"types":["integer","blob"],"values":[[1,"3q2+7w=="]]}"#
    );
    assert_eq!(text(&StatementResult::rows(vec![], vec![], vec![])), "{}");
    assert_eq!(text(&StatementResult::associative(BTreeMap::new(), vec![])), r#"{"rows":[]}"#);
    let types = BTreeMap::from([("id".to_string(), "integer".to_string())]);
    let row: Row = json!({"id": 1}).as_object().cloned().unwrap();
    assert_eq!(
        text(&StatementResult::associative(types, vec![row])),
        r#"{"rows":[{"id":1}],"types":{"id":"integer"}}"#
    );
    let answer = Answer::new(vec![StatementResult::exec(1, 1)], 8);
    assert_eq!(
        serde_json::to_string(&answer).unwrap(),
        r#"{"lsn":8,"results":[{"last_insert_id":1,"rows_affected":1}]}"#
    );
    assert_eq!(
        serde_json::to_string(&Answer::refused("stale read")).unwrap(),
        r#"{"error":"stale read","results":[]}"#
    );
}

#[test]
fn node_to_node_calls() {
    // node.rs posts json!({"id": id, "applied": index}); http.rs answers json!({"index": i}).
    let report = AppliedReport { id: 2, applied: 17, apply_hash: None, apply_origin: None };
    assert_eq!(serde_json::to_value(&report).unwrap(), json!({"id": 2, "applied": 17}));
    // A report of an older version (no hash) still parses; a hashed one carries two more keys.
    let old: AppliedReport = serde_json::from_str(r#"{"id":2,"applied":17}"#).unwrap();
    assert_eq!(old, report);
    let hashed =
        AppliedReport { apply_hash: Some("ab".repeat(32)), apply_origin: Some(0), ..report };
    let value = serde_json::to_value(&hashed).unwrap();
    assert_eq!(value["apply_hash"], json!("ab".repeat(32)));
    assert_eq!(value["apply_origin"], json!(0));
    same_bytes::<ReadIndex>(r#"{"index":42}"#);
    // queue::Batch and verdicts, as crates/bin/src/queue derives them.
    let batch = queue::Batch {
        requests: vec![queue::Request {
            seq: 9,
            statements: json!([["INSERT INTO t VALUES(?)", 1]]),
            transaction: false,
            db_timeout_ms: None,
            request_id: "keel-queue:1:9".into(),
        }],
        transaction: false,
        id: "keel-queue:1:9".into(),
    };
    assert_eq!(
        serde_json::to_value(&batch).unwrap(),
        json!({"requests": [{"seq": 9, "statements": [["INSERT INTO t VALUES(?)", 1]], "transaction": false, "db_timeout_ms": null, "request_id": "keel-queue:1:9"}], "transaction": false, "id": "keel-queue:1:9"})
    );
    let verdicts = vec![
        Verdict::Done(Outcome::Committed { lsn: 3 }),
        Verdict::Done(Outcome::Failed { error: "e".into(), statement: Some(0), lsn: None }),
        Verdict::Retry("node 2 is not the leader".into()),
    ];
    let value = serde_json::to_value(&verdicts).unwrap();
    assert_eq!(
        value,
        json!([{"done": {"state": "committed", "lsn": 3}}, {"done": {"state": "failed", "error": "e", "statement": 0}}, {"retry": "node 2 is not the leader"}])
    );
    assert_eq!(serde_json::from_value::<Vec<Verdict>>(value).unwrap(), verdicts);
}

#[test]
fn statements_as_request_bodies() {
    let body = vec![
        Statement::new("CREATE TABLE t (a)"),
        Statement::new("INSERT INTO t VALUES(?)").bind(1),
    ];
    assert_eq!(
        serde_json::to_string(&body).unwrap(),
        r#"["CREATE TABLE t (a)",["INSERT INTO t VALUES(?)",1]]"#
    );
}
