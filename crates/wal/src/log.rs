//! The segmented log: frames in append-only files, an in-memory index, and durable metadata.
//!
//! [`Log`] is the file I/O around the pure [`crate::codec`] and [`crate::repair`]. See the crate
//! docs for the directory layout and the life of an entry.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::codec::{self, Frame};
use crate::repair::{self, Verdict};
use crate::{Error, Lsn, Result, Term, disk};

mod files;
mod room;

use files::{decode_purged, encode_purged, list_segments, read_at, write_at};

/// Metadata file holding the vote.
const VOTE: &str = "vote";
/// Metadata file holding the committed position.
const COMMITTED: &str = "committed";
/// Metadata file holding the last purged `(index, term)`.
const PURGED: &str = "purged";
/// Extension of segment files.
const SEGMENT_EXT: &str = ".wal";
/// Digits in a segment file name: enough for any `u64`, so names sort like numbers.
const SEGMENT_DIGITS: usize = 20;

/// Tuning knobs for a [`Log`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// A new segment file is started by the first append after the current one has reached this
    /// many bytes. One append never spans two segments, so a segment can exceed it by up to one
    /// batch. Default 64 MiB.
    pub segment_bytes: u64,
    /// After each fdatasync of a segment, record the length now durable in `<segment>.synced`
    /// (a plain write, not itself synced). Only for fault testing: `keel-chaos` simulates a
    /// power loss by cutting each segment back to its mark, which is what a real one would
    /// keep. Default off.
    pub sync_marks: bool,
    /// A planted bug, for testing the fault harness only: appends skip their fdatasync (and
    /// so never advance the sync marks). Default off.
    pub unsafe_skip_fsync: bool,
    /// A planted bug, for testing the fault harness only: a segment damaged in a way a torn
    /// write cannot explain is cut at the damage, and every later segment deleted, instead of
    /// failing [`Log::open`]: the node starts on a log that lost entries. Default off.
    pub unsafe_trust_damage: bool,
    /// Disk space kept preallocated past the last frame, so that appends the callers agreed
    /// to take cannot fail on a full disk (see [`Log::ensure_room`]); topped up when it falls
    /// below half. 0 keeps none. Default 8 MiB.
    pub room_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            sync_marks: false,
            unsafe_skip_fsync: false,
            unsafe_trust_damage: false,
            room_bytes: 8 << 20,
        }
    }
}

/// Records `len` as the durable length of the segment at `path` (see [`Options::sync_marks`]).
fn write_sync_mark(path: &Path, len: u64) {
    let mut mark = path.as_os_str().to_owned();
    mark.push(".synced");
    if let Err(e) = fs::write(&mark, len.to_string()) {
        eprintln!("wal: writing sync mark {}: {e}", Path::new(&mark).display());
    }
}

/// One segment file.
struct Segment {
    /// Where the file is.
    path: PathBuf,
    /// The open file, readable and writable.
    file: File,
    /// The file's length: the end of its last valid frame.
    len: u64,
    /// Where the blocks preallocated for it end (at least `len`; see [`Log::room`]).
    allocated: u64,
}

/// Where one entry lives on disk.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The entry's term, kept in memory to answer [`Log::term_at`] without I/O.
    term: Term,
    /// The key (first index) of the segment holding the entry.
    segment: Lsn,
    /// Byte offset of the entry's frame in the segment.
    offset: u64,
    /// Length of the whole frame.
    len: u64,
}

