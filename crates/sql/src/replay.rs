//! Replays a changeset on the apply connection with statements of Keel's own.
//!
//! SQLite's `sqlite3changeset_apply` does the same work, but pays for it on every call: it
//! compiles `SAVEPOINT`, two `PRAGMA defer_foreign_keys` (each of which expires every prepared
//! statement of the connection, so the apply's own bookkeeping statements are compiled again
//! too), a `PRAGMA table_xinfo` per table, and an INSERT, a DELETE and a SELECT per table, used or
//! not. A replica applies one changeset per entry, so with small entries most of its database
//! thread went to SQLite's parser. Here the statements are kept in the connection's statement
//! cache, keyed by their text, and nothing expires them but a schema change.
//!
//! The statements are the ones SQLite's apply builds, so values compare and convert the same
//! way (`=` on primary-key columns of a DELETE, `IS` elsewhere; every value bound as the
//! changeset holds it):
//!
//! * insert: `INSERT INTO main."t"("a", "b") VALUES (?1, ?2)`;
//! * delete: `DELETE FROM main."t" WHERE "a" = ?1 AND ("b" IS ?2)`, which also checks that the
//!   row still holds the values the leader deleted;
//! * update: `UPDATE main."t" SET "b" = ?3 WHERE "a" IS ?2 AND "b" IS ?4`, one statement per set
//!   of changed columns, parameter `2i+1` the new and `2i+2` the old value of column `i`.
//!
//! A change that cannot be applied as it comes (an update or delete that finds no row with the
//! old values, an insert whose primary key is taken) aborts the replay. A change that fails
//! another constraint is put aside and retried once the table's other changes are in, for as
//! long as retrying makes progress, as SQLite does: a changeset lists net changes in its own
//! order, not in the order they were made, so a row may briefly hold a UNIQUE value another row
//! gives up later. When the replay aborts, [`apply`] rolls back its savepoint and hands the
//! changeset to SQLite's apply, whose answer is final; that is also the path for the rare
//! changesets SQLite resolves with temporary values (rows that swap their values of a UNIQUE
//! column).
//!
//! `sqlite_stat1`, which SQLite's apply treats specially, is left to SQLite's apply.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{CachedStatement, Connection, ErrorCode, ffi};

use crate::session::{self, ApplyError, Change};

#[cfg(test)]
mod tests;

/// A table's columns as a changeset records them: a rowid table without a PRIMARY KEY has the
/// rowid as an extra first column, named `_rowid_`.
#[derive(Clone, Debug)]
pub(crate) struct Shape {
    /// The table's name.
    pub(crate) name: String,
    /// The column names, in the changeset's order.
    pub(crate) columns: Vec<String>,
    /// Which columns form the primary key.
    pub(crate) primary_key: Vec<bool>,
}

