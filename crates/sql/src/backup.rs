//! User backups made from a database image: the SQLite file without Keel's tables, or a text
//! dump in sqlite3's `.dump` format as rqlite writes it.
//!
//! `bin` serves a backup by writing an image ([`crate::ImageSource::write_image`]) to a
//! private temp file, then either [`strip_internal`] (optionally [`vacuum`]) and streams the
//! file (a user opens it with `sqlite3`), or [`dump_sql`] (streaming text). Neither holds the write connection, and
//! both use bounded memory: the file is modified in place, the dump goes out one row at a time.
//!
//! The dump is rqlite's: `PRAGMA foreign_keys=OFF;`, `BEGIN TRANSACTION;`, for each table its
//! `CREATE` statement followed by `INSERT INTO "t" VALUES(…);` per row, then
//! `DELETE FROM "sqlite_sequence";` and one `INSERT INTO "sqlite_sequence" VALUES(…);` per
//! AUTOINCREMENT counter (full dumps only), then indexes, triggers and views, then `COMMIT;`.
//! Values are SQL literals as sqlite3 writes them (see `schema::write_literal`). It differs
//! from rqlite's in ways that keep it loadable, by sqlite3 and by Keel's own
//! [`crate::load::TextLoad`], with the same rows:
//!
//! * A rowid table whose rowid is not a column (no INTEGER PRIMARY KEY) is written with an
//!   explicit rowid, `INSERT INTO "t"(rowid,"a","b") VALUES(…)`, like sqlite3's
//!   `.dump --preserve-rowids`, so rows keep their rowids.
//! * Tables come parents first by foreign key (rqlite sorts by name), and `sqlite_sequence`
//!   after all of them, as sqlite3 does (it exists only once an AUTOINCREMENT table does).
//! * Statistics (`sqlite_stat1`) are left out; run ANALYZE after loading.
//! * A virtual table (FTS) is written as its `CREATE VIRTUAL TABLE` and its rows, with rowids;
//!   its shadow tables are not (loading the rows rebuilds them).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use crate::error::Result;
use crate::schema::{self, quote_identifier, write_literal};

/// Drops every `_keel_*` table of the image at `image` (a private copy: this changes it), so
/// that it holds only user data. Other tables are untouched, rowids included.
pub fn strip_internal(image: &Path) -> Result<()> {
    let conn = schema::open_file(image, false)?;
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE '\\_keel\\_%' ESCAPE '\\'",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut sql = String::from("BEGIN IMMEDIATE;");
    for name in names {
        sql.push_str(&format!("DROP TABLE {};", quote_identifier(&name)));
    }
    sql.push_str("COMMIT;");
    conn.execute_batch(&sql)?;
    Ok(())
}

/// Rebuilds the image at `image` (a private copy) with VACUUM, so it has no free pages: the
/// smallest file for a user backup. VACUUM may renumber the rowids of tables without an
/// INTEGER PRIMARY KEY, which is harmless in a backup (never in a Raft snapshot). Needs free
/// disk space for a temporary copy, not memory.
pub fn vacuum(image: &Path) -> Result<()> {
    let conn = schema::open_file(image, false)?;
    conn.execute_batch("VACUUM")?;
    Ok(())
}

/// Writes the database file at `image` to `out` as SQL text in sqlite3's `.dump` format (see
/// the module docs), all tables or only those named in `tables` (case-insensitively, with
/// their indexes and triggers; views when named themselves). Rows are read and written one at
/// a time, all in one read transaction. Keel's `_keel_*` tables and SQLite's internal ones are
/// left out.
pub fn dump_sql(image: &Path, tables: Option<&[String]>, out: &mut dyn Write) -> Result<()> {
    let conn = schema::open_file(image, true)?;
    conn.execute_batch("BEGIN")?;
    let wanted: Option<BTreeSet<String>> =
        tables.map(|names| names.iter().map(|name| name.to_ascii_lowercase()).collect());
    let user = schema::user_tables(&conn)?;
    out.write_all(b"PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n")?;
    let mut line = Vec::new();
    for table in &user {
        if wanted.as_ref().is_some_and(|w| !w.contains(&table.name.to_ascii_lowercase())) {
            continue;
        }
        out.write_all(table.sql.as_bytes())?;
        out.write_all(b";\n")?;
        let prefix = table.insert_prefix();
        let select = format!(
            "SELECT {} FROM {}",
            table.value_expressions().join(","),
            quote_identifier(&table.name)
        );
        let mut stmt = conn.prepare(&select)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            line.clear();
            line.extend_from_slice(prefix.as_bytes());
            for i in 0..table.width() {
                if i > 0 {
                    line.push(b',');
                }
                write_literal(&mut line, row.get_ref(i)?);
            }
            line.extend_from_slice(b");\n");
            out.write_all(&line)?;
        }
    }
    if wanted.is_none() {
        let sequence: bool = conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'sqlite_sequence'",
            [],
            |row| row.get(0),
        )?;
        if sequence {
            out.write_all(b"DELETE FROM \"sqlite_sequence\";\n")?;
            let mut stmt = conn.prepare("SELECT name, seq FROM sqlite_sequence ORDER BY rowid")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                line.clear();
                line.extend_from_slice(b"INSERT INTO \"sqlite_sequence\" VALUES(");
                write_literal(&mut line, row.get_ref(0)?);
                line.push(b',');
                write_literal(&mut line, row.get_ref(1)?);
                line.extend_from_slice(b");\n");
                out.write_all(&line)?;
            }
        }
    }
    for sql in schema::late_objects(&conn, &user, wanted.as_ref())? {
        out.write_all(sql.as_bytes())?;
        out.write_all(b";\n")?;
    }
    out.write_all(b"COMMIT;\n")?;
    conn.execute_batch("COMMIT")?;
    Ok(())
}
