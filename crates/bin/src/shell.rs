//! `keel shell`: an interactive SQL shell against any node, in the manner of psql and the
//! rqlite CLI.
//!
//! # How it flows
//!
//! [`run`] builds a [`Shell`] (the connection and the session's settings), asks the node for
//! the cluster's other nodes, then reads lines: from a terminal through rustyline (history,
//! editing, tab completion from [`complete`]), or plainly from stdin when it is not a terminal
//! (`echo 'SELECT 1;' | keel shell`). [`input::Input`] cuts the lines into dot-commands (one
//! line each, parsed by [`command::parse`]) and SQL statements (ending with `;`, as SQLite's
//! `sqlite3_complete` decides, so they may span lines). [`Shell::run_item`] runs each:
//!
//! - A statement goes to `POST /db/request`, which runs a read with the session's read level
//!   (`.consistency`) and a write with its durability (`.durability`); the server decides
//!   which it is, exactly as SQLite does. Rows come back laid out as `.mode` says
//!   ([`render::rows`]: an aligned table by default, or csv, json, line), a write as
//!   `N rows affected`, a failure as the server's error text. The shell goes on after an
//!   error; piped input makes the exit status non-zero.
//! - Dot-commands (rqlite's shell's, and Keel's `.consistency` and `.durability`) read the
//!   schema with ordinary queries (`.tables`, `.schema`, `.indexes`), look at and change the
//!   cluster ([`admin`]: `/nodes`, `/status`, `/readyz`, `/metrics`, step-down, remove), move
//!   the database in and out of files with the code of `keel backup` and `keel restore`
//!   ([`files`], [`crate::backup`]), run a file's statements (`.read`), or change the
//!   session's settings.
//! - What they show goes to the session's [`output::Output`] (stdout, or a file after
//!   `.output FILE`); errors go to stderr.
//!
//! Every request goes through [`client::Cluster`], the shell's [`keel_api::Client`], which
//! moves to another node when the one in use stops answering, and the shell says so. Repeating
//! a request there is safe: each statement carries a fresh `request_id` (the client gives every
//! `/db/request` one), which makes the cluster answer a retried write with its first result
//! instead of running it twice. A `503` (no leader yet during an election) is retried for up
//! to [`RETRY_FOR`], waiting as `Retry-After` asks (at most a second); one that says the write
//! is committed is not.
//!
//! Ctrl-C while a request runs gives the prompt back ([`interrupt`]): the shell stops waiting;
//! the server is not told (HTTP has no way to), so a write may still take effect.
//!
//! # What it deliberately does not do
//!
//! - No transactions across statements: each statement is its own request (as in rqlite's
//!   CLI), so `BEGIN; …; COMMIT;` typed as three statements is refused by the server.
//! - No client-side SQL parsing beyond finding where a statement ends.
//! - Values are shown on one line each: control characters in text are escaped, BLOBs shown
//!   as hex literals ([`render`]).

mod admin;
mod client;
mod command;
mod complete;
mod files;
mod input;
mod interrupt;
mod output;
mod render;

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use keel_api::{Statement, StatementResult};
use rustyline::config::{CompletionType, Config};
use rustyline::error::ReadlineError;
use rustyline::history::{DefaultHistory, History as _};
use serde_json::Value;

use self::client::Cluster;
use self::command::{Command, HELP, Level, Mode};
use self::input::{Input, Item};
use self::output::Output;

/// The prompt when no statement is under way.
const PROMPT: &str = "keel> ";
/// The prompt while a statement goes on over several lines.
const CONTINUATION_PROMPT: &str = "  ...> ";
/// How long a request is retried (on another node, or until a leader is elected) before the
/// shell shows its error.
const RETRY_FOR: Duration = Duration::from_secs(5);
/// Lines kept in the history file.
const HISTORY_LINES: usize = 1000;

/// Flags of `keel shell`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShellArgs {
    /// HTTP URL of any cluster node.
    #[arg(default_value = "http://127.0.0.1:4001")]
    pub url: String,
    /// Credentials sent as HTTP basic auth, `NAME:PASSWORD`.
    #[arg(long, value_name = "NAME:PASSWORD")]
    pub user: Option<String>,
    /// Read level of queries: none, weak, linearizable, strong or auto (default: the
    /// server's, weak). `.consistency` changes it.
    #[arg(long, value_name = "LEVEL", value_parser = command::parse_level)]
    pub consistency: Option<Level>,
    /// Durability of writes: semi-sync, sync or replicas:K (default: the cluster's).
    /// `.durability` changes it.
    #[arg(long, value_name = "MODE", value_parser = crate::parse_durability)]
    pub durability: Option<leader::Durability>,
    /// How long a request may take before the shell gives up on the node and tries another.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    /// CA certificate (PEM) to trust for `https://` URLs, besides the system's.
    #[arg(long, env = "KEEL_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