/// The local table `name` as a changeset records it; `None` when there is no such table.
pub(crate) fn shape(conn: &Connection, name: &str) -> rusqlite::Result<Option<Shape>> {
    let mut stmt =
        conn.prepare_cached("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")?;
    let local: Vec<(String, i64)> =
        stmt.query_map([name], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
    if local.is_empty() {
        return Ok(None);
    }
    let (mut columns, mut primary_key): (Vec<String>, Vec<bool>) =
        local.into_iter().map(|(name, pk)| (name, pk > 0)).unzip();
    if !primary_key.contains(&true) {
        columns.insert(0, "_rowid_".to_string());
        primary_key.insert(0, true);
    }
    Ok(Some(Shape { name: name.to_string(), columns, primary_key }))
}

/// Whether [`apply`] handles a changeset touching these tables; otherwise use
/// [`session::apply`].
pub(crate) fn handles(shapes: &[Shape]) -> bool {
    !shapes.iter().any(|shape| shape.name.eq_ignore_ascii_case("sqlite_stat1"))
}

/// Applies `changeset` to `conn`'s main database, all or nothing. `shapes` describes every
/// table it touches (checked against the local schema by the caller).
///
/// Runs in a savepoint. When a change fails, whatever the reason, the savepoint is rolled back
/// and the changeset is handed to SQLite's apply, whose answer is final: it resolves constraint
/// cycles that retrying cannot (rows that swap their values of a UNIQUE column, through
/// temporary values), and it names the conflict. A failure that is not the changeset's (a full
/// disk, an I/O error) is returned as it is.
pub(crate) fn apply(
    conn: &Connection,
    changeset: &[u8],
    shapes: &[Shape],
) -> Result<(), ApplyError> {
    run(conn, "SAVEPOINT keel_replay")?;
    match replay(conn, changeset, shapes) {
        Ok(()) => run(conn, "RELEASE keel_replay"),
        Err(error) => {
            let undone = run(conn, "ROLLBACK TO keel_replay")
                .and_then(|()| run(conn, "RELEASE keel_replay"));
            if undone.is_err() {
                // SQLite already rolled the whole transaction back (some I/O errors do, a page
                // failing its checksum among them): the savepoint is gone, the cause is `error`.
                return Err(error);
            }
            match error {
                ApplyError::Sqlite(e) if !is_constraint(&e) && !is_corrupt(&e) => {
                    Err(ApplyError::Sqlite(e))
                }
                _ => session::apply(conn, changeset),
            }
        }
    }
}

/// Runs one of the savepoint statements, kept compiled in the statement cache.
fn run(conn: &Connection, text: &str) -> Result<(), ApplyError> {
    prepare(conn, text)?.raw_execute().map(drop).map_err(ApplyError::Sqlite)
}

/// The body of [`apply`]: fails on the first change that conflicts, leaving earlier changes in.
fn replay(conn: &Connection, changeset: &[u8], shapes: &[Shape]) -> Result<(), ApplyError> {
    let mut table: Option<Table<'_>> = None;
    let mut failed = None;
    let walked = session::for_each_change(changeset, |change| {
        let step = (|| {
            if table.as_ref().is_none_or(|t| t.shape.name != change.table) {
                if let Some(done) = table.take() {
                    done.finish(conn)?;
                }
                let shape = shapes.iter().find(|s| s.name == change.table).ok_or_else(|| {
                    ApplyError::Sqlite(corrupt(format!("no shape for table {}", change.table)))
                })?;
                table = Some(Table::new(shape));
            }
            let current = table.as_mut().expect("set above");
            let get = |i: usize, old: bool| change.value(i, old);
            match current.apply_one(conn, change.op, &get)? {
                Outcome::Applied => {}
                Outcome::Failed => current.deferred.push(Owned::of(change, current.shape)),
            }
            Ok(())
        })();
        step.map_err(|e| {
            failed = Some(e);
            // Stops the walk; the error returned is `failed`.
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_ABORT), None)
        })
    });
    if let Some(error) = failed {
        return Err(error);
    }
    walked.map_err(ApplyError::Sqlite)?;
    match table {
        Some(last) => last.finish(conn),
        None => Ok(()),
    }
}

/// The error for an inconsistency between a changeset and the shapes given with it.
fn corrupt(message: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_CORRUPT), Some(message))
}

/// What became of one change.
enum Outcome {
    /// It is in the table.
    Applied,
    /// It failed a constraint other than the primary key: retried later.
    Failed,
}

/// The table whose changes are being applied, with its statements' text and the changes put
/// aside.
struct Table<'s> {
    /// The table as the changeset records it.
    shape: &'s Shape,
    /// The quoted `main."name"`.
    qualified: String,
    /// The INSERT's text.
    insert: String,
    /// The DELETE's text.
    delete: String,
    /// UPDATE texts by the columns they set and compare (`new`, `old` flags per column).
    updates: Vec<(Vec<(bool, bool)>, String)>,
    /// Changes that failed a constraint, to retry.
    deferred: Vec<Owned>,
    /// The INSERT, held from its first use to the table's last change.
    insert_stmt: Option<CachedStatement<'s>>,
    /// The DELETE, likewise.
    delete_stmt: Option<CachedStatement<'s>>,
}

impl<'s> Table<'s> {
    /// Builds the INSERT and DELETE texts of `shape`.
    fn new(shape: &'s Shape) -> Self {
        let qualified = format!("main.{}", quote(&shape.name));
        let names: Vec<String> = shape.columns.iter().map(|c| quote(c)).collect();
        let params: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let insert =
            format!("INSERT INTO {qualified}({}) VALUES ({})", names.join(", "), params.join(", "));
        let key: Vec<String> = (0..names.len())
            .filter(|&i| shape.primary_key[i])
            .map(|i| format!("{} = ?{}", names[i], i + 1))
            .collect();
        let rest: Vec<String> = (0..names.len())
            .filter(|&i| !shape.primary_key[i])
            .map(|i| format!("{} IS ?{}", names[i], i + 1))
            .collect();
        let mut delete = format!("DELETE FROM {qualified} WHERE {}", key.join(" AND "));
        if !rest.is_empty() {
            delete.push_str(&format!(" AND ({})", rest.join(" AND ")));
        }
        Table {
            shape,
            qualified,
            insert,
            delete,
            updates: Vec::new(),
            deferred: Vec::new(),
            insert_stmt: None,
            delete_stmt: None,
        }
    }

