//! The read-write connections: speculative execution on the leader, apply on every node,
//! install.
//!
//! There is one [`Db`] per node, owning the only read-write SQLite connections. It has three
//! jobs:
//!
//! 1. [`Db::execute`] (leader only) runs a group of client requests inside one transaction
//!    with a SQLite session recording row changes, turns what happened into a [`wal::Record`]
//!    plus per-statement results, and then **rolls everything back**. The database never
//!    changes here; the record goes through Raft.
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
//! ## Retries: requests whose id was seen before
//!
//! Before running anything, `execute` looks up every request id of the group in
//! `_keel_requests`. A request whose id is stored is not run: it is answered with the stored
//! results and reported in [`Speculation::duplicates`] with the log index that carried it. A
//! request repeating an id that appears earlier in the same group is not run either: it gets
//! the earlier request's results (and, through the leader, the same new log index). Every other
//! request with an id puts its id and encoded results into the record, failed statements
//! included, so a retry of a failed request gets the same errors.
//!
//! ## How `execute` builds a record
//!
//! ```text
//! BEGIN IMMEDIATE; remember sqlite_sequence
//! for each request:            (transaction=true: SAVEPOINT keel_request)
//!   for each statement:        (transaction=false: SAVEPOINT keel_statement)
//!     mask the text (`mask`: listings of the schema leave Keel's tables out)
//!     prepare (the authorizer in `policy` denies what cannot be replicated, spots DDL)
//!     DML → step; the session records the rows
//!     DDL → cut: session changeset → Op::Changes; run the DDL under a side session that
//!           records what it does to *other* tables (FK cascades of DROP TABLE) → Op::Changes;
//!           Op::Ddl(sql); start a new session
//!   error → ROLLBACK TO the savepoint; drop the ops it added (see below)
//! cut the last session; append Op::Ddl fix-ups making sqlite_sequence equal; ROLLBACK
//! ```
//!
//! A changeset is computed against the *current* database, so it is always taken before the
//! DDL that follows it and before the final ROLLBACK. Each cut first opens and releases a
//! savepoint, which makes full-text indexes (FTS3/4/5 buffer their writes in memory until a
//! savepoint or commit) write their shadow tables, where the session records them. Rolled-back row changes drop out of the
//! session by themselves (it diffs against the current state). Ops already cut inside a
//! rolled-back scope are removed by truncating `ops` to its length at the scope's start; for that
//! to be exact, a scope whose SQL may contain DDL cuts the session when it starts, so no op cut
//! inside it holds changes from before it. Nothing else needs undoing because nothing commits.
//!
//! Results: `Exec` with `last_insert_id` and `rows_affected` read from the connection right after
//! the statement (`sqlite3_last_insert_rowid`, `sqlite3_changes`), whatever the statement was, as
//! rqlite reports them; or `Rows` when the request asked for rows (`/db/request`) and the
//! statement returns columns. A statement that inserts or writes no rows (DDL, a SELECT sent as a
//! write) therefore shows what the last one that did left, possibly in an earlier request: every
//! request runs on this one connection in log order, as on rqlite's single write connection.
//! Keel's own statements between client statements (savepoints, reads of the schema and of
//! `sqlite_sequence`) leave both values alone; the writes of `apply` run on the other connection.
//! A group run again after a statement that ended the transaction (below) starts from the rowid
//! the first attempt started from; `sqlite3_changes` cannot be set back, so a statement before
//! the first row write of such a group shows the thrown-away attempt's count. The client
//! connection is new after a restart or an install, and a new leader's has not run the records
//! it applied: there both values start at 0. Errors are per statement; with
//! `transaction` the request stops at its first error and its effects vanish, without it every
//! statement is attempted and a failing one has no effect. A transaction request whose
//! statements leave a deferred foreign-key violation fails with "FOREIGN KEY constraint failed"
//! on its last statement, as its COMMIT would have.
//!
//! A statement that ends the whole transaction itself (`INSERT OR ROLLBACK`, an `ON CONFLICT
//! ROLLBACK` constraint, `RAISE(ROLLBACK)` in a trigger) would leave later statements running in
//! autocommit mode, i.e. committing. `execute` detects this right after the statement, throws
//! the attempt away, and runs the whole group again with that statement answered by its error
//! without being run. Each retry removes one statement, so this terminates.
//!
//! ## How `apply` keeps replicas identical
//!
//! `Db` holds two connections to the file, each set up once for its job: client SQL runs on one
//! with triggers and defensive mode on, and foreign keys as [`Limits::foreign_keys`] says (`keel
//! serve --fk`); records are applied on the other, with triggers disabled
//! (`SQLITE_DBCONFIG_ENABLE_TRIGGER` off) and foreign keys off, because the
//! changesets already contain what triggers and cascades did on the leader, and defensive mode
//! off (see below). Switching one connection between the two settings expired every prepared
//! statement twice per batch (SQLite expires them on any such change), so each batch prepared
//! all its statements again. `execute` sees what `apply` committed as any reader would, in its
//! next transaction; the two never run at once (`&mut self`). `Op::Changes` is first validated against the
//! local schema (every table exists, same column count and primary key), since SQLite would
//! silently skip mismatching changes; then applied with a conflict handler that aborts on any
//! conflict. Any failure rolls the whole batch back and returns [`Error::Corrupt`]: the node
//! must stop rather than diverge. `Op::Ddl` runs as SQL text; `CREATE TABLE … AS SELECT` rows
//! are created there and only there (sessions do not record them, verified), and `execute`
//! rejects the non-deterministic kind.
//!
//! Virtual tables (FTS5) replicate through their shadow tables, which changesets write
//! underneath the virtual table. FTS5 caches its index structure per connection and only
//! notices commits of *other* connections: the client connection sees the applier's commits as
//! such, and after applying changes to a shadow table `apply` replaces its own connection with a
//! fresh one.
//!
//! ## Not done here
//!
//! Deciding which requests form a group, waiting for commit, choosing the `lsn` each request is
//! answered with (`leader`, from [`Speculation::duplicates`]), reads (see `readers`), and
//! refusing stale apply positions (the state machine in `follower` owns ordering), deciding
//! when to snapshot (`raft`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::fallible_iterator::FallibleIterator as _;
use rusqlite::{Batch, Connection, OptionalExtension as _, params};
use wal::{Lsn, Op, Record, Term};

