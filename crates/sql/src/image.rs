//! Database images: consistent single-file copies of the database, for Raft snapshots and
//! backups, written without the write connection; and their validation before install.
//!
//! [`ImageSource::write_image`] opens its own read-only connection to the current generation,
//! starts a read transaction (in WAL mode the writer keeps committing meanwhile) and copies
//! every page with SQLite's backup API inside it, so the copy is exactly the state at the
//! transaction's start. Pages are copied as they are, so rowids are preserved exactly; VACUUM
//! INTO would renumber the rowids of tables without an INTEGER PRIMARY KEY, which changesets
//! address by rowid. The copy is switched to rollback-journal (DELETE) mode, so it is one
//! self-contained file, and fsynced. Memory stays bounded by SQLite's page caches.
//!
//! The applied position returned is read from the copy itself, so it always matches the
//! contents, whatever the writer did during the copy.
//!
//! `check` is the cheap validation [`crate::Db::install`] does before taking over an image:
//! the SQLite header, rollback-journal mode, and a `_keel_meta` table with one row. It does not
//! read every page (that would cost as much as the copy it replaces).

use std::fs;
use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use wal::Applied;

use crate::error::{Error, Result};
use crate::generation::{Live, remove_database};
use crate::meta::read_applied;

/// How long the image connection waits for a lock (only a checkpoint can make it wait).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The first 16 bytes of every SQLite database file.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Writes consistent images of a [`crate::Db`]'s database without holding it. Made by
/// [`crate::Db::image_source`]; cheap to clone; follows installs (an image started before an
/// install is a copy of the old generation, whole).
#[derive(Clone)]
pub struct ImageSource {
    /// The Db's current generation.
    live: Arc<Live>,
}

impl std::fmt::Debug for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSource").field("generation", &self.live.number()).finish()
    }
}

impl ImageSource {
    /// An image source on the generations of `live`.
    pub(crate) fn new(live: Arc<Live>) -> ImageSource {
        ImageSource { live }
    }

    /// Writes a consistent image of the database to `dest` (replacing any file there and its
    /// side files), in rollback-journal mode, fsynced, and returns the applied position stored
    /// in the image (`None` before the first apply). Writes go on meanwhile. To make the name
    /// durable, the caller fsyncs `dest`'s directory (usually after renaming it into place).
    pub fn write_image(&self, dest: &Path) -> Result<Option<Applied>> {
        self.write_image_with(dest, || {})
    }

    /// [`ImageSource::write_image`], calling `during` once the image's read transaction has
    /// started and before any page is copied (tests commit writes there).
    fn write_image_with(&self, dest: &Path, during: impl FnOnce()) -> Result<Option<Applied>> {
        remove_database(dest)?;
        let source = {
            // Held while opening: see the invariants of `Live`.
            let generation = self.live.read();
            let source = Connection::open_with_flags(
                &generation.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            source.busy_timeout(BUSY_TIMEOUT)?;
            source.execute_batch("BEGIN")?;
            // The first read starts the read transaction: the image is this snapshot.
            source.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
            source
        };
        during();
        let mut target = Connection::open(dest)?;
        {
            let backup = Backup::new(&source, &mut target)?;
            match backup.step(-1)? {
                StepResult::Done => {}
                other => {
                    return Err(Error::Sqlite(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some(format!("image copy did not finish: {other:?}")),
                    )));
                }
            }
        }
        drop(source);
        // The copied header says WAL, like the source's; an image is one self-contained file.
        let mode: String = target.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("delete") {
            return Err(Error::InvalidInput(format!(
                "{}: cannot switch the image to rollback-journal mode (got {mode})",
                dest.display()
            )));
        }
        let applied = read_applied(&target)?;
        target.close().map_err(|(_, error)| error)?;
        fs::File::open(dest)?.sync_all()?;
        Ok(applied)
    }
}

