//! The one error type of the `wal` crate.
//!
//! Each variant says what the caller does about it:
//!
//! - [`Error::Io`]: the operating system refused a read, write, rename or directory listing. The
//!   log's in-memory state is unchanged; the caller may retry or stop. (A failed *fsync* never
//!   shows up here: the process aborts instead, see [`crate::Log`].)
//! - [`Error::Corrupt`]: bytes on disk are damaged somewhere other than a torn tail. Nothing is
//!   repaired automatically; an operator restores the node from a replica or a snapshot.
//! - [`Error::InvalidInput`]: the caller asked for something that would break the log's
//!   invariants (a hole, a term going backwards, a truncation below the purge point) or handed
//!   over bytes that are not a valid encoding. This is a bug in the caller or bad data from the
//!   network, never a disk problem.

use std::path::PathBuf;

use crate::Lsn;

/// How the message of an [`Error::Corrupt`] begins, for those that see it only as text (an
/// error openraft passed on as a string).
pub const CORRUPT: &str = "wal corrupt";

/// A `Result` whose error is the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in the `wal` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation other than fsync failed.
    #[error("wal i/o error: {0}")]
    Io(#[from] std::io::Error),

    /// Data on disk failed validation where a torn write cannot explain it.
    #[error("{CORRUPT}: {path} at offset {offset}{}: {reason}", lsn_suffix(.lsn))]
    Corrupt {
        /// The log index the damaged bytes hold or should hold, when known.
        lsn: Option<Lsn>,
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage within `path`.
        offset: u64,
        /// What failed validation.
        reason: String,
    },

    /// The caller's request or bytes are invalid; nothing was changed.
    #[error("wal invalid input: {0}")]
    InvalidInput(String),
}

impl Error {
    /// Whether the file system had no space left (`ENOSPC`, or a quota: `EDQUOT`). Unlike a
    /// failed fsync, nothing of the page cache is in doubt: the write did not happen, and the
    /// same write succeeds once space returns.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::Io(e) if is_no_space(e))
    }
}

/// Whether an I/O error says the file system had no space left (`ENOSPC`, `EDQUOT`).
pub fn is_no_space(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// Formats the optional LSN of a [`Error::Corrupt`] for its message.
fn lsn_suffix(lsn: &Option<Lsn>) -> String {
    match lsn {
        Some(lsn) => format!(" (lsn {lsn})"),
        None => String::new(),
    }
}

/// Storage traits (openraft's among them) speak `std::io::Error`; this keeps the kind where it is
/// meaningful: `InvalidData` for corruption, `InvalidInput` for a bad request.
impl From<Error> for std::io::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Io(err) => err,
            err @ Error::Corrupt { .. } => {
                std::io::Error::new(std::io::ErrorKind::InvalidData, err)
            }
            err @ Error::InvalidInput(_) => {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, err)
            }
        }
    }
}
