//! What client SQL may do, decided by SQLite's authorizer while it prepares each statement.
//!
//! SQLite calls the authorizer for every action a statement will take (create a table, write a
//! row, run a pragma, call a function, begin a transaction, …), including actions inside the
//! triggers and views the statement reaches, for everything SQLite can parse. That makes it a
//! better classifier than any SQL parser of ours. `Db` and `Readers` install
//! [`Policy::install`] once per connection; before preparing a client statement they call
//! [`Policy::begin`] with a [`Mode`], and after preparing they read the [`Observed`] summary with
//! [`Policy::take`]. Their own internal statements (BEGIN, SAVEPOINT, reading
//! `sqlite_sequence`, …) run in [`Mode::Off`].
//!
//! In [`Mode::Write`] (speculative execution on the leader) the authorizer denies what cannot be
//! replicated or would change connection state: ATTACH/DETACH, explicit transactions and
//! savepoints (the `transaction` parameter replaces them), TEMP objects, `load_extension()`,
//! pragmas other than reads and the replicated `user_version` / `application_id`, writes to
//! Keel's `_keel_*` tables and to SQLite's internal tables. The first denial's reason becomes the
//! statement's error message. It also records whether the statement changes the schema (then it
//! is replicated as SQL text), which tables that DDL targets, and which functions it calls (for
//! the determinism check in `determinism`). In [`Mode::Read`] nothing but `load_extension()` is
//! denied; instead actions that make a statement not read-only are recorded.
//!
//! Not reported by the authorizer, hence checked by [`leading_keyword`] on the statement text:
//! `VACUUM` (incl. `VACUUM INTO`) and `REINDEX` without arguments.

use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// How the authorizer treats the statement being prepared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Internal statements: allow everything, record nothing.
    #[default]
    Off,
    /// A client statement on the client connection of `Db` (speculation).
    Write,
    /// A client statement on a read connection.
    Read,
}

/// What the authorizer saw while one client statement was prepared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Observed {
    /// The reason of the first denied action, if any.
    pub(crate) denied: Option<String>,
    /// The statement changes the schema (or a replicated pragma), so it is replicated as SQL.
    pub(crate) ddl: bool,
    /// Tables the DDL creates, drops, alters or renames (lower-case).
    pub(crate) targets: Vec<String>,
    /// The DDL creates a table and runs a SELECT: CREATE TABLE … AS SELECT.
    pub(crate) creates_table_from_select: bool,
    /// Functions called, lower-case, each with whether the call sits inside a view or trigger.
    pub(crate) functions: Vec<(String, bool)>,
    /// Client tables the statement (or a trigger it fires) inserts into or updates, lower-case.
    pub(crate) written: Vec<String>,
    /// Read mode: the statement would change the database or connection state.
    pub(crate) writes: bool,
}

/// The authorizer's shared state: the mode for the statement being prepared and what was seen.
#[derive(Debug, Default)]
struct State {
    /// The current mode.
    mode: Mode,
    /// What the current client statement did so far.
    observed: Observed,
    /// The statement created a table (used with `selects` to recognise CTAS).
    creates_table: bool,
    /// The statement contains a SELECT.
    selects: bool,
    /// A schema change was authorized earlier in this statement. SQLite then runs nested
    /// statements of its own that write its internal tables (DROP TABLE deletes the table's
    /// `sqlite_sequence` and `sqlite_stat1` rows, a rename updates them), which are allowed.
    ddl_seen: bool,
}

/// Handle on one connection's authorizer state. Cheap to clone; `Send + Sync`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Policy {
    /// Shared with the authorizer callback installed on the connection.
    state: Arc<Mutex<State>>,
}

impl Policy {
    /// Installs this policy's authorizer on `conn`.
    pub(crate) fn install(&self, conn: &mut rusqlite::Connection) -> rusqlite::Result<()> {
        let state = Arc::clone(&self.state);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            authorize(&mut state, &ctx)
        }))
    }

    /// Starts observing a statement in `mode` (forgetting what was observed before).
    pub(crate) fn begin(&self, mode: Mode) {
        let mut state = self.lock();
        *state = State { mode, ..State::default() };
    }

    /// Returns what was observed since [`Policy::begin`] and switches the authorizer off.
    pub(crate) fn take(&self) -> Observed {
        let mut state = self.lock();
        let mut observed = std::mem::take(&mut state.observed);
        observed.creates_table_from_select = state.creates_table && state.selects;
        *state = State::default();
        observed
    }

    /// Locks the state; a poisoned lock is still usable (the state is plain data).
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Pragmas that only read, whatever their argument (`PRAGMA table_info(t)`).
const READ_PRAGMAS: &[&str] = &[
    "collation_list",
    "compile_options",
    "database_list",
    "foreign_key_check",
    "foreign_key_list",
    "function_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "module_list",
    "pragma_list",
    "quick_check",
    "table_info",
    "table_list",
    "table_xinfo",
];

