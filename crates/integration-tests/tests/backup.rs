//! Backup and load: `GET /db/backup` streams the database out (a SQLite file, the same gzipped,
//! or SQL text), `POST /db/load` brings one in (a SQLite file replaces the database; SQL text is
//! executed), and what comes out of one cluster goes into another unchanged.
//!
//! Data is compared with [`TestCluster::dump`], which covers the user's objects only: it leaves
//! out every schema entry whose name or table starts with `_keel_` and the `_keel_*` rows of
//! `sqlite_sequence`, so Keel's own bookkeeping (applied position, request ids), which differs
//! between clusters, is not compared.

use std::io::Read as _;
use std::path::Path;

use integration_tests::{NodeId, RawReply, TestCluster, assert_same_dump};
use serde_json::{Value, json};

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

/// The first two bytes of every gzip stream.
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];

/// How a SQL-text backup starts (as SQLite's `.dump` does).
const SQL_PREAMBLE: &str = "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;";

/// Fills the cluster with the kinds of data a backup must carry exactly: an `INTEGER PRIMARY
/// KEY` table with text, reals and blobs; a table without a primary key whose rowids have gaps
/// (deleted rows, the last one too); a `WITHOUT ROWID` table with a composite key; an
/// `AUTOINCREMENT` table whose sequence is ahead of its rows (filled by a trigger, last row
/// deleted); an index and a view.
fn fill_varied_data(c: &TestCluster, leader: NodeId) {
    c.execute_ok(
        leader,
        json!([
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE, \
             score REAL, avatar BLOB)",
            "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INT NOT NULL, \
             action TEXT NOT NULL)",
            "CREATE TRIGGER users_audit AFTER INSERT ON users BEGIN \
             INSERT INTO audit(user_id, action) VALUES (new.id, 'created ' || new.name); END",
            "CREATE TABLE events (kind TEXT, payload BLOB, at REAL)",
            "CREATE INDEX events_kind_at ON events(kind, at)",
            "CREATE TABLE settings (scope TEXT NOT NULL, key TEXT NOT NULL, value BLOB, \
             PRIMARY KEY (scope, key)) WITHOUT ROWID",
            "CREATE VIEW user_activity AS SELECT u.name, count(a.id) AS actions \
             FROM users u LEFT JOIN audit a ON a.user_id = u.id GROUP BY u.id",
        ]),
    );
    c.execute_ok(
        leader,
        json!([
            "INSERT INTO users(name, email, score, avatar) VALUES('ada', 'ada@example.com', 1.5, x'00ff10')",
            ["INSERT INTO users(id, name, email, score, avatar) VALUES(1000, ?, NULL, -2.25, randomblob(64))", "O'Brien"],
            ["INSERT INTO users(name, email, score, avatar) VALUES(?, 'q@example.com', NULL, NULL)", "line\nbreak \"quoted\" ;"],
            ["INSERT INTO users(name, email, score, avatar) VALUES(?, 'u@example.com', 1e300, zeroblob(16))", "ünïcødé ✓"],
            "DELETE FROM audit WHERE id = (SELECT max(id) FROM audit)",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<12) \
             INSERT INTO events(kind, payload, at) SELECT 'k' || (x % 3), randomblob(x * 10), x * 0.5 FROM c",
            "DELETE FROM events WHERE rowid IN (3, 4, 7, 12)",
            "INSERT INTO settings VALUES('global', 'theme', x'01'), ('global', 'lang', NULL), \
             ('user:1', 'theme', x'deadbeef'), ('user:2', 'limit', 9007199254740993)",
        ]),
    );
}

