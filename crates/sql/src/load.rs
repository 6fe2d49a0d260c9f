//! Loading a database from a SQLite file or SQL text, as batches of ordinary write statements.
//!
//! `/db/load` on the leader replaces the database, as rqlite's does: `bin` sends
//! [`drop_user_objects`] as one write request, then every batch of a [`FileLoad`] (an uploaded
//! SQLite file) or a [`TextLoad`] (an uploaded dump) as one write request each, through the
//! normal write path ([`crate::Db::execute`], Raft, [`crate::Db::apply`]). Each batch is
//! therefore atomic and replicated like any write; the load as a whole is not atomic (a failed
//! batch leaves the earlier ones applied). Nothing here touches the live database, and both
//! loaders read their input incrementally: memory is bounded by one batch
//! ([`BATCH_STATEMENTS`] statements, about [`BATCH_BYTES`] bytes).
//!
//! ```text
//! drop_user_objects(db)          DROP VIEW IF EXISTS "v"; DROP TABLE IF EXISTS "child"; …
//! FileLoad::next_batch           CREATE TABLE …                       (schema batches)
//!                                INSERT INTO "t"(rowid,"a") VALUES(?,?) ×N   (row batches)
//!                                CREATE INDEX / TRIGGER / VIEW …      (last batches)
//! TextLoad::next_batch           the text's statements, minus the dump wrapper
//! ```
//!
//! [`FileLoad`] copies rows with their rowids (explicitly for rowid tables without an INTEGER
//! PRIMARY KEY), tables parents first by foreign key, and creates indexes, triggers and views
//! after the rows. It reads each batch with a fresh query that resumes after the last rowid or
//! primary key copied, so it holds no statement open between batches.
//!
//! [`TextLoad`] cuts the text into complete statements with `sqlite3_complete`, as the sqlite3
//! shell does. It skips what a dump wraps its statements in, which cannot be replicated as
//! statements and is not needed: `BEGIN [TRANSACTION]`, `COMMIT`/`END [TRANSACTION]` (each
//! batch is a transaction already) and `PRAGMA foreign_keys=OFF`. It also skips the writes to
//! statistics tables that dumps contain (`sqlite_stat*`, `ANALYZE sqlite_master`): statistics
//! come back with ANALYZE. A dump's `sqlite_sequence` lines run as they are (Keel allows writes
//! to `sqlite_sequence`, as SQLite does, and replicates them), and [`FileLoad`] sets every
//! loaded table's AUTOINCREMENT counter to the source's after its rows.
//!
//! IMPLEMENTATION CAVEATS
//!
//! * With foreign keys on (`keel serve --fk`, [`crate::Limits::foreign_keys`]) rows load with
//!   them enforced. Tables are loaded parents first, but rows of a table referencing later rows
//!   of itself, or tables in a reference cycle, can then fail with a foreign key error; so can
//!   dropping such tables.
//! * The `sqlite_sequence` and `sqlite_stat1` tables themselves stay in the target once they
//!   exist (SQLite does not drop them), and `user_version` is not copied.
//! * Virtual tables are created and their rows inserted through them, which rebuilds a full-text
//!   index but cannot restore contentless or external-content FTS tables.

use std::collections::VecDeque;
use std::ffi::c_char;
use std::io::BufRead;
use std::path::Path;

use rusqlite::Connection;
use rusqlite::types::ValueRef;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::schema::{self, Table, quote_identifier};
use crate::statement::{MAX_SQL_LEN, Params, Statement, Value};

/// The most statements a batch holds by default.
pub const BATCH_STATEMENTS: usize = 1_000;

/// The size a batch stops growing at by default: SQL text plus values, in bytes. A single
/// statement larger than this makes a batch of its own.
pub const BATCH_BYTES: usize = 4 << 20;

/// The statements that drop every user object of `db`: `DROP VIEW IF EXISTS` for views, then
/// `DROP TABLE IF EXISTS` for tables, children before parents by foreign key (their indexes
/// and triggers go with them). Keel's and SQLite's internal tables stay. Empty for a database
/// without user objects. `IF EXISTS`, because the schema may change before they run.
pub fn drop_user_objects(db: &Db) -> Result<Vec<Statement>> {
    let conn = db.connection();
    let views: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'view' ORDER BY rowid")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut statements: Vec<Statement> = views
        .iter()
        .filter(|name| !schema::is_internal_table(name))
        .map(|name| Statement::new(format!("DROP VIEW IF EXISTS {}", quote_identifier(name))))
        .collect();
    let tables = schema::user_tables(conn)?;
    statements.extend(tables.iter().rev().map(|table| {
        Statement::new(format!("DROP TABLE IF EXISTS {}", quote_identifier(&table.name)))
    }));
    Ok(statements)
}

