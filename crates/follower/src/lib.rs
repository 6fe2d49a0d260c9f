//! The state machine: it runs on every node, the leader included, and applies committed
//! records to SQLite. It is the only way the database changes.
//!
//! The crate is named after the role in the design (`follower`), but it is not the code of a
//! node that follows: the leader runs it too, and applies its own records through it like
//! any other node. Executing client SQL is the writer's job (the `leader` crate), which only
//! speculates and proposes; the two crates never depend on each other and share the node's
//! database thread ([`sql::Worker`]).
//!
//! [`Replica`] implements [`raft::state_machine::Store`] on the node's single read-write
//! [`sql::Db`], which it moves onto the database thread ([`Replica::new`]) and hands out as a
//! [`sql::Worker`] ([`Replica::db`]). openraft hands it committed entries only, in log order;
//! [`Replica::apply`] sends a batch of them to the thread as one job, which applies them in ONE
//! SQLite transaction together with the new last-applied position (see [`sql::Db::apply`]), so
//! after a crash the database and its applied position agree and replay resumes exactly after
//! it.
//!
//! The database publishes the new applied index on a `tokio::sync::watch` channel
//! ([`Replica::applied`]) as soon as a transaction commits it ([`sql::Db::on_commit`]), on the
//! database thread: the leader's writer waits on it before answering a batch, and reads that
//! need "at least LSN n" wait on it too. On the leader an apply may commit nothing yet (its
//! entries wait in the writer's held transaction for the ones stacked after them, see
//! [`sql::Db::execute_stacked`]); the index then moves when they commit. A second watch ([`Replica::position`]) carries the same index with the
//! apply hash after it ([`sql::chain`]), for the reports a follower sends its leader.
//!
//! The writer's speculations run on the same thread: speculation and apply never run at the
//! same time, so a speculation always sees exactly the applied state (plus, when stacked, the
//! writer's own batches in flight).
//!
//! Snapshots: [`Store::snapshot_to`] writes an image through an [`sql::ImageSource`] taken
//! once at construction, from its own read-only connection, NOT on the database thread, so a
//! long copy of a big database never stops applies or speculation; the position it returns is
//! read from the image, so it matches the image whatever was applied meanwhile.
//! [`Store::install`] runs [`sql::Db::install`] (a rename, not a copy) on the thread, which
//! publishes the installed position on the watch.
//!
//! Errors keep their meaning: a [`sql::Error`] becomes a [`raft::state_machine::Error`] by
//! [`sql::Error::is_deterministic`], with the `sql::Error` itself as the cause. A committed
//! entry this database cannot apply as the leader did (`Corrupt`: a conflict, a missing table,
//! a failing DDL statement) stops the node with a reason that says restarting will not help;
//! a failure of the disk or the file system stops it too, with a reason that says to fix the
//! cause and restart. A panic on the database thread ([`sql::Error::Stopped`]) fails the apply
//! the same way (as a failure to fix and restart from). A full disk ([`sql::Error::is_no_space`])
//! is `NoSpace`: the state machine applies the same batch again once space returns, and this
//! store skips the entries of it that a first attempt committed already. Nothing is retried
//! here or skipped otherwise.
//!
//! What it does not do: decide what is committed (Raft does), or execute client SQL.

use std::path::Path;
use std::sync::Arc;

use raft::state_machine::{self, Committed, Store};
use tokio::sync::watch;
use wal::Applied;

/// The node's database as Raft's state machine. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    /// The database thread owning the single read-write `Db`, shared with the leader's writer.
    db: sql::Worker,
    /// Writes snapshot images off the database thread; follows installs.
    images: sql::ImageSource,
    /// The last applied log index, published after every apply and install.
    applied: Arc<watch::Sender<wal::Lsn>>,
    /// The same index with the apply hash after it, published at the same moments.
    position: Arc<watch::Sender<wal::Position>>,
}

/// A database error as the state machine's: corruption when doing it again fails the same way
/// ([`sql::Error::is_deterministic`]), else a failure of the environment. The `sql::Error`
/// itself is kept as the cause, not its text.
fn store_error(e: sql::Error) -> state_machine::Error {
    if e.is_no_space() {
        state_machine::Error::no_space(e)
    } else if e.is_deterministic() {
        state_machine::Error::corrupt(e)
    } else {
        state_machine::Error::transient(e)
    }
}

impl Replica {
    /// Moves an open database onto its own thread ([`sql::Worker`]); the applied watch starts
    /// at the database's stored position.
    pub fn new(mut db: sql::Db) -> sql::Result<Replica> {
        let position = db.position()?;
        let images = db.image_source();
        let applied = Arc::new(watch::channel(position.index).0);
        let position = Arc::new(watch::channel(position).0);
        // Published from the database thread, the moment a transaction moved the position: a
        // writer waiting for it wakes without waiting for openraft to hear of the apply. An
        // apply that only matched the leader's held speculations commits nothing and moves
        // nothing (see `sql::Db::execute_stacked`).
        let (published, positions) = (applied.clone(), position.clone());
        db.on_commit(move |position| {
            published.send_replace(position.index);
            positions.send_replace(position);
        });
        Ok(Replica { db: sql::Worker::spawn(db)?, images, applied, position })
    }

    /// A receiver of the last applied log index.
    pub fn applied(&self) -> watch::Receiver<wal::Lsn> {
        self.applied.subscribe()
    }

    /// A receiver of the last applied log index with the apply hash after it.
    pub fn position(&self) -> watch::Receiver<wal::Position> {
        self.position.subscribe()
    }

    /// The database thread, for the writer and the node's other users of the read-write
    /// connections.
    pub fn db(&self) -> sql::Worker {
        self.db.clone()
    }
}

impl Store for Replica {
    fn applied(&self) -> state_machine::Result<Option<Applied>> {
        self.db.run_blocking(|db| db.applied()).map_err(store_error)
    }

    fn apply(
        &self,
        entries: Arc<Vec<Committed>>,
    ) -> futures::future::BoxFuture<'static, state_machine::Result<()>> {
        let applied = self.applied.clone();
        let done = self.db.run(move |db| {
            // A batch applied again after "no space" may have committed a first part already
            // (a table check's pin splits batches): skip what is applied.
            let through = *applied.borrow();
            let batch: Vec<sql::Apply<'_>> = entries
                .iter()
                .filter(|e| e.index > through || through == 0)
                .map(|e| sql::Apply {
                    term: e.term,
                    index: e.index,
                    record: e.record.as_ref(),
                    membership: e.membership.as_deref(),
                })
                .collect();
            // The position is published by the callback set in `new`.
            db.apply(&batch)
        });
        Box::pin(async move { done.await.map_err(store_error) })
    }

    fn snapshot_to(&self, path: &Path) -> state_machine::Result<Option<Applied>> {
        self.images.write_image(path).map_err(store_error)
    }

    fn install(&self, path: &Path) -> state_machine::Result<()> {
        let path = path.to_path_buf();
        // The installed position is published by the callback set in `new`.
        self.db.run_blocking(move |db| db.install(&path)).map_err(store_error)
    }
}
