//! The crate's error type: one enum whose variants say what the caller does next.
//!
//! * [`Error::InvalidInput`]: the client's request is malformed (bad JSON shape, too many
//!   statements, SQL too long), or a file given to Keel is not what it must be (a load that is
//!   not a SQLite database, an image without `_keel_meta`). `bin` answers 400 with the message.
//! * [`Error::Sqlite`]: SQLite failed outside any one user statement (opening, BEGIN, COMMIT,
//!   disk I/O). Per-statement SQL errors are *not* errors of this type: they are results
//!   ([`crate::StatementResult::Error`]) and the request still succeeds.
//! * [`Error::Corrupt`]: a committed record cannot be applied identically here (a conflict, a
//!   missing table, a column-count mismatch, a failing DDL statement). The node must stop rather
//!   than diverge.
//! * [`Error::Io`]: file-system work around the database directory, images or loads failed.

/// The `sql` crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong, classified by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client's input is malformed; answer 400 with this message.
    #[error("{0}")]
    InvalidInput(String),
    /// SQLite failed for a reason that is not one user statement's fault.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A committed record cannot be applied identically on this replica; stop the node.
    #[error("cannot apply committed entry: {0}")]
    Corrupt(String),
    /// A file operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
