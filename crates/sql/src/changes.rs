//! Decoding replicated changesets into row changes, for change data capture
//! (`GET /db/changes` in `bin`).
//!
//! A [`wal::Op::Changes`] is a SQLite session changeset: per changed row, the table, the kind
//! of change, which columns form the primary key, and the old and/or new values. [`decode`]
//! walks it with SQLite's changeset iterator (`sqlite3changeset_start` / `next` / `op` / `pk` /
//! `old` / `new`) and returns plain [`RowChange`]s. A changeset knows column *positions*, not
//! names: [`table_columns`] reads the names from this node's schema, and
//! [`RowChange::to_json`] combines the two into the event a change stream sends.
//!
//! The FFI is raw for the reason `session` gives (rusqlite's `session` feature needs libclang)
//! and follows its safety argument: the changeset buffer outlives the iterator, which is
//! finalized exactly once, and every value SQLite hands out is copied before the next step.
//!
//! # Shapes
//!
//! * Insert: `new` holds every column. Delete: `old` holds every column.
//! * Update: `old` holds the primary-key columns and the columns that changed, `new` holds the
//!   changed columns (and, here, the primary-key columns copied from `old`: an update that
//!   changes a primary key is recorded by sessions as a delete and an insert, so the key of an
//!   update is the same before and after). Columns the update left alone are absent.
//! * A table without a PRIMARY KEY is recorded by rowid (`SQLITE_SESSION_OBJCONFIG_ROWID`): the
//!   changeset then carries the rowid as an extra first column, which becomes the key
//!   `{"rowid": …}` and is not part of `old` / `new`.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * Column names come from the schema when the change is *read*, not when it was made. A
//!   column added later (`ALTER TABLE … ADD COLUMN`) is harmless (it comes last), but a renamed
//!   or dropped column, or a dropped table, names the columns of older changes wrongly or not
//!   at all: columns that the current schema cannot name are called `column<N>` (N from 1), and
//!   a dropped table's rowid key cannot be told apart from an ordinary first column.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rusqlite::ffi;
use serde_json::{Map, Value as Json};

use crate::error::{Error, Result};
use crate::readers::Readers;
use crate::result::StatementResult;
use crate::statement::{Params, Statement, Value};

/// The kind of a row change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A row was inserted.
    Insert,
    /// A row was updated in place (same key).
    Update,
    /// A row was deleted.
    Delete,
}

impl ChangeKind {
    /// The lower-case name used in change events: `insert`, `update` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Insert => "insert",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }
}

/// One row change of a changeset, by column position.
///
/// Invariants:
/// * `primary_key`, `old` and `new` have one slot per column of the changeset's record for the
///   table (for a table recorded by rowid, the rowid is column 0).
/// * `old` is all `None` for an insert, `new` all `None` for a delete.
#[derive(Clone, Debug, PartialEq)]
pub struct RowChange {
    /// The changed table.
    pub table: String,
    /// Insert, update or delete.
    pub kind: ChangeKind,
    /// Which columns form the primary key (the rowid, for a table recorded by rowid).
    pub primary_key: Vec<bool>,
    /// The values before the change; `None` where the changeset does not carry one.
    pub old: Vec<Option<Value>>,
    /// The values after the change; `None` where the changeset does not carry one.
    pub new: Vec<Option<Value>>,
}

/// The columns of a table as the schema names them, for naming a [`RowChange`]'s values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableColumns {
    /// Column names in table order (hidden and generated columns excluded, as sessions do).
    pub names: Vec<String>,
    /// Whether the table has no PRIMARY KEY, so that sessions record it by rowid.
    pub rowid: bool,
}

/// The event fields of a row change: `key`, `old` and `new`, as JSON objects from column name
/// to value (`old` is `null` for an insert, `new` for a delete).
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeJson {
    /// The primary key's columns and values (`{"rowid": n}` for a table recorded by rowid).
    pub key: Json,
    /// The values before the change.
    pub old: Json,
    /// The values after the change.
    pub new: Json,
}

