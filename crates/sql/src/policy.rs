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
//! In every client mode, and in [`Mode::Step`] while a client statement steps
//! ([`Policy::stepping`]), Keel's bookkeeping stays out of reach ([`concealed`]): reads of
//! `_keel_*` tables (through views and triggers too), pragmas about them, and reads of
//! `sqlite_master`/`sqlite_stat1` other than through the filtering CTE that `mask` puts in front
//! of client statements are refused with a reason; new objects named `_keel_*` are refused
//! too. SQLite's own statements inside a schema change read `sqlite_master` with no accessor,
//! after the DDL action; those are allowed.
//!
//! Not reported by the authorizer, hence checked by [`leading_keyword`] on the statement text:
//! `VACUUM` (incl. `VACUUM INTO`) and `REINDEX` without arguments.

use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use crate::mask;

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
    /// A client statement stepping (see [`Policy::stepping`]): only Keel's tables are guarded.
    Step,
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

    /// Guards a prepared client statement while it steps, until the returned value is dropped
    /// (then the authorizer is off). SQLite calls the authorizer while a statement steps when a
    /// table-valued pragma (`pragma_table_info(?)`) prepares its pragma, whose argument is only
    /// known then, and when a statement is prepared again after a schema change; in this mode
    /// only the rules that keep Keel's tables hidden apply (see [`concealed`]).
    pub(crate) fn stepping(&self) -> Stepping<'_> {
        self.begin(Mode::Step);
        Stepping { policy: self }
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

/// The authorizer in [`Mode::Step`] while this lives (see [`Policy::stepping`]).
pub(crate) struct Stepping<'p> {
    /// The policy to switch off when dropped.
    policy: &'p Policy,
}

impl Stepping<'_> {
    /// The reason the authorizer refused something while the statement stepped, if it did:
    /// the statement's error then is this reason rather than SQLite's "not authorized".
    pub(crate) fn refusal(&self) -> Option<String> {
        self.policy.lock().observed.denied.clone()
    }
}

impl Drop for Stepping<'_> {
    fn drop(&mut self) {
        self.policy.take();
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
    if matches!(verdict, Verdict::Ddl(_)) {
        state.ddl_seen = true;
    }
    if let Some(reason) = concealed(state, ctx) {
        state.observed.denied.get_or_insert(reason);
        return Authorization::Deny;
    }
    if mode == Mode::Step {
        return Authorization::Allow;
    }
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
        A::CreateIndex { index_name: name, table_name }
        | A::CreateTrigger { trigger_name: name, table_name } => {
            if is_keel(name) { Verdict::Deny(reserved(name)) } else { ddl_on(table_name, false) }
        }
        A::DropIndex { table_name, .. } | A::DropTrigger { table_name, .. } => {
            ddl_on(table_name, false)
        }
        A::CreateView { view_name } | A::DropView { view_name } => ddl_on(view_name, false),
        A::Reindex { .. } => Verdict::Ddl(None),
        // ANALYZE visits every table, Keel's included; the statistics are deterministic.
        A::Analyze { .. } => Verdict::Ddl(None),
        _ => Verdict::Deny("this kind of statement is not supported".into()),
    }
}