use crate::answers;
use crate::determinism;
use crate::encode::{self, ReadError};
use crate::error::{Error, Result};
use crate::generation::{self, Generation, Live};
use crate::image::{self, ImageSource};
use crate::limits::{self, Limits, ResultBudget, Watchdog};
use crate::mask::{Masked, mask};
use crate::policy::{Mode, Observed, Policy, leading_keyword};
use crate::readers::Readers;
use crate::result::{StatementResult, error_message};
use crate::schema::{is_internal_table, quote_identifier};
use crate::session::{self, ApplyError, Session};
use crate::statement::{Binder, Statement};
use crate::verdicts::{self, Verdicts};

/// One client request in a group given to [`Db::execute`].
#[derive(Clone, Debug, PartialEq)]
pub struct WriteRequest {
    /// The statements, run in order.
    pub statements: Vec<Statement>,
    /// Run all statements as one unit: stop at the first error and undo the request.
    pub transaction: bool,
    /// rqlite's `db_timeout`: each statement's time limit, if lower than the node's
    /// ([`Limits::statement_time`]).
    pub timeout: Option<Duration>,
    /// `/db/request`: statements that return columns give `Rows`; otherwise `Exec` results.
    pub rows: bool,
    /// The client's idempotency key, carried into the record whether or not the request's
    /// statements succeeded (its answer is decided either way).
    pub request_id: Option<String>,
}

/// The outcome of [`Db::execute`]: what to propose, and what to answer once it commits.
///
/// Invariants:
/// * `results` and `duplicates` have one element per request given to [`Db::execute`].
/// * `record.requests` has one answer per request that ran and carried an id, in request order,
///   each id once; a request with `duplicates[i] = Some(_)` added nothing to the record.
#[derive(Debug)]
pub struct Speculation {
    /// The replicated effect of all requests (ops in execution order, answers of requests with
    /// an id).
    pub record: Record,
    /// One `Vec` per request, one result per statement (fewer when a transaction stopped).
    pub results: Vec<Vec<StatementResult>>,
    /// One per request: `Some(lsn)` when its request id was already applied, by the entry at
    /// `lsn`. Such a request was not run; its results are the stored ones and it must be answered
    /// with `lsn`, not the index of `record`. `None` for requests answered by `record`, including
    /// a repeat of an id earlier in the same group.
    pub duplicates: Vec<Option<Lsn>>,
}

/// The last log entry applied to this database, as stored inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The term of that entry.
    pub term: Term,
    /// Its index.
    pub index: Lsn,
    /// The last membership configuration applied (serialized by the caller), if any.
    pub membership: Option<String>,
}

/// One committed log entry for [`Db::apply`].
#[derive(Clone, Copy, Debug)]
pub struct Apply<'a> {
    /// The entry's term.
    pub term: Term,
    /// The entry's index.
    pub index: Lsn,
    /// The record of a normal entry; `None` for blank and membership entries.
    pub record: Option<&'a Record>,
    /// The serialized membership of a membership entry, stored as the new membership.
    pub membership: Option<&'a str>,
}

/// The read-write side of a node's database: its client connection and its apply connection.
///
/// Invariants:
/// * No transaction is open between calls; every method leaves the connection in autocommit
///   mode, whatever happens.
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
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.generation.path).finish_non_exhaustive()
    }
}

/// What [`Db::execute`] does with one request of a group.
enum Plan {
    /// Run it.
    Run,
    /// Its id was applied by the entry at `lsn`: answer `results` without running it.
    Applied {
        /// The index of the entry that carried the original request.
        lsn: Lsn,
        /// The original's results.
        results: Vec<StatementResult>,
    },
    /// Its id belongs to the earlier request at this position of the group: answer as that one.
    Repeat(usize),
}

