//! Disk space: what the node knows of the free space in its data directory, and the checks
//! that keep a full disk from stopping it.
//!
//! openraft stops the node on any error of its log storage or state machine, and a full disk
//! used to be one: the node exited. Now no "no space" error reaches openraft as fatal:
//!
//! - **Before anything is written**, whoever decides to take new entries asks [`Space`]: the
//!   leader's writer before proposing ([`Space::admit_write`]: a refusal becomes 507 for the
//!   client, nothing written), a follower before handing an append to Raft
//!   ([`Space::admit_append`]: the stream ends, and the leader retries later as for an
//!   unreachable follower). Both refuse when the free space is below the reserve
//!   ([`Space::observe`], `statvfs`, every [`OBSERVE_EVERY`] by the task [`Space::watch`]
//!   runs), or when the log cannot make room for what is about to be written.
//! - **What was admitted cannot fail**: the log keeps room preallocated past its end
//!   ([`wal::Log::ensure_room`]), which other processes cannot take. [`MARGIN`] more is kept for
//!   entries no writer admits (a new leader's blank entry, membership changes).
//! - **Applying** into SQLite needs space too, and cannot be refused: the entry is committed.
//!   The node keeps a ballast file (`space-ballast`, a quarter of the reserve, created while
//!   there is room for it beside the reserve) for exactly this: an apply that finds the disk
//!   full deletes it ([`Space::release_ballast`]) and runs again at once, so the writes admitted
//!   just before the disk filled (the leader also reads the free space right before each
//!   proposal, which keeps that window to milliseconds) still apply, and reads that wait for
//!   them go on. Without the ballast, a batch that fails with "no space" was rolled back, so
//!   the state machine applies it again once [`Space::wait_for_space`] returns, instead of
//!   stopping.
//!
//! A failed fsync is not "no space": after one the page cache is in doubt, and the node still
//! aborts (`wal`'s `disk` module, SQLite's `SQLITE_IOERR_FSYNC` stops the state machine).
//!
//! What it does not do: free space (the operator does), or tell the client API anything
//! (`node` reads [`Space::report`] for `/status`, `/readyz` and `/metrics`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::log_store::LogStore;

/// How often [`Space::watch`] looks at the free space.
pub const OBSERVE_EVERY: Duration = Duration::from_millis(250);
/// Room kept in the log beyond what writes are admitted for: entries no writer admits (a new
/// leader's blank entry, membership changes) must always fit.
pub const MARGIN: u64 = 256 << 10;
/// An entry's size in the log beyond its payload (frame header, kind byte).
const ENTRY_OVERHEAD: u64 = 64;
/// What a membership entry is counted as (its JSON names every member's addresses).
const MEMBERSHIP_BYTES: u64 = 16 << 10;
/// The ballast file's name in the data directory.
pub const BALLAST: &str = "space-ballast";

/// The free space of a node's data directory, as last observed, and what the node refused
/// because of it. Shared by the writer, the replication server, the state machine and the
/// node's status.
#[derive(Debug)]
pub struct Space {
    /// The data directory (its file system is the one observed).
    dir: PathBuf,
    /// Free bytes below which the node takes no new writes.
    reserve: u64,
    /// The ballast file: space set aside for applies that find the disk full.
    ballast: PathBuf,
    /// The ballast's size.
    ballast_bytes: u64,
    /// The log, for its room.
    log: LogStore,
    /// Free bytes at the last observation (`u64::MAX` before the first).
    free: AtomicU64,
    /// Whether the disk is full: free space below the reserve, or the log could not make room.
    full: AtomicBool,
    /// Times the disk became full.
    episodes: AtomicU64,
    /// Writes refused with 507.
    refused_writes: AtomicU64,
    /// Appends from a leader refused.
    refused_appends: AtomicU64,
    /// Applies that failed for lack of space and were tried again.
    apply_retries: AtomicU64,
}

/// What [`Space::report`] tells `/status` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Whether the disk is full (writes refused).
    pub full: bool,
    /// Free bytes at the last observation.
    pub free: u64,
    /// Free bytes below which writes are refused.
    pub reserve: u64,
    /// Bytes the log holds preallocated; `None` when it keeps none.
    pub room: Option<u64>,
    /// Times the disk became full since start.
    pub episodes: u64,
    /// Writes refused since start.
    pub refused_writes: u64,
    /// Appends from a leader refused since start.
    pub refused_appends: u64,
    /// Applies tried again after failing for lack of space, since start.
    pub apply_retries: u64,
}

/// How long a peer's refusal of this node's appends for lack of space counts as that peer's
/// disk being full. While a write waits for a full peer, openraft sends it the entry again
/// and again (each refused), so the refusal stays fresh; once the peer takes an append, no
/// refusal renews it.
pub const PEER_FULL_FOR: Duration = Duration::from_secs(2);

