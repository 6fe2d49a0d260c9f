//! openraft's `RaftStateMachine`, delegating to a [`Store`].
//!
//! openraft calls [`StateMachine::apply`] with committed entries only, in log order, on every
//! node including the leader. The adapter turns each openraft entry into a [`Committed`] and
//! hands a whole batch to [`Store::apply`], which must make the batch and the new applied
//! position durable together (one SQLite transaction in `follower`). If that fails the error
//! goes back to openraft, which stops this node: a replica that cannot apply a committed entry
//! stops rather than diverges, and never skips it.
//!
//! The store's errors are typed ([`Error`]): [`Error::Corrupt`] when doing it again fails the
//! same way (the node's data must be replaced), [`Error::Transient`] when the environment
//! failed (fix it and restart), [`Error::NoSpace`] when the disk is full. That one does not
//! stop the node: the batch was rolled back, so it is applied again once
//! [`crate::space::Space::wait_for_space`] says space returned (openraft's state machine task
//! waits meanwhile; Raft itself goes on). Building a snapshot is deferred while the disk is
//! full, and one that finds no space is built again later the same way. They reach openraft inside the `io::Error` it requires, with
//! their kind and cause chain, so the reason the node stops (`cluster::stopped`) says which
//! it was and what to do (see the `error` module).
//!
//! # Snapshots
//!
//! Snapshots are files, never buffers: openraft's snapshot data is a [`SnapshotFile`] (an open
//! image with its length and CRC-32), which the network streams from disk and the receiver
//! streams to disk (see [`crate::network`] and [`crate::snapshot`]).
//!
//! In the snapshot directory, `<term>-<index>.db` is a consistent database image (holding its
//! own applied position and membership) and `current.json` records the current snapshot: its
//! openraft meta, and the image's file name, length and checksum, or no image.
//!
//! - **Building** ([`RaftSnapshotBuilder::build_snapshot`]): [`Store::snapshot_to`] writes an
//!   image to `building-*.tmp` without stopping applies; the adapter reads it once to compute
//!   its checksum, and the image's own applied position and membership become the meta (so
//!   the meta never runs ahead of what the image holds). Publishing fsyncs the image, renames
//!   it to its final name, fsyncs the directory, and only then replaces `current.json` (temp
//!   file, fsync, rename, fsync): a crash at any point leaves the previous snapshot whole and
//!   consistent with its meta. Older images are deleted afterwards. Publishing never goes
//!   backwards: an image older than the current snapshot (or as old, when the current one has
//!   an image) is discarded. One build runs at a time.
//! - **Reading** ([`RaftStateMachine::get_current_snapshot`]): opens the recorded image and
//!   reads it once to compare its CRC-32 with the recorded one. A damaged image (a bit flipped
//!   on this disk) is never handed out: every receiver would refuse it, and a follower that
//!   needs it would never catch up. It is logged, counted (`damaged`), and replaced by a new
//!   build from the database, as a lost image is. openraft asks for the current snapshot at
//!   start and before each transfer, so the read costs one pass over the image then. An open
//!   handle keeps the image readable for a transfer in progress even if a newer snapshot
//!   replaces it.
//! - **Installing** a received snapshot ([`RaftStateMachine::install_snapshot`]):
//!   [`Store::install`] takes the received file over as the live database (a rename, no copy),
//!   then `current.json` records the meta with no image and every older image is deleted: the
//!   snapshot's contents now live in the database. If the node later needs a snapshot to send
//!   (it became leader and a follower is behind its purged log) or restarts,
//!   `get_current_snapshot` builds one from the database first (its position is at least the
//!   installed one) and publishes it. That build runs on openraft's state machine task, so
//!   applies wait for it; it happens once per installed snapshot at most.
//! - **Restart**: [`StateMachine::open`] deletes temporary files a crash left (`building-*`,
//!   `receiving-*`, `current.json.tmp`) and images `current.json` does not name.
//!
//! Counters for operators are in [`SnapshotStats`] ([`StateMachine::stats`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use wal::Applied;