/// A durable, segmented log of [`Frame`]s, plus the small pieces of state that Raft keeps next to
/// its log (vote, committed position, purge point).
///
/// Invariants:
///
/// - Entries are contiguous: indexes `first_index()..=last entry` are all present, with no hole.
/// - Terms never decrease along the log, starting from the last purged term.
/// - Every entry is durable: [`Log::append`] returns only after its fdatasync, and a failed fsync
///   aborts the process rather than letting a later call pretend the data is on disk.
/// - Each segment file is named by the index of its first frame, and holds the frames
///   `name..next segment's name` back to back with nothing after the last one; only the last
///   segment is ever written to.
/// - The in-memory index (`entries`) matches the files byte for byte: every slot points at a
///   frame that decodes to that index and term.
/// - If something was purged, `last_purged < first_index()`, and when entries remain the first
///   one is `last_purged + 1`. Purging never uncovers a hole, and [`Log::last`] never goes below
///   the purge point.
/// - No truncation goes below the purge point: purged entries were applied, hence committed, and
///   committed entries are never truncated.
/// - The vote, the committed position and the purge point are each replaced atomically.
pub struct Log {
    /// The directory holding segments and metadata files.
    dir: PathBuf,
    /// Tuning knobs.
    options: Options,
    /// Segment files by first index; the last one is the one appended to.
    segments: BTreeMap<Lsn, Segment>,
    /// Where each present entry lives; `entries[i]` holds index `first + i`.
    entries: VecDeque<Slot>,
    /// Index of `entries[0]`; meaningless while `entries` is empty.
    first: Lsn,
    /// The last purged `(index, term)`, if anything was ever purged.
    last_purged: Option<(Lsn, Term)>,
    /// The last saved vote, opaque.
    vote: Option<Vec<u8>>,
    /// The last saved committed position, opaque.
    committed: Option<Vec<u8>>,
    /// Segments (by key) written since their last fdatasync.
    unsynced: BTreeSet<Lsn>,
    /// Whether the log keeps room ahead of its end ([`Log::room`]): on unless turned off or
    /// not supported by the file system.
    room_on: bool,
}

/// The fdatasyncs that make everything appended so far durable, taken by [`Log::pending_sync`]
/// and run with [`PendingSync::sync`] without holding the log.
#[derive(Debug)]
pub struct PendingSync {
    /// Each written segment: a handle on its file, its path (for errors and sync marks) and
    /// the length the sync covers.
    files: Vec<(File, PathBuf, u64)>,
    /// Write sync marks after the sync ([`Options::sync_marks`]).
    marks: bool,
    /// The planted skip-fsync bug ([`Options::unsafe_skip_fsync`]): do nothing.
    skip: bool,
    /// The last index in the log when the sync was taken: durable once it has run.
    last: Option<Lsn>,
}

impl PendingSync {
    /// The last index this sync makes durable.
    pub fn last(&self) -> Option<Lsn> {
        self.last
    }

    /// Fdatasyncs every segment written, in order; aborts the process if one fails (see
    /// [`crate::Log`]'s invariants).
    pub fn sync(self) {
        if self.skip {
            return;
        }
        for (file, path, len) in &self.files {
            disk::sync_data(file, path);
            if self.marks {
                write_sync_mark(path, *len);
            }
        }
    }
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("first_index", &self.first_index())
            .field("last", &self.last())
            .field("last_purged", &self.last_purged)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Opens the log in `dir`, creating the directory if needed.
    ///
    /// Validates every frame of every segment ([`crate::repair::scan`]): a torn tail in the last
    /// segment is cut off (and the cut fsynced), any other damage fails with
    /// [`Error::Corrupt`] naming the file, offset and index. Also finishes a purge or rotation
    /// that a crash interrupted.
    pub fn open(dir: &Path, options: Options) -> Result<Log> {
        fs::create_dir_all(dir)?;
        disk::remove_temp_files(dir)?;
        let vote = disk::read_meta(dir, VOTE)?;
        // The committed position is a hint, written without fsync
        // ([`Log::save_committed_unsynced`]): a torn or damaged copy is dropped, not fatal.
        let committed = match disk::read_meta(dir, COMMITTED) {
            Ok(committed) => committed,
            Err(Error::Corrupt { reason, .. }) => {
                eprintln!("wal: ignoring a damaged committed-position file: {reason}");
                None
            }
            Err(err) => return Err(err),
        };
        let last_purged = match disk::read_meta(dir, PURGED)? {
            Some(bytes) => Some(decode_purged(&bytes, &dir.join(PURGED))?),
            None => None,
        };
        let mut log = Log {
            dir: dir.to_path_buf(),
            options: options.clone(),
            segments: BTreeMap::new(),
            entries: VecDeque::new(),
            first: 0,
            last_purged,
            vote,
            committed,
            unsynced: BTreeSet::new(),
            room_on: options.room_bytes > 0,
        };

        let mut names = list_segments(dir)?;
        // A purge records the purge point before deleting segments; finish one a crash cut short.
        // A segment is wholly purged when the next one starts at or below the purge point + 1.
        if let Some((purged, _)) = last_purged {
            while names.len() >= 2 && names[1] <= purged.saturating_add(1) {
                fs::remove_file(log.segment_path(names.remove(0)))?;
            }
        }
        let count = names.len();
        let mut cut = false;
        for (i, name) in names.into_iter().enumerate() {
            if cut {
                fs::remove_file(log.segment_path(name))?;
                continue;
            }
            match log.load_segment(name, i + 1 == count) {
                Err(Error::Corrupt { path, offset, reason, .. }) if options.unsafe_trust_damage => {
                    eprintln!(
                        "wal: planted bug trust-damaged-log: cutting {} at offset {offset} \
                         ({reason}), and every later segment",
                        path.display()
                    );
                    OpenOptions::new().write(true).open(&path)?.set_len(offset)?;
                    log.load_segment(name, true)?;
                    cut = true;
                }
                loaded => loaded?,
            }
        }
        log.drop_purged_entries()?;

        if let (Some((purged, _)), Some(first)) = (log.last_purged, log.first_index())
            && Some(first) != purged.checked_add(1)
        {
            let path = log.segments.values().next().map(|s| s.path.clone()).unwrap_or_default();
            return Err(Error::Corrupt {
                lsn: purged.checked_add(1),
                path,
                offset: 0,
                reason: format!(
                    "log has a hole: purged through {purged}, but the first entry is {first}"
                ),
            });
        }
        log.top_up();
        Ok(log)
    }