/// Peers that refused this node's appends because their disk is full, and when they last did:
/// the leader's view, so that a write no majority of voters could take is refused (507)
/// before it is written, rather than left to time out (see [`PeersFull::full`]).
#[derive(Debug, Default)]
pub struct PeersFull {
    /// When each peer last refused.
    last: Mutex<BTreeMap<crate::NodeId, Instant>>,
}

impl PeersFull {
    /// Notes that `peer` refused an append for lack of space, now.
    pub fn refused(&self, peer: crate::NodeId) {
        self.lock().insert(peer, Instant::now());
    }

    /// The peers that refused within [`PEER_FULL_FOR`]; forgets the others.
    pub fn full(&self) -> BTreeSet<crate::NodeId> {
        let mut last = self.lock();
        if last.is_empty() {
            return Default::default();
        }
        last.retain(|_, at| at.elapsed() < PEER_FULL_FOR);
        last.keys().copied().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<crate::NodeId, Instant>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A refusal for lack of space: nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the disk is full: {} free in {dir}, and the node takes writes only with at least {} free \
     (--disk-reserve){room}; nothing was written: free space on that disk, and writes resume by \
     themselves",
    mib(*.free),
    mib(*.reserve)
)]
pub struct Full {
    /// The data directory.
    pub dir: String,
    /// Free bytes.
    pub free: u64,
    /// The reserve.
    pub reserve: u64,
    /// Why the log refused, if it did.
    pub room: String,
}

/// Bytes as MiB, for messages.
fn mib(bytes: u64) -> String {
    if bytes == u64::MAX {
        "unknown".into()
    } else {
        format!("{:.1} MiB", bytes as f64 / 1048576.0)
    }
}

impl Space {
    /// The space of the data directory `dir` (whose log is `log`), refusing writes below
    /// `reserve` free bytes.
    pub fn new(dir: &Path, reserve: u64, log: LogStore) -> Space {
        Space {
            dir: dir.to_path_buf(),
            reserve,
            ballast: dir.join(BALLAST),
            ballast_bytes: reserve / 4,
            log,
            free: AtomicU64::new(u64::MAX),
            full: AtomicBool::new(false),
            episodes: AtomicU64::new(0),
            refused_writes: AtomicU64::new(0),
            refused_appends: AtomicU64::new(0),
            apply_retries: AtomicU64::new(0),
        }
    }

    /// Looks at the free space now (`statvfs`) and updates whether the disk is full; once it
    /// is not, tops the log's room up again and puts the ballast back. Returns whether the
    /// disk is full.
    pub fn observe(&self) -> bool {
        let Some(free) = self.read_free() else { return self.is_full() };
        let full = free < self.reserve;
        if !full && self.log.refill_room().is_err() {
            // Free space, yet the log cannot take back its room: someone took it meanwhile.
            return self.set_full(true);
        }
        if !full && free >= self.reserve + self.ballast_bytes {
            self.keep_ballast();
        }
        self.set_full(full)
    }

    /// Reads the free space (`statvfs`) into `free`; `None` if it cannot be read.
    fn read_free(&self) -> Option<u64> {
        match free_bytes(&self.dir) {
            Ok(free) => {
                self.free.store(free, Ordering::Relaxed);
                Some(free)
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the free space of the data directory");
                None
            }
        }
    }

    /// Creates the ballast file if it is missing.
    fn keep_ballast(&self) {
        if self.ballast_bytes == 0 || self.ballast.exists() {
            return;
        }
        if let Err(e) = allocate_file(&self.ballast, self.ballast_bytes) {
            let _ = std::fs::remove_file(&self.ballast);
            tracing::debug!(error = %e, "cannot create the ballast file");
        }
    }

    /// Deletes the ballast file, so that an apply that found the disk full finds space;
    /// whether there was one. The disk counts as full from now on, until space returns.
    pub fn release_ballast(&self) -> bool {
        if std::fs::remove_file(&self.ballast).is_err() {
            return false;
        }
        tracing::warn!(
            bytes = self.ballast_bytes,
            "the disk is full: released the ballast file so that committed entries can still be applied"
        );
        self.set_full(true);
        true
    }

    /// Records whether the disk is full, logging and counting changes. Returns `full`.
    fn set_full(&self, full: bool) -> bool {
        let was = self.full.swap(full, Ordering::Relaxed);
        let free = mib(self.free.load(Ordering::Relaxed));
        match (was, full) {
            (false, true) => {
                self.episodes.fetch_add(1, Ordering::Relaxed);
                tracing::error!(dir = %self.dir.display(), %free, reserve = %mib(self.reserve), "the disk is full: refusing writes and appends until space returns");
            }
            (true, false) => {
                tracing::info!(dir = %self.dir.display(), %free, "the disk has space again: taking writes and appends");
            }
            _ => {}
        }
        full
    }

