//! The database thread: one OS thread per node that owns the read-write [`Db`] and runs every
//! job on it, in the order the jobs arrive.
//!
//! The writer's speculation, the state machine's applies, snapshot installs and the few other
//! users of the read-write connections each send a closure ([`Worker::run`]) through one
//! channel; the thread runs it on the `Db` and sends the result back on a oneshot channel. No
//! job crosses tokio's blocking pool and no mutex is handed from thread to thread: a write
//! costs one wake-up of this thread and one of the caller. A job can do any amount of work in
//! that wake-up (an apply of many committed entries is one job), and jobs already queued run
//! back to back without the thread sleeping in between, so an apply and a speculation queued
//! behind it run one after the other.
//!
//! Because there is one thread, jobs never overlap: a speculation always sees exactly the state
//! the applies before it left (what the mutex guaranteed before).
//!
//! Failures: a job that returns an error just returns it. A job that **panics** leaves the
//! database in a state nothing can vouch for (an invariant broke halfway through a
//! transaction), so the thread stops: it records the panic's message, drops the `Db` (SQLite
//! rolls back the open transaction; what was committed stays whole), and exits. The job that
//! panicked, every job still queued, and every job sent later get [`Error::Stopped`] with that
//! message, never a hang. The state machine turns that into a failed apply, which stops the
//! node. Reads do not go through this thread: they have their own pool ([`crate::Readers`]).
//!
//! Shutdown: when the last [`Worker`] handle is dropped, the thread runs the jobs already
//! queued, drops the `Db` (closing its connections) and exits.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::ThreadId;

use tokio::sync::oneshot;

use crate::{Db, Error, Result};

/// A job for the thread. It returns the panic's message if the closure it wraps panicked.
type Job = Box<dyn FnOnce(&mut Db) -> Option<String> + Send>;

/// Handle to the database thread. Cheap to clone; the thread ends when the last clone is
/// dropped (after running what is queued).
#[derive(Clone)]
pub struct Worker {
    /// Jobs into the thread.
    tx: mpsc::Sender<Job>,
    /// What the thread and its handles share.
    shared: Arc<Shared>,
}

/// State shared by the thread and its handles.
struct Shared {
    /// The message of the panic that stopped the thread, once one did.
    panic: Mutex<Option<String>>,
    /// The thread's id: a blocking call from the thread itself would wait for itself.
    thread: ThreadId,
}

impl Shared {
    /// The error a caller gets once the thread has stopped.
    fn stopped(&self) -> Error {
        let panic = self.panic.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Error::Stopped(panic.unwrap_or_else(|| "the database thread has exited".to_string()))
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("thread", &self.shared.thread).finish_non_exhaustive()
    }
}

impl Worker {
    /// Moves `db` onto a new thread (`keel-db`) and returns the handle that sends it jobs.
    pub fn spawn(db: Db) -> Result<Worker> {
        let (tx, rx) = mpsc::channel::<Job>();
        let panic = Mutex::new(None);
        let thread =
            std::thread::Builder::new().name("keel-db".to_string()).spawn(move || serve(db, rx))?;
        let shared = Arc::new(Shared { panic, thread: thread.thread().id() });
        Ok(Worker { tx, shared })
    }

    /// Queues `job` on the database thread at once (when this is called, not when the future
    /// is first polled, so jobs run in the order of the calls) and resolves to its result.
    /// [`Error::Stopped`] if the thread stopped (a job panicked) before or while running it.
    pub fn run<T, F>(&self, job: F) -> impl Future<Output = Result<T>> + Send + 'static
    where
        F: FnOnce(&mut Db) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(job, move |result| {
            let _ = reply.send(result);
        });
        let shared = self.shared.clone();
        async move {
            sent?;
            answer.await.unwrap_or_else(|_| Err(shared.stopped()))
        }
    }

    /// [`Worker::run`] for code that runs on a thread of its own (a blocking-pool thread, a
    /// test), not on an async task: waits for the result by blocking this thread. Refuses to
    /// run on the database thread itself, which would wait for itself forever.
    pub fn run_blocking<T, F>(&self, job: F) -> Result<T>
    where
        F: FnOnce(&mut Db) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        if std::thread::current().id() == self.shared.thread {
            return Err(Error::InvalidInput(
                "a database job waited for another job on the database thread; run it inline"
                    .to_string(),
            ));
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(job, move |result| {
            let _ = reply.send(result);
        })?;
        answer.recv().unwrap_or_else(|_| Err(self.shared.stopped()))
    }

    /// Queues `job`, whose result (or the error of a panic in it) goes to `reply`.
    fn send<T, F>(&self, job: F, reply: impl FnOnce(Result<T>) + Send + 'static) -> Result<()>
    where
        F: FnOnce(&mut Db) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        let job: Job = Box::new(move |db| match catch_unwind(AssertUnwindSafe(|| job(db))) {
            Ok(result) => {
                reply(result);
                None
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                // Recorded before anyone is told, so every caller sees the same reason.
                *shared.panic.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(message.clone());
                reply(Err(shared.stopped()));
                Some(message)
            }
        });
        self.tx.send(job).map_err(|_| self.shared.stopped())
    }
}

