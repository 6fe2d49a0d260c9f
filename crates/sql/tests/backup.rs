//! Backups and loads: images stripped of Keel's tables, sqlite3-style dumps, and loads of a
//! SQLite file or a dump through the normal write path (`Db::execute` + `Db::apply`), compared
//! with the source by `dump`.

use std::path::{Path, PathBuf};

use sql::load::{FileLoad, TextLoad};
use sql::{Apply, Db, Statement, WriteRequest};

/// A database and the next log index to apply at.
struct Node {
    /// The database.
    db: Db,
    /// The next index.
    index: u64,
}

impl Node {
    fn open(path: &Path) -> Node {
        Node { db: Db::open(path).unwrap(), index: 1 }
    }

    /// Runs `statements` as one transaction request, as `/db/load` does for a batch, and
    /// applies the record. Panics on any statement error.
    fn write(&mut self, statements: Vec<Statement>) {
        let request = WriteRequest {
            statements,
            transaction: true,
            rows: false,
            request_id: None,
            timeout: None,
        };
        let speculation = self.db.execute(&[request]).unwrap();
        for result in &speculation.results[0] {
            assert!(!result.is_error(), "{result:?}");
        }
        let entry = Apply {
            term: 1,
            index: self.index,
            record: Some(&speculation.record),
            membership: None,
        };
        self.db.apply(&[entry]).unwrap();
        self.index += 1;
    }

    /// [`Node::write`] of SQL texts.
    fn sql(&mut self, statements: &[&str]) {
        self.write(statements.iter().map(|s| Statement::new(*s)).collect());
    }

    /// Writes an image of the database to `path`.
    fn image(&self, path: &Path) -> PathBuf {
        self.db.image_source().write_image(path).unwrap();
        path.to_path_buf()
    }
}

/// A database with a table of every kind: INTEGER PRIMARY KEY with every value type, no
/// primary key with gaps in its rowids, WITHOUT ROWID, AUTOINCREMENT, a child created before
/// its parent, an index, a trigger (which must not fire during a load) and a view.
fn source(dir: &Path) -> Node {
    let mut node = Node::open(&dir.join("source"));
    node.sql(&[
        "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent (id))",
        "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT)",
        "CREATE TABLE a (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB, other)",
        "CREATE TABLE b (x, y)",
        "CREATE TABLE c (k TEXT, n INTEGER, v, PRIMARY KEY (k, n)) WITHOUT ROWID",
        "CREATE TABLE d (id INTEGER PRIMARY KEY AUTOINCREMENT, v)",
        "CREATE TABLE \"odd \"\"name\"\"\" (\"rowid\", [select], value)",
    ]);
    node.sql(&[
        "INSERT INTO parent VALUES (1, 'one'), (2, 'two'), (3, 'three')",
        "INSERT INTO child VALUES (10, 3), (11, 1), (12, 3)",
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 40)
         INSERT INTO a SELECT i * 3, 'name ' || i || ' it''s', i / 7.0, randomblob(i % 5), NULL FROM s",
        "INSERT INTO a VALUES (1000, 'ünï\ncode', -0.1, x'', 9223372036854775807),
             (-5, '', 1e300, x'00ff', -9223372036854775808), (7, NULL, NULL, NULL, 2.5)",
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 60)
         INSERT INTO b SELECT i, 'y' || (i % 4) FROM s",
        "DELETE FROM b WHERE x % 7 = 0 OR x > 55",
        "INSERT INTO c VALUES ('k', 2, 'two'), ('k', 1, x'01'), ('a', 9, 1.25), ('z''', 0, NULL)",
        "INSERT INTO d (v) VALUES ('first'), ('second'), ('third')",
        "DELETE FROM d WHERE id = 2",
        "INSERT INTO \"odd \"\"name\"\"\" VALUES (1, 2, 3), ('r', 's', 'v')",
        "DELETE FROM \"odd \"\"name\"\"\" WHERE \"rowid\" = 1",
    ]);
    node.sql(&[
        "CREATE INDEX b_y ON b (y)",
        "CREATE UNIQUE INDEX a_name ON a (name)",
        "CREATE TRIGGER a_log AFTER INSERT ON a BEGIN INSERT INTO d (v) VALUES (new.name); END",
        "CREATE VIEW names AS SELECT name FROM a WHERE name IS NOT NULL",
        "CREATE TRIGGER names_insert INSTEAD OF INSERT ON names BEGIN INSERT INTO a (name) VALUES (new.name); END",
    ]);
    node
}

