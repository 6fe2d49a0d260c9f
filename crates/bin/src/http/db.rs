//! `/db/execute`, `/db/query` and `/db/request`: rqlite's query parameters into the node's
//! typed calls ([`node::WriteCall`], [`node::ReadCall`]), and the answers into rqlite's
//! envelope (`results`, plus Keel's `lsn`).
//!
//! - A write (and `/db/request` with one) is routed first ([`super::to_leader`]): on a node
//!   that does not lead it is forwarded to the leader (or answered 301 with `?redirect`)
//!   before the body is even parsed. On the leader it runs through [`node::Node::write`]; if
//!   leadership is lost before the append (nothing was written), it is routed again to
//!   whoever leads now, a few times.
//! - A read runs through [`node::Node::read`]; `weak` and `strong` on a node that does not
//!   lead come back as [`node::Error::NotLeader`] and are forwarded the same way.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::{
    Incoming, Node, Params, bad_request, error_response, json_body, json_response, node_error,
};

/// How many times a write is routed again after leadership moved before it was appended.
const REROUTES: u32 = 3;

/// rqlite's envelope of a database answer: `results`, `lsn`, and `time` and `raft_index` when
/// asked for. Compact answers are written straight into one buffer
/// ([`sql::StatementResult::write_json`]), with the bytes the value below would give;
/// `?pretty` ones go through the value.
fn db_answer(
    results: &[sql::StatementResult],
    in_request: bool,
    lsn: wal::Lsn,
    p: &Params,
    start: Instant,
) -> Response {
    let format = p.format();
    if p.has("pretty") {
        let results: Vec<Value> = results.iter().map(|r| r.to_json(&format, in_request)).collect();
        let mut body = json!({ "results": results, "lsn": lsn });
        if p.has("timings") {
            body["time"] = json!(start.elapsed().as_secs_f64());
        }
        if p.has("raft_index") {
            body["raft_index"] = json!(lsn);
        }
        return json_response(StatusCode::OK, &body, true);
    }
    // The keys in serde_json's (sorted) order: lsn, raft_index, results, time.
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(b"{\"lsn\":");
    put(&mut body, &lsn);
    if p.has("raft_index") {
        body.extend_from_slice(b",\"raft_index\":");
        put(&mut body, &lsn);
    }
    body.extend_from_slice(b",\"results\":[");
    for (i, result) in results.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        result.write_json(&format, in_request, &mut body);
    }
    body.push(b']');
    if p.has("timings") {
        body.extend_from_slice(b",\"time\":");
        put(&mut body, &start.elapsed().as_secs_f64());
    }
    body.push(b'}');
    json_body(body)
}

/// Appends a number as JSON.
fn put(body: &mut Vec<u8>, n: &impl serde::Serialize) {
    serde_json::to_writer(body, n).expect("numbers serialize");
}

pub(crate) async fn execute(State(node): State<Arc<Node>>, p: Params, req: Incoming) -> Response {
    if p.has("queue") {
        return super::queue::enqueue(&node, &p, &req).await;
    }
    served_by(&node, write(&node, &p, &req, false, Instant::now()).await)
}

/// Marks a database answer with `X-RQLITE-SERVED-BY`: the Raft address of the node that ran
/// it. A forwarded answer keeps the leader's; errors other than per-statement ones get none.
fn served_by(node: &Node, mut response: Response) -> Response {
    let ok = response.status() == StatusCode::OK;
    let headers = response.headers_mut();
    if ok
        && !headers.contains_key(crate::headers::SERVED_BY)
        && let Ok(addr) = HeaderValue::from_str(&node.me().raft_addr)
    {
        headers.insert(crate::headers::SERVED_BY, addr);
    }
    response
}

