//! `/db/execute`, `/db/query` and `/db/request`: the statements a client sends, the answer it
//! gets, and the query parameters that shape both.
//!
//! A request body is rqlite's JSON array of statements; each [`Statement`] is a string, or an
//! array of the SQL followed by positional parameters or one object of named ones. An answer
//! is an [`Answer`]: one [`StatementResult`] per statement, in order, and Keel's `lsn`.
//!
//! [`StatementResult`] is one struct for every shape rqlite gives a result, because the shape
//! depends on the request (`associative`, `timings`, `/db/request`) and not on a tag in the
//! JSON: a write's `{"last_insert_id": 1, "rows_affected": 1}`, a read's `{"columns": …,
//! "types": […], "values": …}` or, associative, `{"types": {…}, "rows": […]}`, and a
//! statement's own `{"error": "…"}`. Absent fields stay absent when it is serialized again.
//! Fields are declared in alphabetical order, so a serialized answer has the same bytes as
//! Keel's server (which writes JSON objects with sorted keys).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::ser::{SerializeSeq as _, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Lsn;

/// One row in the associative form: column name to value.
pub type Row = Map<String, Value>;

/// A SQL statement as a request body carries it: the text, and its parameters if any.
///
/// Serializes as rqlite expects: `"SELECT 1"` without parameters, `["INSERT … VALUES(?, ?)",
/// 1, "a"]` with positional ones, `["INSERT … VALUES(:a)", {"a": 1}]` with named ones.
///
/// ```
/// use keel_api::Statement;
/// use serde_json::json;
///
/// let s = Statement::new("INSERT INTO t(a, b) VALUES(?, ?)").bind(1).bind("x");
/// assert_eq!(serde_json::to_value(&s).unwrap(), json!(["INSERT INTO t(a, b) VALUES(?, ?)", 1, "x"]));
/// let named = Statement::named("SELECT :a", [("a", json!(7))]);
/// assert_eq!(serde_json::to_value(&named).unwrap(), json!(["SELECT :a", {"a": 7}]));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// The SQL text.
    pub sql: String,
    /// Its parameters.
    pub params: Params,
}

/// A statement's parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Params {
    /// None: the statement is sent as a plain string.
    #[default]
    None,
    /// Values for `?` (and `?N`), in order. JSON numbers bind as integers when whole, else
    /// as reals; a byte array or an `x'…'` string as a BLOB.
    Positional(Vec<Value>),
    /// Values for `:name`, `@name` or `$name`, keyed by the name without its prefix.
    Named(Map<String, Value>),
}

impl Statement {
    /// A statement without parameters.
    pub fn new(sql: impl Into<String>) -> Statement {
        Statement { sql: sql.into(), params: Params::None }
    }

    /// A statement with positional parameters.
    pub fn with_params(
        sql: impl Into<String>,
        params: impl IntoIterator<Item = Value>,
    ) -> Statement {
        Statement { sql: sql.into(), params: Params::Positional(params.into_iter().collect()) }
    }

    /// A statement with named parameters.
    pub fn named<K: Into<String>>(
        sql: impl Into<String>,
        params: impl IntoIterator<Item = (K, Value)>,
    ) -> Statement {
        let params = params.into_iter().map(|(k, v)| (k.into(), v)).collect();
        Statement { sql: sql.into(), params: Params::Named(params) }
    }

    /// Adds one positional parameter (turning named parameters, if any, into none).
    pub fn bind(mut self, value: impl Into<Value>) -> Statement {
        match &mut self.params {
            Params::Positional(values) => values.push(value.into()),
            _ => self.params = Params::Positional(vec![value.into()]),
        }
        self
    }
}

impl From<&str> for Statement {
    fn from(sql: &str) -> Statement {
        Statement::new(sql)
    }
}

impl From<String> for Statement {
    fn from(sql: String) -> Statement {
        Statement::new(sql)
    }
}