/// Checks cheaply that `image` is a database image [`crate::Db::install`] can take over: a
/// SQLite file in rollback-journal mode with a `_keel_meta` table holding one row. Errors are
/// [`Error::InvalidInput`] naming the file, or [`Error::Io`] if it cannot be read.
pub(crate) fn check(image: &Path) -> Result<()> {
    crate::pagesum::register()?;
    let invalid = |what: &str| Error::InvalidInput(format!("{}: {what}", image.display()));
    let mut header = [0u8; 100];
    let mut file = fs::File::open(image).map_err(|error| {
        std::io::Error::new(error.kind(), format!("{}: {error}", image.display()))
    })?;
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(invalid("not a SQLite database (too short)"));
        }
        Err(error) => return Err(error.into()),
    }
    if &header[..16] != MAGIC {
        return Err(invalid("not a SQLite database"));
    }
    // File format version numbers: 1 = rollback journal, 2 = WAL.
    if header[18] != 1 || header[19] != 1 {
        return Err(invalid("not in rollback-journal mode, as database images must be"));
    }
    drop(file);
    let conn = Connection::open_with_flags(
        image,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|error| invalid(&format!("cannot open: {error}")))?;
    let has_meta: bool = conn
        .query_row(
            "SELECT count(*) = 1 FROM sqlite_schema WHERE type = 'table' AND name = '_keel_meta'",
            [],
            |row| row.get(0),
        )
        .map_err(|error| invalid(&format!("not a readable SQLite database: {error}")))?;
    if !has_meta {
        return Err(invalid("not a Keel database image (no _keel_meta table)"));
    }
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM _keel_meta WHERE id = 1", [], |row| row.get(0))
        .map_err(|error| invalid(&format!("unreadable _keel_meta: {error}")))?;
    if rows != 1 {
        return Err(invalid("not a Keel database image (_keel_meta has no row)"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Apply, Db, Statement, WriteRequest};

    /// Executes one statement on `db` as one write request, asserting it succeeded, and
    /// applies its record at `index`; returns the record.
    pub(crate) fn write(db: &mut Db, index: u64, sql: &str) -> wal::Record {
        let request = WriteRequest {
            statements: vec![Statement::new(sql)],
            transaction: false,
            rows: false,
            request_id: None,
            timeout: None,
        };
        let speculation = db.execute(&[request]).unwrap();
        assert!(!speculation.results[0].iter().any(|r| r.is_error()), "{:?}", speculation.results);
        let entry = Apply { term: 1, index, record: Some(&speculation.record), membership: None };
        db.apply(&[entry]).unwrap();
        speculation.record
    }

    #[test]
    fn writes_commit_while_an_image_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("db")).unwrap();
        write(&mut db, 1, "CREATE TABLE t (v)");
        write(&mut db, 2, "INSERT INTO t VALUES (1)");
        let before = db.dump().unwrap();
        let image = dir.path().join("image");
        let source = db.image_source();
        // The write commits after the image's snapshot began: the image does not have it, and
        // the position read from the image says so.
        let applied = source
            .write_image_with(&image, || {
                write(&mut db, 3, "INSERT INTO t VALUES (2)");
            })
            .unwrap();
        assert_eq!(applied.map(|a| a.index), Some(2));
        assert_eq!(crate::dump(&image).unwrap(), before);
        assert_ne!(db.dump().unwrap(), before);
        assert_eq!(db.applied().unwrap().map(|a| a.index), Some(3));
        check(&image).unwrap();
    }

    /// Two nodes that apply the same entries agree; a third that installs an image of one
    /// continues its chain, and the hash survives a reopen.
    #[test]
    fn the_apply_hash_follows_entries_images_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = Db::open(&dir.path().join("a")).unwrap();
        let mut follower = Db::open(&dir.path().join("b")).unwrap();
        // A node that applied nothing has no hash to report: index 0 is an entry too.
        assert_eq!(follower.position().unwrap(), wal::Position { index: 0, hash: None });
        write(&mut leader, 1, "CREATE TABLE t (v)");
        write(&mut leader, 2, "INSERT INTO t VALUES (1)");
        // Another node applying the same statements at the same indexes agrees.
        let mut replay = Db::open(&dir.path().join("c")).unwrap();
        write(&mut replay, 1, "CREATE TABLE t (v)");
        write(&mut replay, 2, "INSERT INTO t VALUES (1)");
        assert_eq!(replay.position().unwrap(), leader.position().unwrap());
        let blank = Apply { term: 2, index: 3, record: None, membership: None };
        leader.apply(&[blank]).unwrap();
        let position = leader.position().unwrap();
        assert_eq!(position.index, 3);
        assert_eq!(leader.recent_hashes().get(3), position.hash);
        assert!(leader.recent_hashes().get(2).is_some());

        let image = dir.path().join("image");
        leader.image_source().write_image(&image).unwrap();
        follower.install(&image).unwrap();
        assert_eq!(follower.position().unwrap(), position);
        assert_eq!(follower.recent_hashes().get(3), None, "entries before an install are not ours");
        let next = Apply { term: 2, index: 4, record: None, membership: None };
        follower.apply(&[next]).unwrap();
        leader.apply(&[next]).unwrap();
        assert_eq!(follower.position().unwrap(), leader.position().unwrap());
        drop(follower);
        let reopened = Db::open(&dir.path().join("b")).unwrap();
        assert_eq!(reopened.position().unwrap(), leader.position().unwrap());

        // The planted fault changes the hash and nothing else.
        replay.plant_apply_hash_skew();
        replay.apply(&[blank]).unwrap();
        let skewed = replay.position().unwrap();
        assert_eq!(skewed.index, 3);
        assert_ne!(skewed.hash, position.hash);
        assert_eq!(skewed.hash.unwrap().origin, 0);
    }

    #[test]
    fn bad_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let error = |path: &Path| check(path).unwrap_err().to_string();
        assert!(error(&path).contains("No such file"), "{}", error(&path));
        fs::write(&path, b"short").unwrap();
        assert!(error(&path).contains("too short"));
        fs::write(&path, [7u8; 4096]).unwrap();
        assert!(error(&path).ends_with("not a SQLite database"));
        fs::remove_file(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (a)").unwrap();
        drop(conn);
        assert!(error(&path).contains("no _keel_meta"));
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE _keel_meta (id)").unwrap();
        drop(conn);
        assert!(error(&path).contains("has no row"));
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("INSERT INTO _keel_meta VALUES (1); PRAGMA journal_mode = WAL").unwrap();
        drop(conn);
        assert!(error(&path).contains("rollback-journal"));
    }
}
