//! Change data capture: `GET /db/changes?from=<lsn>` streams the committed row changes of the
//! database as server-sent events, and `keel changes` prints them as JSON lines.
//!
//! The source is the logical row log itself: every Raft entry whose payload is a
//! [`wal::Record`] holds the row changes of one group-committed batch of writes, as SQL text for
//! schema changes ([`wal::Op::Ddl`]) and SQLite session changesets for rows
//! ([`wal::Op::Changes`]). The stream reads this node's own log through [`raft::LogReader`],
//! decodes changesets with [`sql::changes::decode`], names columns from this node's schema
//! ([`sql::changes::table_columns`]), and sends one event per row change or DDL statement. The
//! log is the same on every node, so any node serves the same stream, and a consumer can move
//! from one node to another without seeing a change twice or missing one.
//!
//! How a stream flows ([`stream`]):
//!
//! 1. The start comes from `Last-Event-ID` (a reconnecting client) or `?from=` (default: the
//!    next entry this node will apply, i.e. only new changes). A start the node has compacted
//!    away (older than its last snapshot's retained log) is answered 410 with the first LSN it
//!    still holds, before any event; a malformed one 400.
//! 2. [`Tail`] then reads the log in bounded chunks ([`CHUNK_ENTRIES`], [`CHUNK_BYTES`]) up to
//!    the node's applied index only: an applied entry is committed, so the stream never shows
//!    a change that could still be rolled back. A chunk is read only when the events of the
//!    previous one have been taken by the HTTP body, which takes them only as fast as the
//!    client reads: a slow consumer holds one chunk in memory, not the log.
//! 3. Caught up, it sends a `caught-up` event (see below) and waits for the next apply: the
//!    stream is a live tail and never ends by itself. Keep-alive comments every
//!    [`KEEP_ALIVE`] keep idle connections open through proxies.
//!
//! # Event ids and resuming
//!
//! One record (one LSN) can hold many changes. The SSE `id` of the last event of a record is
//! the record's LSN; the events before it in the same record have the id `<lsn>:<seq>` (`seq`
//! counts from 0 within the record). `Last-Event-ID: <lsn>` therefore resumes at `lsn + 1`,
//! and `Last-Event-ID: <lsn>:<seq>` resumes inside the record after event `seq`, so a
//! connection dropped halfway through a big transaction loses nothing and repeats nothing.
//! The `caught-up` event carries `{"lsn": n}` and the id `n`: everything through `n` has been
//! sent. It is sent when the stream reaches the node's applied index and the last id sent is
//! older (entries without changes came after it, or nothing was sent yet), so that the resume
//! point moves past them and a script knows it has seen everything up to a given LSN.
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

mod client;
mod sse;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use sql::changes::TableColumns;

use crate::http::{Node, Params, bad_request, error_response, json_response};

/// Most log entries read at once.
const CHUNK_ENTRIES: u64 = 256;
/// Most log bytes read at once (at least one entry is read whatever its size).
const CHUNK_BYTES: u64 = 1 << 20;
/// How often an idle stream sends a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Flags of `keel changes`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChangesArgs {
    /// HTTP URL of any cluster node. If it goes away, the command resumes on another member
    /// (from the last `/nodes` answer).
    #[arg(default_value = "http://127.0.0.1:4001")]
    pub url: String,
    /// The first LSN to print changes of. Default: only changes committed from now on.
    #[arg(long)]
    pub from: Option<u64>,
    /// Exit after printing this many changes.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Exit once every change up to and including this LSN has been printed.
    #[arg(long)]
    pub until_lsn: Option<u64>,
    /// Give up after failing to reach any node for this long (e.g. `30s`). Default: retry
    /// forever.
    #[arg(long, value_parser = crate::parse_duration)]
    pub give_up_after: Option<Duration>,
}

/// The change stream's routes.
pub fn router(node: Arc<Node>) -> Router {
    Router::new().route("/db/changes", get(stream)).with_state(node)
}

/// Runs `keel changes`.
pub async fn run(args: ChangesArgs) -> anyhow::Result<()> {
    client::run(args).await
}