/// A batch being filled, within limits.
struct Batch {
    /// The statements so far.
    statements: Vec<Statement>,
    /// Their size so far.
    bytes: usize,
    /// The most statements.
    max_statements: usize,
    /// The size to stop at.
    max_bytes: usize,
}

impl Batch {
    /// An empty batch.
    fn new(max_statements: usize, max_bytes: usize) -> Batch {
        Batch { statements: Vec::new(), bytes: 0, max_statements, max_bytes }
    }

    /// Whether a statement of `size` bytes may be added: always to an empty batch.
    fn fits(&self, size: usize) -> bool {
        self.statements.is_empty()
            || (self.statements.len() < self.max_statements
                && self.bytes.saturating_add(size) <= self.max_bytes)
    }

    /// Adds a statement of `size` bytes.
    fn push(&mut self, statement: Statement, size: usize) {
        self.statements.push(statement);
        self.bytes = self.bytes.saturating_add(size);
    }

    /// Whether no statement at all may be added any more.
    fn is_full(&self) -> bool {
        self.statements.len() >= self.max_statements || self.bytes >= self.max_bytes
    }

    /// The statements, `None` if there are none.
    fn finish(self) -> Option<Vec<Statement>> {
        (!self.statements.is_empty()).then_some(self.statements)
    }
}

/// The size a statement counts for in a batch: its SQL and its values.
fn statement_size(statement: &Statement) -> usize {
    let values = match &statement.params {
        Params::Positional(values) => values.iter().map(value_size).sum(),
        _ => 0,
    };
    statement.sql.len() + values
}

/// The size a value counts for.
fn value_size(value: &Value) -> usize {
    match value {
        Value::Null => 1,
        Value::Integer(_) | Value::Real(_) => 8,
        Value::Text(text) => text.len(),
        Value::Blob(blob) => blob.len(),
    }
}

/// The rows of one table still to copy.
struct Rows {
    /// The table's name, for errors.
    table: String,
    /// The parameterised INSERT of one row.
    insert: String,
    /// The query of the first rows (without a key to resume after), taking the LIMIT as `?1`.
    first: String,
    /// The query of the rows after a key, taking the LIMIT as `?1` and the key as `?2…`.
    next: String,
    /// The number of key columns, which come first in every result row.
    key_width: usize,
    /// The key of the last row copied, `None` before the first.
    after: Option<Vec<Value>>,
}

impl Rows {
    /// Prepares copying `table`'s rows.
    fn new(table: &Table) -> Result<Rows> {
        if table.key.is_empty() {
            return Err(Error::InvalidInput(format!(
                "cannot load table {}: its columns hide the rowid (columns named rowid, _rowid_ and oid)",
                table.name
            )));
        }
        let quoted = quote_identifier(&table.name);
        let placeholders = vec!["?"; table.width()].join(",");
        let insert = format!("{}{placeholders})", table.insert_prefix());
        let columns: Vec<String> =
            table.key.iter().cloned().chain(table.value_expressions()).collect();
        let order = table.key.join(", ");
        let first =
            format!("SELECT {} FROM {quoted} ORDER BY {order} LIMIT ?1", columns.join(", "));
        let key_params: Vec<String> = (0..table.key.len()).map(|i| format!("?{}", i + 2)).collect();
        let next = format!(
            "SELECT {} FROM {quoted} WHERE ({order}) > ({}) ORDER BY {order} LIMIT ?1",
            columns.join(", "),
            key_params.join(", ")
        );
        Ok(Rows {
            table: table.name.clone(),
            insert,
            first,
            next,
            key_width: table.key.len(),
            after: None,
        })
    }

