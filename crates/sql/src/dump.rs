//! A deterministic text dump of a database, for comparing replicas in tests.
//!
//! [`dump`] (a file) and [`crate::Db::dump`] (the live client connection) list the schema (every
//! object of `sqlite_schema`, sorted by type and name), then every row of every table with its
//! rowid (tables WITHOUT ROWID are sorted by all columns), then `sqlite_sequence`. Two replicas
//! that applied the same records must produce the same dump, byte for byte. Values are printed
//! as SQL literals; REAL uses the shortest text that reads back exactly, so a difference in the
//! last bit shows.
//!
//! Keel's own `_keel_*` tables and their indexes are left out (the applied position is read
//! with `Db::applied`), and so are virtual tables, whose contents live in their shadow tables,
//! which are dumped. This is a test and debugging aid, not a backup format (the rqlite-style
//! `.dump` backup is [`crate::backup::dump_sql`]).

use std::fmt::Write as _;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::error::Result;
use crate::schema::literal;

/// Dumps the database file at `path` (opened read-only).
pub fn dump(path: &Path) -> Result<String> {
    crate::pagesum::register()?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    dump_connection(&conn)
}

/// Dumps the database behind `conn`, in one read transaction.
pub(crate) fn dump_connection(conn: &Connection) -> Result<String> {
    let own_transaction = conn.is_autocommit();
    if own_transaction {
        conn.execute_batch("BEGIN")?;
    }
    let result = dump_in_transaction(conn);
    if own_transaction {
        conn.execute_batch("COMMIT")?;
    }
    result
}

/// The body of [`dump_connection`].
fn dump_in_transaction(conn: &Connection) -> Result<String> {
    let mut out = String::new();
    let mut stmt = conn.prepare(
        "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_schema
         WHERE name NOT LIKE '\\_keel\\_%' ESCAPE '\\' AND tbl_name NOT LIKE '\\_keel\\_%' ESCAPE '\\'
         ORDER BY type, name",
    )?;
    let objects: Vec<(String, String, String, String)> = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    out.push_str("schema:\n");
    for (kind, name, table, sql) in &objects {
        let on =
            if kind == "table" || kind == "view" { String::new() } else { format!(" on {table}") };
        writeln!(
            out,
            "  {kind} {name}{on}: {}",
            sql.split_whitespace().collect::<Vec<_>>().join(" ")
        )
        .ok();
    }
    let tables: Vec<(String, bool)> = conn
        .prepare(
            "SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type IN ('table', 'shadow')
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_keel\\_%' ESCAPE '\\'
             ORDER BY name",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let stats: Vec<(String, bool)> = objects
        .iter()
        .filter(|(kind, name, ..)| kind == "table" && name.starts_with("sqlite_stat"))
        .map(|(_, name, ..)| (name.clone(), false))
        .collect();
    for (table, without_rowid) in tables.iter().chain(&stats) {
        writeln!(out, "{table}:").ok();
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        let columns: i64 =
            conn.query_row("SELECT count(*) FROM pragma_table_info(?1)", [table], |row| {
                row.get(0)
            })?;
        let sql = if *without_rowid {
            let order: Vec<String> = (1..=columns).map(|i| i.to_string()).collect();
            format!("SELECT * FROM {quoted} ORDER BY {}", order.join(", "))
        } else {
            format!("SELECT _rowid_, * FROM {quoted} ORDER BY _rowid_")
        };
        let mut stmt = conn.prepare(&sql)?;
        let width = stmt.column_count();
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(literal(row.get_ref(i)?));
            }
            if *without_rowid {
                writeln!(out, "  {}", values.join(", ")).ok();
            } else {
                writeln!(out, "  rowid {}: {}", values[0], values[1..].join(", ")).ok();
            }
        }
    }
    if objects.iter().any(|(kind, name, ..)| kind == "table" && name == "sqlite_sequence") {
        out.push_str("sqlite_sequence:\n");
        let mut stmt = conn.prepare("SELECT name, seq FROM sqlite_sequence ORDER BY name")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            writeln!(out, "  {} = {}", literal(row.get_ref(0)?), literal(row.get_ref(1)?)).ok();
        }
    }
    Ok(out)
}