/// Runs the shell until end of input or `.quit`. With piped input, fails if any statement or
/// command failed.
pub fn run(args: ShellArgs) -> anyhow::Result<()> {
    let cluster = Cluster::new(
        &args.url,
        args.user.as_deref(),
        args.timeout,
        RETRY_FOR,
        args.cacert.as_deref(),
    )?;
    let mut shell = Shell::new(cluster, args.consistency, args.durability);
    if let Err(why) = shell.cluster.refresh() {
        eprintln!("warning: {why}; statements will be tried against it anyway");
    }
    if std::io::stdin().is_terminal() { interactive(&mut shell) } else { piped(&mut shell) }
}

/// Whether to go on reading after an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Read the next item.
    Continue,
    /// `.quit`: stop.
    Quit,
}

/// The interactive loop: rustyline with history and completion.
fn interactive(shell: &mut Shell) -> anyhow::Result<()> {
    let config = Config::builder()
        .auto_add_history(false)
        .completion_type(CompletionType::List)
        .max_history_size(HISTORY_LINES)?
        .history_ignore_dups(true)?
        .build();
    let mut editor: rustyline::Editor<complete::Completion, DefaultHistory> =
        rustyline::Editor::with_config(config)?;
    editor.set_helper(Some(complete::Completion::new(Vec::new())));
    interrupt::install();
    let history = history_path();
    if let Some(path) = &history {
        // Best effort: a missing or unreadable history only means starting without one.
        let _ = editor.load_history(path);
    }
    println!(
        "Connected to {}. Statements end with ';'. Type .help for commands, .quit to leave.",
        shell.cluster.current()
    );
    let mut input = Input::default();
    'lines: loop {
        if shell.schema_changed
            && let Some(helper) = editor.helper_mut()
        {
            shell.schema_changed = false;
            if let Ok(tables) = shell.table_names() {
                helper.tables = tables;
            }
        }
        let prompt = if input.is_empty() { PROMPT } else { CONTINUATION_PROMPT };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                input.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        for item in input.push_line(&line) {
            let text = match &item {
                Item::Dot(text) | Item::Sql(text) => text.clone(),
            };
            let _ = editor.history_mut().add(&text);
            // Saved as it grows, so that a shell that is killed keeps what was typed.
            save_history(&mut editor, history.as_deref());
            let (flow, _) = shell.run_item(&item);
            if flow == Flow::Quit {
                break 'lines;
            }
        }
    }
    Ok(())
}

/// Appends the new history entries to the history file, if there is one; a failure is
/// reported once and then the history is kept in memory only.
fn save_history(
    editor: &mut rustyline::Editor<complete::Completion, DefaultHistory>,
    path: Option<&std::path::Path>,
) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Some(path) = path
        && let Err(e) = editor.append_history(path)
    {
        WARNED.call_once(|| {
            eprintln!("warning: cannot save the history to {}: {e}", path.display());
        });
    }
}

/// Reads statements from stdin (not a terminal) and prints their results; exits with status 1
/// if any failed.
fn piped(shell: &mut Shell) -> anyhow::Result<()> {
    let stdin = std::io::stdin().lock();
    let mut input = Input::default();
    let (mut run, mut failed) = (0usize, 0usize);
    let mut tally = |ok: bool| {
        run += 1;
        if !ok {
            failed += 1;
        }
    };
    let mut quit = false;
    for line in stdin.lines() {
        let line = line.context("reading stdin")?;
        for item in input.push_line(&line) {
            let (flow, ok) = shell.run_item(&item);
            tally(ok);
            if flow == Flow::Quit {
                quit = true;
                break;
            }
        }
        if quit {
            break;
        }
    }
    if !quit && let Some(item) = input.finish() {
        let (_, ok) = shell.run_item(&item);
        tally(ok);
    }
    std::io::stdout().flush()?;
    if failed > 0 {
        // The errors are printed already: exit with a status, not with one more error report
        // (which would carry a backtrace when RUST_BACKTRACE is set).
        eprintln!("Error: {failed} of {run} statements and commands failed");
        std::process::exit(1);
    }
    Ok(())
}

