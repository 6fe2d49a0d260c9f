//! Fuzz target `classify`: client SQL through the authorizer (`sql`'s `policy`), as a write
//! (`Db::execute`, speculative execution with session capture) and as a read
//! (`Readers::query`).
//!
//! ## Input
//!
//! UTF-8 text (invalid bytes are replaced), one request. Paragraphs (separated by a blank line)
//! are its client statements, each of which may hold several `;`-separated SQL statements, as
//! rqlite allows. Lines that start a paragraph may set options, and are SQL comments otherwise:
//!
//! * `-- tx`: the request runs as one transaction (`?transaction`);
//! * `-- rows`: `/db/request` semantics (rows for statements that return columns);
//! * `-- params [1, "x'00'", {"name": 2}]`: the statement's parameters, parsed the way the HTTP
//!   body's are (`sql::parse_statements`), so binding is fuzzed too.
//!
//! Seeds are in `fuzz/seeds/classify/`, SQL keywords in `fuzz/dicts/sql.dict`.
//!
//! ## Invariants checked
//!
//! * Nothing panics, and `Db::execute` / `Readers::query` return `Ok`: their `Err` is reserved
//!   for infrastructure failures, SQL errors are per-statement results.
//! * Afterwards the write connection holds no transaction (a second connection can take the
//!   write lock at once), both connections still work (`SELECT 1` answers 1), and nothing was
//!   committed (the database's data version, seen from a second connection, is unchanged).
//! * What the policy must deny never succeeds (see [`must_deny`]): ATTACH/DETACH, VACUUM
//!   (including `VACUUM INTO`), explicit transactions and savepoints, assignments to pragmas
//!   that are not replicated, `load_extension()`, TEMP objects on the write path, and anything
//!   that writes on the read path.
//!
//! The database never changes: `Db::execute` always rolls back, so every run starts from the
//! schema made once in [`Harness::open`], and a crash reproduces from its input alone. Each
//! statement may run for 100 ms ([`sql::Limits`]), far below libFuzzer's timeout, so
//! unbounded recursive CTEs end as errors rather than hangs.

#![no_main]

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sql::{Db, Readers, Statement, StatementResult, WriteRequest};

/// The schema every input runs against: tables with and without rowid, AUTOINCREMENT, a foreign
/// key with a cascade, a view, a trigger, an index, a full-text table, and a few rows.
const SCHEMA: &[&str] = &[
    "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n REAL, b BLOB)",
    "CREATE TABLE u (id INTEGER PRIMARY KEY AUTOINCREMENT, \
     t_id INTEGER REFERENCES t(id) ON DELETE CASCADE, w TEXT UNIQUE)",
    "CREATE TABLE kv (k TEXT PRIMARY KEY, val ANY) STRICT, WITHOUT ROWID",
    "CREATE INDEX t_v ON t(v)",
    "CREATE VIEW tv AS SELECT t.id, t.v, u.w FROM t LEFT JOIN u ON u.t_id = t.id",
    "CREATE TRIGGER t_log AFTER INSERT ON t BEGIN \
     INSERT INTO u(t_id, w) VALUES (new.id, 'from trigger ' || new.id); END",
    "CREATE VIRTUAL TABLE ft USING fts5(body)",
    "INSERT INTO t(v, n, b) VALUES ('one', 1.5, x'01'), ('two', 2.5, NULL), (NULL, NULL, x'')",
    "INSERT INTO kv VALUES ('a', 1), ('b', 'two'), ('c', x'03')",
    "INSERT INTO ft(body) VALUES ('the quick brown fox'), ('jumps over the lazy dog')",
    "PRAGMA user_version = 7",
];

/// The most bytes of input (`-max_len` in `fuzz/run` matches it); longer inputs are cut.
const MAX_INPUT: usize = 4096;

/// Statement keywords (first keyword of the text) that both paths must refuse.
const DENIED_EVERYWHERE: &[&str] =
    &["ATTACH", "DETACH", "VACUUM", "BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"];

/// Statement keywords that always write, which the read path must refuse. Left out: `CREATE`,
/// `DROP` and `REINDEX`, which SQLite prepares as read-only no-ops in some cases (`CREATE TRIGGER
/// IF NOT EXISTS` of an existing trigger, `DROP TRIGGER IF EXISTS` of a missing one, `REINDEX`
/// of a table without indexes); whether anything was written at all is checked separately,
/// with the database's data version.
const WRITES: &[&str] = &["INSERT", "UPDATE", "DELETE", "REPLACE", "ALTER", "ANALYZE"];

