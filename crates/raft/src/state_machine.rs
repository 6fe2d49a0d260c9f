//! openraft's `RaftStateMachine`, delegating to a [`Store`].
//!
//! openraft calls [`StateMachine::apply`] with committed entries only, in log order, on every
//! node including the leader. The adapter turns each openraft entry into a [`Committed`] and
//! hands a whole batch to [`Store::apply`], which must make the batch and the new applied
//! position durable together (one SQLite transaction in `follower`). If that fails the error
//! goes back to openraft, which stops this node: a replica that cannot apply a committed entry
//! stops rather than diverges.
//!
//! Snapshots are files: `snapshots/<term>-<index>.db` (a consistent database image, which holds
//! its own applied position) and `snapshots/current.json` (its openraft meta and the image's
//! file name). Building or receiving writes a new image under a temporary name, fsyncs it,
//! renames it to its final name, and only then replaces `current.json` (temp file, fsync,
//! rename): a crash at any point leaves the previous snapshot whole and consistent with its
//! meta. Older images are deleted afterwards. Installing then restores the live database from
//! the published image.
//!
//! IMPLEMENTATION CAVEATS: snapshot data travels as one in-memory buffer (`Cursor<Vec<u8>>`), so
//! a snapshot costs as much memory as the database. Streaming is future work.

use std::fs;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use crate::types::{LogId, Lsn, StoredMembership, Term, TypeConfig};

/// A snapshot as openraft passes it around.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Cursor<Vec<u8>>>;
/// A snapshot's meta: the log position and membership it reflects.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

/// One committed log entry as the store sees it.
#[derive(Debug, Clone)]
pub struct Committed {
    /// Term of the leader that wrote the entry.
    pub term: Term,
    /// Log index of the entry (its LSN).
    pub index: Lsn,
    /// The row changes, for a normal entry; `None` for a blank or membership entry.
    pub record: Option<wal::Record>,
    /// The new membership as opaque JSON, for a membership entry.
    pub membership: Option<String>,
}

/// The last applied position as the store keeps it.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Term of the last applied entry.
    pub term: Term,
    /// Index of the last applied entry.
    pub index: Lsn,
    /// The last applied membership (opaque JSON from [`Committed::membership`]), if any.
    pub membership: Option<String>,
}

/// The node's database, as the state machine needs it. Every method blocks; the adapter calls
/// them from `spawn_blocking`.
pub trait Store: Send + Sync + 'static {
    /// The last applied position stored with the data, `None` for an empty database.
    fn applied(&self) -> io::Result<Option<Applied>>;
    /// Applies committed entries, in order, atomically together with the new applied position.
    fn apply(&self, entries: &[Committed]) -> io::Result<()>;
    /// Writes a consistent image of the database (including its applied position) to `path`,
    /// fsynced, and returns the applied position the image holds. Must not stop applies while
    /// it copies (it reads from its own connection), because a large database takes a while.
    fn snapshot_to(&self, path: &Path) -> io::Result<Option<Applied>>;
    /// Makes the image at `path` (written by [`Store::snapshot_to`] on some node, complete and
    /// fsynced) the live database, atomically: after a crash at any point the node has either
    /// its old database or the new one. The store takes the file over (it may rename it), so
    /// the caller must not use `path` afterwards.
    fn install(&self, path: &Path) -> io::Result<()>;
}

/// The openraft state machine over a [`Store`]. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct StateMachine {
    /// The node's database.
    store: Arc<dyn Store>,
    /// Directory holding the images and `current.json`.
    dir: PathBuf,
}

/// The contents of `current.json`.
#[derive(Serialize, Deserialize)]
struct StoredMeta {
    /// What the image reflects.
    meta: SnapshotMeta,
    /// The image's file name in the snapshot directory.
    image: String,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn membership_json(m: &StoredMembership) -> io::Result<String> {
    serde_json::to_string(m).map_err(other)
}

impl StateMachine {
    /// Opens (creating if needed) the snapshot directory.
    pub fn open(dir: &Path, store: Arc<dyn Store>) -> io::Result<StateMachine> {
        fs::create_dir_all(dir)?;
        Ok(StateMachine { store, dir: dir.to_path_buf() })
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join("current.json")
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        tokio::task::spawn_blocking(f).await.map_err(other)?
    }