/// Checks the premises of the test on the dump of the filled cluster, so that a change to
/// [`fill_varied_data`] cannot quietly make the test weaker.
fn assert_varied(dump: &Value) {
    let kinds: Vec<&str> =
        dump["schema"].as_array().unwrap().iter().filter_map(|entry| entry[0].as_str()).collect();
    for kind in ["index", "table", "trigger", "view"] {
        assert!(kinds.contains(&kind), "no {kind} in the schema: {}", dump["schema"]);
    }
    let rowids: Vec<Value> = dump["tables"]["events"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].clone())
        .collect();
    assert_eq!(Value::Array(rowids), json!([1, 2, 5, 6, 8, 9, 10, 11]), "rowids of events");
    assert_eq!(dump["tables"]["sqlite_sequence"]["values"], json!([["audit", 4]]));
    assert_eq!(dump["tables"]["audit"]["values"].as_array().unwrap().len(), 3);
    assert_eq!(dump["tables"]["settings"]["values"].as_array().unwrap().len(), 4);
}

/// Asserts that `reply` is a successful backup whose body is a SQLite database file.
fn assert_sqlite_file_reply(reply: &RawReply, what: &str) {
    assert_eq!(reply.status, 200, "{what}: {}", reply.text());
    assert!(
        reply.body.starts_with(SQLITE_MAGIC),
        "{what} does not start with the SQLite header: {:?}",
        &reply.body[..reply.body.len().min(32)]
    );
}