/// Pragmas that may take an argument on either path: they only read (as `policy` lists them).
const READ_PRAGMAS: &[&str] = &[
    "collation_list",
    "compile_options",
    "database_list",
    "foreign_key_check",
    "foreign_key_list",
    "function_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "module_list",
    "pragma_list",
    "quick_check",
    "table_info",
    "table_list",
    "table_xinfo",
];

/// Pragmas whose assignment is replicated, hence allowed on the write path only.
const REPLICATED_PRAGMAS: &[&str] = &["application_id", "user_version"];

/// Which path a statement ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// `Db::execute`.
    Write,
    /// `Readers::query`.
    Read,
}

/// The database shared by all runs of the target in this process.
struct Harness {
    /// The write connection.
    db: Db,
    /// One read-only connection.
    readers: Readers,
    /// A plain connection to the same file, for the no-open-transaction and no-commit checks.
    probe: rusqlite::Connection,
    /// The probe's `PRAGMA data_version` after the schema was applied: it changes when any
    /// other connection commits, which no input may make happen.
    data_version: i64,
    /// Keeps the database directory until the process exits.
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Creates the database with [`SCHEMA`] applied, and a 100 ms statement limit.
    fn open() -> Harness {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut db = Db::open(dir.path()).expect("open the database");
        db.set_limits(sql::Limits {
            max_result_rows: 10_000,
            max_result_bytes: 1 << 20,
            statement_time: Duration::from_millis(100),
            // The schema's ON DELETE CASCADE must run, as with `keel serve --fk`.
            foreign_keys: true,
        });
        let request = WriteRequest {
            statements: SCHEMA.iter().map(|s| Statement::new(*s)).collect(),
            transaction: true,
            timeout: None,
            rows: false,
            request_id: None,
        };
        let speculation = db.execute(&[request]).expect("run the schema");
        for (sql, result) in SCHEMA.iter().zip(&speculation.results[0]) {
            assert!(!result.is_error(), "schema statement {sql:?} failed: {result:?}");
        }
        let entry =
            sql::Apply { term: 1, index: 1, record: Some(&speculation.record), membership: None };
        db.apply(&[entry]).expect("apply the schema");
        let readers = db.readers(1).expect("open a reader");
        let probe = rusqlite::Connection::open(db.path()).expect("open the probe connection");
        let data_version = data_version(&probe);
        Harness { db, readers, probe, data_version, _dir: dir }
    }

    /// Runs one request both ways and checks the invariants (see the module docs).
    fn run(&mut self, statements: &[Statement], transaction: bool, rows: bool) {
        let request = WriteRequest {
            statements: statements.to_vec(),
            transaction,
            timeout: None,
            rows,
            request_id: None,
        };
        let written = match self.db.execute(&[request]) {
            Ok(speculation) => speculation.results.into_iter().next().unwrap_or_default(),
            Err(error) => panic!("Db::execute failed (not a statement error): {error}"),
        };
        check_results(Path::Write, statements, &written);
        self.check_write_connection();

        let read = match self.readers.query(statements, transaction) {
            Ok(results) => results,
            Err(error) => panic!("Readers::query failed (not a statement error): {error}"),
        };
        check_results(Path::Read, statements, &read);
        let one = self.readers.query(&[Statement::new("SELECT 1")], false);
        assert!(is_one(one.as_deref().ok()), "the read connection no longer works: {one:?}");

        // `Db::execute` always rolls back and readers cannot write: nothing was committed.
        assert_eq!(data_version(&self.probe), self.data_version, "the database changed");
    }

    /// The write connection is back in autocommit mode and still runs statements.
    fn check_write_connection(&mut self) {
        // A transaction left open on the write connection would hold the write lock, and the
        // next `Db::execute` would fail to begin its own.
        let locked = self.probe.execute_batch("BEGIN IMMEDIATE; ROLLBACK;");
        assert!(locked.is_ok(), "the write connection left a transaction open: {locked:?}");
        let request = WriteRequest {
            statements: vec![Statement::new("SELECT 1")],
            transaction: false,
            timeout: None,
            rows: true,
            request_id: None,
        };
        let one = self.db.execute(&[request]).map(|s| s.results.into_iter().next());
        let first = one.as_ref().ok().and_then(|r| r.as_deref());
        assert!(is_one(first), "the write connection no longer works: {one:?}");
    }
}