/// Keel's metadata table: the applied position, inside the database it describes.
const META_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS _keel_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    term INTEGER,
    idx INTEGER,
    membership TEXT
);
INSERT OR IGNORE INTO _keel_meta (id) VALUES (1);";

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
        let generation = Arc::new(generation::open_dir(dir)?);
        let (conn, policy, watchdog) = Self::connect(&generation.path)?;
        let applier = Self::connect_applier(&generation.path)?;
        let live = Arc::new(Live::new(generation.clone()));
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
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::InvalidInput(format!(
                "{}: cannot use WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
        conn.execute_batch(META_SCHEMA)?;
        conn.execute_batch(answers::SCHEMA)?;
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

    /// Something that writes consistent images of this database from its own connection,
    /// without this `Db` (see [`ImageSource`]); it follows installs.
    pub fn image_source(&self) -> ImageSource {
        ImageSource::new(self.live.clone())
    }

    /// The client connection, for the crate's own read-only helpers (`load`).
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The last applied log position stored in the database, or `None` before the first apply.
    pub fn applied(&self) -> Result<Option<Applied>> {
        read_applied(&self.conn)
    }

    /// Makes the database image at `image` (written by [`ImageSource::write_image`] on some
    /// node: complete, fsynced, rollback-journal mode) the live database, taking the file over.
    ///
    /// The image is checked first (a SQLite file with a `_keel_meta` row); a bad one gives
    /// [`Error::InvalidInput`] and changes nothing. It is then renamed into the directory as
    /// the next generation, so it must be on the same file system to cost nothing (otherwise
    /// it is copied), opened in WAL mode as the new write connections, and named in `CURRENT`;
    /// then the old generation's files are deleted. After a crash at any point the directory
    /// holds the old database or the new one, whole. Readers that began before this returns
    /// finish on the old file; every read that starts after sees the new one.
    pub fn install(&mut self, image: &Path) -> Result<()> {
        image::check(image)?;
        self.end_transaction();
        let number = self.generation.number + 1;
        let path = self.dir.join(generation::file_name(number));
        // Left by an earlier install that failed before switching CURRENT.
        generation::remove_database(&path)?;
        generation::move_into(image, &self.dir, &path)?;
        // Open the new generation before it becomes CURRENT: if it cannot be opened, the old
        // database stays live, here and after a restart.
        let prepared = Self::connect(&path)
            .and_then(|opened| Ok((opened, Self::connect_applier(&path)?)))
            .and_then(|opened| generation::prepare_current(&self.dir, number).map(|()| opened))
            .and_then(|opened| generation::commit_current(&self.dir).map(|()| opened));
        let ((conn, policy, watchdog), applier) = match prepared {
            Ok(opened) => opened,
            Err(error) => {
                if let Err(cleanup) = generation::remove_database(&path) {
                    tracing::warn!(error = %cleanup, "cannot delete the refused generation");
                }
                return Err(error);
            }
        };
        // CURRENT names the new generation now; switch everything to it.
        let old_conn = std::mem::replace(&mut self.conn, conn);
        let old_applier = std::mem::replace(&mut self.applier, applier);
        self.policy = policy;
        self.watchdog = watchdog;
        self.verdicts = Verdicts::default();
        self.capped = false;
        let old = std::mem::replace(&mut self.generation, Arc::new(Generation { number, path }));
        self.live.switch(self.generation.clone());
        for old in [old_conn, old_applier] {
            if let Err((_, error)) = old.close() {
                tracing::warn!(%error, "closing a write connection of the old generation");
            }
        }
        // Until the directory is synced, a crash may bring CURRENT back to the old generation,
        // whose files must then still exist.
        generation::sync_dir(&self.dir)?;
        if let Err(error) = generation::remove_database(&old.path) {
            tracing::warn!(%error, file = %old.path.display(), "cannot delete the old generation; it goes at the next open");
        }
        tracing::info!(generation = number, "installed database image");
        Ok(())
    }

    /// Runs a group of client requests under one transaction with session capture, returns the
    /// record to replicate and the results, and rolls back: the database is never changed.
    /// Requests whose id was seen before are answered without running (see the module docs).
    ///
    /// Errors are infrastructure failures only; SQL errors are per-statement results.
    pub fn execute(&mut self, requests: &[WriteRequest]) -> Result<Speculation> {
        self.end_transaction();
        if !self.capped {
            limits::cap_values(&self.conn, Some(&self.limits))?;
            self.conn
                .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_FKEY, self.limits.foreign_keys)?;
            self.capped = true;
        }
        self.verdicts.check_schema(&self.conn)?;
        let plans = self.plan(requests)?;
        let run: Vec<&WriteRequest> = requests
            .iter()
            .zip(&plans)
            .filter(|(_, plan)| matches!(plan, Plan::Run))
            .map(|(request, _)| request)
            .collect();
        let mut skip: BTreeMap<(usize, usize), String> = BTreeMap::new();
        let last_rowid = self.conn.last_insert_rowid();
        let attempt = loop {
            // A retry starts from the rowid the first attempt started from, so that results
            // do not show what the thrown-away attempt inserted.
            set_last_insert_rowid(&self.conn, last_rowid);
            let outcome = Speculator::run(
                Checks {
                    policy: &self.policy,
                    watchdog: &self.watchdog,
                    limits: &self.limits,
                    verdicts: &self.verdicts,
                },
                &self.conn,
                &run,
                &skip,
            );
            self.end_transaction();
            match outcome {
                Ok(attempt) => break attempt,
                Err(Failure::EndedTransaction { request, statement, error }) => {
                    tracing::debug!(request, statement, %error, "statement ended the transaction; retrying without it");
                    skip.insert((request, statement), error);
                }
                Err(Failure::Fatal(error)) => return Err(error),
            }
        };
        let mut ran = attempt.results.into_iter();
        let mut results: Vec<Vec<StatementResult>> = Vec::with_capacity(requests.len());
        let mut duplicates = Vec::with_capacity(requests.len());
        let mut answers = Vec::new();
        for (request, plan) in requests.iter().zip(plans) {
            let (request_results, duplicate) = match plan {
                Plan::Run => {
                    let request_results = ran.next().expect("one result list per request run");
                    if let Some(id) = &request.request_id {
                        let results = answers::encode(&request_results);
                        answers.push(wal::RequestAnswer { id: id.clone(), results });
                    }
                    (request_results, None)
                }
                Plan::Applied { lsn, results } => (results, Some(lsn)),
                Plan::Repeat(first) => (results[first].clone(), duplicates[first]),
            };
            results.push(request_results);
            duplicates.push(duplicate);
        }
        Ok(Speculation {
            record: Record { ops: attempt.ops, requests: answers },
            results,
            duplicates,
        })
    }

    /// Decides, for each request of a group, whether to run it or answer it as a retry: its id
    /// is stored in `_keel_requests`, or belongs to an earlier request of the group.
    fn plan(&self, requests: &[WriteRequest]) -> Result<Vec<Plan>> {
        let mut first: HashMap<&str, usize> = HashMap::new();
        let mut plans = Vec::with_capacity(requests.len());
        for (i, request) in requests.iter().enumerate() {
            let Some(id) = request.request_id.as_deref() else {
                plans.push(Plan::Run);
                continue;
            };
            if let Some(&earlier) = first.get(id) {
                plans.push(Plan::Repeat(earlier));
                continue;
            }
            first.insert(id, i);
            plans.push(match answers::lookup(&self.conn, id)? {
                Some((lsn, results)) => Plan::Applied { lsn, results },
                None => Plan::Run,
            });
        }
        Ok(plans)
    }

    /// Applies committed entries in one SQLite transaction together with the new applied
    /// position (the last entry's) and membership (the last given). Each record's request
    /// answers are stored with the entry's index, and answers older than the retention window
    /// are pruned after each entry ([`crate::answers`]). On error nothing is applied;
    /// [`Error::Corrupt`] means a record cannot be applied identically here.
    pub fn apply(&mut self, entries: &[Apply<'_>]) -> Result<()> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        self.end_transaction();
        internal(&self.applier, "BEGIN IMMEDIATE")?;
        let outcome = self.apply_in_transaction(entries, last);
        match outcome {
            Ok(touched_shadow_tables) => {
                if let Err(error) = internal(&self.applier, "COMMIT") {
                    self.end_apply();
                    return Err(error.into());
                }
                if touched_shadow_tables {
                    // A virtual table (FTS5) caches its index structure per connection and only
                    // notices changes committed by *other* connections. Its shadow tables were
                    // just written underneath it, so start over with a fresh connection.
                    self.applier = Self::connect_applier(&self.generation.path)?;
                }
                Ok(())
            }
            Err(error) => {
                self.end_apply();
                Err(error)
            }
        }
    }

    /// The body of [`Db::apply`], inside its transaction. Returns whether a changeset wrote a
    /// virtual table's shadow tables.
    fn apply_in_transaction(&self, entries: &[Apply<'_>], last: &Apply<'_>) -> Result<bool> {
        let mut touched_shadow_tables = false;
        for entry in entries {
            if let Some(record) = entry.record {
                touched_shadow_tables |= self.apply_record(entry, record)?;
            }
            // After every entry, not once per call: the table's content must depend on the log
            // alone, not on how entries were grouped into calls (see `answers`).
            answers::prune(&self.applier, entry.index)?;
        }
        let membership = entries.iter().rev().find_map(|e| e.membership);
        let (term, index) = (to_sql_int(last.term)?, to_sql_int(last.index)?);
        self.applier
            .prepare_cached(
                "INSERT INTO _keel_meta (id, term, idx, membership) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET term = excluded.term, idx = excluded.idx,
                     membership = coalesce(excluded.membership, membership)",
            )?
            .execute(params![term, index, membership])?;
        Ok(touched_shadow_tables)
    }

    /// Applies one entry's record: its ops, then its request answers. Returns whether a
    /// changeset wrote a virtual table's shadow tables.
    fn apply_record(&self, entry: &Apply<'_>, record: &Record) -> Result<bool> {
        let mut touched_shadow_tables = false;
        for (i, op) in record.ops.iter().enumerate() {
            let at = || format!("entry {} (term {}) op {i}", entry.index, entry.term);
            match op {
                Op::Ddl(sql) => self
                    .applier
                    .execute_batch(sql)
                    .map_err(|e| Error::Corrupt(format!("{}: DDL failed: {e}: {sql}", at())))?,
                Op::Changes(changeset) => {
                    touched_shadow_tables |= self
                        .validate(changeset)
                        .map_err(|e| Error::Corrupt(format!("{}: {e}", at())))?;
                    session::apply(&self.applier, changeset).map_err(|e| match e {
                        ApplyError::Conflict { kind, table } => {
                            Error::Corrupt(format!("{}: conflict on table {table}: {kind}", at()))
                        }
                        ApplyError::Sqlite(e) => {
                            Error::Corrupt(format!("{}: changeset apply failed: {e}", at()))
                        }
                    })?;
                }
            }
        }
        answers::store(&self.applier, entry.index, &record.requests).map_err(|e| match e {
            Error::Corrupt(m) => {
                Error::Corrupt(format!("entry {} (term {}): {m}", entry.index, entry.term))
            }
            e => e,
        })?;
        Ok(touched_shadow_tables)
    }

    /// Checks that every table a changeset touches exists here with the same columns and
    /// primary key; SQLite's apply would silently skip changes that do not match. Returns
    /// whether one of the tables is a virtual table's shadow table.
    fn validate(&self, changeset: &[u8]) -> std::result::Result<bool, String> {
        let tables = session::tables(changeset).map_err(|e| format!("malformed changeset: {e}"))?;
        let mut shadow = false;
        for table in tables {
            let kind: Option<String> = self
                .applier
                .prepare_cached(
                    "SELECT type FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                )
                .and_then(|mut stmt| stmt.query_row([&table.name], |row| row.get(0)).optional())
                .map_err(|e| e.to_string())?;
            shadow |= kind.as_deref() == Some("shadow");
            let mut stmt = self
                .applier
                .prepare_cached("SELECT pk FROM pragma_table_info(?1) ORDER BY cid")
                .map_err(|e| e.to_string())?;
            let pks: Vec<i64> = stmt
                .query_map([&table.name], |row| row.get(0))
                .and_then(Iterator::collect)
                .map_err(|e| e.to_string())?;
            if pks.is_empty() {
                return Err(format!("changeset for missing table {}", table.name));
            }
            // A rowid table without a PRIMARY KEY is recorded with the rowid as an extra first
            // primary-key column.
            let mut expected: Vec<bool> = pks.iter().map(|&pk| pk > 0).collect();
            if !expected.contains(&true) {
                expected.insert(0, true);
            }
            if table.columns != expected.len() || table.primary_key != expected {
                return Err(format!(
                    "changeset for table {} has {} columns (primary key {:?}), the local table {} ({:?})",
                    table.name,
                    table.columns,
                    table.primary_key,
                    expected.len(),
                    expected
                ));
            }
        }
        Ok(shadow)
    }

    /// A textual dump of the schema and every row (see [`crate::dump()`]).
    pub fn dump(&self) -> Result<String> {
        crate::dump::dump_connection(&self.conn)
    }

    /// Rolls back any open transaction (and leaves the authorizer off). Never fails: after a
    /// failed ROLLBACK SQLite has ended the transaction anyway.
    fn end_transaction(&self) {
        self.policy.take();
        if !self.conn.is_autocommit()
            && let Err(error) = internal(&self.conn, "ROLLBACK")
        {
            tracing::warn!(%error, "rollback failed");
        }
    }

    /// Rolls back any open transaction of the apply connection. Never fails, like
    /// [`Db::end_transaction`].
    fn end_apply(&self) {
        if !self.applier.is_autocommit()
            && let Err(error) = internal(&self.applier, "ROLLBACK")
        {
            tracing::warn!(%error, "rollback of an apply failed");
        }
    }
}

/// Reads the applied position from `_keel_meta`, `None` before the first apply.
pub(crate) fn read_applied(conn: &Connection) -> Result<Option<Applied>> {
    let row = conn
        .query_row(
            "SELECT term, idx, membership FROM _keel_meta WHERE id = 1 AND idx IS NOT NULL",
            [],
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get(2)?)),
        )
        .optional()?;
    Ok(row.map(|(term, index, membership)| Applied {
        term: term as Term,
        index: index as Lsn,
        membership,
    }))
}

/// Converts a log position to SQLite's signed integer.
fn to_sql_int(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Corrupt(format!("log position {value} exceeds 2^63")))
}