    /// Whether the disk is full, as last observed.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Whether a write of `bytes` (a record about to be proposed) may be proposed; `Err` says
    /// why not (and the caller answers it, having written nothing).
    pub fn admit_write(&self, bytes: u64) -> Result<(), Full> {
        self.admit(bytes).inspect_err(|_| {
            self.refused_writes.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Whether an append from a leader of `bytes` (see [`entry_bytes`]) may be handed to Raft.
    pub fn admit_append(&self, bytes: u64) -> Result<(), Full> {
        self.admit(bytes).inspect_err(|_| {
            self.refused_appends.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// The check behind both: not full, and the log has room for `bytes` beyond [`MARGIN`].
    /// A write (`bytes` > 0 from the writer) reads the free space first, which costs one
    /// system call per batch.
    fn admit(&self, bytes: u64) -> Result<(), Full> {
        if self.is_full() {
            return Err(self.full(String::new()));
        }
        if self.read_free().is_some_and(|free| free < self.reserve) {
            self.set_full(true);
            return Err(self.full(String::new()));
        }
        let needed = bytes.saturating_add(MARGIN);
        if self.log.room().is_none_or(|room| room >= needed) {
            return Ok(());
        }
        match self.log.ensure_room(needed) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.set_full(true);
                Err(self.full(format!("; the log cannot reserve {}: {e}", mib(needed))))
            }
        }
    }

    /// The refusal, with what is known now.
    fn full(&self, room: String) -> Full {
        Full {
            dir: self.dir.display().to_string(),
            free: self.free.load(Ordering::Relaxed),
            reserve: self.reserve,
            room,
        }
    }

    /// Waits until the disk is no longer full, looking every [`OBSERVE_EVERY`] (and at least
    /// once), and counts an apply to be tried again.
    pub async fn wait_for_space(&self) {
        self.apply_retries.fetch_add(1, Ordering::Relaxed);
        loop {
            tokio::time::sleep(OBSERVE_EVERY).await;
            if !self.observe() {
                return;
            }
        }
    }

    /// The counters and the last observation.
    pub fn report(&self) -> Report {
        Report {
            full: self.is_full(),
            free: self.free.load(Ordering::Relaxed),
            reserve: self.reserve,
            room: self.log.room(),
            episodes: self.episodes.load(Ordering::Relaxed),
            refused_writes: self.refused_writes.load(Ordering::Relaxed),
            refused_appends: self.refused_appends.load(Ordering::Relaxed),
            apply_retries: self.apply_retries.load(Ordering::Relaxed),
        }
    }

    /// Observes now, then every [`OBSERVE_EVERY`] in a task of its own, for as long as the
    /// space is in use elsewhere.
    pub fn watch(space: &Arc<Space>) {
        space.observe();
        let weak: Weak<Space> = Arc::downgrade(space);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(OBSERVE_EVERY).await;
                let Some(space) = weak.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || space.observe()).await;
            }
        });
    }
}

/// What an entry takes in the log, for [`Space::admit_append`]: its record's size plus the
/// frame around it.
pub fn entry_bytes(entry: &crate::types::Entry) -> u64 {
    ENTRY_OVERHEAD
        + match &entry.payload {
            openraft::EntryPayload::Blank => 0,
            openraft::EntryPayload::Normal(record) => record.size() as u64,
            openraft::EntryPayload::Membership(_) => MEMBERSHIP_BYTES,
        }
}

/// What a record about to be proposed takes in the log, for [`Space::admit_write`].
pub fn record_bytes(record: &wal::Record) -> u64 {
    ENTRY_OVERHEAD + record.size() as u64
}

/// Creates the file `path` with `len` bytes allocated (`fallocate`, not a sparse file).
fn allocate_file(path: &Path, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::create(path)?;
    let len = i64::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: fallocate only reads its integer arguments; the descriptor is open while `file`
    // lives.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    file.sync_all()
}

/// Bytes an unprivileged process may still write on the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `stat` points to writable memory of the right
    // type; statvfs fills it on success.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast, reason = "the field types differ between platforms")]
    let (blocks, size) = (stat.f_bavail as u64, stat.f_frsize as u64);
    Ok(blocks.saturating_mul(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_a_reserve_above_it_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(&dir.path().join("raft")).unwrap();
        let roomy = Space::new(dir.path(), 0, log.clone());
        assert!(!roomy.observe());
        assert!(roomy.report().free > 0);
        roomy.admit_write(100).unwrap();
        let cramped = Space::new(dir.path(), u64::MAX - 1, log);
        assert!(cramped.observe());
        let refusal = cramped.admit_write(100).unwrap_err();
        assert!(refusal.to_string().contains("nothing was written"), "{refusal}");
        assert!(cramped.admit_append(100).is_err());
        let report = cramped.report();
        assert_eq!((report.full, report.episodes), (true, 1));
        assert_eq!((report.refused_writes, report.refused_appends), (1, 1));
    }
}
