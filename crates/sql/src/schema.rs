//! Reading a database's user schema, for the code that copies databases as SQL (`backup`,
//! `load`): which tables hold user rows, in which order to copy them, how to name their rowids,
//! and the objects to create after the rows.
//!
//! Internal tables are SQLite's (`sqlite_*`: the schema, `sqlite_sequence`, statistics) and
//! Keel's (`_keel_*`); shadow tables of virtual tables (FTS) are left to their virtual table,
//! whose rows are copied through it. Tables are ordered parents before children by their
//! foreign keys, so that rows load with foreign keys enforced (as they are when `Db::execute`
//! runs them with `Limits::foreign_keys` on); tables in a foreign-key cycle keep their schema
//! order.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _};

use crate::error::{Error, Result};

/// Whether `table` belongs to SQLite or Keel rather than to the client.
pub(crate) fn is_internal_table(table: &str) -> bool {
    let lower = table.to_ascii_lowercase();
    lower.starts_with("sqlite_") || lower.starts_with("_keel_")
}

/// Quotes an SQL identifier.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Opens a database file given by a user (a load, a backup image) and checks that SQLite can
/// read it; otherwise [`Error::InvalidInput`] naming the file.
pub(crate) fn open_file(path: &Path, read_only: bool) -> Result<Connection> {
    crate::pagesum::register()?;
    let invalid = |what: String| Error::InvalidInput(format!("{}: {what}", path.display()));
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    // Read-only, the file is a user's (a load) or an image just written and verified: its pages
    // are read without checking their checksums (see `pagesum::unchecked_vfs`).
    let opened = if read_only {
        Connection::open_with_flags_and_vfs(path, flags, crate::pagesum::unchecked_vfs()?)
    } else {
        Connection::open_with_flags(path, flags)
    };
    let conn = opened.map_err(|error| invalid(format!("cannot open: {error}")))?;
    match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
        Ok(()) => Ok(conn),
        Err(error) if error.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => {
            Err(invalid("not a SQLite database".to_string()))
        }
        Err(error) => Err(invalid(format!("cannot read: {error}"))),
    }
}

/// How a table stores its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An ordinary rowid table.
    Rowid,
    /// A `WITHOUT ROWID` table, ordered by its primary key.
    WithoutRowid,
    /// A virtual table (FTS); rows are copied through it, with their rowids.
    Virtual,
}

/// A user table as copying it needs it.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    /// Its name.
    pub(crate) name: String,
    /// Its `CREATE` statement, as stored in `sqlite_schema`.
    pub(crate) sql: String,
    /// The columns an INSERT gives values for, in order (generated columns excluded).
    pub(crate) columns: Vec<String>,
    /// The name under which to copy the rowid explicitly (`rowid`, `_rowid_` or `oid`,
    /// whichever no column hides), so rows keep their rowids; `None` when the rowid is a
    /// column already (INTEGER PRIMARY KEY), there is none (WITHOUT ROWID), or every name is
    /// taken by a column.
    pub(crate) rowid: Option<&'static str>,
    /// Column expressions the rows are ordered by, uniquely (rowid or primary key); empty if
    /// no such order can be named.
    pub(crate) key: Vec<String>,
}

impl Table {
    /// `INSERT INTO "t"("rowid","a",…) VALUES(` with the explicit column list only when the
    /// rowid is copied explicitly (rqlite's and sqlite3's dump form otherwise); also the
    /// parameterised form's prefix.
    pub(crate) fn insert_prefix(&self) -> String {
        let mut sql = format!("INSERT INTO {}", quote_identifier(&self.name));
        if let Some(rowid) = self.rowid {
            sql.push('(');
            sql.push_str(rowid);
            for column in &self.columns {
                sql.push(',');
                sql.push_str(&quote_identifier(column));
            }
            sql.push(')');
        }
        sql.push_str(" VALUES(");
        sql
    }

    /// The number of values one row's INSERT takes.
    pub(crate) fn width(&self) -> usize {
        self.columns.len() + usize::from(self.rowid.is_some())
    }