mod error;

pub use error::{Cause, Error, Result, chain, is_no_space};

pub use crate::snapshot::{SnapshotCounts, SnapshotFile, SnapshotStats};
use crate::snapshot::{TempFile, building_path, is_leftover, remove_if_exists};
use crate::types::{LogId, Lsn, StoredMembership, Term, TypeConfig};

/// A snapshot as openraft passes it around: its meta and its image file.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;
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

/// The node's database, as the state machine needs it. [`Store::apply`], on every write's
/// path, returns a future (the store hands the batch to its own database thread; no blocking
/// pool in between); the other methods block and the adapter calls them from
/// `spawn_blocking`. Errors say whether doing it again can succeed ([`Error`]).
pub trait Store: Send + Sync + 'static {
    /// The last applied position stored with the data, `None` for an empty database.
    fn applied(&self) -> Result<Option<Applied>>;
    /// Applies committed entries, in order, atomically together with the new applied position.
    /// On error nothing of the batch is applied, except entries a store committed in a part
    /// of its own before the failure: called again with the same batch (after
    /// [`Error::NoSpace`]), it must skip the entries it has applied already.
    /// [`Error::Corrupt`] when an entry cannot be applied here as the leader applied it.
    fn apply(&self, entries: Arc<Vec<Committed>>) -> BoxFuture<'static, Result<()>>;
    /// Writes a consistent image of the database (including its applied position and
    /// membership) to `path`, fsynced, and returns the applied position the image holds. Must
    /// not stop applies while it copies (it reads from its own connection), because a large
    /// database takes a while, and must not hold the database in memory. The state machine
    /// never runs two of these at once.
    fn snapshot_to(&self, path: &Path) -> Result<Option<Applied>>;
    /// Makes the image at `path` (written by [`Store::snapshot_to`] on some node, complete and
    /// fsynced) the live database, atomically: after a crash at any point the node has either
    /// its old database or the new one. The store takes the file over (it may rename it), so
    /// the caller must not use `path` afterwards.
    fn install(&self, path: &Path) -> Result<()>;
}

/// The openraft state machine over a [`Store`]. Cheap to clone; clones share the store, the
/// snapshot directory and the counters.
#[derive(Clone)]
pub struct StateMachine {
    /// The node's database.
    store: Arc<dyn Store>,
    /// Directory holding the images and `current.json`.
    dir: PathBuf,
    /// Counters for operators.
    stats: Arc<SnapshotStats>,
    /// Held while `current.json` and the published images change.
    publish: Arc<Mutex<()>>,
    /// Held while an image is built: one build at a time.
    building: Arc<tokio::sync::Mutex<()>>,
    /// The data directory's free space, to wait on when the disk is full (without it, the
    /// state machine waits [`NO_SPACE_PAUSE`] between attempts).
    space: Option<Arc<crate::space::Space>>,
}

/// How long to wait before trying again after "no space", when there is no [`Space`] to ask.
///
/// [`Space`]: crate::space::Space
const NO_SPACE_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// The contents of `current.json`.
#[derive(Debug, Serialize, Deserialize)]
struct StoredMeta {
    /// What the snapshot reflects.
    meta: SnapshotMeta,
    /// The image's file name in the snapshot directory; `None` after an install (the image
    /// became the live database).
    #[serde(default)]
    image: Option<String>,
    /// The image's length in bytes.
    #[serde(default)]
    len: Option<u64>,
    /// The image's CRC-32.
    #[serde(default)]
    checksum: Option<u32>,
}

