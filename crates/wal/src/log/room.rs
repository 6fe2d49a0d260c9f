//! Room: disk space the log holds ahead of its end, so that an append it has agreed to take
//! never fails for lack of space.
//!
//! A full disk must not stop a node, and openraft stops the node on any error of its log
//! storage. Checking the free space (`statvfs`) before an append does not help on its own:
//! another process can take the last block between the check and the write. So the log
//! preallocates the blocks it will write next: `fallocate(FALLOC_FL_KEEP_SIZE)` past the end
//! of the last segment, which leaves the file's length (and so everything [`Log::open`] and
//! [`Log::read`] see) alone. Writing into preallocated blocks allocates nothing, so it cannot
//! fail with `ENOSPC`.
//!
//! - [`Log::room`]: bytes preallocated past the last frame. Callers that decide whether to
//!   take new entries (the leader before proposing, a follower before handing an append to
//!   Raft) ask [`Log::ensure_room`] for what they are about to write, and refuse when it fails.
//! - After each append the room is topped up to [`Options::room_bytes`] when it fell below
//!   half of it; a top-up that finds no space keeps the room there is.
//! - A new segment is started only when its own room can be allocated; otherwise appends go on
//!   into the current segment (segments may exceed [`Options::segment_bytes`]), whose room was
//!   promised. The room of a segment that is left behind is given back.
//! - The small metadata files (vote, purge point) are replaced by writing a new file; when
//!   that finds no space, [`Log::with_space`] gives back a little of the room and tries once
//!   more, so an election on a full disk does not stop the node.
//!
//! File systems without `fallocate` (and non-Linux systems) have no room: [`Log::room`] is
//! `None`, and callers fall back to the free-space check alone.
//!
//! [`Options::room_bytes`]: super::Options::room_bytes
//! [`Options::segment_bytes`]: super::Options::segment_bytes

use std::fs::File;
use std::io;

use super::Log;
use crate::{Error, Lsn, Result};

/// What [`Log::with_space`] gives back of the room for one metadata write.
const META_SPACE: u64 = 64 << 10;

impl Log {
    /// Bytes preallocated past the last frame: appends of up to this many bytes (frames as
    /// encoded) cannot fail for lack of space. `None` when the log keeps no room (turned off,
    /// not supported by the file system, or no segment yet).
    pub fn room(&self) -> Option<u64> {
        if !self.room_on {
            return None;
        }
        let (_, segment) = self.segments.last_key_value()?;
        Some(segment.allocated.saturating_sub(segment.len))
    }

    /// Makes sure the next appends of `bytes` in all fit in the room, preallocating more if
    /// needed. Fails (with an error for which [`Error::is_no_space`] holds) when the file
    /// system has not that much space; nothing is written then. Succeeds without doing
    /// anything when the log keeps no room ([`Log::room`] is `None`).
    pub fn ensure_room(&mut self, bytes: u64) -> Result<()> {
        let Some(room) = self.room() else { return Ok(()) };
        if room >= bytes {
            return Ok(());
        }
        let key = *self.segments.keys().next_back().expect("room() found a segment");
        let want = bytes.max(self.options.room_bytes);
        self.allocate(key, want).map_err(Error::Io)
    }

    /// Tops the room up to [`super::Options::room_bytes`] when it is below half of that. A
    /// failure (no space) keeps the room as it is, and says so: the callers' checks refuse
    /// what does not fit. Appends do this by themselves; after a full disk, call it to know
    /// whether the room is back.
    pub fn refill_room(&mut self) -> Result<()> {
        let Some(room) = self.room() else { return Ok(()) };
        if room >= self.options.room_bytes / 2 {
            return Ok(());
        }
        let key = *self.segments.keys().next_back().expect("room() found a segment");
        self.allocate(key, self.options.room_bytes).map_err(Error::Io)
    }

    /// [`Log::refill_room`] after an append, a truncation or an open: a failure is left to
    /// the callers' checks.
    pub(super) fn top_up(&mut self) {
        let _ = self.refill_room();
    }

    /// Preallocates the segment `key` so that `room` bytes follow its last frame. Turns the
    /// room off for good if the file system does not support preallocation.
    pub(super) fn allocate(&mut self, key: Lsn, room: u64) -> io::Result<()> {
        let segment = self.segments.get_mut(&key).expect("allocate names a live segment");
        let end = segment.len + room;
        if end <= segment.allocated {
            return Ok(());
        }
        match preallocate(&segment.file, segment.len, room) {
            Ok(()) => {
                segment.allocated = end;
                Ok(())
            }
            Err(e) if is_unsupported(&e) => {
                eprintln!(
                    "wal: cannot preallocate {} ({e}); the log keeps no room ahead, so a full \
                     disk can stop this node",
                    segment.path.display()
                );
                self.room_on = false;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Gives back the room of the segment `key`, which appends are leaving behind.
    pub(super) fn release(&mut self, key: Lsn) {
        let Some(segment) = self.segments.get_mut(&key) else { return };
        if segment.allocated > segment.len {
            let _ = punch(&segment.file, segment.len, segment.allocated - segment.len);
        }
        segment.allocated = segment.len;
    }

    /// Runs `write` (a metadata file being replaced); if it finds no space, gives back up to
    /// [`META_SPACE`] of the room and runs it once more.
    pub(super) fn with_space<T>(&mut self, mut write: impl FnMut(&Log) -> Result<T>) -> Result<T> {
        match write(self) {
            Err(e) if e.is_no_space() && self.give_back(META_SPACE) => write(self),
            done => done,
        }
    }

    /// Frees the last `bytes` of the room (less if the room is smaller); whether it freed any.
    fn give_back(&mut self, bytes: u64) -> bool {
        let Some(room) = self.room().filter(|room| *room > 0) else { return false };
        let bytes = bytes.min(room);
        let key = *self.segments.keys().next_back().expect("room() found a segment");
        let segment = self.segments.get_mut(&key).expect("the key was just read");
        let from = segment.allocated - bytes;
        if punch(&segment.file, from, bytes).is_err() {
            return false;
        }
        segment.allocated = from;
        eprintln!("wal: the disk is full; gave back {bytes} bytes of the log's room for metadata");
        true
    }
}

/// Whether a preallocation error means the file system cannot do it at all.
fn is_unsupported(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported
        || matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS))
}

/// Allocates `len` bytes at `offset` without changing the file's length.
#[cfg(target_os = "linux")]
fn preallocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(file, libc::FALLOC_FL_KEEP_SIZE, offset, len)
}

/// Frees `len` bytes at `offset` without changing the file's length.
#[cfg(target_os = "linux")]
fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(file, libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE, offset, len)
}

#[cfg(target_os = "linux")]
fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "preallocation out of range"));
    };
    loop {
        // SAFETY: fallocate only reads its integer arguments; the descriptor is open for as
        // long as `file` is borrowed.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn preallocate(_: &File, _: u64, _: u64) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "preallocation needs Linux"))
}

#[cfg(not(target_os = "linux"))]
fn punch(_: &File, _: u64, _: u64) -> io::Result<()> {
    Ok(())
}
