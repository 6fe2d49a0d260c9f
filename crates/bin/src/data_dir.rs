//! The data directory's lock: one process at a time changes a node's data.
//!
//! `keel serve` takes an exclusive `flock` on `<data-dir>/lock` before it opens anything in the
//! directory and holds it until the process ends: the kernel releases it on any exit, `kill -9`
//! included, and on the `exec` of a rebuild (the file is opened close-on-exec). The pid of the
//! holder is written into the file, for the message others get. Offline commands that change a
//! data directory (`keel admin recover`) take the same lock, so they refuse the directory of a
//! running node, and the node cannot start while they work.
//!
//! The lock is advisory: it keeps Keel's own processes apart, not a person with a text editor.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;

use anyhow::Context as _;

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "lock";

/// A held lock on a data directory, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct Lock {
    /// The open lock file; the `flock` lives as long as it.
    _file: File,
}

/// Takes the lock on the data directory `dir` (which must exist), or fails at once, naming the
/// process that holds it.
pub fn lock(dir: &Path) -> anyhow::Result<Lock> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            anyhow::bail!(
                "the data directory {} is in use by another keel process{holder}: stop it first",
                dir.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(Lock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err().to_string();
        let pid = std::process::id();
        assert!(err.contains(&format!("in use by another keel process (pid {pid})")), "{err}");
        drop(first);
        lock(dir.path()).unwrap();
    }
}