/// What `get_current_snapshot` finds on disk.
enum Current {
    /// No snapshot was ever built or installed.
    None,
    /// A published image.
    Image(Snapshot),
    /// A snapshot whose image is gone (installed into the database, or lost): build one.
    NoImage(SnapshotMeta),
    /// A snapshot whose image's checksum differs from the one recorded when it was made
    /// (damaged on this disk): build one, as for a lost image.
    Damaged {
        /// The snapshot's meta.
        meta: SnapshotMeta,
        /// The image.
        path: PathBuf,
        /// The image's CRC-32 now.
        actual: u32,
        /// The CRC-32 recorded when it was made.
        checksum: u32,
    },
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn membership_json(m: &StoredMembership) -> io::Result<String> {
    serde_json::to_string(m).map_err(other)
}

/// The membership a store keeps as JSON ([`Committed::membership`]); JSON that does not parse
/// is corruption.
fn stored_membership(json: Option<String>) -> io::Result<StoredMembership> {
    match json {
        Some(json) => serde_json::from_str(&json).map_err(|e| Error::corrupt(e).into_io()),
        None => Ok(StoredMembership::default()),
    }
}

fn index_of(meta: &SnapshotMeta) -> Lsn {
    meta.last_log_id.as_ref().map_or(0, |l| l.index)
}

fn image_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(l) => format!("{}-{}.db", l.leader_id.term, l.index),
        None => "0-0.db".to_string(),
    }
}

fn is_image(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "db")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Megabytes per second, for logs.
pub(crate) fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

