//! Speculation: the leader runs a group of client requests and captures what they change,
//! without changing the database.
//!
//! [`Db::execute`] (leader only) runs a group of client requests inside one transaction with a
//! SQLite session recording row changes, turns what happened into a [`wal::Record`] plus
//! per-statement results, and then **rolls everything back**. The database never changes here;
//! the record goes through Raft and comes back through [`Db::apply`]. [`Db::execute_held`] (the
//! writer's) leaves the transaction open instead, and `apply` commits it when the record comes
//! back (see `held`). This file holds the
//! group's transaction, its savepoint scopes and the session cuts; `run` runs one client
//! statement inside it.
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
//! `sqlite_sequence`) leave both values alone; the writes of `apply` run on the other connection,
//! except when it commits a held speculation: its bookkeeping writes on this connection are
//! undone in both values (which is why only a speculation whose last statement left at most one
//! change is held).
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

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::config::DbConfig;
use wal::{Lsn, Op, Record, Term};

use super::held::Held;
use super::{Db, internal, set_last_insert_rowid};
use crate::answers;
use crate::error::{Error, Result};
use crate::limits::{self, Limits, Watchdog};
use crate::meta::{self, Sequences, read_sequences};
use crate::policy::Policy;
use crate::result::StatementResult;
use crate::schema::is_internal_table;
use crate::session::{self, Session};
use crate::statement::Statement;
use crate::verdicts::Verdicts;

mod run;

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

impl WriteRequest {
    /// A request of `sql` texts without parameters, each its own statement, with every option
    /// off (no transaction, no time limit of its own, no rows, no request id).
    pub fn of(sql: &[&str]) -> WriteRequest {
        WriteRequest {
            statements: sql.iter().map(|s| Statement::new(*s)).collect(),
            transaction: false,
            timeout: None,
            rows: false,
            request_id: None,
        }
    }
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

/// What [`Db::execute`] does with one request of a group.
pub(super) enum Plan {
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

impl Db {
    /// Runs a group of client requests under one transaction with session capture, returns the
    /// record to replicate and the results, and rolls back: the database is never changed.
    /// Requests whose id was seen before are answered without running (see the module docs).
    ///
    /// Errors are infrastructure failures only; SQL errors are per-statement results.
    pub fn execute(&mut self, requests: &[WriteRequest]) -> Result<Speculation> {
        self.speculate(requests, None)
    }

    /// [`Db::execute`] for the leader's writer, which proposes the record in `term`: the
    /// transaction is left open instead of rolled back, holding the requests' effects, and
    /// [`Db::apply`] commits it when it is handed that record as the next entry (see `held`),
    /// instead of applying the record's changesets again. Any other call rolls it back (after
    /// applying what it deferred). A speculation that changed nothing is rolled back at once.
    pub fn execute_held(&mut self, requests: &[WriteRequest], term: Term) -> Result<Speculation> {
        self.speculate(requests, Some(term))
    }

    /// [`Db::execute`], holding the transaction open for `hold`'s term if given.
    fn speculate(&mut self, requests: &[WriteRequest], hold: Option<Term>) -> Result<Speculation> {
        self.release_held()?;
        self.prepare_connection()?;
        let plans = self.plan(requests)?;
        let run = runnable(requests, &plans);
        let mut skip: BTreeMap<(usize, usize), String> = BTreeMap::new();
        let last_rowid = self.conn.last_insert_rowid();
        let attempt = loop {
            // A retry starts from the rowid the first attempt started from, so that results
            // do not show what the thrown-away attempt inserted.
            set_last_insert_rowid(&self.conn, last_rowid);
            let outcome =
                Speculator::run(self.checks(), &self.conn, "BEGIN IMMEDIATE", &run, &skip);
            if hold.is_none() || outcome.is_err() {
                self.end_transaction();
            }
            match outcome {
                Ok(attempt) => break attempt,
                Err(Failure::EndedTransaction { request, statement, error }) => {
                    tracing::debug!(request, statement, %error, "statement ended the transaction; retrying without it");
                    skip.insert((request, statement), error);
                }
                Err(Failure::Fatal(error)) => return Err(error),
            }
        };
        let speculation = assemble(requests, plans, attempt);
        if let Some(term) = hold {
            self.hold(term, &speculation.record);
        }
        Ok(speculation)
    }

    /// Sets the client connection's value cap and foreign-key setting if `limits` changed, and
    /// forgets the authorizer's verdicts if the schema moved.
    pub(super) fn prepare_connection(&mut self) -> Result<()> {
        if !self.capped {
            limits::cap_values(&self.conn, Some(&self.limits))?;
            self.conn
                .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_FKEY, self.limits.foreign_keys)?;
            self.capped = true;
        }
        self.verdicts.check_schema(&self.conn)?;
        Ok(())
    }

    /// What a speculation checks its statements with.
    pub(super) fn checks(&self) -> Checks<'_> {
        Checks {
            policy: &self.policy,
            watchdog: &self.watchdog,
            limits: &self.limits,
            verdicts: &self.verdicts,
        }
    }

