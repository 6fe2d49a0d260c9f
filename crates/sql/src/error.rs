//! The crate's error type: one enum whose variants say what the caller does next.
//!
//! * [`Error::InvalidInput`]: the client's request is malformed (bad JSON shape, too many
//!   statements, SQL too long), or a file given to Keel is not what it must be (a load that is
//!   not a SQLite database, an image without `_keel_meta`). `bin` answers 400 with the message.
//! * [`Error::Sqlite`]: SQLite failed outside any one user statement (opening, BEGIN, COMMIT,
//!   disk I/O). Per-statement SQL errors are *not* errors of this type: they are results
//!   ([`crate::StatementResult::Error`]) and the request still succeeds. A page that failed its
//!   checksum (`SQLITE_IOERR_DATA`, see [`crate::pagesum`]) is one of these and prints as
//!   [`DAMAGED`]: the database file on this node is damaged, which is not a transient I/O
//!   error ([`is_damaged`]).
//! * [`Error::Corrupt`]: a committed record cannot be applied identically here (a conflict, a
//!   missing table, a column-count mismatch, a failing DDL statement). The node must stop rather
//!   than diverge.
//! * [`Error::Io`]: file-system work around the database directory, images or loads failed.
//! * [`Error::Stopped`]: the database thread ([`crate::Worker`]) stopped after a job panicked;
//!   the node stops too (a failed apply) and must restart.
//!
//! [`Error::is_deterministic`] (toyDB's name) sorts them for a replica that failed to apply a
//! committed entry: doing it again fails the same way (`Corrupt`, `InvalidInput`, SQLite
//! errors about the data or the SQL), or the environment failed and the same call may succeed
//! later (`Io`, SQLite's I/O, full-disk, busy, out-of-memory errors). Either way the node
//! stops; the answer decides what the operator is told to do.

/// The `sql` crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong, classified by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client's input is malformed; answer 400 with this message.
    #[error("{0}")]
    InvalidInput(String),
    /// SQLite failed for a reason that is not one user statement's fault.
    #[error("sqlite: {}", describe(.0))]
    Sqlite(#[from] rusqlite::Error),
    /// A committed record cannot be applied identically on this replica; stop the node.
    #[error("cannot apply committed entry: {0}")]
    Corrupt(String),
    /// A file operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The database thread ([`crate::Worker`]) stopped because a job panicked: nothing more can
    /// run on the read-write connections until the node restarts.
    #[error("the database thread stopped: {0}")]
    Stopped(String),
}

impl Error {
    /// Whether doing the same thing again on this node fails the same way: the input, the data
    /// or the database file is at fault, not the environment. `false` for failures of the disk,
    /// the file system, memory or locks, which may pass once the cause is fixed.
    pub fn is_deterministic(&self) -> bool {
        match self {
            Error::InvalidInput(_) | Error::Corrupt(_) => true,
            Error::Sqlite(error) => !is_environmental(error),
            Error::Io(_) | Error::Stopped(_) => false,
        }
    }
}

impl Error {
    /// Whether the disk was full (SQLite's `SQLITE_FULL`, or `ENOSPC` from a file operation):
    /// the transaction was rolled back and nothing in the page cache is in doubt, so the same
    /// call succeeds once space returns. A failed fsync is not this (`SQLITE_IOERR_FSYNC`).
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::Sqlite(error) => {
                error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
                    || matches!(error, rusqlite::Error::SqliteFailure(e, _)
                        if e.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE)
            }
            Error::Io(error) => wal::is_no_space(error),
            _ => false,
        }
    }
}

/// What a read or a write that met a page failing its checksum is told: the database file on
/// this node is damaged, and this node's copy must be rebuilt from the others.
pub const DAMAGED: &str = "the database file on this node is damaged: a page failed its checksum \
     (storage corruption; the node's log names the file and offset); rebuild this node's copy \
     from the cluster (keel admin rebuild)";

/// Whether a SQLite error is a page that failed its checksum (`SQLITE_IOERR_DATA`, raised by
/// [`crate::pagesum`]): the database file is damaged. Doing it again fails the same way, so it
/// is not an environmental failure (`is_environmental`).
pub fn is_damaged(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _) if e.extended_code == rusqlite::ffi::SQLITE_IOERR_DATA)
}

/// A SQLite error as Keel prints it: [`DAMAGED`] for a page that failed its checksum (SQLite
/// itself only says "disk I/O error"), SQLite's own text otherwise.
pub(crate) fn describe(error: &rusqlite::Error) -> std::borrow::Cow<'static, str> {
    if is_damaged(error) { DAMAGED.into() } else { error.to_string().into() }
}

/// Whether a SQLite error comes from the environment (I/O, space, memory, locks, permissions)
/// rather than from the SQL or the data; errors without a SQLite code (type conversions) are
/// about the data.
pub(crate) fn is_environmental(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    !is_damaged(error)
        && matches!(
            error.sqlite_error_code(),
            Some(
                C::SystemIoFailure
                    | C::DiskFull
                    | C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::OutOfMemory
                    | C::CannotOpen
                    | C::ReadOnly
                    | C::PermissionDenied
                    | C::FileLockingProtocolFailed
                    | C::NoLargeFileSupport
                    | C::OperationInterrupted
            )
        )
}

#[cfg(test)]
mod tests {
    use rusqlite::ffi;
    use test_case::test_case;

    use super::*;

    fn sqlite(code: i32) -> Error {
        Error::Sqlite(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None))
    }

    #[test_case(Error::Corrupt("conflict".into()), true; "corrupt")]
    #[test_case(Error::InvalidInput("not an image".into()), true; "invalid input")]
    #[test_case(sqlite(ffi::SQLITE_CONSTRAINT), true; "constraint")]
    #[test_case(sqlite(ffi::SQLITE_ERROR), true; "sql error")]
    #[test_case(sqlite(ffi::SQLITE_CORRUPT), true; "corrupt file")]
    #[test_case(sqlite(ffi::SQLITE_IOERR), false; "disk io")]
    #[test_case(sqlite(ffi::SQLITE_IOERR_DATA), true; "page checksum")]
    #[test_case(sqlite(ffi::SQLITE_FULL), false; "disk full")]
    #[test_case(sqlite(ffi::SQLITE_BUSY), false; "busy")]
    #[test_case(Error::Io(std::io::Error::other("EIO")), false; "io")]
    fn deterministic(error: Error, expect: bool) {
        assert_eq!(error.is_deterministic(), expect, "{error}");
    }

    #[test]
    fn a_failed_page_checksum_names_the_damage() {
        let error = sqlite(ffi::SQLITE_IOERR_DATA);
        assert!(error.to_string().contains("damaged: a page failed its checksum"), "{error}");
        assert!(!sqlite(ffi::SQLITE_IOERR).to_string().contains("checksum"));
    }
}
