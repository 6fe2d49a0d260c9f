//! The state machine every node runs, the leader included: apply committed records to SQLite.
//!
//! [`Replica`] implements [`raft::state_machine::Store`] on the node's single read-write
//! [`sql::Db`]. openraft hands it committed entries only, in log order; [`Replica::apply`]
//! applies a batch of them in ONE SQLite transaction together with the new last-applied
//! position (see [`sql::Db::apply`]), so after a crash the database and its applied position
//! agree and replay resumes exactly after it.
//!
//! After each apply the new applied index is published on a `tokio::sync::watch` channel
//! ([`Replica::applied`]): the leader waits on it before speculating the next batch, and reads
//! that need "at least LSN n" wait on it too.
//!
//! The same `Db` is shared with the `leader` crate's writer, behind one mutex: speculation and
//! apply never run at the same time, so a speculation always sees exactly the applied state.
//!
//! Snapshots: [`Store::snapshot_to`] writes an image through an [`sql::ImageSource`] taken
//! once at construction, from its own read-only connection, WITHOUT the mutex, so a long copy
//! of a big database never stops applies or speculation; the position it returns is read from
//! the image, so it matches the image whatever was applied meanwhile. [`Store::install`] takes
//! the mutex for [`sql::Db::install`] (a rename, not a copy) and publishes the installed
//! position on the watch.
//!
//! What it does not do: decide what is committed (Raft does), or execute client SQL.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use raft::state_machine::{Applied, Committed, Store};
use tokio::sync::watch;

/// The node's database as Raft's state machine. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    /// The single read-write connection, shared with the leader's writer.
    db: Arc<Mutex<sql::Db>>,
    /// Writes snapshot images without the `db` mutex; follows installs.
    images: sql::ImageSource,
    /// The last applied log index, published after every apply and install.
    applied: Arc<watch::Sender<wal::Lsn>>,
}

fn io_err(e: sql::Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl Replica {
    /// Wraps an open database; the applied watch starts at the database's stored position.
    pub fn new(db: Arc<Mutex<sql::Db>>) -> sql::Result<Replica> {
        let (start, images) = {
            let db = db.lock().expect("db mutex poisoned");
            (db.applied()?.map_or(0, |a| a.index), db.image_source())
        };
        let (tx, _) = watch::channel(start);
        Ok(Replica { db, images, applied: Arc::new(tx) })
    }

    /// A receiver of the last applied log index.
    pub fn applied(&self) -> watch::Receiver<wal::Lsn> {
        self.applied.subscribe()
    }

    /// The shared database handle.
    pub fn db(&self) -> Arc<Mutex<sql::Db>> {
        self.db.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, sql::Db> {
        // A panic while holding the lock means an invariant broke mid-apply; nothing can be
        // trusted after that.
        self.db.lock().expect("db mutex poisoned: a previous apply panicked")
    }
}

impl Store for Replica {
    fn applied(&self) -> io::Result<Option<Applied>> {
        let a = self.lock().applied().map_err(io_err)?;
        Ok(a.map(|a| Applied { term: a.term, index: a.index, membership: a.membership }))
    }

    fn apply(&self, entries: &[Committed]) -> io::Result<()> {
        let batch: Vec<sql::Apply<'_>> = entries
            .iter()
            .map(|e| sql::Apply {
                term: e.term,
                index: e.index,
                record: e.record.as_ref(),
                membership: e.membership.as_deref(),
            })
            .collect();
        self.lock().apply(&batch).map_err(io_err)?;
        if let Some(last) = entries.last() {
            self.applied.send_replace(last.index);
        }
        Ok(())
    }

    fn snapshot_to(&self, path: &Path) -> io::Result<Option<Applied>> {
        let a = self.images.write_image(path).map_err(io_err)?;
        Ok(a.map(|a| Applied { term: a.term, index: a.index, membership: a.membership }))
    }

    fn install(&self, path: &Path) -> io::Result<()> {
        let mut db = self.lock();
        db.install(path).map_err(io_err)?;
        let index = db.applied().map_err(io_err)?.map_or(0, |a| a.index);
        self.applied.send_replace(index);
        Ok(())
    }
}
