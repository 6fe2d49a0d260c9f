//! Fuzz target `http_body`: what a client sends to `/db/execute`, `/db/query` and `/db/request`.
//!
//! The input is a query string, a newline, and a request body:
//!
//! ```text
//! level=strong&durability=replicas:2&q=SELECT+1
//! [["INSERT INTO t VALUES(?, :x)", 1, {"x": "x'00ff'"}]]
//! ```
//!
//! (an input without a newline is all body). It is fed to what the HTTP layer (`keel`'s
//! `http::parse_body` and `Params`) calls on untrusted bytes, in the same order:
//!
//! * the query string through `serde_urlencoded` into `Vec<(String, String)>`, as axum's `Query`
//!   extractor does; then `durability=` through `leader`'s `Durability::from_str` (its module is compiled in
//!   directly: depending on the `leader` crate would build openraft and reqwest with coverage
//!   instrumentation, twenty minutes on two cores), `min_lsn=`
//!   as a log index, and `q=` through `sql::statements_from_text`;
//! * the body both ways `parse_body` may take it: as JSON (`serde_json::from_slice`, then
//!   `sql::parse_statements`) and as a `text/plain` body (UTF-8 check, then
//!   `sql::statements_from_text`). `parse_body` itself is private to the `keel` binary, so its
//!   two-line dispatch on the content type is replicated here; running both branches on every
//!   input covers either content type.
//!
//! Not reachable from a library, hence not fuzzed here: rqlite's query-string checks and the Go
//! duration parser of `timeout=`, `db_timeout=` and the like (`keel`'s `params::validate` and
//! `params::go_duration`, unit-tested there), the duration parser of `--` flags (`keel`'s
//! `parse_duration`) and the `level=` match (`node::Level::parse`), outside the crates fuzzed here.
//!
//! Errors are the expected answer to most inputs; the target checks that nothing panics and
//! that what parses respects the documented limits (`MAX_STATEMENTS`, `MAX_SQL_LEN`, no empty
//! request, a non-blank text statement).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/leader/src/durability.rs"]
mod durability;

fuzz_target!(|data: &[u8]| {
    let (query, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    query_string(query);
    json_body(body);
    text_body(body);
});

/// The query string, as `Query<Vec<(String, String)>>` and then `Params` read it.
fn query_string(query: &[u8]) {
    let Ok(query) = std::str::from_utf8(query) else {
        // A `Uri` is ASCII; axum never hands the extractor anything else.
        return;
    };
    let Ok(params) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) else {
        return;
    };
    for (key, value) in &params {
        match key.as_str() {
            "durability" => {
                if let Ok(durability) = value.parse::<durability::Durability>() {
                    // What is accepted is shown back to the client (metrics label, errors) and
                    // must read back as itself.
                    let shown = durability.to_string();
                    assert_eq!(shown.parse::<durability::Durability>(), Ok(durability), "{value:?}");
                    if let durability::Durability::Replicas(k) = durability {
                        assert!(k > 0, "replicas:0 accepted from {value:?}");
                    }
                }
            }
            "min_lsn" => {
                let _ = value.parse::<u64>();
            }
            "q" => check_text(value, sql::statements_from_text(value)),
            _ => {}
        }
    }
}

/// An `application/json` body (anything but `text/plain`).
fn json_body(body: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let Ok(statements) = sql::parse_statements(&value) else {
        return;
    };
    let serde_json::Value::Array(items) = &value else {
        panic!("statements parsed from a body that is not an array: {value}");
    };
    assert!(!statements.is_empty(), "an empty request was accepted");
    assert!(statements.len() <= sql::MAX_STATEMENTS, "{} statements accepted", statements.len());
    assert_eq!(statements.len(), items.len(), "one statement per element of the body");
    for statement in &statements {
        assert!(statement.sql.len() <= sql::MAX_SQL_LEN, "{} bytes of SQL", statement.sql.len());
        match &statement.params {
            sql::Params::None => {}
            sql::Params::Positional(values) => assert!(!values.is_empty()),
            sql::Params::Named(values) => assert!(!values.is_empty()),
        }
    }
}

/// A `text/plain` body.
fn text_body(body: &[u8]) {
    if let Ok(text) = std::str::from_utf8(body) {
        check_text(text, sql::statements_from_text(text));
    }
}

/// Checks what `statements_from_text` made of `text`.
fn check_text(text: &str, parsed: sql::Result<Vec<sql::Statement>>) {
    let Ok(statements) = parsed else {
        return;
    };
    assert!(!text.trim().is_empty(), "a blank statement was accepted");
    assert!(text.len() <= sql::MAX_SQL_LEN, "{} bytes of SQL", text.len());
    assert_eq!(statements, vec![sql::Statement::new(text)]);
}
