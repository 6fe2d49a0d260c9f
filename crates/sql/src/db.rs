//! The read-write connections: speculative execution on the leader, apply on every node,
//! install.
//!
//! There is one [`Db`] per node, owning the only read-write SQLite connections. It has three
//! jobs:
//!
//! 1. [`Db::execute`] (leader only) runs a group of client requests inside one transaction
//!    with a SQLite session recording row changes, turns what happened into a [`wal::Record`]
//!    plus per-statement results, and then **rolls everything back**. The database never
//!    changes here; the record goes through Raft. [`Db::execute_held`], the writer's, leaves
//!    the transaction open instead, for `apply` to commit when the record comes back from
//!    Raft (see `held`).
//! 2. [`Db::apply`] (every node, the leader included) applies committed records in one
//!    transaction together with the new applied position, which is stored in the database
//!    itself (`_keel_meta`), so data and position can never disagree after a crash, and with
//!    the answers of requests that carried a request id (`_keel_requests`, see
//!    [`crate::answers`]).
//! 3. [`Db::install`] (a node behind the leader's log) replaces the whole database by an image
//!    received in a Raft snapshot, by renaming the image into the database directory as the
//!    next generation (see `generation`): no copy, whatever the size.
//!
//! The database is a directory (`CURRENT` plus generation files); [`Db::readers`] and
//! [`Db::image_source`] share its current generation, so read pools and snapshot images
//! follow installs. Images ([`crate::ImageSource`]) are written from their own read-only
//! connection, never from this one, so a long copy does not stop applies.
//!
//! The work is split by job, each in its own file, all `impl Db`:
//!
//! * `speculation` (and its `run`): [`Db::execute`], the leader's execute-under-savepoint /
//!   capture-changes path, and the retries of requests whose id was seen before.
//! * `apply`: [`Db::apply`] and [`Db::install`], the only ways the database changes.
//! * `held`: the writer's speculations kept open until Raft commits them, stacked ones
//!   included ([`Db::execute_stacked`]), and their commit by `apply`.
//! * `crate::meta`, a module of its own: the applied position and Keel's bookkeeping tables,
//!   also read by [`crate::ImageSource`] from an image (so `image` does not depend on `db`).
//!
//! This file opens the two connections and hands out what shares the generation.
//!
//! ## Two connections
//!
//! `Db` holds two connections to the file, each set up once for its job: client SQL runs on one
//! with triggers and defensive mode on, and foreign keys as [`Limits::foreign_keys`] says (`keel
//! serve --fk`); records are applied on the other, with triggers disabled
//! (`SQLITE_DBCONFIG_ENABLE_TRIGGER` off), foreign keys off and defensive mode off (see
//! `apply`). Switching one connection between the two settings expired every prepared
//! statement twice per batch (SQLite expires them on any such change), so each batch prepared
//! all its statements again. `execute` sees what `apply` committed as any reader would, in its
//! next transaction; the two never run at once (`&mut self`).
//!
//! ## Not done here
//!
//! Deciding which requests form a group, waiting for commit, choosing the `lsn` each request is
//! answered with (`leader`, from [`Speculation::duplicates`]), reads (see `readers`), and
//! refusing stale apply positions (the state machine in `follower` owns ordering), deciding
//! when to snapshot (`raft`).

mod apply;
mod held;
mod speculation;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::config::DbConfig;
use wal::Applied;

pub use apply::Apply;
pub use speculation::{Speculation, WriteRequest};

use crate::chain::Recent;
use crate::checksum::Pins;
use crate::error::{Error, Result};
use crate::generation::{self, Generation, Live};
use crate::image::ImageSource;
use crate::limits::{self, Limits, Watchdog};
use crate::meta;
use crate::pagesum;
use crate::policy::Policy;
use crate::readers::Readers;
use crate::verdicts::{self, Verdicts};