/// `PRAGMA data_version` on `conn`.
fn data_version(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("PRAGMA data_version", [], |row| row.get(0)).expect("PRAGMA data_version")
}

/// Whether `results` is the one row `[[1]]`.
fn is_one(results: Option<&[StatementResult]>) -> bool {
    matches!(results, Some([StatementResult::Rows { values, .. }])
        if values.len() == 1 && values[0] == [serde_json::json!(1)])
}

/// Checks that no statement the policy must deny on `path` succeeded.
fn check_results(path: Path, statements: &[Statement], results: &[StatementResult]) {
    assert!(results.len() <= statements.len(), "more results than statements");
    for (statement, result) in statements.iter().zip(results) {
        if !result.is_error()
            && let Some(reason) = must_deny(path, &statement.sql)
        {
            panic!("{path:?} path accepted {reason}: {:?} gave {result:?}", statement.sql);
        }
    }
}

/// Why `sql` must be refused on `path`, if it must.
///
/// Decided from the text alone (up to a NUL, where SQLite stops reading), so only for what the
/// text shows for sure: the first keyword
/// for statement kinds, the first statement for pragmas, and a call of `load_extension` (outside
/// literals and comments) in a text that is one data statement (a trigger or view body is only
/// checked when it runs, so CREATE is left out).
fn must_deny(path: Path, sql: &str) -> Option<&'static str> {
    // SQLite reads SQL text up to the first NUL character, and so must this.
    let sql = sql.split('\0').next().unwrap_or_default();
    let tokens = tokens(sql);
    let first = tokens.first().map(|t| t.to_ascii_uppercase()).unwrap_or_default();
    if DENIED_EVERYWHERE.contains(&first.as_str()) {
        return Some("a statement the policy denies everywhere");
    }
    if path == Path::Read && WRITES.contains(&first.as_str()) {
        return Some("a writing statement on the read path");
    }
    if path == Path::Write
        && first == "CREATE"
        && tokens
            .get(1)
            .is_some_and(|t| t.eq_ignore_ascii_case("TEMP") || t.eq_ignore_ascii_case("TEMPORARY"))
    {
        return Some("a TEMP object");
    }
    if first == "PRAGMA" {
        // PRAGMA [schema.]name (= value | (value))
        let (name, rest) = match tokens.get(2).map(String::as_str) {
            Some(".") => (tokens.get(3), tokens.get(4)),
            _ => (tokens.get(1), tokens.get(2)),
        };
        let assigns = rest.is_some_and(|t| t == "=" || t == "(");
        if let Some(name) = name.map(|n| n.to_ascii_lowercase())
            && assigns
            && is_identifier(&name)
            && !READ_PRAGMAS.contains(&name.as_str())
            && (path == Path::Read || !REPLICATED_PRAGMAS.contains(&name.as_str()))
        {
            return Some("a pragma assignment");
        }
    }
    let data = ["SELECT", "VALUES", "WITH", "INSERT", "UPDATE", "DELETE", "REPLACE"];
    let single = !tokens.iter().rev().skip_while(|t| *t == ";").any(|t| t == ";");
    if data.contains(&first.as_str())
        && single
        && (0..tokens.len()).any(|i| calls_load_extension(&tokens, i))
    {
        return Some("a load_extension() call");
    }
    None
}

/// Whether `tokens[i]` starts a call of `load_extension`: the name, then `(`, and it is not a
/// table name (`INSERT INTO load_extension(a)`, of a table an earlier statement of the request
/// made) nor a common table expression (`WITH load_extension(a) AS (…)`).
fn calls_load_extension(tokens: &[String], i: usize) -> bool {
    if !tokens[i].eq_ignore_ascii_case("load_extension")
        || tokens.get(i + 1).is_none_or(|t| t != "(")
        || i.checked_sub(1).is_some_and(|p| tokens[p].eq_ignore_ascii_case("INTO"))
    {
        return false;
    }
    let mut depth = 0usize;
    let mut close = None;
    for (j, token) in tokens.iter().enumerate().skip(i + 1) {
        match token.as_str() {
            "(" => depth += 1,
            ")" => {
                depth -= 1;
                if depth == 0 {
                    close = Some(j);
                    break;
                }
            }
            _ => {}
        }
    }
    let Some(close) = close else {
        return true;
    };
    let cte = tokens.get(close + 1).is_some_and(|t| t.eq_ignore_ascii_case("AS"))
        && tokens.get(close + 2).is_some_and(|t| {
            t == "(" || t.eq_ignore_ascii_case("MATERIALIZED") || t.eq_ignore_ascii_case("NOT")
        });
    !cte
}