/// Why one attempt of [`Db::execute`] stopped early.
enum Failure {
    /// A statement rolled back the whole transaction; retry without running it.
    EndedTransaction {
        /// Index of the request.
        request: usize,
        /// Index of the statement within it.
        statement: usize,
        /// Its error message, which becomes its result.
        error: String,
    },
    /// Infrastructure failure: give up.
    Fatal(Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Failure::Fatal(error.into())
    }
}

/// The effect of one client statement.
enum Ran {
    /// It completed (successfully or with a per-statement error).
    Result(StatementResult),
    /// It ended the transaction (see the module docs); carries its error message.
    EndedTransaction(String),
}

/// What a successful attempt produced for the requests it ran.
struct Attempt {
    /// The record's ops.
    ops: Vec<Op>,
    /// One `Vec` per request run, one result per statement.
    results: Vec<Vec<StatementResult>>,
}

/// What watches client statements on the client connection.
#[derive(Clone, Copy)]
struct Checks<'c> {
    /// The authorizer.
    policy: &'c Policy,
    /// The statement timer.
    watchdog: &'c Watchdog,
    /// The node's limits.
    limits: &'c Limits,
    /// Verdicts on client statements in the connection's statement cache.
    verdicts: &'c Verdicts,
}

/// One attempt at executing a group of requests: the transaction's state while it is open.
struct Speculator<'c> {
    /// The client connection, inside `BEGIN`.
    conn: &'c Connection,
    /// Its authorizer, timer and limits.
    checks: Checks<'c>,
    /// The session recording row changes since the last cut (`None` only while DDL runs).
    session: Option<Session<'c>>,
    /// The ops so far.
    ops: Vec<Op>,
    /// Whether the current savepoint scope began with an empty session, so that ops cut inside
    /// it hold only its own changes (see module docs).
    scope_clean: bool,
    /// Per table, the PRIMARY KEY columns that may hold NULL (see `check_primary_keys`);
    /// cleared by every schema change.
    nullable_keys: HashMap<String, Vec<String>>,
}

