//! Keel's metadata inside the database: the applied position, the bookkeeping tables, and the
//! schema facts the write path reads.
//!
//! The applied position ([`wal::Applied`]: term, index and membership of the last applied
//! entry) lives in `_keel_meta`, one row, written by [`write_applied`] in the same transaction
//! as the entries it describes (see `db::apply`), and read back by [`read_applied`] from the
//! live database ([`crate::Db::applied`]) or from an image ([`crate::ImageSource`]), so a
//! position and the data it describes can never disagree. The same row holds the apply hash
//! after that entry ([`crate::chain`]): [`write_applied`] folds every entry it records into it,
//! from the entry's log bytes, so whatever path records a position advances the hash the same
//! way; [`read_chain`] reads it back. [`create_tables`] makes `_keel_meta` and `_keel_requests`
//! (the stored answers, see [`crate::answers`]) when a database is opened, and adds the hash's
//! columns to a `_keel_meta` made before they existed.
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
use wal::{Applied, ApplyHash, Lsn, Record, Term};

use crate::answers;
use crate::chain;
use crate::error::{Error, Result};
use crate::schema::is_internal_table;
use crate::schema::literal;

/// Keel's metadata table: the applied position, inside the database it describes.
const META_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS _keel_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    term INTEGER,
    idx INTEGER,
    membership TEXT,
    apply_hash BLOB,
    apply_origin INTEGER
);
INSERT OR IGNORE INTO _keel_meta (id) VALUES (1);";

/// The apply hash's columns, added to a `_keel_meta` created before they existed (a node
/// upgraded in place, or a snapshot image from an older leader).
const HASH_COLUMNS: &str = "ALTER TABLE _keel_meta ADD COLUMN apply_hash BLOB;
ALTER TABLE _keel_meta ADD COLUMN apply_origin INTEGER;";

/// One committed log entry, as [`crate::Db::apply`] applies it and `meta::write_applied` records
/// it.
#[derive(Clone, Copy, Debug)]
pub struct Apply<'a> {
    /// The entry's term.
    pub term: Term,
    /// The entry's index.
    pub index: Lsn,
    /// The record of a normal entry; `None` for blank and membership entries.
    pub record: Option<&'a Record>,
    /// The serialized membership of a membership entry, stored as the new membership.
    pub membership: Option<&'a str>,
}

/// Creates Keel's bookkeeping tables if they do not exist: `_keel_meta` with its one row (no
/// position yet) and `_keel_requests`; adds the apply hash's columns if they are missing.
pub(crate) fn create_tables(conn: &Connection) -> Result<()> {
    conn.execute_batch(META_SCHEMA)?;
    conn.execute_batch(answers::SCHEMA)?;
    let has_hash: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('_keel_meta') WHERE name = 'apply_hash'",
        [],
        |row| row.get(0),
    )?;
    if !has_hash {
        conn.execute_batch(HASH_COLUMNS)?;
    }
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

/// What [`write_applied`] recorded: the apply hash after the entries, and each entry's.
#[derive(Debug)]
pub(crate) struct Recorded {
    /// The hash after the last entry (`None`: the database has no chain yet).
    pub(crate) chain: Option<ApplyHash>,
    /// `(index, hash after that entry)` for each entry with a hash, ascending.
    pub(crate) hashes: Vec<(Lsn, ApplyHash)>,
}