    /// The expressions selecting one row's INSERT values, in order.
    pub(crate) fn value_expressions(&self) -> Vec<String> {
        self.rowid
            .map(str::to_string)
            .into_iter()
            .chain(self.columns.iter().map(|c| quote_identifier(c)))
            .collect()
    }
}

/// The user tables of the database behind `conn` (see the module docs), parents before
/// children.
pub(crate) fn user_tables(conn: &Connection) -> Result<Vec<Table>> {
    let mut stmt = conn.prepare(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND sql IS NOT NULL
         ORDER BY rowid",
    )?;
    let listed: Vec<(String, String)> = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut tables = Vec::new();
    for (name, sql) in listed {
        if is_internal_table(&name) {
            continue;
        }
        let listed: Option<(String, bool)> = conn
            .query_row(
                "SELECT type, wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                [&name],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let kind = match listed {
            Some((kind, _)) if kind == "shadow" => continue,
            Some((kind, _)) if kind == "virtual" => Kind::Virtual,
            Some((_, true)) => Kind::WithoutRowid,
            _ => Kind::Rowid,
        };
        tables.push(describe(conn, name, sql, kind)?);
    }
    order_by_foreign_keys(conn, tables)
}

/// Describes one table.
fn describe(conn: &Connection, name: String, sql: String, kind: Kind) -> Result<Table> {
    let mut stmt = conn.prepare("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")?;
    let info: Vec<(String, i64)> = stmt
        .query_map([&name], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare("SELECT lower(name) FROM pragma_table_xinfo(?1)")?;
    let all_columns: BTreeSet<String> =
        stmt.query_map([&name], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
    let columns: Vec<String> = info.iter().map(|(column, _)| column.clone()).collect();
    let mut primary_key: Vec<(i64, &String)> =
        info.iter().filter(|(_, pk)| *pk > 0).map(|(column, pk)| (*pk, column)).collect();
    primary_key.sort();
    let free_rowid = ["rowid", "_rowid_", "oid"].into_iter().find(|n| !all_columns.contains(*n));
    let (rowid, key) = match kind {
        Kind::WithoutRowid => {
            (None, primary_key.iter().map(|(_, column)| quote_identifier(column)).collect())
        }
        Kind::Virtual => (free_rowid, free_rowid.map(str::to_string).into_iter().collect()),
        Kind::Rowid => {
            // An INTEGER PRIMARY KEY is the rowid itself and has no index; any other primary
            // key (including the INTEGER PRIMARY KEY DESC quirk) has an automatic one.
            let has_key_index: bool = conn.query_row(
                "SELECT count(*) > 0 FROM pragma_index_list(?1) WHERE origin = 'pk'",
                [&name],
                |row| row.get(0),
            )?;
            if primary_key.len() == 1 && !has_key_index {
                (None, vec![quote_identifier(primary_key[0].1)])
            } else {
                (free_rowid, free_rowid.map(str::to_string).into_iter().collect())
            }
        }
    };
    Ok(Table { name, sql, columns, rowid, key })
}

/// Orders tables so that every table comes after the tables its foreign keys reference
/// (ignoring self-references); tables in a cycle keep their relative order at the end.
fn order_by_foreign_keys(conn: &Connection, tables: Vec<Table>) -> Result<Vec<Table>> {
    let index: HashMap<String, usize> =
        tables.iter().enumerate().map(|(i, t)| (t.name.to_ascii_lowercase(), i)).collect();
    let mut parents: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); tables.len()];
    let mut stmt =
        conn.prepare("SELECT DISTINCT lower(\"table\") FROM pragma_foreign_key_list(?1)")?;
    for (i, table) in tables.iter().enumerate() {
        let referenced: Vec<String> =
            stmt.query_map([&table.name], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
        parents[i] = referenced.iter().filter_map(|name| index.get(name)).copied().collect();
        parents[i].remove(&i);
    }
    let mut placed = vec![false; tables.len()];
    let mut order = Vec::with_capacity(tables.len());
    loop {
        let ready: Vec<usize> = (0..tables.len())
            .filter(|&i| !placed[i] && parents[i].iter().all(|&p| placed[p]))
            .collect();
        if ready.is_empty() {
            break;
        }
        for i in ready {
            placed[i] = true;
            order.push(i);
        }
    }
    order.extend((0..tables.len()).filter(|&i| !placed[i]));
    let mut tables: Vec<Option<Table>> = tables.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| tables[i].take()).collect())
}