/// Savepoint names; client SQL cannot use savepoints, so they cannot clash.
const REQUEST_SAVEPOINT: &str = "keel_request";
/// See [`REQUEST_SAVEPOINT`].
const STATEMENT_SAVEPOINT: &str = "keel_statement";
/// See [`REQUEST_SAVEPOINT`].
const FLUSH_SAVEPOINT: &str = "keel_flush";

/// The error result for VACUUM, which the authorizer does not report.
const VACUUM_ERROR: &str = "VACUUM is not supported: it rewrites the file and is not replicated";

/// The error of a transaction whose COMMIT would fail on a deferred foreign key.
const DEFERRED_FK_ERROR: &str = "FOREIGN KEY constraint failed";

impl<'c> Speculator<'c> {
    /// Runs one attempt; the caller rolls back afterwards whatever happens. `skip` holds
    /// statements answered by an error without being run, by position in `requests`.
    fn run(
        checks: Checks<'c>,
        conn: &'c Connection,
        requests: &[&WriteRequest],
        skip: &BTreeMap<(usize, usize), String>,
    ) -> std::result::Result<Attempt, Failure> {
        internal(conn, "BEGIN IMMEDIATE")?;
        let sequences = read_sequences(conn)?;
        let mut speculator = Speculator {
            conn,
            checks,
            session: Some(new_session(conn)?),
            ops: Vec::new(),
            scope_clean: true,
            nullable_keys: HashMap::new(),
        };
        let mut results = Vec::with_capacity(requests.len());
        for (r, request) in requests.iter().enumerate() {
            let outcome = if request.transaction {
                speculator.run_transaction(r, request, skip)
            } else {
                speculator.run_statements(r, request, skip)
            };
            match outcome? {
                Ok(request_results) => results.push(request_results),
                Err((statement, error)) => {
                    return Err(Failure::EndedTransaction { request: r, statement, error });
                }
            }
        }
        speculator.cut()?;
        let mut ops = std::mem::take(&mut speculator.ops);
        ops.extend(sequence_fixups(&sequences, &read_sequences(conn)?));
        Ok(Attempt { ops, results })
    }

    /// Runs a `transaction` request: all or nothing. The inner `Err` names a statement that
    /// ended the transaction.
    #[allow(clippy::type_complexity)]
    fn run_transaction(
        &mut self,
        r: usize,
        request: &WriteRequest,
        skip: &BTreeMap<(usize, usize), String>,
    ) -> std::result::Result<std::result::Result<Vec<StatementResult>, (usize, String)>, Failure>
    {
        let may_have_ddl = request.statements.iter().any(|s| may_contain_ddl(&s.sql));
        let mark = self.begin_scope(may_have_ddl, REQUEST_SAVEPOINT)?;
        let mut results = Vec::with_capacity(request.statements.len());
        let mut failed = false;
        for (s, statement) in request.statements.iter().enumerate() {
            let result = match skip.get(&(r, s)) {
                Some(error) => StatementResult::Error(error.clone()),
                None => match self.run_statement(statement, request)? {
                    Ran::Result(result) => result,
                    Ran::EndedTransaction(error) => return Ok(Err((s, error))),
                },
            };
            failed = result.is_error();
            results.push(result);
            if failed {
                break;
            }
        }
        if !failed && session::deferred_foreign_key_violations(self.conn)? {
            failed = true;
            if let Some(last) = results.last_mut() {
                *last = StatementResult::Error(DEFERRED_FK_ERROR.to_string());
            }
        }
        self.end_scope(REQUEST_SAVEPOINT, mark, failed)?;
        Ok(Ok(results))
    }

    /// Runs a request without `transaction`: every statement on its own.
    #[allow(clippy::type_complexity)]
    fn run_statements(
        &mut self,
        r: usize,
        request: &WriteRequest,
        skip: &BTreeMap<(usize, usize), String>,
    ) -> std::result::Result<std::result::Result<Vec<StatementResult>, (usize, String)>, Failure>
    {
        let mut results = Vec::with_capacity(request.statements.len());
        for (s, statement) in request.statements.iter().enumerate() {
            if let Some(error) = skip.get(&(r, s)) {
                results.push(StatementResult::Error(error.clone()));
                continue;
            }
            let mark = self.begin_scope(may_contain_ddl(&statement.sql), STATEMENT_SAVEPOINT)?;
            let mut result = match self.run_statement(statement, request)? {
                Ran::Result(result) => result,
                Ran::EndedTransaction(error) => return Ok(Err((s, error))),
            };
            if !result.is_error() && session::deferred_foreign_key_violations(self.conn)? {
                result = StatementResult::Error(DEFERRED_FK_ERROR.to_string());
            }
            self.end_scope(STATEMENT_SAVEPOINT, mark, result.is_error())?;
            results.push(result);
        }
        Ok(Ok(results))
    }