    /// Makes the image at `tmp` with `meta` the current snapshot (see the module docs for the
    /// crash-safe order). Returns the image's final path.
    fn publish(&self, tmp: &Path, meta: &SnapshotMeta) -> io::Result<PathBuf> {
        let name = match &meta.last_log_id {
            Some(l) => format!("{}-{}.db", l.leader_id.term, l.index),
            None => "0-0.db".to_string(),
        };
        let image = self.dir.join(&name);
        fs::File::open(tmp)?.sync_all()?;
        fs::rename(tmp, &image)?;
        let meta_tmp = self.dir.join("current.json.tmp");
        let json = serde_json::to_vec(&StoredMeta { meta: meta.clone(), image: name.clone() })
            .map_err(other)?;
        write_synced(&meta_tmp, &json)?;
        fs::rename(&meta_tmp, self.meta_path())?;
        fs::File::open(&self.dir)?.sync_all()?;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "db")
                && path.file_name().is_some_and(|f| *f != *name)
            {
                let _ = fs::remove_file(path);
            }
        }
        Ok(image)
    }

    fn read_current(&self) -> io::Result<Option<Snapshot>> {
        let stored = match fs::read(self.meta_path()) {
            Ok(bytes) => serde_json::from_slice::<StoredMeta>(&bytes).map_err(other)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let data = fs::read(self.dir.join(&stored.image))?;
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Cursor::new(data) }))
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let this = self.clone();
        Self::blocking(move || {
            let tmp = this.dir.join("building.tmp");
            let _ = fs::remove_file(&tmp);
            let applied = this.store.snapshot_to(&tmp)?;
            let (last_log_id, membership) = match applied {
                Some(a) => (Some(log_id(a.term, a.index)), a.membership),
                None => (None, None),
            };
            let last_membership = match membership {
                Some(json) => serde_json::from_str(&json).map_err(other)?,
                None => StoredMembership::default(),
            };
            let meta = SnapshotMeta { last_log_id, last_membership };
            let image = this.publish(&tmp, &meta)?;
            let data = fs::read(image)?;
            tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "built snapshot");
            Ok(Snapshot { meta, snapshot: Cursor::new(data) })
        })
        .await
    }
}

/// A log id from its parts.
pub fn log_id(term: Term, index: Lsn) -> LogId {
    openraft::LogId::new_term_index(term, index)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let store = self.store.clone();
        let applied = Self::blocking(move || store.applied()).await?;
        match applied {
            None => Ok((None, StoredMembership::default())),
            Some(a) => {
                let membership = match a.membership {
                    Some(json) => serde_json::from_str(&json).map_err(other)?,
                    None => StoredMembership::default(),
                };
                Ok((Some(log_id(a.term, a.index)), membership))
            }
        }
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let term = entry.log_id.leader_id.term;
            let index = entry.log_id.index;
            let (record, membership) = match entry.payload {
                EntryPayload::Blank => (None, None),
                EntryPayload::Normal(record) => (Some(record), None),
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m);
                    (None, Some(membership_json(&stored)?))
                }
            };
            batch.push(Committed { term, index, record, membership });
            if let Some(r) = responder {
                responders.push(r);
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let first = batch[0].index;
        let last = batch[batch.len() - 1].index;
        Self::blocking(move || store.apply(&batch)).await.map_err(|e| {
            tracing::error!(first, last, error = %e, "cannot apply committed entries; stopping");
            e
        })?;
        for r in responders {
            r.send(());
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Cursor<Vec<u8>>,
    ) -> io::Result<()> {
        let this = self.clone();
        let meta = meta.clone();
        Self::blocking(move || {
            let tmp = this.dir.join("receiving.tmp");
            write_synced(&tmp, snapshot.get_ref())?;
            let image = this.publish(&tmp, &meta)?;
            this.store.install(&image)?;
            tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let this = self.clone();
        Self::blocking(move || this.read_current()).await
    }
}
