//! Keel's HTTP API as Rust types, and a client for it.
//!
//! Keel is a replicated SQL database (SQLite under Raft) that speaks
//! [rqlite](https://rqlite.io/docs/api/api/)'s HTTP API and adds a few things of its own: an
//! `lsn` in every database answer, `min_lsn`, `durability`, `request_id`, admin endpoints and
//! a change stream. This crate is that API, twice:
//!
//! * **Wire types** (always built): serde structs for every request and answer, shared by
//!   Keel's server and its clients, so both sides agree by construction. They serialize to
//!   exactly the JSON Keel sends (optional fields absent, not `null`, where Keel leaves them
//!   out; fields in alphabetical order, as Keel writes object keys), and they read rqlite's
//!   answers too.
//!   - [`db`]: `/db/execute`, `/db/query`, `/db/request`: [`Statement`], [`Answer`],
//!     [`StatementResult`], the [`Level`] and [`Durability`] parameters.
//!   - [`failure`]: [`ErrorAnswer`], the body of every error answer.
//!   - [`status`]: `/status`. [`cluster`]: `/nodes`, `/leader`, `/join`, the admin routes.
//!   - [`queue`]: queued writes. [`load`]: `/db/load`. [`changes`]: the change stream.
//!   - [`requests`]: what became of a write, by its request id. [`checksum`]: table checks.
//!   - [`internal`]: the node-to-node calls beside Raft's own (not a client API).
//! * **The client** (cargo feature `client`, on by default): [`Client`], async on tokio with
//!   reqwest and rustls. It is given a list of node URLs, finds the leader and remembers it,
//!   follows redirects and "not the leader" answers, moves to another node when one does not
//!   answer, and retries a write whose outcome is unknown with the same `request_id`, which
//!   Keel answers with the first outcome instead of running the write twice.
//!   [`blocking::Client`] wraps it for synchronous code.
//!
//! Without the client, the crate depends on serde and serde_json only:
//! `keel-api = { version = "…", default-features = false }`.

pub mod changes;
pub mod checksum;
pub mod cluster;
pub mod db;
pub mod failure;
pub mod internal;
pub mod load;
pub mod queue;
pub mod requests;
pub mod sse;
pub mod status;

#[cfg(feature = "client")]
pub mod blocking;
#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
mod error;

#[cfg(feature = "client")]
pub use client::{
    Call, ChangeStream, Client, ClientBuilder, Credentials, Download, FIRST_PAUSE, MAX_PAUSE,
    Readiness, base_url, describe,
};

pub use db::{Answer, Durability, Level, Statement, StatementResult};
#[cfg(feature = "client")]
pub use error::{Error, Result};
pub use failure::ErrorAnswer;

/// A log position: the index of a Raft entry (a record of writes). Answers carry it as `lsn`.
pub type Lsn = u64;
/// A node's id in the cluster (positive).
pub type NodeId = u64;
/// A Raft term.
pub type Term = u64;

/// Header names Keel sends or reads besides HTTP's own.
pub mod headers {
    /// Keel's version on every answer (rqlite's header name).
    pub const VERSION: &str = "x-rqlite-version";
    /// On a database answer: the Raft address of the node that ran the request.
    pub const SERVED_BY: &str = "x-rqlite-served-by";
    /// Sent by a change-stream client to resume after an event.
    pub const LAST_EVENT_ID: &str = "last-event-id";
}