impl StateMachine {
    /// Opens (creating if needed) the snapshot directory, deletes what a crash left behind
    /// (temporary files, images `current.json` does not name), and reads the current snapshot's
    /// position into the counters.
    pub fn open(dir: &Path, store: Arc<dyn Store>) -> io::Result<StateMachine> {
        fs::create_dir_all(dir)?;
        let sm = StateMachine {
            store,
            dir: dir.to_path_buf(),
            stats: Arc::new(SnapshotStats::default()),
            publish: Arc::new(Mutex::new(())),
            building: Arc::new(tokio::sync::Mutex::new(())),
            space: None,
        };
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(is_leftover) {
                tracing::info!(path = %path.display(), "deleting a temporary snapshot file left by a crash");
                remove_if_exists(&path);
            }
        }
        let stored = sm.read_stored()?;
        let keep = stored.as_ref().and_then(|s| s.image.clone());
        sm.delete_images_except(keep.as_deref())?;
        if let Some(s) = &stored {
            let size = if s.image.is_some() { s.len.unwrap_or(0) } else { 0 };
            sm.stats.on_current(index_of(&s.meta), size);
        }
        Ok(sm)
    }

    /// Waits on `space` when the disk is full (see the module docs).
    pub fn with_space(mut self, space: Arc<crate::space::Space>) -> StateMachine {
        self.space = Some(space);
        self
    }

    /// Waits until the disk has space again, before trying something that failed for lack of
    /// it once more.
    async fn wait_for_space(&self) {
        match &self.space {
            Some(space) => space.wait_for_space().await,
            None => tokio::time::sleep(NO_SPACE_PAUSE).await,
        }
    }

    /// Whether the disk is full, as last observed.
    fn disk_full(&self) -> bool {
        self.space.as_ref().is_some_and(|space| space.is_full())
    }

    /// The snapshot counters, shared with the network.
    pub fn stats(&self) -> Arc<SnapshotStats> {
        self.stats.clone()
    }

    /// The snapshot directory (received images are written here, on the database's file
    /// system, so that [`Store::install`] can rename them).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join("current.json")
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        tokio::task::spawn_blocking(f).await.map_err(other)?
    }

    fn read_stored(&self) -> io::Result<Option<StoredMeta>> {
        match fs::read(self.meta_path()) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(other)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces `current.json` crash-safely. The caller holds `publish`.
    fn write_stored(&self, stored: &StoredMeta) -> io::Result<()> {
        use std::io::Write;
        let tmp = self.dir.join("current.json.tmp");
        let json = serde_json::to_vec(stored).map_err(other)?;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, self.meta_path())?;
        sync_dir(&self.dir)
    }

    /// Deletes every image but `keep`. Images being sent stay readable through open handles.
    fn delete_images_except(&self, keep: Option<&str>) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if is_image(&path) && path.file_name().and_then(|n| n.to_str()) != keep {
                remove_if_exists(&path);
            }
        }
        Ok(())
    }

    /// The current snapshot as recorded in `current.json`.
    fn current(&self) -> io::Result<Current> {
        let Some(stored) = self.read_stored()? else { return Ok(Current::None) };
        let (Some(image), Some(len), Some(checksum)) = (&stored.image, stored.len, stored.checksum)
        else {
            return Ok(Current::NoImage(stored.meta));
        };
        let path = self.dir.join(image);
        match SnapshotFile::open(&path, len, checksum) {
            Ok(file) => {
                // The image goes to other nodes and is read back only by them, so damage to
                // it (a flipped bit on this disk) is looked for before it is handed out: a
                // receiver would refuse it at every attempt, and a follower that needs it
                // would never catch up. A damaged image is replaced by a new build from the
                // database, the same way as a lost one.
                let (_, actual) = crate::snapshot::checksum_file(&path)?;
                if actual != checksum {
                    return Ok(Current::Damaged { meta: stored.meta, path, actual, checksum });
                }
                Ok(Current::Image(Snapshot { meta: stored.meta, snapshot: file }))
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::InvalidData) => {
                tracing::warn!(image = %path.display(), error = %e, "the current snapshot's image is unusable; a new one will be built");
                Ok(Current::NoImage(stored.meta))
            }
            Err(e) => Err(e),
        }
    }

    /// Builds an image from the store and publishes it (if it is newer than the current
    /// snapshot). Blocking; the caller holds `building`.
    fn build_blocking(&self) -> io::Result<Snapshot> {
        let started = Instant::now();
        let tmp = TempFile::new(building_path(&self.dir));
        let applied = self.store.snapshot_to(tmp.path()).map_err(Error::into_io)?;
        let copied = started.elapsed();
        let (last_log_id, membership) = match applied {
            Some(a) => (Some(log_id(a.term, a.index)), a.membership),
            None => (None, None),
        };
        let last_membership = stored_membership(membership)?;
        let meta = SnapshotMeta { last_log_id, last_membership };
        let mut file = SnapshotFile::open_and_checksum(tmp.path())?;
        let published = self.publish(tmp, &mut file, &meta)?;
        self.stats.on_built(index_of(&meta));
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            bytes = file.len(),
            checksum = format_args!("{:08x}", file.checksum()),
            copy_secs = copied.as_secs_f64(),
            secs,
            mb_per_s = mb_per_s(file.len(), secs),
            published,
            "built snapshot"
        );
        Ok(Snapshot { meta, snapshot: file })
    }

    /// Makes the image at `tmp` (opened as `file`) with `meta` the current snapshot, unless the
    /// current one is newer or as new with an image; see the module docs for the crash-safe
    /// order. Returns whether it was published; if not, `tmp` is deleted and `file` stays
    /// readable through its handle.
    fn publish(
        &self,
        tmp: TempFile,
        file: &mut SnapshotFile,
        meta: &SnapshotMeta,
    ) -> io::Result<bool> {
        let _guard = self.publish.lock().expect("snapshot publish mutex poisoned");
        if let Some(cur) = self.read_stored()? {
            let has_image = cur.len.is_some()
                && cur.checksum.is_some()
                && cur.image.as_ref().is_some_and(|i| self.dir.join(i).exists());
            if meta.last_log_id < cur.meta.last_log_id
                || (meta.last_log_id == cur.meta.last_log_id && has_image)
            {
                tracing::debug!(built = ?meta.last_log_id, current = ?cur.meta.last_log_id, "not publishing an image that is not newer than the current snapshot");
                return Ok(false);
            }
        }
        fs::File::open(tmp.path())?.sync_all()?;
        let name = image_name(meta);
        let image = self.dir.join(&name);
        fs::rename(tmp.path(), &image)?;
        tmp.keep();
        file.renamed(image);
        sync_dir(&self.dir)?;
        self.write_stored(&StoredMeta {
            meta: meta.clone(),
            image: Some(name.clone()),
            len: Some(file.len()),
            checksum: Some(file.checksum()),
        })?;
        self.delete_images_except(Some(&name))?;
        self.stats.on_current(index_of(meta), file.len());
        Ok(true)
    }

    /// Installs a received image: the store takes the file over, then `current.json` records
    /// `meta` with no image.
    fn install_blocking(&self, meta: &SnapshotMeta, file: SnapshotFile) -> io::Result<()> {
        let started = Instant::now();
        let path = file.path().to_path_buf();
        let len = file.len();
        drop(file);
        self.store.install(&path).map_err(Error::into_io)?;
        // openraft now takes `meta.last_log_id` as applied; the image must hold exactly that,
        // or the next applies would land on the wrong state. (The image was checksummed in
        // transit, so a mismatch is a bug on the sending side: stop rather than diverge.)
        let holds = self.store.applied().map_err(Error::into_io)?.map(|a| log_id(a.term, a.index));
        if holds != meta.last_log_id {
            let message = format!(
                "installed snapshot image holds position {holds:?}, its meta says {:?}",
                meta.last_log_id
            );
            return Err(Error::corrupt(message).into_io());
        }
        let _guard = self.publish.lock().expect("snapshot publish mutex poisoned");
        self.write_stored(&StoredMeta {
            meta: meta.clone(),
            image: None,
            len: None,
            checksum: None,
        })?;
        self.delete_images_except(None)?;
        self.stats.on_installed(index_of(meta));
        self.stats.on_current(index_of(meta), 0);
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = len, secs = started.elapsed().as_secs_f64(), "installed snapshot");
        Ok(())
    }

    /// Builds an image, one build at a time.
    async fn build(&self) -> io::Result<Snapshot> {
        let _building = self.building.lock().await;
        self.build_with_space().await
    }

    /// [`StateMachine::build_blocking`] on the blocking pool; one that finds the disk full (the
    /// image is as large as the database) is built again once space returns. The caller holds
    /// `building`.
    async fn build_with_space(&self) -> io::Result<Snapshot> {
        loop {
            let this = self.clone();
            match Self::blocking(move || this.build_blocking()).await {
                Err(e) if is_no_space(&e) => {
                    tracing::warn!(error = %e, "building a snapshot found the disk full; building it again once space returns");
                    self.wait_for_space().await;
                }
                done => return done,
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        self.build().await
    }
}

/// A log id from its parts.
pub fn log_id(term: Term, index: Lsn) -> LogId {
    openraft::LogId::new_term_index(term, index)
}

/// Committed entries beyond this many record bytes are applied in more than one transaction.
const APPLY_BATCH_BYTES: usize = 16 << 20;

impl StateMachine {
    /// Applies `batch` in one store transaction, then answers its responders.
    async fn apply_batch(
        &self,
        batch: Vec<Committed>,
        responders: Vec<openraft::storage::ApplyResponder<TypeConfig>>,
    ) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let first = batch[0].index;
        let last = batch[batch.len() - 1].index;
        let batch = Arc::new(batch);
        let mut attempts = 0u64;
        loop {
            match self.store.apply(batch.clone()).await {
                Ok(()) => break,
                Err(e) if e.is_no_space() => {
                    // Rolled back: the same batch applies once there is space, at once if the
                    // ballast gives it some. Raft goes on meanwhile (appends, votes, commits);
                    // only applying waits.
                    if self.space.as_ref().is_some_and(|space| space.release_ballast()) {
                        continue;
                    }
                    if attempts.is_multiple_of(20) {
                        tracing::warn!(first, last, attempts, error = %chain(&e), "cannot apply committed entries: the disk is full; applying them again once space returns");
                    }
                    attempts += 1;
                    self.wait_for_space().await;
                }
                Err(e) => {
                    let deterministic = e.is_deterministic();
                    tracing::error!(first, last, deterministic, error = %chain(&e), "cannot apply committed entries; stopping");
                    return Err(e.into_io());
                }
            }
        }
        if attempts > 0 {
            tracing::info!(
                first,
                last,
                attempts,
                "applied committed entries after the disk had space again"
            );
        }
        for r in responders {
            r.send(());
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let store = self.store.clone();
        let applied = Self::blocking(move || store.applied().map_err(Error::into_io)).await?;
        match applied {
            None => Ok((None, StoredMembership::default())),
            Some(a) => Ok((Some(log_id(a.term, a.index)), stored_membership(a.membership)?)),
        }
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        let mut bytes = 0;
        // An entry the log cannot read is `InvalidData`: corruption, as the store's would be.
        let next = |e: io::Error| Error::from(e).into_io();
        while let Some((entry, responder)) = entries.try_next().await.map_err(next)? {
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
            bytes += record.as_ref().map_or(0, wal::Record::size);
            batch.push(Committed { term, index, record, membership });
            if let Some(r) = responder {
                responders.push(r);
            }
            // A follower catching up is handed many entries at once: apply them in bounded
            // transactions instead of holding them all.
            if bytes >= APPLY_BATCH_BYTES {
                self.apply_batch(std::mem::take(&mut batch), std::mem::take(&mut responders))
                    .await?;
                bytes = 0;
            }
        }
        self.apply_batch(batch, responders).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// Defers a snapshot the policy asks for while the disk is full: an image is as large as
    /// the database. One openraft needs (`force`) is built, waiting for space if it must.
    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        if !force && self.disk_full() {
            tracing::info!("not building a snapshot now: the disk is full");
            return None;
        }
        Some(self.clone())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> io::Result<()> {
        let this = self.clone();
        let meta = meta.clone();
        Self::blocking(move || this.install_blocking(&meta, snapshot)).await?;
        // The received image became the live database, so this node holds no image to send
        // or to start from. Copy one in the background now, while the node catches up and
        // serves, rather than later on openraft's state-machine task (which would hold up
        // applies, or a restart).
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.build().await {
                tracing::warn!(error = %e, "building a snapshot after an install failed; will build on demand");
            }
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let this = self.clone();
        let installed = match Self::blocking(move || this.current()).await? {
            Current::None => return Ok(None),
            Current::Image(s) => return Ok(Some(s)),
            Current::NoImage(meta) => meta,
            Current::Damaged { meta, path, actual, checksum } => {
                // The image goes to other nodes, which would refuse it at every attempt (a
                // follower that needs it would never catch up), so it is checked before it is
                // handed out and a damaged one is replaced by a new build.
                tracing::error!(
                    image = %path.display(),
                    crc32 = format_args!("{actual:08x}"),
                    recorded = format_args!("{checksum:08x}"),
                    "the current snapshot's image is damaged (its checksum differs from the one recorded when it was made); a new one will be built from the database"
                );
                self.stats.on_damaged();
                meta
            }
        };
        // openraft needs a snapshot to send to a follower behind the purged log, and reads it
        // at start. The installed one became the live database, so copy the database now; its
        // position is at least the installed one. Wait for a build in progress first: it may
        // publish exactly that.
        let _building = self.building.lock().await;
        let this = self.clone();
        if let Current::Image(s) = Self::blocking(move || this.current()).await? {
            return Ok(Some(s));
        }
        tracing::info!(installed = ?installed.last_log_id, "the current snapshot has no image; building one from the database");
        let snapshot = self.build_with_space().await?;
        if snapshot.meta.last_log_id < installed.last_log_id {
            tracing::warn!(installed = ?installed.last_log_id, built = ?snapshot.meta.last_log_id, "the database is behind the installed snapshot");
        }
        Ok(Some(snapshot))
    }
}
