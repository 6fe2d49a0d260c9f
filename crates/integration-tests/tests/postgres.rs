//! Reads over PostgreSQL's wire protocol (`keel serve --pg-addr`), with rust-postgres as the
//! client: typed rows from a follower through the simple and the extended protocol, writes
//! refused, the consistency levels, errors that leave the session usable, and logins checked
//! against `--auth`.

use integration_tests::{Level, NodeId, TIMEOUT, TestCluster, wait_for};
use postgres::error::SqlState;
use postgres::{Client, NoTls, SimpleQueryMessage};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Value, json};

/// The address node `id` serves PostgreSQL's protocol on, from the line its log gives at start
/// (the nodes bind port 0).
fn pg_addr(c: &TestCluster, id: NodeId) -> String {
    wait_for(TIMEOUT, "the node to serve PostgreSQL's protocol", || {
        c.log(id)
            .lines()
            .find(|l| l.contains("serving reads over PostgreSQL's wire protocol"))
            .and_then(|l| l.split("pg=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(|addr| addr.trim_matches('"').to_string())
    })
}

/// A client of node `id`, as `user` with `password`.
fn connect(
    c: &TestCluster,
    id: NodeId,
    user: &str,
    password: &str,
) -> Result<Client, postgres::Error> {
    let addr = pg_addr(c, id);
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    Client::connect(
        &format!("host={host} port={port} user={user} password={password} connect_timeout=10"),
        NoTls,
    )
}

/// The SQLSTATE of a failed call.
fn code<T>(result: Result<T, postgres::Error>) -> SqlState {
    let Err(error) = result else { panic!("the call should fail") };
    error.code().unwrap_or_else(|| panic!("no SQLSTATE: {error}")).clone()
}

/// The message of a failed call.
fn message<T>(result: Result<T, postgres::Error>) -> String {
    let Err(error) = result else { panic!("the call should fail") };
    error.as_db_error().map_or_else(|| error.to_string(), |e| e.message().to_string())
}

#[test]
fn a_follower_serves_typed_reads_over_postgresql_and_refuses_writes() {
    let c = TestCluster::start_with(3, 0, &["--pg-addr", "127.0.0.1:0"]);
    let leader = c.leader();
    c.execute_ok(
        leader,
        json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, raw BLOB)"]),
    );
    let lsn = c.execute_ok(
        leader,
        json!([
            ["INSERT INTO t VALUES (?, ?, ?, x'00ff')", 1, "ada", 1.5],
            ["INSERT INTO t VALUES (?, ?, ?, NULL)", 2, "grace", 2.25],
            ["INSERT INTO t VALUES (?, ?, NULL, NULL)", 3, "it's"]
        ]),
    );
    let follower = c.followers(leader)[0];
    c.wait_applied(follower, lsn);
    let mut pg = connect(&c, follower, "anyone", "").expect("connect");

    // The extended protocol: described columns, typed values, a parameter.
    let rows = pg.query("SELECT id, name, score, raw FROM t ORDER BY id", &[]).expect("query");
    assert_eq!(rows.len(), 3);
    let columns: Vec<(&str, &str)> =
        rows[0].columns().iter().map(|c| (c.name(), c.type_().name())).collect();
    assert_eq!(columns, [("id", "int8"), ("name", "text"), ("score", "float8"), ("raw", "bytea")]);
    assert_eq!(rows[0].get::<_, i64>(0), 1);
    assert_eq!(rows[0].get::<_, String>(1), "ada");
    assert_eq!(rows[0].get::<_, f64>(2), 1.5);
    assert_eq!(rows[0].get::<_, Vec<u8>>(3), vec![0, 255]);
    assert_eq!(rows[2].get::<_, Option<f64>>(2), None);
    let one = pg.query_one("SELECT name FROM t WHERE id = $1", &[&"2"]).expect("by id");
    assert_eq!(one.get::<_, String>(0), "grace");
    let typed = pg
        .prepare_typed("SELECT name FROM t WHERE id = $1", &[postgres::types::Type::INT8])
        .unwrap();
    assert_eq!(pg.query_one(&typed, &[&3i64]).unwrap().get::<_, String>(0), "it's");
    // SQLite numbers `$2` first here: each still takes the client's parameter it names.
    let swapped = pg.query_one("SELECT $2 || '-' || $1 || '-' || $2", &[&"a", &"b"]).unwrap();
    assert_eq!(swapped.get::<_, String>(0), "b-a-b");
    let counted = pg.query_one("SELECT count(*) AS n FROM t WHERE score > $1", &[&"1"]).unwrap();
    assert_eq!(counted.get::<_, String>("n"), "2", "an expression without declared type is text");

    // The simple protocol: text values, as psql sees them.
    let messages = pg.simple_query("SELECT id, raw FROM t WHERE id = 1").expect("simple query");
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .expect("a row");
    assert_eq!((row.get(0), row.get(1)), (Some("1"), Some("\\x00ff")));
    // Several statements in one simple query answer in turn, and the first error ends it.
    let messages =
        pg.simple_query("SELECT 1 AS a; SELECT 'x;y' AS b; SELECT * FROM missing; SELECT 2");
    assert_eq!(code(messages), SqlState::UNDEFINED_TABLE);
    let messages = pg.simple_query("SELECT 1 AS a; SELECT 'x;y' AS b").expect("two statements");
    let values: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "x;y"]);

    // Writes are refused, pointing to the HTTP API; the session goes on.
    let refused = pg.simple_query("INSERT INTO t (name) VALUES ('x')");
    assert_eq!(code(refused), SqlState::READ_ONLY_SQL_TRANSACTION);
    assert!(message(pg.execute("DELETE FROM t", &[])).contains("HTTP API"));
    assert_eq!(code(pg.simple_query("SELEC 1")), SqlState::SYNTAX_ERROR);
    assert_eq!(code(pg.query("SELECT * FROM missing", &[])), SqlState::UNDEFINED_TABLE);
    let count = pg.query_one("SELECT count(*) FROM t", &[]).expect("still usable");
    assert_eq!(count.get::<_, String>(0), "3");
    assert_eq!(c.rows(leader, "SELECT count(*) FROM t"), vec![vec![json!(3)]], "nothing written");

    // What drivers send around queries is accepted.
    pg.batch_execute("SET extra_float_digits = 3; SET application_name = 'test'").unwrap();
    let mut transaction = pg.transaction().expect("BEGIN");
    assert_eq!(transaction.query("SELECT id FROM t", &[]).unwrap().len(), 3);
    transaction.commit().expect("COMMIT");

    // Consistency: none by default; linearizable sees the write just acknowledged; weak and
    // strong belong to the leader.
    let level = |pg: &mut Client| -> String {
        pg.query_one("SHOW keel.read_consistency", &[]).unwrap().get(0)
    };
    assert_eq!(level(&mut pg), "none");
    pg.batch_execute("SET keel.read_consistency = 'linearizable'").unwrap();
    assert_eq!(level(&mut pg), "linearizable");
    for i in 10..15 {
        c.execute_ok(leader, json!([["INSERT INTO t (id, name) VALUES (?, 'new')", i]]));
        let seen = pg.query_one("SELECT count(*) FROM t WHERE id = $1", &[&i.to_string()]).unwrap();
        assert_eq!(seen.get::<_, String>(0), "1", "a linearizable read misses write {i}");
    }
    assert_eq!(
        code(pg.batch_execute("SET keel.read_consistency = 'sometimes'")),
        SqlState::INVALID_PARAMETER_VALUE
    );
    pg.batch_execute("SET keel.read_consistency TO weak").unwrap();
    let not_here = message(pg.query("SELECT 1", &[]));
    assert!(not_here.contains(&format!("node {leader}")), "{not_here}");
    let mut on_leader = connect(&c, leader, "anyone", "").expect("connect to the leader");
    on_leader.batch_execute("SET keel.read_consistency = 'strong'").unwrap();
    assert_eq!(on_leader.query("SELECT id FROM t", &[]).unwrap().len(), 8);

    // The HTTP API is unchanged beside it.
    assert_eq!(
        c.query(follower, "SELECT count(*) FROM t", Level::None).rows(0),
        vec![vec![json!(8)]]
    );
}