/// Where a stream starts: a log position, and how many events of that record were already
/// delivered (a resume inside a record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    /// The LSN of the next record to stream.
    pub(crate) lsn: wal::Lsn,
    /// Events of that record to skip.
    pub(crate) skip: u64,
}

/// An SSE event id: `<lsn>` (the last event of a record, or `caught-up`) or `<lsn>:<seq>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EventId {
    /// The record's LSN.
    pub(crate) lsn: wal::Lsn,
    /// The event's position within the record, unless it is the record's last event.
    pub(crate) seq: Option<u64>,
}

impl EventId {
    /// Where to resume after this event.
    pub(crate) fn resume(self) -> Option<Position> {
        match self.seq {
            None => Some(Position { lsn: self.lsn.checked_add(1)?, skip: 0 }),
            Some(seq) => Some(Position { lsn: self.lsn, skip: seq.checked_add(1)? }),
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            None => write!(f, "{}", self.lsn),
            Some(seq) => write!(f, "{}:{seq}", self.lsn),
        }
    }
}

impl FromStr for EventId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let number = |part: &str| {
            part.trim()
                .parse::<u64>()
                .map_err(|_| format!("event id {s:?} is not <lsn> or <lsn>:<seq>"))
        };
        match s.split_once(':') {
            None => Ok(EventId { lsn: number(s)?, seq: None }),
            Some((lsn, seq)) => Ok(EventId { lsn: number(lsn)?, seq: Some(number(seq)?) }),
        }
    }
}

/// Works out where a stream starts: `Last-Event-ID` wins over `from` (an EventSource
/// reconnects to the same URL, `from` included, with the header added); neither means the next
/// entry after `applied`.
fn start(params: &Params, headers: &HeaderMap, applied: wal::Lsn) -> Result<Position, String> {
    if let Some(id) = headers.get("last-event-id") {
        let id = id.to_str().map_err(|_| "Last-Event-ID is not text".to_string())?;
        let id: EventId = id.parse()?;
        return id.resume().ok_or_else(|| format!("Last-Event-ID {id} is out of range"));
    }
    match params.get("from") {
        None => Ok(Position { lsn: applied + 1, skip: 0 }),
        Some(from) => match from.trim().parse::<u64>() {
            Ok(lsn) => Ok(Position { lsn, skip: 0 }),
            Err(_) => Err(format!("from must be a log position (an integer >= 0), not {from:?}")),
        },
    }
}

