//! What one client statement may cost, and SQLite's own hardening switches.
//!
//! Client SQL is untrusted. The authorizer (`policy`) decides what a statement may *do*; this
//! module bounds what it may *cost* and turns on what SQLite offers against hostile SQL
//! (sqlite.org/security.html, "Defense Against the Dark Arts"):
//!
//! * `harden` sets `SQLITE_DBCONFIG_DEFENSIVE` (no `writable_schema`, no `journal_mode=OFF`,
//!   no direct writes to shadow tables or `sqlite_dbpage`), turns `trusted_schema` off (functions
//!   with side effects cannot hide in a view or trigger) and allows no attached databases, on
//!   every connection that runs client SQL.
//! * `Watchdog` is a progress handler that interrupts the running statement once it has run
//!   longer than its time limit ([`Limits::statement_time`], or less per request: rqlite's
//!   `db_timeout`). The client connection runs every client write in turn, so one statement that
//!   never ends (a recursive CTE without a bound) would otherwise stop every write of the
//!   cluster. SQLite calls a progress handler between virtual-machine instructions only, and
//!   some instructions run long on their own (`count(*)` walks a whole table in one), so a
//!   timer thread (`keel-watchdog`, one per process) also calls `sqlite3_interrupt` on any
//!   connection whose armed deadline has passed; SQLite checks that flag inside such loops.
//! * [`Limits::max_result_rows`] and [`Limits::max_result_bytes`] bound what one query may make
//!   the node hold in memory and send; `cap_values` also caps any one value a client statement
//!   builds (SQLite's `SQLITE_LIMIT_LENGTH`) at `max_result_bytes`, since a statement can build
//!   huge values it never returns.
//!
//! Statement count per request and SQL length are checked earlier, when the request is parsed
//! (`statement`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;

/// Per-statement limits of a node, and how its client SQL runs, set with
/// [`crate::Db::set_limits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most rows one statement may return.
    pub max_result_rows: usize,
    /// The most bytes of values one statement may return (text and blob lengths, 8 per number).
    pub max_result_bytes: usize,
    /// The longest one client statement may run before it is interrupted. A request may ask for
    /// less (`db_timeout`), never for more.
    pub statement_time: Duration,
    /// Enforce foreign keys (and run their actions) in client SQL: `keel serve --fk`, off by
    /// default as rqlite's `-fk`. Only the leader's speculation enforces them; the effects of
    /// foreign-key actions are in the records, which every node applies with foreign keys off.
    pub foreign_keys: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_result_rows: 1_000_000,
            max_result_bytes: 64 << 20,
            statement_time: Duration::from_secs(30),
            foreign_keys: false,
        }
    }
}

impl Limits {
    /// The time limit of a statement whose request asked for `requested`: the smaller of the
    /// two.
    pub(crate) fn time_for(&self, requested: Option<Duration>) -> Duration {
        requested.map_or(self.statement_time, |r| r.min(self.statement_time))
    }
}

/// How many SQLite virtual-machine instructions run between two checks of the deadline: a
/// check costs a clock read, and a few thousand instructions take microseconds.
const PROGRESS_OPS: i32 = 4096;

/// Turns on SQLite's defences against hostile SQL on `conn` (see the module docs).
pub(crate) fn harden(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    Ok(())
}

/// SQLite's own cap on one string, BLOB or row (`SQLITE_LIMIT_LENGTH`'s largest value).
const SQLITE_MAX_LENGTH: i32 = 1_000_000_000;

/// Caps the size of any one value a statement on `conn` may build or read: `max_result_bytes`
/// of `limits` (at least 1 MiB), or SQLite's maximum with `None`. Without it one statement
/// (`SELECT length(zeroblob(900000000) || 'x')`) makes a node allocate gigabytes while
/// returning one small integer; the result limits only see what is returned.
pub(crate) fn cap_values(conn: &Connection, limits: Option<&Limits>) -> rusqlite::Result<()> {
    let cap = limits.map_or(SQLITE_MAX_LENGTH, |l| {
        i32::try_from(l.max_result_bytes.max(1 << 20))
            .unwrap_or(SQLITE_MAX_LENGTH)
            .min(SQLITE_MAX_LENGTH)
    });
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, cap)?;
    Ok(())
}

