//! Keel's metadata inside the database: the applied position, the bookkeeping tables, and the
//! schema facts the write path reads.
//!
//! The applied position ([`wal::Applied`]: term, index and membership of the last applied
//! entry) lives in `_keel_meta`, one row, written by [`write_applied`] in the same transaction
//! as the entries it describes (see `db::apply`), and read back by [`read_applied`] from the
//! live database ([`crate::Db::applied`]) or from an image ([`crate::ImageSource`]), so a
//! position and the data it describes can never disagree. [`create_tables`] makes `_keel_meta`
//! and `_keel_requests` (the stored answers, see [`crate::answers`]) when a database is opened.
//!
//! The schema facts ([`user_tables`], [`nullable_key_columns`], [`read_sequences`]) are plain
//! reads of SQLite's catalog that speculation needs; they sit here, beside the other reads of
//! what the database holds about itself, so that `db` and `image` depend on this module and
//! never on each other for them.
//!
//! Not done here: deciding when the position moves (the state machine in `follower` owns the
//! order of applies), or hiding these tables from clients (`mask` and `policy`).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension as _, params};
use wal::{Applied, Lsn, Term};

use crate::answers;
use crate::error::{Error, Result};
use crate::schema::is_internal_table;

/// Keel's metadata table: the applied position, inside the database it describes.
const META_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS _keel_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    term INTEGER,
    idx INTEGER,
    membership TEXT
);
INSERT OR IGNORE INTO _keel_meta (id) VALUES (1);";

/// Creates Keel's bookkeeping tables if they do not exist: `_keel_meta` with its one row (no
/// position yet) and `_keel_requests`.
pub(crate) fn create_tables(conn: &Connection) -> Result<()> {
    conn.execute_batch(META_SCHEMA)?;
    conn.execute_batch(answers::SCHEMA)?;
    Ok(())
}

/// Reads the applied position from `_keel_meta`, `None` before the first apply.
pub(crate) fn read_applied(conn: &Connection) -> Result<Option<Applied>> {
    let row = conn
        .query_row(
            "SELECT term, idx, membership FROM _keel_meta WHERE id = 1 AND idx IS NOT NULL",
            [],
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get(2)?)),
        )
        .optional()?;
    Ok(row.map(|(term, index, membership)| Applied {
        term: term as Term,
        index: index as Lsn,
        membership,
    }))
}

/// Stores the applied position `(term, index)`, and `membership` if given (otherwise the
/// stored membership stays). Called inside the transaction that applies the entries.
pub(crate) fn write_applied(
    conn: &Connection,
    term: Term,
    index: Lsn,
    membership: Option<&str>,
) -> Result<()> {
    let (term, index) = (to_sql_int(term)?, to_sql_int(index)?);
    conn.prepare_cached(
        "INSERT INTO _keel_meta (id, term, idx, membership) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET term = excluded.term, idx = excluded.idx,
             membership = coalesce(excluded.membership, membership)",
    )?
    .execute(params![term, index, membership])?;
    Ok(())
}

/// Converts a log position to SQLite's signed integer.
fn to_sql_int(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Corrupt(format!("log position {value} exceeds 2^63")))
}

/// The lower-case names of all client tables.
pub(crate) fn user_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT lower(name) FROM sqlite_schema WHERE type = 'table'")?;
    let names: Vec<String> =
        stmt.query_map([], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(names.into_iter().filter(|t| !is_internal_table(t)).collect())
}

/// The PRIMARY KEY columns of a rowid table that may hold NULL (not declared NOT NULL); none for
/// WITHOUT ROWID tables (which enforce NOT NULL), tables without a key, views, and a key that
/// is the rowid (INTEGER PRIMARY KEY, never NULL). A key that is not the rowid has an index of
/// its own (origin `pk` in `pragma_index_list`); the rowid needs none, which is how it is told
/// apart, `INTEGER PRIMARY KEY DESC` (not the rowid) included.
pub(crate) fn nullable_key_columns(
    conn: &Connection,
    table: &str,
) -> rusqlite::Result<Vec<String>> {
    let without_rowid: Option<bool> = conn
        .prepare_cached(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name = ?1",
        )?
        .query_row([table], |row| row.get(0))
        .optional()?;
    if without_rowid != Some(false) {
        return Ok(Vec::new());
    }
    let key_index: bool = conn
        .prepare_cached("SELECT count(*) > 0 FROM pragma_index_list(?1) WHERE origin = 'pk'")?
        .query_row([table], |row| row.get(0))?;
    if !key_index {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT name FROM pragma_table_info(?1) WHERE pk > 0 AND \"notnull\" = 0",
    )?;
    stmt.query_map([table], |row| row.get(0))?.collect()
}

/// The contents of `sqlite_sequence` (AUTOINCREMENT counters), empty if it does not exist.
pub(crate) fn read_sequences(conn: &Connection) -> rusqlite::Result<BTreeMap<String, i64>> {
    let exists: bool = conn
        .prepare_cached(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'sqlite_sequence'",
        )?
        .query_row([], |row| row.get(0))?;
    if !exists {
        return Ok(BTreeMap::new());
    }
    let mut stmt = conn.prepare_cached("SELECT name, seq FROM sqlite_sequence")?;
    let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trip() {
        let conn = Connection::open_in_memory().unwrap();
        create_tables(&conn).unwrap();
        assert_eq!(read_applied(&conn).unwrap(), None);
        write_applied(&conn, 2, 7, Some("{\"voters\":[1]}")).unwrap();
        write_applied(&conn, 3, 9, None).unwrap();
        let expected = Applied { term: 3, index: 9, membership: Some("{\"voters\":[1]}".into()) };
        assert_eq!(read_applied(&conn).unwrap(), Some(expected));
    }

    #[test]
    fn position_beyond_sqlite_integers_is_corrupt() {
        let conn = Connection::open_in_memory().unwrap();
        create_tables(&conn).unwrap();
        assert!(matches!(write_applied(&conn, 1, u64::MAX, None), Err(Error::Corrupt(_))));
    }
}
