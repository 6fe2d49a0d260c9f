//! openraft's log storage on Keel's WAL: the Raft log *is* the write-ahead log.
//!
//! [`LogStore`] implements `RaftLogStorage` and `RaftLogReader` on top of [`wal::Log`]. Each
//! openraft entry becomes one [`wal::Frame`]: the frame's term and index are the entry's log id
//! (classic Raft ids, so `(term, index)` is the whole id), and its payload is one kind byte and a
//! body:
//!
//! | kind | entry payload | body |
//! |---|---|---|
//! | 0 | `Blank` | empty |
//! | 1 | `Normal(record)` | [`wal::Record::encode`] |
//! | 2 | `Membership(m)` | `serde_json` of the membership |
//!
//! Membership is JSON because it is an openraft type: a named-field encoding keeps stored
//! entries readable across openraft's alpha releases, where new fields would break a positional
//! format. The vote and the committed log id are stored as JSON through
//! [`wal::Log::save_vote`] / [`wal::Log::save_committed`], for the same reason.
//!
//! # How calls flow
//!
//! The log sits behind an `Arc<std::sync::Mutex<_>>`; [`LogStore`] is a cheap clone and doubles as
//! its own log reader. Every call that touches the log runs on tokio's blocking pool
//! (`spawn_blocking`), because file I/O and fsync must not stall the async workers, and because a
//! reader may have to wait for the mutex while an append is in its fsync.
//!
//! - `append`: encode the entries and write them with [`wal::Log::append_unsynced`] (one
//!   write), so they are readable when `append` returns, as openraft requires; then hand the
//!   callback to the sync thread, which fdatasyncs ([`wal::PendingSync`], outside the lock)
//!   and only then calls `callback.io_completed(Ok(()))`. openraft acknowledges nothing (votes,
//!   append responses, commits) before that callback, so a write is still acknowledged only
//!   once durable; meanwhile the leader already replicates the entries, and one fdatasync
//!   covers every append that arrived during the previous one.
//! - `save_committed`: the committed log id is a hint (openraft applies up to it at start
//!   without asking the leader). The sync thread writes it without fsync, and only once this
//!   log holds its entries durably, so it never points past what a power loss leaves.
//! - `truncate_after` / `purge`: [`wal::Log::truncate_after`] / [`wal::Log::purge_through`],
//!   both durable before they return.
//! - `get_log_state`: `last_log_id` is the last entry, or the purge point once everything is
//!   purged, exactly [`wal::Log::last`].
//!
//! - The log's room ([`wal::Log::room`], space preallocated past its end) is published after
//!   every change ([`LogStore::room`]), so [`crate::space::Space`] checks it on every write
//!   without the lock; [`LogStore::ensure_room`] preallocates more when a write needs it.
//!
//! Errors become `std::io::Error` (openraft's storage traits speak nothing else): corruption is
//! `InvalidData`, a request that would break the log's invariants is `InvalidInput`.
//!
//! # Bounded reads
//!
//! - `limited_get_log_entries` (replication) reads at most [`MAX_BATCH_BYTES`] of entries:
//!   openraft caps a batch at 300 entries, not by bytes.
//! - `entries_stream` (applying) reads the committed range [`MAX_BATCH_BYTES`] at a time,
//!   where openraft's default reads the whole range before applying the first entry.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, Range, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use futures::{Stream, TryStreamExt};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend, RaftLogReader};
use wal::{Frame, Record};

use crate::types::{Entry, LogId, TypeConfig, Vote};

/// Reads of at most this many entries run on the calling thread ([`LogStore::run_here`]).
const SMALL_READ_ENTRIES: u64 = 64;
/// Appends of at most this many payload bytes run on the calling thread.
const SMALL_WRITE_BYTES: usize = 256 << 10;

/// The number of indexes in `range`.
fn range_len(range: &Range<u64>) -> u64 {
    range.end.saturating_sub(range.start)
}

/// Payload kind byte of a `Blank` entry.
const BLANK: u8 = 0;
/// Payload kind byte of a `Normal` entry.
const NORMAL: u8 = 1;
/// Payload kind byte of a `Membership` entry.
pub(crate) const MEMBERSHIP: u8 = 2;