/// Where the history is kept: `$KEEL_HISTORY`, else `~/.keel_history`; `None` (no history
/// file) when `KEEL_HISTORY` is empty or there is no home directory.
fn history_path() -> Option<PathBuf> {
    match std::env::var_os("KEEL_HISTORY") {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::home_dir().map(|home| home.join(".keel_history")),
    }
}

/// A shell session: the connection and the settings its commands change.
struct Shell {
    /// The cluster, and the node in use.
    cluster: Cluster,
    /// Read level of queries; `None` leaves it to the server (weak).
    level: Option<Level>,
    /// Durability of writes; `None` leaves it to the cluster's default.
    durability: Option<leader::Durability>,
    /// `.timer on`: print how long each statement took.
    timer: bool,
    /// The table names used for completion may be out of date.
    schema_changed: bool,
    /// How query results are laid out (`.mode`).
    mode: Mode,
    /// Where results go (`.output`).
    out: Output,
    /// The files `.read` is reading, outermost first (a file that reads itself is refused).
    reading: Vec<PathBuf>,
}

impl Shell {
    /// A session on `cluster` with the given settings, results to stdout in column mode.
    fn new(
        cluster: Cluster,
        level: Option<Level>,
        durability: Option<leader::Durability>,
    ) -> Shell {
        Shell {
            cluster,
            level,
            durability,
            timer: false,
            schema_changed: true,
            mode: Mode::Column,
            out: Output::Stdout,
            reading: Vec::new(),
        }
    }

    /// Runs one item, printing its output (errors to stderr); returns whether to go on and
    /// whether it succeeded.
    fn run_item(&mut self, item: &Item) -> (Flow, bool) {
        interrupt::clear();
        let result = self.execute(item);
        self.report(result)
    }

    /// Flushes the output and shows `result`'s error, if any: the outcome of an item.
    fn report(&mut self, result: Result<Flow, String>) -> (Flow, bool) {
        let flushed = self.out.done();
        match result.and_then(|flow| flushed.map(|()| flow)) {
            Ok(flow) => (flow, true),
            Err(why) => {
                eprintln!("Error: {why}");
                (Flow::Continue, false)
            }
        }
    }

    /// Runs one item, its output to [`Shell::out`]; with `.timer on`, a statement's time after.
    fn execute(&mut self, item: &Item) -> Result<Flow, String> {
        let started = Instant::now();
        match item {
            Item::Dot(line) => self.run_command(command::parse(line)?),
            Item::Sql(sql) => {
                if changes_schema(sql) {
                    self.schema_changed = true;
                }
                let result = self.run_sql(sql);
                if self.timer {
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    self.out.print(&format!("Time: {ms:.3} ms\n"))?;
                }
                result.map(|()| Flow::Continue)
            }
        }
    }

    /// Runs one SQL statement and shows its result.
    fn run_sql(&mut self, sql: &str) -> Result<(), String> {
        let result = self.statement(Statement::new(sql))?;
        self.out.print(&describe_result(&result, self.mode))
    }

    /// Sends one statement to `/db/request` with the session's settings (the client adds a
    /// fresh `request_id`); returns its result, or the error.
    fn statement(&mut self, statement: Statement) -> Result<StatementResult, String> {
        let (level, durability) = (self.level, self.durability.map(wire_durability));
        let answer = self.cluster.call(async |client| {
            let mut call = client.unified([statement]).blob_array();
            if let Some(level) = level {
                call = call.level(level);
            }
            if let Some(durability) = durability {
                call = call.durability(durability);
            }
            call.send().await
        })?;
        if let Some(error) = &answer.error {
            return Err(error.clone());
        }
        let Some(result) = answer.results.into_iter().next() else {
            return Err(format!("the server answered without a result (lsn {:?})", answer.lsn));
        };
        match result.error {
            Some(error) => Err(error),
            None => Ok(result),
        }
    }

    /// The rows a query returned.
    fn rows(&mut self, statement: Statement) -> Result<Vec<Vec<Value>>, String> {
        Ok(self.statement(statement)?.values.unwrap_or_default())
    }