    /// Opens a savepoint scope; returns the ops mark to truncate to if it is rolled back.
    fn begin_scope(
        &mut self,
        may_have_ddl: bool,
        savepoint: &str,
    ) -> std::result::Result<usize, Failure> {
        if may_have_ddl {
            self.cut()?;
        }
        self.scope_clean = may_have_ddl;
        self.internal(&format!("SAVEPOINT {savepoint}"))?;
        Ok(self.ops.len())
    }

    /// Closes a savepoint scope, undoing it if `failed`.
    fn end_scope(
        &mut self,
        savepoint: &str,
        mark: usize,
        failed: bool,
    ) -> std::result::Result<(), Failure> {
        if failed {
            self.internal(&format!("ROLLBACK TO {savepoint}"))?;
            if self.ops.len() > mark {
                // Ops were cut inside the scope, which therefore started with a fresh session:
                // drop them, and the session's changes since the last cut with them.
                self.ops.truncate(mark);
                self.session = None;
                self.session = Some(new_session(self.conn)?);
            }
        }
        self.internal(&format!("RELEASE {savepoint}"))?;
        Ok(())
    }

    /// Runs one of Keel's own statements: see [`internal`].
    fn internal(&self, sql: &str) -> rusqlite::Result<()> {
        internal(self.conn, sql)
    }

    /// Moves the session's changes into an `Op::Changes` and starts a new session.
    fn cut(&mut self) -> std::result::Result<(), Failure> {
        // Full-text indexes (FTS3/4/5) buffer their writes in memory until a savepoint or
        // commit; a savepoint makes them write their shadow tables, where the session sees it.
        self.internal(&format!("SAVEPOINT {FLUSH_SAVEPOINT}"))?;
        self.internal(&format!("RELEASE {FLUSH_SAVEPOINT}"))?;
        if let Some(session) = self.session.take() {
            let changeset = session.changeset()?;
            drop(session);
            if !changeset.is_empty() {
                self.ops.push(Op::Changes(changeset));
            }
        }
        self.session = Some(new_session(self.conn)?);
        Ok(())
    }

    /// Runs one client statement (possibly several SQL statements) and returns its result.
    ///
    /// A text run before as one clean statement comes from the statement cache with its stored
    /// verdict (see `verdicts`); any other text is prepared statement by statement under the
    /// authorizer, and remembered if it qualifies.
    fn run_statement(
        &mut self,
        statement: &Statement,
        request: &WriteRequest,
    ) -> std::result::Result<Ran, Failure> {
        let start = Instant::now();
        let rows = request.rows;
        let time = self.checks.limits.time_for(request.timeout);
        let mut binder = Binder::new(&statement.params);
        let sql = match mask(&statement.sql) {
            Masked::Text(sql) => sql,
            Masked::Refused(reason) => return Ok(Ran::Result(StatementResult::Error(reason))),
        };
        if let Some(observed) = self.checks.verdicts.get(&statement.sql) {
            let conn = self.conn;
            let mut prepared = match conn.prepare_cached(&sql) {
                Ok(prepared) => prepared,
                Err(error) => {
                    return Ok(Ran::Result(StatementResult::Error(error_message(&error))));
                }
            };
            let result = self.run_rows(&mut prepared, &observed, &mut binder, rows, time)?;
            drop(prepared);
            return Ok(match self.still_in_transaction(result) {
                Ok(result) if result.is_error() => Ran::Result(result),
                Ok(result) => conclude(Some(result), &binder, start),
                Err(ended) => ended,
            });
        }
        let mut batch = Batch::new(self.conn, &sql);
        let mut last = None;
        let mut count = 0;
        let mut verdict = None;
        loop {
            self.checks.policy.begin(Mode::Write);
            let next = batch.next();
            let observed = self.checks.policy.take();
            let mut prepared = match next {
                Ok(Some(prepared)) => prepared,
                Ok(None) => break,
                Err(error) => {
                    let message = observed.denied.unwrap_or_else(|| error_message(&error));
                    return Ok(Ran::Result(StatementResult::Error(message)));
                }
            };
            count += 1;
            if count == 1 && cacheable(&observed, &statement.sql) {
                verdict = Some(observed.clone());
            }
            let result = self.run_prepared(&mut prepared, observed, &mut binder, rows, time)?;
            match self.still_in_transaction(result) {
                Ok(result) if result.is_error() => return Ok(Ran::Result(result)),
                Ok(result) => last = Some(result),
                Err(ended) => return Ok(ended),
            }
        }
        if count == 1
            && let Some(verdict) = verdict
        {
            self.checks.verdicts.remember(&statement.sql, verdict);
        }
        Ok(conclude(last, &binder, start))
    }

    /// `result` if the transaction is still open after the statement that gave it; otherwise
    /// the statement ended it (see the module docs).
    fn still_in_transaction(
        &self,
        result: StatementResult,
    ) -> std::result::Result<StatementResult, Ran> {
        if !self.conn.is_autocommit() {
            return Ok(result);
        }
        let error = match result {
            StatementResult::Error(error) => error,
            _ => "the statement ended the transaction".to_string(),
        };
        Err(Ran::EndedTransaction(error))
    }

    /// Runs one prepared SQL statement.
    fn run_prepared(
        &mut self,
        prepared: &mut rusqlite::Statement<'c>,
        observed: Observed,
        binder: &mut Binder<'_>,
        rows: bool,
        time: Duration,
    ) -> std::result::Result<StatementResult, Failure> {
        if let Some(reason) = observed.denied {
            return Ok(StatementResult::Error(reason));
        }
        let text = prepared.expanded_sql().unwrap_or_default();
        let keyword = leading_keyword(&text);
        if keyword == "VACUUM" {
            return Ok(StatementResult::Error(VACUUM_ERROR.to_string()));
        }
        let ddl = prepared.is_explain() == 0 && (observed.ddl || keyword == "REINDEX");
        if !ddl {
            return self.run_rows(prepared, &observed, binder, rows, time);
        }
        if prepared.parameter_count() > 0 {
            return Ok(StatementResult::Error(
                "parameters are not supported in schema statements".to_string(),
            ));
        }
        if let Err(error) = binder.bind(prepared) {
            return Ok(StatementResult::Error(error));
        }
        if observed.creates_table_from_select
            && let Err(error) = determinism::check_create_as_select(&text, &observed.functions)
        {
            return Ok(StatementResult::Error(error.to_string()));
        }
        self.run_ddl(prepared, text, &observed.targets, time)
    }

