//! Client statements: the rqlite request body parsed into SQL text plus bound parameters.
//!
//! `bin` hands the parsed JSON body of `/db/execute`, `/db/query` and `/db/request` to
//! [`parse_statements`], or a `text/plain` body / `?q=` value to [`statements_from_text`], and
//! passes the resulting [`Statement`]s to `Db::execute` (writes) or `Readers::query` (reads).
//! Both end in `Binder::bind`, which binds a statement's [`Params`] to one prepared SQLite statement.
//!
//! The body format is rqlite's (`reference/rqlite-api.md` §3): a JSON array whose elements are
//! either an SQL string or an array `[sql, param, …]`, where a JSON object contributes named
//! parameters (given without their `:`/`@`/`$` prefix) and anything else one positional
//! parameter. Values map as rqlite maps them: integral numbers to INTEGER, other numbers to
//! REAL, booleans to 1/0, strings in SQLite hex-blob syntax (`x'0aff'`) and arrays of bytes to
//! BLOB, other strings to TEXT, `null` to NULL.
//!
//! Deliberate differences from rqlite: one statement cannot mix positional and named parameters
//! (rqlite binds such a mix by ordinal position; [`Params`] keeps the two apart), and the sizes
//! are capped ([`MAX_STATEMENTS`], [`MAX_SQL_LEN`]) so one request cannot pin the single writer.
//!
//! This module does not look inside the SQL: classification happens when SQLite prepares it.

use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::error::{Error, Result};

/// The most statements one request may carry. Larger requests get `InvalidInput`: the writer
/// runs a whole group of requests in one transaction, and one huge request would stall it.
pub const MAX_STATEMENTS: usize = 10_000;

/// The most bytes of SQL text one statement may have (1 MiB). SQLite's own default limit is
/// 1 GB; this keeps log records and speculative transactions of a sane size.
pub const MAX_SQL_LEN: usize = 1 << 20;

/// A value bound to a statement parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer (JSON integers and booleans).
    Integer(i64),
    /// A double (JSON numbers that are not integers).
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes (`x'…'` strings and arrays of byte values).
    Blob(Vec<u8>),
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// The parameters of one statement.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Params {
    /// No parameters.
    #[default]
    None,
    /// Bound by position: the first value to parameter 1 (`?`, `?1` or the first named one).
    Positional(Vec<Value>),
    /// Bound by name, given without prefix: `("id", …)` binds `:id`, `@id` or `$id`.
    Named(Vec<(String, Value)>),
}

/// One client statement: SQL text (which may hold several `;`-separated SQL statements, run in
/// order, the last one giving the result, as rqlite does) and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// The SQL text.
    pub sql: String,
    /// The bound parameters.
    pub params: Params,
}

impl Statement {
    /// A statement without parameters.
    pub fn new(sql: impl Into<String>) -> Self {
        Statement { sql: sql.into(), params: Params::None }
    }
}

/// Parses an rqlite JSON request body into statements.
///
/// Errors (all `InvalidInput`, with rqlite's messages where rqlite has one): the body is not an
/// array (`invalid request`), it is empty or holds an empty inner array (`no statements`), an
/// inner array does not start with a string (`invalid request`), a parameter has a type rqlite
/// does not accept (`unsupported type`), or a limit is exceeded.
pub fn parse_statements(body: &serde_json::Value) -> Result<Vec<Statement>> {
    let serde_json::Value::Array(items) = body else {
        return Err(invalid("invalid request"));
    };
    if items.is_empty() {
        return Err(invalid("no statements"));
    }
    if items.len() > MAX_STATEMENTS {
        return Err(invalid(&format!(
            "too many statements: {} (at most {MAX_STATEMENTS} per request)",
            items.len()
        )));
    }
    items.iter().map(parse_statement).collect()
}

/// Makes the single statement of a `text/plain` body or of a `GET /db/query?q=…`.
pub fn statements_from_text(body: &str) -> Result<Vec<Statement>> {
    if body.trim().is_empty() {
        return Err(invalid("no statements"));
    }
    check_len(body)?;
    Ok(vec![Statement::new(body)])
}

