//! The change stream, `GET /db/changes`: server-sent events of committed row changes.
//!
//! Each `message` event's data is a [`Change`]: one inserted, updated or deleted row, or one
//! schema statement. A `caught-up` event carries [`CaughtUp`] (everything through `lsn` has
//! been sent); an `end` event carries an [`ErrorAnswer`](crate::ErrorAnswer) (with
//! `first_lsn` when the stream fell behind compaction). Event ids are [`EventId`]s: send the
//! last one received as `Last-Event-ID` to resume exactly where a dropped stream stopped.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Lsn;
use crate::db::Row;

/// One change: `{"lsn", "seq", "op", …}` and the fields of its kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The record (log position) that holds it.
    pub lsn: Lsn,
    /// What it is.
    pub op: Op,
    /// Its position within the record, from 0.
    pub seq: u64,
    /// The row or the statement.
    #[serde(flatten)]
    pub what: What,
}

/// The kind of a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A schema statement.
    Ddl,
    /// A row inserted.
    Insert,
    /// A row updated.
    Update,
    /// A row deleted.
    Delete,
}

impl Op {
    /// The name the stream uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Ddl => "ddl",
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// The fields of a change, by kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum What {
    /// A row change.
    Row {
        /// The primary key's columns and values (`{"rowid": n}` for a table recorded by rowid).
        key: Row,
        /// The values after the change; `null` for a delete.
        new: Option<Row>,
        /// The values before the change; `null` for an insert.
        old: Option<Row>,
        /// The table.
        table: String,
    },
    /// A schema statement, as it ran.
    Ddl {
        /// Its SQL.
        sql: String,
    },
}

/// The data of a `caught-up` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaughtUp {
    /// Everything through this position has been sent.
    pub lsn: Lsn,
}

/// An SSE event id: `<lsn>` (the last event of a record, or `caught-up`) or `<lsn>:<seq>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventId {
    /// The record's LSN.
    pub lsn: Lsn,
    /// The event's position within the record, unless it is the record's last event.
    pub seq: Option<u64>,
}

impl EventId {
    /// The order the stream sends ids in: by LSN, then by position in the record, the
    /// record's last event (no `seq`) after the others.
    pub fn order(self) -> (u64, u64) {
        (self.lsn, self.seq.unwrap_or(u64::MAX))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_parse_and_order() {
        let id = |s: &str| s.parse::<EventId>().unwrap();
        let sent = ["3:0", "3:1", "3", "4", "7:0", "7"];
        for pair in sent.windows(2) {
            assert!(id(pair[0]).order() < id(pair[1]).order(), "{pair:?}");
        }
        for s in sent {
            assert_eq!(id(s).to_string(), s);
        }
        assert!("x".parse::<EventId>().is_err());
    }
}