/// Routes a write to the leader and runs it there (see the module docs).
async fn write(node: &Node, p: &Params, req: &Incoming, rows: bool, start: Instant) -> Response {
    let durability = match p.durability(node.durability()) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let db_timeout = match p.duration("db_timeout") {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut attempts = 0;
    loop {
        if let Some(r) = super::to_leader(node, p, req).await {
            return r;
        }
        let statements = match super::parse_body(&req.headers, &req.body) {
            Ok(s) => s,
            Err(r) => return r,
        };
        let call = node::WriteCall {
            request: sql::WriteRequest {
                statements,
                transaction: p.has("transaction"),
                rows,
                request_id: p.get("request_id").map(str::to_string),
                timeout: db_timeout,
            },
            durability,
            qualify_columns: p.has("qualify_columns"),
            received: start,
        };
        match node.write(call).await {
            Ok(outcome) => {
                return db_answer(&outcome.results, rows, outcome.lsn, p, start);
            }
            Err(node::Error::Leader(leader::Error::NotLeader { .. })) if attempts < REROUTES => {
                attempts += 1
            }
            Err(e) => {
                if let node::Error::Leader(e @ leader::Error::NotLeader { .. }) = &e {
                    node.count_error(e);
                }
                return node_error(e, p.has("pretty"));
            }
        }
    }
}

pub(crate) async fn query(State(node): State<Arc<Node>>, p: Params, req: Incoming) -> Response {
    let start = Instant::now();
    let statements = if req.method == Method::GET {
        match p.get("q") {
            Some(q) if !q.is_empty() => match sql::statements_from_text(q) {
                Ok(s) => s,
                Err(e) => return bad_request(e),
            },
            _ => return bad_request("query parameter not set"),
        }
    } else {
        match super::parse_body(&req.headers, &req.body) {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
    served_by(&node, read(&node, &p, &req, statements, false, start).await)
}

/// The read call a request's parameters ask for; a malformed parameter is a 400.
fn read_call(p: &Params, statements: Vec<sql::Statement>) -> Result<node::ReadCall, Response> {
    let db_timeout = p.duration("db_timeout")?;
    let freshness = p.duration("freshness")?;
    if p.has("freshness_strict") && freshness.is_none() {
        return Err(bad_request("freshness_strict requires freshness"));
    }
    let min_lsn = match p.get("min_lsn").map(str::parse::<wal::Lsn>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Err(bad_request("min_lsn must be a log index (a whole number)")),
    };
    let level = node::Level::parse(p.get("level"));
    let timeout = p.duration("timeout")?;
    Ok(node::ReadCall {
        statements,
        transaction: p.has("transaction"),
        level,
        freshness,
        freshness_strict: p.has("freshness_strict"),
        min_lsn,
        timeout,
        // Only a linearizable read looks at it (as before: a bad value elsewhere is ignored).
        linearizable_timeout: match level {
            node::Level::Linearizable => p.duration("linearizable_timeout")?,
            _ => None,
        },
        db_timeout,
        qualify_columns: p.has("qualify_columns"),
    })
}

async fn read(
    node: &Node,
    p: &Params,
    req: &Incoming,
    statements: Vec<sql::Statement>,
    in_request: bool,
    start: Instant,
) -> Response {
    let call = match read_call(p, statements) {
        Ok(call) => call,
        Err(r) => return r,
    };
    match node.read(call).await {
        Ok(outcome) => db_answer(&outcome.results, in_request, outcome.lsn, p, start),
        Err(node::Error::NotLeader { leader }) => super::to(node, p, req, &leader).await,
        Err(e) => node_error(e, p.has("pretty")),
    }
}

pub(crate) async fn request(State(node): State<Arc<Node>>, p: Params, req: Incoming) -> Response {
    let start = Instant::now();
    let statements = match super::parse_body(&req.headers, &req.body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (statements, read_only) = match node.is_read_only(statements).await {
        Ok(v) => v,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if read_only {
        return served_by(&node, read(&node, &p, &req, statements, true, start).await);
    }
    served_by(&node, write(&node, &p, &req, true, start).await)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn call(pairs: &[(&str, &str)]) -> Result<node::ReadCall, StatusCode> {
        let p = Params(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        read_call(&p, vec![sql::Statement::new("SELECT 1")]).map_err(|r| r.status())
    }

    #[test]
    fn read_parameters_become_a_read_call() {
        let c = call(&[]).unwrap();
        assert_eq!(c.level, node::Level::Weak, "rqlite: no level means weak");
        assert_eq!((c.freshness, c.min_lsn, c.timeout), (None, None, None));

        let c = call(&[
            ("level", "LINEARIZABLE"),
            ("linearizable_timeout", "250ms"),
            ("min_lsn", "42"),
            ("timeout", "2s"),
            ("db_timeout", "1s"),
            ("transaction", ""),
            ("qualify_columns", ""),
        ])
        .unwrap();
        assert_eq!(c.level, node::Level::Linearizable);
        assert_eq!(c.linearizable_timeout, Some(Duration::from_millis(250)));
        assert_eq!(c.min_lsn, Some(42));
        assert_eq!(c.timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.db_timeout, Some(Duration::from_secs(1)));
        assert!(c.transaction && c.qualify_columns);

        let c = call(&[("level", "none"), ("freshness", "1s"), ("freshness_strict", "")]).unwrap();
        assert_eq!((c.level, c.freshness), (node::Level::None, Some(Duration::from_secs(1))));
        assert!(c.freshness_strict);
        assert_eq!(call(&[("level", "auto")]).unwrap().level, node::Level::Auto);
        // Only a linearizable read looks at linearizable_timeout.
        assert!(call(&[("linearizable_timeout", "x")]).is_ok());
    }

    #[test]
    fn bad_read_parameters_are_400s() {
        for bad in [
            &[("freshness_strict", "")][..],
            &[("min_lsn", "-1")],
            &[("min_lsn", "later")],
            &[("freshness", "fresh")],
            &[("timeout", "5 minutes")],
            &[("db_timeout", "x")],
            &[("level", "linearizable"), ("linearizable_timeout", "x")],
        ] {
            assert_eq!(call(bad).err(), Some(StatusCode::BAD_REQUEST), "{bad:?}");
        }
    }
}