/// Opens the SQLite file `bytes` (written into `dir` as `name`) and checks it against the
/// cluster's dump: it passes `PRAGMA integrity_check`, holds no `_keel_` object and no `_keel_`
/// row in `sqlite_sequence`, has exactly the dump's schema, and every table has the dump's
/// number of rows.
fn assert_sqlite_file_matches(bytes: &[u8], dir: &Path, name: &str, expected: &Value) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(check, "ok", "{name}: integrity_check");

    let mut statement = db
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")
        .unwrap();
    let schema: Vec<Value> = statement
        .query_map([], |row| {
            Ok(json!([
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?
            ]))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let keel: Vec<&Value> = schema
        .iter()
        .filter(|entry| {
            [&entry[1], &entry[2]]
                .iter()
                .any(|name| name.as_str().is_some_and(|name| name.starts_with("_keel_")))
        })
        .collect();
    assert!(keel.is_empty(), "{name} holds Keel's own objects: {keel:?}");
    assert_eq!(Value::Array(schema), expected["schema"], "{name}: schema");
    let keel_sequences: i64 = db
        .query_row(
            "SELECT count(*) FROM sqlite_sequence WHERE substr(name, 1, 6) = '_keel_'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(keel_sequences, 0, "{name}: sqlite_sequence has _keel_ rows");

    for (table, contents) in expected["tables"].as_object().unwrap() {
        let rows: i64 = db
            .query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |row| row.get(0))
            .unwrap();
        let expected_rows = contents["values"].as_array().unwrap().len();
        assert_eq!(usize::try_from(rows).unwrap(), expected_rows, "{name}: rows of {table}");
    }
}

/// Asserts that a load was refused with 400 and a message that says what is wrong.
fn assert_refused(reply: &RawReply, what: &str) {
    let body = reply.text();
    assert_eq!(reply.status, 400, "{what} was not refused with 400: {body}");
    let lower = body.to_lowercase();
    assert!(
        lower.contains("sqlite") || lower.contains("database"),
        "{what}: the error does not say what is wrong: {body:?}"
    );
}

/// A backup taken through a follower of cluster A (forwarded to the leader) is a plain SQLite
/// file without Keel's tables; loaded into a fresh cluster B it gives exactly A's data on every
/// node of B. The SQL-text backup does the same through a load of SQL text, the compressed
/// backup is the SQLite file gzipped, a SQLite file load replaces whatever B held, and a load of
/// garbage (or of a truncated file) is refused with 400 and changes nothing.
#[test]
fn backup_then_load_into_a_fresh_cluster_is_identical() {
    let files = tempfile::tempdir().unwrap();

    // Cluster A: fill it, take every kind of backup, keep its dump. It is dropped before B
    // starts, so the test holds one cluster slot at a time.
    let (expected, file, sql) = {
        let a = TestCluster::start(3, 0);
        let leader = a.leader();
        fill_varied_data(&a, leader);
        let expected = a.assert_consistent();
        assert_varied(&expected);
        let follower = a.followers(leader)[0];

        let file = a.get_raw(follower, "/db/backup");
        assert_sqlite_file_reply(&file, "GET /db/backup");
        assert_eq!(
            file.content_type.as_deref(),
            Some("application/octet-stream"),
            "GET /db/backup content type"
        );
        assert_sqlite_file_matches(&file.body, files.path(), "backup.sqlite", &expected);

        let sql = a.get_raw(follower, "/db/backup?fmt=sql");
        assert_eq!(sql.status, 200, "GET /db/backup?fmt=sql: {}", sql.text());
        let sql = String::from_utf8(sql.body).expect("a SQL backup is UTF-8 text");
        assert!(
            sql.starts_with(SQL_PREAMBLE),
            "the SQL backup starts with {:?}",
            &sql[..sql.len().min(80)]
        );
        assert!(!sql.contains("_keel_"), "the SQL backup mentions Keel's tables:\n{sql}");
        assert!(sql.trim_end().ends_with("COMMIT;"), "the SQL backup does not end with COMMIT");

        let compressed = a.get_raw(follower, "/db/backup?compress");
        assert_eq!(compressed.status, 200, "GET /db/backup?compress: {}", compressed.text());
        assert!(
            compressed.body.starts_with(GZIP_MAGIC),
            "GET /db/backup?compress is not gzip: {:?}",
            &compressed.body[..compressed.body.len().min(16)]
        );
        let mut unzipped = Vec::new();
        flate2::read::MultiGzDecoder::new(compressed.body.as_slice())
            .read_to_end(&mut unzipped)
            .expect("the compressed backup does not decompress");
        assert!(unzipped.starts_with(SQLITE_MAGIC), "the compressed backup is not a SQLite file");
        assert_sqlite_file_matches(&unzipped, files.path(), "unzipped.sqlite", &expected);

        // Nothing above changed A.
        assert_same_dump(&expected, &a.assert_consistent(), "cluster A after its backups");
        (expected, file.body, sql)
    };

    let b = TestCluster::start(3, 0);
    let leader = b.leader();

    // SQL text into the fresh cluster: executed, giving A's data on every node.
    let loaded = b.post_raw(leader, "/db/load", "text/plain", sql.as_bytes());
    assert_eq!(loaded.status, 200, "POST /db/load (SQL text): {}", loaded.text());
    assert_same_dump(&expected, &b.assert_consistent(), "cluster B after loading A's SQL backup");

    // Make B differ from A, then load A's SQLite file: it replaces everything.
    b.execute_ok(
        leader,
        json!([
            "CREATE TABLE stray (x)",
            "INSERT INTO stray VALUES(1)",
            "INSERT INTO users(name) VALUES('stray')",
            "DELETE FROM events WHERE rowid = 1",
            "DROP VIEW user_activity",
        ]),
    );
    let loaded = b.post_raw(leader, "/db/load", "application/octet-stream", file.clone());
    assert_eq!(loaded.status, 200, "POST /db/load (SQLite file): {}", loaded.text());
    assert_same_dump(&expected, &b.assert_consistent(), "cluster B after loading A's SQLite file");

    // Garbage, and a file cut in half, are refused and change nothing.
    let garbage: Vec<u8> =
        (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let refused = b.post_raw(leader, "/db/load", "application/octet-stream", garbage);
    assert_refused(&refused, "a load of garbage bytes");
    let truncated = file[..file.len() / 2].to_vec();
    let refused = b.post_raw(leader, "/db/load", "application/octet-stream", truncated);
    assert_refused(&refused, "a load of a SQLite file cut in half");
    assert_same_dump(&expected, &b.assert_consistent(), "cluster B after refused loads");

    // The loaded database is live: the trigger fires, and AUTOINCREMENT goes on from A's
    // sequence (4, with the row that had it deleted), on every node.
    b.execute_ok(leader, json!(["INSERT INTO users(name) VALUES('after load')"]));
    b.assert_consistent();
    for id in b.ids() {
        assert_eq!(
            b.rows(id, "SELECT id, action FROM audit ORDER BY id DESC LIMIT 1"),
            vec![vec![json!(5), json!("created after load")]],
            "node {id}"
        );
    }
}