/// A Basic `Authorization` value.
fn basic(user: &str, password: &str) -> HeaderValue {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    HeaderValue::from_str(&format!("Basic {token}")).expect("header value")
}

#[test]
fn logins_are_checked_against_the_credentials_file_and_limited() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("users.json");
    let users: Value = json!([
        {"username": "root", "password": "root-pw", "perms": ["all"]},
        {"username": "reader", "password": "reader-pw", "perms": ["query"]},
        {"username": "watcher", "password": "watcher-pw", "perms": ["status"]},
        {"username": "*", "perms": ["ready"]}
    ]);
    std::fs::write(&file, users.to_string()).expect("users");
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, basic("root", "root-pw"));
    let file_arg = file.to_str().expect("utf-8 path");
    let c = TestCluster::start_with_headers(
        1,
        0,
        &["--pg-addr", "127.0.0.1:0", "--auth", file_arg, "--auth-failures-per-minute", "3"],
        headers,
    );
    c.execute_ok(1, json!(["CREATE TABLE t (id INTEGER PRIMARY KEY)", "INSERT INTO t VALUES (7)"]));

    let mut reader = connect(&c, 1, "reader", "reader-pw").expect("reader logs in");
    assert_eq!(reader.query_one("SELECT id FROM t", &[]).unwrap().get::<_, i64>(0), 7);
    assert_eq!(code(connect(&c, 1, "watcher", "watcher-pw")), SqlState::INSUFFICIENT_PRIVILEGE);
    assert_eq!(code(connect(&c, 1, "reader", "wrong")), SqlState::INVALID_PASSWORD);
    assert_eq!(code(connect(&c, 1, "nobody", "")), SqlState::INVALID_PASSWORD);
    // Three failures from this address within a minute: the next login is refused, even with
    // the right password, and says when to retry.
    let _ = connect(&c, 1, "reader", "wrong-again");
    let limited = message(connect(&c, 1, "reader", "reader-pw"));
    assert!(
        limited.contains("too many failed logins") && limited.contains("retry in"),
        "{limited}"
    );
    // The session opened before goes on.
    assert_eq!(reader.query("SELECT id FROM t", &[]).unwrap().len(), 1);
}
