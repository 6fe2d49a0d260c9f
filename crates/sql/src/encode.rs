//! Value encoding: SQLite rows to rqlite's JSON values and column types.
//!
//! Both read paths use it: `Readers::query` and rows-returning statements inside
//! `Db::execute` (for `/db/request`). [`read_rows`] steps a prepared statement to the end and
//! returns the column names, the column types and the rows as JSON values, following
//! `reference/rqlite-api.md` §4.2, i.e. what rqlite inherits from its Go SQLite driver:
//!
//! * `types` is the lower-cased declared type; a column without one (an expression) takes the
//!   kind of its value in the first row (`integer`, `real`, `text`, `blob`), or `""` when that
//!   value is NULL or there is no row.
//! * Declared type exactly `date`, `datetime` or `timestamp`: TEXT is parsed with the Go driver's
//!   layouts and re-emitted as RFC 3339 with nanoseconds (trailing zeros trimmed, UTC as `Z`);
//!   text that does not parse becomes `0001-01-01T00:00:00Z`; INTEGER is unix seconds
//!   (milliseconds when its magnitude exceeds 10^12). REAL is left alone.
//! * Declared type exactly `boolean` with INTEGER storage: `true` when the value is > 0.
//! * BLOB in a column whose type is text-like (`text`, `json`, `""`, `varchar…`, `clob…`, …) is
//!   emitted as a string (invalid UTF-8 replaced), so `SELECT x'41'` gives `"A"` of type `text`.
//! * Other BLOBs are kept as bytes. Inside [`crate::StatementResult::Rows`] they are stored as a
//!   JSON array of byte values (no other SQLite value encodes to an array), and
//!   [`crate::StatementResult::to_json`] renders them as base64 or keeps the array
//!   (`blob_array`). This keeps the result type plain JSON while deferring the choice.
//! * REAL: a finite value with no fractional part and magnitude below 2^53 is emitted as a JSON
//!   integer (`4.0` → `4`), as Go's encoder does; other values use the shortest form that reads
//!   back exactly. Infinity becomes `null` (JSON has no infinities).
//!
//! Column names are the statement's own; rqlite's `qualify_columns` (`table.column`) is applied
//! afterwards by the caller, from [`crate::Readers::column_tables`].

use crate::limits::ResultBudget;
use rusqlite::types::ValueRef;

/// Column names, column types and rows of one rows-returning statement.
pub(crate) struct Rows {
    /// Column names.
    pub(crate) columns: Vec<String>,
    /// rqlite column types, one per column.
    pub(crate) types: Vec<String>,
    /// Encoded rows.
    pub(crate) values: Vec<Vec<serde_json::Value>>,
}

/// Steps `stmt` (parameters already bound) to completion and encodes what it returns.
///
/// Every row is counted against `budget`; the first row over it stops the read with
/// [`ReadError::Limit`].
pub(crate) fn read_rows(
    stmt: &mut rusqlite::Statement<'_>,
    budget: &mut ResultBudget,
) -> Result<Rows, ReadError> {
    // Columns are read once the statement has stepped: a statement prepared before another
    // connection changed the schema is prepared again by its first step (`SELECT *` after
    // `ALTER TABLE … ADD COLUMN`), and until then describes the old columns.
    let mut described: Option<(Vec<String>, Vec<String>)> = None;
    let mut types = Vec::new();
    let mut values = Vec::new();
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next()? {
        let (_, decltypes) = described.get_or_insert_with(|| describe(row.as_ref()));
        let mut encoded = Vec::with_capacity(decltypes.len());
        let mut bytes = 0;
        for (i, decltype) in decltypes.iter().enumerate() {
            let value = row.get_ref(i)?;
            bytes += value_size(value);
            encoded.push(encode(value, decltype));
        }
        budget.take(bytes).map_err(ReadError::Limit)?;
        if values.is_empty() {
            // Values are encoded by their declared type; columns without one take the kind of
            // the first row's value.
            types = decltypes.clone();
            for (i, t) in types.iter_mut().enumerate() {
                if t.is_empty() {
                    *t = kind(row.get_ref(i)?).to_string();
                }
            }
        }
        values.push(encoded);
    }
    drop(rows);
    let (columns, decltypes) = described.unwrap_or_else(|| describe(stmt));
    if values.is_empty() {
        types = decltypes;
    }
    Ok(Rows { columns, types, values })
}

