//! A pool of read-only connections for queries, never the write connection.
//!
//! `bin` serves `/db/query` (and read-only `/db/request` batches) from [`Readers::query`], on
//! any node, while the apply connection keeps applying. In WAL mode each read transaction sees
//! one consistent snapshot of committed data, and readers never block the writer (rqlite's
//! `db/DESIGN.md` uses the same split). [`Readers::is_read_only`] lets `bin` decide whether a
//! `/db/request` batch can stay here or must go to the leader as a write, and
//! [`Readers::column_tables`] names the table each result column comes from (rqlite's
//! `qualify_columns`), by preparing the statement again without running it.
//!
//! Every connection is opened `SQLITE_OPEN_READ_ONLY` with `query_only` on, so nothing here can
//! write even by mistake. A statement that would write is answered with rqlite's per-statement
//! error `attempt to change database via query operation`, detected before it runs from
//! `sqlite3_stmt_readonly` plus the authorizer (`policy`, read mode), which also catches what
//! `sqlite3_stmt_readonly` calls read-only but is not a query: ATTACH, BEGIN/COMMIT, SAVEPOINT,
//! pragma assignments; and VACUUM by its keyword. Client text goes through `mask` first, and
//! statements step under `policy`'s step mode, so Keel's `_keel_*` tables stay out
//! of reach here as on the leader.
//!
//! `query` blocks the calling thread (call it from `spawn_blocking`) while it waits for a free
//! connection and runs the statements. Not done here: consistency levels (the caller waits for
//! the applied position it needs before calling). Every statement runs under the pool's
//! [`Limits`]: a time limit enforced by a progress handler, and caps on result rows and bytes.
//!
//! ## Following installs
//!
//! [`crate::Db::install`] replaces the database file by a new generation (see `generation`).
//! The pool is made by [`crate::Db::readers`] and shares the Db's current generation. Each
//! connection remembers the generation it was opened on; a connection of an older generation
//! is never used for a new read: idle ones are closed by the install, a checkout that finds one
//! closes it and opens a connection on the current file, and one that was in use during the
//! install finishes its read on the old file (it began before the install returned, so the old
//! state is a correct answer) and is closed when it comes back. Connections are opened lazily
//! after an install, up to the pool size.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::fallible_iterator::FallibleIterator as _;
use rusqlite::{Batch, Connection, OpenFlags, OptionalExtension as _};

use crate::answers;
use crate::encode::{self, ReadError};
use crate::error::Result;
use crate::generation::{Generation, Holder, Live};
use crate::limits::{self, Limits, ResultBudget, Watchdog};
use crate::mask::{Masked, mask};
use crate::policy::{Mode, Policy, leading_keyword};
use crate::result::{StatementResult, error_message};
use crate::statement::{Binder, Statement};
use crate::verdicts::{self, Verdicts};

/// rqlite's per-statement error for a write sent to the query endpoint.
pub const QUERY_WRITE_ERROR: &str = "attempt to change database via query operation";

/// How long a read waits for a lock (only a WAL checkpoint can make it wait).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One read-only connection and its authorizer.
struct Reader {
    /// The connection.
    conn: Connection,
    /// Its authorizer state.
    policy: Policy,
    /// Its statement timer.
    watchdog: Watchdog,
    /// The authorizer's verdicts on client statements in its statement cache.
    verdicts: Verdicts,
    /// The generation of the database file it is open on.
    generation: u64,
}

/// A pool of read-only connections to a [`crate::Db`]'s database, following its installs.
/// Made by [`crate::Db::readers`].
///
/// Invariants:
/// * At most `size` connections are in use at once; a connection is out of the pool exactly
///   while one call uses it; no connection is left inside a transaction.
/// * A read that starts after an install returned runs on the installed generation.
pub struct Readers {
    /// The shared pool state.
    pool: Arc<Pool>,
}

