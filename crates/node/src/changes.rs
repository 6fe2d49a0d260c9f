//! The change stream's source: the committed row changes of the database, read from this
//! node's own log, as events ([`Node::changes`]). The HTTP layer sends them as server-sent
//! events (`GET /db/changes`); `keel changes` prints them.
//!
//! The source is the logical row log itself: every Raft entry whose payload is a
//! [`wal::Record`] holds the row changes of one group-committed batch of writes, as SQL text for
//! schema changes ([`wal::Op::Ddl`]) and SQLite session changesets for rows
//! ([`wal::Op::Changes`]). The stream reads this node's own log through [`raft::LogReader`],
//! decodes changesets with [`sql::changes::decode`], names columns from this node's schema
//! ([`sql::changes::table_columns`]), and yields one event per row change or DDL statement. The
//! log is the same on every node, so any node serves the same stream, and a consumer can move
//! from one node to another without seeing a change twice or missing one.
//!
//! How a stream flows:
//!
//! 1. It starts at a [`Position`]. A start the node has compacted away (older than its last
//!    snapshot's retained log) is refused ([`Gone`]) before any event.
//! 2. [`ChangeStream`] then reads the log in bounded chunks ([`CHUNK_ENTRIES`],
//!    [`CHUNK_BYTES`]) up to the node's applied index only: an applied entry is committed, so
//!    the stream never shows a change that could still be rolled back. A chunk is read only
//!    when the events of the previous one have been taken, which the HTTP body does only as
//!    fast as the client reads: a slow consumer holds one chunk in memory, not the log.
//! 3. Caught up, it yields a `caught-up` event (see below) and waits for the next apply: the
//!    stream is a live tail and never ends by itself.
//!
//! # Event ids and resuming
//!
//! One record (one LSN) can hold many changes. The id of the last event of a record is the
//! record's LSN; the events before it in the same record have the id `<lsn>:<seq>` (`seq`
//! counts from 0 within the record). Resuming after `<lsn>` starts at `lsn + 1`, and after
//! `<lsn>:<seq>` inside the record after event `seq` ([`Position::after`]), so a connection
//! dropped halfway through a big transaction loses nothing and repeats nothing. The
//! `caught-up` event carries `{"lsn": n}` and the id `n`: everything through `n` has been
//! sent. It is yielded when the stream reaches the node's applied index and the last id sent
//! is older (entries without changes came after it, or nothing was sent yet), so that the
//! resume point moves past them and a script knows it has seen everything up to a given LSN.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * Column names come from the schema at read time (see [`sql::changes`]): changes made
//!   before a column was renamed or dropped are named with today's schema.
//! * The `sqlite_sequence` fix-ups that records carry as SQL text (AUTOINCREMENT counters) are
//!   bookkeeping, not changes a client made, and are not streamed.
//! * One record's events are built at once: a single huge transaction is held in memory whole
//!   while it streams (it already was, as a record).
//! * A consumer slower than compaction falls off the log: when the next entry it needs has
//!   been compacted away, the stream ends with an `end` event naming the first retained LSN.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// An event's SSE id, `<lsn>` or `<lsn>:<seq>`: the wire type, which clients parse too.
pub use keel_api::changes::EventId;

use keel_api::changes::{CaughtUp, Change, Op, What};
use serde_json::Value;
use sql::changes::TableColumns;

use crate::Node;

/// Most log entries read at once.
pub const CHUNK_ENTRIES: u64 = 256;
/// Most log bytes read at once (at least one entry is read whatever its size).
pub const CHUNK_BYTES: u64 = 1 << 20;

/// One event of the stream; the data of each is a wire type.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A row change or a schema statement, with its id.
    Change(EventId, Change),
    /// `caught-up`: everything through `lsn` has been sent (its id is `lsn`).
    CaughtUp(CaughtUp),
    /// `end`: the stream stops, and why (no id).
    End(keel_api::ErrorAnswer),
}

/// A start older than the log holds: `first` is the first LSN this node can stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    /// The first LSN this node can stream.
    pub first: wal::Lsn,
}

/// Why a stream could not start.
#[derive(Debug)]
pub enum StartError {
    /// The start was compacted away.
    Gone(Gone),
    /// Reading the log failed.
    Log(String),
}

impl Node {
    /// A stream of the changes from `position` on (see the module docs).
    pub async fn changes(self: &Arc<Self>, position: Position) -> Result<ChangeStream, StartError> {
        // Refuse a compacted start now, while the caller can still say so.
        match self.log.read(position.lsn..position.lsn.saturating_add(1), 1, 0).await {
            Ok(_) => {}
            Err(raft::log_reader::ReadError::Compacted { first }) => {
                return Err(StartError::Gone(Gone { first }));
            }
            Err(e) => return Err(StartError::Log(e.to_string())),
        }
        tracing::debug!(from = position.lsn, skip = position.skip, "change stream started");
        Ok(ChangeStream::new(self.clone(), position))
    }
}

