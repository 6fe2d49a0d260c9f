//! Snapshot files, their checksums, and counters for operators.
//!
//! A snapshot is never held in memory: openraft passes a [`SnapshotFile`] around (an open,
//! read-only file with its length and CRC-32), the sender streams it from disk, and the receiver
//! streams the request body to a temporary file in the snapshot directory before handing that
//! file to the state machine. Every pass over an image reads or writes it in blocks of at most
//! [`BLOCK`] bytes.
//!
//! File names in the snapshot directory (see [`crate::state_machine`] for how they are used):
//!
//! - `<term>-<index>.db`: a published image;
//! - `current.json` (and `current.json.tmp` while it is replaced): what the current snapshot is;
//! - `building-*.tmp`: an image being written by [`crate::state_machine::Store::snapshot_to`];
//! - `receiving-<term>-<index>-<nanos>-<n>.tmp`: an image arriving from the leader.
//!
//! Temporary files left by a crash are deleted when the state machine opens ([`is_leftover`]).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::types::Lsn;

/// Block size for reading and writing images (checksums, transfers).
pub const BLOCK: usize = 1 << 20;

/// A snapshot image on disk, as openraft passes it around: an open read-only handle (so the
/// image stays readable while a transfer runs even if a newer snapshot replaces it), the path
/// it was opened at, its length and its CRC-32 (`crc32fast`, the IEEE polynomial).
#[derive(Debug)]
pub struct SnapshotFile {
    /// Where the image was when it was opened (it may have been replaced or renamed since).
    path: PathBuf,
    /// Read handle, positioned at the start.
    file: fs::File,
    /// Length in bytes.
    len: u64,
    /// CRC-32 of the whole image.
    checksum: u32,
}

impl SnapshotFile {
    /// Opens the image at `path` whose length and checksum are already known (recorded when it
    /// was built or received). Fails with `InvalidData` if the file's length differs. The
    /// content is not read.
    pub fn open(path: &Path, len: u64, checksum: u32) -> io::Result<SnapshotFile> {
        let file = fs::File::open(path)?;
        let actual = file.metadata()?.len();
        if actual != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot image {} has {actual} bytes, expected {len}", path.display()),
            ));
        }
        Ok(SnapshotFile { path: path.to_path_buf(), file, len, checksum })
    }

    /// Opens the image at `path` and computes its length and checksum by reading it once.
    pub fn open_and_checksum(path: &Path) -> io::Result<SnapshotFile> {
        let (len, checksum) = checksum_file(path)?;
        Self::open(path, len, checksum)
    }

    /// The path the image was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the image is empty (never true for a real database image).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// CRC-32 of the whole image.
    pub fn checksum(&self) -> u32 {
        self.checksum
    }

    /// The open read handle, positioned at the start.
    pub fn into_file(self) -> fs::File {
        self.file
    }

    /// Records that the image was renamed to `path` (the open handle is unaffected).
    pub(crate) fn renamed(&mut self, path: PathBuf) {
        self.path = path;
    }
}

/// Length and CRC-32 of the file at `path`, reading it once in [`BLOCK`]-sized blocks.
pub fn checksum_file(path: &Path) -> io::Result<(u64, u32)> {
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; BLOCK];
    let mut hasher = crc32fast::Hasher::new();
    let mut len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hasher.finalize()))
}

/// A name no other temporary file in the process (or a previous run) has: nanoseconds since the
/// epoch and a process-wide sequence number.
pub(crate) fn unique_suffix() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos}-{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

/// The temporary file a snapshot at `(term, index)` from the leader is received into.
pub(crate) fn receiving_path(dir: &Path, term: u64, index: Lsn) -> PathBuf {
    dir.join(format!("receiving-{term}-{index}-{}.tmp", unique_suffix()))
}

/// The temporary file a new image is built into.
pub(crate) fn building_path(dir: &Path) -> PathBuf {
    dir.join(format!("building-{}.tmp", unique_suffix()))
}

/// Whether `name` is a temporary file a crash may have left (deleted at open).
pub fn is_leftover(name: &str) -> bool {
    ((name.starts_with("receiving-") || name.starts_with("building-")) && name.ends_with(".tmp"))
        || name == "current.json.tmp"
}

/// Deletes `path` when dropped unless [`TempFile::keep`] was called: a failed or abandoned
/// transfer (including a request future dropped when the sender disconnects) leaves nothing.
#[derive(Debug)]
pub(crate) struct TempFile(Option<PathBuf>);

impl TempFile {
    pub(crate) fn new(path: PathBuf) -> TempFile {
        TempFile(Some(path))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().expect("temp file already kept")
    }

    /// Stops guarding the file; returns its path.
    pub(crate) fn keep(mut self) -> PathBuf {
        self.0.take().expect("temp file already kept")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            remove_if_exists(&path);
        }
    }
}