    /// Keeps the open transaction of a speculation that produced `record`, to be proposed in
    /// `term`; rolls it back if there is nothing to propose or its base cannot be read.
    ///
    /// Also rolled back when the last client statement left `sqlite3_changes` above 1: the
    /// commit writes Keel's bookkeeping rows on this connection, which sets that counter to
    /// 1, and a later statement that writes no rows (DDL) must still report what the last
    /// client statement left (see the module docs). 0 and 1 can be restored; more cannot be
    /// without writing as many rows, so such a record is applied from its changesets.
    fn hold(&self, term: Term, record: &Record) {
        if record.ops.is_empty() && record.requests.is_empty()
            || self.conn.is_autocommit()
            || self.conn.changes() > 1
        {
            self.end_transaction();
            return;
        }
        match meta::read_applied(&self.conn) {
            Ok(base) => {
                let base = base.map_or(0, |a| a.index);
                self.held.set(Some(Held::new(term, base, record.clone())));
            }
            Err(error) => {
                tracing::warn!(%error, "reading the applied position; the speculation is rolled back");
                self.end_transaction();
            }
        }
    }

    /// Decides, for each request of a group, whether to run it or answer it as a retry: its id
    /// is stored in `_keel_requests`, or belongs to an earlier request of the group.
    pub(super) fn plan(&self, requests: &[WriteRequest]) -> Result<Vec<Plan>> {
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
}

/// Why one attempt of [`Db::execute`] stopped early.
pub(super) enum Failure {
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
pub(super) struct Attempt {
    /// The record's ops.
    ops: Vec<Op>,
    /// One `Vec` per request run, one result per statement.
    results: Vec<Vec<StatementResult>>,
}

/// What watches client statements on the client connection.
#[derive(Clone, Copy)]
pub(super) struct Checks<'c> {
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
pub(super) struct Speculator<'c> {
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
    /// Per table, the query finding a NULL in its PRIMARY KEY columns that may hold one, or
    /// `None` if none can (see `check_primary_keys`); cleared by every schema change.
    nullable_keys: HashMap<String, Option<String>>,
}

/// A savepoint's three statements, spelled out once: they run for every client statement, and
/// building their text each time showed in profiles of bulk writes.
struct Savepoint {
    /// `SAVEPOINT name`.
    begin: &'static str,
    /// `ROLLBACK TO name`.
    rollback: &'static str,
    /// `RELEASE name`.
    release: &'static str,
}

/// Declares a [`Savepoint`] named `$name`. Client SQL cannot use savepoints, so the names cannot
/// clash.
macro_rules! savepoint {
    ($name:literal) => {
        Savepoint {
            begin: concat!("SAVEPOINT ", $name),
            rollback: concat!("ROLLBACK TO ", $name),
            release: concat!("RELEASE ", $name),
        }
    };
}

/// The savepoint around one request of a `transaction` group.
const REQUEST_SAVEPOINT: Savepoint = savepoint!("keel_request");
/// The savepoint around one statement of a request without `transaction`.
const STATEMENT_SAVEPOINT: Savepoint = savepoint!("keel_statement");
/// The savepoint opened and released to make full-text indexes flush (see `cut`).
const FLUSH_SAVEPOINT: Savepoint = savepoint!("keel_flush");

/// The requests of a group that are run (not answered as retries), in order.
pub(super) fn runnable<'r>(requests: &'r [WriteRequest], plans: &[Plan]) -> Vec<&'r WriteRequest> {
    requests
        .iter()
        .zip(plans)
        .filter(|(_, plan)| matches!(plan, Plan::Run))
        .map(|(request, _)| request)
        .collect()
}

/// A group's speculation from its plans and the attempt that ran the requests to run: every
/// request's results (retries answered from their plan), and the record.
pub(super) fn assemble(
    requests: &[WriteRequest],
    plans: Vec<Plan>,
    attempt: Attempt,
) -> Speculation {
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
    let record = Record { ops: attempt.ops, requests: answers };
    Speculation { record, results, duplicates }
}

/// The error result for VACUUM, which the authorizer does not report.
const VACUUM_ERROR: &str = "VACUUM is not run from client SQL: it rewrites the file on every replica at one log position; run it with POST /admin/vacuum (keel admin vacuum) or --auto-vacuum-interval";

/// The error of a transaction whose COMMIT would fail on a deferred foreign key.
const DEFERRED_FK_ERROR: &str = "FOREIGN KEY constraint failed";