/// Where a stream starts: a log position, and how many events of that record were already
/// delivered (a resume inside a record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The LSN of the next record to stream.
    pub lsn: wal::Lsn,
    /// Events of that record to skip.
    pub skip: u64,
}

impl Position {
    /// Where to resume after the event `id`: the next record after a record's last event,
    /// else the same record past event `seq`. `None` past the end of the log's numbers.
    pub fn after(id: EventId) -> Option<Position> {
        match id.seq {
            None => Some(Position { lsn: id.lsn.checked_add(1)?, skip: 0 }),
            Some(seq) => Some(Position { lsn: id.lsn, skip: seq.checked_add(1)? }),
        }
    }
}

/// One change stream's state: where it is in the log and the events read but not yet sent.
///
/// Invariants:
/// * Every record before `next` has had all its events queued in `pending` (or sent), and no
///   event of a record at or after `next` has.
/// * `pending` holds the events of at most one chunk of the log.
pub struct ChangeStream {
    /// The node whose log and schema are read.
    node: Arc<Node>,
    /// The applied index, watched for the live tail.
    applied: tokio::sync::watch::Receiver<wal::Lsn>,
    /// The next LSN to read.
    next: wal::Lsn,
    /// Events of the record at `next` to skip (a resume inside a record); 0 after it.
    skip: u64,
    /// Events read and not yet sent.
    pending: VecDeque<Event>,
    /// The resume point the client will have once `pending` is sent: the last id (without
    /// `seq`) queued, by a record's last event or a `caught-up` event.
    announced: Option<wal::Lsn>,
    /// Column names by table, read from the schema; cleared after every DDL event.
    columns: HashMap<String, Option<TableColumns>>,
    /// The stream has ended (an `end` event is queued or sent).
    ended: bool,
}

impl ChangeStream {
    /// A stream starting at `position`.
    fn new(node: Arc<Node>, position: Position) -> Self {
        let applied = node.applied.clone();
        ChangeStream {
            node,
            applied,
            next: position.lsn,
            skip: position.skip,
            pending: VecDeque::new(),
            // Nothing announced yet: the first time the stream is caught up it says where it
            // is, so a client that started at the tail has a resume point at once.
            announced: None,
            columns: HashMap::new(),
            ended: false,
        }
    }