/// The read-write side of a node's database: its client connection and its apply connection.
///
/// Invariants:
/// * No transaction is open between calls, except the speculations [`Db::execute_held`] and
///   [`Db::execute_stacked`] leave open on the client connection (`held` is then `Some`);
///   `apply` commits it when it has been handed every held record's entry, and anything else
///   that needs the connection rolls it back (applying first what it deferred). Both
///   connections are otherwise left in autocommit mode, whatever happens.
/// * The database changes only in [`Db::apply`] and [`Db::install`].
/// * `_keel_meta` exists and has exactly one row (id 1); its `idx` is NULL until the first
///   apply.
/// * No SQLite session outlives the call that created it, so `Db` is `Send`.
/// * `conn` is open on `generation`, which is the generation `CURRENT` names and the one
///   `live` holds; one `Db` per directory.
pub struct Db {
    /// The connection client SQL runs on (speculation, retries' lookups, dumps): triggers and
    /// defensive mode on, foreign keys as `limits` says, values capped by `limits`.
    conn: Connection,
    /// The connection records are applied on: foreign keys, triggers and defensive mode off.
    applier: Connection,
    /// The authorizer state of `conn`.
    policy: Policy,
    /// The statement timer of `conn`.
    watchdog: Watchdog,
    /// What one client statement may cost.
    limits: Limits,
    /// The authorizer's verdicts on client statements in `conn`'s statement cache.
    verdicts: Verdicts,
    /// Whether `conn`'s value cap and foreign-key setting match `limits`.
    capped: bool,
    /// The database directory.
    dir: PathBuf,
    /// The live generation, the file `conn` is open on.
    generation: Arc<Generation>,
    /// The live generation as shared with reader pools and image sources.
    live: Arc<Live>,
    /// Log indexes whose state checks want to read (`apply` splits its batches at them).
    pins: Arc<Pins>,
    /// The leader's speculations, still open on `conn` until their records are applied
    /// (see `held`). `None` whenever `conn` is in autocommit mode; every other use of `conn`
    /// rolls them back first.
    held: std::cell::Cell<Option<held::Held>>,
    /// How many entries `apply` took by committing a held speculation.
    held_commits: u64,
    /// The apply hash after the stored position, as `_keel_meta` holds it ([`crate::chain`]);
    /// `None` for a database that predates the hash, until its next blank entry.
    chain: Option<wal::ApplyHash>,
    /// This node's hashes of its recent entries, for comparing other nodes' reports.
    recent: Arc<Recent>,
    /// A planted fault (`keel serve --unsafe-plant-bug skew-apply-hash`): the next apply
    /// records a hash as if an earlier entry had differed.
    skew_apply_hash: bool,
    /// Told the applied position after every commit that moves it ([`Db::on_commit`]).
    on_commit: Option<Box<dyn Fn(wal::Position) + Send>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.generation.path).finish_non_exhaustive()
    }
}

