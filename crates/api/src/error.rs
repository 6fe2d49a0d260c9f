//! The client's errors: what went wrong, and whether trying again can help.

use crate::failure::ErrorAnswer;

/// A client call's failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster answered with an error status: the request was refused or failed there.
    /// `answer.error` says why; for JSON answers the extra fields are filled in.
    #[error("{} (HTTP {status})", answer.error)]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's body.
        answer: Box<ErrorAnswer>,
    },
    /// A write may or may not have been committed, and it carried no request id, so it could
    /// not be retried safely. Read the data to find out, or send writes with a request id.
    #[error("the write may or may not have been committed: {0}")]
    OutcomeUnknown(String),
    /// No node answered before the deadline; the message names each node tried and why.
    #[error("no node answered: {0}")]
    Unreachable(String),
    /// An answer that is not what the API promises (not JSON, or not the expected shape).
    #[error("unexpected answer from {url}: {message}")]
    Unexpected {
        /// The URL asked.
        url: String,
        /// What was wrong with it.
        message: String,
    },
    /// The client could not be built: a bad URL or certificate.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's error body, for a refusal.
    pub fn answer(&self) -> Option<&ErrorAnswer> {
        match self {
            Error::Refused { answer, .. } => Some(answer.as_ref()),
            _ => None,
        }
    }
}

/// The client's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