/// Pragmas that may be read (no value) but whose assignment changes connection or file state,
/// which cannot be replicated.
const STATE_PRAGMAS: &[&str] = &[
    "analysis_limit",
    "auto_vacuum",
    "automatic_index",
    "busy_timeout",
    "cache_size",
    "cache_spill",
    "case_sensitive_like",
    "cell_size_check",
    "checkpoint_fullfsync",
    "count_changes",
    "data_version",
    "defer_foreign_keys",
    "empty_result_callbacks",
    "encoding",
    "foreign_keys",
    "freelist_count",
    "full_column_names",
    "fullfsync",
    "hard_heap_limit",
    "ignore_check_constraints",
    "journal_mode",
    "journal_size_limit",
    "legacy_alter_table",
    "locking_mode",
    "max_page_count",
    "mmap_size",
    "page_count",
    "page_size",
    "query_only",
    "recursive_triggers",
    "reverse_unordered_selects",
    "schema_version",
    "secure_delete",
    "short_column_names",
    "soft_heap_limit",
    "synchronous",
    "temp_store",
    "threads",
    "trusted_schema",
    "wal_autocheckpoint",
    "writable_schema",
];

/// Pragmas whose assignment is replicated as SQL text: they set a number in the database header
/// that every replica must agree on.
pub(crate) const REPLICATED_PRAGMAS: &[&str] = &["application_id", "user_version"];

/// The error for `load_extension()`, which would run code that exists on one node only.
const LOAD_EXTENSION_ERROR: &str = "load_extension() is not supported";

/// The prefix of Keel's own tables.
const KEEL_PREFIX: &str = "_keel_";

/// SQLite's schema tables, which SQLite itself protects from client writes; DDL writes them.
const SCHEMA_TABLES: &[&str] =
    &["sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"];

/// The authorizer callback's decision.
fn authorize(state: &mut State, ctx: &AuthContext<'_>) -> Authorization {
    let mode = state.mode;
    if mode == Mode::Off {
        return Authorization::Allow;
    }
    if let AuthAction::Insert { table_name } | AuthAction::Update { table_name, .. } = ctx.action {
        let lower = table_name.to_ascii_lowercase();
        if !lower.starts_with("sqlite_") && !state.observed.written.contains(&lower) {
            state.observed.written.push(lower);
        }
    }
    let verdict = verdict(state, ctx);
    if mode == Mode::Read {
        // Reads deny only what could load code; anything else that is not a plain read just
        // marks the statement as not read-only.
        if let AuthAction::Function { function_name } = ctx.action
            && function_name.eq_ignore_ascii_case("load_extension")
        {
            state.observed.denied.get_or_insert_with(|| LOAD_EXTENSION_ERROR.to_string());
            return Authorization::Deny;
        }
        if !matches!(verdict, Verdict::Allow) {
            state.observed.writes = true;
        }
        return Authorization::Allow;
    }
    match verdict {
        Verdict::Allow => Authorization::Allow,
        Verdict::Deny(reason) => {
            state.observed.denied.get_or_insert(reason);
            Authorization::Deny
        }
        Verdict::Ddl(target) => {
            state.ddl_seen = true;
            if ctx.accessor.is_none() {
                state.observed.ddl = true;
                if let Some(target) = target {
                    state.observed.targets.push(target);
                }
            }
            Authorization::Allow
        }
    }
}

/// What an action means for replication.
enum Verdict {
    /// Fine.
    Allow,
    /// Not allowed, for this reason.
    Deny(String),
    /// A schema change, with the table it creates/drops/alters if any.
    Ddl(Option<String>),
}