    /// Validates, repairs and indexes one segment file during [`Log::open`].
    fn load_segment(&mut self, name: Lsn, last: bool) -> Result<()> {
        let path = self.segment_path(name);
        let bytes = fs::read(&path)?;
        let scan = repair::scan(&bytes, name, last);
        let mut len = bytes.len() as u64;
        drop(bytes);
        match scan.verdict {
            Verdict::Intact => {}
            Verdict::TornTail { offset, lsn, reason } => {
                eprintln!(
                    "wal: cutting torn tail of {} at offset {offset} (lsn {lsn}, {} bytes): {reason}",
                    path.display(),
                    len - offset
                );
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(offset)?;
                disk::sync_all(&file, &path);
                len = offset;
            }
            Verdict::Corrupt { offset, lsn, reason } => {
                return Err(Error::Corrupt { lsn, path, offset, reason });
            }
        }

        let Some(head) = scan.frames.first() else {
            if !last {
                let reason = "empty segment before the last one".to_string();
                return Err(Error::Corrupt { lsn: Some(name), path, offset: 0, reason });
            }
            // A crash between creating a segment and writing to it: nothing was acknowledged.
            fs::remove_file(&path)?;
            return disk::sync_dir(&self.dir);
        };
        if let Some((prev, prev_term)) = self.last_entry() {
            let reason = if Some(name) != prev.checked_add(1) {
                Some(format!("segment starts at index {name}, but the previous one ends at {prev}"))
            } else if head.term < prev_term {
                Some(format!(
                    "term goes backwards across segments: {} after {prev_term}",
                    head.term
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::Corrupt { lsn: prev.checked_add(1), path, offset: 0, reason });
            }
        } else {
            self.first = name;
        }
        self.entries.extend(scan.frames.iter().map(|p| Slot {
            term: p.term,
            segment: name,
            offset: p.offset,
            len: p.len,
        }));
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        self.segments.insert(name, Segment { path, file, len, allocated: len });
        Ok(())
    }

    /// Appends `frames`, durably: one write and one fdatasync for the whole batch.
    ///
    /// The first frame's index must follow [`Log::last`] (any index is accepted by a log that is
    /// empty and was never purged), the indexes must be contiguous and the terms must not
    /// decrease; otherwise [`Error::InvalidInput`] and nothing is written. An empty batch is a
    /// no-op. If the fdatasync fails the process aborts (see [`crate::Log`]'s invariants).
    pub fn append(&mut self, frames: &[Frame]) -> Result<()> {
        self.append_unsynced(frames)?;
        if let Some(pending) = self.pending_sync() {
            pending.sync();
        }
        Ok(())
    }

    /// Like [`Log::append`], but without the fdatasync: the frames are written and readable
    /// when it returns, and durable only once a [`PendingSync`] taken afterwards (by
    /// [`Log::pending_sync`]) has synced. This lets a caller sync outside its lock on the log,
    /// while further appends and reads go on, and cover several appends with one fdatasync.
    /// Nothing written this way may be acknowledged before that sync.
    pub fn append_unsynced(&mut self, frames: &[Frame]) -> Result<()> {
        let Some(head) = frames.first() else {
            return Ok(());
        };
        let mut expected = match self.last() {
            Some((index, _)) => index.checked_add(1),
            None => Some(head.index),
        };
        let mut prev_term = self.last().map(|(_, term)| term);
        for frame in frames {
            if expected != Some(frame.index) {
                return Err(Error::InvalidInput(match expected {
                    Some(want) => {
                        format!("cannot append index {}: the log expects {want}", frame.index)
                    }
                    None => format!("cannot append index {}: the log is full", frame.index),
                }));
            }
            if let Some(term) = prev_term
                && frame.term < term
            {
                return Err(Error::InvalidInput(format!(
                    "cannot append index {} with term {}: the previous term is {term}",
                    frame.index, frame.term
                )));
            }
            expected = frame.index.checked_add(1);
            prev_term = Some(frame.term);
        }

        let mut buf = Vec::with_capacity(frames.iter().map(Frame::encoded_len).sum());
        for frame in frames {
            codec::encode(frame, &mut buf)?;
        }
        let key = self.segment_for_append(head.index, buf.len() as u64)?;
        let segment =
            self.segments.get_mut(&key).expect("segment_for_append returns a live segment");
        let start = segment.len;
        if let Err(err) = write_at(&segment.file, start, &buf) {
            // Leave no partial frame behind: a later, shorter append would otherwise be followed
            // by stale bytes that could even decode as valid frames.
            if let Err(undo) = segment.file.set_len(start) {
                eprintln!(
                    "wal: append to {} failed ({err}) and undoing it failed too ({undo}); aborting",
                    segment.path.display()
                );
                std::process::abort();
            }
            // `set_len` gave back the blocks past `start`, the room among them.
            segment.allocated = start;
            self.top_up();
            return Err(err.into());
        }
        segment.len = start + buf.len() as u64;
        segment.allocated = segment.allocated.max(segment.len);
        self.unsynced.insert(key);

        if self.entries.is_empty() {
            self.first = head.index;
        }
        let mut offset = start;
        for frame in frames {
            let len = frame.encoded_len() as u64;
            self.entries.push_back(Slot { term: frame.term, segment: key, offset, len });
            offset += len;
        }
        self.top_up();
        Ok(())
    }

    /// Returns the segment to append a batch of `bytes` starting at `index` to, starting a new
    /// one if the current one is full (or there is none). A new segment is started only if its
    /// room can be allocated; otherwise the batch goes into the current one, whose room was
    /// promised (see the `room` module).
    fn segment_for_append(&mut self, index: Lsn, bytes: u64) -> Result<Lsn> {
        if let Some((&key, segment)) = self.segments.last_key_value() {
            if segment.len == 0 {
                // Left empty by a failed append (or a failed directory sync) right after its
                // creation. Reuse it if the log still starts there, making its name durable
                // again in case the failure was the sync; otherwise start afresh.
                if key == index {
                    disk::sync_dir(&self.dir)?;
                    return Ok(key);
                }
                self.remove_segment(key)?;
            } else if segment.len < self.options.segment_bytes {
                return Ok(key);
            }
        }
        let current = self.segments.keys().next_back().copied();
        match self.start_segment(index, bytes) {
            Ok(()) => {}
            Err(err) if err.is_no_space() && current.is_some_and(|key| self.fits(key, bytes)) => {
                return Ok(current.expect("checked above"));
            }
            Err(err) => return Err(err),
        }
        if let Some(key) = current {
            self.release(key);
        }
        // The new name must be durable before anything in the file can count as durable.
        disk::sync_dir(&self.dir)?;
        Ok(index)
    }

    /// Creates the segment starting at `index`, with room for `bytes` (or the configured
    /// room) when the log keeps room. On failure nothing is left behind.
    fn start_segment(&mut self, index: Lsn, bytes: u64) -> Result<()> {
        let path = self.segment_path(index);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        self.segments.insert(index, Segment { path: path.clone(), file, len: 0, allocated: 0 });
        if self.room_on
            && let Err(err) = self.allocate(index, bytes.max(self.options.room_bytes))
        {
            self.segments.remove(&index);
            let _ = fs::remove_file(&path);
            return Err(err.into());
        }
        if self.options.sync_marks {
            write_sync_mark(&path, 0);
        }
        Ok(())
    }

    /// Whether an append of `bytes` fits in the room of segment `key`.
    fn fits(&self, key: Lsn, bytes: u64) -> bool {
        self.room_on
            && self.segments.get(&key).is_some_and(|s| s.allocated.saturating_sub(s.len) >= bytes)
    }

    /// The syncs that would make every append so far durable, or `None` if everything
    /// written is already durable. Taking it marks the segments clean: the caller must run it.
    pub fn pending_sync(&mut self) -> Option<PendingSync> {
        if self.unsynced.is_empty() {
            return None;
        }
        let mut files = Vec::new();
        for key in std::mem::take(&mut self.unsynced) {
            // A segment removed since (truncated away or purged) needs no sync.
            let Some(segment) = self.segments.get(&key) else { continue };
            match segment.file.try_clone() {
                Ok(file) => files.push((file, segment.path.clone(), segment.len)),
                // Without a handle the data cannot be made durable: the same as a failed fsync.
                Err(err) => {
                    eprintln!(
                        "wal: cannot open {} again to fsync it: {err}; aborting",
                        segment.path.display()
                    );
                    std::process::abort();
                }
            }
        }
        Some(PendingSync {
            last: self.last().map(|(index, _)| index),
            files,
            marks: self.options.sync_marks,
            skip: self.options.unsafe_skip_fsync,
        })
    }

    /// Reads the entries present within `range`, in order. Parts of the range outside the log
    /// (purged, or not yet written) are skipped.
    ///
    /// Every frame is decoded and checksummed again, so damage that happened after
    /// [`Log::open`] surfaces as [`Error::Corrupt`] rather than as wrong data.
    pub fn read(&mut self, range: Range<Lsn>) -> Result<Vec<Frame>> {
        let Some((last, _)) = self.last_entry() else {
            return Ok(Vec::new());
        };
        let start = range.start.max(self.first);
        let Some(end) = range.end.checked_sub(1).map(|end| end.min(last)) else {
            return Ok(Vec::new());
        };
        if start > end {
            return Ok(Vec::new());
        }
        // Positions in `entries`; both fit in usize because the deque holds them.
        let lo = (start - self.first) as usize;
        let hi = (end - self.first) as usize;
        let mut frames = Vec::with_capacity(hi - lo + 1);
        let mut pos = lo;
        while pos <= hi {
            // Read a run of entries from the same segment with a single read.
            let key = self.entries[pos].segment;
            let mut run_end = pos;
            while run_end < hi && self.entries[run_end + 1].segment == key {
                run_end += 1;
            }
            let from = self.entries[pos].offset;
            let to = self.entries[run_end].offset + self.entries[run_end].len;
            let segment = self.segments.get(&key).expect("every slot's segment is open");
            let bytes = read_at(&segment.file, from, to - from)?;
            let mut at = 0usize;
            for p in pos..=run_end {
                let slot = self.entries[p];
                let index = self.first + p as u64;
                let corrupt = |reason: String| Error::Corrupt {
                    lsn: Some(index),
                    path: segment.path.clone(),
                    offset: slot.offset,
                    reason,
                };
                let (frame, len) =
                    codec::decode(&bytes[at..]).map_err(|e| corrupt(e.to_string()))?;
                if frame.index != index || frame.term != slot.term || len as u64 != slot.len {
                    return Err(corrupt(format!(
                        "expected index {index} term {} ({} bytes), found index {} term {} ({len} bytes)",
                        slot.term, slot.len, frame.index, frame.term
                    )));
                }
                frames.push(frame.to_frame());
                at += len;
            }
            pos = run_end + 1;
        }
        Ok(frames)
    }

    /// The longest prefix of `range` whose frames take at most `max_bytes` on disk, but at
    /// least one entry when `range` holds any: for reading a bounded batch with [`Log::read`].
    pub fn prefix_within(&self, range: Range<Lsn>, max_bytes: u64) -> Range<Lsn> {
        let start = range.start.max(self.first);
        let mut end = start;
        let mut bytes = 0u64;
        while end < range.end {
            let Some(slot) = end.checked_sub(self.first).and_then(|p| self.entries.get(p as usize))
            else {
                break;
            };
            if end > start && bytes + slot.len > max_bytes {
                break;
            }
            bytes += slot.len;
            end += 1;
        }
        if end == start { range } else { range.start..end }
    }

    /// The index of the first entry present, or `None` if there is none.
    pub fn first_index(&self) -> Option<Lsn> {
        (!self.entries.is_empty()).then_some(self.first)
    }

    /// The `(index, term)` of the last entry; if there is none, the last purged one (so after
    /// purging everything, `last()` is the purge point); `None` for a log never written.
    pub fn last(&self) -> Option<(Lsn, Term)> {
        self.last_entry().or(self.last_purged)
    }

    /// The `(index, term)` of the last entry present.
    fn last_entry(&self) -> Option<(Lsn, Term)> {
        let slot = self.entries.back()?;
        Some((self.first + (self.entries.len() as u64 - 1), slot.term))
    }

    /// The term of the entry at `index`; for the last purged index, its remembered term (what
    /// Raft's consistency check needs at the boundary); otherwise `None`.
    pub fn term_at(&self, index: Lsn) -> Option<Term> {
        if let Some(slot) = self.slot(index) {
            return Some(slot.term);
        }
        self.last_purged.filter(|(purged, _)| *purged == index).map(|(_, term)| term)
    }

    /// The slot of the entry at `index`, if present.
    fn slot(&self, index: Lsn) -> Option<&Slot> {
        let offset = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.entries.get(offset)
    }

    /// Removes every entry with an index greater than `index` (`None`: every entry), durably:
    /// whole segments are deleted newest first, then the segment holding `index` is shortened
    /// with `set_len` and fsynced.
    ///
    /// Truncating below the purge point fails with [`Error::InvalidInput`]; truncating at or
    /// after the last entry is a no-op.
    pub fn truncate_after(&mut self, index: Option<Lsn>) -> Result<()> {
        if let Some((purged, _)) = self.last_purged
            && index.is_none_or(|index| index < purged)
        {
            return Err(Error::InvalidInput(format!(
                "cannot truncate after {index:?}: entries through {purged} are purged"
            )));
        }
        let Some((last, _)) = self.last_entry() else {
            return Ok(());
        };
        if index.is_some_and(|index| index >= last) {
            return Ok(());
        }
        let keep = match index {
            Some(index) if index >= self.first => (index - self.first + 1) as usize,
            _ => 0,
        };
        let target = keep.checked_sub(1).map(|k| self.entries[k]);

        // Newest first, each deletion durable before the next, so that a crash leaves a prefix
        // of the log and never a hole.
        let doomed: Vec<Lsn> = self
            .segments
            .keys()
            .rev()
            .copied()
            .take_while(|key| target.is_none_or(|t| *key > t.segment))
            .collect();
        for key in doomed {
            self.remove_segment(key)?;
        }
        if let Some(target) = target {
            let end = target.offset + target.len;
            let segment =
                self.segments.get_mut(&target.segment).expect("the target segment was kept");
            segment.file.set_len(end)?;
            disk::sync_all(&segment.file, &segment.path);
            if self.options.sync_marks {
                write_sync_mark(&segment.path, end);
            }
            segment.len = end;
            // `set_len` gave back the blocks past `end`, the room among them: take it again.
            segment.allocated = end;
        }
        self.entries.truncate(keep);
        self.top_up();
        Ok(())
    }

    /// Removes every entry with an index up to and including `index`, first recording
    /// `(index, term)` durably as the purge point, then deleting the segments that hold no
    /// remaining entry. `index` may lie beyond the last entry (a snapshot covers more than the
    /// log holds): then every entry goes and the next append must be `index + 1`.
    ///
    /// A purge at or below the current purge point is a no-op. Fails with
    /// [`Error::InvalidInput`] if the entry at `index` has a different term, or if `index + 1`
    /// is below the first entry (that would leave a hole between purge point and log).
    ///
    /// Deleting the segments need not be durable: [`Log::open`] finishes the job after a crash.
    pub fn purge_through(&mut self, index: Lsn, term: Term) -> Result<()> {
        if self.last_purged.is_some_and(|(purged, _)| index <= purged) {
            return Ok(());
        }
        if let Some(slot) = self.slot(index)
            && slot.term != term
        {
            return Err(Error::InvalidInput(format!(
                "cannot purge through {index} with term {term}: the entry there has term {}",
                slot.term
            )));
        }
        if let Some(first) = self.first_index()
            && index.saturating_add(1) < first
        {
            return Err(Error::InvalidInput(format!(
                "cannot purge through {index}: the log starts at {first}, which would leave a hole"
            )));
        }
        let purged = encode_purged(index, term);
        self.with_space(|log| disk::write_meta(&log.dir, PURGED, &purged))?;
        self.last_purged = Some((index, term));
        self.drop_purged_entries()
    }

    /// Forgets entries at or below the purge point and deletes segments left without entries.
    fn drop_purged_entries(&mut self) -> Result<()> {
        let Some((purged, _)) = self.last_purged else {
            return Ok(());
        };
        if !self.entries.is_empty() && self.first <= purged {
            let count = (purged - self.first).saturating_add(1).min(self.entries.len() as u64);
            self.entries.drain(..count as usize);
            self.first += count;
        }
        let live = self.entries.front().map(|slot| slot.segment);
        let dead: Vec<Lsn> =
            self.segments.keys().copied().take_while(|key| live.is_none_or(|l| *key < l)).collect();
        for key in dead {
            let path = self.segments[&key].path.clone();
            fs::remove_file(&path)?;
            self.segments.remove(&key);
        }
        Ok(())
    }

    /// The last purged `(index, term)`, or `None` if nothing was ever purged.
    pub fn last_purged(&self) -> Option<(Lsn, Term)> {
        self.last_purged
    }

    /// Durably replaces the saved vote (temporary file, fsync, rename, directory fsync).
    pub fn save_vote(&mut self, bytes: &[u8]) -> Result<()> {
        self.with_space(|log| disk::write_meta(&log.dir, VOTE, bytes))?;
        self.vote = Some(bytes.to_vec());
        Ok(())
    }

    /// The last saved vote.
    pub fn vote(&self) -> Option<Vec<u8>> {
        self.vote.clone()
    }

    /// Durably replaces the saved committed position, like [`Log::save_vote`].
    pub fn save_committed(&mut self, bytes: &[u8]) -> Result<()> {
        self.with_space(|log| disk::write_meta(&log.dir, COMMITTED, bytes))?;
        self.committed = Some(bytes.to_vec());
        Ok(())
    }

    /// Saves the committed position without waiting for the disk: no fsync of the file or
    /// of the directory. Raft treats it as a lower bound on what is committed (entries up to
    /// it may be applied at start without asking the leader), so losing the latest value to a
    /// crash only means applying less at start. The caller must only save a position whose
    /// entries are durable in this log, or a power loss could leave it pointing past the log.
    pub fn save_committed_unsynced(&mut self, bytes: &[u8]) -> Result<()> {
        disk::write_meta_unsynced(&self.dir, COMMITTED, bytes)?;
        self.committed = Some(bytes.to_vec());
        Ok(())
    }

    /// Whether everything appended is durable (no [`Log::append_unsynced`] since the last
    /// [`Log::pending_sync`]).
    pub fn is_synced(&self) -> bool {
        self.unsynced.is_empty()
    }

    /// The last saved committed position.
    pub fn committed(&self) -> Option<Vec<u8>> {
        self.committed.clone()
    }

    /// Deletes a segment file and forgets it and its entries; the deletion is durable.
    fn remove_segment(&mut self, key: Lsn) -> Result<()> {
        fs::remove_file(&self.segments[&key].path)?;
        self.segments.remove(&key);
        while self.entries.back().is_some_and(|slot| slot.segment == key) {
            self.entries.pop_back();
        }
        disk::sync_dir(&self.dir)
    }

    /// The path of the segment whose first index is `first`.
    fn segment_path(&self, first: Lsn) -> PathBuf {
        self.dir.join(format!("{first:0SEGMENT_DIGITS$}{SEGMENT_EXT}"))
    }
}