/// The state of a [`Readers`] pool, registered with the `Live` generation as a `Holder` so
/// installs can close idle connections of the old generation.
struct Pool {
    /// The Db's current generation.
    live: Arc<Live>,
    /// The most connections in use at once.
    size: usize,
    /// What one statement may cost.
    limits: Limits,
    /// Idle connections and the number in use.
    state: Mutex<State>,
    /// Signalled when a connection is returned.
    returned: Condvar,
    /// Reads running on their caller's thread ([`Readers::try_query_applied`]).
    inline: AtomicUsize,
    /// The most reads that may do so at once.
    max_inline: usize,
}

/// The mutable part of a [`Pool`].
struct State {
    /// Idle connections.
    idle: Vec<Reader>,
    /// Connections checked out (or being opened for a checkout).
    busy: usize,
    /// Checkouts waiting for a connection. A return signals `returned` only when one waits:
    /// a signal is a system call even when nobody listens.
    waiting: usize,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.pool.lock();
        f.debug_struct("Readers")
            .field("size", &self.pool.size)
            .field("idle", &state.idle.len())
            .field("busy", &state.busy)
            .finish()
    }
}

impl Readers {
    /// Opens `size` (at least one) read-only connections to the current generation of `live`.
    pub(crate) fn open(live: Arc<Live>, size: usize, limits: Limits) -> Result<Readers> {
        let size = size.max(1);
        let idle = {
            let generation = live.read();
            (0..size).map(|_| Reader::open(&generation, &limits)).collect::<Result<Vec<_>>>()?
        };
        let pool = Arc::new(Pool {
            live: live.clone(),
            size,
            limits,
            state: Mutex::new(State { idle, busy: 0, waiting: 0 }),
            returned: Condvar::new(),
            inline: AtomicUsize::new(0),
            // One thread of the caller's runtime (one per core) always stays free.
            max_inline: std::thread::available_parallelism().map_or(1, |n| n.get() - 1).max(1),
        });
        let holder: Arc<dyn Holder> = pool.clone();
        live.register(Arc::downgrade(&holder));
        Ok(Readers { pool })
    }

    /// Runs read statements and returns one result per statement. All run in one read
    /// transaction (one snapshot); with `transaction`, processing stops at the first error.
    pub fn query(
        &self,
        statements: &[Statement],
        transaction: bool,
    ) -> Result<Vec<StatementResult>> {
        self.query_within(statements, transaction, None)
    }

    /// [`Readers::query`] with each statement's time limit lowered to `timeout` (rqlite's
    /// `db_timeout`); the pool's own limit still applies when it is lower.
    pub fn query_within(
        &self,
        statements: &[Statement],
        transaction: bool,
        timeout: Option<Duration>,
    ) -> Result<Vec<StatementResult>> {
        self.query_applied(statements, transaction, timeout).map(|(results, _)| results)
    }

    /// [`Readers::query_within`], and the applied log index stored in the database (0 before
    /// the first apply), read on the same connection after the statements: the position is
    /// committed with the data and only grows, so it covers everything the statements saw.
    pub fn query_applied(
        &self,
        statements: &[Statement],
        transaction: bool,
        timeout: Option<Duration>,
    ) -> Result<(Vec<StatementResult>, u64)> {
        let reader = self.pool.checkout()?;
        let time = self.pool.limits.time_for(timeout);
        let outcome = reader.run_applied(statements, transaction, time, &self.pool.limits);
        self.pool.checkin(reader);
        outcome
    }

