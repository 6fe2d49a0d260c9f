//! Per-statement results and their rqlite JSON shape.
//!
//! `Db::execute` and `Readers::query` produce one [`StatementResult`] per client statement;
//! `bin` renders each with [`StatementResult::to_json`] under the request's [`Format`] and puts
//! them into the response's `results` array. The shapes follow rqlite's encoder
//! (`reference/rqlite-api.md` §4): zero counters are omitted, `columns` is present for every
//! rows result that has columns, `values` is omitted when there are no rows, a statement with no
//! columns renders as `{}`, the associative form maps column names to values, and in
//! `/db/request` associative output an execute result carries `"rows": null`.
//!
//! BLOB values inside [`StatementResult::Rows`] are JSON arrays of bytes (see `encode`); this
//! module turns them into base64 strings unless `blob_array` is set.

use base64::Engine as _;
use serde_json::{Map, Value};

/// Output options of a request, taken from its query string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Format {
    /// `?associative`: rows as objects keyed by column name, types as an object.
    pub associative: bool,
    /// `?blob_array`: BLOBs as arrays of byte values instead of base64 strings.
    pub blob_array: bool,
    /// `?timings`: include each statement's `time` in seconds.
    pub timings: bool,
}

/// The outcome of one client statement.
///
/// Its serde form (externally tagged, snake case: `{"exec": {…}}`, `{"rows": {…}}`,
/// `{"error": "…"}`) is how the answer of a request with a request id is stored for retries
/// (see `answers`); it is not the rqlite shape, which is [`StatementResult::to_json`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementResult {
    /// A statement run as a write, whatever it did.
    Exec {
        /// `sqlite3_last_insert_rowid()` after the statement: the rowid of the last row
        /// inserted into a rowid table on the connection, by this statement or an earlier one.
        last_insert_id: i64,
        /// `sqlite3_changes()` after the statement: the rows the last INSERT, UPDATE or DELETE
        /// on the connection (this statement or an earlier one) changed itself, not through
        /// triggers or foreign-key actions.
        rows_affected: i64,
        /// Execution time in seconds.
        time: f64,
    },
    /// A statement that returned rows.
    Rows {
        /// Column names, in order.
        columns: Vec<String>,
        /// Column types (lower-cased declared types, filled from the first row when absent).
        types: Vec<String>,
        /// Rows of encoded values; a JSON array among them is a BLOB's bytes.
        values: Vec<Vec<Value>>,
        /// Execution time in seconds.
        time: f64,
    },
    /// The statement failed; the message is SQLite's or Keel's reason.
    Error(String),
}

impl StatementResult {
    /// Renders the result in rqlite's JSON shape. `in_request_endpoint` is true for
    /// `/db/request`, whose associative form marks execute results with `"rows": null`.
    pub fn to_json(&self, format: &Format, in_request_endpoint: bool) -> Value {
        let mut out = Map::new();
        match self {
            StatementResult::Exec { last_insert_id, rows_affected, time } => {
                if *last_insert_id != 0 {
                    out.insert("last_insert_id".into(), (*last_insert_id).into());
                }
                if *rows_affected != 0 {
                    out.insert("rows_affected".into(), (*rows_affected).into());
                }
                insert_time(&mut out, format, *time);
                if format.associative && in_request_endpoint {
                    out.insert("rows".into(), Value::Null);
                }
            }
            StatementResult::Rows { columns, types, values, time } if format.associative => {
                if !columns.is_empty() {
                    let types = columns.iter().cloned().zip(types.iter().cloned().map(Value::from));
                    out.insert("types".into(), Value::Object(types.collect()));
                }
                let rows = values.iter().map(|row| {
                    let fields =
                        columns.iter().zip(row).map(|(c, v)| (c.clone(), render(v, format)));
                    Value::Object(fields.collect())
                });
                out.insert("rows".into(), Value::Array(rows.collect()));
                insert_time(&mut out, format, *time);
            }
            StatementResult::Rows { columns, types, values, time } => {
                if !columns.is_empty() {
                    out.insert("columns".into(), columns.clone().into());
                    out.insert("types".into(), types.clone().into());
                }
                if !values.is_empty() {
                    let rows = values
                        .iter()
                        .map(|row| Value::Array(row.iter().map(|v| render(v, format)).collect()));
                    out.insert("values".into(), Value::Array(rows.collect()));
                }
                insert_time(&mut out, format, *time);
            }
            StatementResult::Error(message) => {
                out.insert("error".into(), message.clone().into());
            }
        }
        Value::Object(out)
    }