    /// The next event to send; waits for new applies when caught up. `None` ends the stream
    /// (after an `end` event, or when the node stops).
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let applied = *self.applied.borrow_and_update();
            if self.next > applied {
                let through = self.next - 1;
                if self.skip == 0 && self.announced.is_none_or(|a| a < through) {
                    // Everything through `through` is sent: say so, once.
                    self.announced = Some(through);
                    return Some(Event::CaughtUp(CaughtUp { lsn: through }));
                }
                if self.applied.changed().await.is_err() {
                    return None; // The node is stopping.
                }
                continue;
            }
            if let Err(message) = self.read_chunk(applied).await {
                tracing::warn!(%message, next = self.next, "change stream ended");
                self.end(message, None);
            }
        }
    }

    /// Reads the next chunk of the log (up to `applied`) and queues its events.
    async fn read_chunk(&mut self, applied: wal::Lsn) -> Result<(), String> {
        let range = self.next..applied.saturating_add(1);
        let entries = match self.node.log.read(range, CHUNK_ENTRIES, CHUNK_BYTES).await {
            Ok(entries) => entries,
            Err(raft::log_reader::ReadError::Compacted { first }) => {
                let message = format!(
                    "the stream fell behind: lsn {} was compacted away; the first lsn this node \
                     can stream is {first}",
                    self.next
                );
                self.end(message, Some(first));
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        let Some(last) = entries.last().map(|e| e.lsn) else {
            return Err(format!("the log ends before lsn {} although it is applied", self.next));
        };
        let readers = self.node.readers.clone();
        let mut columns = std::mem::take(&mut self.columns);
        // A resume inside a record skips the events of the chunk's first record already sent.
        let (skip, skip_at) = (self.skip, self.next);
        let built = tokio::task::spawn_blocking(move || {
            let mut events = Vec::new();
            for entry in entries {
                let Some(record) = entry.record else { continue };
                let mut record_events = record_events(entry.lsn, &record, &readers, &mut columns)?;
                if entry.lsn == skip_at {
                    record_events.drain(..(skip as usize).min(record_events.len()));
                }
                events.extend(record_events);
            }
            Ok::<_, String>((events, columns))
        })
        .await
        .map_err(|e| format!("decoding task failed: {e}"))?;
        let (events, columns) = built?;
        self.columns = columns;
        if let Some(id) = events.last().map(|(id, _)| *id) {
            self.announced = Some(id.lsn);
        }
        self.pending.extend(events.into_iter().map(|(_, event)| event));
        self.next = last + 1;
        self.skip = 0;
        Ok(())
    }

    /// Queues the `end` event and stops reading.
    fn end(&mut self, message: String, first_lsn: Option<wal::Lsn>) {
        let end = keel_api::ErrorAnswer { first_lsn, ..keel_api::ErrorAnswer::new(message) };
        self.pending.push_back(Event::End(end));
        self.ended = true;
    }
}

/// Whether an `Op::Ddl` text is one of the `sqlite_sequence` fix-ups `sql::Db::execute`
/// appends to a record (AUTOINCREMENT counters), rather than a client's statement.
fn is_sequence_fixup(sql: &str) -> bool {
    sql.starts_with("DELETE FROM sqlite_sequence WHERE name ")
}

/// The events of one record, with their ids, in order.
fn record_events(
    lsn: wal::Lsn,
    record: &wal::Record,
    readers: &sql::Readers,
    columns: &mut HashMap<String, Option<TableColumns>>,
) -> Result<Vec<(EventId, Event)>, String> {
    let mut changes: Vec<(Op, What)> = Vec::new();
    for op in &record.ops {
        match op {
            wal::Op::Ddl(text) if is_sequence_fixup(text) => {}
            wal::Op::Ddl(text) => {
                changes.push((Op::Ddl, What::Ddl { sql: text.clone() }));
                columns.clear();
            }
            // Shown as the statement it is: rowids of tables without an INTEGER PRIMARY KEY
            // or index may change here.
            wal::Op::Vacuum => changes.push((Op::Ddl, What::Ddl { sql: "VACUUM".to_string() })),
            wal::Op::Changes(changeset) => {
                let decoded = sql::changes::decode(changeset)
                    .map_err(|e| format!("record at lsn {lsn}: {e}"))?;
                for change in decoded {
                    if !columns.contains_key(&change.table) {
                        let found = sql::changes::table_columns(readers, &change.table)
                            .map_err(|e| format!("schema of {}: {e}", change.table))?;
                        columns.insert(change.table.clone(), found);
                    }
                    let named = change.to_json(columns.get(&change.table).and_then(Option::as_ref));
                    let op = match change.kind {
                        sql::changes::ChangeKind::Insert => Op::Insert,
                        sql::changes::ChangeKind::Update => Op::Update,
                        sql::changes::ChangeKind::Delete => Op::Delete,
                    };
                    let what = What::Row {
                        key: row(named.key).unwrap_or_default(),
                        old: row(named.old),
                        new: row(named.new),
                        table: change.table,
                    };
                    changes.push((op, what));
                }
            }
        }
    }
    let count = changes.len();
    Ok(changes
        .into_iter()
        .enumerate()
        .map(|(seq, (op, what))| {
            let id = EventId { lsn, seq: (seq + 1 < count).then_some(seq as u64) };
            (id, Event::Change(id, Change { lsn, op, seq: seq as u64, what }))
        })
        .collect())
}

/// A row's values as a change names them: an object, or `None` for `null`.
fn row(value: Value) -> Option<keel_api::db::Row> {
    match value {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_resume() {
        for (text, id, resume) in [
            ("17", EventId { lsn: 17, seq: None }, Position { lsn: 18, skip: 0 }),
            ("17:0", EventId { lsn: 17, seq: Some(0) }, Position { lsn: 17, skip: 1 }),
            ("3:41", EventId { lsn: 3, seq: Some(41) }, Position { lsn: 3, skip: 42 }),
        ] {
            assert_eq!(text.parse::<EventId>().unwrap(), id);
            assert_eq!(id.to_string(), text);
            assert_eq!(Position::after(id), Some(resume));
        }
        for bad in ["", "x", "-1", "1:", ":1", "1:2:3", "1.5"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
        assert_eq!(Position::after(EventId { lsn: u64::MAX, seq: None }), None);
    }

    #[test]
    fn sequence_fixups_are_recognized() {
        assert!(is_sequence_fixup(
            "DELETE FROM sqlite_sequence WHERE name = 'b'; INSERT INTO sqlite_sequence (name, seq) VALUES ('b', 5);"
        ));
        assert!(is_sequence_fixup("DELETE FROM sqlite_sequence WHERE name IS NULL;"));
        assert!(!is_sequence_fixup("CREATE TABLE sqlite_sequence_like (a)"));
    }
}
