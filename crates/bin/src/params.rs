//! Query-string parameters as rqlite reads them (`http/query_params.go`, `NewQueryParams`).
//!
//! rqlite checks a request's query string before it looks at the path, and refuses the request
//! with 400 when
//!
//! * the query string is not valid form encoding (Go's `url.ParseQuery`: a bad `%` escape, or
//!   a `;` in a key),
//! * `freshness_strict` is given without `freshness`,
//! * `timeout`, `freshness`, `db_timeout` or `linearizable_timeout` is not a Go duration
//!   (`500ms`, `1h30m`; a bare number other than `0` is not one),
//! * `retries` or `trailing_logs` is not an integer,
//! * `q` is present but empty.
//!
//! [`validate`] makes the same checks with the same messages, and `serve::front` runs it for
//! every request of the client API, before authentication, as rqlite does. The pairs it decoded
//! travel with the request, so handlers ([`crate::http::Params`]) do not decode them again. Every other parameter,
//! known or not, is accepted whatever its value; what each one does in Keel is listed in
//! `docs/http-api.md` ("Query parameters"). Handlers then read parameters with
//! [`crate::http::Params`], whose durations use [`go_duration`] too.
//!
//! Deliberately not done: rejecting parameters rqlite does not know (rqlite ignores them), and
//! rqlite's plain-text error body: Keel answers every 400 as `{"error": "<rqlite's message>"}`.

use std::time::Duration;

/// Parameters whose value must be a Go duration.
pub const DURATIONS: [&str; 4] = ["timeout", "freshness", "db_timeout", "linearizable_timeout"];
/// Parameters whose value must be an integer.
pub const INTEGERS: [&str; 2] = ["retries", "trailing_logs"];

/// Checks a raw query string as rqlite's `NewQueryParams` does and returns its decoded pairs
/// ([`parse`]); `Err` holds rqlite's message.
pub fn validate(query: &str) -> Result<Vec<(String, String)>, String> {
    let pairs = parse(query)?;
    // rqlite keeps the first value of a repeated key.
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    if get("freshness_strict").is_some() && get("freshness").is_none() {
        return Err("freshness_strict requires freshness".into());
    }
    for key in DURATIONS {
        if let Some(value) = get(key)
            && go_duration(value).is_err()
        {
            return Err(format!("{key} is not a valid duration"));
        }
    }
    for key in INTEGERS {
        if let Some(value) = get(key)
            && value.parse::<i64>().is_err()
        {
            return Err(format!("{key} is not a valid integer"));
        }
    }
    if get("q") == Some("") {
        return Err("query parameter not set".into());
    }
    Ok(pairs)
}

/// Splits and decodes a query string as Go's `url.ParseQuery`: `&`-separated `key=value` pairs
/// (`=value` optional), `+` is a space, `%XX` a byte. The first error is returned, as Go does.
pub fn parse(query: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut first_error = None;
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        if key.contains(';') {
            first_error.get_or_insert_with(|| "invalid semicolon separator in query".to_string());
            continue;
        }
        match (unescape(key), unescape(value)) {
            (Ok(k), Ok(v)) => pairs.push((k, v)),
            (Err(e), _) | (_, Err(e)) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(pairs),
    }
}

/// Decodes one form-encoded component (Go's `url.QueryUnescape`).
fn unescape(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => {
                        let end = (i + 3).min(bytes.len());
                        let escape = String::from_utf8_lossy(&bytes[i..end]);
                        return Err(format!("invalid URL escape {escape:?}"));
                    }
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Parses a duration as Go's `time.ParseDuration`: an optional sign, then `0` or a sequence of
/// decimal numbers each with a unit (`ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`), such as
/// `300ms`, `1.5h` or `2h45m`. A negative duration is accepted, as Go does, and means zero.
pub fn go_duration(s: &str) -> Result<Duration, ()> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(());
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or(())?;
        let (number, tail) = rest.split_at(number_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(());
        }
        let value: f64 = number.parse().map_err(|_| ())?;
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(()),
        };
        nanos += value * scale;
        rest = tail;
    }
    // Go's limit: about 292 years.
    if nanos > i64::MAX as f64 {
        return Err(());
    }
    if negative {
        return Ok(Duration::ZERO);
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case("500ms", Some(Duration::from_millis(500)))]
    #[test_case("2h45m", Some(Duration::from_secs(9900)))]
    #[test_case("1.5s", Some(Duration::from_millis(1500)))]
    #[test_case("1µs", Some(Duration::from_micros(1)); "microseconds")]
    #[test_case("0", Some(Duration::ZERO))]
    #[test_case("-1s", Some(Duration::ZERO))]
    #[test_case("+3m", Some(Duration::from_secs(180)))]
    #[test_case(".5s", Some(Duration::from_millis(500)))]
    #[test_case("3", None; "bare number")]
    #[test_case("", None; "empty")]
    #[test_case("soon", None)]
    #[test_case("5 s", None; "space")]
    #[test_case("1d", None; "days are not a Go unit")]
    #[test_case("1..5s", None)]
    #[test_case("1s2", None; "trailing number")]
    #[test_case("3000000h", None; "overflow")]
    fn durations(input: &str, expected: Option<Duration>) {
        assert_eq!(go_duration(input).ok(), expected);
    }

    #[test_case("q=SELECT+1&pretty", Ok(()))]
    #[test_case("level=nonsense&noparse&norwrandom&blob_array&qualify_columns", Ok(()))]
    #[test_case("retries=3&trailing_logs=-2&linearizable_timeout=2s", Ok(()))]
    #[test_case("freshness_strict", Err("freshness_strict requires freshness"))]
    #[test_case("freshness=1s&freshness_strict", Ok(()))]
    #[test_case("timeout=5", Err("timeout is not a valid duration"))]
    #[test_case("freshness=x", Err("freshness is not a valid duration"))]
    #[test_case("db_timeout=soon", Err("db_timeout is not a valid duration"))]
    #[test_case("linearizable_timeout=", Err("linearizable_timeout is not a valid duration"))]
    #[test_case("retries=two", Err("retries is not a valid integer"))]
    #[test_case("trailing_logs=1.5", Err("trailing_logs is not a valid integer"))]
    #[test_case("q=", Err("query parameter not set"))]
    #[test_case("q", Err("query parameter not set"); "q without value")]
    #[test_case("timeout=1s&timeout=bad", Ok(()); "first value counts")]
    #[test_case("a%zz=1", Err("invalid URL escape \"%zz\""))]
    #[test_case("a=%4", Err("invalid URL escape \"%4\""))]
    #[test_case("a;b=1", Err("invalid semicolon separator in query"))]
    fn validation(query: &str, expected: Result<(), &str>) {
        assert_eq!(validate(query).map(drop), expected.map_err(str::to_string));
    }

    #[test]
    fn decoding() {
        assert_eq!(
            parse("q=SELECT+%2A+FROM+t&&pretty").unwrap(),
            vec![("q".into(), "SELECT * FROM t".into()), ("pretty".into(), String::new())]
        );
    }
}
