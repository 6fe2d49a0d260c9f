//! Reading the Raft log from outside Raft: the change stream (`GET /db/changes`) reads the
//! committed records in order from this node's own log.
//!
//! openraft's `Raft` handle does not expose log reads, so [`crate::start_node`] keeps a clone
//! of the log store and wraps it in a [`LogReader`]. The reader shares the log (and its lock)
//! with Raft: a read is one short critical section on the blocking pool, bounded in entries and
//! bytes, so a reader far behind never holds the log for long nor loads it whole into memory.
//!
//! What it deliberately does not do: know what is committed. The log also holds entries that
//! are not committed yet and may still be truncated; the caller reads only up to an index it
//! knows to be committed (the node's applied index), which Raft never truncates.

use std::io;
use std::ops::Range;

use openraft::EntryPayload;

use crate::log_store::{LogStore, Retained};
use crate::types::Lsn;

/// One log entry as a reader outside Raft sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The entry's index: its LSN.
    pub lsn: Lsn,
    /// The record of a client write; `None` for Raft's own entries (a new leader's blank
    /// entry, membership changes), which change no data.
    pub record: Option<wal::Record>,
}

/// Why a [`LogReader::read`] returned no entries for the start it was given.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The entries from the requested start were compacted away (they are covered by a
    /// snapshot); `first` is the first LSN this node's log still holds.
    #[error("log entries before {first} were compacted away")]
    Compacted {
        /// The first LSN still held.
        first: Lsn,
    },
    /// Reading the log failed (I/O error or corruption).
    #[error("reading the log: {0}")]
    Io(#[from] io::Error),
}

/// A read handle on this node's Raft log, shared with the running Raft node.
///
/// Invariants:
/// * Entries come back in index order, without gaps, starting exactly at the requested start;
///   a start before the first retained entry is [`ReadError::Compacted`], never a silent skip.
#[derive(Clone, Debug)]
pub struct LogReader {
    /// The log store Raft also uses.
    store: LogStore,
}

impl LogReader {
    /// A reader on `store`'s log.
    pub(crate) fn new(store: LogStore) -> Self {
        Self { store }
    }

    /// Reads the entries of `range` from its start: at most `max_entries` entries and about
    /// `max_bytes` bytes (at least one entry when the range holds any). Fewer entries than
    /// asked means the log ends there for now.
    pub async fn read(
        &self,
        range: Range<Lsn>,
        max_entries: u64,
        max_bytes: u64,
    ) -> Result<Vec<LogEntry>, ReadError> {
        match self.store.read_retained(range, max_entries.max(1), max_bytes).await? {
            Retained::Compacted { first } => Err(ReadError::Compacted { first }),
            Retained::Entries(entries) => Ok(entries
                .into_iter()
                .map(|entry| LogEntry {
                    lsn: entry.log_id.index,
                    record: match entry.payload {
                        EntryPayload::Normal(record) => Some(record),
                        EntryPayload::Blank | EntryPayload::Membership(_) => None,
                    },
                })
                .collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::{IOFlushed, RaftLogStorage};
    use wal::{Op, Record};

    use super::*;
    use crate::types::{Entry, LogId};

    /// A normal entry at `index` holding one DDL op naming the index.
    fn entry(index: u64) -> Entry {
        let record = Record { ops: vec![Op::Ddl(format!("-- {index}"))], requests: vec![] };
        Entry { log_id: LogId::new_term_index(1, index), payload: EntryPayload::Normal(record) }
    }

    #[tokio::test]
    async fn reads_in_bounded_chunks_and_refuses_compacted_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        let mut entries =
            vec![Entry { log_id: LogId::new_term_index(1, 0), payload: EntryPayload::Blank }];
        entries.extend((1..=20).map(entry));
        store.append(entries, IOFlushed::noop()).await.unwrap();
        store.flush().await.unwrap();
        let reader = LogReader::new(store.clone());

        let chunk = reader.read(0..100, 5, u64::MAX).await.unwrap();
        assert_eq!(chunk.iter().map(|e| e.lsn).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert_eq!(chunk[0].record, None, "a blank entry has no record");
        assert_eq!(chunk[1].record.as_ref().unwrap().ops, vec![Op::Ddl("-- 1".into())]);
        // One entry at least, even when it is over the byte budget.
        assert_eq!(reader.read(7..100, 5, 1).await.unwrap().len(), 1);
        // The end of the log ends the chunk; past the end there is nothing yet.
        assert_eq!(reader.read(18..100, 10, u64::MAX).await.unwrap().len(), 3);
        assert!(reader.read(21..100, 10, u64::MAX).await.unwrap().is_empty());

        store.purge(LogId::new_term_index(1, 9)).await.unwrap();
        match reader.read(5..100, 10, u64::MAX).await {
            Err(ReadError::Compacted { first }) => assert_eq!(first, 10),
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert_eq!(reader.read(10..11, 10, u64::MAX).await.unwrap()[0].lsn, 10);

        store.purge(LogId::new_term_index(1, 20)).await.unwrap();
        match reader.read(20..100, 10, u64::MAX).await {
            Err(ReadError::Compacted { first }) => assert_eq!(first, 21),
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(reader.read(21..100, 10, u64::MAX).await.unwrap().is_empty());
    }
}