/// Stores the applied position after `entries` (the last one's term and index, and the last
/// membership among them if any; otherwise the stored membership stays) and the apply hash
/// after them: `chain` (the hash before the first of them) advanced over each entry
/// ([`chain::advance`]). Called inside the transaction that applies the entries. Returns the
/// new hash and each entry's hash, for [`chain::Recent`] once the transaction commits.
pub(crate) fn write_applied(
    conn: &Connection,
    chain: Option<ApplyHash>,
    entries: &[Apply<'_>],
) -> Result<Recorded> {
    let Some(last) = entries.last() else { return Ok(Recorded { chain, hashes: Vec::new() }) };
    let mut hashes = Vec::with_capacity(entries.len());
    let mut hash = chain;
    for entry in entries {
        hash = chain::advance(hash, entry);
        hashes.extend(hash.map(|h| (entry.index, h)));
    }
    let membership = entries.iter().rev().find_map(|e| e.membership);
    let (term, index) = (to_sql_int(last.term)?, to_sql_int(last.index)?);
    let origin = hash.map(|h| to_sql_int(h.origin)).transpose()?;
    let digest = hash.as_ref().map(|h| &h.digest[..]);
    conn.prepare_cached(
        "INSERT INTO _keel_meta (id, term, idx, membership, apply_hash, apply_origin)
             VALUES (1, ?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET term = excluded.term, idx = excluded.idx,
             membership = coalesce(excluded.membership, membership),
             apply_hash = excluded.apply_hash, apply_origin = excluded.apply_origin",
    )?
    .execute(params![term, index, membership, digest, origin])?;
    Ok(Recorded { chain: hash, hashes })
}

/// Reads the apply hash after the stored position: zero bytes of origin 0 before the first
/// apply (an empty database), `None` for a database that has a position but no hash (it
/// predates the hash, see [`crate::chain`]).
pub(crate) fn read_chain(conn: &Connection) -> Result<Option<ApplyHash>> {
    let (index, digest, origin): (Option<i64>, Option<Vec<u8>>, Option<i64>) = conn.query_row(
        "SELECT idx, apply_hash, apply_origin FROM _keel_meta WHERE id = 1",
        [],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    match (index, digest, origin) {
        (None, _, _) => Ok(Some(ApplyHash { origin: 0, digest: chain::ZERO })),
        (Some(_), Some(digest), Some(origin)) => {
            let digest = <[u8; 32]>::try_from(digest.as_slice()).map_err(|_| {
                Error::Corrupt(format!("_keel_meta.apply_hash has {} bytes, not 32", digest.len()))
            })?;
            Ok(Some(ApplyHash { origin: origin as Lsn, digest }))
        }
        (Some(_), _, _) => Ok(None),
    }
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

/// The contents of `sqlite_sequence` (AUTOINCREMENT counters), empty if it does not exist:
/// each name's seq values in rowid order, both as SQL literals. Clients may write any value of
/// any type there, as SQLite allows, so nothing is assumed about types or uniqueness.
pub(crate) fn read_sequences(conn: &Connection) -> rusqlite::Result<Sequences> {
    let exists: bool = conn
        .prepare_cached(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'sqlite_sequence'",
        )?
        .query_row([], |row| row.get(0))?;
    let mut sequences = Sequences::new();
    if !exists {
        return Ok(sequences);
    }
    let mut stmt = conn.prepare_cached("SELECT name, seq FROM sqlite_sequence ORDER BY rowid")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let name = literal(row.get_ref(0)?);
        sequences.entry(name).or_default().push(literal(row.get_ref(1)?));
    }
    Ok(sequences)
}

/// `sqlite_sequence` by name: see [`read_sequences`].
pub(crate) type Sequences = BTreeMap<String, Vec<String>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(term: Term, index: Lsn) -> Apply<'static> {
        Apply { term, index, record: None, membership: None }
    }

    #[test]
    fn position_round_trip() {
        let conn = Connection::open_in_memory().unwrap();
        create_tables(&conn).unwrap();
        assert_eq!(read_applied(&conn).unwrap(), None);
        let chain = read_chain(&conn).unwrap();
        assert_eq!(chain, Some(ApplyHash { origin: 0, digest: chain::ZERO }));
        let first = [Apply { membership: Some("{\"voters\":[1]}"), ..blank(2, 7) }];
        let Recorded { chain, hashes } = write_applied(&conn, chain, &first).unwrap();
        assert_eq!(hashes.len(), 1);
        let Recorded { chain, hashes } =
            write_applied(&conn, chain, &[blank(3, 8), blank(3, 9)]).unwrap();
        assert_eq!(hashes.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [8, 9]);
        assert_eq!(Some(hashes[1].1), chain);
        let expected = Applied { term: 3, index: 9, membership: Some("{\"voters\":[1]}".into()) };
        assert_eq!(read_applied(&conn).unwrap(), Some(expected));
        assert_eq!(read_chain(&conn).unwrap(), chain);
    }

    /// A `_keel_meta` from before the apply hash gets its columns, and no chain until a blank
    /// entry.
    #[test]
    fn a_database_that_predates_the_hash_starts_at_a_blank_entry() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE _keel_meta (id INTEGER PRIMARY KEY CHECK (id = 1), term INTEGER,
                 idx INTEGER, membership TEXT);
             INSERT INTO _keel_meta VALUES (1, 1, 40, NULL);",
        )
        .unwrap();
        create_tables(&conn).unwrap();
        create_tables(&conn).unwrap();
        assert_eq!(read_chain(&conn).unwrap(), None);
        let record = Record::default();
        let normal = Apply { record: Some(&record), ..blank(1, 41) };
        let chain = write_applied(&conn, None, &[normal]).unwrap().chain;
        assert_eq!((chain, read_chain(&conn).unwrap()), (None, None));
        let chain = write_applied(&conn, None, &[blank(2, 42)]).unwrap().chain;
        assert_eq!(chain.map(|c| c.origin), Some(42));
        assert_eq!(read_chain(&conn).unwrap(), chain);
    }

    #[test]
    fn position_beyond_sqlite_integers_is_corrupt() {
        let conn = Connection::open_in_memory().unwrap();
        create_tables(&conn).unwrap();
        let entry = blank(1, u64::MAX);
        assert!(matches!(write_applied(&conn, None, &[entry]), Err(Error::Corrupt(_))));
    }
}