/// Parses one element of the request array.
fn parse_statement(item: &serde_json::Value) -> Result<Statement> {
    let parts = match item {
        serde_json::Value::String(sql) => {
            check_len(sql)?;
            return Ok(Statement::new(sql.as_str()));
        }
        serde_json::Value::Array(parts) => parts,
        _ => return Err(invalid("invalid request")),
    };
    let Some((first, rest)) = parts.split_first() else {
        return Err(invalid("no statements"));
    };
    let serde_json::Value::String(sql) = first else {
        return Err(invalid("invalid request"));
    };
    check_len(sql)?;
    let mut positional = Vec::new();
    let mut named = Vec::new();
    for part in rest {
        match part {
            serde_json::Value::Object(map) => {
                for (name, value) in map {
                    named.push((name.clone(), parse_value(value)?));
                }
            }
            value => positional.push(parse_value(value)?),
        }
    }
    let params = match (positional.is_empty(), named.is_empty()) {
        (true, true) => Params::None,
        (false, true) => Params::Positional(positional),
        (true, false) => Params::Named(named),
        (false, false) => {
            return Err(invalid(
                "mixing positional and named parameters in one statement is not supported",
            ));
        }
    };
    Ok(Statement { sql: sql.clone(), params })
}

/// Converts one JSON parameter to a [`Value`] by rqlite's rules.
fn parse_value(value: &serde_json::Value) -> Result<Value> {
    Ok(match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Integer(i64::from(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().ok_or_else(|| invalid("unsupported type"))?),
        },
        serde_json::Value::String(s) => match hex_blob(s) {
            Some(bytes) => Value::Blob(bytes),
            None => Value::Text(s.clone()),
        },
        serde_json::Value::Array(items) => Value::Blob(
            items
                .iter()
                .map(|item| item.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| invalid("unsupported type"))?,
        ),
        serde_json::Value::Object(_) => return Err(invalid("unsupported type")),
    })
}

/// Decodes a string in SQLite's hex-blob literal syntax (`x'…'` or `X'…'` with an even number
/// of hex digits); `None` for any other string.
pub(crate) fn hex_blob(s: &str) -> Option<Vec<u8>> {
    let hex = s.strip_prefix(['x', 'X'])?.strip_prefix('\'')?.strip_suffix('\'')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

/// Rejects SQL text over [`MAX_SQL_LEN`].
fn check_len(sql: &str) -> Result<()> {
    if sql.len() > MAX_SQL_LEN {
        return Err(invalid(&format!(
            "statement too long: {} bytes (at most {MAX_SQL_LEN})",
            sql.len()
        )));
    }
    Ok(())
}

/// An `InvalidInput` error.
fn invalid(message: &str) -> Error {
    Error::InvalidInput(message.to_string())
}

/// Tracks which of a client statement's parameters have been bound, across the SQL statements
/// its text contains: positional values are consumed in order, named ones may be used by
/// several.
#[derive(Debug)]
pub(crate) struct Binder<'a> {
    /// The client statement's parameters.
    params: &'a Params,
    /// The next positional value to bind.
    next: usize,
    /// Which named values have been bound at least once.
    used: Vec<bool>,
}

impl<'a> Binder<'a> {
    /// Starts binding `params`.
    pub(crate) fn new(params: &'a Params) -> Self {
        let used = match params {
            Params::Named(named) => vec![false; named.len()],
            _ => Vec::new(),
        };
        Binder { params, next: 0, used }
    }

    /// Binds the parameters one prepared statement needs. The error is a message for the
    /// statement's result.
    pub(crate) fn bind(
        &mut self,
        stmt: &mut rusqlite::Statement<'_>,
    ) -> std::result::Result<(), String> {
        let count = stmt.parameter_count();
        match self.params {
            Params::None if count > 0 => {
                return Err(format!("statement has {count} parameters, but none were given"));
            }
            Params::None => {}
            Params::Positional(values) => {
                let available = values.len() - self.next;
                if count > available {
                    return Err(format!(
                        "statement has {} parameters, but {} were given",
                        self.next + count,
                        values.len()
                    ));
                }
                for (i, value) in values[self.next..self.next + count].iter().enumerate() {
                    stmt.raw_bind_parameter(i + 1, value).map_err(|e| e.to_string())?;
                }
                self.next += count;
            }
            Params::Named(named) => {
                for index in 1..=count {
                    let name = stmt.parameter_name(index).map(str::to_string);
                    let Some(name) = name.filter(|n| n.starts_with([':', '@', '$'])) else {
                        return Err(format!(
                            "parameter {index} has no name, but parameters were given by name"
                        ));
                    };
                    let Some(i) = named.iter().position(|(n, _)| *n == name[1..]) else {
                        return Err(format!("no value given for parameter {name}"));
                    };
                    stmt.raw_bind_parameter(index, &named[i].1).map_err(|e| e.to_string())?;
                    self.used[i] = true;
                }
            }
        }
        Ok(())
    }

