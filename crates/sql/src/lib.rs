//! `sql`: every SQLite call of Keel.
//!
//! Keel replicates a SQLite database with Raft. This crate is the SQLite side of that: it turns
//! client SQL into replicable records on the leader, applies committed records on every node,
//! and serves reads. It knows nothing of Raft or HTTP; `leader`, `follower` and `bin` call it
//! from blocking threads.
//!
//! ## Data flow
//!
//! ```text
//! HTTP body ─ parse_statements / statements_from_text ─▶ [Statement]
//!   writes: Db::execute([WriteRequest]) ─▶ Speculation { record: wal::Record, results,
//!             duplicates } (BEGIN … session capture … ROLLBACK: nothing changes; a request
//!             whose request id is stored in _keel_requests is answered from there, not run)
//!           record ─ Raft ─▶ Db::apply([Apply]) on every node (one transaction, + position,
//!             + the answers of requests with an id)
//!   reads:  Db::readers(n) ─▶ Readers::query([Statement]) on a pool of read-only connections
//!   results: StatementResult::to_json(Format) ─▶ rqlite's JSON
//!   snapshots: Db::image_source() ─▶ ImageSource::write_image(path) ─▶ (Raft) ─▶
//!             Db::install(path) on a node behind: renamed in as the next generation
//!   backups: write_image ─▶ backup::strip_internal (a SQLite file) or backup::dump_sql (text)
//!   loads:  load::drop_user_objects, then load::FileLoad / load::TextLoad batches ─▶
//!             Db::execute, one write request per batch
//! ```
//!
//! * [`statement`]: the rqlite request body → [`Statement`]s (rqlite's parsing rules, limits).
//! * [`db`]: [`Db`], the read-write connections, one file per job: `db::speculation`
//!   ([`Db::execute`]: speculative execution with session capture, always rolled back) and
//!   `db::apply` ([`Db::apply`], the state machine, and [`Db::install`], a snapshot image
//!   becomes the database).
//! * [`worker`]: [`Worker`], the database thread: it owns the [`Db`] and runs the writer's
//!   speculations, the state machine's applies and every other use of the read-write
//!   connections as jobs, one after another, without a mutex or tokio's blocking pool.
//! * `meta`: the applied position ([`wal::Applied`]) and Keel's bookkeeping tables inside the
//!   database, plus the catalog reads speculation needs; shared by `db` and [`image`].
//! * [`chain`]: the apply hash, a running SHA-256 over the entries a node applied, which
//!   `meta` stores with the position and the leader compares with its followers' reports.
//! * `generation`: the database directory, `CURRENT` and the generations of the database file
//!   that make an install a rename. It declares the small `Holder` trait that reader pools
//!   implement, so it does not depend on [`readers`].
//! * [`image`]: [`ImageSource`], consistent images of the database from a read transaction of
//!   its own, so that snapshots of big databases do not stop applies.
//! * [`backup`] and [`load`]: user backups (a SQLite file without Keel's tables, or a
//!   sqlite3-style dump) and loads (a SQLite file or SQL text as batches of write statements).
//! * `schema`: the user tables and objects of a database, for `backup` and `load`.
//! * [`changes`]: changesets decoded into named row changes, for the change stream.
//! * [`answers`]: the stored answers of requests with a request id (`_keel_requests`), so that a
//!   retry is answered with the original results and `lsn` instead of running twice.
//! * `mask`: client statements that list the schema (`sqlite_master`, `PRAGMA table_list`, …)
//!   rewritten to leave Keel's `_keel_*` tables out.
//! * `policy`: the SQLite authorizer deciding what client SQL may do and spotting DDL; it also
//!   refuses every client access to Keel's tables.
//! * `determinism`: rejects `CREATE TABLE … AS SELECT` that would differ between replicas.
//! * `session`: the unsafe FFI wrapper over SQLite's session extension.
//! * [`pagesum`]: page checksums in the database file, a VFS shim registered as SQLite's
//!   default (the crate's other `unsafe` code): a page damaged on disk fails its read with
//!   `SQLITE_IOERR_DATA` instead of being served ([`error::DAMAGED`]).
//! * [`readers`]: [`Readers`], the read-only connection pool, following installs.
//! * `encode` and [`result`]: values to rqlite's JSON ([`StatementResult::to_json`]).
//! * [`mod@dump`]: a deterministic text dump for comparing replicas; [`describe_changeset`]
//!   prints a changeset row by row.
//!
//! Modules depend on each other one way (no two modules refer to each other): `db` uses
//! `image`, `readers`, `generation` and `meta`; `image` and `readers` use `generation` and
//! `meta`, never `db`.
//!
//! ## Why row-based records
//!
//! rqlite replicates SQL text and rewrites `random()` and `now` to make it deterministic, which
//! cannot cover everything (triggers, defaults, `CURRENT_TIMESTAMP`). Keel runs the SQL once, on
//! the leader, and replicates its effect: the net row changes as a SQLite changeset
//! (`wal::Op::Changes`), so every replica ends up with the same bytes whatever the SQL called.
//! Schema changes are not visible to sessions and are replicated as SQL text (`wal::Op::Ddl`),
//! which must therefore be deterministic. What cannot be replicated this way (ATTACH, VACUUM,
//! explicit transactions, TEMP objects, connection pragmas) is rejected per statement.
//!
//! ## IMPLEMENTATION CAVEATS
//!
//! * `sqlite_sequence` is not recorded by sessions; [`Db::execute`] appends SQL fix-ups.
//! * A schema change runs without the main session; its side effects on other tables
//!   (foreign-key actions of DROP TABLE) are recorded by a separate session and replayed before
//!   it. Replicas apply with foreign keys and triggers off.
//! * Full-text indexes work, through their shadow tables; each applied write to them reopens
//!   the apply connection (a few hundred microseconds).
//! * One statement's changes are held in memory (session, changeset, record); a huge UPDATE
//!   makes a huge record. There is no cap yet beyond the request limits in [`statement`].
//! * Images, installs, backups and loads stream through files and SQLite's page cache; none
//!   holds a whole database in memory. An install renames the image, so the image must be on
//!   the database directory's file system to be free (otherwise it is copied first).
//! * A load is a sequence of ordinary writes: each batch is atomic, the whole load is not, and
//!   rows load with foreign keys enforced when they are on (see [`load`]).
//! * Replicas must run the same SQLite version as the leader for DDL (including `CREATE TABLE
//!   … AS SELECT` and `ANALYZE`) to produce identical results; the bundled SQLite guarantees
//!   this for one build of Keel.
//! * `last_insert_id` and `rows_affected` are the client connection's values after each
//!   statement, as rqlite reports them; they carry over from one request to the next on the
//!   leader, and start at 0 on a new leader (see [`db`]). A failing statement never leaves
//!   partial effects.