    /// Writes [`StatementResult::to_json`]'s value into `out` as compact JSON: the same bytes
    /// `serde_json::to_writer` gives for that value (keys in the same sorted order), without
    /// building it first. Answers of reads are rendered on their hot path, where the value's
    /// maps and copies cost more than the rest of the encoding. The associative form, whose
    /// objects are keyed (and ordered, and deduplicated) by column name, still goes through the
    /// value.
    pub fn write_json(&self, format: &Format, in_request_endpoint: bool, out: &mut Vec<u8>) {
        match self {
            StatementResult::Rows { .. } if format.associative => {
                put(out, &self.to_json(format, in_request_endpoint));
            }
            StatementResult::Rows { columns, types, values, time } => {
                let mut object = Object::open(out);
                if !columns.is_empty() {
                    put(object.key("columns"), columns);
                }
                if format.timings {
                    put(object.key("time"), time);
                }
                if !columns.is_empty() {
                    put(object.key("types"), types);
                }
                if !values.is_empty() {
                    let out = object.key("values");
                    out.push(b'[');
                    for (i, row) in values.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.push(b'[');
                        for (j, value) in row.iter().enumerate() {
                            if j > 0 {
                                out.push(b',');
                            }
                            match value {
                                Value::Array(_) if !format.blob_array => {
                                    put(out, &render(value, format));
                                }
                                value => put(out, value),
                            }
                        }
                        out.push(b']');
                    }
                    out.push(b']');
                }
                object.close();
            }
            StatementResult::Exec { last_insert_id, rows_affected, time } => {
                let mut object = Object::open(out);
                if *last_insert_id != 0 {
                    put(object.key("last_insert_id"), last_insert_id);
                }
                if format.associative && in_request_endpoint {
                    object.key("rows").extend_from_slice(b"null");
                }
                if *rows_affected != 0 {
                    put(object.key("rows_affected"), rows_affected);
                }
                if format.timings {
                    put(object.key("time"), time);
                }
                object.close();
            }
            StatementResult::Error(message) => {
                let mut object = Object::open(out);
                put(object.key("error"), message);
                object.close();
            }
        }
    }

    /// Whether this is an error result.
    pub fn is_error(&self) -> bool {
        matches!(self, StatementResult::Error(_))
    }
}

/// The message of a SQLite error as rqlite shows it: SQLite's own text, without rusqlite's
/// "in `sql` at offset `n`" suffix.
pub(crate) fn error_message(error: &rusqlite::Error) -> String {
    match error {
        error if crate::error::is_damaged(error) => crate::error::DAMAGED.to_string(),
        rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        other => other.to_string(),
    }
}

/// Adds `time` when timings were asked for.
fn insert_time(out: &mut Map<String, Value>, format: &Format, time: f64) {
    if format.timings {
        out.insert(
            "time".into(),
            serde_json::Number::from_f64(time).map_or(Value::Null, Value::Number),
        );
    }
}

/// Appends `value` as compact JSON.
fn put(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) {
    serde_json::to_writer(out, value).expect("JSON values, strings and numbers serialize");
}

/// A JSON object being written into a buffer, for [`StatementResult::write_json`]. Its keys
/// are plain ASCII names, written in the order `serde_json`'s sorted maps would give.
struct Object<'a> {
    /// The buffer.
    out: &'a mut Vec<u8>,
    /// Whether no key has been written yet.
    empty: bool,
}