/// Classifies one action.
fn verdict(state: &mut State, ctx: &AuthContext<'_>) -> Verdict {
    use AuthAction as A;
    let ddl_on = |table: &str, target: bool| {
        let lower = table.to_ascii_lowercase();
        if is_keel(&lower) {
            Verdict::Deny(format!("{table} is an internal table of Keel"))
        } else {
            // SQLite's own tables (sqlite_sequence, sqlite_stat1, …) are never recorded, so
            // they need not be excluded as targets.
            Verdict::Ddl((target && !lower.starts_with("sqlite_")).then_some(lower))
        }
    };
    match ctx.action {
        A::Select | A::Recursive | A::Read { .. } => {
            if matches!(ctx.action, A::Select) {
                state.selects = true;
            }
            Verdict::Allow
        }
        A::Function { function_name } => {
            let name = function_name.to_ascii_lowercase();
            if name == "load_extension" {
                return Verdict::Deny(LOAD_EXTENSION_ERROR.into());
            }
            state.observed.functions.push((name, ctx.accessor.is_some()));
            Verdict::Allow
        }
        A::Insert { table_name } | A::Delete { table_name } | A::Update { table_name, .. } => {
            write_to(table_name, state.ddl_seen)
        }
        A::Pragma { pragma_name, pragma_value } => pragma(pragma_name, pragma_value, ctx.database_name),
        A::Transaction { .. } => Verdict::Deny(
            "BEGIN, COMMIT, END and ROLLBACK are not supported: use the transaction parameter".into(),
        ),
        A::Savepoint { .. } => Verdict::Deny(
            "SAVEPOINT, RELEASE and ROLLBACK TO are not supported: use the transaction parameter"
                .into(),
        ),
        A::Attach { .. } | A::Detach { .. } => {
            Verdict::Deny("ATTACH and DETACH are not supported".into())
        }
        A::CreateTempIndex { .. }
        | A::CreateTempTable { .. }
        | A::CreateTempTrigger { .. }
        | A::CreateTempView { .. }
        | A::DropTempIndex { .. }
        | A::DropTempTable { .. }
        | A::DropTempTrigger { .. }
        | A::DropTempView { .. } => Verdict::Deny(
            "TEMP tables, indexes, views and triggers are not supported: they would exist on one node only"
                .into(),
        ),
        A::CreateTable { table_name } => {
            state.creates_table = true;
            ddl_on(table_name, true)
        }
        A::DropTable { table_name } => ddl_on(table_name, true),
        A::AlterTable { table_name, .. } => ddl_on(table_name, true),
        A::CreateVtable { table_name, .. } | A::DropVtable { table_name, .. } => {
            ddl_on(table_name, true)
        }
        A::CreateIndex { table_name, .. }
        | A::DropIndex { table_name, .. }
        | A::CreateTrigger { table_name, .. }
        | A::DropTrigger { table_name, .. } => ddl_on(table_name, false),
        A::CreateView { view_name } | A::DropView { view_name } => ddl_on(view_name, false),
        A::Reindex { .. } => Verdict::Ddl(None),
        // ANALYZE visits every table, Keel's included; the statistics are deterministic.
        A::Analyze { .. } => Verdict::Ddl(None),
        _ => Verdict::Deny("this kind of statement is not supported".into()),
    }
}

/// Rules for a row write (INSERT/UPDATE/DELETE) to `table`; `in_ddl` when the statement is a
/// schema change (whose own bookkeeping writes SQLite's tables). `sqlite_sequence` may be
/// written, as SQLite allows (loads restore AUTOINCREMENT counters that way): sessions do not
/// record it, but `Db::execute` replicates its final contents with every record.
fn write_to(table: &str, in_ddl: bool) -> Verdict {
    let lower = table.to_ascii_lowercase();
    if is_keel(&lower) {
        Verdict::Deny(format!("{table} is an internal table of Keel"))
    } else if lower.starts_with("sqlite_")
        && lower != "sqlite_sequence"
        && !in_ddl
        && !SCHEMA_TABLES.contains(&lower.as_str())
    {
        Verdict::Deny(format!("writing to SQLite's internal table {table} is not supported"))
    } else {
        Verdict::Allow
    }
}

/// Rules for `PRAGMA [schema.]name [= value | (value)]`.
fn pragma(name: &str, value: Option<&str>, schema: Option<&str>) -> Verdict {
    let lower = name.to_ascii_lowercase();
    let name = lower.as_str();
    if READ_PRAGMAS.contains(&name) {
        return Verdict::Allow;
    }
    let known = STATE_PRAGMAS.contains(&name) || REPLICATED_PRAGMAS.contains(&name);
    match value {
        None if known => Verdict::Allow,
        Some(_) if REPLICATED_PRAGMAS.contains(&name) => {
            if schema.is_some_and(|s| !s.eq_ignore_ascii_case("main")) {
                Verdict::Deny(format!("PRAGMA {name} is only supported on the main database"))
            } else {
                Verdict::Ddl(None)
            }
        }
        Some(_) if name == "foreign_keys" => Verdict::Deny(
            "PRAGMA foreign_keys = … is not supported: foreign keys are a node setting (keel serve --fk), the same on every node".to_string(),
        ),
        Some(_) if known => Verdict::Deny(format!(
            "PRAGMA {name} = … is not supported: it changes connection or file settings, which are not replicated"
        )),
        _ => Verdict::Deny(format!("PRAGMA {name} is not supported")),
    }
}

/// Whether `name` is one of Keel's own tables.
fn is_keel(name: &str) -> bool {
    name.get(..KEEL_PREFIX.len()).is_some_and(|prefix| prefix.eq_ignore_ascii_case(KEEL_PREFIX))
}