pub mod answers;
pub mod backup;
pub mod chain;
pub mod changes;
pub mod checksum;
pub mod db;
mod determinism;
pub mod dump;
mod encode;
pub mod error;
mod generation;
pub mod image;
pub mod limits;
pub mod load;
mod mask;
mod meta;
pub mod pagesum;
mod policy;
pub mod readers;
mod replay;
pub mod result;
mod schema;
mod session;
pub mod statement;
mod verdicts;
pub mod worker;

pub use db::{Apply, Db, Speculation, WriteRequest};
pub use dump::dump;
pub use encode::rfc3339_utc;
pub use error::{Error, Result};
pub use image::ImageSource;
pub use limits::Limits;
pub use readers::{Description, QUERY_WRITE_ERROR, Readers};
pub use result::{Format, StatementResult};
pub use statement::{
    MAX_SQL_LEN, MAX_STATEMENTS, Params, Statement, Value, parse_statements, statements_from_text,
};
pub use worker::Worker;

/// Describes every row change in a changeset (`wal::Op::Changes`), one line per change, e.g.
/// `INSERT t (1, 'a')`, `UPDATE t (1, 'a' → 'b', _)`, `DELETE t (1, 'a')`. For logs and tests.
pub fn describe_changeset(changeset: &[u8]) -> Result<Vec<String>> {
    Ok(session::describe(changeset)?)
}