/// openraft's log storage and log reader, on a [`wal::Log`].
///
/// Clones share the same log.
#[derive(Clone, Debug)]
pub struct LogStore {
    /// The log, shared by the storage handle and every reader handed to replication tasks.
    log: Arc<Mutex<wal::Log>>,
    /// Where `append` hands its flush callbacks (and `save_committed` its nudges): the sync
    /// thread fdatasyncs what was written and then calls them, in order.
    flushes: mpsc::Sender<ToSync>,
    /// The latest committed log id openraft gave, not yet written (see `save_committed`).
    committed: Arc<Mutex<Option<LogId>>>,
    /// The log's room ([`wal::Log::room`]) after its last change, `u64::MAX` for none: read
    /// without the lock by [`crate::space::Space`] on every write.
    room: Arc<AtomicU64>,
}

/// A message to the sync thread.
enum ToSync {
    /// Make an append durable, then report it.
    Flush(IOFlushed<TypeConfig>),
    /// A new committed log id is waiting to be written.
    Committed,
    /// Answer once everything sent before has been handled ([`LogStore::flush`]).
    Barrier(mpsc::Sender<()>),
}

/// The sync thread: waits for appended-but-unsynced writes, makes them durable with one
/// fdatasync per segment for all the appends waiting (group fsync), then reports each append
/// flushed, in order. It also writes the committed log id, once the entries it covers are
/// durable here. Ends when every [`LogStore`] clone is gone.
fn sync_thread(
    log: Arc<Mutex<wal::Log>>,
    committed: Arc<Mutex<Option<LogId>>>,
    messages: mpsc::Receiver<ToSync>,
) {
    let poisoned =
        || io::Error::other("the log's mutex is poisoned: an earlier log operation panicked");
    while let Ok(first) = messages.recv() {
        let mut callbacks = Vec::new();
        let mut barriers = Vec::new();
        for message in std::iter::once(first).chain(messages.try_iter()) {
            match message {
                ToSync::Flush(callback) => callbacks.push(callback),
                ToSync::Committed => {}
                ToSync::Barrier(done) => barriers.push(done),
            }
        }
        // Every callback was sent after its append wrote under the lock, so the syncs taken
        // now cover all of them.
        let (pending, synced_last) = match log.lock() {
            Ok(mut log) => {
                let synced = log.is_synced().then(|| log.last().map(|(index, _)| index));
                (log.pending_sync(), synced.flatten())
            }
            Err(_) => {
                for callback in callbacks {
                    callback.io_completed(Err(poisoned()));
                }
                continue;
            }
        };
        let durable = match pending {
            Some(pending) => {
                let last = pending.last();
                pending.sync(); // Aborts the process if an fdatasync fails.
                last
            }
            None => synced_last,
        };
        for callback in callbacks {
            callback.io_completed(Ok(()));
        }
        save_committed(&log, &committed, durable);
        for done in barriers {
            let _ = done.send(());
        }
    }
}

