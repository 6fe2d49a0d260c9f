//! What a node says about its cluster, in rqlite's shapes: `/nodes`, `/leader`, `/readyz`,
//! `/join` (a starting node asking to be added) and `/metrics`. The facts come from the node
//! ([`node::health`], [`node::membership`]); this module only shapes them.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Incoming, Node, Params, bad_request, json_response, node_error, unavailable};

/// How long `/readyz`'s waits (`sync`, the database probe) take at most unless `timeout=` says
/// otherwise.
const READYZ_TIMEOUT: Duration = Duration::from_secs(30);

fn node_json(node: &Node, m: &raft::cluster::Member, leader: bool, reachable: bool) -> Value {
    json!({
        "id": m.id.to_string(),
        "api_addr": node.peers.api_url(&m.node, ""),
        "addr": m.node.raft_addr,
        "voter": m.voter,
        "reachable": reachable,
        "leader": leader,
    })
}

/// A member's replication progress as JSON (rqlite clients ignore the extra keys).
fn replication_entry(r: &node::health::Replication) -> Value {
    json!({
        "role": if r.voter { "follower" } else { "learner" },
        "matched_index": r.matched_index,
        "applied_index": r.applied_index,
        "lag_entries": r.lag_entries,
        "lag_ms": r.lag_ms,
    })
}

/// On the leader, each other member's replication progress; `null` elsewhere.
pub(crate) fn replication_json(node: &Node, s: &raft::cluster::State) -> Value {
    match node.replication_all(s) {
        None => Value::Null,
        Some(all) => Value::Object(
            all.iter().map(|(id, r)| (id.to_string(), replication_entry(r))).collect(),
        ),
    }
}

pub(crate) async fn nodes(
    State(node): State<Arc<Node>>,
    Query(p): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(p);
    let members = node.members(p.has("nonvoters")).await;
    let list = members.iter().map(|m| {
        let mut entry = node_json(&node, &m.member, m.leader, m.reachable);
        if let (Some(obj), Some(Value::Object(extra))) =
            (entry.as_object_mut(), m.replication.as_ref().map(replication_entry))
        {
            obj.extend(extra);
        }
        (m.member.id.to_string(), entry)
    });
    let body = if p.get("ver") == Some("2") {
        json!({ "nodes": list.map(|(_, n)| n).collect::<Vec<_>>() })
    } else {
        Value::Object(list.collect())
    };
    json_response(StatusCode::OK, &body, p.has("pretty"))
}

pub(crate) async fn get_leader(State(node): State<Arc<Node>>) -> Response {
    match raft::cluster::leader(&node.raft) {
        Some(m) => json_response(StatusCode::OK, &node_json(&node, &m, true, true), false),
        None => unavailable("leader not found"),
    }
}

/// `GET /readyz`, as rqlite's `handleReadyz`: a plain-text check list (`[+]node ok`, …), 200
/// when every check passes, else 503 ending at the first that fails. The checks are
/// [`node::Node::readiness`]'s.
pub(crate) async fn readyz(
    State(node): State<Arc<Node>>,
    Query(p): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(p);
    let timeout = match p.duration("timeout") {
        Ok(t) => t.unwrap_or(READYZ_TIMEOUT),
        Err(r) if !p.has("noleader") => return r,
        Err(_) => READYZ_TIMEOUT,
    };
    let r = node.readiness(p.has("noleader"), p.has("sync"), timeout).await;
    let lines = r.passed.iter().chain(&r.failed).map(|l| format!("[+]{l}"));
    let text = lines.collect::<Vec<_>>().join("\n");
    let status = if r.failed.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (status, text).into_response()
}

pub(crate) async fn join(
    State(node): State<Arc<Node>>,
    Query(p): Query<Vec<(String, String)>>,
    req: Incoming,
) -> Response {
    let p = Params(p);
    if let Some(r) = super::to_leader(&node, &p, &req).await {
        return r;
    }
    let request: node::membership::JoinRequest = match serde_json::from_slice(&req.body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid join request: {e}")),
    };
    match node.add(request).await {
        Ok(()) => json_response(StatusCode::OK, &json!({}), false),
        Err(e) => node_error(e, false),
    }
}

pub(crate) async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let text = node.metrics.render(&node.raft, &node.progress);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))],
        text,
    )
        .into_response()
}