    /// The user's tables and views, for `.tables` and completion.
    fn table_names(&mut self) -> Result<Vec<String>, String> {
        let rows = self.rows(Statement::new(
            "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') \
             AND substr(name, 1, 7) <> 'sqlite_' AND substr(name, 1, 6) <> '_keel_' ORDER BY name",
        ))?;
        Ok(rows.iter().filter_map(|row| row.first()?.as_str().map(str::to_string)).collect())
    }

    /// Runs a dot-command: the ones about the data and the settings here, the ones about the
    /// cluster in [`admin`], the ones that move the database in or out of files in [`files`].
    fn run_command(&mut self, command: Command) -> Result<Flow, String> {
        match command {
            Command::Quit => return Ok(Flow::Quit),
            Command::Help => self.out.print(&help())?,
            Command::Tables => {
                let names = self.table_names()?;
                self.out
                    .print(&names.iter().map(|name| format!("{name}\n")).collect::<String>())?;
            }
            Command::Schema(table) => self.schema(table.as_deref())?,
            Command::Indexes(table) => self.indexes(table.as_deref())?,
            Command::Nodes => self.nodes()?,
            Command::Status => self.status()?,
            Command::Leader => self.leader()?,
            Command::Ready => self.ready()?,
            Command::Expvar => self.expvar()?,
            Command::Sysdump(file) => self.sysdump(&file)?,
            Command::Stepdown(to) => self.step_down(to)?,
            Command::Remove(id) => self.remove(id)?,
            Command::Backup(file) => self.backup(&file)?,
            Command::Restore(file) => self.restore(&file)?,
            Command::Boot(file) => self.boot(&file)?,
            Command::Dump { file, tables } => self.dump(file.as_deref(), &tables)?,
            Command::Read(file) => self.read(&file)?,
            Command::Output(None) => self.out = Output::Stdout,
            Command::Output(Some(file)) => self.out = Output::create(&file)?,
            Command::Mode(None) => self.out.print(&format!("mode: {}\n", self.mode.as_str()))?,
            Command::Mode(Some(mode)) => {
                self.mode = mode;
                self.out.print(&format!("mode: {}\n", mode.as_str()))?;
            }
            Command::Consistency(level) => self.set_consistency(level)?,
            Command::Durability(durability) => self.set_durability(durability)?,
            Command::Timer(None) => self.out.print(&format!("timer: {}\n", on_off(self.timer)))?,
            Command::Timer(Some(on)) => {
                self.timer = on;
                self.out.print(&format!("timer: {}\n", on_off(on)))?;
            }
        }
        Ok(Flow::Continue)
    }

    /// `.consistency [LEVEL]`: shows or sets the read level.
    fn set_consistency(&mut self, level: Option<Level>) -> Result<(), String> {
        if level.is_some() {
            self.level = level;
        }
        self.out.print(&match self.level {
            Some(level) => format!("consistency: {level}\n"),
            None => "consistency: weak (the server's default)\n".to_string(),
        })
    }

    /// `.durability [MODE]`: shows or sets the write durability.
    fn set_durability(&mut self, durability: Option<leader::Durability>) -> Result<(), String> {
        if durability.is_some() {
            self.durability = durability;
        }
        self.out.print(&match self.durability {
            Some(durability) => format!("durability: {durability}\n"),
            None => "durability: the cluster's default (semi-sync unless set)\n".to_string(),
        })
    }

    /// `.schema [TABLE]`: the CREATE statements, tables before their indexes and triggers.
    fn schema(&mut self, table: Option<&str>) -> Result<(), String> {
        let sql = format!(
            "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL \
             AND substr(name, 1, 6) <> '_keel_' AND substr(tbl_name, 1, 6) <> '_keel_' {} \
             ORDER BY tbl_name, type NOT IN ('table', 'view'), name",
            if table.is_some() { "AND tbl_name LIKE ?" } else { "" }
        );
        let rows = self.rows(match table {
            Some(table) => Statement::new(sql).bind(table),
            None => Statement::new(sql),
        })?;
        if rows.is_empty()
            && let Some(table) = table
        {
            return Err(format!("no table matches '{table}'"));
        }
        let text: String = rows
            .iter()
            .filter_map(|row| row.first().and_then(Value::as_str))
            .map(|sql| format!("{sql};\n"))
            .collect();
        self.out.print(&text)
    }