    /// [`Readers::query_applied`] of one statement, on the calling thread, if it is cheap. `None`
    /// otherwise, and what it did is discarded (a read has no effects): then call
    /// [`Readers::query_applied`] from a thread that may block.
    ///
    /// For callers on an async runtime: a point read costs microseconds, far less than handing
    /// it to a blocking thread and back. A read runs here only
    /// * with a connection that is free right now,
    /// * if the same text ran before on that connection in less than half of `budget`,
    /// * while fewer reads than the machine has cores, less one, run this way (so a read that
    ///   turns out slow never holds every thread of the runtime),
    /// * and only until `budget` has passed (the smaller time limit still applies). The budget
    ///   is enforced by the progress handler, between virtual machine steps: one step that runs
    ///   long (`count(*)` of a large table is one) is why the first two conditions exist.
    pub fn try_query_applied(
        &self,
        statements: &[Statement],
        transaction: bool,
        timeout: Option<Duration>,
        budget: Duration,
    ) -> Option<Result<(Vec<StatementResult>, u64)>> {
        let [statement] = statements else {
            return None;
        };
        let pool = &self.pool;
        if pool.inline.fetch_add(1, Ordering::AcqRel) >= pool.max_inline {
            pool.inline.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let outcome = pool.try_checkout().and_then(|reader| {
            let cheap = reader.verdicts.last_run(&statement.sql).is_some_and(|t| t < budget / 2);
            let outcome = cheap.then(|| {
                let time = pool.limits.time_for(timeout);
                let inline = budget.min(time);
                let outcome = reader.run_applied(statements, transaction, inline, &pool.limits);
                // Interrupted by the budget, not by the statement's own limit: run it again.
                let over_budget = inline < time && reader.watchdog.fired();
                (!over_budget).then_some(outcome)
            });
            pool.checkin(reader);
            outcome.flatten()
        });
        pool.inline.fetch_sub(1, Ordering::AcqRel);
        outcome
    }

    /// The table each result column of `sql` comes from, `None` for a column that is not a
    /// table's (an expression), for rqlite's `qualify_columns`. When `sql` holds several
    /// statements, the last one's: it is the one whose rows a result holds.
    pub fn column_tables(&self, sql: &str) -> Result<Vec<Option<String>>> {
        let reader = self.pool.checkout()?;
        let tables = reader.column_tables(sql);
        self.pool.checkin(reader);
        tables
    }

    /// What a read of `sql` would return, without running it: how many SQL statements the text
    /// holds, the parameters and the result columns of the last one (the one whose rows a read
    /// answers). `Err` with the statement's error (as a read would give it) when `sql` does not
    /// prepare or is not a read, and with the pool's when no connection can be opened.
    pub fn describe(&self, sql: &str) -> std::result::Result<Description, String> {
        let reader = self.pool.checkout().map_err(|e| e.to_string())?;
        let description = reader.describe(sql);
        self.pool.checkin(reader);
        description
    }

    /// Whether every statement is read-only and may be served by a read connection. A statement
    /// that cannot be prepared counts as not read-only (the leader will report its error), and
    /// so does everything when no connection can be opened.
    pub fn is_read_only(&self, statements: &[Statement]) -> bool {
        let Ok(reader) = self.pool.checkout() else {
            return false;
        };
        let read_only = statements.iter().all(|s| reader.is_read_only(&s.sql));
        self.pool.checkin(reader);
        read_only
    }

    /// The stored answer of request `id` and the applied log index, both read in one read
    /// transaction (see [`answers::Lookup`]). Blocks like [`Readers::query`].
    pub fn request_answer(&self, id: &str) -> Result<answers::Lookup> {
        let reader = self.pool.checkout()?;
        let lookup = reader.request_answer(id);
        if !reader.conn.is_autocommit() {
            let _ = reader.conn.execute_batch("ROLLBACK");
        }
        self.pool.checkin(reader);
        lookup
    }
}

impl Pool {
    /// Locks the state.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a connection on the current generation, waiting while `size` are in use.
    fn checkout(&self) -> Result<Reader> {
        let cached = {
            let mut state = self.lock();
            while state.busy >= self.size {
                state.waiting += 1;
                state = self.returned.wait(state).unwrap_or_else(PoisonError::into_inner);
                state.waiting -= 1;
            }
            state.busy += 1;
            state.idle.pop()
        };
        let reader = {
            // Held while opening: see the invariants of `Live`.
            let generation = self.live.read();
            match cached {
                Some(reader) if reader.generation == generation.number => Ok(reader),
                stale => {
                    drop(stale);
                    Reader::open(&generation, &self.limits)
                }
            }
        };
        if reader.is_err() {
            self.release(None);
        }
        reader
    }