    /// Applies one change whose values `get` reads.
    fn apply_one<'v>(
        &mut self,
        conn: &'s Connection,
        op: i32,
        get: &dyn Fn(usize, bool) -> Option<ValueRef<'v>>,
    ) -> Result<Outcome, ApplyError> {
        let n = self.shape.columns.len();
        match op {
            ffi::SQLITE_INSERT => {
                let stmt = held(&mut self.insert_stmt, conn, &self.insert, n, false, get)?;
                match stmt.raw_execute() {
                    Ok(_) => Ok(Outcome::Applied),
                    Err(e) if is_constraint(&e) => {
                        if self.key_taken(conn, get)? {
                            Err(self.conflict("row to insert already exists"))
                        } else {
                            Ok(Outcome::Failed)
                        }
                    }
                    Err(e) => Err(ApplyError::Sqlite(e)),
                }
            }
            ffi::SQLITE_DELETE => {
                let stmt = held(&mut self.delete_stmt, conn, &self.delete, n, true, get)?;
                let result = stmt.raw_execute();
                self.changed(result, "row to delete not found or not as the changeset says")
            }
            ffi::SQLITE_UPDATE => {
                let columns: Vec<(bool, bool)> = (0..n)
                    .map(|i| {
                        let new = !self.shape.primary_key[i] && get(i, false).is_some();
                        (new, self.shape.primary_key[i] || get(i, true).is_some())
                    })
                    .collect();
                if !columns.iter().any(|&(new, _)| new) {
                    return Err(ApplyError::Sqlite(corrupt(format!(
                        "an update of table {} changes no column",
                        self.shape.name
                    ))));
                }
                let which = self.update_text(columns);
                let (columns, text) = &self.updates[which];
                let mut stmt = prepare(conn, text)?;
                for (i, &(new, old)) in columns.iter().enumerate() {
                    if new {
                        bind(&mut stmt, 2 * i + 1, get(i, false))?;
                    }
                    if old {
                        bind(&mut stmt, 2 * i + 2, get(i, true))?;
                    }
                }
                self.changed(
                    stmt.raw_execute(),
                    "row to update not found or not as the changeset says",
                )
            }
            other => Err(ApplyError::Sqlite(corrupt(format!("unknown change kind {other}")))),
        }
    }

    /// The outcome of an UPDATE or DELETE that must have changed exactly one row.
    fn changed(
        &self,
        result: rusqlite::Result<usize>,
        missing: &'static str,
    ) -> Result<Outcome, ApplyError> {
        match result {
            Ok(0) => Err(self.conflict(missing)),
            Ok(_) => Ok(Outcome::Applied),
            Err(e) if is_constraint(&e) => Ok(Outcome::Failed),
            Err(e) => Err(ApplyError::Sqlite(e)),
        }
    }

    /// Where in `updates` the UPDATE for the columns it sets (`.0`) and compares (`.1`) is, built
    /// once per set.
    fn update_text(&mut self, columns: Vec<(bool, bool)>) -> usize {
        if let Some(which) = self.updates.iter().position(|(c, _)| *c == columns) {
            return which;
        }
        let set: Vec<String> = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.0)
            .map(|(i, _)| format!("{} = ?{}", quote(&self.shape.columns[i]), 2 * i + 1))
            .collect();
        let condition: Vec<String> = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.1)
            .map(|(i, _)| format!("{} IS ?{}", quote(&self.shape.columns[i]), 2 * i + 2))
            .collect();
        let text = format!(
            "UPDATE {} SET {} WHERE {}",
            self.qualified,
            set.join(", "),
            condition.join(" AND ")
        );
        self.updates.push((columns, text));
        self.updates.len() - 1
    }

    /// Whether a row holds the primary key of the insert whose values `get` reads.
    fn key_taken<'v>(
        &self,
        conn: &Connection,
        get: &dyn Fn(usize, bool) -> Option<ValueRef<'v>>,
    ) -> Result<bool, ApplyError> {
        let key: Vec<usize> =
            (0..self.shape.columns.len()).filter(|&i| self.shape.primary_key[i]).collect();
        let condition: Vec<String> = key
            .iter()
            .map(|&i| format!("{} = ?{}", quote(&self.shape.columns[i]), i + 1))
            .collect();
        let text = format!("SELECT 1 FROM {} WHERE {}", self.qualified, condition.join(" AND "));
        let mut stmt = prepare(conn, &text)?;
        for &i in &key {
            bind(&mut stmt, i + 1, get(i, false))?;
        }
        let mut rows = stmt.raw_query();
        rows.next().map(|row| row.is_some()).map_err(ApplyError::Sqlite)
    }

    /// The conflict error for this table.
    fn conflict(&self, kind: &'static str) -> ApplyError {
        ApplyError::Conflict { kind, table: self.shape.name.clone() }
    }

    /// Retries the changes put aside, for as long as each pass applies some; fails with the
    /// first change that still fails a constraint.
    fn finish(mut self, conn: &'s Connection) -> Result<(), ApplyError> {
        while !self.deferred.is_empty() {
            let before = self.deferred.len();
            let mut still = Vec::new();
            for change in std::mem::take(&mut self.deferred) {
                let get = |i: usize, old: bool| change.value(i, old);
                if let Outcome::Failed = self.apply_one(conn, change.op, &get)? {
                    still.push(change);
                }
            }
            if still.len() == before {
                return Err(self.conflict("constraint violation"));
            }
            self.deferred = still;
        }
        Ok(())
    }
}