/// A statement's column names and lower-case declared types (empty when undeclared).
fn describe(stmt: &rusqlite::Statement<'_>) -> (Vec<String>, Vec<String>) {
    let columns = stmt.column_names().map(str::to_string).collect();
    let decltypes = stmt
        .columns()
        .map(|c| c.decl_type().map(str::to_ascii_lowercase).unwrap_or_default())
        .collect();
    (columns, decltypes)
}

/// Why [`read_rows`] stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// SQLite failed (or the statement was interrupted).
    Sqlite(rusqlite::Error),
    /// The result went over a limit; the message says which.
    Limit(String),
}

impl From<rusqlite::Error> for ReadError {
    fn from(error: rusqlite::Error) -> Self {
        ReadError::Sqlite(error)
    }
}

/// What one value counts against [`ResultBudget`]: its length for text and blobs, 8 bytes
/// otherwise.
fn value_size(value: ValueRef<'_>) -> usize {
    match value {
        ValueRef::Text(t) | ValueRef::Blob(t) => t.len(),
        _ => 8,
    }
}

/// The rqlite type of a value in a column without a declared type. A BLOB there is emitted as
/// text (see the module docs), so it is typed `text`, as in rqlite.
fn kind(value: ValueRef<'_>) -> &'static str {
    match value {
        ValueRef::Null => "",
        ValueRef::Integer(_) => "integer",
        ValueRef::Real(_) => "real",
        ValueRef::Text(_) | ValueRef::Blob(_) => "text",
    }
}

/// Encodes one SQLite value of a column with the given lower-cased declared type.
pub(crate) fn encode(value: ValueRef<'_>, decltype: &str) -> serde_json::Value {
    let is_time = matches!(decltype, "date" | "datetime" | "timestamp");
    match value {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) if is_time => serde_json::Value::String(format_unix(i)),
        ValueRef::Integer(i) if decltype == "boolean" => serde_json::Value::Bool(i > 0),
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => real(f),
        ValueRef::Text(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            if is_time {
                serde_json::Value::String(
                    parse_time(&text).map_or_else(|| ZERO_TIME.to_string(), |t| t.to_rfc3339()),
                )
            } else {
                serde_json::Value::String(text.into_owned())
            }
        }
        ValueRef::Blob(bytes) if is_text_type(decltype) => {
            serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned())
        }
        ValueRef::Blob(bytes) => blob(bytes),
    }
}

/// The internal representation of a BLOB inside `StatementResult::Rows`: an array of bytes.
pub(crate) fn blob(bytes: &[u8]) -> serde_json::Value {
    serde_json::Value::Array(bytes.iter().map(|&b| serde_json::Value::from(b)).collect())
}

/// Encodes a REAL the way Go's JSON encoder prints a float64 for the common cases.
fn real(f: f64) -> serde_json::Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if f.is_finite() && f.fract() == 0.0 && f.abs() < EXACT {
        serde_json::Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)
    }
}

/// Whether rqlite treats a declared type as text, so that BLOBs in it are emitted as strings.
fn is_text_type(decltype: &str) -> bool {
    matches!(decltype, "text" | "json" | "")
        || ["varchar", "varying character", "nchar", "native character", "nvarchar", "clob"]
            .iter()
            .any(|prefix| decltype.starts_with(prefix))
}

/// Go's zero `time.Time` in JSON, emitted for unparseable date text.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A point in time with the zone offset it was written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Time {
    /// Days since 1970-01-01 of the local date.
    days: i64,
    /// Seconds since local midnight.
    seconds: u32,
    /// Nanoseconds.
    nanos: u32,
    /// Offset from UTC in seconds (0 is written `Z`).
    offset: i32,
}

/// A time since the Unix epoch as Go's `time.Time` JSON form in UTC: RFC 3339 with nanoseconds,
/// trailing zeros trimmed (`2026-12-06T19:51:18.5Z`), as rqlite's `/status` shows times.
pub fn rfc3339_utc(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    Time {
        days: i64::try_from(secs / 86_400).unwrap_or(i64::MAX),
        seconds: u32::try_from(secs % 86_400).unwrap_or(0),
        nanos: since_epoch.subsec_nanos(),
        offset: 0,
    }
    .to_rfc3339()
}

