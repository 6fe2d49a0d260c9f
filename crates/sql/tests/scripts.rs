//! Goldenscript tests of the `sql` crate: a leader and a replica database, requests executed
//! speculatively on the leader, their records applied to both (as Raft would), and the
//! replicas compared.
//!
//! Commands (see `testscripts/*` for examples):
//!
//! * `> SQL` — one request with one statement; tags `[tx]` (transaction), `[rows]` (rows
//!   results), `[noapply]`, `[quiet]` (print nothing, but fail on a statement error: for output
//!   that is not deterministic). Prints the results and the record's ops, then applies the
//!   record to both databases.
//! * `request BODY [tx=true] [rows=true] [id=ID]` — queues a request; `BODY` is an rqlite JSON
//!   body. `execute [apply=false] [on=replica] [associative=true]` runs the queued requests as
//!   one group (on the replica: as if it had become the leader) and prints the results as
//!   `/db/request` would, marking a request answered as a retry with `[duplicate of lsn N]`,
//!   then the record, whose stored answers show as `request ID: RESULTS`. The record is applied
//!   at the next index (`index N` when the group has an id, to read duplicates against).
//! * `fk true|false` — foreign keys in client SQL on both databases (`keel serve --fk`; off
//!   until set, as in `keel serve`), for the requests and queries that follow.
//! * `skip N` — the next record is applied N indexes later (e.g. to cross the retention window).
//! * `requests [on=leader|replica]` — lists the stored request answers (`_keel_requests`).
//! * `apply [on=leader|replica|both]` — applies the last record again.
//! * `query BODY [on=leader|replica] [tx=true] [associative=true] [blob_array=true]
//!   [request=true]` — runs reads on a reader pool and prints the rqlite JSON.
//! * `readonly BODY` — `Readers::is_read_only`.
//! * `raw SQL [on=replica|leader]` — runs SQL directly on a database, bypassing Keel.
//! * `vacuum` — applies a `VACUUM` record (`wal::Op::Vacuum`) to both databases at the next
//!   index.
//! * `dump [on=leader|replica]`, `compare`, `applied`.

use std::error::Error;
use std::fmt::Write as _;
use std::path::PathBuf;

use sql::{Apply, Db, Format, Readers, WriteRequest};

/// The term every record is applied in.
const TERM: u64 = 1;

/// The runner's state: two databases in a temporary directory.
struct Runner {
    /// Keeps the files alive.
    _dir: tempfile::TempDir,
    /// The leader's database.
    leader: Db,
    /// The replica's database.
    replica: Db,
    /// Readers on the leader and the replica.
    readers: [Readers; 2],
    /// Requests queued by `request`.
    pending: Vec<WriteRequest>,
    /// The last record produced.
    last: Option<wal::Record>,
    /// The next log index to apply at.
    index: u64,
    /// A command changed one database only (`raw`, `apply` on one side), so the end of the
    /// script does not compare them.
    diverged: bool,
}

/// Writes one request's results as `/db/request` would.
fn render(results: &[sql::StatementResult], format: &Format) -> String {
    let json: Vec<String> = results.iter().map(|r| r.to_json(format, true).to_string()).collect();
    json.join(" ")
}

impl Runner {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let paths: [PathBuf; 2] = [dir.path().join("leader"), dir.path().join("replica")];
        let leader = Db::open(&paths[0]).unwrap();
        let replica = Db::open(&paths[1]).unwrap();
        let readers = [leader.readers(2).unwrap(), replica.readers(2).unwrap()];
        Runner {
            _dir: dir,
            leader,
            replica,
            readers,
            pending: Vec::new(),
            last: None,
            index: 1,
            diverged: false,
        }
    }

    /// Executes the pending requests (on the replica if `on_replica`, as if it were the leader),
    /// prints results and ops, and applies to both unless told not to.
    fn execute(
        &mut self,
        apply: bool,
        on_replica: bool,
        format: Format,
    ) -> Result<String, Box<dyn Error>> {
        let requests = std::mem::take(&mut self.pending);
        // Applied at once on the leader, a group's record commits the speculation held open
        // there (as the node's writer does); the replica applies it from its changesets.
        let speculation = if on_replica {
            self.replica.execute(&requests)?
        } else if apply {
            self.leader.execute_held(&requests, TERM)?
        } else {
            self.leader.execute(&requests)?
        };
        let mut out = String::new();
        for (i, (results, duplicate)) in
            speculation.results.iter().zip(&speculation.duplicates).enumerate()
        {
            if speculation.results.len() > 1 {
                write!(out, "request {i}: ")?;
            }
            if let Some(lsn) = duplicate {
                write!(out, "[duplicate of lsn {lsn}] ")?;
            }
            writeln!(out, "{}", render(results, &format))?;
        }
        out.push_str(&describe(&speculation.record)?);
        if apply && requests.iter().any(|r| r.request_id.is_some()) {
            writeln!(out, "  index {}", self.index)?;
        }
        self.last = Some(speculation.record);
        if apply {
            self.apply(&[true, true])?;
        }
        Ok(out)
    }

    /// Applies the last record to the selected databases.
    fn apply(&mut self, on: &[bool; 2]) -> Result<(), Box<dyn Error>> {
        let record = self.last.as_ref().ok_or("no record")?;
        let entry = Apply { term: TERM, index: self.index, record: Some(record), membership: None };
        self.index += 1;
        if on[0] {
            self.leader.apply(&[entry]).map_err(|e| format!("leader: {e}"))?;
        }
        if on[1] {
            self.replica.apply(&[entry]).map_err(|e| format!("replica: {e}"))?;
        }
        Ok(())
    }
}