/// Whether a client action would reveal Keel's bookkeeping, and the reason to refuse it. Applies
/// in every client mode, [`Mode::Step`] included:
///
/// * reading a `_keel_*` table, directly or through a view or trigger (SQLite reports the
///   underlying table, with the view or trigger as accessor);
/// * a pragma about a `_keel_*` object (`PRAGMA table_info(_keel_meta)`, also as the
///   table-valued `pragma_table_info('_keel_meta')`, whose pragma runs while stepping);
/// * reading `sqlite_master` or `sqlite_stat1`, which list Keel's tables, other than through
///   the filtering CTE `mask` puts in front of a client statement (the CTE is the accessor) or
///   by SQLite's own statements inside a schema change (no accessor, after the DDL action):
///   this refuses views and triggers over them and any spelling `mask` missed.
fn concealed(state: &State, ctx: &AuthContext<'_>) -> Option<String> {
    match ctx.action {
        AuthAction::Read { table_name, .. } if is_keel(table_name) => Some(internal(table_name)),
        AuthAction::Pragma { pragma_value: Some(value), .. } if is_keel(value) => {
            Some(internal(value))
        }
        AuthAction::Read { table_name, .. } => {
            let lower = table_name.to_ascii_lowercase();
            let cte = match lower.as_str() {
                "sqlite_master" | "sqlite_schema" => mask::MASTER_CTE,
                "sqlite_stat1" => mask::STAT1_CTE,
                _ => return None,
            };
            if ctx.database_name.is_some_and(|db| !db.eq_ignore_ascii_case("main")) {
                return None;
            }
            match ctx.accessor {
                Some(accessor) if accessor == cte => None,
                // SQLite's own statements: those of a schema change, and while stepping (where
                // a statement prepared again is one that passed these rules, and ANALYZE
                // reloads the statistics).
                None if state.ddl_seen || state.mode == Mode::Step => None,
                _ => Some(format!(
                    "reading {lower} is only supported by name in a client statement, not through a view or trigger: it lists Keel's internal tables"
                )),
            }
        }
        _ => None,
    }
}

/// The refusal of an action on Keel's table (or index) `name`.
fn internal(name: &str) -> String {
    format!("{name} is an internal table of Keel")
}

