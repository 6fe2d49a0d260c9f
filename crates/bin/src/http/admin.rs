//! Operator routes: leadership transfer and membership changes ([`node::membership`]).
//!
//! Every route needs the leader: on another node the request is forwarded to it before the
//! body is parsed ([`super::to_leader`]), so any member's address works.
//!
//! - `POST /admin/promote?node=ID`: make node ID the leader ([`node::Node::make_leader`]). A
//!   learner is made a voter first. Naming the current leader changes nothing. Answer:
//!   `{"leader": ID, "term": T}`.
//! - `POST /leader` (rqlite's step-down), optional body `{"id": "<node id>"}`: the same; without
//!   an id, leadership goes to the most caught-up reachable voter ([`node::Node::step_down`]).
//! - `POST /admin/membership`, body `{"action": "add-voter" | "add-learner" | "promote" |
//!   "demote", "id": N, "raft_addr": "…", "http_addr": "…"}` (addresses for `add-*` only):
//!   add a voter or a learner, turn a learner into a voter or a voter into a learner. Answer:
//!   `{"id": N, "voter": bool}`.
//! - `DELETE /remove`, body `{"id": "<node id>"}` (rqlite's; a number works too): remove a
//!   node from the membership, voter or learner, running or dead. Answer: `{"removed": N}`.
//! - `POST /admin/rebuild` is the exception: it is served by the node it names (see
//!   [`rebuild`]), never forwarded.
//!
//! Errors map to status codes in one function, [`change_error`]: 400 for a request that cannot
//! be carried out as asked (an unknown node), 409 for one that would leave the cluster unable
//! to work (the last voter, the leader itself: transfer first) or that collides with a
//! membership change in progress, 503 when it may work if retried (no leader, no quorum, a
//! target that has not caught up).
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * A transfer whose target is not elected (it died after it was found caught up) leaves the
//!   old leader refusing writes until the cluster elects a leader on its own, after an election
//!   timeout; the answer is a 503 that says so. A node counts as dead once the leader has not
//!   heard from it for about a second, so one killed just before the request is not yet
//!   refused.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, post};
use keel_api::cluster::{LeaderChanged, MembershipChanged, Removed};
use node::membership::Change;
use raft::NodeId;
use raft::client::ClientError;
use raft::cluster::ChangeError;
use serde_json::Value;

use super::{
    Incoming, Node, Params, bad_request, error_response, json_response, to_leader, unavailable,
};

/// How long a forwarded admin request may take: beyond the longest change (adding a voter
/// that must catch up first, [`raft::cluster::Deadlines::change`]). `to_leader` adds 5 s to a
/// `timeout=`.
fn forward_params() -> Params {
    Params(vec![("timeout".to_string(), "115s".to_string())])
}

/// Admin routes, merged into the client API router.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/admin/promote", post(promote))
        .route("/admin/membership", post(membership))
        .route("/leader", post(step_down))
        .route("/remove", delete(remove))
        .route("/admin/rebuild", post(rebuild))
        .with_state(node)
}

/// `POST /admin/rebuild`, body `{"join": ["http://…", …]}`: THIS node (never forwarded) stops,
/// deletes its data and rejoins through those members ([`node::Node::request_rebuild`]); it
/// should have been removed from the membership first. 202 `{"rebuilding": ID}`; 400 on the
/// leader or without members to join.
async fn rebuild(State(node): State<Arc<Node>>, req: Incoming) -> Response {
    let body: keel_api::cluster::Rebuild = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => {
            return bad_request(format!("the body must be {{\"join\": [\"http://…\"]}}: {e}"));
        }
    };
    match node.request_rebuild(body.join).await {
        Ok(()) => json_response(
            StatusCode::ACCEPTED,
            &keel_api::cluster::Rebuilding { rebuilding: node.id() },
            false,
        ),
        Err(e) => super::node_error(e, false),
    }
}

/// Maps a refused or failed change to its HTTP answer.
fn change_error(e: ChangeError) -> Response {
    match e {
        ChangeError::Invalid(m) => bad_request(m),
        e @ (ChangeError::Unsafe(_) | ChangeError::InProgress(_)) => {
            error_response(StatusCode::CONFLICT, e)
        }
        ChangeError::NotReady(m) => unavailable(m),
        ChangeError::Client(ClientError::NotLeader { .. }) => {
            unavailable("leadership changed during the request; retry")
        }
        ChangeError::Client(e @ (ClientError::NoQuorum(_) | ClientError::Unknown(_))) => {
            unavailable(e)
        }
        ChangeError::Client(ClientError::Fatal(m)) => {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, m)
        }
    }
}

/// Reads a node id given as a number or as a string of digits (rqlite sends strings).
fn node_id(v: &Value) -> Result<NodeId, String> {
    let id = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    id.filter(|&id| id > 0).ok_or_else(|| format!("{v} is not a node id (a positive number)"))
}

fn leader_answer(id: NodeId, term: raft::Term) -> Response {
    json_response(StatusCode::OK, &LeaderChanged { leader: id, term }, false)
}