/// Prints a record's ops, one line per DDL statement or row change.
fn describe(record: &wal::Record) -> Result<String, Box<dyn Error>> {
    let mut out = String::new();
    for op in &record.ops {
        match op {
            wal::Op::Ddl(sql) => {
                writeln!(out, "  ddl: {}", sql.split_whitespace().collect::<Vec<_>>().join(" "))?
            }
            wal::Op::Vacuum => writeln!(out, "  vacuum")?,
            wal::Op::Changes(changes) => {
                writeln!(out, "  changes:")?;
                for line in sql::describe_changeset(changes)? {
                    writeln!(out, "    {line}")?;
                }
            }
        }
    }
    for request in &record.requests {
        let results = sql::answers::decode(&request.results)?;
        writeln!(out, "  request {}: {}", request.id, render(&results, &Format::default()))?;
    }
    Ok(out)
}

/// Which database(s) an `on=` argument selects: [leader, replica].
fn select(on: Option<&str>, default: [bool; 2]) -> Result<[bool; 2], Box<dyn Error>> {
    Ok(match on {
        None => default,
        Some("leader") => [true, false],
        Some("replica") => [false, true],
        Some("both") => [true, true],
        Some(other) => return Err(format!("unknown database {other}").into()),
    })
}

impl goldenscript::Runner for Runner {
    type Command = goldenscript::Command;