/// The refusal of a new object named like Keel's.
fn reserved(name: &str) -> String {
    format!("{name}: names starting with {KEEL_PREFIX} are reserved for Keel's internal tables")
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

    const KEEL: &str = "_keel_meta is an internal table of Keel";
    const VIA_VIEW: &str = "reading sqlite_master is only supported by name in a client statement, not through a view or trigger: it lists Keel's internal tables";

    /// Prepares `sql` (after `mask`) in `mode` on a database with a view over `_keel_meta` and
    /// one over `sqlite_master` (made before the rules existed), steps it under
    /// [`Policy::stepping`], and returns the first refusal, if any.
    fn refusal(mode: Mode, sql: &str) -> Option<String> {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v); CREATE TABLE _keel_meta (id);
             CREATE VIEW old_keel AS SELECT * FROM _keel_meta;
             CREATE VIEW old_master AS SELECT * FROM sqlite_master;",
        )
        .unwrap();
        let policy = Policy::default();
        policy.install(&mut conn).unwrap();
        let sql = match mask::mask(sql) {
            mask::Masked::Text(sql) => sql.into_owned(),
            mask::Masked::Refused(reason) => return Some(reason),
        };
        policy.begin(mode);
        let prepared = conn.prepare(&sql);
        let observed = policy.take();
        if let Some(denied) = observed.denied {
            return Some(denied);
        }
        let mut prepared = prepared.unwrap();
        let stepping = policy.stepping();
        let mut rows = prepared.raw_query();
        let outcome = loop {
            match rows.next() {
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        let denied = stepping.refusal();
        match outcome {
            Ok(()) => None,
            Err(error) => Some(denied.unwrap_or_else(|| error.to_string())),
        }
    }

    #[test_case("SELECT * FROM _keel_meta", Some(KEEL))]
    #[test_case("SELECT * FROM old_keel", Some(KEEL); "through a view")]
    #[test_case(
        "SELECT (SELECT count(*) FROM \"_KEEL_META\")",
        Some("_KEEL_META is an internal table of Keel")
    )]
    #[test_case("PRAGMA table_info(_keel_meta)", Some(KEEL))]
    #[test_case("PRAGMA index_list('_keel_meta')", Some(KEEL))]
    #[test_case("SELECT * FROM pragma_table_info('_keel_meta')", Some(KEEL); "pragma function")]
    #[test_case("SELECT * FROM old_master", Some(VIA_VIEW))]
    #[test_case("SELECT * FROM sqlite_master", None; "masked")]
    #[test_case("SELECT * FROM main.sqlite_schema", None; "masked schema")]
    #[test_case("PRAGMA table_list", None)]
    #[test_case("SELECT * FROM pragma_table_info('t')", None)]
    #[test_case("PRAGMA table_info(t)", None)]
    fn concealed_in_every_mode(sql: &str, expected: Option<&str>) {
        for mode in [Mode::Read, Mode::Write] {
            assert_eq!(refusal(mode, sql).as_deref(), expected, "{mode:?}: {sql}");
        }
    }

    /// Reads of `sqlite_master` that did not go through `mask` are refused; SQLite's own reads
    /// inside schema changes are not.
    #[test_case("SELECT * FROM sqlite_master", Some(VIA_VIEW))]
    #[test_case("CREATE TABLE c AS SELECT 1 AS a", None)]
    #[test_case("CREATE TABLE u (a)", None)]
    #[test_case("CREATE INDEX i ON t (v)", None)]
    #[test_case("ALTER TABLE t ADD COLUMN w", None)]
    #[test_case("ALTER TABLE t RENAME TO t2", None)]
    #[test_case("ALTER TABLE t RENAME COLUMN v TO w", None)]
    #[test_case("ALTER TABLE t DROP COLUMN v", None)]
    #[test_case("CREATE VIEW w AS SELECT * FROM t", None)]
    #[test_case("CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END", None)]
    #[test_case("DROP VIEW old_master", None)]
    #[test_case("DROP TABLE t", None)]
    #[test_case("ANALYZE", None)]
    fn unmasked_reads_of_the_schema(sql: &str, refusal: Option<&str>) {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v); CREATE TABLE _keel_meta (id);
             CREATE VIEW old_master AS SELECT * FROM sqlite_master;",
        )
        .unwrap();
        let policy = Policy::default();
        policy.install(&mut conn).unwrap();
        policy.begin(Mode::Write);
        let prepared = conn.prepare(sql);
        let denied = policy.take().denied;
        assert_eq!(denied.as_deref(), refusal, "{sql}");
        if refusal.is_none() {
            let mut prepared = prepared.unwrap();
            let _stepping = policy.stepping();
            prepared.raw_query().next().unwrap();
        }
    }

    /// Full-text tables read and write their shadow tables (and FTS3/4 look at the schema)
    /// from statements of their own, prepared while the client's statement is prepared or
    /// steps; none of that is refused.
    #[test_case("fts4")]
    #[test_case("fts5")]
    fn full_text_tables_still_work(module: &str) {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        let policy = Policy::default();
        policy.install(&mut conn).unwrap();
        for (mode, sql) in [
            (Mode::Write, format!("CREATE VIRTUAL TABLE ft USING {module} (body)")),
            (Mode::Write, "INSERT INTO ft (body) VALUES ('hello world')".to_string()),
            (Mode::Read, "SELECT rowid FROM ft WHERE ft MATCH 'hello'".to_string()),
            (Mode::Write, "DELETE FROM ft WHERE rowid = 1".to_string()),
            (Mode::Write, "DROP TABLE ft".to_string()),
        ] {
            policy.begin(mode);
            let prepared = conn.prepare(&sql);
            assert_eq!(policy.take().denied, None, "{sql}");
            let mut prepared = prepared.unwrap();
            let stepping = policy.stepping();
            let outcome = prepared.raw_query().next().map(|_| ());
            assert_eq!(stepping.refusal(), None, "{sql}");
            outcome.unwrap();
        }
    }

    #[test_case("CREATE INDEX _keel_i ON t (v)")]
    #[test_case("CREATE TRIGGER _keel_tr AFTER INSERT ON t BEGIN SELECT 1; END")]
    #[test_case("CREATE VIEW _keel_v AS SELECT 1")]
    #[test_case("CREATE INDEX i ON _keel_meta (id)")]
    fn keel_names_are_reserved(sql: &str) {
        let denied = observe(Mode::Write, sql).denied.unwrap();
        assert!(denied.contains("_keel_"), "{sql}: {denied}");
    }

    #[test_case("  VACUUM", "VACUUM")]
    #[test_case("-- c\n/* d */ vacuum into 'x'", "VACUUM")]
    #[test_case("reindex;", "REINDEX")]
    #[test_case("/* unterminated", "")]
    fn keywords(sql: &str, keyword: &str) {
        assert_eq!(leading_keyword(sql), keyword);
    }
}