/// A connection's statement timer: a progress handler that interrupts the statement running on
/// the connection once the deadline set by [`Watchdog::arm`] has passed.
#[derive(Clone, Debug)]
pub(crate) struct Watchdog {
    /// Shared with the progress handler.
    state: Arc<State>,
}

/// The state shared between a [`Watchdog`] and its progress handler.
struct State {
    /// Deadlines are nanoseconds after this instant.
    epoch: Instant,
    /// The deadline in nanoseconds after `epoch`; 0 when no statement is timed.
    deadline: AtomicU64,
    /// The handler interrupted the statement since the last `arm`.
    fired: AtomicBool,
    /// The limit given to the last `arm`, in milliseconds, for the error message.
    limit_ms: AtomicU64,
    /// Interrupts the connection, from the timer thread.
    interrupt: rusqlite::InterruptHandle,
    /// Held by the timer thread while it checks the deadline and interrupts, and by the
    /// disarming guard while it clears the deadline: once a statement is disarmed, no
    /// interrupt meant for it can reach the statements that follow on the connection.
    gate: Mutex<()>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("deadline", &self.deadline)
            .field("fired", &self.fired)
            .finish_non_exhaustive()
    }
}

impl State {
    /// Whether an armed deadline has passed.
    fn expired(&self) -> bool {
        let deadline = self.deadline.load(Ordering::Relaxed);
        deadline != 0 && nanos_since(self.epoch) >= deadline
    }
}

impl Watchdog {
    /// Installs a new watchdog's progress handler on `conn`; it interrupts nothing until armed.
    pub(crate) fn install(conn: &mut Connection) -> rusqlite::Result<Watchdog> {
        let state = Arc::new(State {
            epoch: Instant::now(),
            deadline: AtomicU64::new(0),
            fired: AtomicBool::new(false),
            limit_ms: AtomicU64::new(0),
            interrupt: conn.get_interrupt_handle(),
            gate: Mutex::new(()),
        });
        let handler = state.clone();
        conn.progress_handler(
            PROGRESS_OPS,
            Some(move || {
                if !handler.expired() {
                    return false;
                }
                handler.fired.store(true, Ordering::Relaxed);
                true
            }),
        )?;
        Timer::get().watch(&state);
        Ok(Watchdog { state })
    }

    /// Times the statements run until the returned guard is dropped: they are interrupted
    /// once `limit` has passed.
    pub(crate) fn arm(&self, limit: Duration) -> Armed<'_> {
        let limit_ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
        let deadline = nanos_since(self.state.epoch).saturating_add(limit_ns).max(1);
        self.state.fired.store(false, Ordering::Relaxed);
        self.state
            .limit_ms
            .store(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.state.deadline.store(deadline, Ordering::SeqCst);
        Timer::get().armed();
        Armed { watchdog: self }
    }

    /// Whether the watchdog interrupted the statement armed last.
    pub(crate) fn fired(&self) -> bool {
        self.state.fired.load(Ordering::Relaxed)
    }

    /// The error message for a statement that failed with `error`: the time limit's, if the
    /// watchdog interrupted it, else SQLite's.
    pub(crate) fn message(&self, error: &rusqlite::Error) -> String {
        let interrupted =
            error.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted);
        if interrupted && self.state.fired.load(Ordering::Relaxed) {
            let ms = self.state.limit_ms.load(Ordering::Relaxed);
            format!(
                "statement interrupted: it ran longer than its time limit of {} \
                 (the smaller of the request's db_timeout and the node's --max-statement-time)",
                format_ms(ms)
            )
        } else {
            crate::result::error_message(error)
        }
    }
}

/// Keeps a [`Watchdog`] armed; disarms it when dropped.
#[derive(Debug)]
pub(crate) struct Armed<'w> {
    /// The armed watchdog.
    watchdog: &'w Watchdog,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        let state = &self.watchdog.state;
        let _gate = state.gate.lock().unwrap_or_else(PoisonError::into_inner);
        state.deadline.store(0, Ordering::Relaxed);
    }
}

/// The process's watchdog timer: a thread that interrupts every watched connection whose armed
/// deadline has passed (see the module docs). While statements are armed it polls every
/// [`TIMER_TICK`]: arming a statement is then only an atomic store, which matters to a write of
/// 1,000 statements. When none is, it parks, and the next `arm` wakes it.
struct Timer {
    /// The watchdogs of open connections (dead ones are dropped at the next poll).
    watched: Mutex<Vec<Weak<State>>>,
    /// The timer thread is parked, or about to park, with no statement armed.
    parked: AtomicBool,
    /// The timer thread, to unpark it.
    thread: OnceLock<std::thread::Thread>,
}

