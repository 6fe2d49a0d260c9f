//! A pool of read-only connections for queries, never the write connection.
//!
//! `bin` serves `/db/query` (and read-only `/db/request` batches) from [`Readers::query`], on
//! any node, while the write connection keeps applying. In WAL mode each read transaction sees
//! one consistent snapshot of committed data, and readers never block the writer (rqlite's
//! `db/DESIGN.md` uses the same split). [`Readers::is_read_only`] lets `bin` decide whether a
//! `/db/request` batch can stay here or must go to the leader as a write.
//!
//! Every connection is opened `SQLITE_OPEN_READ_ONLY` with `query_only` on, so nothing here can
//! write even by mistake. A statement that would write is answered with rqlite's per-statement
//! error `attempt to change database via query operation`, detected before it runs from
//! `sqlite3_stmt_readonly` plus the authorizer (`policy`, read mode), which also catches what
//! `sqlite3_stmt_readonly` calls read-only but is not a query: ATTACH, BEGIN/COMMIT, SAVEPOINT,
//! pragma assignments; and VACUUM by its keyword.
//!
//! `query` blocks the calling thread (call it from `spawn_blocking`) while it waits for a free
//! connection and runs the statements. Not done here: consistency levels (the caller waits for
//! the applied position it needs before calling) and timeouts.

use std::path::Path;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::fallible_iterator::FallibleIterator as _;
use rusqlite::{Batch, Connection, OpenFlags};

use crate::encode;
use crate::error::Result;
use crate::policy::{Mode, Policy, leading_keyword};
use crate::result::{StatementResult, error_message};
use crate::statement::{Binder, Statement};

/// rqlite's per-statement error for a write sent to the query endpoint.
pub const QUERY_WRITE_ERROR: &str = "attempt to change database via query operation";

/// How long a read waits for a lock (only a WAL checkpoint or restore can make it wait).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One read-only connection and its authorizer.
struct Reader {
    /// The connection.
    conn: Connection,
    /// Its authorizer state.
    policy: Policy,
}

/// A pool of read-only connections to one database file.
///
/// Invariants: the pool holds at most `size` connections; a connection is out of the pool
/// exactly while one call uses it; no connection is left inside a transaction.
pub struct Readers {
    /// Idle connections.
    idle: Mutex<Vec<Reader>>,
    /// Signalled when a connection is returned.
    returned: Condvar,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.idle.lock().map(|idle| idle.len()).unwrap_or_default();
        f.debug_struct("Readers").field("idle", &idle).finish()
    }
}

impl Readers {
    /// Opens `size` (at least one) read-only connections to the database at `path`, which must
    /// exist and be in WAL mode (open the [`crate::Db`] first).
    pub fn open(path: &Path, size: usize) -> Result<Readers> {
        let mut idle = Vec::with_capacity(size.max(1));
        for _ in 0..size.max(1) {
            let mut conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_URI
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.execute_batch("PRAGMA query_only = ON;")?;
            let policy = Policy::default();
            policy.install(&mut conn)?;
            idle.push(Reader { conn, policy });
        }
        Ok(Readers { idle: Mutex::new(idle), returned: Condvar::new() })
    }

    /// Runs read statements and returns one result per statement. With `transaction`, all run
    /// in one read transaction (one snapshot) and processing stops at the first error.
    pub fn query(
        &self,
        statements: &[Statement],
        transaction: bool,
    ) -> Result<Vec<StatementResult>> {
        let reader = self.checkout();
        let outcome = reader.run(statements, transaction);
        if !reader.conn.is_autocommit() {
            let _ = reader.conn.execute_batch("ROLLBACK");
        }
        self.checkin(reader);
        outcome
    }

    /// Whether every statement is read-only and may be served by a read connection. A statement
    /// that cannot be prepared counts as not read-only (the leader will report its error).
    pub fn is_read_only(&self, statements: &[Statement]) -> bool {
        let reader = self.checkout();
        let read_only = statements.iter().all(|s| reader.is_read_only(&s.sql));
        self.checkin(reader);
        read_only
    }

    /// Takes an idle connection, waiting for one if necessary.
    fn checkout(&self) -> Reader {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(reader) = idle.pop() {
                return reader;
            }
            idle = self.returned.wait(idle).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Returns a connection to the pool.
    fn checkin(&self, reader: Reader) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(reader);
        self.returned.notify_one();
    }
}

impl Reader {
    /// Runs statements on this connection.
    fn run(&self, statements: &[Statement], transaction: bool) -> Result<Vec<StatementResult>> {
        if transaction {
            self.conn.execute_batch("BEGIN")?;
        }
        let mut results = Vec::with_capacity(statements.len());
        for statement in statements {
            let result = self.run_statement(statement);
            let failed = result.is_error();
            results.push(result);
            if failed && transaction {
                break;
            }
        }
        if transaction {
            self.conn.execute_batch("COMMIT")?;
        }
        Ok(results)
    }

    /// Runs one client statement; several SQL statements in its text run in order and the last
    /// one gives the result.
    fn run_statement(&self, statement: &Statement) -> StatementResult {
        let start = Instant::now();
        let mut binder = Binder::new(&statement.params);
        let mut batch = Batch::new(&self.conn, &statement.sql);
        let mut last = None;
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
            if let Err(error) = binder.bind(&mut prepared) {
                return StatementResult::Error(error);
            }
            match encode::read_rows(&mut prepared) {
                Ok(rows) => last = Some(rows),
                Err(error) => return StatementResult::Error(error_message(&error)),
            }
        }
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

    /// Whether all SQL statements in `sql` are read-only.
    fn is_read_only(&self, sql: &str) -> bool {
        let mut batch = Batch::new(&self.conn, sql);
        loop {
            self.policy.begin(Mode::Read);
            let next = batch.next();
            let observed = self.policy.take();
            match next {
                Ok(Some(prepared)) => {
                    if observed.writes || !prepared.readonly() || is_vacuum(&prepared) {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}

/// VACUUM (which `sqlite3_stmt_readonly` calls a write anyway, but VACUUM INTO may not be).
fn is_vacuum(prepared: &rusqlite::Statement<'_>) -> bool {
    prepared.expanded_sql().is_some_and(|sql| leading_keyword(&sql) == "VACUUM")
}