/// Deletes `path`, ignoring a missing file; other errors are logged.
pub(crate) fn remove_if_exists(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot delete file"),
    }
}

/// Snapshot counters of one node, shared by the state machine and the network. All counters
/// start at zero when the process starts (except the current snapshot, read from disk).
#[derive(Debug, Default)]
pub struct SnapshotStats {
    built: AtomicU64,
    sent: AtomicU64,
    send_failures: AtomicU64,
    received: AtomicU64,
    receive_failures: AtomicU64,
    installed: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    last_built_index: AtomicU64,
    last_installed_index: AtomicU64,
    current_index: AtomicU64,
    current_size: AtomicU64,
    damaged: AtomicU64,
}

/// A copy of [`SnapshotStats`] at one moment, for `/status` and tests. Indexes are 0 when
/// there is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotCounts {
    /// Snapshots this node built (by policy, at start, or for a transfer).
    pub built: u64,
    /// Snapshots this node sent completely and the receiver accepted.
    pub sent: u64,
    /// Transfers this node started as sender that failed (the leader retries).
    pub send_failures: u64,
    /// Snapshots this node received completely with a matching length and checksum.
    pub received: u64,
    /// Transfers this node rejected or lost as receiver (bad header, length, checksum, I/O).
    pub receive_failures: u64,
    /// Received snapshots installed into the live database.
    pub installed: u64,
    /// Snapshot bytes this node streamed to peers, including failed transfers.
    pub bytes_sent: u64,
    /// Snapshot bytes this node received from leaders, including failed transfers.
    pub bytes_received: u64,
    /// Log index of the last snapshot built.
    pub last_built_index: Lsn,
    /// Log index of the last snapshot installed.
    pub last_installed_index: Lsn,
    /// Log index of the current snapshot (built or installed).
    pub current_index: Lsn,
    /// Size in bytes of the current snapshot's image; 0 after an install (the image became the
    /// live database) until a new image is built.
    pub current_size: u64,
    /// Images of this node's found damaged (their checksum differed from the one recorded when
    /// they were made) and replaced by a new build.
    pub damaged: u64,
}

impl SnapshotStats {
    /// The counters now.
    pub fn read(&self) -> SnapshotCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SnapshotCounts {
            built: get(&self.built),
            sent: get(&self.sent),
            send_failures: get(&self.send_failures),
            received: get(&self.received),
            receive_failures: get(&self.receive_failures),
            installed: get(&self.installed),
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            last_built_index: get(&self.last_built_index),
            last_installed_index: get(&self.last_installed_index),
            current_index: get(&self.current_index),
            current_size: get(&self.current_size),
            damaged: get(&self.damaged),
        }
    }

    pub(crate) fn on_built(&self, index: Lsn) {
        self.built.fetch_add(1, Ordering::Relaxed);
        self.last_built_index.store(index, Ordering::Relaxed);
    }

    pub(crate) fn on_damaged(&self) {
        self.damaged.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_current(&self, index: Lsn, size: u64) {
        self.current_index.store(index, Ordering::Relaxed);
        self.current_size.store(size, Ordering::Relaxed);
    }

    pub(crate) fn on_installed(&self, index: Lsn) {
        self.installed.fetch_add(1, Ordering::Relaxed);
        self.last_installed_index.store(index, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes_sent(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes_received(&self, n: u64) {
        self.bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn on_sent(&self, ok: bool) {
        let counter = if ok { &self.sent } else { &self.send_failures };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_received(&self, ok: bool) {
        let counter = if ok { &self.received } else { &self.receive_failures };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_one_shot_crc_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let data: Vec<u8> = (0..(BLOCK * 2 + 12345)).map(|i| (i * 31 % 251) as u8).collect();
        fs::write(&path, &data).unwrap();
        let (len, crc) = checksum_file(&path).unwrap();
        assert_eq!(len, data.len() as u64);
        assert_eq!(crc, crc32fast::hash(&data));
        let f = SnapshotFile::open_and_checksum(&path).unwrap();
        assert_eq!((f.len(), f.checksum()), (len, crc));
        let err = SnapshotFile::open(&path, len + 1, crc).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn leftovers_are_only_temporary_files() {
        assert!(is_leftover("receiving-3-17-123-0.tmp"));
        assert!(is_leftover("building-123-4.tmp"));
        assert!(is_leftover("current.json.tmp"));
        assert!(!is_leftover("current.json"));
        assert!(!is_leftover("3-17.db"));
    }

    #[test]
    fn temp_file_is_deleted_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::write(&a, b"x").unwrap();
        fs::write(&b, b"x").unwrap();
        drop(TempFile::new(a.clone()));
        let kept = TempFile::new(b.clone()).keep();
        assert!(!a.exists());
        assert!(kept.exists());
        drop(TempFile::new(dir.path().join("missing")));
    }
}
