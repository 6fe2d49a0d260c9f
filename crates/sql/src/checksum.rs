//! Table checksums at one log position, for checking that replicas hold the same data while
//! writes go on (`keel check`, `GET /db/checksum`).
//!
//! ## One position on every node: pins
//!
//! Every node applies the same log, but each at its own pace, so "the same moment" is a log
//! index `N`. A check first *pins* `N` on each node ([`Pins::pin`]) before the node has applied
//! it. When the state machine applies a batch of entries that contains `N`, [`crate::Db::apply`]
//! splits the batch there: it commits entries through `N`, then the pin's read-only connection
//! opens a read transaction (a WAL snapshot of exactly the state after `N`), then the rest of the
//! batch is applied. The pin holds that snapshot while the check reads the tables chunk by chunk
//! ([`Pins::wait`], [`chunk`]); the node goes on applying meanwhile. A pin not used for
//! [`PIN_IDLE`] is dropped (a held snapshot keeps checkpoints from recycling the WAL); one that
//! can no longer be reached fails at once: the node applied past `N` before the pin arrived, or
//! installed a snapshot image instead of applying entries.
//!
//! ## The checksum (a specification: another implementation can reproduce it)
//!
//! A table is read in key order: a rowid table by `rowid`, a `WITHOUT ROWID` table by its
//! primary key columns in key order, and the schema (the pseudo-table `sqlite_schema`, Keel's
//! own `_keel_*` objects left out) by `name`. Every value is encoded as one type byte and its
//! bytes, all integers big-endian:
//!
//! | type | byte | then |
//! |---|---|---|
//! | NULL | `0x00` | nothing |
//! | INTEGER | `0x01` | the value as 8 bytes, two's complement |
//! | REAL | `0x02` | the IEEE 754 binary64 bits, 8 bytes (so `1.0` and `1` differ, and `-0.0` and `0.0`) |
//! | TEXT | `0x03` | the UTF-8 byte length as 8 bytes, then the bytes |
//! | BLOB | `0x04` | the byte length as 8 bytes, then the bytes |
//!
//! A row is its value count as 4 bytes, then its values: for a rowid table the rowid first,
//! then every column of `SELECT *` in order; for the other two, the columns alone. A chunk is
//! up to `limit` consecutive rows after a key; its checksum is the SHA-256 of its rows'
//! encodings concatenated, in lowercase hex. A row's key is the encoding of its key values
//! (the rowid, the primary key columns in key order, or the name) concatenated; keys travel as
//! lowercase hex (`from`, `last_key`), so any key type round-trips.
//!
//! Tables covered ([`tables`]): every ordinary table and virtual-table shadow table of the main
//! schema, `sqlite_sequence` included (it decides future AUTOINCREMENT values), but not Keel's
//! `_keel_*` tables (node-local bookkeeping), the `sqlite_stat*` tables, nor virtual tables
//! themselves (their content is their shadow tables').

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _};
use sha2::{Digest, Sha256};
use wal::Lsn;

use crate::error::{Error, Result};
use crate::generation::{Holder, Live};

/// A pinned snapshot unused for this long is dropped.
pub const PIN_IDLE: Duration = Duration::from_secs(60);
/// A pin still waiting for its index after this long is dropped (nothing is being written).
pub const PIN_WAIT_MAX: Duration = Duration::from_secs(600);
/// The name of the pseudo-table holding the schema.
pub const SCHEMA_TABLE: &str = "sqlite_schema";

/// Why a pin cannot serve a check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// This node had applied `applied`, past the index, before the pin was asked for.
    #[error("log index {lsn} is already applied here (applied {applied}): pin a later index")]
    Passed {
        /// The index asked for.
        lsn: Lsn,
        /// What this node had applied.
        applied: Lsn,
    },
    /// The pin was never made, expired, or failed for another reason.
    #[error("no snapshot at log index {lsn}: {why}")]
    Gone {
        /// The index asked for.
        lsn: Lsn,
        /// Why.
        why: String,
    },
    /// The node did not reach the index in time.
    #[error("log index {lsn} not applied within {:.1}s (applied {applied})", timeout.as_secs_f64())]
    NotReached {
        /// The index asked for.
        lsn: Lsn,
        /// What this node had applied.
        applied: Lsn,
        /// How long it waited.
        timeout: Duration,
    },
}