/// `POST /admin/promote?node=ID`.
async fn promote(
    State(node): State<Arc<Node>>,
    Query(q): Query<Vec<(String, String)>>,
    req: Incoming,
) -> Response {
    if let Some(r) = to_leader(&node, &forward_params(), &req).await {
        return r;
    }
    let Some((_, id)) = q.iter().find(|(k, _)| k == "node") else {
        return bad_request("name the node to promote: /admin/promote?node=<id>");
    };
    match node_id(&Value::String(id.clone())) {
        Ok(id) => match node.make_leader(id).await {
            Ok(term) => leader_answer(id, term),
            Err(e) => change_error(e),
        },
        Err(e) => bad_request(e),
    }
}

/// `POST /leader`: rqlite's step-down, to the node in the body or to the best successor.
async fn step_down(State(node): State<Arc<Node>>, req: Incoming) -> Response {
    if let Some(r) = to_leader(&node, &forward_params(), &req).await {
        return r;
    }
    let named = if req.body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Value>(&req.body) {
            Ok(Value::Object(o)) => match o.get("id") {
                None => None,
                Some(v) => match node_id(v) {
                    Ok(id) => Some(id),
                    Err(e) => return bad_request(e),
                },
            },
            _ => return bad_request("body must be empty or a JSON object {\"id\": \"<node id>\"}"),
        }
    };
    match node.step_down(named).await {
        Ok((id, term)) => leader_answer(id, term),
        Err(e) => change_error(e),
    }
}

/// `POST /admin/membership`.
async fn membership(State(node): State<Arc<Node>>, req: Incoming) -> Response {
    if let Some(r) = to_leader(&node, &forward_params(), &req).await {
        return r;
    }
    let req: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return bad_request("body must be a JSON object {\"action\": …, \"id\": …}"),
    };
    let id = match req.get("id").map(node_id) {
        Some(Ok(id)) => id,
        Some(Err(e)) => return bad_request(e),
        None => return bad_request("id is required"),
    };
    let action = req["action"].as_str().unwrap_or_default();
    let change = match action {
        "add-voter" | "add-learner" => {
            let addr = |key: &str| req[key].as_str().map(str::trim).filter(|a| !a.is_empty());
            let (Some(raft_addr), Some(http_addr)) = (addr("raft_addr"), addr("http_addr")) else {
                return bad_request(format!("{action} needs raft_addr and http_addr"));
            };
            let node = raft::MemberAddr {
                raft_addr: raft_addr.to_string(),
                http_addr: http_addr.to_string(),
            };
            Change::Add { id, node, voter: action == "add-voter" }
        }
        "promote" => Change::SetVoter { id, voter: true },
        "demote" => Change::SetVoter { id, voter: false },
        other => {
            return bad_request(format!(
                "unknown action {other:?}: use add-voter, add-learner, promote or demote"
            ));
        }
    };
    match node.change(change).await {
        Ok(()) => {
            let voter = matches!(action, "add-voter" | "promote");
            json_response(StatusCode::OK, &MembershipChanged { id, voter }, false)
        }
        Err(e) => change_error(e),
    }
}

/// `DELETE /remove`.
async fn remove(State(node): State<Arc<Node>>, req: Incoming) -> Response {
    if let Some(r) = to_leader(&node, &forward_params(), &req).await {
        return r;
    }
    let id = match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(o)) => match o.get("id").map(node_id) {
            Some(Ok(id)) => id,
            Some(Err(e)) => return bad_request(e),
            None => return bad_request("id is required: {\"id\": \"<node id>\"}"),
        },
        _ => return bad_request("body must be a JSON object {\"id\": \"<node id>\"}"),
    };
    match node.remove(id).await {
        Ok(()) => json_response(StatusCode::OK, &Removed { removed: id }, false),
        Err(e) => change_error(e),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn node_ids_are_numbers_or_strings_of_digits() {
        assert_eq!(node_id(&json!(3)), Ok(3));
        assert_eq!(node_id(&json!("3")), Ok(3));
        assert_eq!(node_id(&json!(" 12 ")), Ok(12));
        assert!(node_id(&json!(0)).is_err());
        assert!(node_id(&json!("x")).is_err());
        assert!(node_id(&json!(-1)).is_err());
        assert!(node_id(&json!(null)).is_err());
    }

    #[test]
    fn change_errors_map_to_what_the_caller_should_do() {
        let status = |e| change_error(e).status();
        assert_eq!(status(ChangeError::Invalid("x".into())), StatusCode::BAD_REQUEST);
        assert_eq!(status(ChangeError::Unsafe("x".into())), StatusCode::CONFLICT);
        assert_eq!(status(ChangeError::InProgress("x".into())), StatusCode::CONFLICT);
        assert_eq!(status(ChangeError::NotReady("x".into())), StatusCode::SERVICE_UNAVAILABLE);
        let client = |e| status(ChangeError::Client(e));
        assert_eq!(
            client(ClientError::NotLeader { leader: None }),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(client(ClientError::NoQuorum("x".into())), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(client(ClientError::Fatal("x".into())), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
