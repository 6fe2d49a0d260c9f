//! The database directory: numbered generations of the database file and the `CURRENT`
//! pointer naming the live one.
//!
//! A snapshot received from the leader is a complete database file. Copying it page by page
//! into the live file would cost as much as the transfer again (and hold the write connection
//! all along); instead [`crate::Db::install`] renames it into the directory as the next
//! generation and switches `CURRENT` to it, which costs a few fsyncs whatever the size.
//!
//! ```text
//! <dir>/CURRENT                 "db-000002.sqlite\n": the live generation
//! <dir>/db-000002.sqlite        the live database (WAL mode), with -wal and -shm beside it
//! <dir>/db-000001.sqlite…       an older generation: left over, deleted at open
//! <dir>/*.tmp                   half-written temp files: deleted at open
//! ```
//!
//! `CURRENT` is only ever replaced atomically ([`prepare_current`] writes and fsyncs
//! `CURRENT.tmp`, [`commit_current`] renames it over `CURRENT`, then the directory is
//! fsynced), and only once the generation it names is complete and durable in the directory.
//! So after a crash at any point, `CURRENT` names a whole database: the old one or the new one.
//! A fresh directory gets `CURRENT` (naming generation 1) before the database file exists;
//! generation 1 missing is therefore a fresh start, any other missing generation is an error.
//!
//! [`Live`] is the in-memory side: the current generation, shared by the [`crate::Db`], its
//! [`crate::Readers`] pools and its [`crate::ImageSource`]s, so that they follow installs.
//! Pools that keep idle connections register as a [`Holder`], a trait declared here, so that
//! this module does not depend on `readers` (which depends on it).
//!
//! Not done here: anything SQLite. This module moves files and names them.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, Weak};

use crate::error::Result;

/// The name of the file naming the live generation.
const CURRENT: &str = "CURRENT";
/// The temp file `CURRENT` is written to before it is renamed into place.
const CURRENT_TMP: &str = "CURRENT.tmp";
/// The suffixes SQLite gives a database's side files.
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// One generation of the database file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Generation {
    /// Its number, counting up from 1 with every install.
    pub(crate) number: u64,
    /// Its file.
    pub(crate) path: PathBuf,
}

/// The generation file name for `number`.
pub(crate) fn file_name(number: u64) -> String {
    format!("db-{number:06}.sqlite")
}

/// The number of a generation file name, `None` for any other name.
fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("db-")?.strip_suffix(".sqlite")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether a directory entry is left over from an earlier run: another generation's file or
/// side file, or a temp file. Unknown names are kept (they are not ours to delete), and so are
/// the live generation's side files (its `-wal` holds committed data).
fn is_leftover(name: &str, live: u64) -> bool {
    if name.ends_with(".tmp") {
        return true;
    }
    let base = SIDE_FILES.iter().find_map(|suffix| name.strip_suffix(suffix)).unwrap_or(name);
    parse_file_name(base).is_some_and(|number| number != live)
}

/// Opens the directory (creating it if needed): reads `CURRENT` (writing it for a fresh
/// directory) and deletes left-over files. Returns the live generation, whose file may not
/// exist yet for a fresh directory.
pub(crate) fn open_dir(dir: &Path) -> Result<Generation> {
    if dir.is_file() {
        return Err(invalid_data(format!(
            "{} is a file; the database is a directory (CURRENT and generation files)",
            dir.display()
        ))
        .into());
    }
    fs::create_dir_all(dir)?;
    let number = match fs::read_to_string(dir.join(CURRENT)) {
        Ok(text) => parse_file_name(text.trim()).ok_or_else(|| {
            invalid_data(format!(
                "{}: CURRENT holds {:?}, not a database generation file name",
                dir.display(),
                text.trim()
            ))
        })?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            for entry in fs::read_dir(dir)? {
                let name = entry?.file_name();
                let name = name.to_string_lossy();
                let base = SIDE_FILES.iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
                if parse_file_name(base).is_some() {
                    return Err(invalid_data(format!(
                        "{}: database file {name} exists but CURRENT is missing; refusing to guess which generation is live",
                        dir.display()
                    ))
                    .into());
                }
            }
            prepare_current(dir, 1)?;
            commit_current(dir)?;
            sync_dir(dir)?;
            1
        }
        Err(error) => return Err(error.into()),
    };
    let path = dir.join(file_name(number));
    if number > 1 && !path.exists() {
        return Err(invalid_data(format!(
            "{}: CURRENT names {}, which does not exist",
            dir.display(),
            file_name(number)
        ))
        .into());
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if is_leftover(&entry.file_name().to_string_lossy(), number) {
            tracing::info!(file = %entry.path().display(), "deleting left-over database file");
            remove_if_exists(&entry.path())?;
        }
    }
    Ok(Generation { number, path })
}