impl Time {
    /// Formats like Go's `time.RFC3339Nano`, which is what `time.Time` marshals to in JSON.
    pub(crate) fn to_rfc3339(self) -> String {
        let (year, month, day) = civil_from_days(self.days);
        let (h, m, s) = (self.seconds / 3600, self.seconds / 60 % 60, self.seconds % 60);
        let mut out = if year < 0 {
            format!("-{:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}", -year)
        } else {
            format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}")
        };
        if self.nanos > 0 {
            let fraction = format!("{:09}", self.nanos);
            out.push('.');
            out.push_str(fraction.trim_end_matches('0'));
        }
        if self.offset == 0 {
            out.push('Z');
        } else {
            let sign = if self.offset < 0 { '-' } else { '+' };
            let minutes = self.offset.unsigned_abs() / 60;
            out.push_str(&format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60));
        }
        out
    }
}

/// Formats an INTEGER from a date column: unix seconds, or milliseconds when |v| > 10^12.
pub(crate) fn format_unix(value: i64) -> String {
    let (seconds, nanos) = if value.unsigned_abs() > 1_000_000_000_000 {
        (value.div_euclid(1000), (value.rem_euclid(1000) * 1_000_000) as u32)
    } else {
        (value, 0)
    };
    Time {
        days: seconds.div_euclid(86_400),
        seconds: seconds.rem_euclid(86_400) as u32,
        nanos,
        offset: 0,
    }
    .to_rfc3339()
}

/// Parses date text with the Go SQLite driver's layouts, tried in this order after stripping
/// one trailing `Z`: `2006-01-02 15:04:05.999999999-07:00`, the same with `T`,
/// `2006-01-02 15:04:05.999999999`, `2006-01-02T15:04:05.999999999`, `2006-01-02 15:04:05`,
/// `2006-01-02T15:04:05`, `2006-01-02 15:04`, `2006-01-02T15:04`, `2006-01-02`. As in Go, the
/// fraction is optional, may use `.` or `,`, and digits past nine are dropped; the hour may have
/// one digit; everything else has fixed width, and fields are range-checked.
pub(crate) fn parse_time(text: &str) -> Option<Time> {
    let text = text.strip_suffix('Z').unwrap_or(text);
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let year = digits(0..4)?;
    (b.get(4) == Some(&b'-') && b.get(7) == Some(&b'-')).then_some(())?;
    let (month, day) = (digits(5..7)?, digits(8..10)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let mut time = Time { days, seconds: 0, nanos: 0, offset: 0 };
    let mut i = 10;
    if i == b.len() {
        return Some(time);
    }
    if b[i] != b' ' && b[i] != b'T' {
        return None;
    }
    i += 1;
    // Hour: one or two digits.
    let hour_len = if b.get(i + 1).is_some_and(u8::is_ascii_digit) { 2 } else { 1 };
    let hour = digits(i..i + hour_len)?;
    i += hour_len;
    (b.get(i) == Some(&b':')).then_some(())?;
    let minute = digits(i + 1..i + 3)?;
    i += 3;
    if hour > 23 || minute > 59 {
        return None;
    }
    time.seconds = hour * 3600 + minute * 60;
    if i == b.len() {
        return Some(time);
    }
    (b[i] == b':').then_some(())?;
    let second = digits(i + 1..i + 3)?;
    i += 3;
    if second > 59 {
        return None;
    }
    time.seconds += second;
    if matches!(b.get(i), Some(b'.' | b',')) && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        let start = i + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        let kept = &text[start..end.min(start + 9)];
        time.nanos = kept.parse::<u32>().ok()? * 10u32.pow(9 - kept.len() as u32);
        i = end;
    }
    if i == b.len() {
        return Some(time);
    }
    // Zone offset ±hh:mm, only after seconds.
    let sign = match b[i] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    if b.len() != i + 6 || b[i + 3] != b':' {
        return None;
    }
    let (oh, om) = (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?);
    if oh > 24 || om > 60 {
        return None;
    }
    time.offset = sign * (oh * 3600 + om * 60) as i32;
    Some(time)
}