/// The `CREATE` statements of the user's indexes, triggers and views, in creation order, for
/// the tables in `tables` (lower-case names) or all; those on internal or shadow tables and
/// automatic indexes are left out.
pub(crate) fn late_objects(
    conn: &Connection,
    user: &[Table],
    tables: Option<&BTreeSet<String>>,
) -> Result<Vec<String>> {
    let copied: BTreeSet<String> = user.iter().map(|t| t.name.to_ascii_lowercase()).collect();
    let mut stmt = conn.prepare(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema
         WHERE type IN ('index', 'trigger', 'view') AND sql IS NOT NULL ORDER BY rowid",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get(2)?, row.get(3)?))
    })?;
    let mut objects = Vec::new();
    for row in rows {
        let (kind, name, table, sql): (String, String, String, String) = row?;
        let table = table.to_ascii_lowercase();
        if is_internal_table(&name) || is_internal_table(&table) {
            continue;
        }
        // Views stand alone; a trigger may sit on a view; indexes need a copied table.
        if kind == "index" && !copied.contains(&table) {
            continue;
        }
        if tables.is_some_and(|wanted| !wanted.contains(&table)) {
            continue;
        }
        objects.push(sql);
    }
    Ok(objects)
}

/// Appends a value as an SQL literal the way sqlite3's `.dump` writes it: integers, reals
/// with enough digits to read back exactly (infinities as `9.0e+999`), text in single quotes
/// with quotes doubled (bytes as stored), blobs as `X'…'`, `NULL`.
pub(crate) fn write_literal(out: &mut Vec<u8>, value: ValueRef<'_>) {
    use std::io::Write as _;
    match value {
        ValueRef::Null => out.extend_from_slice(b"NULL"),
        ValueRef::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        ValueRef::Real(f) if f.is_infinite() => {
            out.extend_from_slice(if f > 0.0 { b"9.0e+999" } else { b"-9.0e+999" });
        }
        // Rust's shortest round-trip form always has a '.' or an exponent, so SQLite reads
        // it as REAL again.
        ValueRef::Real(f) => {
            let _ = write!(out, "{f:?}");
        }
        ValueRef::Text(text) => {
            out.push(b'\'');
            for &byte in text {
                if byte == b'\'' {
                    out.push(b'\'');
                }
                out.push(byte);
            }
            out.push(b'\'');
        }
        ValueRef::Blob(blob) => {
            out.extend_from_slice(b"X'");
            for byte in blob {
                let _ = write!(out, "{byte:02X}");
            }
            out.push(b'\'');
        }
    }
}