impl Serialize for Statement {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.params {
            Params::None => serializer.serialize_str(&self.sql),
            Params::Positional(values) => {
                let mut seq = serializer.serialize_seq(Some(values.len() + 1))?;
                seq.serialize_element(&self.sql)?;
                for v in values {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Params::Named(map) => {
                let mut seq = serializer.serialize_seq(Some(2))?;
                seq.serialize_element(&self.sql)?;
                seq.serialize_element(map)?;
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Statement {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Statement, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(sql) => Ok(Statement::new(sql)),
            Value::Array(mut items) if !items.is_empty() => {
                let Value::String(sql) = items.remove(0) else {
                    return Err(de::Error::custom("a statement array starts with its SQL text"));
                };
                match items.as_slice() {
                    [Value::Object(map)] => Ok(Statement::named(sql, map.clone())),
                    _ => Ok(Statement::with_params(sql, items)),
                }
            }
            _ => Err(de::Error::custom("a statement is a string or an array [sql, params…]")),
        }
    }
}

/// The answer of `/db/execute`, `/db/query` and `/db/request`.
///
/// `error` is set (with no `lsn` and no results) only when a `level=none` read with
/// `freshness` was refused as stale, which rqlite answers with HTTP 200.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// A request-level refusal answered with 200 (a stale read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The log position: for a write, the index of the record that carried it; for a read,
    /// the index the node had applied when it read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<Lsn>,
    /// `?raft_index`: the same as `lsn`, for rqlite clients that ask for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_index: Option<Lsn>,
    /// One result per statement, in order.
    #[serde(default)]
    pub results: Vec<StatementResult>,
    /// `?timings`: the request's time in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<f64>,
    /// `X-RQLITE-SERVED-BY`: the Raft address of the node that ran the request. A header, not
    /// part of the JSON; the client fills it in.
    #[serde(skip)]
    pub served_by: Option<String>,
}

impl Answer {
    /// An answer of `results` at `lsn`.
    pub fn new(results: Vec<StatementResult>, lsn: Lsn) -> Answer {
        Answer { results, lsn: Some(lsn), ..Answer::default() }
    }

    /// The stale-read refusal: `{"results": [], "error": why}`.
    pub fn refused(why: impl Into<String>) -> Answer {
        Answer { error: Some(why.into()), ..Answer::default() }
    }

    /// The first error of the answer: the request's own, or a statement's (with its index).
    pub fn first_error(&self) -> Option<(Option<usize>, &str)> {
        if let Some(e) = &self.error {
            return Some((None, e));
        }
        self.results.iter().enumerate().find_map(|(i, r)| r.error.as_deref().map(|e| (Some(i), e)))
    }
}

/// The result of one statement, in any of rqlite's shapes (see the module docs).
///
/// Invariants of what a Keel server sends:
/// * `error` excludes every other field.
/// * `columns`/`values` (the array form) and `rows` with `types` as an object (the
///   associative form) are never mixed.
/// * Zero `last_insert_id` and `rows_affected` are left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatementResult {
    /// Column names of a read, in order (array form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// The statement failed: SQLite's message or Keel's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `sqlite3_last_insert_rowid()` after the statement, when not 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_insert_id: Option<i64>,
    /// The associative form's rows. `Some(None)` is the `"rows": null` that `/db/request`
    /// puts on a write's result in associative form.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_or_null"
    )]
    pub rows: Option<Option<Vec<Row>>>,
    /// `sqlite3_changes()` after the statement, when not 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_affected: Option<i64>,
    /// `?timings`: the statement's time in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<f64>,
    /// Column types: a list (array form) or by column name (associative form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Types>,
    /// Rows of a read (array form); absent when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Vec<Value>>>,
}

/// `types` of a read: lower-cased declared types (for an expression, the kind of the first
/// row's value), as a list or keyed by column name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Types {
    /// The array form: one per column.
    List(Vec<String>),
    /// The associative form.
    ByColumn(BTreeMap<String, String>),
}

/// Keeps a present `null` apart from an absent field: `Some(None)`.
fn present_or_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl StatementResult {
    /// A write's result; zero counters are left out, as rqlite does.
    pub fn exec(last_insert_id: i64, rows_affected: i64) -> StatementResult {
        StatementResult {
            last_insert_id: (last_insert_id != 0).then_some(last_insert_id),
            rows_affected: (rows_affected != 0).then_some(rows_affected),
            ..StatementResult::default()
        }
    }

    /// A statement's error.
    pub fn error(message: impl Into<String>) -> StatementResult {
        StatementResult { error: Some(message.into()), ..StatementResult::default() }
    }

    /// A read's result in the array form: `columns` and `types` unless there are no columns,
    /// `values` unless there are no rows.
    pub fn rows(
        columns: Vec<String>,
        types: Vec<String>,
        values: Vec<Vec<Value>>,
    ) -> StatementResult {
        let has_columns = !columns.is_empty();
        StatementResult {
            columns: has_columns.then_some(columns),
            types: has_columns.then_some(Types::List(types)),
            values: (!values.is_empty()).then_some(values),
            ..StatementResult::default()
        }
    }

    /// A read's result in the associative form: `types` unless there are no columns.
    pub fn associative(types: BTreeMap<String, String>, rows: Vec<Row>) -> StatementResult {
        StatementResult {
            types: (!types.is_empty()).then_some(Types::ByColumn(types)),
            rows: Some(Some(rows)),
            ..StatementResult::default()
        }
    }

    /// Adds the statement's time (`?timings`).
    pub fn with_time(mut self, seconds: f64) -> StatementResult {
        self.time = Some(seconds);
        self
    }

    /// Whether the statement failed.
    pub fn is_error(&self) -> bool {
        self.error.is_some()
    }

    /// The rows of a read in the array form (empty when there are none).
    pub fn values(&self) -> &[Vec<Value>] {
        self.values.as_deref().unwrap_or_default()
    }

    /// The rows of a read in the associative form (empty when there are none).
    pub fn assoc_rows(&self) -> &[Row] {
        self.rows.as_ref().and_then(Option::as_deref).unwrap_or_default()
    }

    /// The column names of a read in the array form (empty when there are none).
    pub fn columns(&self) -> &[String] {
        self.columns.as_deref().unwrap_or_default()
    }

    /// `last_insert_id`, 0 when absent.
    pub fn last_insert_id(&self) -> i64 {
        self.last_insert_id.unwrap_or(0)
    }

    /// `rows_affected`, 0 when absent.
    pub fn rows_affected(&self) -> i64 {
        self.rows_affected.unwrap_or(0)
    }
}