    /// Adds this table's next rows to `batch` while they fit; returns whether the table is done.
    fn fill(&mut self, conn: &Connection, batch: &mut Batch) -> Result<bool> {
        let wanted = batch.max_statements.saturating_sub(batch.statements.len()).max(1);
        let limit = i64::try_from(wanted).unwrap_or(i64::MAX);
        let mut stmt =
            conn.prepare_cached(if self.after.is_some() { &self.next } else { &self.first })?;
        stmt.raw_bind_parameter(1, limit)?;
        for (i, value) in self.after.iter().flatten().enumerate() {
            stmt.raw_bind_parameter(i + 2, value)?;
        }
        let width = stmt.column_count();
        let mut rows = stmt.raw_query();
        let mut taken = 0;
        while let Some(row) = rows.next()? {
            let values = (0..width)
                .map(|i| to_value(row.get_ref(i)?, &self.table))
                .collect::<Result<Vec<Value>>>()?;
            let statement = Statement {
                sql: self.insert.clone(),
                params: Params::Positional(values[self.key_width..].to_vec()),
            };
            let size = statement_size(&statement);
            if !batch.fits(size) {
                return Ok(false);
            }
            batch.push(statement, size);
            self.after = Some(values[..self.key_width].to_vec());
            taken += 1;
        }
        Ok(taken < wanted)
    }
}

/// Converts a value read from the source.
fn to_value(value: ValueRef<'_>, table: &str) -> Result<Value> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(text) => Value::Text(String::from_utf8(text.to_vec()).map_err(|_| {
            Error::InvalidInput(format!("table {table} holds text that is not valid UTF-8"))
        })?),
        ValueRef::Blob(blob) => Value::Blob(blob.to_vec()),
    })
}

/// A SQLite database file read as batches of statements that recreate its user tables, rows
/// and other objects (see the module docs). Call [`FileLoad::next_batch`] until it returns
/// `None`.
///
/// Invariants: batches come in phases and never mix them: schema (CREATE TABLE), rows, then
/// indexes, triggers and views. Every batch holds at least one statement.
pub struct FileLoad {
    /// The source, read-only.
    conn: Connection,
    /// CREATE TABLE statements not yet given out.
    schema: VecDeque<Statement>,
    /// Tables whose rows are not all given out yet, in load order.
    rows: VecDeque<Rows>,
    /// Index, trigger and view statements not yet given out.
    late: VecDeque<Statement>,
    /// The most statements per batch.
    max_statements: usize,
    /// The size a batch stops growing at.
    max_bytes: usize,
}

impl std::fmt::Debug for FileLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLoad")
            .field("schema", &self.schema.len())
            .field("tables", &self.rows.len())
            .field("late", &self.late.len())
            .finish_non_exhaustive()
    }
}

impl FileLoad {
    /// Opens the SQLite file at `path` (read-only) and reads its schema. A file that is not a
    /// SQLite database gives [`Error::InvalidInput`].
    pub fn open(path: &Path) -> Result<FileLoad> {
        let conn = schema::open_file(path, true)?;
        let tables = schema::user_tables(&conn)?;
        let schema = tables.iter().map(|t| Statement::new(t.sql.clone())).collect();
        let rows = tables.iter().map(Rows::new).collect::<Result<_>>()?;
        let mut late: VecDeque<Statement> =
            schema::late_objects(&conn, &tables, None)?.into_iter().map(Statement::new).collect();
        late.extend(sequences(&conn, &tables)?);
        Ok(FileLoad {
            conn,
            schema,
            rows,
            late,
            max_statements: BATCH_STATEMENTS,
            max_bytes: BATCH_BYTES,
        })
    }

    /// Sets the batch limits (at least one statement each), instead of [`BATCH_STATEMENTS`]
    /// and [`BATCH_BYTES`].
    pub fn with_limits(mut self, max_statements: usize, max_bytes: usize) -> FileLoad {
        self.max_statements = max_statements.max(1);
        self.max_bytes = max_bytes;
        self
    }

    /// The next batch, to run as one write request; `None` when everything has been given out.
    pub fn next_batch(&mut self) -> Result<Option<Vec<Statement>>> {
        let mut batch = Batch::new(self.max_statements, self.max_bytes);
        if !self.schema.is_empty() {
            fill_from(&mut self.schema, &mut batch);
            return Ok(batch.finish());
        }
        while let Some(rows) = self.rows.front_mut() {
            if rows.fill(&self.conn, &mut batch)? {
                self.rows.pop_front();
            } else {
                break;
            }
            if batch.is_full() {
                break;
            }
        }
        if !batch.statements.is_empty() {
            return Ok(batch.finish());
        }
        fill_from(&mut self.late, &mut batch);
        Ok(batch.finish())
    }
}