    /// Binds and runs a statement that is not a schema change, and checks the keys it wrote.
    fn run_rows(
        &mut self,
        prepared: &mut rusqlite::Statement<'_>,
        observed: &Observed,
        binder: &mut Binder<'_>,
        rows: bool,
        time: Duration,
    ) -> std::result::Result<StatementResult, Failure> {
        if let Err(error) = binder.bind(prepared) {
            return Ok(StatementResult::Error(error));
        }
        let result = self.run_dml(prepared, rows, time);
        if !result.is_error()
            && let Some(error) = self.check_primary_keys(&observed.written)?
        {
            return Ok(StatementResult::Error(error));
        }
        Ok(result)
    }

    /// Runs a row-level statement, interrupted after `time`; the session records its changes.
    fn run_dml(
        &self,
        prepared: &mut rusqlite::Statement<'_>,
        rows: bool,
        time: Duration,
    ) -> StatementResult {
        let watchdog = self.checks.watchdog;
        // Armed only while the client's statement steps: Keel's own statements around it must
        // never be interrupted.
        let armed = watchdog.arm(time);
        let stepping = self.checks.policy.stepping();
        let message =
            |error: &rusqlite::Error| stepping.refusal().unwrap_or_else(|| watchdog.message(error));
        if rows && prepared.column_count() > 0 {
            let mut budget = ResultBudget::new(self.checks.limits);
            return match encode::read_rows(prepared, &mut budget) {
                Ok(rows) => StatementResult::Rows {
                    columns: rows.columns,
                    types: rows.types,
                    values: rows.values,
                    time: 0.0,
                },
                Err(ReadError::Sqlite(error)) => StatementResult::Error(message(&error)),
                Err(ReadError::Limit(error)) => StatementResult::Error(error),
            };
        }
        let mut query = prepared.raw_query();
        loop {
            match query.next() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(error) => return StatementResult::Error(message(&error)),
            }
        }
        drop(armed);
        self.counters()
    }

    /// An `Exec` result with the connection's counters as the statement just run left them:
    /// `sqlite3_last_insert_rowid` and `sqlite3_changes`, whatever the statement was, as rqlite
    /// reports them (see the module docs).
    fn counters(&self) -> StatementResult {
        StatementResult::Exec {
            last_insert_id: self.conn.last_insert_rowid(),
            rows_affected: i64::try_from(self.conn.changes()).unwrap_or(i64::MAX),
            time: 0.0,
        }
    }

    /// Refuses rows with NULL in a PRIMARY KEY column, which SQLite allows in rowid tables
    /// whose key is not the rowid (a legacy quirk) but which sessions silently do not record:
    /// such a row would be reported as written and then exist nowhere. Returns the statement's
    /// error, if any. Each table's nullable key columns are looked up once per schema.
    fn check_primary_keys(
        &mut self,
        written: &[String],
    ) -> std::result::Result<Option<String>, Failure> {
        for table in written {
            if !self.nullable_keys.contains_key(table) {
                let columns = nullable_key_columns(self.conn, table)?;
                self.nullable_keys.insert(table.clone(), columns);
            }
            let columns = &self.nullable_keys[table];
            if columns.is_empty() {
                continue;
            }
            let condition: Vec<String> =
                columns.iter().map(|c| format!("{} IS NULL", quote_identifier(c))).collect();
            let sql = format!(
                "SELECT 1 FROM main.{} WHERE {} LIMIT 1",
                quote_identifier(table),
                condition.join(" OR ")
            );
            // Cached: the same check runs for every statement writing the table.
            if self.conn.prepare_cached(&sql)?.query_row([], |_| Ok(())).optional()?.is_some() {
                return Ok(Some(format!(
                    "NULL in the PRIMARY KEY of table {table} cannot be replicated: declare its key columns NOT NULL"
                )));
            }
        }
        Ok(None)
    }

    /// Runs a schema statement: cut, run it under a side session, record it as SQL.
    fn run_ddl(
        &mut self,
        prepared: &mut rusqlite::Statement<'_>,
        text: String,
        targets: &[String],
        time: Duration,
    ) -> std::result::Result<StatementResult, Failure> {
        if !self.scope_clean {
            // begin_scope cuts for every scope whose text may contain DDL; DDL without such
            // text would be a bug in may_contain_ddl. Refuse rather than mis-record.
            return Ok(StatementResult::Error(format!(
                "internal error: schema statement not recognised in advance: {text}"
            )));
        }
        self.cut()?;
        self.session = None;
        self.nullable_keys.clear();
        // The DDL's own effect is replayed from its text. What it does to tables it does not
        // create, drop or alter (foreign-key actions of DROP TABLE) is recorded, and replayed
        // before it.
        let existing: BTreeSet<String> =
            user_tables(self.conn)?.into_iter().filter(|t| !targets.contains(t)).collect();
        let side = Session::new(
            self.conn,
            Box::new(move |table| existing.contains(&table.to_ascii_lowercase())),
        )?;
        let outcome = {
            let _armed = self.checks.watchdog.arm(time);
            let stepping = self.checks.policy.stepping();
            step_to_end(prepared).map_err(|error| (stepping.refusal(), error))
        };
        // Statements cached under the old schema are stale now, and again after the rollback.
        self.checks.verdicts.forget(self.conn);
        let side_changes = if outcome.is_ok() { Some(side.changeset()) } else { None };
        drop(side);
        self.session = Some(new_session(self.conn)?);
        if let Err((refusal, error)) = outcome {
            let message = refusal.unwrap_or_else(|| self.checks.watchdog.message(&error));
            return Ok(StatementResult::Error(message));
        }
        match side_changes {
            Some(Ok(changes)) if !changes.is_empty() => self.ops.push(Op::Changes(changes)),
            Some(Err(error)) => {
                return Ok(StatementResult::Error(format!(
                    "cannot record the effects of this schema change: {error}"
                )));
            }
            _ => {}
        }
        self.ops.push(Op::Ddl(text));
        Ok(self.counters())
    }
}