/// Writes the waiting committed log id if this node's log holds its entries durably (through
/// `durable`); otherwise it waits for a later sync. Failures only cost the hint.
fn save_committed(log: &Mutex<wal::Log>, committed: &Mutex<Option<LogId>>, durable: Option<u64>) {
    let Ok(mut waiting) = committed.lock() else { return };
    let Some(id) = *waiting else { return };
    if durable.is_none_or(|durable| id.index > durable) {
        return;
    }
    *waiting = None;
    drop(waiting);
    let Ok(bytes) = serde_json::to_vec(&Some(id)) else { return };
    if let Ok(mut log) = log.lock()
        && let Err(e) = log.save_committed_unsynced(&bytes)
    {
        tracing::warn!(error = %e, "could not save the committed log id");
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir` with default options; see [`wal::Log::open`].
    pub fn open(dir: &Path) -> Result<LogStore, wal::Error> {
        Self::open_with(dir, wal::Options::default())
    }

    /// Opens (or creates) the log in `dir` with the given options.
    pub fn open_with(dir: &Path, options: wal::Options) -> Result<LogStore, wal::Error> {
        let log = Arc::new(Mutex::new(wal::Log::open(dir, options)?));
        let committed = Arc::new(Mutex::new(None));
        let (flushes, messages) = mpsc::channel();
        let (for_thread, committed_for_thread) = (Arc::clone(&log), Arc::clone(&committed));
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || sync_thread(for_thread, committed_for_thread, messages))
            .map_err(wal::Error::from)?;
        let room = Arc::new(AtomicU64::new(u64::MAX));
        let store = LogStore { log, flushes, committed, room };
        store
            .run_here(|log| {
                store.publish_room(log);
                Ok(())
            })
            .map_err(wal::Error::from)?;
        Ok(store)
    }

    /// Records the log's room for [`LogStore::room`]; called under the lock after each change.
    fn publish_room(&self, log: &wal::Log) {
        self.room.store(log.room().unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The room the log holds preallocated past its end ([`wal::Log::room`]) after its last
    /// change; `None` when it keeps none.
    pub fn room(&self) -> Option<u64> {
        Some(self.room.load(Ordering::Relaxed)).filter(|room| *room != u64::MAX)
    }

    /// [`wal::Log::ensure_room`], on the calling thread (it may preallocate: a few
    /// milliseconds at most).
    pub fn ensure_room(&self, bytes: u64) -> io::Result<()> {
        self.run_here(|log| {
            let done = log.ensure_room(bytes);
            self.publish_room(log);
            Ok(done?)
        })
    }

    /// [`wal::Log::refill_room`], on the calling thread.
    pub fn refill_room(&self) -> io::Result<()> {
        self.run_here(|log| {
            let done = log.refill_room();
            self.publish_room(log);
            Ok(done?)
        })
    }

    /// Waits until the sync thread has handled everything handed to it so far: appends are
    /// durable and reported, and the latest committed log id is written if its entries are
    /// durable. For an orderly shutdown, and for tests that reopen the log.
    pub async fn flush(&self) -> io::Result<()> {
        let (done, wait) = mpsc::channel();
        self.flushes
            .send(ToSync::Barrier(done))
            .map_err(|_| io::Error::other("the log's sync thread is gone"))?;
        tokio::task::spawn_blocking(move || wait.recv())
            .await
            .map_err(|e| io::Error::other(format!("log task failed: {e}")))?
            .map_err(|_| io::Error::other("the log's sync thread is gone"))
    }

    /// Runs `f` on the log right here, on the calling (async) thread, for work known to be
    /// small: a hop to the blocking pool and back costs two thread wake-ups, more than
    /// writing or reading a few kilobytes from the page cache. The sync thread fdatasyncs
    /// outside the lock; a large read on the blocking pool (a catch-up batch of up to
    /// [`MAX_BATCH_BYTES`]) can hold it for a few milliseconds, and the caller then waits.
    fn run_here<T>(&self, f: impl FnOnce(&mut wal::Log) -> io::Result<T>) -> io::Result<T> {
        let mut log = self.log.lock().map_err(|_| {
            io::Error::other("the log's mutex is poisoned: an earlier log operation panicked")
        })?;
        f(&mut log)
    }

    /// Runs `f` on the log on tokio's blocking pool.
    async fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut wal::Log) -> io::Result<T> + Send + 'static,
    {
        let log = Arc::clone(&self.log);
        tokio::task::spawn_blocking(move || {
            let mut log = log.lock().map_err(|_| {
                io::Error::other("the log's mutex is poisoned: an earlier log operation panicked")
            })?;
            f(&mut log)
        })
        .await
        .map_err(|err| io::Error::other(format!("log task failed: {err}")))?
    }
}

/// What [`LogStore::read_retained`] found.
#[derive(Debug)]
pub(crate) enum Retained {
    /// The entries from the start of the range on (none if the range is past the end).
    Entries(Vec<Entry>),
    /// The range starts before the first entry this log still holds: the entries were
    /// compacted away. `first` is the first index still held (or that will be written next).
    Compacted {
        /// The first index this log can still serve.
        first: u64,
    },
}

impl LogStore {
    /// Reads a bounded prefix of `range` (at most `max_entries` entries and about `max_bytes`
    /// bytes, at least one entry) for a reader outside Raft, checking under the same lock
    /// that the range does not start in the purged part: [`wal::Log::read`] silently skips
    /// purged indexes, which a reader that must see every entry cannot accept.
    pub(crate) async fn read_retained(
        &self,
        range: Range<u64>,
        max_entries: u64,
        max_bytes: u64,
    ) -> io::Result<Retained> {
        self.run(move |log| {
            let first = match (log.first_index(), log.last_purged()) {
                (Some(first), _) => first,
                (None, Some((purged, _))) => purged + 1,
                (None, None) => 0,
            };
            if range.start < first {
                return Ok(Retained::Compacted { first });
            }
            let end = range.end.min(range.start.saturating_add(max_entries));
            let range = log.prefix_within(range.start..end, max_bytes);
            let entries =
                log.read(range)?.into_iter().map(decode_entry).collect::<io::Result<_>>()?;
            Ok(Retained::Entries(entries))
        })
        .await
    }
}

/// Encodes an openraft entry as a WAL frame.
pub(crate) fn encode_entry(entry: &Entry) -> io::Result<Frame> {
    let payload = match &entry.payload {
        EntryPayload::Blank => vec![BLANK],
        EntryPayload::Normal(record) => {
            let mut payload = Vec::with_capacity(1 + record.size());
            payload.push(NORMAL);
            payload.extend_from_slice(&record.encode());
            payload
        }
        EntryPayload::Membership(membership) => {
            let mut payload = vec![MEMBERSHIP];
            serde_json::to_writer(&mut payload, membership).map_err(io::Error::other)?;
            payload
        }
    };
    Ok(Frame { term: entry.log_id.leader_id.term, index: entry.log_id.index, payload })
}

/// Decodes a WAL frame written by [`encode_entry`].
pub(crate) fn decode_entry(frame: Frame) -> io::Result<Entry> {
    let invalid = |reason: String| {
        io::Error::new(io::ErrorKind::InvalidData, format!("log entry {}: {reason}", frame.index))
    };
    let payload = match frame.payload.split_first() {
        Some((&BLANK, [])) => EntryPayload::Blank,
        Some((&NORMAL, body)) => {
            EntryPayload::Normal(Record::decode(body).map_err(|e| invalid(e.to_string()))?)
        }
        Some((&MEMBERSHIP, body)) => EntryPayload::Membership(
            serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?,
        ),
        Some((kind, body)) => {
            return Err(invalid(format!("unknown payload kind {kind} ({} bytes)", body.len())));
        }
        None => return Err(invalid("empty payload".to_string())),
    };
    Ok(Entry { log_id: LogId::new_term_index(frame.term, frame.index), payload })
}

/// Turns a WAL `(index, term)` into an openraft log id.
fn log_id((index, term): (wal::Lsn, wal::Term)) -> LogId {
    LogId::new_term_index(term, index)
}

/// Converts any range of indexes to the half-open range [`wal::Log::read`] takes.
fn to_range(range: &impl RangeBounds<u64>) -> Range<u64> {
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => start.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&end) => end.saturating_add(1),
        Bound::Excluded(&end) => end,
        Bound::Unbounded => u64::MAX,
    };
    start..end
}

/// Decodes a JSON value stored by this module.
fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> io::Result<T> {
    serde_json::from_slice(bytes).map_err(|err| {
        io::Error::new(io::ErrorKind::InvalidData, format!("stored {what} is not valid: {err}"))
    })
}

/// The most entry bytes (as stored) one replication batch reads; see
/// `limited_get_log_entries`.
pub const MAX_BATCH_BYTES: u64 = 8 << 20;

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let range = to_range(&range);
        let small = range_len(&range) <= SMALL_READ_ENTRIES;
        let read =
            move |log: &mut wal::Log| log.read(range)?.into_iter().map(decode_entry).collect();
        if small {
            return self.run_here(read);
        }
        self.run(read).await
    }

    /// Replication reads at most [`MAX_BATCH_BYTES`] of entries at a time (at least one entry),
    /// so catching up a far-behind follower over large records does not hold hundreds of
    /// megabytes in memory at once (openraft batches up to 300 entries otherwise).
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let read = move |log: &mut wal::Log| {
            let range = log.prefix_within(start..end, MAX_BATCH_BYTES);
            log.read(range)?.into_iter().map(decode_entry).collect()
        };
        if end.saturating_sub(start) <= SMALL_READ_ENTRIES {
            return self.run_here(read);
        }
        self.run(read).await
    }

    /// Applying committed entries reads them [`MAX_BATCH_BYTES`] at a time (at least one
    /// entry), instead of openraft's default of reading the whole range into memory before the
    /// first is applied: a node applying a long run (a learner catching up from the log, a
    /// restart replaying what it had not applied) holds one batch, not the run. Committed
    /// entries are never truncated and not purged before they are applied, so reading the
    /// range in parts sees the same entries as reading it at once.
    async fn entries_stream<RB>(
        &mut self,
        range: RB,
    ) -> impl Stream<Item = io::Result<Entry>> + OptionalSend
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let end = to_range(&range).end;
        let next = to_range(&range).start;
        futures::stream::try_unfold((self.clone(), next), move |(mut store, next)| async move {
            if next >= end {
                return Ok::<_, io::Error>(None);
            }
            let entries = store.limited_get_log_entries(next, end).await?;
            let Some(last) = entries.last() else {
                return Ok(None);
            };
            let after = last.log_id.index + 1;
            Ok(Some((futures::stream::iter(entries.into_iter().map(Ok)), (store, after))))
        })
        .try_flatten()
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.run(|log| log.vote().map(|bytes| from_json(&bytes, "vote")).transpose()).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        self.run(|log| {
            Ok(LogState {
                last_purged_log_id: log.last_purged().map(log_id),
                last_log_id: log.last().map(log_id),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let bytes = serde_json::to_vec(vote).map_err(io::Error::other)?;
        let this = self.clone();
        self.run(move |log| {
            let done = log.save_vote(&bytes);
            this.publish_room(log);
            Ok(done?)
        })
        .await
    }

    /// Hands the committed log id to the sync thread, which writes it without fsync once
    /// this log holds its entries durably. It is a hint (openraft applies up to it at start
    /// without asking the leader), so it need not be on disk before this returns; writing it
    /// durably on every commit cost two fsyncs and a rename per write.
    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        let Some(committed) = committed else { return Ok(()) };
        if let Ok(mut waiting) = self.committed.lock() {
            *waiting = Some(committed);
        }
        let _ = self.flushes.send(ToSync::Committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        if let Some(waiting) = self.committed.lock().ok().and_then(|waiting| *waiting) {
            return Ok(Some(waiting));
        }
        self.run(|log| match log.committed() {
            Some(bytes) => from_json(&bytes, "committed log id"),
            None => Ok(None),
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let frames = entries.iter().map(encode_entry).collect::<io::Result<Vec<_>>>();
        let result = match frames {
            Err(e) => Err(e),
            // A small append is one write into the page cache: do it here.
            Ok(frames)
                if frames.iter().map(|f| f.payload.len()).sum::<usize>() <= SMALL_WRITE_BYTES =>
            {
                self.run_here(|log| {
                    let done = log.append_unsynced(&frames);
                    self.publish_room(log);
                    Ok(done?)
                })
            }
            Ok(frames) => {
                let this = self.clone();
                self.run(move |log| {
                    let done = log.append_unsynced(&frames);
                    this.publish_room(log);
                    Ok(done?)
                })
                .await
            }
        };
        match result {
            Ok(()) => {
                // Readable now; durable (and reported flushed) once the sync thread has run.
                if let Err(mpsc::SendError(ToSync::Flush(callback))) =
                    self.flushes.send(ToSync::Flush(callback))
                {
                    callback.io_completed(Err(io::Error::other("the log's sync thread is gone")));
                }
                Ok(())
            }
            Err(err) => {
                callback.io_completed(Err(io::Error::new(err.kind(), err.to_string())));
                Err(err)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        tracing::info!(after = ?last_log_id.map(|id| id.index), "truncating the log");
        let this = self.clone();
        self.run(move |log| {
            let done = log.truncate_after(last_log_id.map(|id| id.index));
            this.publish_room(log);
            Ok(done?)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        tracing::debug!(through = log_id.index, "purging the log");
        let this = self.clone();
        self.run(move |log| {
            let done = log.purge_through(log_id.index, log_id.leader_id.term);
            this.publish_room(log);
            Ok(done?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::Membership;

    use super::*;
    use crate::types::MemberAddr;

    fn round_trip(entry: Entry) {
        let frame = encode_entry(&entry).unwrap();
        assert_eq!((frame.term, frame.index), (entry.log_id.leader_id.term, entry.log_id.index));
        assert_eq!(decode_entry(frame).unwrap(), entry);
    }

    #[test]
    fn entries_round_trip() {
        let id = LogId::new_term_index(3, 17);
        round_trip(Entry { log_id: id, payload: EntryPayload::Blank });
        let record = Record {
            ops: vec![wal::Op::Ddl("CREATE TABLE t (a)".into())],
            requests: vec![wal::RequestAnswer { id: "r1".into(), results: b"[]".to_vec() }],
        };
        round_trip(Entry { log_id: id, payload: EntryPayload::Normal(record) });
        round_trip(Entry { log_id: id, payload: EntryPayload::Normal(Record::default()) });
        let node = MemberAddr::new("127.0.0.1:1", "127.0.0.1:2");
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2])],
            BTreeMap::from([(1, node.clone()), (2, node)]),
        )
        .unwrap();
        round_trip(Entry { log_id: id, payload: EntryPayload::Membership(membership) });
    }

    #[test]
    fn bad_payloads_are_invalid_data() {
        for payload in [vec![], vec![BLANK, 1], vec![NORMAL, 1, 2], vec![MEMBERSHIP, b'{'], vec![9]]
        {
            let err = decode_entry(Frame { term: 1, index: 2, payload }).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        }
    }

    #[test]
    fn ranges_become_half_open() {
        assert_eq!(to_range(&(3..7)), 3..7);
        assert_eq!(to_range(&(3..=7)), 3..8);
        assert_eq!(to_range(&(3..)), 3..u64::MAX);
        assert_eq!(to_range(&..), 0..u64::MAX);
        assert_eq!(to_range(&(Bound::Excluded(3), Bound::Included(7))), 4..8);
    }
}