    /// Checks, after the last SQL statement, that every given parameter was used.
    pub(crate) fn finish(&self) -> std::result::Result<(), String> {
        match self.params {
            Params::Positional(values) if self.next < values.len() => Err(format!(
                "statement has {} parameters, but {} were given",
                self.next,
                values.len()
            )),
            Params::Named(named) => match self.used.iter().position(|used| !used) {
                Some(i) => Err(format!("parameter {} is not used by the statement", named[i].0)),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use test_case::test_case;

    use super::*;

    #[test_case(json!({"a": 1}), "invalid request"; "object body")]
    #[test_case(json!("SELECT 1"), "invalid request"; "string body")]
    #[test_case(json!([]), "no statements"; "empty array")]
    #[test_case(json!([[]]), "no statements"; "empty inner array")]
    #[test_case(json!([[1, 2]]), "invalid request"; "inner array without sql")]
    #[test_case(json!([1]), "invalid request"; "number element")]
    #[test_case(json!([["SELECT ?", {"a": {"b": 1}}]]), "unsupported type"; "nested object")]
    #[test_case(json!([["SELECT ?", [1, 256]]]), "unsupported type"; "byte out of range")]
    #[test_case(json!([["SELECT ?", ["a"]]]), "unsupported type"; "array of strings")]
    #[test_case(json!([["SELECT ?, :a", 1, {"a": 2}]]), "mixing positional and named parameters in one statement is not supported"; "mixed")]
    fn parse_errors(body: serde_json::Value, message: &str) {
        match parse_statements(&body) {
            Err(Error::InvalidInput(m)) => assert_eq!(m, message),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parse_forms() {
        let body = json!([
            "CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT)",
            ["INSERT INTO foo(name, age) VALUES(?, ?)", "fiona", 20],
            ["INSERT INTO foo(name, age) VALUES(:name, :age)", {"name": "fiona", "age": 20.5}],
            ["SELECT * FROM foo"],
            ["SELECT ?, ?, ?, ?, ?, ?, ?", true, null, "x'DEADbeef'", "x'abc'", [1, 2, 255], 1.0, 9223372036854775808u64]
        ]);
        let statements = parse_statements(&body).unwrap();
        assert_eq!(
            statements[0],
            Statement::new("CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT)")
        );
        assert_eq!(
            statements[1].params,
            Params::Positional(vec![Value::Text("fiona".into()), Value::Integer(20)])
        );
        // Object keys come in serde_json's map order; compare sorted.
        let Params::Named(mut named) = statements[2].params.clone() else { panic!("not named") };
        named.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            named,
            vec![("age".into(), Value::Real(20.5)), ("name".into(), Value::Text("fiona".into()))]
        );
        assert_eq!(statements[3], Statement::new("SELECT * FROM foo"));
        assert_eq!(
            statements[4].params,
            Params::Positional(vec![
                Value::Integer(1),
                Value::Null,
                Value::Blob(vec![0xde, 0xad, 0xbe, 0xef]),
                Value::Text("x'abc'".into()),
                Value::Blob(vec![1, 2, 255]),
                Value::Real(1.0),
                Value::Real(9223372036854775808.0),
            ])
        );
    }

    #[test]
    fn limits() {
        let many = serde_json::Value::Array(vec![json!("SELECT 1"); MAX_STATEMENTS + 1]);
        assert!(matches!(parse_statements(&many), Err(Error::InvalidInput(_))));
        let exactly = serde_json::Value::Array(vec![json!("SELECT 1"); MAX_STATEMENTS]);
        assert_eq!(parse_statements(&exactly).unwrap().len(), MAX_STATEMENTS);
        let long = format!("SELECT '{}'", "a".repeat(MAX_SQL_LEN));
        assert!(matches!(parse_statements(&json!([long])), Err(Error::InvalidInput(_))));
        assert!(matches!(statements_from_text(&long), Err(Error::InvalidInput(_))));
        assert!(matches!(statements_from_text("  "), Err(Error::InvalidInput(_))));
        assert_eq!(statements_from_text("SELECT 1").unwrap(), vec![Statement::new("SELECT 1")]);
    }

    #[test_case("x''", Some(vec![]))]
    #[test_case("X'00ff'", Some(vec![0, 255]))]
    #[test_case("x'0'", None)]
    #[test_case("x'zz'", None)]
    #[test_case("x'00", None)]
    #[test_case("'00'", None)]
    fn hex_blobs(s: &str, expect: Option<Vec<u8>>) {
        assert_eq!(hex_blob(s), expect);
    }
}