/// Writes and fsyncs `CURRENT.tmp` naming generation `number`; [`commit_current`] makes it
/// `CURRENT`.
pub(crate) fn prepare_current(dir: &Path, number: u64) -> Result<()> {
    let mut file = fs::File::create(dir.join(CURRENT_TMP))?;
    file.write_all(format!("{}\n", file_name(number)).as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Renames `CURRENT.tmp` over `CURRENT` (atomic). Durable after [`sync_dir`].
pub(crate) fn commit_current(dir: &Path) -> Result<()> {
    fs::rename(dir.join(CURRENT_TMP), dir.join(CURRENT))?;
    Ok(())
}

/// Fsyncs a directory, making renames and deletions in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Moves `image` to `path` (in `dir`) and fsyncs `dir`. A rename when both are on one file
/// system; otherwise a streamed copy to a temp file in `dir`, fsynced and renamed, after which
/// `image` is deleted.
pub(crate) fn move_into(image: &Path, dir: &Path, path: &Path) -> Result<()> {
    match fs::rename(image, path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::CrossesDevices => {
            tracing::warn!(image = %image.display(), "image is on another file system; copying it");
            let tmp = dir.join("install.tmp");
            fs::copy(image, &tmp)?;
            fs::File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, path)?;
            remove_if_exists(image)?;
        }
        Err(error) => {
            return Err(io::Error::new(
                error.kind(),
                format!("moving {} to {}: {error}", image.display(), path.display()),
            )
            .into());
        }
    }
    sync_dir(dir)
}

/// Deletes a database file and its side files, those that exist.
pub(crate) fn remove_database(path: &Path) -> Result<()> {
    remove_if_exists(path)?;
    for suffix in SIDE_FILES {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        remove_if_exists(Path::new(&side))?;
    }
    Ok(())
}

/// Deletes a file unless it does not exist.
fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error.into()),
        _ => Ok(()),
    }
}

/// An `InvalidData` I/O error.
fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The live generation as the [`crate::Db`], its reader pools and image sources share it.
///
/// Invariants:
/// * `current` only moves forward, and only in [`Live::switch`], which [`crate::Db::install`]
///   calls after the new generation is the write connection's and before it deletes the old
///   generation's files.
/// * Every connection to a generation file is opened while holding [`Live::read`], and has
///   made its first read (so holds the file, its `-wal` and its `-shm` open) before releasing
///   it. Hence once `switch` has returned, nobody opens the old files any more, and deleting
///   their names cannot break a connection on them.
pub(crate) struct Live {
    /// The live generation.
    current: RwLock<Arc<Generation>>,
    /// The reader pools on this database, to drop their idle connections at a switch.
    pools: Mutex<Vec<Weak<dyn Holder>>>,
}

/// Something that keeps idle connections to generation files (a reader pool), and must let go
/// of those on old generations when [`Live::switch`] moves on.
pub(crate) trait Holder: Send + Sync {
    /// Closes the idle connections of generations other than `current`.
    fn drop_stale(&self, current: u64);
}