/// Statements that set the target's AUTOINCREMENT counters of the loaded tables to the
/// source's (after the rows: inserting them moves a counter only up to the largest rowid, and
/// the source's may be higher, after deleted rows).
fn sequences(conn: &Connection, tables: &[schema::Table]) -> Result<Vec<Statement>> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'sqlite_sequence'",
        [],
        |row| row.get(0),
    )?;
    if !exists {
        return Ok(Vec::new());
    }
    // Any value of any type may be stored there (SQLite allows writes), and a name may repeat.
    let mut stmt = conn.prepare("SELECT name, seq FROM sqlite_sequence ORDER BY rowid")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    let mut cleared = Vec::new();
    while let Some(row) = rows.next()? {
        let ValueRef::Text(name) = row.get_ref(0)? else { continue };
        let Some(table) = tables.iter().find(|t| t.name.as_bytes() == name) else { continue };
        let quoted = schema::literal(ValueRef::Text(name));
        if !cleared.contains(&table.name) {
            cleared.push(table.name.clone());
            out.push(Statement::new(format!("DELETE FROM sqlite_sequence WHERE name = {quoted}")));
        }
        let seq = schema::literal(row.get_ref(1)?);
        out.push(Statement::new(format!(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ({quoted}, {seq})"
        )));
    }
    Ok(out)
}

/// Moves statements from the front of `queue` into `batch` while they fit.
fn fill_from(queue: &mut VecDeque<Statement>, batch: &mut Batch) {
    while let Some(statement) = queue.front() {
        let size = statement_size(statement);
        if !batch.fits(size) {
            break;
        }
        if let Some(statement) = queue.pop_front() {
            batch.push(statement, size);
        }
    }
}

/// Finds the places where a statement may end: `;` outside strings, quoted names and comments.
#[derive(Clone, Copy, Debug, Default)]
struct Scanner {
    /// Where it is.
    lexed: Lexed,
    /// The byte before, in `Code` or `BlockComment` (to spot `--`, `/*` and `*/`).
    previous: u8,
}

impl Scanner {
    /// Advances over `byte`; returns whether it is a `;` in plain SQL, where a statement may
    /// end.
    fn scan(&mut self, byte: u8) -> bool {
        let previous = std::mem::replace(&mut self.previous, 0);
        match self.lexed {
            Lexed::Code => match byte {
                b'\'' | b'"' | b'`' => self.lexed = Lexed::Quoted(byte),
                b'[' => self.lexed = Lexed::Quoted(b']'),
                b'-' if previous == b'-' => self.lexed = Lexed::LineComment,
                b'*' if previous == b'/' => self.lexed = Lexed::BlockComment,
                b';' => return true,
                _ => self.previous = byte,
            },
            Lexed::Quoted(end) => {
                if byte == end {
                    self.lexed = Lexed::Code;
                }
            }
            Lexed::LineComment => {
                if byte == b'\n' {
                    self.lexed = Lexed::Code;
                }
            }
            Lexed::BlockComment => {
                if byte == b'/' && previous == b'*' {
                    self.lexed = Lexed::Code;
                } else {
                    self.previous = byte;
                }
            }
        }
        false
    }
}

/// Where the [`Scanner`] is in the SQL text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Lexed {
    /// Plain SQL.
    #[default]
    Code,
    /// Inside a quoted string or identifier, ended by this byte.
    Quoted(u8),
    /// Inside a `-- …` comment.
    LineComment,
    /// Inside a `/* … */` comment.
    BlockComment,
}

/// SQL text read as batches of complete statements (see the module docs). Call
/// [`TextLoad::next_batch`] until it returns `None`; after an error, stop.
pub struct TextLoad<R: BufRead> {
    /// The input.
    reader: R,
    /// The bytes of the statement being read.
    pending: Vec<u8>,
    /// The scanner's state at the end of `pending`.
    scanner: Scanner,
    /// The current line (1-based), for errors.
    line: u64,
    /// The line `pending` starts on.
    start_line: u64,
    /// A statement that did not fit the previous batch.
    carried: Option<Statement>,
    /// The most statements per batch.
    max_statements: usize,
    /// The size a batch stops growing at.
    max_bytes: usize,
}