/// The thread's loop: run jobs until every handle is gone or a job panics.
fn serve(mut db: Db, rx: mpsc::Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        if let Some(message) = job(&mut db) {
            tracing::error!(panic = %message, "a database job panicked; the database thread stops and the node's writes and applies fail from now on");
            // Dropping the receiver first makes every queued job's reply fail at once.
            drop(rx);
            drop(db);
            return;
        }
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    format!("a database job panicked: {text} (the node must restart)")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn worker() -> (tempfile::TempDir, Worker) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        (dir, Worker::spawn(db).unwrap())
    }

    #[test]
    fn jobs_run_in_order_on_one_thread() {
        let (_dir, worker) = worker();
        let here = std::thread::current().id();
        let first = worker.run_blocking(|_| Ok(std::thread::current().id())).unwrap();
        let second = worker.run_blocking(|_| Ok(std::thread::current().id())).unwrap();
        assert_ne!(first, here);
        assert_eq!(first, second);
        let applied = worker.run_blocking(|db| db.applied()).unwrap();
        assert_eq!(applied.map(|a| a.index), None);
    }

    #[tokio::test]
    async fn a_panic_stops_the_thread_and_its_users_get_an_error() {
        let (_dir, worker) = worker();
        // A job queued behind the one that panics, held until the panic happened.
        let (release, held) = mpsc::channel::<()>();
        let blocked = worker.run(move |_| {
            held.recv().unwrap();
            Ok(())
        });
        let panicking = worker.run::<(), _>(|_| panic!("invariant broken"));
        let queued = worker.run(|_| Ok(1));
        release.send(()).unwrap();
        blocked.await.unwrap();
        let deadline = Duration::from_secs(10);
        let panicked = tokio::time::timeout(deadline, panicking).await.expect("the panic hung");
        let queued = tokio::time::timeout(deadline, queued).await.expect("a queued job hung");
        for error in [panicked.unwrap_err(), queued.unwrap_err()] {
            assert!(matches!(error, Error::Stopped(_)), "{error}");
            assert!(error.to_string().contains("invariant broken"), "{error}");
        }
        let later = worker.run(|_| Ok(2)).await.unwrap_err();
        assert!(later.to_string().contains("invariant broken"), "{later}");
        let later = worker.run_blocking(|_| Ok(3)).unwrap_err();
        assert!(matches!(later, Error::Stopped(_)), "{later}");
        assert!(!later.is_deterministic(), "a restart replays from the stored position");
    }

    #[test]
    fn dropping_the_last_handle_drains_the_queue() {
        let (_dir, worker) = worker();
        let (release, held) = mpsc::channel::<()>();
        let (done, finished) = mpsc::channel();
        // Hold the thread so the next jobs are still queued when the handle goes.
        let (started, running) = mpsc::channel();
        let (tx, first) = oneshot::channel();
        worker
            .send(
                move |_| {
                    started.send(()).unwrap();
                    held.recv().unwrap();
                    Ok(())
                },
                move |r| {
                    let _ = tx.send(r);
                },
            )
            .unwrap();
        running.recv().unwrap();
        for i in 0..3 {
            let done = done.clone();
            worker
                .send(move |_| Ok(i), move |r: Result<i32>| done.send(r.unwrap()).unwrap())
                .unwrap();
        }
        drop(worker);
        release.send(()).unwrap();
        let deadline = Duration::from_secs(10);
        let ran: Vec<i32> = (0..3).map(|_| finished.recv_timeout(deadline).unwrap()).collect();
        assert_eq!(ran, vec![0, 1, 2]);
        first.blocking_recv().unwrap().unwrap();
    }

    #[test]
    fn a_blocking_call_from_the_thread_itself_is_refused() {
        let (_dir, worker) = worker();
        let inner = worker.clone();
        let nested = worker.run_blocking(move |_| Ok(inner.run_blocking(|_| Ok(())))).unwrap();
        assert!(matches!(nested, Err(Error::InvalidInput(_))), "{nested:?}");
    }
}