    fn run(
        &mut self,
        command: &goldenscript::Command,
        context: &goldenscript::Context,
    ) -> Result<String, Box<dyn Error>> {
        let mut args = command.consume_args();
        let flag = |args: &mut goldenscript::ArgumentConsumer<'_>,
                    key: &str|
         -> Result<bool, Box<dyn Error>> {
            Ok(args.take_key(key).map(str::parse).transpose()?.unwrap_or(false))
        };
        let output = match command.name.as_str() {
            "request" => {
                let body: serde_json::Value =
                    serde_json::from_str(args.next_pos().ok_or("body not given")?)?;
                let transaction = flag(&mut args, "tx")?;
                let rows = flag(&mut args, "rows")?;
                let request_id = args.take_key("id").map(str::to_string);
                args.reject_next()?;
                let statements = sql::parse_statements(&body)?;
                self.pending.push(WriteRequest {
                    statements,
                    transaction,
                    rows,
                    request_id,
                    timeout: None,
                });
                String::new()
            }
            "execute" => {
                let apply = args.take_key("apply").map(str::parse).transpose()?.unwrap_or(true);
                let on = select(args.take_key("on"), [true, false])?;
                let format =
                    Format { associative: flag(&mut args, "associative")?, ..Format::default() };
                args.reject_next()?;
                self.execute(apply, on[1], format)?
            }
            "fk" => {
                let on: bool = args.next_pos().ok_or("true or false not given")?.parse()?;
                args.reject_next()?;
                let limits = sql::Limits { foreign_keys: on, ..sql::Limits::default() };
                self.leader.set_limits(limits);
                self.replica.set_limits(limits);
                self.readers = [self.leader.readers(2)?, self.replica.readers(2)?];
                String::new()
            }
            "skip" => {
                let n: u64 = args.next_pos().ok_or("count not given")?.parse()?;
                args.reject_next()?;
                self.index += n;
                String::new()
            }
            "requests" => {
                let on = select(args.take_key("on"), [true, false])?;
                args.reject_next()?;
                let db = if on[0] { &self.leader } else { &self.replica };
                let conn = rusqlite::Connection::open(db.path())?;
                let mut stmt =
                    conn.prepare("SELECT id, lsn, results FROM _keel_requests ORDER BY lsn, id")?;
                let rows = stmt.query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?))
                })?;
                let mut out = String::new();
                for row in rows {
                    let (id, lsn, results) = row?;
                    let results = sql::answers::decode(results.as_bytes())?;
                    writeln!(out, "{id} at {lsn}: {}", render(&results, &Format::default()))?;
                }
                if out.is_empty() { "none\n".to_string() } else { out }
            }
            "apply" => {
                let on = select(args.take_key("on"), [false, true])?;
                args.reject_next()?;
                self.diverged |= on != [true, true];
                self.apply(&on)?;
                String::new()
            }
            "query" => {
                let body: serde_json::Value =
                    serde_json::from_str(args.next_pos().ok_or("body not given")?)?;
                let on = select(args.take_key("on"), [true, false])?;
                let transaction = flag(&mut args, "tx")?;
                let format = Format {
                    associative: flag(&mut args, "associative")?,
                    blob_array: flag(&mut args, "blob_array")?,
                    timings: false,
                };
                let request = flag(&mut args, "request")?;
                args.reject_next()?;
                let readers = if on[0] { &self.readers[0] } else { &self.readers[1] };
                let results = readers.query(&sql::parse_statements(&body)?, transaction)?;
                let mut out = String::new();
                for result in results {
                    writeln!(out, "{}", result.to_json(&format, request))?;
                }
                out
            }
            "readonly" => {
                let body: serde_json::Value =
                    serde_json::from_str(args.next_pos().ok_or("body not given")?)?;
                args.reject_next()?;
                let statements = sql::parse_statements(&body)?;
                format!("{}\n", self.readers[0].is_read_only(&statements))
            }
            "raw" => {
                let sql = args.next_pos().ok_or("sql not given")?.to_string();
                let on = select(args.take_key("on"), [false, true])?;
                args.reject_next()?;
                self.diverged |= on != [true, true];
                for (i, db) in [&self.leader, &self.replica].into_iter().enumerate() {
                    if on[i] {
                        let conn = rusqlite::Connection::open(db.path())?;
                        conn.execute_batch(&sql)?;
                    }
                }
                String::new()
            }
            "dump" => {
                let on = select(args.take_key("on"), [true, false])?;
                args.reject_next()?;
                if on[0] { self.leader.dump()? } else { self.replica.dump()? }
            }
            "compare" => {
                args.reject_next()?;
                let (leader, replica) = (self.leader.dump()?, self.replica.dump()?);
                if leader == replica {
                    "equal\n".to_string()
                } else {
                    format!("DIFFERENT\nleader:\n{leader}replica:\n{replica}")
                }
            }
            "vacuum" => {
                args.reject_next()?;
                self.last = Some(wal::Record { ops: vec![wal::Op::Vacuum], requests: Vec::new() });
                self.apply(&[true, true])?;
                String::new()
            }
            "applied" => {
                args.reject_next()?;
                format!(
                    "leader: {:?}\nreplica: {:?}\n",
                    self.leader.applied()?,
                    self.replica.applied()?
                )
            }
            sql => {
                args.reject_next()?;
                let statement = sql::Statement::new(sql);
                self.pending.push(WriteRequest {
                    statements: vec![statement],
                    transaction: context.tags.contains("tx"),
                    rows: context.tags.contains("rows"),
                    request_id: None,
                    timeout: None,
                });
                let output =
                    self.execute(!context.tags.contains("noapply"), false, Format::default())?;
                if context.tags.contains("quiet") {
                    if output.contains("{\"error\"") {
                        return Err(format!("statement failed: {output}").into());
                    }
                    String::new()
                } else {
                    output
                }
            }
        };
        Ok(output)
    }
}

macro_rules! scripts {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testscripts/", stringify!($name));
            goldenscript::run(&mut Runner::new(), path).unwrap();
        }
    )*};
}

scripts!(
    apply,
    autoincrement,
    capture,
    ddl,
    foreign_keys,
    nondeterminism,
    params,
    query,
    rejected,
    requests,
    results,
    transactions,
    triggers,
    vacuum
);