/// The result of a client statement whose SQL statements all ran: the last one's, timed from
/// `start`, unless its parameters did not match.
fn conclude(last: Option<StatementResult>, binder: &Binder<'_>, start: Instant) -> Ran {
    if let Err(error) = binder.finish() {
        return Ran::Result(StatementResult::Error(error));
    }
    let time = start.elapsed().as_secs_f64();
    Ran::Result(match last {
        Some(StatementResult::Exec { last_insert_id, rows_affected, .. }) => {
            StatementResult::Exec { last_insert_id, rows_affected, time }
        }
        Some(StatementResult::Rows { columns, types, values, .. }) => {
            StatementResult::Rows { columns, types, values, time }
        }
        Some(error @ StatementResult::Error(_)) => error,
        None => StatementResult::Exec { last_insert_id: 0, rows_affected: 0, time },
    })
}

/// Whether a statement the authorizer passed as `observed` may run from the statement cache
/// with that verdict when `sql` is its whole text (see `verdicts`): nothing denied, and not a
/// schema change or a statement recognised by its keyword.
fn cacheable(observed: &Observed, sql: &str) -> bool {
    observed.denied.is_none()
        && !observed.ddl
        && !matches!(leading_keyword(sql).as_str(), "VACUUM" | "REINDEX")
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

/// Steps a statement until it is done, discarding rows.
fn step_to_end(prepared: &mut rusqlite::Statement<'_>) -> rusqlite::Result<()> {
    let mut rows = prepared.raw_query();
    while rows.next()?.is_some() {}
    Ok(())
}

/// A session recording all client tables (not SQLite's or Keel's internal ones).
fn new_session(conn: &Connection) -> rusqlite::Result<Session<'_>> {
    Session::new(conn, Box::new(|table| !is_internal_table(table)))
}

/// The lower-case names of all client tables.
fn user_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT lower(name) FROM sqlite_schema WHERE type = 'table'")?;
    let names: Vec<String> =
        stmt.query_map([], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(names.into_iter().filter(|t| !is_internal_table(t)).collect())
}

/// The PRIMARY KEY columns of a rowid table that may hold NULL (not declared NOT NULL); none for
/// WITHOUT ROWID tables (which enforce NOT NULL), tables without a key, and views. An INTEGER
/// PRIMARY KEY is the rowid and never NULL; listing it anyway costs one index probe.
fn nullable_key_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let without_rowid: Option<bool> = conn
        .prepare_cached(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name = ?1",
        )?
        .query_row([table], |row| row.get(0))
        .optional()?;
    if without_rowid != Some(false) {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT name FROM pragma_table_info(?1) WHERE pk > 0 AND \"notnull\" = 0",
    )?;
    stmt.query_map([table], |row| row.get(0))?.collect()
}

/// Whether SQL text may contain a schema statement (or a replicated pragma): a superset test
/// on words, so false positives only cost an extra session cut.
fn may_contain_ddl(sql: &str) -> bool {
    sql.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').any(|word| {
        ["CREATE", "DROP", "ALTER", "REINDEX", "ANALYZE", "PRAGMA"]
            .iter()
            .any(|keyword| word.eq_ignore_ascii_case(keyword))
    })
}

/// The contents of `sqlite_sequence` (AUTOINCREMENT counters), empty if it does not exist.
fn read_sequences(conn: &Connection) -> rusqlite::Result<BTreeMap<String, i64>> {
    let exists: bool = conn
        .prepare_cached(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'sqlite_sequence'",
        )?
        .query_row([], |row| row.get(0))?;
    if !exists {
        return Ok(BTreeMap::new());
    }
    let mut stmt = conn.prepare_cached("SELECT name, seq FROM sqlite_sequence")?;
    let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

/// Ops that make a replica's `sqlite_sequence` equal the leader's after the record: sessions do
/// not record it, and a replica applying the rows would only reach the largest rowid still
/// present, not the leader's counter.
fn sequence_fixups(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>) -> Vec<Op> {
    let quote = |name: &str| format!("'{}'", name.replace('\'', "''"));
    let mut ops = Vec::new();
    for (name, seq) in after {
        if before.get(name) != Some(seq) {
            let name = quote(name);
            ops.push(Op::Ddl(format!(
                "DELETE FROM sqlite_sequence WHERE name = {name}; INSERT INTO sqlite_sequence (name, seq) VALUES ({name}, {seq});"
            )));
        }
    }
    for name in before.keys().filter(|name| !after.contains_key(*name)) {
        ops.push(Op::Ddl(format!("DELETE FROM sqlite_sequence WHERE name = {};", quote(name))));
    }
    ops
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    #[test_case("INSERT INTO t VALUES (1)", false)]
    #[test_case("create table t (a)", true)]
    #[test_case("SELECT 1; DROP TABLE t", true)]
    #[test_case("INSERT INTO created_at VALUES (1)", false)]
    #[test_case("pragma user_version=1", true)]
    #[test_case("REINDEX", true)]
    fn ddl_words(sql: &str, expect: bool) {
        assert_eq!(may_contain_ddl(sql), expect);
    }

    #[test]
    fn fixups() {
        let before =
            BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 2), ("c'd".to_string(), 3)]);
        let after =
            BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 5), ("e".to_string(), 1)]);
        let sql: Vec<String> = sequence_fixups(&before, &after)
            .into_iter()
            .map(|op| match op {
                Op::Ddl(sql) => sql,
                Op::Changes(_) => unreachable!(),
            })
            .collect();
        assert_eq!(
            sql,
            vec![
                "DELETE FROM sqlite_sequence WHERE name = 'b'; INSERT INTO sqlite_sequence (name, seq) VALUES ('b', 5);",
                "DELETE FROM sqlite_sequence WHERE name = 'e'; INSERT INTO sqlite_sequence (name, seq) VALUES ('e', 1);",
                "DELETE FROM sqlite_sequence WHERE name = 'c''d';",
            ]
        );
    }
}