impl Live {
    /// Starts at `generation`.
    pub(crate) fn new(generation: Arc<Generation>) -> Live {
        Live { current: RwLock::new(generation), pools: Mutex::new(Vec::new()) }
    }

    /// The current generation, held: no switch happens until the guard is dropped.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Arc<Generation>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current generation's number.
    pub(crate) fn number(&self) -> u64 {
        self.read().number
    }

    /// Registers a reader pool, whose idle connections each switch drops; it stays registered
    /// while it lives.
    pub(crate) fn register(&self, pool: Weak<dyn Holder>) {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools.retain(|pool| pool.strong_count() > 0);
        pools.push(pool);
    }

    /// Makes `next` the current generation and closes idle reader connections of older ones.
    pub(crate) fn switch(&self, next: Arc<Generation>) {
        let number = next.number;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        let pools: Vec<Arc<dyn Holder>> = self
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for pool in pools {
            pool.drop_stale(number);
        }
    }
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    #[test_case("db-000001.sqlite", Some(1))]
    #[test_case("db-1234567.sqlite", Some(1_234_567))]
    #[test_case("db-.sqlite", None)]
    #[test_case("db-00x1.sqlite", None)]
    #[test_case("db-000001.sqlite-wal", None)]
    #[test_case("db-+1.sqlite", None)]
    #[test_case("CURRENT", None)]
    fn file_names(name: &str, expect: Option<u64>) {
        assert_eq!(parse_file_name(name), expect);
        if let Some(number) = expect {
            assert_eq!(parse_file_name(&file_name(number)), Some(number));
        }
    }

    #[test_case("db-000002.sqlite", false; "live")]
    #[test_case("db-000002.sqlite-wal", false; "live wal")]
    #[test_case("db-000002.sqlite-journal", false; "live journal")]
    #[test_case("db-000001.sqlite", true; "older")]
    #[test_case("db-000001.sqlite-shm", true; "older shm")]
    #[test_case("db-000003.sqlite-wal", true; "failed install")]
    #[test_case("CURRENT.tmp", true; "temp current")]
    #[test_case("install.tmp", true; "temp copy")]
    #[test_case("CURRENT", false; "current")]
    #[test_case("notes.txt", false; "unknown")]
    fn leftovers(name: &str, expect: bool) {
        assert_eq!(is_leftover(name, 2), expect);
    }

    #[test]
    fn fresh_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let generation = open_dir(&db).unwrap();
        assert_eq!(generation, Generation { number: 1, path: db.join("db-000001.sqlite") });
        assert_eq!(fs::read_to_string(db.join(CURRENT)).unwrap(), "db-000001.sqlite\n");

        // Generation 3 is live; 1 and a temp file are left over; unknown files stay.
        for name in ["db-000003.sqlite", "db-000001.sqlite", "db-000001.sqlite-wal", "x.tmp"] {
            fs::write(db.join(name), b"").unwrap();
        }
        fs::write(db.join("keep.txt"), b"").unwrap();
        prepare_current(&db, 3).unwrap();
        commit_current(&db).unwrap();
        assert_eq!(open_dir(&db).unwrap().number, 3);
        let mut names: Vec<String> = fs::read_dir(&db)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["CURRENT", "db-000003.sqlite", "keep.txt"]);

        // A live generation (other than the first) that is missing is an error, and so are
        // generation files without CURRENT.
        fs::remove_file(db.join("db-000003.sqlite")).unwrap();
        assert!(open_dir(&db).unwrap_err().to_string().contains("does not exist"));
        fs::write(db.join("db-000003.sqlite"), b"").unwrap();
        fs::remove_file(db.join(CURRENT)).unwrap();
        assert!(open_dir(&db).unwrap_err().to_string().contains("CURRENT is missing"));
        fs::write(db.join(CURRENT), b"garbage").unwrap();
        assert!(open_dir(&db).unwrap_err().to_string().contains("not a database generation"));
        assert!(open_dir(&db.join("CURRENT")).unwrap_err().to_string().contains("is a file"));
    }
}
