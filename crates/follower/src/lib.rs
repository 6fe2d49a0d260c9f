//! The state machine: it runs on every node, the leader included, and applies committed
//! records to SQLite. It is the only way the database changes.
//!
//! The crate is named after the role in the design (`follower`), but it is not the code of a
//! node that follows: the leader runs it too, and applies its own records through it like
//! any other node. Executing client SQL is the writer's job (the `leader` crate), which only
//! speculates and proposes; the two crates never depend on each other and share the node's
//! [`sql::Db`] behind one mutex.
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
//! Errors keep their meaning: a [`sql::Error`] becomes a [`raft::state_machine::Error`] by
//! [`sql::Error::is_deterministic`], with the `sql::Error` itself as the cause. A committed
//! entry this database cannot apply as the leader did (`Corrupt`: a conflict, a missing table,
//! a failing DDL statement) stops the node with a reason that says restarting will not help;
//! a failure of the disk or the file system stops it too, with a reason that says to fix the
//! cause and restart. Neither is retried here or skipped.
//!
//! What it does not do: decide what is committed (Raft does), or execute client SQL.

use std::path::Path;
use std::sync::{Arc, Mutex};

use raft::state_machine::{self, Committed, Store};
use tokio::sync::watch;
use wal::Applied;

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

/// A database error as the state machine's: corruption when doing it again fails the same way
/// ([`sql::Error::is_deterministic`]), else a failure of the environment. The `sql::Error`
/// itself is kept as the cause, not its text.
fn store_error(e: sql::Error) -> state_machine::Error {
    if e.is_deterministic() {
        state_machine::Error::corrupt(e)
    } else {
        state_machine::Error::transient(e)
    }
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
    fn applied(&self) -> state_machine::Result<Option<Applied>> {
        self.lock().applied().map_err(store_error)
    }

    fn apply(&self, entries: &[Committed]) -> state_machine::Result<()> {
        let batch: Vec<sql::Apply<'_>> = entries
            .iter()
            .map(|e| sql::Apply {
                term: e.term,
                index: e.index,
                record: e.record.as_ref(),
                membership: e.membership.as_deref(),
            })
            .collect();
        self.lock().apply(&batch).map_err(store_error)?;
        if let Some(last) = entries.last() {
            self.applied.send_replace(last.index);
        }
        Ok(())
    }

    fn snapshot_to(&self, path: &Path) -> state_machine::Result<Option<Applied>> {
        self.images.write_image(path).map_err(store_error)
    }

    fn install(&self, path: &Path) -> state_machine::Result<()> {
        let mut db = self.lock();
        db.install(path).map_err(store_error)?;
        let index = db.applied().map_err(store_error)?.map_or(0, |a| a.index);
        self.applied.send_replace(index);
        Ok(())
    }
}