/// The first keyword of an SQL statement, upper-cased, skipping whitespace and comments.
pub(crate) fn leading_keyword(sql: &str) -> String {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, tail)| tail);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, tail)| tail);
        } else {
            break;
        }
    }
    rest.chars().take_while(|c| c.is_ascii_alphabetic()).collect::<String>().to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    /// Prepares `sql` on a fresh connection in `mode` and returns what was observed.
    fn observe(mode: Mode, sql: &str) -> Observed {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v); CREATE TABLE _keel_meta (id);",
        )
        .unwrap();
        let policy = Policy::default();
        policy.install(&mut conn).unwrap();
        policy.begin(mode);
        let _ = conn.prepare(sql);
        policy.take()
    }

    #[test_case("ATTACH ':memory:' AS x", "ATTACH and DETACH are not supported")]
    #[test_case("DETACH x", "ATTACH and DETACH are not supported")]
    #[test_case(
        "BEGIN",
        "BEGIN, COMMIT, END and ROLLBACK are not supported: use the transaction parameter"
    )]
    #[test_case(
        "COMMIT",
        "BEGIN, COMMIT, END and ROLLBACK are not supported: use the transaction parameter"
    )]
    #[test_case(
        "SAVEPOINT a",
        "SAVEPOINT, RELEASE and ROLLBACK TO are not supported: use the transaction parameter"
    )]
    #[test_case(
        "CREATE TEMP TABLE x (a)",
        "TEMP tables, indexes, views and triggers are not supported: they would exist on one node only"
    )]
    #[test_case("SELECT load_extension('x')", "load_extension() is not supported")]
    #[test_case(
        "PRAGMA journal_mode = DELETE",
        "PRAGMA journal_mode = … is not supported: it changes connection or file settings, which are not replicated"
    )]
    #[test_case("PRAGMA wal_checkpoint", "PRAGMA wal_checkpoint is not supported")]
    #[test_case(
        "PRAGMA temp.user_version = 1",
        "PRAGMA user_version is only supported on the main database"
    )]
    #[test_case("INSERT INTO _keel_meta VALUES (1)", "_keel_meta is an internal table of Keel")]
    #[test_case("DROP TABLE _keel_meta", "_keel_meta is an internal table of Keel")]
    #[test_case("CREATE TABLE _KEEL_x (a)", "_KEEL_x is an internal table of Keel")]
    fn denied(sql: &str, reason: &str) {
        assert_eq!(observe(Mode::Write, sql).denied.as_deref(), Some(reason));
    }

    #[test_case("SELECT * FROM t", false, &[])]
    #[test_case("INSERT INTO t (v) VALUES (random())", false, &[])]
    #[test_case("PRAGMA table_info(t)", false, &[])]
    #[test_case("PRAGMA user_version", false, &[])]
    #[test_case("PRAGMA user_version = 7", true, &[])]
    #[test_case("CREATE TABLE u (a)", true, &["u"])]
    #[test_case("ALTER TABLE t ADD COLUMN w", true, &["t"])]
    #[test_case("DROP TABLE t", true, &["t"])]
    #[test_case("CREATE INDEX i ON t (v)", true, &[])]
    #[test_case("ANALYZE", true, &[])]
    #[test_case("CREATE TABLE abcdeé (a)", true, &["abcdeé"])]
    fn allowed(sql: &str, ddl: bool, targets: &[&str]) {
        let observed = observe(Mode::Write, sql);
        assert_eq!(observed.denied, None);
        assert_eq!(observed.ddl, ddl);
        assert_eq!(observed.targets, targets);
    }

    #[test]
    fn ctas_and_functions() {
        let observed = observe(Mode::Write, "CREATE TABLE u AS SELECT random() AS r FROM t");
        assert!(observed.creates_table_from_select);
        assert_eq!(observed.functions, vec![("random".to_string(), false)]);
        assert!(
            !observe(Mode::Write, "CREATE TABLE u (a CHECK (a > 0))").creates_table_from_select
        );
    }

    #[test_case("SELECT 1", false)]
    #[test_case("PRAGMA foreign_keys = OFF", true)]
    #[test_case("ATTACH ':memory:' AS x", true)]
    #[test_case("BEGIN", true)]
    #[test_case("CREATE TABLE u (a)", true)]
    fn read_mode(sql: &str, writes: bool) {
        let observed = observe(Mode::Read, sql);
        assert_eq!(observed.writes, writes);
        assert_eq!(observed.denied, None);
    }

    #[test_case("  VACUUM", "VACUUM")]
    #[test_case("-- c\n/* d */ vacuum into 'x'", "VACUUM")]
    #[test_case("reindex;", "REINDEX")]
    #[test_case("/* unterminated", "")]
    fn keywords(sql: &str, keyword: &str) {
        assert_eq!(leading_keyword(sql), keyword);
    }
}