/// `GET /db/changes`: see the module docs.
async fn stream(
    State(node): State<Arc<Node>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let params = Params(params);
    let applied = *node.applied.borrow();
    let position = match start(&params, &headers, applied) {
        Ok(position) => position,
        Err(message) => return bad_request(message),
    };
    // Refuse a compacted start now, while a status code can still say so.
    match node.log.read(position.lsn..position.lsn.saturating_add(1), 1, 0).await {
        Ok(_) => {}
        Err(raft::log_reader::ReadError::Compacted { first }) => return gone(position.lsn, first),
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
    tracing::debug!(from = position.lsn, skip = position.skip, "change stream started");
    let tail = Tail::new(node, position);
    let events = futures::stream::unfold(tail, |mut tail| async move {
        tail.next_event().await.map(|event| (Ok::<_, Infallible>(event), tail))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// The 410 answer for a start older than the log holds.
fn gone(from: wal::Lsn, first: wal::Lsn) -> Response {
    json_response(
        StatusCode::GONE,
        &json!({
            "error": format!(
                "changes from lsn {from} are no longer in this node's log (compacted into a \
                 snapshot); the first lsn it can stream is {first}"
            ),
            "first_lsn": first,
        }),
        false,
    )
}

/// One change stream's state: where it is in the log and the events read but not yet sent.
///
/// Invariants:
/// * Every record before `next` has had all its events queued in `pending` (or sent), and no
///   event of a record at or after `next` has.
/// * `pending` holds the events of at most one chunk of the log.
struct Tail {
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

impl Tail {
    /// A stream starting at `position`.
    fn new(node: Arc<Node>, position: Position) -> Self {
        let applied = node.applied.clone();
        Tail {
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
    async fn next_event(&mut self) -> Option<Event> {
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
                    let event = Event::default()
                        .event("caught-up")
                        .id(through.to_string())
                        .data(json!({ "lsn": through }).to_string());
                    return Some(event);
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
        let mut data = json!({ "error": message });
        if let Some(first) = first_lsn {
            data["first_lsn"] = json!(first);
        }
        self.pending.push_back(Event::default().event("end").data(data.to_string()));
        self.ended = true;
    }
}

/// Whether an `Op::Ddl` text is one of the `sqlite_sequence` fix-ups `sql::Db::execute`
/// appends to a record (AUTOINCREMENT counters), rather than a client's statement.
fn is_sequence_fixup(sql: &str) -> bool {
    sql.starts_with("DELETE FROM sqlite_sequence WHERE name = ")
}

/// The events of one record, with their ids, in order.
fn record_events(
    lsn: wal::Lsn,
    record: &wal::Record,
    readers: &sql::Readers,
    columns: &mut HashMap<String, Option<TableColumns>>,
) -> Result<Vec<(EventId, Event)>, String> {
    let mut data: Vec<Value> = Vec::new();
    for op in &record.ops {
        match op {
            wal::Op::Ddl(text) if is_sequence_fixup(text) => {}
            wal::Op::Ddl(text) => {
                data.push(json!({ "lsn": lsn, "op": "ddl", "sql": text }));
                columns.clear();
            }
            wal::Op::Changes(changeset) => {
                let changes = sql::changes::decode(changeset)
                    .map_err(|e| format!("record at lsn {lsn}: {e}"))?;
                for change in changes {
                    if !columns.contains_key(&change.table) {
                        let found = sql::changes::table_columns(readers, &change.table)
                            .map_err(|e| format!("schema of {}: {e}", change.table))?;
                        columns.insert(change.table.clone(), found);
                    }
                    let named = change.to_json(columns.get(&change.table).and_then(Option::as_ref));
                    data.push(json!({
                        "lsn": lsn,
                        "table": change.table,
                        "op": change.kind.as_str(),
                        "key": named.key,
                        "old": named.old,
                        "new": named.new,
                    }));
                }
            }
        }
    }
    let count = data.len();
    Ok(data
        .into_iter()
        .enumerate()
        .map(|(seq, mut value)| {
            value["seq"] = json!(seq);
            let id = EventId { lsn, seq: (seq + 1 < count).then_some(seq as u64) };
            (id, Event::default().id(id.to_string()).data(value.to_string()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

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
            assert_eq!(id.resume(), Some(resume));
        }
        for bad in ["", "x", "-1", "1:", ":1", "1:2:3", "1.5"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
        assert_eq!(EventId { lsn: u64::MAX, seq: None }.resume(), None);
    }

    #[test]
    fn the_start_prefers_last_event_id_over_from() {
        let params = |from: Option<&str>| {
            Params(from.map(|f| vec![("from".to_string(), f.to_string())]).unwrap_or_default())
        };
        let none = HeaderMap::new();
        let mut resumed = HeaderMap::new();
        resumed.insert("last-event-id", HeaderValue::from_static("9:2"));

        assert_eq!(start(&params(None), &none, 41), Ok(Position { lsn: 42, skip: 0 }));
        assert_eq!(start(&params(Some("5")), &none, 41), Ok(Position { lsn: 5, skip: 0 }));
        assert_eq!(start(&params(Some("5")), &resumed, 41), Ok(Position { lsn: 9, skip: 3 }));
        for bad in ["", "abc", "-3", "1e3", "99999999999999999999"] {
            assert!(start(&params(Some(bad)), &none, 41).is_err(), "{bad:?}");
        }
        let mut garbage = HeaderMap::new();
        garbage.insert("last-event-id", HeaderValue::from_static("soon"));
        assert!(start(&params(None), &garbage, 41).is_err());
    }

    #[test]
    fn sequence_fixups_are_recognized() {
        assert!(is_sequence_fixup(
            "DELETE FROM sqlite_sequence WHERE name = 'b'; INSERT INTO sqlite_sequence (name, seq) VALUES ('b', 5);"
        ));
        assert!(!is_sequence_fixup("CREATE TABLE sqlite_sequence_like (a)"));
    }
}