/// How often the timer polls while some statement is armed: how late, at most, it interrupts
/// a statement stuck in one instruction (plus scheduling).
const TIMER_TICK: Duration = Duration::from_millis(2);

impl Timer {
    /// The process's timer, started on first use.
    fn get() -> &'static Timer {
        static TIMER: OnceLock<&'static Timer> = OnceLock::new();
        TIMER.get_or_init(|| {
            let timer: &'static Timer = Box::leak(Box::new(Timer {
                watched: Mutex::default(),
                parked: AtomicBool::new(false),
                thread: OnceLock::new(),
            }));
            match std::thread::Builder::new().name("keel-watchdog".into()).spawn(|| timer.run()) {
                Ok(handle) => {
                    let _ = timer.thread.set(handle.thread().clone());
                }
                // The progress handler still enforces limits between instructions.
                Err(error) => tracing::error!(%error, "cannot start the statement timer thread"),
            }
            timer
        })
    }

    /// Adds a connection's watchdog.
    fn watch(&self, state: &Arc<State>) {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(state));
    }

    /// Wakes the timer thread if it is parked; called after a deadline is armed.
    fn armed(&self) {
        if self.parked.load(Ordering::SeqCst)
            && self.parked.swap(false, Ordering::SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
    }

    /// Polls forever.
    fn run(&self) {
        loop {
            if self.poll() {
                std::thread::sleep(TIMER_TICK);
                continue;
            }
            // Announce the park, then look again: an `arm` that stored its deadline before
            // this store is seen by the poll, one after it sees `parked` and unparks.
            self.parked.store(true, Ordering::SeqCst);
            if self.poll() {
                self.parked.store(false, Ordering::SeqCst);
                continue;
            }
            std::thread::park_timeout(Duration::from_secs(1));
            self.parked.store(false, Ordering::SeqCst);
        }
    }

    /// Interrupts the connections whose deadline passed; returns whether any statement is
    /// armed.
    fn poll(&self) -> bool {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        watched.retain(|w| w.strong_count() > 0);
        let mut armed = false;
        for state in watched.iter().filter_map(Weak::upgrade) {
            armed |= state.deadline.load(Ordering::SeqCst) != 0;
            if !state.expired() {
                continue;
            }
            let _gate = state.gate.lock().unwrap_or_else(PoisonError::into_inner);
            // Checked again under the gate: the statement may have finished meanwhile.
            if state.expired() && !state.fired.swap(true, Ordering::Relaxed) {
                state.interrupt.interrupt();
            }
        }
        armed
    }
}

/// Nanoseconds since `epoch`, saturating.
fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// `1500` → `1.5s`, `250` → `250ms`.
fn format_ms(ms: u64) -> String {
    if ms >= 1000 { format!("{}s", ms as f64 / 1000.0) } else { format!("{ms}ms") }
}

/// Counts what a query returns against the limits; see [`Limits`].
#[derive(Debug)]
pub(crate) struct ResultBudget {
    /// Rows left.
    rows: usize,
    /// Bytes left.
    bytes: usize,
    /// The limits, for the error message.
    limits: Limits,
}

impl ResultBudget {
    /// A full budget.
    pub(crate) fn new(limits: &Limits) -> ResultBudget {
        ResultBudget {
            rows: limits.max_result_rows,
            bytes: limits.max_result_bytes,
            limits: *limits,
        }
    }