impl<'c> Speculator<'c> {
    /// Runs one attempt; the caller rolls back afterwards whatever happens. `skip` holds
    /// statements answered by an error without being run, by position in `requests`.
    /// `begin` opens the attempt's scope: `BEGIN IMMEDIATE`, or a savepoint inside a held
    /// transaction (`held`).
    pub(super) fn run(
        checks: Checks<'c>,
        conn: &'c Connection,
        begin: &str,
        requests: &[&WriteRequest],
        skip: &BTreeMap<(usize, usize), String>,
    ) -> std::result::Result<Attempt, Failure> {
        internal(conn, begin)?;
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
        let mark = self.begin_scope(may_have_ddl, &REQUEST_SAVEPOINT)?;
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
        self.end_scope(&REQUEST_SAVEPOINT, mark, failed)?;
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
            let mark = self.begin_scope(may_contain_ddl(&statement.sql), &STATEMENT_SAVEPOINT)?;
            let mut result = match self.run_statement(statement, request)? {
                Ran::Result(result) => result,
                Ran::EndedTransaction(error) => return Ok(Err((s, error))),
            };
            if !result.is_error() && session::deferred_foreign_key_violations(self.conn)? {
                result = StatementResult::Error(DEFERRED_FK_ERROR.to_string());
            }
            self.end_scope(&STATEMENT_SAVEPOINT, mark, result.is_error())?;
            results.push(result);
        }
        Ok(Ok(results))
    }

    /// Opens a savepoint scope; returns the ops mark to truncate to if it is rolled back.
    fn begin_scope(
        &mut self,
        may_have_ddl: bool,
        savepoint: &Savepoint,
    ) -> std::result::Result<usize, Failure> {
        if may_have_ddl {
            self.cut()?;
        }
        self.scope_clean = may_have_ddl;
        self.internal(savepoint.begin)?;
        Ok(self.ops.len())
    }

    /// Closes a savepoint scope, undoing it if `failed`.
    fn end_scope(
        &mut self,
        savepoint: &Savepoint,
        mark: usize,
        failed: bool,
    ) -> std::result::Result<(), Failure> {
        if failed {
            self.internal(savepoint.rollback)?;
            if self.ops.len() > mark {
                // Ops were cut inside the scope, which therefore started with a fresh session:
                // drop them, and the session's changes since the last cut with them.
                self.ops.truncate(mark);
                self.session = None;
                self.session = Some(new_session(self.conn)?);
            }
        }
        self.internal(savepoint.release)?;
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
        self.internal(FLUSH_SAVEPOINT.begin)?;
        self.internal(FLUSH_SAVEPOINT.release)?;
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
}

/// A session recording all client tables (not SQLite's or Keel's internal ones).
fn new_session(conn: &Connection) -> rusqlite::Result<Session<'_>> {
    Session::new(conn, Box::new(|table| !is_internal_table(table)))
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

/// Ops that make a replica's `sqlite_sequence` equal the leader's after the record: sessions do
/// not record it, and a replica applying the rows would only reach the largest rowid still
/// present, not the leader's counter. Names and values are SQL literals ([`read_sequences`]).
fn sequence_fixups(before: &Sequences, after: &Sequences) -> Vec<Op> {
    // `=` never matches NULL; both forms start alike (see `node::changes`).
    let matching = |name: &str| {
        if name == "NULL" { "name IS NULL".to_string() } else { format!("name = {name}") }
    };
    let mut ops = Vec::new();
    for (name, seqs) in after {
        if before.get(name) != Some(seqs) {
            let rows: Vec<String> = seqs.iter().map(|seq| format!("({name}, {seq})")).collect();
            ops.push(Op::Ddl(format!(
                "DELETE FROM sqlite_sequence WHERE {}; INSERT INTO sqlite_sequence (name, seq) VALUES {};",
                matching(name),
                rows.join(", ")
            )));
        }
    }
    for name in before.keys().filter(|name| !after.contains_key(*name)) {
        ops.push(Op::Ddl(format!("DELETE FROM sqlite_sequence WHERE {};", matching(name))));
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
        let map = |pairs: &[(&str, &[&str])]| -> Sequences {
            pairs
                .iter()
                .map(|(name, seqs)| {
                    (name.to_string(), seqs.iter().map(|s| s.to_string()).collect())
                })
                .collect()
        };
        let before = map(&[("'a'", &["1"]), ("'b'", &["2"]), ("'c''d'", &["3"]), ("NULL", &["4"])]);
        let after = map(&[("'a'", &["1"]), ("'b'", &["5"]), ("'e'", &["'u'", "2.5"])]);
        let sql: Vec<String> = sequence_fixups(&before, &after)
            .into_iter()
            .map(|op| match op {
                Op::Ddl(sql) => sql,
                Op::Changes(_) | Op::Vacuum => unreachable!(),
            })
            .collect();
        assert_eq!(
            sql,
            vec![
                "DELETE FROM sqlite_sequence WHERE name = 'b'; INSERT INTO sqlite_sequence (name, seq) VALUES ('b', 5);",
                "DELETE FROM sqlite_sequence WHERE name = 'e'; INSERT INTO sqlite_sequence (name, seq) VALUES ('e', 'u'), ('e', 2.5);",
                "DELETE FROM sqlite_sequence WHERE name = 'c''d';",
                "DELETE FROM sqlite_sequence WHERE name IS NULL;",
            ]
        );
    }
}