/// How long the write connections wait for a lock (readers never block them in WAL mode; this
/// only covers checkpoints and snapshot copies).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Db {
    /// Opens (creating if needed) the database directory `dir`: the generation `CURRENT`
    /// names, in WAL mode with `synchronous=NORMAL` (the Raft log is the durable write-ahead
    /// log, and entries after the stored applied position are applied again after a crash).
    /// A fresh directory starts at generation 1; files of other generations, left by an
    /// install that crashed or could not delete them, are deleted.
    pub fn open(dir: &Path) -> Result<Db> {
        pagesum::register()?;
        let generation = Arc::new(generation::open_dir(dir)?);
        let (conn, policy, watchdog) = Self::connect(&generation.path)?;
        let applier = Self::connect_applier(&generation.path)?;
        let live = Arc::new(Live::new(generation.clone()));
        let applied = meta::read_applied(&conn)?.map_or(0, |a| a.index);
        let pins = Pins::new(live.clone(), applied);
        let chain = meta::read_chain(&conn)?;
        Ok(Db {
            conn,
            applier,
            policy,
            watchdog,
            limits: Limits::default(),
            verdicts: Verdicts::default(),
            capped: false,
            dir: dir.to_path_buf(),
            generation,
            live,
            pins,
            held: std::cell::Cell::new(None),
            held_commits: 0,
            chain,
            recent: Arc::default(),
            skew_apply_hash: false,
            on_commit: None,
        })
    }

    /// Sets what one client statement may cost, here and in reader pools made afterwards by
    /// [`Db::readers`].
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        // The next execute applies the value cap.
        self.capped = false;
    }

    /// Opens and configures the client connection (creating Keel's tables if needed).
    fn connect(path: &Path) -> Result<(Connection, Policy, Watchdog)> {
        let mut conn = Connection::open(path)?;
        // Before the first write of a new database: its pages carry checksums from the start.
        pagesum::reserve_for_checksums(&conn)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::InvalidInput(format!(
                "{}: cannot use WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
        meta::create_tables(&conn)?;
        // Client statements see the connection's counters (see the module docs); the first one
        // must not see the setup's insert: a DELETE of no row sets sqlite3_changes() to 0.
        conn.execute_batch("DELETE FROM _keel_meta WHERE 0")?;
        set_last_insert_rowid(&conn, 0);
        limits::harden(&conn)?;
        // Foreign keys follow `Limits::foreign_keys`, set before client SQL runs (`execute`).
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_FKEY, false)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true)?;
        let policy = Policy::default();
        policy.install(&mut conn)?;
        let watchdog = Watchdog::install(&mut conn)?;
        conn.set_prepared_statement_cache_capacity(verdicts::STATEMENT_CACHE);
        Ok((conn, policy, watchdog))
    }

    /// Opens and configures the apply connection, on a file [`Db::connect`] has set up. Applying
    /// takes what the leader made: no value cap of this node's, and writes to FTS shadow tables,
    /// which defensive mode makes read-only.
    fn connect_applier(path: &Path) -> Result<Connection> {
        let conn = Connection::open(path)?;
        // So that a VACUUM on this connection gives an older database page checksums.
        pagesum::reserve_for_checksums(&conn)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
        limits::harden(&conn)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, false)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_FKEY, false)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
        limits::cap_values(&conn, None)?;
        conn.set_prepared_statement_cache_capacity(verdicts::STATEMENT_CACHE);
        Ok(conn)
    }

    /// The live generation's database file (it changes at every [`Db::install`]).
    pub fn path(&self) -> &Path {
        &self.generation.path
    }

    /// The database directory given to [`Db::open`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A pool of `size` (at least one) read-only connections that follows installs (see
    /// [`Readers`]).
    pub fn readers(&self, size: usize) -> Result<Readers> {
        Readers::open(self.live.clone(), size, self.limits)
    }

    /// The pins of table checks ([`crate::checksum`]): shared, they follow installs.
    pub fn pins(&self) -> Arc<Pins> {
        self.pins.clone()
    }

    /// This node's apply hashes of its recent entries ([`crate::chain`]): shared, the leader
    /// compares its followers' reports with them.
    pub fn recent_hashes(&self) -> Arc<Recent> {
        self.recent.clone()
    }

    /// The applied index and the apply hash after it, as this node reports them. Before the
    /// first apply the index is 0 and there is no hash: index 0 is also a log entry (the
    /// first membership), whose hash a node that applied nothing does not have.
    pub fn position(&self) -> Result<wal::Position> {
        Ok(match self.applied()? {
            Some(applied) => wal::Position { index: applied.index, hash: self.chain },
            None => wal::Position { index: 0, hash: None },
        })
    }

    /// The apply hash after the last applied entry (see [`Db::position`]), without reading the
    /// index.
    pub fn position_hash(&self) -> Option<wal::ApplyHash> {
        self.chain
    }

    /// Plants a fault for tests of the apply hash (`keel serve --unsafe-plant-bug
    /// skew-apply-hash`): the next apply records a hash as if an earlier entry had been applied
    /// with other bytes, so this node's chain differs from every other node's from then on.
    /// The data stays right: only the hash says otherwise.
    pub fn plant_apply_hash_skew(&mut self) {
        self.skew_apply_hash = true;
    }

    /// Something that writes consistent images of this database from its own connection,
    /// without this `Db` (see [`ImageSource`]); it follows installs.
    pub fn image_source(&self) -> ImageSource {
        ImageSource::new(self.live.clone())
    }

    /// A connection for the crate's own read-only helpers (`load`): the apply connection,
    /// which sees committed state only, so the writer's held speculations stay (see `held`).
    pub(crate) fn connection(&self) -> &Connection {
        &self.applier
    }

    /// Runs SQLite's `PRAGMA optimize` on this node's copy: refreshes the query planner's
    /// statistics (`sqlite_stat1`) of the tables that need it, each analysis bounded
    /// (`analysis_limit`). Local to the node: statistics only steer query plans, and neither
    /// table checks nor the apply hash cover them. Returns `false`, doing nothing, while the
    /// writer holds a speculation open: the write lock is its, and the next call will do.
    pub fn optimize(&mut self) -> Result<bool> {
        if !self.conn.is_autocommit() {
            return Ok(false);
        }
        self.applier.execute_batch("PRAGMA analysis_limit = 1000; PRAGMA optimize = 0x10002;")?;
        Ok(true)
    }

    /// How many entries [`Db::apply`] took by committing the speculation [`Db::execute_held`]
    /// left open, instead of applying their records.
    pub fn held_commits(&self) -> u64 {
        self.held_commits
    }

    /// The last applied log position stored in the database, or `None` before the first apply.
    /// Read on the apply connection, which sees committed state only, so held speculations stay.
    pub fn applied(&self) -> Result<Option<Applied>> {
        meta::read_applied(&self.applier)
    }

    /// A textual dump of the schema and every row (see [`crate::dump()`]), as committed: held
    /// speculations are not in it and stay.
    pub fn dump(&self) -> Result<String> {
        crate::dump::dump_connection(&self.applier)
    }

    /// Calls `publish` with the applied position and the apply hash after it every time a
    /// commit moves them: an apply, the commit of held speculations, an install. The call runs
    /// right after the commit, on the thread that made it.
    pub fn on_commit(&mut self, publish: impl Fn(wal::Position) + Send + 'static) {
        self.on_commit = Some(Box::new(publish));
    }

    /// Everything through `index` is committed: tells the table checks' pins and
    /// [`Db::on_commit`]'s callback.
    fn committed(&self, index: wal::Lsn) {
        self.pins.applied(index);
        if let Some(publish) = &self.on_commit {
            publish(wal::Position { index, hash: self.chain });
        }
    }

    /// Rolls back any open transaction (and leaves the authorizer off), a held speculation
    /// included. Never fails: after a failed ROLLBACK SQLite has ended the transaction anyway.
    fn end_transaction(&self) {
        self.held.take();
        self.policy.take();
        if !self.conn.is_autocommit()
            && let Err(error) = internal(&self.conn, "ROLLBACK")
        {
            tracing::warn!(%error, "rollback failed");
        }
    }
}

/// Runs one of Keel's own statements (no parameters, no rows) through the connection's
/// statement cache: statements run for every batch or client statement would otherwise be
/// parsed every time. Only for internal statements: a cached statement is not prepared again,
/// so the authorizer does not see it.
fn internal(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Sets the connection's `sqlite3_last_insert_rowid()`.
fn set_last_insert_rowid(conn: &Connection, rowid: i64) {
    // SAFETY: the handle is valid while `conn` lives (it is borrowed for the call), and the
    // call only stores an integer in the connection, which no other thread uses meanwhile
    // (`Connection` is not `Sync`).
    unsafe { rusqlite::ffi::sqlite3_set_last_insert_rowid(conn.handle(), rowid) }
}
