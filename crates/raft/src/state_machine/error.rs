//! Why the store failed, in the two kinds the node must tell apart.
//!
//! openraft's state machine speaks `std::io::Error` only, and stops the node on any error it
//! gets from `apply` or `install_snapshot` (the core turns it into a `StorageError`, then
//! `Fatal`, and `cluster::stopped` reports it). Stopping is right for every failure to apply a
//! committed entry, but what the operator does next is not the same:
//!
//! * [`Error::Corrupt`]: doing it again fails the same way (toyDB's `Error::is_deterministic`).
//!   The entry cannot be applied here as the leader applied it: a conflict or a missing table
//!   (this replica's database is not the leader's), an unreadable record or image. A restart
//!   replays the same entry and stops again; the node's data must be replaced.
//! * [`Error::NoSpace`]: the disk is full. The batch was rolled back, so the state machine
//!   applies it again once space returns (see `crate::space`), and the node does not stop.
//! * [`Error::Transient`]: the environment failed (disk I/O, a full disk, a lock held too long).
//!   A restart, once the cause is fixed, replays the log from the position stored with the
//!   data and goes on.
//!
//! The store classifies (`follower` asks `sql::Error::is_deterministic`); the state machine
//! hands the typed error to openraft inside the `io::Error` ([`Error::into_io`]) rather than
//! as a string, so the kind (`InvalidData` for corruption) and the cause chain reach openraft's
//! stop reason, and the caller's message says what to do.

use std::io;

/// A boxed cause, as the store had it.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result of a [`crate::state_machine::Store`] call.
pub type Result<T> = std::result::Result<T, Error>;

/// A store failure, classified by whether doing it again can succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Doing it again fails the same way: this replica cannot apply what was committed as the
    /// leader did. The node stops; restarting it will not help.
    #[error(
        "this replica cannot apply what the cluster committed, and trying again fails the same \
         way (restarting will not help: stop the node, move its data directory aside and add it \
         back as a new member, so it copies the leader's database)"
    )]
    Corrupt(#[source] Cause),
    /// The node's environment failed; the same operation may succeed once the cause is fixed.
    #[error(
        "the node's storage failed (fix the cause, e.g. a full disk or I/O errors, and restart \
         the node: it replays the log from its last applied entry)"
    )]
    Transient(#[source] Cause),
    /// The disk is full: nothing of the batch was applied, and the same batch applies once
    /// space returns. Told apart from [`Error::Transient`] because it is safe to retry in
    /// place: no fsync failed, so nothing in the page cache is in doubt.
    #[error(
        "the disk is full (nothing of the batch was applied; it is applied again once space \
         returns)"
    )]
    NoSpace(#[source] Cause),
}

impl Error {
    /// A failure that doing it again repeats.
    pub fn corrupt(cause: impl Into<Cause>) -> Error {
        Error::Corrupt(cause.into())
    }

    /// A failure of the environment.
    pub fn transient(cause: impl Into<Cause>) -> Error {
        Error::Transient(cause.into())
    }

    /// A failure for lack of space.
    pub fn no_space(cause: impl Into<Cause>) -> Error {
        Error::NoSpace(cause.into())
    }

    /// Whether the disk was full: the same call succeeds once space returns.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::NoSpace(_))
    }

    /// Whether doing it again fails the same way (toyDB's `Error::is_deterministic`).
    pub fn is_deterministic(&self) -> bool {
        matches!(self, Error::Corrupt(_))
    }

    /// The cause, as the store gave it (downcast it to the store's own error type).
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        match self {
            Error::Corrupt(cause) | Error::Transient(cause) | Error::NoSpace(cause) => {
                cause.as_ref()
            }
        }
    }

    /// The `io::Error` openraft takes: `InvalidData` for [`Error::Corrupt`], `Other` for
    /// [`Error::Transient`], holding this error (not its text) so it can be downcast and its
    /// cause chain followed.
    pub fn into_io(self) -> io::Error {
        let kind =
            if self.is_deterministic() { io::ErrorKind::InvalidData } else { io::ErrorKind::Other };
        io::Error::new(kind, self)
    }
}

/// File-system work of the state machine itself: corruption when what it read is not valid
/// (`InvalidData`), otherwise the environment's failure.
impl From<io::Error> for Error {
    fn from(error: io::Error) -> Error {
        if error.kind() == io::ErrorKind::InvalidData {
            Error::corrupt(error)
        } else if wal::is_no_space(&error) {
            Error::no_space(error)
        } else {
            Error::transient(error)
        }
    }
}

/// Whether an `io::Error` from the state machine says the disk was full: the file system's
/// own (`ENOSPC`), or a store's [`Error::NoSpace`] carried inside it.
pub fn is_no_space(error: &io::Error) -> bool {
    wal::is_no_space(error)
        || error.get_ref().and_then(|e| e.downcast_ref::<Error>()).is_some_and(Error::is_no_space)
}

/// Renders an error and its causes as `a: b: c`, leaving out a cause whose text the rendering
/// already holds (openraft's wrappers repeat their source in their own message).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("changeset for missing table t")]
    struct Missing;

    #[test]
    fn corruption_keeps_its_kind_and_cause_through_io() {
        let io = Error::corrupt(Missing).into_io();
        assert_eq!(io.kind(), io::ErrorKind::InvalidData);
        let inner = io.get_ref().and_then(|e| e.downcast_ref::<Error>()).expect("typed inside");
        assert!(inner.is_deterministic());
        assert!(inner.cause().downcast_ref::<Missing>().is_some());
        let text = chain(&io);
        assert!(text.contains("restarting will not help"), "{text}");
        assert!(text.ends_with(": changeset for missing table t"), "{text}");
    }

    #[test]
    fn transient_is_other() {
        let error = Error::transient(io::Error::other("disk I/O error"));
        assert!(!error.is_deterministic());
        assert_eq!(error.into_io().kind(), io::ErrorKind::Other);
    }

    #[test]
    fn io_errors_classify_by_kind() {
        let bad = io::Error::new(io::ErrorKind::InvalidData, "log entry 7: bad record");
        assert!(Error::from(bad).is_deterministic());
        assert!(!Error::from(io::Error::from(io::ErrorKind::StorageFull)).is_deterministic());
    }

    #[test]
    fn chain_skips_repeated_text() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] Missing);
        assert_eq!(chain(&Outer(Missing)), "outer: changeset for missing table t");
    }
}