/// A pinned snapshot: a read-only connection inside a read transaction at one log index.
pub type Snapshot = Arc<Mutex<Connection>>;

/// One pin.
enum Pin {
    /// Waiting for the apply of its index, with the connection that will hold the snapshot.
    Waiting { conn: Connection, generation: u64, since: Instant },
    /// Holding the snapshot.
    Ready { snapshot: Snapshot, used: Instant },
    /// It cannot be served.
    Failed(PinError),
}

/// The pins of one database (see the module docs). Shared by the [`crate::Db`] (which fulfils
/// them as it applies) and whoever serves checks.
pub struct Pins {
    /// The live generation: pins open their connections on it.
    live: Arc<Live>,
    /// The pins by index, and the last index applied.
    state: Mutex<State>,
    /// Signalled whenever a pin changes.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    pins: BTreeMap<Lsn, Pin>,
    applied: Lsn,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins").finish_non_exhaustive()
    }
}

impl Pins {
    /// The pins of the database whose live generation is `live`, which has applied `applied`.
    pub(crate) fn new(live: Arc<Live>, applied: Lsn) -> Arc<Pins> {
        let pins = Arc::new(Pins {
            live: live.clone(),
            state: Mutex::new(State { pins: BTreeMap::new(), applied }),
            changed: Condvar::new(),
        });
        let holder: Arc<dyn Holder> = pins.clone();
        live.register(Arc::downgrade(&holder));
        pins
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pins log index `lsn`: once this node applies it, a snapshot of the state right after it
    /// is kept for checks. Asking again for a pin that exists changes nothing.
    pub fn pin(&self, lsn: Lsn) -> std::result::Result<(), PinError> {
        let mut state = self.lock();
        expire(&mut state);
        if state.pins.contains_key(&lsn) {
            return Ok(());
        }
        if lsn <= state.applied {
            return Err(PinError::Passed { lsn, applied: state.applied });
        }
        let (conn, generation) = self.open().map_err(|e| PinError::Gone {
            lsn,
            why: format!("cannot open a read connection: {e}"),
        })?;
        state.pins.insert(lsn, Pin::Waiting { conn, generation, since: Instant::now() });
        Ok(())
    }

    /// A read-only connection on the live generation, having made its first read (see `Live`).
    fn open(&self) -> Result<(Connection, u64)> {
        let current = self.live.read();
        let conn = Connection::open_with_flags(
            &current.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        Ok((conn, current.number))
    }

    /// Waits up to `timeout` until the snapshot at `lsn` is ready.
    pub fn wait(&self, lsn: Lsn, timeout: Duration) -> std::result::Result<Snapshot, PinError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            expire(&mut state);
            match state.pins.get_mut(&lsn) {
                None => {
                    let why = "not pinned, or expired (pin it again with a later index)";
                    return Err(PinError::Gone { lsn, why: why.into() });
                }
                Some(Pin::Ready { snapshot, used }) => {
                    *used = Instant::now();
                    return Ok(snapshot.clone());
                }
                Some(Pin::Failed(e)) => return Err(e.clone()),
                Some(Pin::Waiting { .. }) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PinError::NotReached { lsn, applied: state.applied, timeout });
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Drops the pin at `lsn` (a check that is done with it).
    pub fn release(&self, lsn: Lsn) {
        self.lock().pins.remove(&lsn);
    }

    /// How many pins exist.
    pub fn len(&self) -> usize {
        self.lock().pins.len()
    }

    /// Whether no pin exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// For [`crate::Db::apply`]: the position in `indexes` of the first one a pin waits for,
    /// where the batch must be split.
    pub(crate) fn split_at(&self, mut indexes: impl Iterator<Item = Lsn>) -> Option<usize> {
        let state = self.lock();
        if state.pins.is_empty() {
            return None;
        }
        indexes.position(|i| matches!(state.pins.get(&i), Some(Pin::Waiting { .. })))
    }

    /// For [`crate::Db::apply`]: everything through `index` is committed. The pin at `index`
    /// takes its snapshot now; waiting pins below it can never be served.
    pub(crate) fn applied(&self, index: Lsn) {
        let mut state = self.lock();
        state.applied = state.applied.max(index);
        if state.pins.is_empty() {
            return;
        }
        let passed: Vec<Lsn> = state
            .pins
            .range(..=index)
            .filter(|(_, pin)| matches!(pin, Pin::Waiting { .. }))
            .map(|(lsn, _)| *lsn)
            .collect();
        for lsn in passed {
            let Some(Pin::Waiting { conn, .. }) = state.pins.remove(&lsn) else { continue };
            let pin = if lsn == index {
                match take_snapshot(conn, lsn) {
                    Ok(snapshot) => Pin::Ready { snapshot, used: Instant::now() },
                    Err(e) => Pin::Failed(PinError::Gone { lsn, why: e.to_string() }),
                }
            } else {
                Pin::Failed(PinError::Passed { lsn, applied: index })
            };
            state.pins.insert(lsn, pin);
        }
        self.changed.notify_all();
    }
}

impl Holder for Pins {
    /// An installed image replaced the database: a waiting pin's connection is on the old
    /// file, and the log indexes it waited for were not applied here one by one. Snapshots
    /// already taken stay valid (they describe their index, whatever file holds them).
    fn drop_stale(&self, current: u64) {
        let mut state = self.lock();
        for (lsn, pin) in state.pins.iter_mut() {
            if matches!(pin, Pin::Waiting { generation, .. } if *generation != current) {
                let why = "this node installed a snapshot image instead of applying the entries; pin a later index".into();
                *pin = Pin::Failed(PinError::Gone { lsn: *lsn, why });
            }
        }
        self.changed.notify_all();
    }
}

/// Opens the read transaction that holds the snapshot, and checks that it is at `lsn`.
fn take_snapshot(conn: Connection, lsn: Lsn) -> Result<Snapshot> {
    conn.execute_batch("BEGIN")?;
    let idx: Option<i64> = conn
        .query_row("SELECT idx FROM _keel_meta WHERE id = 1", [], |row| row.get(0))
        .optional()?
        .flatten();
    if idx != i64::try_from(lsn).ok() {
        return Err(Error::Corrupt(format!("a snapshot for {lsn} reads applied index {idx:?}")));
    }
    Ok(Arc::new(Mutex::new(conn)))
}

/// Drops idle snapshots, pins that waited too long, and failures nobody collected.
fn expire(state: &mut State) {
    let now = Instant::now();
    state.pins.retain(|_, pin| match pin {
        Pin::Waiting { since, .. } => now.duration_since(*since) < PIN_WAIT_MAX,
        Pin::Ready { used, .. } => now.duration_since(*used) < PIN_IDLE,
        Pin::Failed(_) => true,
    });
    // Failures are kept only while newer pins exist, so a client polling one sees why.
    while state.pins.len() > 64 {
        let Some(oldest) = state.pins.keys().next().copied() else { break };
        state.pins.remove(&oldest);
    }
}

/// The tables a check covers, in name order (see the module docs), the schema first.
pub fn tables(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM pragma_table_list WHERE schema = 'main'
           AND type IN ('table', 'shadow')
           AND name NOT LIKE '\\_keel%' ESCAPE '\\'
           AND name NOT LIKE 'sqlite\\_stat%' ESCAPE '\\'
           AND name NOT IN ('sqlite_schema', 'sqlite_temp_schema')
         ORDER BY name",
    )?;
    let mut names = vec![SCHEMA_TABLE.to_string()];
    names.extend(
        stmt.query_map([], |row| row.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?,
    );
    Ok(names)
}

/// One chunk's checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Rows in the chunk.
    pub rows: u64,
    /// SHA-256 of the rows' encodings, lowercase hex.
    pub checksum: String,
    /// The key of the last row, hex (the next chunk's `from`); `None` for an empty chunk.
    pub last_key: Option<String>,
    /// Whether the table has no rows after this chunk (it held fewer than `limit`).
    pub done: bool,
    /// With `detail`: each row's key (hex) and the first 8 bytes of its encoding's SHA-256.
    pub detail: Option<Vec<(String, String)>>,
}

/// How a table is keyed.
enum Keyed {
    /// By rowid.
    Rowid,
    /// By these primary key columns, in key order.
    Columns(Vec<String>),
}

/// The checksum of up to `limit` rows of `table` after key `from` (hex, see the module docs),
/// read on `conn` (a pinned snapshot). An unknown table is [`Error::InvalidInput`].
pub fn chunk(
    conn: &Connection,
    table: &str,
    from: Option<&str>,
    limit: u64,
    detail: bool,
) -> Result<Chunk> {
    let limit = limit.clamp(1, 1_000_000);
    let from = from.map(decode_key).transpose()?;
    let (sql, keys) = chunk_query(conn, table, from.as_ref().map(Vec::len))?;
    let mut stmt = conn.prepare(&sql)?;
    let mut binds: Vec<rusqlite::types::Value> = from.unwrap_or_default();
    binds.push(rusqlite::types::Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    let mut rows = stmt.query(rusqlite::params_from_iter(binds))?;
    let columns = rows.as_ref().map_or(0, |s| s.column_count());
    let mut hasher = Sha256::new();
    let mut out =
        Chunk { rows: 0, checksum: String::new(), last_key: None, done: true, detail: None };
    let mut details = Vec::new();
    let mut row_bytes = Vec::new();
    while let Some(row) = rows.next()? {
        row_bytes.clear();
        // The key columns come first in the query and are also part of the row for rowid
        // tables (the rowid); for the others the key columns are repeated after the row.
        let values = columns - keys.extra;
        row_bytes.extend_from_slice(&(values as u32).to_be_bytes());
        for i in 0..values {
            encode(&mut row_bytes, row.get_ref(i)?);
        }
        let mut key = Vec::new();
        for i in keys.range(values) {
            encode(&mut key, row.get_ref(i)?);
        }
        hasher.update(&row_bytes);
        out.rows += 1;
        if detail {
            details.push((hex(&key), hex(&Sha256::digest(&row_bytes)[..8])));
        }
        out.last_key = Some(hex(&key));
    }
    out.done = out.rows < limit;
    out.checksum = hex(&hasher.finalize());
    out.detail = detail.then_some(details);
    Ok(out)
}

/// Where the key values are among a chunk query's columns.
struct KeyColumns {
    /// Columns after the row's own, repeating the key (0 when the key is part of the row).
    extra: usize,
    /// With `extra == 0`: how many leading columns of the row are the key.
    leading: usize,
}

impl KeyColumns {
    /// The column positions of the key, given the row's value count.
    fn range(&self, values: usize) -> std::ops::Range<usize> {
        if self.extra == 0 { 0..self.leading } else { values..values + self.extra }
    }
}

/// The query of one chunk of `table` (binding the `from` key values, if `from` has `from_len`
/// of them, then the limit), and where its key columns are.
fn chunk_query(
    conn: &Connection,
    table: &str,
    from_len: Option<usize>,
) -> Result<(String, KeyColumns)> {
    let quoted = quote(table);
    if table == SCHEMA_TABLE {
        let filter = "name NOT LIKE '\\_keel%' ESCAPE '\\'";
        let after = if from_len.is_some() { "AND name > ?1" } else { "" };
        let limit = if from_len.is_some() { "?2" } else { "?1" };
        check_key_len(from_len, 1)?;
        let sql = format!(
            "SELECT name, type, tbl_name, sql FROM sqlite_schema WHERE {filter} {after} ORDER BY name LIMIT {limit}"
        );
        return Ok((sql, KeyColumns { extra: 0, leading: 1 }));
    }
    match keyed(conn, table)? {
        Keyed::Rowid => {
            check_key_len(from_len, 1)?;
            let (after, limit) =
                if from_len.is_some() { ("WHERE rowid > ?1", "?2") } else { ("", "?1") };
            let sql = format!("SELECT rowid, * FROM {quoted} {after} ORDER BY rowid LIMIT {limit}");
            Ok((sql, KeyColumns { extra: 0, leading: 1 }))
        }
        Keyed::Columns(pk) => {
            check_key_len(from_len, pk.len())?;
            let cols: Vec<String> = pk.iter().map(|c| quote(c)).collect();
            let list = cols.join(", ");
            let n = pk.len();
            let (after, limit) = match from_len {
                Some(_) => {
                    let params: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
                    (format!("WHERE ({list}) > ({})", params.join(", ")), format!("?{}", n + 1))
                }
                None => (String::new(), "?1".to_string()),
            };
            let sql =
                format!("SELECT *, {list} FROM {quoted} {after} ORDER BY {list} LIMIT {limit}");
            Ok((sql, KeyColumns { extra: n, leading: 0 }))
        }
    }
}

fn check_key_len(from_len: Option<usize>, expected: usize) -> Result<()> {
    match from_len {
        Some(n) if n != expected => {
            Err(Error::InvalidInput(format!("the key has {n} values, the table's key {expected}")))
        }
        _ => Ok(()),
    }
}

/// How `table` is keyed; [`Error::InvalidInput`] if a check does not cover it.
fn keyed(conn: &Connection, table: &str) -> Result<Keyed> {
    let kind: Option<(String, bool)> = conn
        .query_row(
            "SELECT type, wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
            [table],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let covered =
        table == "sqlite_sequence" || !(table.starts_with("_keel") || table.starts_with("sqlite_"));
    match kind {
        Some((kind, without_rowid)) if covered && (kind == "table" || kind == "shadow") => {
            if !without_rowid {
                return Ok(Keyed::Rowid);
            }
            let mut stmt =
                conn.prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?;
            let pk = stmt.query_map([table], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
            Ok(Keyed::Columns(pk))
        }
        _ => Err(Error::InvalidInput(format!("no table {table:?} to check here"))),
    }
}

/// `"name"` with inner quotes doubled.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Appends the encoding of one value (see the module docs).
fn encode(out: &mut Vec<u8>, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => out.push(0),
        ValueRef::Integer(i) => {
            out.push(1);
            out.extend_from_slice(&i.to_be_bytes());
        }
        ValueRef::Real(f) => {
            out.push(2);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        ValueRef::Text(t) => {
            out.push(3);
            out.extend_from_slice(&(t.len() as u64).to_be_bytes());
            out.extend_from_slice(t);
        }
        ValueRef::Blob(b) => {
            out.push(4);
            out.extend_from_slice(&(b.len() as u64).to_be_bytes());
            out.extend_from_slice(b);
        }
    }
}

/// The values of a key encoded by [`encode`] and written as hex.
fn decode_key(hex_key: &str) -> Result<Vec<rusqlite::types::Value>> {
    use rusqlite::types::Value;
    let bad = || Error::InvalidInput(format!("{hex_key:?} is not a key from a checksum answer"));
    let bytes = unhex(hex_key).ok_or_else(bad)?;
    let mut values = Vec::new();
    let mut rest = bytes.as_slice();
    let take = |rest: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        *rest = tail;
        Some(head.to_vec())
    };
    while let Some((&kind, tail)) = rest.split_first() {
        rest = tail;
        let fixed =
            |rest: &mut &[u8]| take(rest, 8).map(|b| <[u8; 8]>::try_from(b).expect("8 bytes"));
        values.push(match kind {
            0 => Value::Null,
            1 => Value::Integer(i64::from_be_bytes(fixed(&mut rest).ok_or_else(bad)?)),
            2 => Value::Real(f64::from_bits(u64::from_be_bytes(fixed(&mut rest).ok_or_else(bad)?))),
            3 | 4 => {
                let len = u64::from_be_bytes(fixed(&mut rest).ok_or_else(bad)?);
                let bytes =
                    take(&mut rest, usize::try_from(len).map_err(|_| bad())?).ok_or_else(bad)?;
                if kind == 3 {
                    Value::Text(String::from_utf8(bytes).map_err(|_| bad())?)
                } else {
                    Value::Blob(bytes)
                }
            }
            _ => return Err(bad()),
        });
    }
    Ok(values)
}

/// A key from a checksum answer (hex) as a person reads it: `42`, `'abc'`, `(1, 'x')`.
pub fn describe_key(hex_key: &str) -> String {
    use rusqlite::types::Value;
    let Ok(values) = decode_key(hex_key) else { return hex_key.to_string() };
    let one = |v: &Value| match v {
        Value::Null => "NULL".to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => format!("{f:?}"),
        Value::Text(t) => format!("'{}'", t.replace('\'', "''")),
        Value::Blob(b) => format!("X'{}'", hex(b)),
    };
    match values.as_slice() {
        [v] => one(v),
        vs => format!("({})", vs.iter().map(one).collect::<Vec<_>>().join(", ")),
    }
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The bytes of lowercase or uppercase hex.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests;