impl<R: BufRead> std::fmt::Debug for TextLoad<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextLoad").field("line", &self.line).finish_non_exhaustive()
    }
}

impl<R: BufRead> TextLoad<R> {
    /// Reads SQL text from `reader`.
    pub fn new(reader: R) -> TextLoad<R> {
        TextLoad {
            reader,
            pending: Vec::new(),
            scanner: Scanner::default(),
            line: 1,
            start_line: 1,
            carried: None,
            max_statements: BATCH_STATEMENTS,
            max_bytes: BATCH_BYTES,
        }
    }

    /// Sets the batch limits (at least one statement each), instead of [`BATCH_STATEMENTS`]
    /// and [`BATCH_BYTES`].
    pub fn with_limits(mut self, max_statements: usize, max_bytes: usize) -> TextLoad<R> {
        self.max_statements = max_statements.max(1);
        self.max_bytes = max_bytes;
        self
    }

    /// The next batch of statements, to run as one write request; `None` at the end of the
    /// text. Errors: [`Error::InvalidInput`] for a statement longer than [`MAX_SQL_LEN`], text
    /// that is not UTF-8 or holds a NUL byte; [`Error::Io`] from the reader.
    pub fn next_batch(&mut self) -> Result<Option<Vec<Statement>>> {
        let mut batch = Batch::new(self.max_statements, self.max_bytes);
        if let Some(statement) = self.carried.take() {
            let size = statement_size(&statement);
            batch.push(statement, size);
        }
        while !batch.is_full() {
            let Some(sql) = self.next_statement()? else {
                break;
            };
            if is_skipped(&sql) {
                continue;
            }
            let statement = Statement::new(sql);
            let size = statement_size(&statement);
            if !batch.fits(size) {
                self.carried = Some(statement);
                break;
            }
            batch.push(statement, size);
        }
        Ok(batch.finish())
    }

    /// The next complete statement with content (not only comments), trimmed; `None` at the
    /// end of the text. Text after the last `;` counts as a statement if it has content.
    fn next_statement(&mut self) -> Result<Option<String>> {
        loop {
            let buffer = self.reader.fill_buf()?;
            if buffer.is_empty() {
                let rest = std::mem::take(&mut self.pending);
                return self.finish_statement(rest);
            }
            let mut used = 0;
            let mut complete = false;
            for &byte in buffer {
                used += 1;
                if byte == 0 {
                    return Err(Error::InvalidInput(format!("NUL byte at line {}", self.line)));
                }
                if byte == b'\n' {
                    self.line += 1;
                }
                if self.pending.is_empty() {
                    if byte.is_ascii_whitespace() {
                        continue;
                    }
                    self.start_line = self.line;
                }
                self.pending.push(byte);
                if self.pending.len() > MAX_SQL_LEN {
                    return Err(Error::InvalidInput(format!(
                        "the statement starting at line {} is longer than {MAX_SQL_LEN} bytes",
                        self.start_line
                    )));
                }
                if self.scanner.scan(byte) && is_complete(&mut self.pending) {
                    complete = true;
                    break;
                }
            }
            self.reader.consume(used);
            if complete {
                let statement = std::mem::take(&mut self.pending);
                self.scanner = Scanner::default();
                if let Some(sql) = self.finish_statement(statement)? {
                    return Ok(Some(sql));
                }
            }
        }
    }

    /// Turns a statement's bytes into text; `None` if it has nothing but comments and `;`.
    fn finish_statement(&self, bytes: Vec<u8>) -> Result<Option<String>> {
        let sql = String::from_utf8(bytes).map_err(|_| {
            Error::InvalidInput(format!(
                "the statement starting at line {} is not valid UTF-8",
                self.start_line
            ))
        })?;
        let sql = sql.trim();
        // A statement is cut at its first complete `;`, so one without content starts with it.
        let content = tokens(sql, 1).first().is_some_and(|token| token != ";");
        Ok(content.then(|| sql.to_string()))
    }
}