impl RowChange {
    /// Names this change's values with `columns` (the table's schema, `None` if unknown) and
    /// encodes them as JSON: integers and reals as numbers (a non-finite real as `null`), text
    /// as strings, blobs as base64 strings (as rqlite encodes them), NULL as `null`.
    pub fn to_json(&self, columns: Option<&TableColumns>) -> ChangeJson {
        let width = self.primary_key.len();
        // A rowid-recorded change has one more column than the table; trust the schema only
        // when the shape fits it.
        let rowid = columns.is_some_and(|c| c.rowid && width == c.names.len() + 1);
        let offset = usize::from(rowid);
        let name = |i: usize| -> String {
            if rowid && i == 0 {
                return "rowid".to_string();
            }
            columns
                .and_then(|c| c.names.get(i - offset))
                .cloned()
                .unwrap_or_else(|| format!("column{}", i - offset + 1))
        };
        let mut key = Map::new();
        let mut old = Map::new();
        let mut new = Map::new();
        for i in 0..width {
            let is_key = self.primary_key[i];
            let before = self.old.get(i).and_then(Option::as_ref);
            let after = self.new.get(i).and_then(Option::as_ref);
            if is_key && let Some(value) = before.or(after) {
                key.insert(name(i), to_json(value));
            }
            if rowid && i == 0 {
                continue;
            }
            if let Some(value) = before {
                old.insert(name(i), to_json(value));
            }
            match after {
                Some(value) => {
                    new.insert(name(i), to_json(value));
                }
                // An update's key is the same after it (see the module docs).
                None if is_key && self.kind == ChangeKind::Update => {
                    if let Some(value) = before {
                        new.insert(name(i), to_json(value));
                    }
                }
                None => {}
            }
        }
        let (old, new) = match self.kind {
            ChangeKind::Insert => (Json::Null, Json::Object(new)),
            ChangeKind::Delete => (Json::Object(old), Json::Null),
            ChangeKind::Update => (Json::Object(old), Json::Object(new)),
        };
        ChangeJson { key: Json::Object(key), old, new }
    }
}

/// Encodes one value for a change event.
fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Integer(i) => Json::from(*i),
        Value::Real(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Text(text) => Json::String(text.clone()),
        Value::Blob(bytes) => Json::String(BASE64.encode(bytes)),
    }
}

/// Reads the columns of `table` from the schema through a read connection of `readers`;
/// `None` if the table does not exist. Blocks (call it from a blocking thread).
pub fn table_columns(readers: &Readers, table: &str) -> Result<Option<TableColumns>> {
    let statement = Statement {
        sql: "SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid".to_string(),
        params: Params::Positional(vec![Value::Text(table.to_string())]),
    };
    let results = readers.query(&[statement], false)?;
    let rows = match results.into_iter().next() {
        Some(StatementResult::Rows { values, .. }) => values,
        Some(StatementResult::Error(message)) => {
            return Err(Error::InvalidInput(format!("reading the columns of {table}: {message}")));
        }
        _ => return Ok(None),
    };
    if rows.is_empty() {
        return Ok(None);
    }
    let mut names = Vec::with_capacity(rows.len());
    let mut rowid = true;
    for row in rows {
        match (row.first(), row.get(1)) {
            (Some(Json::String(name)), Some(pk)) => {
                names.push(name.clone());
                rowid &= pk.as_i64() == Some(0);
            }
            _ => {
                return Err(Error::InvalidInput(format!(
                    "unexpected table_info row for {table}: {row:?}"
                )));
            }
        }
    }
    Ok(Some(TableColumns { names, rowid }))
}