/// Whether `token` is a bare identifier (not a quoted one, a number or punctuation).
fn is_identifier(token: &str) -> bool {
    token.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// A rough SQL tokenizer: bare words and single punctuation characters, skipping whitespace,
/// comments, string and blob literals and quoted identifiers (which SQLite never reads as
/// keywords, so they can only make [`must_deny`] answer `None`). Leading semicolons are
/// skipped, as SQLite skips empty statements.
fn tokens(sql: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let rest = &sql[i..];
        if c.is_whitespace() {
            continue;
        }
        if rest.starts_with("--") {
            while chars.next_if(|&(_, c)| c != '\n').is_some() {}
            continue;
        }
        if rest.starts_with("/*") {
            chars.next();
            let mut previous = ' ';
            for (_, c) in chars.by_ref() {
                if previous == '*' && c == '/' {
                    break;
                }
                previous = c;
            }
            continue;
        }
        if let Some(close) = match c {
            '\'' => Some('\''),
            '"' => Some('"'),
            '`' => Some('`'),
            '[' => Some(']'),
            _ => None,
        } {
            // A doubled quote inside is an escaped one: scanning on from it is the same as
            // treating it as the end and a new literal, and either way makes one "literal".
            for (_, c) in chars.by_ref() {
                if c == close {
                    break;
                }
            }
            out.push("<literal>".to_string());
            continue;
        }
        if c.is_alphanumeric() || c == '_' || c == '$' {
            let mut word = String::from(c);
            while let Some((_, c)) =
                chars.next_if(|&(_, c)| c.is_alphanumeric() || c == '_' || c == '$')
            {
                word.push(c);
            }
            // x'…' is a blob literal, not the word x.
            if (word == "x" || word == "X") && chars.peek().is_some_and(|&(_, c)| c == '\'') {
                continue;
            }
            out.push(word);
            continue;
        }
        if c == ';' && out.is_empty() {
            continue;
        }
        out.push(c.to_string());
    }
    out
}

/// Splits an input into the request's statements and options (see the module docs).
fn request(text: &str) -> Option<(Vec<Statement>, bool, bool)> {
    let mut statements = Vec::new();
    let (mut transaction, mut rows) = (false, false);
    for paragraph in text.split("\n\n") {
        let mut sql = paragraph;
        let mut params = Vec::new();
        loop {
            let (line, rest) = sql.split_once('\n').unwrap_or((sql, ""));
            let line = line.trim_end();
            if line == "-- tx" {
                transaction = true;
            } else if line == "-- rows" {
                rows = true;
            } else if let Some(json) = line.strip_prefix("-- params ") {
                match serde_json::from_str::<serde_json::Value>(json) {
                    Ok(serde_json::Value::Array(values)) => params.extend(values),
                    Ok(value) => params.push(value),
                    Err(_) => return None,
                }
            } else {
                break;
            }
            sql = rest;
        }
        if sql.trim().is_empty() {
            continue;
        }
        let mut item = vec![serde_json::Value::String(sql.to_string())];
        item.extend(params);
        statements.push(serde_json::Value::Array(item));
    }
    if statements.is_empty() {
        return None;
    }
    // The HTTP layer's parser: a request it would refuse never reaches the database.
    let statements = sql::parse_statements(&serde_json::Value::Array(statements)).ok()?;
    Some((statements, transaction, rows))
}

/// The harness, made on first use.
static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let text = String::from_utf8_lossy(data);
    let Some((statements, transaction, rows)) = request(&text) else {
        return;
    };
    let harness = HARNESS.get_or_init(|| Mutex::new(Harness::open()));
    let mut harness = harness.lock().unwrap_or_else(PoisonError::into_inner);
    harness.run(&statements, transaction, rows);
});