/// Whether `sql` (ending with `;`) is one or more complete statements, by `sqlite3_complete`.
fn is_complete(sql: &mut Vec<u8>) -> bool {
    sql.push(0);
    // SAFETY: `sql` is NUL-terminated (input NUL bytes are refused before they get here) and
    // is neither moved nor changed during the call; sqlite3_complete only reads it.
    let complete = unsafe { rusqlite::ffi::sqlite3_complete(sql.as_ptr().cast::<c_char>()) };
    sql.pop();
    complete != 0
}

/// Up to `max` leading tokens of `sql`, skipping whitespace and comments: words as written,
/// quoted names and strings unquoted, any other character alone.
fn tokens(sql: &str, max: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = sql.chars().peekable();
    while tokens.len() < max {
        let Some(c) = chars.next() else { break };
        match c {
            c if c.is_whitespace() => {}
            c if skip_comment(c, &mut chars) => {}
            '"' | '`' | '[' | '\'' => {
                let end = if c == '[' { ']' } else { c };
                let mut name = String::new();
                while let Some(c) = chars.next() {
                    if c == end {
                        if chars.peek() == Some(&end) && end != ']' {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    name.push(c);
                }
                tokens.push(name);
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' => {
                let mut word = String::from(c);
                while let Some(&c) = chars.peek() {
                    if c.is_alphanumeric() || c == '_' || c == '$' {
                        word.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(word);
            }
            c => tokens.push(c.to_string()),
        }
    }
    tokens
}

/// If `c` (just taken from `chars`) starts a comment, `--` to the end of the line or `/* */`,
/// consumes the rest of it and returns true.
fn skip_comment(c: char, chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    match c {
        '-' if chars.peek() == Some(&'-') => {
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            true
        }
        '/' if chars.peek() == Some(&'*') => {
            chars.next();
            let mut previous = ' ';
            for c in chars.by_ref() {
                if previous == '*' && c == '/' {
                    break;
                }
                previous = c;
            }
            true
        }
        _ => false,
    }
}

/// Whether `sql` holds anything besides whitespace, `;` and comments, i.e. a statement.
pub fn has_content(sql: &str) -> bool {
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if !(c.is_whitespace() || c == ';' || skip_comment(c, &mut chars)) {
            return true;
        }
    }
    false
}

/// Whether a statement of a dump is skipped by [`TextLoad`] (see the module docs).
fn is_skipped(sql: &str) -> bool {
    let mut tokens = tokens(sql, 6);
    if tokens.last().is_some_and(|last| last == ";") {
        tokens.pop();
    }
    let words: Vec<String> = tokens.iter().map(|t| t.to_ascii_uppercase()).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let internal = |name: &str| {
        let name = name.to_ascii_lowercase();
        name.starts_with("sqlite_stat")
    };
    match words.as_slice() {
        ["BEGIN"] | ["BEGIN", "TRANSACTION"] => true,
        ["BEGIN", "DEFERRED" | "IMMEDIATE" | "EXCLUSIVE"] => true,
        ["BEGIN", "DEFERRED" | "IMMEDIATE" | "EXCLUSIVE", "TRANSACTION"] => true,
        ["COMMIT" | "END"] | ["COMMIT" | "END", "TRANSACTION"] => true,
        ["PRAGMA", "FOREIGN_KEYS", "=", "OFF" | "0" | "FALSE" | "NO"] => true,
        ["DELETE", "FROM", ..] | ["INSERT", "INTO", ..] => {
            tokens.get(2).is_some_and(|name| internal(name))
        }
        ["ANALYZE", "SQLITE_MASTER" | "SQLITE_SCHEMA"] => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use test_case::test_case;

    use super::*;

    #[test_case("BEGIN TRANSACTION;", true)]
    #[test_case("begin;", true)]
    #[test_case("BEGIN IMMEDIATE TRANSACTION;", true)]
    #[test_case("COMMIT;", true)]
    #[test_case("END TRANSACTION;", true)]
    #[test_case("PRAGMA foreign_keys=OFF;", true)]
    #[test_case("PRAGMA foreign_keys = 0;", true)]
    #[test_case("PRAGMA foreign_keys=ON;", false)]
    #[test_case("DELETE FROM sqlite_sequence;", false)]
    #[test_case("DELETE FROM \"sqlite_sequence\";", false)]
    #[test_case("INSERT INTO \"sqlite_sequence\" VALUES('t',5);", false)]
    #[test_case("INSERT INTO sqlite_stat1 VALUES('t','i','1');", true)]
    #[test_case("ANALYZE \"sqlite_master\";", true)]
    #[test_case("ANALYZE t;", false)]
    #[test_case("INSERT INTO \"t\" VALUES(1);", false)]
    #[test_case("DELETE FROM t;", false)]
    #[test_case("/* x */ COMMIT -- y\n;", true)]
    #[test_case("BEGIN; INSERT INTO t VALUES (1);", false)]
    #[test_case("CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;", false)]
    fn skipped(sql: &str, expect: bool) {
        assert_eq!(is_skipped(sql), expect);
    }

    /// All statements of `text`, batch by batch, with the given limits.
    fn batches(text: &str, statements: usize, bytes: usize) -> Result<Vec<Vec<String>>> {
        let mut load = TextLoad::new(Cursor::new(text.as_bytes())).with_limits(statements, bytes);
        let mut out = Vec::new();
        while let Some(batch) = load.next_batch()? {
            out.push(batch.into_iter().map(|s| s.sql).collect());
        }
        Ok(out)
    }

    #[test]
    fn statements_are_cut_where_sqlite_would() {
        let text = "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n\
            CREATE TABLE \"a;b\" (x TEXT DEFAULT ';', [y;] /* ; */ -- ;\n);\n\
            INSERT INTO \"a;b\" VALUES('it''s; fine', 1); INSERT INTO \"a;b\" VALUES('x', 2);\n\
            CREATE TRIGGER tr AFTER INSERT ON \"a;b\" BEGIN\n  SELECT 1;\n  SELECT 2;\nEND;\n\
            ;\n-- trailing comment\nCOMMIT;\nSELECT 'no semicolon'\n  ";
        let all = batches(text, 100, 1 << 20).unwrap();
        assert_eq!(
            all,
            vec![vec![
                "CREATE TABLE \"a;b\" (x TEXT DEFAULT ';', [y;] /* ; */ -- ;\n);",
                "INSERT INTO \"a;b\" VALUES('it''s; fine', 1);",
                "INSERT INTO \"a;b\" VALUES('x', 2);",
                "CREATE TRIGGER tr AFTER INSERT ON \"a;b\" BEGIN\n  SELECT 1;\n  SELECT 2;\nEND;",
                "SELECT 'no semicolon'",
            ]]
        );
        // Limits: by count, and by size (a statement over the size makes a batch alone).
        let counts: Vec<usize> = batches(text, 2, 1 << 20).unwrap().iter().map(Vec::len).collect();
        assert_eq!(counts, vec![2, 2, 1]);
        let counts: Vec<usize> = batches(text, 100, 80).unwrap().iter().map(Vec::len).collect();
        assert_eq!(counts, vec![1, 2, 1, 1]);
        // A one-byte-at-a-time reader cuts the same statements.
        let mut load = TextLoad::new(std::io::BufReader::with_capacity(1, text.as_bytes()));
        assert_eq!(load.next_batch().unwrap().unwrap().len(), 5);
        assert_eq!(load.next_batch().unwrap(), None);
    }

    #[test]
    fn bad_text_is_refused() {
        let long = format!("INSERT INTO t VALUES ('{}');", "x".repeat(MAX_SQL_LEN));
        let error = batches(&format!("SELECT 1;\n{long}"), 10, 100).unwrap_err().to_string();
        assert_eq!(
            error,
            format!("the statement starting at line 2 is longer than {MAX_SQL_LEN} bytes")
        );
        let error = batches("SELECT 1;\nSELECT '\0';", 10, 100).unwrap_err().to_string();
        assert_eq!(error, "NUL byte at line 2");
        let mut load = TextLoad::new(Cursor::new(b"SELECT '\xff';".to_vec()));
        assert_eq!(
            load.next_batch().unwrap_err().to_string(),
            "the statement starting at line 1 is not valid UTF-8"
        );
        assert_eq!(batches("", 10, 100).unwrap(), Vec::<Vec<String>>::new());
        assert_eq!(batches(" -- only a comment\n", 10, 100).unwrap(), Vec::<Vec<String>>::new());
    }
}