/// A change copied out of the iterator, to retry after the iterator has moved on.
struct Owned {
    /// `SQLITE_INSERT`, `SQLITE_UPDATE` or `SQLITE_DELETE`.
    op: i32,
    /// Old values by column.
    old: Vec<Option<Kept>>,
    /// New values by column.
    new: Vec<Option<Kept>>,
}

impl Owned {
    /// Copies the iterator's current change.
    fn of(change: &Change<'_>, shape: &Shape) -> Self {
        let copy = |old: bool| {
            (0..shape.columns.len()).map(|i| change.value(i, old).map(Kept::of)).collect()
        };
        Owned { op: change.op, old: copy(true), new: copy(false) }
    }

    /// The old or new value of column `i`, as [`Change::value`].
    fn value(&self, i: usize, old: bool) -> Option<ValueRef<'_>> {
        let values = if old { &self.old } else { &self.new };
        values.get(i).and_then(Option::as_ref).map(Kept::get)
    }
}

/// An owned copy of a value, text kept as bytes (it need not be UTF-8).
enum Kept {
    /// NULL.
    Null,
    /// An integer.
    Integer(i64),
    /// A real.
    Real(f64),
    /// Text, as SQLite holds it.
    Text(Vec<u8>),
    /// A blob.
    Blob(Vec<u8>),
}

impl Kept {
    /// Copies `value`.
    fn of(value: ValueRef<'_>) -> Self {
        match value {
            ValueRef::Null => Kept::Null,
            ValueRef::Integer(i) => Kept::Integer(i),
            ValueRef::Real(r) => Kept::Real(r),
            ValueRef::Text(t) => Kept::Text(t.to_vec()),
            ValueRef::Blob(b) => Kept::Blob(b.to_vec()),
        }
    }

    /// Borrows the copy.
    fn get(&self) -> ValueRef<'_> {
        match self {
            Kept::Null => ValueRef::Null,
            Kept::Integer(i) => ValueRef::Integer(*i),
            Kept::Real(r) => ValueRef::Real(*r),
            Kept::Text(t) => ValueRef::Text(t),
            Kept::Blob(b) => ValueRef::Blob(b),
        }
    }
}

/// Quotes an identifier the way SQLite's apply does.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Takes the statement for `text` from the connection's cache, compiling it on first use.
fn prepare<'c>(conn: &'c Connection, text: &str) -> Result<CachedStatement<'c>, ApplyError> {
    conn.prepare_cached(text).map_err(ApplyError::Sqlite)
}

/// The statement held in `slot`, prepared from `text` on first use, with the old (`old`) or new
/// values of the change's `n` columns bound to parameters 1 to `n`.
fn held<'a, 's, 'v>(
    slot: &'a mut Option<CachedStatement<'s>>,
    conn: &'s Connection,
    text: &str,
    n: usize,
    old: bool,
    get: &dyn Fn(usize, bool) -> Option<ValueRef<'v>>,
) -> Result<&'a mut CachedStatement<'s>, ApplyError> {
    let stmt = match slot {
        Some(stmt) => stmt,
        None => slot.insert(prepare(conn, text)?),
    };
    for i in 0..n {
        bind(stmt, i + 1, get(i, old))?;
    }
    Ok(stmt)
}

/// Binds a value of the change to parameter `index`; a value the change lacks where the
/// statement needs one means the changeset does not have the shape it claims.
fn bind(
    stmt: &mut CachedStatement<'_>,
    index: usize,
    value: Option<ValueRef<'_>>,
) -> Result<(), ApplyError> {
    let value = value.ok_or_else(|| {
        ApplyError::Sqlite(corrupt(format!("a change lacks the value for parameter {index}")))
    })?;
    stmt.raw_bind_parameter(index, ToSqlOutput::Borrowed(value)).map_err(ApplyError::Sqlite)
}

/// Whether the error is [`corrupt`]'s: the changeset is not what its shapes say.
fn is_corrupt(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(ErrorCode::DatabaseCorrupt)
}

/// Whether SQLite refused a statement for a constraint.
fn is_constraint(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}