/// Decodes every row change of `changeset`, in order. Fails with [`Error::InvalidInput`] if the
/// changeset is malformed.
pub fn decode(changeset: &[u8]) -> Result<Vec<RowChange>> {
    let mut changes = Vec::new();
    if changeset.is_empty() {
        return Ok(changes);
    }
    let malformed = |code: c_int| {
        Error::InvalidInput(format!(
            "malformed changeset ({} bytes): {}",
            changeset.len(),
            ffi::Error::new(code)
        ))
    };
    let len = c_int::try_from(changeset.len()).map_err(|_| malformed(ffi::SQLITE_TOOBIG))?;
    let mut iter = ptr::null_mut();
    // SAFETY: `changeset` outlives the iterator (finalized below); SQLite only reads it.
    let rc = unsafe {
        ffi::sqlite3changeset_start(&mut iter, len, changeset.as_ptr().cast_mut().cast::<c_void>())
    };
    if rc != ffi::SQLITE_OK {
        return Err(malformed(rc));
    }
    let mut rc;
    loop {
        // SAFETY: `iter` is a live iterator until finalized.
        rc = unsafe { ffi::sqlite3changeset_next(iter) };
        if rc != ffi::SQLITE_ROW {
            break;
        }
        // SAFETY: `iter` points at a change (SQLITE_ROW).
        match unsafe { current(iter) } {
            Some(change) => changes.push(change),
            None => {
                rc = ffi::SQLITE_CORRUPT;
                break;
            }
        }
    }
    // SAFETY: finalized exactly once; returns the first error met while iterating, if any.
    let finalize = unsafe { ffi::sqlite3changeset_finalize(iter) };
    if rc != ffi::SQLITE_DONE {
        return Err(malformed(rc));
    }
    if finalize != ffi::SQLITE_OK {
        return Err(malformed(finalize));
    }
    Ok(changes)
}

/// The change the iterator points at; `None` if SQLite cannot describe it.
///
/// # Safety
///
/// `iter` must be a live changeset iterator positioned on a change (its last `next` returned
/// `SQLITE_ROW`).
unsafe fn current(iter: *mut ffi::sqlite3_changeset_iter) -> Option<RowChange> {
    let mut name: *const c_char = ptr::null();
    let (mut columns, mut op, mut indirect): (c_int, c_int, c_int) = (0, 0, 0);
    let mut pk: *mut u8 = ptr::null_mut();
    let mut pk_columns: c_int = 0;
    // SAFETY: per the contract; the out-pointers are valid. The name and the PK array live
    // until the next step and are copied now.
    let (table, primary_key) = unsafe {
        if ffi::sqlite3changeset_op(iter, &mut name, &mut columns, &mut op, &mut indirect)
            != ffi::SQLITE_OK
            || name.is_null()
            || ffi::sqlite3changeset_pk(iter, &mut pk, &mut pk_columns) != ffi::SQLITE_OK
            || pk.is_null()
            || pk_columns != columns
        {
            return None;
        }
        let table = CStr::from_ptr(name).to_string_lossy().into_owned();
        let pk = std::slice::from_raw_parts(pk, columns.max(0) as usize);
        (table, pk.iter().map(|&b| b != 0).collect::<Vec<_>>())
    };
    let kind = match op {
        ffi::SQLITE_INSERT => ChangeKind::Insert,
        ffi::SQLITE_UPDATE => ChangeKind::Update,
        ffi::SQLITE_DELETE => ChangeKind::Delete,
        _ => return None,
    };
    let values = |old: bool| -> Vec<Option<Value>> {
        let carried = if old { kind != ChangeKind::Insert } else { kind != ChangeKind::Delete };
        (0..columns)
            .map(|i| {
                if !carried {
                    return None;
                }
                // SAFETY: the change is of a kind that carries these values and `i` is below
                // its column count.
                unsafe { column(iter, i, old) }
            })
            .collect()
    };
    let (old, new) = (values(true), values(false));
    Some(RowChange { table, kind, primary_key, old, new })
}