    /// `.indexes [TABLE]`: index names and their tables.
    fn indexes(&mut self, table: Option<&str>) -> Result<(), String> {
        let sql = format!(
            "SELECT name AS \"index\", tbl_name AS \"table\" FROM sqlite_schema \
             WHERE type = 'index' AND substr(tbl_name, 1, 6) <> '_keel_' {} \
             ORDER BY tbl_name, name",
            if table.is_some() { "AND tbl_name LIKE ?" } else { "" }
        );
        let rows = self.rows(match table {
            Some(table) => Statement::new(sql).bind(table),
            None => Statement::new(sql),
        })?;
        self.out.print(&render::table_of(&["index".into(), "table".into()], &rows, "index"))
    }

    /// Runs one of `keel backup`'s or `keel restore`'s futures on the shell's runtime, until
    /// it ends or Ctrl-C is pressed.
    fn block_on(&self, future: impl Future<Output = anyhow::Result<()>>) -> Result<(), String> {
        self.cluster.block_on(future)?.map_err(|e| format!("{e:#}"))
    }
}

/// `on` or `off`.
fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// The wire form of a durability mode.
fn wire_durability(durability: leader::Durability) -> keel_api::Durability {
    match durability {
        leader::Durability::SemiSync => keel_api::Durability::SemiSync,
        leader::Durability::Sync => keel_api::Durability::Sync,
        leader::Durability::Replicas(k) => {
            keel_api::Durability::Replicas(u32::try_from(k).unwrap_or(u32::MAX))
        }
    }
}

/// What a statement's result shows: its rows laid out in `mode`, or how many rows a write
/// changed.
fn describe_result(result: &StatementResult, mode: Mode) -> String {
    match &result.columns {
        Some(columns) => render::rows(mode, columns, result.values()),
        None => format!("{}\n", render::rows_affected(result.rows_affected())),
    }
}

/// Whether a statement may change the table list (for completion).
fn changes_schema(sql: &str) -> bool {
    let first = sql.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    matches!(first.as_str(), "CREATE" | "DROP" | "ALTER")
}