/// Feeds every batch of a load into `node`; returns the batches' sizes.
fn load(
    node: &mut Node,
    mut next: impl FnMut() -> sql::Result<Option<Vec<Statement>>>,
) -> Vec<Vec<Statement>> {
    let mut batches = Vec::new();
    while let Some(batch) = next().unwrap() {
        assert!(!batch.is_empty());
        node.write(batch.clone());
        batches.push(batch);
    }
    batches
}

#[test]
fn file_load_recreates_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path());
    let image = source.image(&dir.path().join("image"));
    let mut target = Node::open(&dir.path().join("target"));
    let mut file = FileLoad::open(&image).unwrap().with_limits(7, 2_000);
    let batches = load(&mut target, || file.next_batch());
    assert_eq!(target.db.dump().unwrap(), source.db.dump().unwrap());

    // Phases: the schema first, the rows (in batches within the limits), then the rest.
    let kinds: Vec<&str> = batches
        .iter()
        .map(|batch| {
            let first = batch[0].sql.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            let kind = match first.as_str() {
                "CREATE TABLE" => "schema",
                "INSERT INTO" => "rows",
                // Indexes, triggers, views, then the AUTOINCREMENT counters.
                _ => "late",
            };
            if kind != "late" {
                assert!(batch.iter().all(|s| s.sql.starts_with(&first[..6])), "{batch:?}");
            }
            kind
        })
        .collect();
    let rows = kinds.iter().filter(|k| **k == "rows").count();
    assert_eq!(kinds[0], "schema");
    assert!(kinds[1..=rows].iter().all(|k| *k == "rows") && rows > 10, "{kinds:?}");
    assert_eq!(&kinds[rows + 1..], ["late"]);
    for batch in &batches {
        assert!(batch.len() <= 7);
    }
    // Rowids travel explicitly where they are not a column; parents load before children.
    let inserts: Vec<&str> = batches.iter().flatten().map(|s| s.sql.as_str()).collect();
    assert!(inserts.contains(&"INSERT INTO \"b\"(rowid,\"x\",\"y\") VALUES(?,?,?)"));
    assert!(inserts.contains(&"INSERT INTO \"a\" VALUES(?,?,?,?,?)"));
    assert!(inserts.contains(
        &"INSERT INTO \"odd \"\"name\"\"\"(_rowid_,\"rowid\",\"select\",\"value\") VALUES(?,?,?,?)"
    ));
    let position = |sql: &str| inserts.iter().position(|s| s.starts_with(sql)).unwrap();
    assert!(position("INSERT INTO \"parent\"") < position("INSERT INTO \"child\""));

    // A load replaces: dropping the user objects first and loading again gives the same.
    let drops = sql::load::drop_user_objects(&target.db).unwrap();
    assert_eq!(drops[0], Statement::new("DROP VIEW IF EXISTS \"names\""));
    let dropped: Vec<&str> = drops.iter().map(|s| s.sql.as_str()).collect();
    let child = dropped.iter().position(|s| s.contains("\"child\"")).unwrap();
    let parent = dropped.iter().position(|s| s.contains("\"parent\"")).unwrap();
    assert!(child < parent, "children are dropped first: {dropped:?}");
    target.write(drops);
    assert!(sql::load::drop_user_objects(&target.db).unwrap().is_empty());
    let mut file = FileLoad::open(&image).unwrap();
    let batches = load(&mut target, || file.next_batch());
    assert_eq!(batches.len(), 3, "default limits: schema, rows, the rest");
    assert_eq!(target.db.dump().unwrap(), source.db.dump().unwrap());
}

#[test]
fn text_load_of_a_dump_recreates_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path());
    let image = source.image(&dir.path().join("image"));
    let mut text = Vec::new();
    sql::backup::dump_sql(&image, None, &mut text).unwrap();

    let mut target = Node::open(&dir.path().join("target"));
    let mut loader = TextLoad::new(&text[..]).with_limits(5, 1_000);
    load(&mut target, || loader.next_batch());
    assert_eq!(target.db.dump().unwrap(), source.db.dump().unwrap());

    // The dump is valid sqlite3 input too: it gives a plain SQLite file with the same rows and
    // the same AUTOINCREMENT counters.
    let plain = dir.path().join("plain.sqlite");
    let conn = rusqlite::Connection::open(&plain).unwrap();
    conn.execute_batch(std::str::from_utf8(&text).unwrap()).unwrap();
    drop(conn);
    assert_eq!(sql::dump(&plain).unwrap(), source.db.dump().unwrap());
}