/// Whether `year` is a leap year in the proleptic Gregorian calendar.
fn is_leap(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

/// The number of days in a month.
fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day number since 1970-01-01 (inverse of the above).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    #[test_case("2004-02-14 07:15:00", "2004-02-14T07:15:00Z")]
    #[test_case("2004-02-14T07:15:00Z", "2004-02-14T07:15:00Z")]
    #[test_case("2004-02-14 07:15:00.123400", "2004-02-14T07:15:00.1234Z")]
    #[test_case("2004-02-14 07:15:00,5", "2004-02-14T07:15:00.5Z")]
    #[test_case("2004-02-14 07:15:00.1234567891", "2004-02-14T07:15:00.123456789Z")]
    #[test_case("2004-02-14 07:15:00-05:00", "2004-02-14T07:15:00-05:00")]
    #[test_case("2004-02-14T07:15:00.5+01:30", "2004-02-14T07:15:00.5+01:30")]
    #[test_case("2004-02-14 07:15:00+00:00", "2004-02-14T07:15:00Z")]
    #[test_case("2004-02-14 7:15", "2004-02-14T07:15:00Z")]
    #[test_case("2004-02-14T07:15", "2004-02-14T07:15:00Z")]
    #[test_case("2004-02-29", "2004-02-29T00:00:00Z")]
    #[test_case("2003-02-29", ZERO_TIME; "no leap day")]
    #[test_case("2004-13-01", ZERO_TIME; "month")]
    #[test_case("2004-02-14 24:00", ZERO_TIME; "hour")]
    #[test_case("2004-02-14 07:15-05:00", ZERO_TIME; "offset needs seconds")]
    #[test_case("2004-2-14", ZERO_TIME; "short month")]
    #[test_case("2004-02-14 07:15:00 extra", ZERO_TIME; "trailing")]
    #[test_case("yesterday", ZERO_TIME; "garbage")]
    #[test_case("", ZERO_TIME; "empty")]
    fn time_text(text: &str, expect: &str) {
        assert_eq!(encode(ValueRef::Text(text.as_bytes()), "datetime"), expect);
    }

    #[test_case(0, "1970-01-01T00:00:00Z")]
    #[test_case(1_076_742_900, "2004-02-14T07:15:00Z")]
    #[test_case(1_076_742_900_123, "2004-02-14T07:15:00.123Z"; "milliseconds")]
    #[test_case(-1, "1969-12-31T23:59:59Z")]
    fn time_integer(value: i64, expect: &str) {
        assert_eq!(encode(ValueRef::Integer(value), "timestamp"), expect);
    }

    #[test]
    fn calendar_roundtrip() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn scalars() {
        use serde_json::json;
        assert_eq!(encode(ValueRef::Integer(1), "boolean"), json!(true));
        assert_eq!(encode(ValueRef::Integer(0), "boolean"), json!(false));
        assert_eq!(encode(ValueRef::Integer(-1), "boolean"), json!(false));
        assert_eq!(encode(ValueRef::Integer(7), "integer"), json!(7));
        assert_eq!(encode(ValueRef::Real(4.0), "real"), json!(4));
        assert_eq!(encode(ValueRef::Real(4.5), "real"), json!(4.5));
        assert_eq!(encode(ValueRef::Real(1e300), "real"), json!(1e300));
        assert_eq!(encode(ValueRef::Real(f64::INFINITY), "real"), json!(null));
        assert_eq!(encode(ValueRef::Real(2.5), "datetime"), json!(2.5));
        assert_eq!(encode(ValueRef::Blob(b"AB"), "blob"), json!([65, 66]));
        assert_eq!(encode(ValueRef::Blob(b"AB"), "varchar(10)"), json!("AB"));
        assert_eq!(encode(ValueRef::Blob(&[0xff]), ""), json!("\u{fffd}"));
        assert_eq!(encode(ValueRef::Text(b"x"), "text"), json!("x"));
        assert_eq!(encode(ValueRef::Null, "datetime"), json!(null));
    }
}