    /// Takes an idle connection on the current generation if there is one and fewer than
    /// `size` are in use; never waits and never opens a connection.
    fn try_checkout(&self) -> Option<Reader> {
        // Held while choosing, as in `checkout`: no install switches generations meanwhile.
        let generation = self.live.read();
        let mut state = self.lock();
        if state.busy >= self.size {
            return None;
        }
        let position = state.idle.iter().rposition(|r| r.generation == generation.number)?;
        state.busy += 1;
        Some(state.idle.swap_remove(position))
    }

    /// Returns a connection; one of an older generation is closed instead.
    fn checkin(&self, reader: Reader) {
        if reader.generation == self.live.number() {
            self.release(Some(reader));
        } else {
            self.release(None);
            drop(reader);
        }
    }

    /// Ends a checkout, keeping `reader` (if any) as idle, and wakes a waiting checkout.
    fn release(&self, reader: Option<Reader>) {
        let waiting = {
            let mut state = self.lock();
            state.busy -= 1;
            state.idle.extend(reader);
            state.waiting > 0
        };
        if waiting {
            self.returned.notify_one();
        }
    }
}

impl Holder for Pool {
    fn drop_stale(&self, current: u64) {
        let stale: Vec<Reader> = {
            let mut state = self.lock();
            let (keep, stale) =
                std::mem::take(&mut state.idle).into_iter().partition(|r| r.generation == current);
            state.idle = keep;
            stale
        };
        drop(stale);
    }
}

impl Reader {
    /// Opens a read-only connection on `generation` and makes its first read, so that it holds
    /// the file and its WAL open from now on (see `Live`).
    fn open(generation: &Generation, limits: &Limits) -> Result<Reader> {
        let mut conn = Connection::open_with_flags(
            &generation.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.execute_batch("PRAGMA query_only = ON;")?;
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        limits::harden(&conn)?;
        limits::cap_values(&conn, Some(limits))?;
        let policy = Policy::default();
        policy.install(&mut conn)?;
        let watchdog = Watchdog::install(&mut conn)?;
        // Reads never write, so this only decides what `PRAGMA foreign_keys` answers: the same
        // as on the client connection, as rqlite's read-only connection does.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_FKEY, limits.foreign_keys)?;
        conn.set_prepared_statement_cache_capacity(verdicts::STATEMENT_CACHE);
        Ok(Reader {
            conn,
            policy,
            watchdog,
            verdicts: Verdicts::default(),
            generation: generation.number,
        })
    }

    /// Runs statements ([`Reader::run`]) and reads the applied log index after them (see
    /// [`Readers::query_applied`]), all in one read transaction, and leaves none open.
    ///
    /// One transaction, not one per step: beginning and ending a read transaction takes
    /// SQLite's shared-memory locks (a mutex and `fcntl` calls), and a point read used to pay
    /// that three times (the schema check, the statement, the applied index). In one snapshot
    /// the applied index is exactly the position of the data the statements saw.
    fn run_applied(
        &self,
        statements: &[Statement],
        transaction: bool,
        time: Duration,
        limits: &Limits,
    ) -> Result<(Vec<StatementResult>, u64)> {
        self.conn.prepare_cached("BEGIN")?.execute([])?;
        let outcome = self
            .run(statements, transaction, time, limits)
            .and_then(|results| Ok((results, self.applied()?)));
        // A read-only statement's error leaves the transaction open; a few errors (I/O, out
        // of memory) end it.
        let ended = if self.conn.is_autocommit() {
            Ok(())
        } else {
            self.conn.prepare_cached("COMMIT").and_then(|mut commit| commit.execute([])).map(drop)
        };
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        let results = outcome?;
        ended?;
        Ok(results)
    }

    /// See [`Readers::request_answer`].
    fn request_answer(&self, id: &str) -> Result<answers::Lookup> {
        self.conn.execute_batch("BEGIN")?;
        let answer = answers::lookup(&self.conn, id)?;
        let applied = self.applied()?;
        self.conn.execute_batch("COMMIT")?;
        Ok(answers::Lookup { answer, applied })
    }

    /// The applied log index stored in the database (0 before the first apply).
    fn applied(&self) -> Result<u64> {
        let idx: Option<i64> = self
            .conn
            .prepare_cached("SELECT idx FROM _keel_meta WHERE id = 1")?
            .query_row([], |row| row.get(0))
            .optional()?
            .flatten();
        Ok(idx.and_then(|i| u64::try_from(i).ok()).unwrap_or(0))
    }

    /// Runs statements on this connection, inside the read transaction [`Reader::run_applied`]
    /// opened: all see one snapshot. With `transaction`, the first error stops the rest.
    fn run(
        &self,
        statements: &[Statement],
        transaction: bool,
        time: Duration,
        limits: &Limits,
    ) -> Result<Vec<StatementResult>> {
        self.verdicts.check_schema(&self.conn)?;
        let mut results = Vec::with_capacity(statements.len());
        for statement in statements {
            let result = self.run_statement(statement, time, limits);
            let failed = result.is_error();
            results.push(result);
            if failed && transaction {
                break;
            }
        }
        Ok(results)
    }

    /// Runs one client statement; several SQL statements in its text run in order and the last
    /// one gives the result. Notes how long it took, for a text kept in the statement cache
    /// (see [`Readers::try_query_applied`]).
    fn run_statement(
        &self,
        statement: &Statement,
        time: Duration,
        limits: &Limits,
    ) -> StatementResult {
        let start = Instant::now();
        let result = self.run_statement_timed(statement, time, limits, start);
        self.verdicts.ran(&statement.sql, start.elapsed());
        result
    }

    /// The body of [`Reader::run_statement`], timed from `start`.
    fn run_statement_timed(
        &self,
        statement: &Statement,
        time: Duration,
        limits: &Limits,
        start: Instant,
    ) -> StatementResult {
        let _armed = self.watchdog.arm(time);
        let mut binder = Binder::new(&statement.params);
        let mut last = None;
        let sql = match mask(&statement.sql) {
            Masked::Text(sql) => sql,
            Masked::Refused(reason) => return StatementResult::Error(reason),
        };
        if self.verdicts.get(&statement.sql).is_some() {
            let mut prepared = match self.conn.prepare_cached(&sql) {
                Ok(prepared) => prepared,
                Err(error) => return StatementResult::Error(error_message(&error)),
            };
            match self.read_bound(&mut prepared, &mut binder, limits) {
                Ok(rows) => last = Some(rows),
                Err(failed) => return failed,
            }
            return conclude(last, &binder, start);
        }
        let mut batch = Batch::new(&self.conn, &sql);
        let mut count = 0;
        let mut verdict = None;
        loop {
            self.policy.begin(Mode::Read);
            let next = batch.next();
            let observed = self.policy.take();
            let mut prepared = match next {
                Ok(Some(prepared)) => prepared,
                Ok(None) => break,
                Err(error) => {
                    return StatementResult::Error(
                        observed.denied.unwrap_or_else(|| error_message(&error)),
                    );
                }
            };
            if observed.writes || !prepared.readonly() || is_vacuum(&prepared) {
                return StatementResult::Error(QUERY_WRITE_ERROR.to_string());
            }
            count += 1;
            if count == 1 && observed.denied.is_none() {
                verdict = Some(observed);
            }
            match self.read_bound(&mut prepared, &mut binder, limits) {
                Ok(rows) => last = Some(rows),
                Err(failed) => return failed,
            }
        }
        if count == 1
            && let Some(verdict) = verdict
        {
            self.verdicts.remember(&statement.sql, verdict);
        }
        conclude(last, &binder, start)
    }

    /// Binds the statement's parameters and reads its rows within `limits`; a failure comes
    /// back as the statement's error result.
    fn read_bound(
        &self,
        prepared: &mut rusqlite::Statement<'_>,
        binder: &mut Binder<'_>,
        limits: &Limits,
    ) -> std::result::Result<encode::Rows, StatementResult> {
        binder.bind(prepared).map_err(StatementResult::Error)?;
        let stepping = self.policy.stepping();
        encode::read_rows(prepared, &mut ResultBudget::new(limits)).map_err(|error| match error {
            ReadError::Sqlite(error) => StatementResult::Error(
                stepping.refusal().unwrap_or_else(|| self.watchdog.message(&error)),
            ),
            ReadError::Limit(error) => StatementResult::Error(error),
        })
    }

    /// See [`Readers::column_tables`]. Statements are prepared, never run.
    fn column_tables(&self, sql: &str) -> Result<Vec<Option<String>>> {
        let mut batch = Batch::new(&self.conn, sql);
        let mut tables = Vec::new();
        loop {
            self.policy.begin(Mode::Read);
            let next = batch.next();
            self.policy.take();
            match next? {
                Some(prepared) => {
                    tables = prepared
                        .columns_with_metadata()
                        .map(|c| c.table_name().map(str::to_string))
                        .collect();
                }
                None => return Ok(tables),
            }
        }
    }

    /// [`Readers::describe`] on this connection.
    fn describe(&self, sql: &str) -> std::result::Result<Description, String> {
        let masked = match mask(sql) {
            Masked::Text(masked) => masked,
            Masked::Refused(reason) => return Err(reason),
        };
        let mut batch = Batch::new(&self.conn, &masked);
        let mut description = Description::default();
        loop {
            self.policy.begin(Mode::Read);
            let next = batch.next();
            let observed = self.policy.take();
            match next {
                Ok(Some(prepared)) => {
                    if observed.writes || !prepared.readonly() || is_vacuum(&prepared) {
                        return Err(QUERY_WRITE_ERROR.to_string());
                    }
                    description.statements += 1;
                    description.params = (1..=prepared.parameter_count())
                        .map(|i| prepared.parameter_name(i).map(str::to_string))
                        .collect();
                    description.columns = prepared
                        .columns()
                        .map(|c| (c.name().to_string(), c.decl_type().map(str::to_lowercase)))
                        .collect();
                }
                Ok(None) => return Ok(description),
                Err(error) => return Err(observed.denied.unwrap_or_else(|| error_message(&error))),
            }
        }
    }

    /// Whether all SQL statements in `sql` are read-only (a text that is refused or does not
    /// prepare is not).
    fn is_read_only(&self, sql: &str) -> bool {
        self.describe(sql).is_ok()
    }
}

/// What [`Readers::describe`] finds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Description {
    /// SQL statements in the text.
    pub statements: usize,
    /// The last statement's parameters by index (SQLite numbers them in order of first use):
    /// each one's name with its prefix (`$1`, `:name`, `?3`), `None` for a bare `?`.
    pub params: Vec<Option<String>>,
    /// The last statement's result columns: each one's name and lower-cased declared type
    /// (`None` for an expression).
    pub columns: Vec<(String, Option<String>)>,
}

/// The result of a client statement whose SQL statements all ran: the last one's rows, timed
/// from `start`, unless its parameters did not match.
fn conclude(last: Option<encode::Rows>, binder: &Binder<'_>, start: Instant) -> StatementResult {
    if let Err(error) = binder.finish() {
        return StatementResult::Error(error);
    }
    let time = start.elapsed().as_secs_f64();
    match last {
        Some(rows) => StatementResult::Rows {
            columns: rows.columns,
            types: rows.types,
            values: rows.values,
            time,
        },
        None => StatementResult::Rows { columns: vec![], types: vec![], values: vec![], time },
    }
}

/// VACUUM (which `sqlite3_stmt_readonly` calls a write anyway, but VACUUM INTO may not be).
fn is_vacuum(prepared: &rusqlite::Statement<'_>) -> bool {
    prepared.expanded_sql().is_some_and(|sql| leading_keyword(&sql) == "VACUUM")
}
