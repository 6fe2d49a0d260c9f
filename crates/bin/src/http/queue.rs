//! Queued writes over HTTP: `POST /db/execute?queue[&wait]` puts a request on the node's write
//! queue ([`node::queue`]), and `GET /db/queue/{sequence_number}` says how it ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use keel_api::queue::{self as wire, Queued};
use node::queue::{Lookup, Refused, Request, Seq};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{
    Body, Incoming, Node, Params, bad_request, error_response, json_response, unavailable,
};

/// How long `wait` waits for the request's batch unless `timeout=` says otherwise (rqlite's
/// `defaultTimeout`).
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// `POST /db/execute?queue[&wait]`: validates and queues the request, answering at once (or,
/// with `wait`, once its batch is flushed). rqlite: `http/service.go`, `queuedExecute`.
pub(crate) async fn enqueue(node: &Node, p: &Params, req: &Incoming) -> Response {
    // rqlite checks for a leader first, so that a node cut off from its cluster does not
    // accept writes it cannot flush.
    if !p.has("noleader") && node.leader_member().is_none() {
        return unavailable("leader not found");
    }
    let wait = p.has("wait");
    let timeout = match p.duration("timeout") {
        Ok(t) => t.unwrap_or(WAIT_TIMEOUT),
        Err(r) => return r,
    };
    let db_timeout = match p.duration("db_timeout") {
        Ok(t) => t,
        Err(r) => return r,
    };
    // Validated as `/db/execute` validates it, so a malformed request is a 400 now rather than
    // a failure at flush time.
    let body = match Body::decode(&req.headers, &req.body) {
        Ok(body) => body,
        Err(r) => return r,
    };
    let statements = if body.is_empty() {
        // rqlite lets an empty request through with `wait`: a checkpoint that returns once
        // everything queued before it is flushed.
        if !wait {
            return bad_request("no statements");
        }
        Value::Array(Vec::new())
    } else if let Err(r) = body.statements() {
        return r;
    } else {
        body.into_json()
    };
    let request = Request {
        seq: 0,
        statements,
        transaction: p.has("transaction"),
        db_timeout_ms: db_timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        request_id: p.get("request_id").unwrap_or_default().to_string(),
    };
    let (waiter, outcome) = if wait {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let start = Instant::now();
    let seq = match node.queue().push(request, waiter) {
        Ok(seq) => seq,
        Err(Refused::Full) => {
            node.metrics().queue_refused.inc();
            return unavailable(format!(
                "write queue full ({} requests waiting, --write-queue-capacity); nothing was queued, retry later",
                node.queue().options().capacity
            ));
        }
        Err(Refused::Closing) => {
            return unavailable("the node is shutting down; nothing was queued");
        }
    };
    node.metrics().queue_accepted.inc();
    node.metrics().queue_depth.inc();
    let mut body = Queued::new(seq);
    if let Some(outcome) = outcome {
        match tokio::time::timeout(timeout, outcome).await {
            // With `wait`: Keel adds the lsn of a committed write, and the error of a failed one.
            Ok(Ok(outcome)) => body = body.with_outcome(&outcome),
            Ok(Err(_)) => {
                return unavailable(format!(
                    "the node stopped before queued write {seq} was flushed; it is lost"
                ));
            }
            // rqlite's answer; the write stays queued and may still commit.
            Err(_) => return error_response(StatusCode::REQUEST_TIMEOUT, "queue wait timeout"),
        }
    }
    if p.has("timings") {
        body.time = Some(start.elapsed().as_secs_f64());
    }
    json_response(StatusCode::OK, &body, p.has("pretty"))
}

/// `GET /db/queue/{sequence_number}`: how a queued write of this node ended.
///
/// `{"sequence_number": n, "state": "pending"}`, `{…, "state": "committed", "lsn": 17}` or
/// `{…, "state": "failed", "error": "…"}`; 404 for a number this node did not hand out since it
/// started, or whose outcome is older than the retention.
pub(crate) async fn outcome(State(node): State<Arc<Node>>, Path(n): Path<String>) -> Response {
    let Ok(seq) = n.parse::<Seq>() else {
        return bad_request(format!("{n} is not a sequence number"));
    };
    let state = match node.queue().lookup(seq) {
        Lookup::Pending => wire::State::Pending,
        Lookup::Done(outcome) => wire::State::from(outcome),
        Lookup::Unknown => {
            let r = node.queue().options().retention;
            return error_response(
                StatusCode::NOT_FOUND,
                format!(
                    "sequence number {seq} is unknown to node {}: it was not queued here since the node started, or its outcome has expired (outcomes are kept {} s, at most {})",
                    node.id(),
                    r.max_age.as_secs(),
                    r.max_outcomes
                ),
            );
        }
    };
    json_response(StatusCode::OK, &wire::Lookup { sequence_number: seq, state }, false)
}