/// Read consistency (`?level=`), from cheapest to strongest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Level {
    /// This node's copy, as it is (optionally bounded by `freshness`).
    None,
    /// The leader's copy while it holds its lease (rqlite's default).
    #[default]
    Weak,
    /// A read index from the leader, confirmed by a quorum, applied here: any node serves it.
    Linearizable,
    /// The leader's copy after a quorum round trip.
    Strong,
    /// rqlite's `auto`: `none` for read-only nodes, else `weak`.
    Auto,
}

impl Level {
    /// The parameter's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Weak => "weak",
            Level::Linearizable => "linearizable",
            Level::Strong => "strong",
            Level::Auto => "auto",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Level, String> {
        match s {
            "none" => Ok(Level::None),
            "weak" => Ok(Level::Weak),
            "linearizable" => Ok(Level::Linearizable),
            "strong" => Ok(Level::Strong),
            "auto" => Ok(Level::Auto),
            other => Err(format!(
                "unknown level {other:?}: use none, weak, linearizable, strong or auto"
            )),
        }
    }
}

/// When a write is acknowledged (`?durability=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Durability {
    /// A majority of voters has the record durably (Raft's commit).
    SemiSync,
    /// Every member has applied it.
    Sync,
    /// K other members have applied it.
    Replicas(u32),
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::SemiSync => f.write_str("semi-sync"),
            Durability::Sync => f.write_str("sync"),
            Durability::Replicas(k) => write!(f, "replicas:{k}"),
        }
    }
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Durability, String> {
        match s {
            "semi-sync" => Ok(Durability::SemiSync),
            "sync" => Ok(Durability::Sync),
            _ => s
                .strip_prefix("replicas:")
                .and_then(|k| k.parse().ok())
                .map(Durability::Replicas)
                .ok_or_else(|| {
                    format!("unknown durability '{s}' (use semi-sync, sync or replicas:K)")
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn statements_round_trip() {
        for value in [
            json!("SELECT 1"),
            json!(["INSERT INTO t VALUES(?, ?)", 1, "x"]),
            json!(["INSERT INTO t VALUES(:a)", {"a": [1, 2]}]),
        ] {
            let s: Statement = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(serde_json::to_value(&s).unwrap(), value);
        }
        assert!(serde_json::from_value::<Statement>(json!([1])).is_err());
        assert!(serde_json::from_value::<Statement>(json!({"sql": "x"})).is_err());
    }

    #[test]
    fn rows_null_is_kept_apart_from_absent() {
        let with_null: StatementResult =
            serde_json::from_value(json!({"last_insert_id": 4, "rows": null, "rows_affected": 1}))
                .unwrap();
        assert_eq!(with_null.rows, Some(None));
        let without: StatementResult = serde_json::from_value(json!({})).unwrap();
        assert_eq!(without.rows, None);
        assert_eq!(
            serde_json::to_string(&with_null).unwrap(),
            r#"{"last_insert_id":4,"rows":null,"rows_affected":1}"#
        );
    }

    #[test]
    fn parameters_parse_and_print() {
        for d in [Durability::SemiSync, Durability::Sync, Durability::Replicas(2)] {
            assert_eq!(d.to_string().parse::<Durability>(), Ok(d));
        }
        assert_eq!(
            "eventually".parse::<Durability>().unwrap_err(),
            "unknown durability 'eventually' (use semi-sync, sync or replicas:K)"
        );
        assert_eq!("linearizable".parse::<Level>(), Ok(Level::Linearizable));
    }
}
