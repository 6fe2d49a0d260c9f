//! openraft's storage test suite against [`raft::log_store::LogStore`] on real files, plus a
//! restart test the suite does not cover.
//!
//! The suite also exercises a state machine; [`MemStateMachine`] here is the smallest one that
//! satisfies it (it records what was applied, and snapshots that), so that the suite's verdict is
//! about the log store.

use std::io::{self, Cursor};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder, StorageError};
use raft::log_store::LogStore;
use raft::{Entry, LogId, StoredMembership, TypeConfig, Vote};
use tempfile::TempDir;
use tokio::sync::Mutex;

type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Cursor<Vec<u8>>>;

/// What [`MemStateMachine`] holds.
#[derive(Debug, Default)]
struct State {
    /// The last applied log id.
    applied: Option<LogId>,
    /// The last applied membership.
    membership: StoredMembership,
    /// The indexes of the normal entries applied, the machine's "data".
    data: Vec<u64>,
    /// The last snapshot built or installed: its meta and its data as JSON.
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

/// A minimal in-memory state machine.
#[derive(Clone, Debug, Default)]
struct MemStateMachine(Arc<Mutex<State>>);

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let mut state = self.0.lock().await;
        let data = serde_json::to_vec(&state.data).map_err(io::Error::other)?;
        let meta =
            SnapshotMeta { last_log_id: state.applied, last_membership: state.membership.clone() };
        state.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta, snapshot: Cursor::new(data) })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let state = self.0.lock().await;
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut state = self.0.lock().await;
        while let Some((entry, responder)) = entries.try_next().await? {
            state.applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(_) => state.data.push(entry.log_id.index),
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                }
            }
            if let Some(responder) = responder {
                responder.send(());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Self::SnapshotData,
    ) -> io::Result<()> {
        let data = snapshot.into_inner();
        let mut state = self.0.lock().await;
        state.data = serde_json::from_slice(&data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let state = self.0.lock().await;
        Ok(state.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Cursor::new(data.clone()),
        }))
    }
}

/// Builds a fresh log store in its own temporary directory for every suite case.
struct Builder;

impl StoreBuilder<TypeConfig, LogStore, MemStateMachine, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, MemStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let store = LogStore::open(dir.path()).expect("open the log store");
        Ok((dir, store, MemStateMachine::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(Builder).await
}

/// Appends `entries` and waits for the flush callback, as openraft does.
async fn append(store: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
}

fn blank(term: u64, index: u64) -> Entry {
    Entry { log_id: LogId::new_term_index(term, index), payload: EntryPayload::Blank }
}

fn normal(term: u64, index: u64, sql: &str) -> Entry {
    let record = wal::Record {
        ops: vec![wal::Op::Ddl(sql.to_string())],
        requests: vec![wal::RequestAnswer { id: format!("req-{index}"), results: b"[]".to_vec() }],
    };
    Entry { log_id: LogId::new_term_index(term, index), payload: EntryPayload::Normal(record) }
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(2, 1);
    let entries = [
        blank(1, 1),
        normal(1, 2, "CREATE TABLE t (a)"),
        normal(2, 3, "DROP TABLE t"),
        blank(2, 4),
    ];
    {
        let mut store = LogStore::open(dir.path()).unwrap();
        append(&mut store, entries[..2].to_vec()).await;
        append(&mut store, entries[2..].to_vec()).await;
        store.save_vote(&vote).await.unwrap();
        store.save_committed(Some(LogId::new_term_index(2, 3))).await.unwrap();
        store.purge(LogId::new_term_index(1, 1)).await.unwrap();
        // The committed log id is written by the sync thread once its entries are durable.
        store.flush().await.unwrap();
    }
    let mut store = LogStore::open(dir.path()).unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(LogId::new_term_index(1, 1)));
    assert_eq!(state.last_log_id, Some(LogId::new_term_index(2, 4)));
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    assert_eq!(store.read_committed().await.unwrap(), Some(LogId::new_term_index(2, 3)));
    let mut reader = store.get_log_reader().await;
    assert_eq!(reader.try_get_log_entries(0..).await.unwrap(), entries[1..].to_vec());

    store.truncate_after(Some(LogId::new_term_index(1, 2))).await.unwrap();
    append(&mut store, vec![blank(3, 3)]).await;
    drop(store);
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        store.try_get_log_entries(2..=3).await.unwrap(),
        vec![entries[1].clone(), blank(3, 3)]
    );
}

#[tokio::test]
async fn invalid_requests_are_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path()).unwrap();
    append(&mut store, vec![blank(1, 1), blank(1, 2)]).await;

    let (tx, rx) = TypeConfig::oneshot();
    let err = store.append(vec![blank(1, 5)], IOFlushed::signal(tx)).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    assert!(rx.await.unwrap().is_err(), "the callback reports the failure too");

    let err = store.purge(LogId::new_term_index(7, 2)).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
}

/// A normal entry whose record holds a changeset of `bytes` bytes.
fn large(term: u64, index: u64, bytes: usize) -> Entry {
    let record =
        wal::Record { ops: vec![wal::Op::Changes(vec![index as u8; bytes])], requests: vec![] };
    Entry { log_id: LogId::new_term_index(term, index), payload: EntryPayload::Normal(record) }
}

#[tokio::test]
async fn applying_reads_the_range_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path()).unwrap();
    // Five entries of 3 MiB: a batch of at most 8 MiB holds two of them.
    let entries: Vec<Entry> = (1..=5).map(|i| large(1, i, 3 << 20)).collect();
    append(&mut store, entries.clone()).await;
    assert_eq!(raft::log_store::MAX_BATCH_BYTES, 8 << 20);
    assert_eq!(store.limited_get_log_entries(1, 6).await.unwrap(), entries[..2].to_vec());

    // The stream still yields every entry of the range, in order, across the batches.
    let streamed: Vec<Entry> = store.entries_stream(1..=5).await.try_collect().await.unwrap();
    assert_eq!(streamed, entries);
    let streamed: Vec<Entry> = store.entries_stream(2..5).await.try_collect().await.unwrap();
    assert_eq!(streamed, entries[1..4].to_vec());
    let streamed: Vec<Entry> = store.entries_stream(6..9).await.try_collect().await.unwrap();
    assert!(streamed.is_empty());
}