    /// Takes one row of `bytes` bytes; fails with the error message once over a limit.
    pub(crate) fn take(&mut self, bytes: usize) -> Result<(), String> {
        if self.rows == 0 {
            return Err(format!(
                "result too large: more than {} rows (the node's --max-result-rows); \
                 add a LIMIT or page with WHERE",
                self.limits.max_result_rows
            ));
        }
        if bytes > self.bytes {
            return Err(format!(
                "result too large: more than {} bytes (the node's --max-result-bytes); \
                 select fewer columns or rows",
                self.limits.max_result_bytes
            ));
        }
        self.rows -= 1;
        self.bytes -= bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runaway_statement_is_interrupted_with_a_clear_error() {
        let mut conn = Connection::open_in_memory().unwrap();
        let watchdog = Watchdog::install(&mut conn).unwrap();
        let start = Instant::now();
        let error = {
            let _armed = watchdog.arm(Duration::from_millis(100));
            conn.query_row(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                 SELECT count(*) FROM c",
                [],
                |row| row.get::<_, i64>(0),
            )
            .unwrap_err()
        };
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        let message = watchdog.message(&error);
        assert!(message.contains("time limit of 100ms"), "{message}");
        // Disarmed: the same connection runs long statements again.
        let n: i64 = conn
            .query_row(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) \
                 SELECT count(*) FROM c",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(n, 300_000);
    }

    #[test]
    fn one_long_instruction_is_interrupted_by_the_timer() {
        // count(*) walks the whole table inside one instruction, where no progress handler
        // runs; small pages make the walk long without a large file.
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 512; CREATE TABLE t (x);
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000)
             INSERT INTO t SELECT x FROM c;",
        )
        .unwrap();
        // Twenty walks in one statement (each arm of the UNION is one instruction), so that
        // it lasts long enough for the timer thread to run even on a busy machine.
        let sql = format!(
            "SELECT sum(n) FROM ({})",
            vec!["SELECT count(*) AS n FROM t"; 20].join(" UNION ALL ")
        );
        let count = |conn: &Connection| conn.query_row(&sql, [], |row| row.get::<_, i64>(0));
        let watchdog = Watchdog::install(&mut conn).unwrap();
        let limit = Duration::from_millis(1);
        let start = Instant::now();
        let error = {
            let _armed = watchdog.arm(limit);
            count(&conn).unwrap_err()
        };
        assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
        let message = watchdog.message(&error);
        assert!(message.contains("time limit of 1ms"), "{message}");
        // With time to spare, the same connection runs it to the end: no interrupt is left over.
        let _armed = watchdog.arm(Duration::from_secs(60));
        assert_eq!(count(&conn).unwrap(), 60_000_000);
    }

    #[test]
    fn other_errors_keep_their_message() {
        let mut conn = Connection::open_in_memory().unwrap();
        let watchdog = Watchdog::install(&mut conn).unwrap();
        let error = conn.execute("SELECT * FROM missing", []).unwrap_err();
        assert_eq!(watchdog.message(&error), "no such table: missing");
    }

    #[test]
    fn hardened_connection_refuses_attach_and_writable_schema() {
        let conn = Connection::open_in_memory().unwrap();
        harden(&conn).unwrap();
        let error = conn.execute_batch("ATTACH ':memory:' AS other").unwrap_err();
        assert!(error.to_string().contains("too many attached databases"), "{error}");
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        conn.execute_batch("PRAGMA writable_schema = ON").unwrap();
        let error = conn
            .execute_batch("UPDATE sqlite_schema SET sql = 'CREATE TABLE t (y)' WHERE name = 't'")
            .unwrap_err();
        assert!(error.to_string().contains("may not be modified"), "{error}");
    }

    #[test]
    fn values_are_capped() {
        let conn = Connection::open_in_memory().unwrap();
        let limits = Limits { max_result_bytes: 2 << 20, ..Limits::default() };
        cap_values(&conn, Some(&limits)).unwrap();
        let error = conn
            .query_row("SELECT length(zeroblob(900000000) || 'x')", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(error.to_string().contains("too big"), "{error}");
        let n: i64 = conn.query_row("SELECT length(zeroblob(1000000))", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1_000_000);
        cap_values(&conn, None).unwrap();
        let n: i64 = conn.query_row("SELECT length(zeroblob(3000000))", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 3_000_000);
    }

    #[test]
    fn budget_counts_rows_and_bytes() {
        let limits = Limits { max_result_rows: 2, max_result_bytes: 10, ..Limits::default() };
        let mut budget = ResultBudget::new(&limits);
        budget.take(4).unwrap();
        budget.take(6).unwrap();
        assert!(budget.take(0).unwrap_err().contains("more than 2 rows"));
        let mut budget = ResultBudget::new(&limits);
        assert!(budget.take(11).unwrap_err().contains("more than 10 bytes"));
        assert_eq!(
            Limits::default().time_for(Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            Limits::default().time_for(Some(Duration::from_secs(3600))),
            Limits::default().statement_time
        );
    }
}
