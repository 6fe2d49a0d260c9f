//! One client statement inside a speculation: from the statement cache with its stored verdict,
//! or prepared under the authorizer; row statements stepped under the session, schema
//! statements cut out as `Op::Ddl` with their side effects recorded by a side session.
//!
//! See the parent module for the transaction around it and for what the results mean.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rusqlite::fallible_iterator::FallibleIterator as _;
use rusqlite::{Batch, OptionalExtension as _};
use wal::Op;

use super::{Failure, Ran, Speculator, VACUUM_ERROR, WriteRequest, new_session};
use crate::determinism;
use crate::encode::{self, ReadError};
use crate::limits::ResultBudget;
use crate::mask::{Masked, mask};
use crate::meta::{nullable_key_columns, user_tables};
use crate::policy::{Mode, Observed, leading_keyword};
use crate::result::{StatementResult, error_message};
use crate::schema::quote_identifier;
use crate::session::Session;
use crate::statement::{Binder, Statement};

impl<'c> Speculator<'c> {
    /// Runs one client statement (possibly several SQL statements) and returns its result.
    ///
    /// A text run before as one clean statement comes from the statement cache with its stored
    /// verdict (see `verdicts`); any other text is prepared statement by statement under the
    /// authorizer, and remembered if it qualifies.
    pub(super) fn run_statement(
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
                let check = (!columns.is_empty()).then(|| {
                    let condition: Vec<String> = columns
                        .iter()
                        .map(|c| format!("{} IS NULL", quote_identifier(c)))
                        .collect();
                    format!(
                        "SELECT 1 FROM main.{} WHERE {} LIMIT 1",
                        quote_identifier(table),
                        condition.join(" OR ")
                    )
                });
                self.nullable_keys.insert(table.clone(), check);
            }
            let Some(sql) = &self.nullable_keys[table] else { continue };
            // Cached: the same check runs for every statement writing the table.
            if self.conn.prepare_cached(sql)?.query_row([], |_| Ok(())).optional()?.is_some() {
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

/// Steps a statement until it is done, discarding rows.
fn step_to_end(prepared: &mut rusqlite::Statement<'_>) -> rusqlite::Result<()> {
    let mut rows = prepared.raw_query();
    while rows.next()?.is_some() {}
    Ok(())
}
