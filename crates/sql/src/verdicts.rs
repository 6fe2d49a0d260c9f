//! Prepared client statements kept between requests, with the authorizer's verdict on each.
//!
//! The authorizer (`policy`) classifies a statement while SQLite prepares it, so a client
//! statement used to be prepared anew every time it ran, and preparing dominated cheap
//! statements: a 1,000-row bulk insert spent more time in SQLite's parser than in its b-tree.
//! Now a connection keeps the statements it prepared in rusqlite's statement cache, and
//! [`Verdicts`] keeps, per SQL text, what the authorizer observed when it was prepared under a
//! client mode. A text found here is taken from the statement cache and run with the stored
//! verdict, without parsing it or calling the authorizer again.
//!
//! Verdicts are keyed on the client's text; the statement cache holds the text `mask`
//! made of it (the same one for the same text), which is what was prepared and judged.
//!
//! Only texts that hold exactly one statement with a clean verdict are kept: nothing denied,
//! no schema change, no `VACUUM`/`REINDEX` (those need their text), and on read connections
//! nothing that writes. Everything else takes the full path every time.
//!
//! A verdict holds for one schema: a new trigger or view changes what a statement does, and
//! SQLite silently prepares a stale statement again when it next runs, without the authorizer
//! switched on. So [`Verdicts::check_schema`] compares the schema cookie (`PRAGMA
//! schema_version`) before each use and forgets everything, statements included, when it
//! moved; `Db`'s client connection also forgets after running client DDL (the speculation's
//! rollback then moves the schema back to a cookie already seen), and a new connection starts
//! with new verdicts. A read connection checks inside the read transaction its statements run
//! in (`Readers`), so the cookie it sees is the schema they run under. Were a statement ever
//! prepared again unchecked there, it would be harmless: the connection is read-only,
//! `query_only`, and cannot load extensions, and a read stays a read whatever the schema.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use rusqlite::Connection;

use crate::policy::Observed;

/// Texts kept at most; past this the verdicts start over (a client that inlines literals
/// instead of parameters makes every text new).
const MAX_TEXTS: usize = 512;

/// Statements kept in a connection's statement cache (rusqlite's default is 16).
pub(crate) const STATEMENT_CACHE: usize = MAX_TEXTS;

/// The authorizer's verdicts on one connection's cached client statements (see the module
/// docs). Single-threaded, like the connection it belongs to.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    /// Verdict per SQL text, and how long its last run took, if known.
    texts: RefCell<HashMap<String, (Observed, Option<Duration>)>>,
    /// The schema cookie the verdicts were made under; `None` when unknown.
    schema: Cell<Option<i64>>,
}

impl Verdicts {
    /// The stored verdict on `sql`, if it may run from the statement cache.
    pub(crate) fn get(&self, sql: &str) -> Option<Observed> {
        self.texts.borrow().get(sql).map(|(observed, _)| observed.clone())
    }

    /// How long the last run of `sql` took, if it is kept and has run.
    pub(crate) fn last_run(&self, sql: &str) -> Option<Duration> {
        self.texts.borrow().get(sql).and_then(|(_, took)| *took)
    }

    /// Notes how long a run of `sql` took, if it is kept.
    pub(crate) fn ran(&self, sql: &str, took: Duration) {
        if let Some((_, last)) = self.texts.borrow_mut().get_mut(sql) {
            *last = Some(took);
        }
    }

    /// Stores the verdict on `sql`, a text of one statement with a clean verdict.
    pub(crate) fn remember(&self, sql: &str, observed: Observed) {
        let mut texts = self.texts.borrow_mut();
        if texts.len() >= MAX_TEXTS {
            texts.clear();
        }
        texts.insert(sql.to_string(), (observed, None));
    }

    /// Forgets every verdict and every cached statement of `conn`.
    pub(crate) fn forget(&self, conn: &Connection) {
        self.texts.borrow_mut().clear();
        self.schema.set(None);
        conn.flush_prepared_statement_cache();
    }

    /// Forgets everything if the schema changed since the verdicts were made. Call before
    /// looking a text up, outside any client statement.
    pub(crate) fn check_schema(&self, conn: &Connection) -> rusqlite::Result<()> {
        let cookie: i64 =
            conn.prepare_cached("PRAGMA schema_version")?.query_row([], |row| row.get(0))?;
        if self.schema.get() != Some(cookie) {
            self.forget(conn);
            self.schema.set(Some(cookie));
        }
        Ok(())
    }
}
