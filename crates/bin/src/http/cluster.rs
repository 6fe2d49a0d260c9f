//! What a node says about its cluster, in rqlite's shapes: `/nodes`, `/leader`, `/readyz`,
//! `/join` (a starting node asking to be added), `/notify` (a node waiting to form a cluster
//! with this one, `--bootstrap-expect`) and `/metrics`. The facts come from the node
//! ([`node::health`], [`node::membership`]); this module only shapes them.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_api::cluster::{Joined, NodeInfo, NodeList, NodeMap};

use super::{Incoming, Node, Params, bad_request, json_response, node_error, unavailable};

/// How long `/readyz`'s waits (`sync`, the database probe) take at most unless `timeout=` says
/// otherwise.
const READYZ_TIMEOUT: Duration = Duration::from_secs(30);

fn node_info(node: &Node, m: &raft::cluster::Member, leader: bool, reachable: bool) -> NodeInfo {
    NodeInfo {
        id: m.label(),
        api_addr: node.peers().api_url(&m.node, ""),
        addr: m.node.raft_addr.clone(),
        voter: m.voter,
        reachable,
        leader,
        replication: None,
    }
}

pub(crate) async fn nodes(
    State(node): State<Arc<Node>>,
    Query(p): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(p);
    let members = node.members(p.has("nonvoters")).await;
    let list = members.into_iter().map(|m| NodeInfo {
        replication: m.replication,
        ..node_info(&node, &m.member, m.leader, m.reachable)
    });
    if p.get("ver") == Some("2") {
        json_response(StatusCode::OK, &NodeList { nodes: list.collect() }, p.has("pretty"))
    } else {
        let map: NodeMap = list.map(|n| (n.id.clone(), n)).collect();
        json_response(StatusCode::OK, &map, p.has("pretty"))
    }
}

pub(crate) async fn get_leader(State(node): State<Arc<Node>>) -> Response {
    match node.leader_member() {
        Some(m) => json_response(StatusCode::OK, &node_info(&node, &m, true, true), false),
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
        Ok(()) => json_response(StatusCode::OK, &Joined {}, false),
        Err(e) => node_error(e, false),
    }
}

/// `POST /notify` (`--bootstrap-expect`): a node waiting to form a cluster with this one.
pub(crate) async fn notify(State(node): State<Arc<Node>>, req: Incoming) -> Response {
    let request: node::membership::JoinRequest = match serde_json::from_slice(&req.body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid notification: {e}")),
    };
    match node.notified(request).await {
        Ok(me) => json_response(StatusCode::OK, &me, false),
        Err(e) => node_error(e, false),
    }
}

pub(crate) async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let text = node.metrics_text();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))],
        text,
    )
        .into_response()
}