#[test]
fn dump_format() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::open(&dir.path().join("db"));
    node.sql(&[
        "CREATE TABLE v (i INTEGER PRIMARY KEY, r REAL, t TEXT, b BLOB, n)",
        "INSERT INTO v VALUES (1, 1.5, 'it''s', x'00ff', NULL), (2, -0.1, 'a\nb', x'', 1e300),
             (3, 2.0, '', x'0a', -7)",
        "CREATE TABLE w (a, b)",
        "INSERT INTO w VALUES ('x', 1), ('y', 2), ('z', 3)",
        "DELETE FROM w WHERE a = 'x'",
        "CREATE TABLE s (id INTEGER PRIMARY KEY AUTOINCREMENT, v)",
        "INSERT INTO s (v) VALUES (1), (2)",
        "CREATE INDEX w_b ON w (b)",
    ]);
    let image = node.image(&dir.path().join("image"));
    let mut out = Vec::new();
    sql::backup::dump_sql(&image, None, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE v (i INTEGER PRIMARY KEY, r REAL, t TEXT, b BLOB, n);
INSERT INTO "v" VALUES(1,1.5,'it''s',X'00FF',NULL);
INSERT INTO "v" VALUES(2,-0.1,'a
b',X'',1e300);
INSERT INTO "v" VALUES(3,2.0,'',X'0A',-7);
CREATE TABLE w (a, b);
INSERT INTO "w"(rowid,"a","b") VALUES(2,'y',2);
INSERT INTO "w"(rowid,"a","b") VALUES(3,'z',3);
CREATE TABLE s (id INTEGER PRIMARY KEY AUTOINCREMENT, v);
INSERT INTO "s" VALUES(1,1);
INSERT INTO "s" VALUES(2,2);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('s',2);
CREATE INDEX w_b ON w (b);
COMMIT;
"#
    );
    // Only some tables: no sqlite_sequence, the tables' own indexes.
    let mut out = Vec::new();
    sql::backup::dump_sql(&image, Some(&["W".to_string()]), &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE w (a, b);
INSERT INTO "w"(rowid,"a","b") VALUES(2,'y',2);
INSERT INTO "w"(rowid,"a","b") VALUES(3,'z',3);
CREATE INDEX w_b ON w (b);
COMMIT;
"#
    );
}

#[test]
fn stripped_images_hold_only_user_data() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path());
    let image = source.image(&dir.path().join("image"));
    sql::backup::strip_internal(&image).unwrap();
    let conn = rusqlite::Connection::open(&image).unwrap();
    let internal: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_keel%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(internal, 0);
    drop(conn);
    assert_eq!(sql::dump(&image).unwrap(), source.db.dump().unwrap());

    // VACUUM keeps every row (rowids of tables without INTEGER PRIMARY KEY may change).
    sql::backup::vacuum(&image).unwrap();
    let conn = rusqlite::Connection::open(&image).unwrap();
    let rows: i64 = conn.query_row("SELECT count(*) FROM b", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 48);
}

#[test]
fn files_that_are_not_databases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upload");
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    let error = FileLoad::open(&path).unwrap_err();
    assert!(
        matches!(&error, sql::Error::InvalidInput(m) if m.ends_with("not a SQLite database")),
        "{error}"
    );
    let error = sql::backup::dump_sql(&path, None, &mut Vec::new()).unwrap_err();
    assert!(matches!(&error, sql::Error::InvalidInput(_)), "{error}");
    let error = FileLoad::open(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(&error, sql::Error::InvalidInput(m) if m.contains("cannot open")), "{error}");
}

#[test]
fn plain_sqlite_files_load_too() {
    // A file made by sqlite3 (WAL mode left in its header, no Keel tables, FTS) loads.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.sqlite");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE t (a, b);
         INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three');
         DELETE FROM t WHERE a = 1;
         CREATE VIRTUAL TABLE docs USING fts5 (body);
         INSERT INTO docs (rowid, body) VALUES (5, 'hello world'), (9, 'goodbye world');",
    )
    .unwrap();
    drop(conn);
    let mut target = Node::open(&dir.path().join("target"));
    let mut file = FileLoad::open(&path).unwrap();
    load(&mut target, || file.next_batch());
    let readers = target.db.readers(1).unwrap();
    let results = readers
        .query(
            &[
                Statement::new("SELECT rowid, a, b FROM t ORDER BY rowid"),
                Statement::new("SELECT rowid FROM docs WHERE docs MATCH 'world' ORDER BY rowid"),
            ],
            false,
        )
        .unwrap();
    let json: Vec<String> =
        results.iter().map(|r| r.to_json(&sql::Format::default(), false).to_string()).collect();
    assert!(json[0].contains(r#""values":[[2,2,"two"],[3,3,"three"]]"#), "{}", json[0]);
    assert!(json[1].contains(r#""values":[[5],[9]]"#), "{}", json[1]);
}