/// The old (`old = true`) or new value of column `i` of the iterator's current change; `None`
/// when the changeset does not carry it (a column an update left alone).
///
/// # Safety
///
/// `iter` must point at a change of a kind that carries old (update, delete) or new (insert,
/// update) values, and `i` must be below its column count.
unsafe fn column(iter: *mut ffi::sqlite3_changeset_iter, i: c_int, old: bool) -> Option<Value> {
    // SAFETY: per the contract.
    unsafe {
        crate::session::change_value(iter, i, old, |value| match value {
            rusqlite::types::ValueRef::Integer(n) => Value::Integer(n),
            rusqlite::types::ValueRef::Real(x) => Value::Real(x),
            rusqlite::types::ValueRef::Text(t) => {
                Value::Text(String::from_utf8_lossy(t).into_owned())
            }
            rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            rusqlite::types::ValueRef::Null => Value::Null,
        })
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use serde_json::json;

    use super::*;
    use crate::session::Session;

    /// Runs `sql` on a fresh database made by `schema` and returns the captured changeset.
    fn capture(schema: &str, sql: &str) -> Vec<u8> {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(schema).unwrap();
        let session = Session::new(&conn, Box::new(|_| true)).unwrap();
        conn.execute_batch(sql).unwrap();
        session.changeset().unwrap()
    }

    fn columns(names: &[&str], rowid: bool) -> TableColumns {
        TableColumns { names: names.iter().map(|n| n.to_string()).collect(), rowid }
    }

    #[test]
    fn inserts_updates_and_deletes_with_a_primary_key() {
        let changes = decode(&capture(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB);
             INSERT INTO t VALUES (1, 'a', 1.5, x'00ff'), (2, 'b', NULL, NULL);",
            "INSERT INTO t VALUES (3, 'c', 2.0, NULL);
             UPDATE t SET name = 'A' WHERE id = 1;
             DELETE FROM t WHERE id = 2;",
        ))
        .unwrap();
        let cols = columns(&["id", "name", "score", "data"], false);
        let mut by_kind: Vec<(ChangeKind, ChangeJson)> =
            changes.iter().map(|c| (c.kind, c.to_json(Some(&cols)))).collect();
        by_kind.sort_by_key(|(kind, _)| kind.as_str());
        assert_eq!(
            by_kind,
            vec![
                (
                    ChangeKind::Delete,
                    ChangeJson {
                        key: json!({"id": 2}),
                        old: json!({"id": 2, "name": "b", "score": null, "data": null}),
                        new: Json::Null,
                    }
                ),
                (
                    ChangeKind::Insert,
                    ChangeJson {
                        key: json!({"id": 3}),
                        old: Json::Null,
                        new: json!({"id": 3, "name": "c", "score": 2.0, "data": null}),
                    }
                ),
                (
                    ChangeKind::Update,
                    ChangeJson {
                        key: json!({"id": 1}),
                        old: json!({"id": 1, "name": "a"}),
                        new: json!({"id": 1, "name": "A"}),
                    }
                ),
            ]
        );
        assert!(changes.iter().all(|c| c.table == "t"));
    }

    #[test]
    fn a_table_without_primary_key_is_keyed_by_rowid() {
        let changes = decode(&capture(
            "CREATE TABLE log (msg TEXT, at INTEGER);",
            "INSERT INTO log VALUES ('hi', 7);",
        ))
        .unwrap();
        assert_eq!(changes.len(), 1);
        let json = changes[0].to_json(Some(&columns(&["msg", "at"], true)));
        assert_eq!(json.key, json!({"rowid": 1}));
        assert_eq!(json.new, json!({"msg": "hi", "at": 7}));
        assert_eq!(json.old, Json::Null);
        // Without the schema the positions still come through, named by number.
        let json = changes[0].to_json(None);
        assert_eq!(json.key, json!({"column1": 1}));
        assert_eq!(json.new, json!({"column1": 1, "column2": "hi", "column3": 7}));
    }

    #[test]
    fn composite_keys_and_blobs() {
        let changes = decode(&capture(
            "CREATE TABLE kv (a TEXT, b INTEGER, v BLOB, PRIMARY KEY (a, b)) WITHOUT ROWID;",
            "INSERT INTO kv VALUES ('x', 1, x'010203');",
        ))
        .unwrap();
        let json = changes[0].to_json(Some(&columns(&["a", "b", "v"], false)));
        assert_eq!(json.key, json!({"a": "x", "b": 1}));
        assert_eq!(json.new, json!({"a": "x", "b": 1, "v": "AQID"}));
    }

    #[test]
    fn a_column_added_later_keeps_the_older_names() {
        let changes = decode(&capture(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a);",
            "INSERT INTO t VALUES (1, 2);",
        ))
        .unwrap();
        let json = changes[0].to_json(Some(&columns(&["id", "a", "added"], false)));
        assert_eq!(json.new, json!({"id": 1, "a": 2}));
    }

    #[test]
    fn empty_and_malformed_changesets() {
        assert_eq!(decode(&[]).unwrap(), vec![]);
        let good = capture(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a);",
            "INSERT INTO t VALUES (1, 'x');",
        );
        for bad in [&[0x42u8, 1, 2, 3][..], &good[..good.len() - 3]] {
            let err = decode(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        }
    }
}
