//! Durable disk operations: the fsync discipline, and small metadata files written atomically.
//!
//! Two rules live here so that [`crate::Log`] cannot forget them:
//!
//! - **A failed fsync aborts the process** ([`sync_data`], [`sync_all`], [`sync_dir`]). After
//!   a failed fsync Linux may already have dropped the dirty pages and cleared the error, so a
//!   retry can "succeed" without the data ever reaching the disk (PostgreSQL's "fsyncgate"). The
//!   only safe continuation is a restart that rebuilds state from what is actually on disk.
//! - **Metadata files are replaced, never edited** ([`write_meta`]): write a temporary file,
//!   fsync it, rename it over the old one, fsync the directory. A crash leaves either the old or
//!   the new contents, plus perhaps a stray `*.tmp` file that [`remove_temp_files`] deletes at
//!   open.
//!
//! A metadata file is a CRC32 (little-endian `u32`) of its contents followed by the contents, so
//! [`read_meta`] tells bit rot apart from a valid value.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::Path;

use crate::{Error, Result};

/// Suffix of a metadata file being written.
const TEMP_SUFFIX: &str = ".tmp";

/// Flushes a file's data (and the metadata needed to read it back, such as its size), or aborts.
pub(crate) fn sync_data(file: &File, path: &Path) {
    if let Err(err) = file.sync_data() {
        abort(path, &err);
    }
}

/// Flushes a file's data and all of its metadata, or aborts.
pub(crate) fn sync_all(file: &File, path: &Path) {
    if let Err(err) = file.sync_all() {
        abort(path, &err);
    }
}

/// Makes a directory's entries (created, renamed, removed files) durable, or aborts.
///
/// Opening the directory may fail like any I/O and returns an error; only the fsync aborts.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let handle = File::open(dir)?;
    if let Err(err) = handle.sync_all() {
        abort(dir, &err);
    }
    Ok(())
}

/// Reports a failed fsync and stops the process; see the module docs for why.
fn abort(path: &Path, err: &std::io::Error) -> ! {
    eprintln!(
        "wal: fsync of {} failed: {err}; aborting, because data acknowledged after a failed fsync \
         may never reach the disk",
        path.display()
    );
    std::process::abort();
}

/// Atomically replaces the metadata file `dir/name` with `value`.
pub(crate) fn write_meta(dir: &Path, name: &str, value: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let bytes = meta_bytes(value);
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
    file.write_all(&bytes)?;
    sync_all(&file, &temp);
    drop(file);
    fs::rename(&temp, &path)?;
    sync_dir(dir)
}

/// A metadata file's contents: CRC-32 of `value`, then `value`.
fn meta_bytes(value: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4 + value.len());
    bytes.extend_from_slice(&crc32fast::hash(value).to_le_bytes());
    bytes.extend_from_slice(value);
    bytes
}

/// Like [`write_meta`] without any fsync, and in place: no temporary file and no rename, which
/// cost a metadata journal write each time (this runs after every fsync of the log). For hints
/// only: a crash may leave the old value; a power loss, or a crash between the write and the
/// truncation of a longer old value, may leave a damaged file that [`read_meta`] reports as
/// corrupt.
pub(crate) fn write_meta_unsynced(dir: &Path, name: &str, value: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    let bytes = meta_bytes(value);
    let file = OpenOptions::new().write(true).create(true).truncate(false).open(dir.join(name))?;
    file.write_all_at(&bytes, 0)?;
    let len = bytes.len() as u64;
    if file.metadata()?.len() > len {
        file.set_len(len)?;
    }
    Ok(())
}

/// Reads the metadata file `dir/name`: `None` if it does not exist, [`Error::Corrupt`] if its
/// checksum does not match.
pub(crate) fn read_meta(dir: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let corrupt =
        |reason: String| Error::Corrupt { lsn: None, path: path.clone(), offset: 0, reason };
    if bytes.len() < 4 {
        return Err(corrupt(format!("metadata file of {} bytes has no checksum", bytes.len())));
    }
    let (crc, value) = bytes.split_at(4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(value);
    if stored != computed {
        return Err(corrupt(format!(
            "metadata checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    Ok(Some(value.to_vec()))
}

/// Deletes metadata files left half-written by a crash in [`write_meta`].
pub(crate) fn remove_temp_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(TEMP_SUFFIX) {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_meta(dir.path(), "vote").unwrap(), None);
        write_meta(dir.path(), "vote", b"first").unwrap();
        assert_eq!(read_meta(dir.path(), "vote").unwrap().as_deref(), Some(&b"first"[..]));
        write_meta(dir.path(), "vote", b"").unwrap();
        assert_eq!(read_meta(dir.path(), "vote").unwrap().as_deref(), Some(&b""[..]));
        assert!(!dir.path().join("vote.tmp").exists());
    }

    #[test]
    fn unsynced_meta_is_rewritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        write_meta(dir.path(), "committed", b"a synced, longer value").unwrap();
        for value in [&b"shorter"[..], b"a longer value than before", b"", b"last"] {
            write_meta_unsynced(dir.path(), "committed", value).unwrap();
            assert_eq!(read_meta(dir.path(), "committed").unwrap().as_deref(), Some(value));
        }
        assert!(!dir.path().join("committed.tmp").exists());
    }

    #[test]
    fn damaged_meta_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        write_meta(dir.path(), "committed", b"some value").unwrap();
        let path = dir.path().join("committed");
        let mut bytes = fs::read(&path).unwrap();
        bytes[6] ^= 1;
        fs::write(&path, bytes).unwrap();
        let err = read_meta(dir.path(), "committed").unwrap_err();
        assert!(matches!(err, Error::Corrupt { lsn: None, offset: 0, .. }), "{err}");
    }

    #[test]
    fn temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("vote.tmp"), b"half").unwrap();
        fs::write(dir.path().join("keep"), b"x").unwrap();
        remove_temp_files(dir.path()).unwrap();
        assert!(!dir.path().join("vote.tmp").exists());
        assert!(dir.path().join("keep").exists());
    }
}
