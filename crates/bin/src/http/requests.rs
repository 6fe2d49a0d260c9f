//! `GET /db/requests/{request_id}`: what became of the write that carried a request id
//! ([`node::Node::request_outcome`]), on any node.
//!
//! Answers `{"status": "applied", "lsn": N, "results": […]}` (the results rendered as the
//! original answer's, honouring `associative`, `blob_array` and `timings`),
//! `{"status": "not_applied", "as_of_lsn": M}`, or 410 with `first_lsn` (the oldest log index
//! whose answers are kept) and `applied_index` when the id's answer may have been pruned.
//! `?after_lsn=K` says the write was sent after its client had seen lsn `K`; `?timeout=`
//! bounds the read-index round (default 5 s).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use keel_api::ErrorAnswer;
use node::RequestOutcome;
use serde_json::json;

use super::{Node, Params, bad_request, json_response, node_error};

/// The handler (see the module docs).
pub(crate) async fn outcome(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(p): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(p);
    let after = match p.get("after_lsn").map(str::parse::<wal::Lsn>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return bad_request("after_lsn must be a log index (a whole number)"),
    };
    let timeout = match p.duration("timeout") {
        Ok(t) => t,
        Err(r) => return r,
    };
    let pretty = p.has("pretty");
    match node.request_outcome(&id, after, timeout).await {
        Ok(RequestOutcome::Applied { lsn, results }) => {
            let format = p.format();
            let results: Vec<_> = results.iter().map(|r| r.to_json(&format, false)).collect();
            let body = json!({ "status": "applied", "lsn": lsn, "results": results });
            json_response(StatusCode::OK, &body, pretty)
        }
        Ok(RequestOutcome::NotApplied { as_of }) => {
            let body = json!({ "status": "not_applied", "as_of_lsn": as_of });
            json_response(StatusCode::OK, &body, pretty)
        }
        Ok(RequestOutcome::Pruned { oldest_kept, as_of }) => {
            let message = format!(
                "request {id:?} is not among the answers kept (log indexes {oldest_kept} to {as_of}): a write sent before lsn {oldest_kept} could have been applied and its answer pruned since; pass after_lsn (an lsn seen before sending it) if it was sent later"
            );
            let body = ErrorAnswer {
                first_lsn: Some(oldest_kept),
                applied_index: Some(as_of),
                ..ErrorAnswer::new(message)
            };
            json_response(StatusCode::GONE, &body, pretty)
        }
        Err(e) => node_error(e, pretty),
    }
}