impl<'a> Object<'a> {
    /// Writes `{`.
    fn open(out: &'a mut Vec<u8>) -> Object<'a> {
        out.push(b'{');
        Object { out, empty: true }
    }

    /// Writes the next key (and the comma before it); the caller writes its value.
    fn key(&mut self, name: &str) -> &mut Vec<u8> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// Writes `}`.
    fn close(self) {
        self.out.push(b'}');
    }
}

/// Renders one stored value: BLOB byte arrays become base64 unless `blob_array` is set.
fn render(value: &Value, format: &Format) -> Value {
    match value {
        Value::Array(bytes) if !format.blob_array => {
            let bytes: Vec<u8> = bytes
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()).unwrap_or(0))
                .collect();
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rows(values: Vec<Vec<Value>>) -> StatementResult {
        StatementResult::Rows {
            columns: vec!["id".into(), "data".into()],
            types: vec!["integer".into(), "blob".into()],
            values,
            time: 0.5,
        }
    }

    #[test]
    fn exec_shapes() {
        let plain = Format::default();
        let assoc = Format { associative: true, ..Format::default() };
        let timed = Format { timings: true, ..Format::default() };
        let zero = StatementResult::Exec { last_insert_id: 0, rows_affected: 0, time: 0.25 };
        assert_eq!(zero.to_json(&plain, false), json!({}));
        assert_eq!(zero.to_json(&timed, false), json!({"time": 0.25}));
        assert_eq!(zero.to_json(&assoc, false), json!({}));
        assert_eq!(zero.to_json(&assoc, true), json!({"rows": null}));
        let one = StatementResult::Exec { last_insert_id: 3, rows_affected: 1, time: 0.0 };
        assert_eq!(one.to_json(&plain, true), json!({"last_insert_id": 3, "rows_affected": 1}));
        let error = StatementResult::Error("no such table: x".into());
        assert_eq!(error.to_json(&timed, true), json!({"error": "no such table: x"}));
    }

    /// `write_json` writes exactly what serializing `to_json`'s value writes.
    #[test]
    fn written_json_is_the_values_bytes() {
        let results = [
            StatementResult::Exec { last_insert_id: 0, rows_affected: 0, time: 0.25 },
            StatementResult::Exec { last_insert_id: -3, rows_affected: 7, time: 1e-7 },
            StatementResult::Exec { last_insert_id: 1, rows_affected: 0, time: f64::NAN },
            StatementResult::Error("no such table: \"x\"\n\u{1}é".into()),
            rows(vec![]),
            rows(vec![
                vec![json!(1), json!([222, 173, 190, 239])],
                vec![json!(null), json!([])],
                vec![json!(-2.5), json!("a\"b\\c\t☃")],
                vec![json!(u64::MAX), json!(true)],
            ]),
            StatementResult::Rows {
                columns: vec!["a".into(), "a".into(), "\"q\"".into()],
                types: vec!["".into(), "text".into(), "integer".into()],
                values: vec![vec![json!(1), json!("x"), json!(2)]],
                time: 123.456,
            },
            StatementResult::Rows { columns: vec![], types: vec![], values: vec![], time: 0.0 },
        ];
        for associative in [false, true] {
            for blob_array in [false, true] {
                for timings in [false, true] {
                    let format = Format { associative, blob_array, timings };
                    for in_request in [false, true] {
                        for result in &results {
                            let mut written = Vec::new();
                            result.write_json(&format, in_request, &mut written);
                            let expected =
                                serde_json::to_vec(&result.to_json(&format, in_request)).unwrap();
                            assert_eq!(
                                String::from_utf8(written).unwrap(),
                                String::from_utf8(expected).unwrap(),
                                "{result:?} {format:?} in_request={in_request}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rows_shapes() {
        let plain = Format::default();
        let blobs = Format { blob_array: true, ..Format::default() };
        let assoc = Format { associative: true, ..Format::default() };
        assert_eq!(
            rows(vec![]).to_json(&plain, false),
            json!({"columns": ["id", "data"], "types": ["integer", "blob"]})
        );
        assert_eq!(
            rows(vec![]).to_json(&assoc, false),
            json!({"types": {"id": "integer", "data": "blob"}, "rows": []})
        );
        let one = rows(vec![vec![json!(1), json!([222, 173, 190, 239])]]);
        assert_eq!(
            one.to_json(&plain, false),
            json!({"columns": ["id", "data"], "types": ["integer", "blob"], "values": [[1, "3q2+7w=="]]})
        );
        assert_eq!(one.to_json(&blobs, false)["values"], json!([[1, [222, 173, 190, 239]]]));
        assert_eq!(
            one.to_json(&assoc, true),
            json!({"types": {"id": "integer", "data": "blob"}, "rows": [{"id": 1, "data": "3q2+7w=="}]})
        );
        let none =
            StatementResult::Rows { columns: vec![], types: vec![], values: vec![], time: 0.0 };
        assert_eq!(none.to_json(&plain, false), json!({}));
        assert_eq!(none.to_json(&assoc, false), json!({"rows": []}));
    }
}