/// [`write_literal`] as a string. Text that is not UTF-8 becomes `CAST(X'…' AS TEXT)`, which
/// SQLite reads back as the same bytes.
pub(crate) fn literal(value: ValueRef<'_>) -> String {
    let mut out = Vec::new();
    write_literal(&mut out, value);
    String::from_utf8(out).unwrap_or_else(|_| {
        let mut out = b"CAST(".to_vec();
        write_literal(&mut out, ValueRef::Blob(value.as_bytes().unwrap_or_default()));
        out.extend_from_slice(b" AS TEXT)");
        String::from_utf8(out).expect("a blob literal is ASCII")
    })
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    #[test_case(ValueRef::Null, "NULL")]
    #[test_case(ValueRef::Integer(-9_223_372_036_854_775_808), "-9223372036854775808")]
    #[test_case(ValueRef::Real(1.0), "1.0")]
    #[test_case(ValueRef::Real(0.1), "0.1")]
    #[test_case(ValueRef::Real(1e300), "1e300")]
    #[test_case(ValueRef::Real(-2.5e-8), "-2.5e-8")]
    #[test_case(ValueRef::Real(f64::INFINITY), "9.0e+999")]
    #[test_case(ValueRef::Real(f64::NEG_INFINITY), "-9.0e+999")]
    #[test_case(ValueRef::Text(b"it's"), "'it''s'")]
    #[test_case(ValueRef::Text(b"a\nb"), "'a\nb'")]
    #[test_case(ValueRef::Blob(&[0, 0xab, 0x10]), "X'00AB10'")]
    #[test_case(ValueRef::Blob(&[]), "X''")]
    fn literals(value: ValueRef<'_>, expect: &str) {
        let mut out = Vec::new();
        write_literal(&mut out, value);
        assert_eq!(String::from_utf8(out).unwrap(), expect);
        // SQLite reads the literal back as the same value.
        let conn = Connection::open_in_memory().unwrap();
        let back: rusqlite::types::Value =
            conn.query_row(&format!("SELECT {expect}"), [], |row| row.get(0)).unwrap();
        assert_eq!(ValueRef::from(&back), value);
        assert_eq!(literal(value), expect);
    }

    #[test]
    fn text_that_is_not_utf8() {
        let value = ValueRef::Text(b"a\xff'");
        let text = literal(value);
        assert_eq!(text, "CAST(X'61FF27' AS TEXT)");
        let conn = Connection::open_in_memory().unwrap();
        let back = conn
            .query_row(&format!("SELECT {text}"), [], |row| {
                Ok(row.get_ref(0)?.as_bytes()?.to_vec())
            })
            .unwrap();
        assert_eq!(back, b"a\xff'");
        let kind: String =
            conn.query_row(&format!("SELECT typeof({text})"), [], |row| row.get(0)).unwrap();
        assert_eq!(kind, "text");
    }

    #[test]
    fn tables_and_order() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE child (id INTEGER PRIMARY KEY, p REFERENCES parent (id), s REFERENCES child (id));
             CREATE TABLE parent (id INTEGER PRIMARY KEY DESC, v);
             CREATE TABLE plain (a, b AS (a * 2), rowid);
             CREATE TABLE keyed (k TEXT, n INT, v, PRIMARY KEY (n, k)) WITHOUT ROWID;
             CREATE TABLE _keel_x (a);
             CREATE VIRTUAL TABLE ft USING fts5 (body);
             CREATE INDEX child_p ON child (p);
             CREATE VIEW v AS SELECT * FROM plain;
             CREATE TRIGGER tr AFTER INSERT ON plain BEGIN SELECT 1; END;
             CREATE INDEX k ON _keel_x (a);",
        )
        .unwrap();
        let tables = user_tables(&conn).unwrap();
        let summary: Vec<String> = tables
            .iter()
            .map(|t| format!("{} {:?} {:?} {:?}", t.name, t.columns, t.rowid, t.key))
            .collect();
        assert_eq!(
            summary,
            vec![
                r#"parent ["id", "v"] Some("rowid") ["rowid"]"#,
                r#"plain ["a", "rowid"] Some("_rowid_") ["_rowid_"]"#,
                r#"keyed ["k", "n", "v"] None ["\"n\"", "\"k\""]"#,
                r#"ft ["body"] Some("rowid") ["rowid"]"#,
                r#"child ["id", "p", "s"] None ["\"id\""]"#,
            ]
        );
        assert_eq!(
            tables[1].insert_prefix(),
            r#"INSERT INTO "plain"(_rowid_,"a","rowid") VALUES("#
        );
        assert_eq!(tables[4].insert_prefix(), r#"INSERT INTO "child" VALUES("#);
        let late = late_objects(&conn, &tables, None).unwrap();
        assert_eq!(late.len(), 3, "{late:?}");
        let only_child = BTreeSet::from(["child".to_string()]);
        assert_eq!(late_objects(&conn, &tables, Some(&only_child)).unwrap().len(), 1);
    }
}