/// The `.help` text.
fn help() -> String {
    let width = HELP.iter().map(|(name, args, _)| name.len() + args.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (name, args, what) in HELP {
        let usage = format!("{name} {args}");
        out.push_str(&format!("{usage:width$}  {what}\n"));
    }
    out.push_str(
        "\nSQL statements end with ';' and may span lines. Reads use the consistency level,\n\
         writes the durability mode. Tab completes commands, table names and keywords.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn result(json: Value) -> StatementResult {
        serde_json::from_value(json).unwrap()
    }

    fn describe_result_column(result: &StatementResult) -> String {
        describe_result(result, Mode::Column)
    }

    #[test]
    fn results_show_rows_or_the_count_of_changed_rows() {
        let rows =
            json!({"columns": ["id", "v"], "types": ["integer", "text"], "values": [[1, null]]});
        assert_eq!(
            describe_result_column(&result(rows)),
            " id | v\n----+------\n  1 | NULL\n(1 row)\n"
        );
        let none = json!({"columns": ["id"], "types": ["integer"]});
        assert_eq!(describe_result_column(&result(none)), " id\n----\n(0 rows)\n");
        assert_eq!(
            describe_result_column(&result(json!({"last_insert_id": 3, "rows_affected": 2}))),
            "2 rows affected\n"
        );
        assert_eq!(describe_result_column(&result(json!({}))), "0 rows affected\n");
        let bad = json!({"columns": ["a"], "values": 3});
        assert!(serde_json::from_value::<StatementResult>(bad).is_err(), "rows that are no list");
    }

    #[test]
    fn schema_changes_are_spotted_by_the_first_word() {
        assert!(changes_schema("create table t(a)"));
        assert!(changes_schema("  DROP VIEW v;"));
        assert!(!changes_schema("INSERT INTO t VALUES (1)"));
        assert!(!changes_schema(""));
    }

    #[test]
    fn help_lists_every_command() {
        let text = help();
        for (name, _, _) in HELP {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    /// A shell on a fake node that answers `/leader`, `/nodes` and `/db/request` (one row
    /// changed).
    fn shell_on_fake_node() -> (Shell, std::sync::mpsc::Receiver<String>) {
        shell_on_fake_node_answering(json!({"results": [{"rows_affected": 1}], "lsn": 3}))
    }

    /// [`shell_on_fake_node`], answering every statement with `statements`, and `/metrics`
    /// and `/readyz` (not ready) too.
    fn shell_on_fake_node_answering(
        statements: Value,
    ) -> (Shell, std::sync::mpsc::Receiver<String>) {
        let (url, requests) = client::tests::serve(move |request| {
            let body = if request.contains("/leader") {
                json!({"addr": "x:1", "api_addr": "http://127.0.0.1:9", "id": "1", "leader": true,
                       "reachable": true, "voter": true})
            } else if request.contains("/nodes") {
                json!({"nodes": []})
            } else if request.contains("/metrics") {
                return ("200 OK", "keel_up 1\n".to_string());
            } else if request.contains("/readyz") {
                return ("503 Service Unavailable", "[+]node ok\n[+]leader not ok".to_string());
            } else {
                statements.clone()
            };
            ("200 OK", body.to_string())
        });
        let cluster = client::tests::once(&url);
        let shell = Shell::new(cluster, Some(Level::None), Some(leader::Durability::Replicas(2)));
        (shell, requests)
    }

    #[test]
    fn statements_carry_the_settings_and_a_fresh_request_id_each() {
        // Calls watch for Ctrl-C: keep another test's press from landing here.
        let _one = interrupt::tests::FLAG.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        interrupt::clear();
        let (mut shell, requests) = shell_on_fake_node();
        let request_id = |line: &str| {
            let at = line.find("request_id=").expect("a request id");
            line[at..].split(['&', ' ']).next().unwrap().to_string()
        };
        let mut ids = Vec::new();
        for _ in 0..2 {
            let result = shell.statement(Statement::new("INSERT INTO t VALUES (1)")).unwrap();
            assert_eq!(result.rows_affected(), 1);
            let line = requests.recv().unwrap();
            assert!(line.starts_with("POST /db/request?blob_array&"), "{line}");
            assert!(line.contains("level=none") && line.contains("durability=replicas%3A2"));
            ids.push(request_id(&line));
        }
        assert_ne!(ids[0], ids[1]);
    }

    /// Runs `lines` as typed; returns what each item reported (flow and success).
    fn type_lines(shell: &mut Shell, lines: &str) -> Vec<(Flow, bool)> {
        let mut input = Input::default();
        let items: Vec<Item> = lines.lines().flat_map(|l| input.push_line(l)).collect();
        items.iter().map(|item| shell.run_item(item)).collect()
    }

    #[test]
    fn output_mode_read_and_expvar_work_together() {
        let _one = interrupt::tests::FLAG.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        interrupt::clear();
        let rows = json!({"results": [{"columns": ["a", "b"], "values": [[1, "x,y"]]}]});
        let (mut shell, _requests) = shell_on_fake_node_answering(rows);
        let dir = tempfile::tempdir().unwrap();
        let (out, script) = (dir.path().join("out.txt"), dir.path().join("script.sql"));
        std::fs::write(&script, "SELECT a, b\n  FROM t;\n.mode\n.nonsense\n.quit\nSELECT 1;\n")
            .unwrap();
        let outcomes = type_lines(
            &mut shell,
            &format!(
                ".output {}\n.mode csv\nSELECT a, b FROM t;\n.read {}\n.ready\n.expvar\n\
                 .read {}\n.output stdout",
                out.display(),
                script.display(),
                dir.path().join("missing.sql").display()
            ),
        );
        let ok: Vec<bool> = outcomes.iter().map(|(_, ok)| *ok).collect();
        // The script has a bad command: its .read fails; so does reading a missing file.
        assert_eq!(ok, [true, true, true, false, true, true, false, true]);
        assert!(outcomes.iter().all(|(flow, _)| *flow == Flow::Continue), ".quit ends the file");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "mode: csv\na,b\r\n1,\"x,y\"\r\na,b\r\n1,\"x,y\"\r\nmode: csv\n\
             not ready\n  [+]node ok\n  [+]leader not ok\n\
             # Keel has no /debug/vars (Go's expvar); these are its metrics, GET /metrics\n\
             keel_up 1\n"
        );
    }

    #[test]
    fn a_file_that_reads_itself_is_refused() {
        let _one = interrupt::tests::FLAG.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        interrupt::clear();
        let (mut shell, _requests) = shell_on_fake_node();
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("loop.sql");
        std::fs::write(&script, format!(".read {}\n", script.display())).unwrap();
        assert_eq!(
            shell.read(&script),
            Err(format!("1 of 1 statements and commands in {} failed", script.display()))
        );
        assert!(shell.reading.is_empty());
    }
}
