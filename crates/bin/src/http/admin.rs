//! Operator routes: leadership transfer and membership changes ([`node::membership`]).
//!
//! Every route needs the leader: on another node the request is forwarded to it before the
//! body is parsed ([`super::to_leader`]), so any member's address works. Leadership transfers
//! (`/admin/promote`, `/leader` naming a node) parse their target first and retry by
//! themselves while the leadership moves under them ([`transfer`]).
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
//! - `POST /admin/vacuum`: SQLite's `VACUUM` on every replica at one log position
//!   ([`node::Node::vacuum`]). Answer: `{"lsn": N, "seconds": S}` once the leader has run it.
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
//! * A transfer is retried only after answers that say nothing was done because no leader
//!   could take it ([`moved`] reads the 503's message, as `keel_api`'s client does). A
//!   promotion that timed out or whose target was not elected is answered as it is: the
//!   operator decides what to try next.
//! * A transfer whose target is not elected (it died after it was found caught up) leaves the
//!   old leader refusing writes until the cluster elects a leader on its own, after an election
//!   timeout; the answer is a 503 that says so. A node counts as dead once the leader has not
//!   heard from it for about a second, so one killed just before the request is not yet
//!   refused.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        .route("/admin/vacuum", post(vacuum))
        .with_state(node)
}

/// `POST /admin/vacuum` (see the module docs). Forwarded with an hour to run: it rewrites the
/// whole file.
async fn vacuum(State(node): State<Arc<Node>>, req: Incoming) -> Response {
    let params = Params(vec![("timeout".to_string(), "3600s".to_string())]);
    if let Some(answer) = to_leader(&node, &params, &req).await {
        return answer;
    }
    let started = Instant::now();
    match node.vacuum().await {
        Ok(lsn) => {
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!(lsn, seconds, "VACUUM (POST /admin/vacuum)");
            json_response(StatusCode::OK, &keel_api::cluster::Vacuumed { lsn, seconds }, false)
        }
        Err(e) => super::node_error(e, false),
    }
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

/// The 503 of a change refused because this node stopped leading before it did anything.
const LEADERSHIP_CHANGED: &str = "leadership changed during the request; retry";

/// How long after its arrival a leadership transfer may start another attempt when no leader
/// could take the previous one (see [`transfer`]). Longer than an election, with room for a
/// few in a row.
const TRANSFER_RETRY_WINDOW: Duration = Duration::from_secs(20);
/// Pause between two attempts of a leadership transfer.
const TRANSFER_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Carries out a leadership transfer: `run` on the leader, which the request is forwarded to
/// from any other node. Just after a failover the leader may not be known yet, or be dead and
/// still named, or be deposed while the transfer runs (`NotLeader`: nothing was done). With
/// `retry`, such an attempt ([`moved`]) is followed by another, routed afresh, for as long as
/// the request is within [`TRANSFER_RETRY_WINDOW`] of its arrival; a promotion is safe to
/// repeat (naming the current leader changes nothing). A request forwarded here by another
/// node is tried once: its sender retries.
async fn transfer<F, Fut>(node: &Node, req: &Incoming, retry: bool, run: F) -> Response
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(NodeId, raft::Term), ChangeError>>,
{
    let started = Instant::now();
    let retry = retry && !req.headers.contains_key(super::FORWARDED);
    let mut attempts = 1u32;
    loop {
        let answer = match super::to_leader(node, &forward_params(), req).await {
            None => match run().await {
                Ok((id, term)) => return leader_answer(node, id, term),
                Err(e) => change_error(e),
            },
            Some(answer) => answer,
        };
        let (answer, why) = match moved(answer).await {
            Ok(answer) => return answer,
            Err(moved) => moved,
        };
        if !retry {
            return answer;
        }
        if started.elapsed() >= TRANSFER_RETRY_WINDOW {
            return unavailable(format!(
                "no leader could carry out the leadership transfer within {}s ({attempts} attempts; the last: {why}): check that a majority of the voters is running and reachable (GET /nodes), then try again",
                TRANSFER_RETRY_WINDOW.as_secs()
            ));
        }
        tracing::info!(attempts, %why, "retrying a leadership transfer: no leader could take it");
        tokio::time::sleep(TRANSFER_RETRY_PAUSE).await;
        attempts += 1;
    }
}

/// `Err((answer, message))` if `answer` is a 503 saying that nothing was done because no leader
/// could take the request: this node lost the leadership ([`LEADERSHIP_CHANGED`]), none is
/// known (`leader not found`), the one named is gone or unreachable (the forwarding errors of
/// [`super::forward`]), or the leader it was forwarded to lost it. `Ok(answer)` otherwise.
async fn moved(answer: Response) -> Result<Response, (Response, String)> {
    if answer.status() != StatusCode::SERVICE_UNAVAILABLE {
        return Ok(answer);
    }
    let (parts, body) = answer.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return Ok(unavailable("reading the leader's answer to a leadership transfer failed"));
    };
    let message = serde_json::from_slice::<keel_api::ErrorAnswer>(&bytes)
        .map(|a| a.error)
        .unwrap_or_default();
    let answer = Response::from_parts(parts, axum::body::Body::from(bytes));
    const MOVED: [&str; 6] = [
        LEADERSHIP_CHANGED,
        "leader not found",
        "no leader is reachable",
        "forwarding to leader",
        "reading the leader's answer",
        "no new leader within",
    ];
    if MOVED.iter().any(|m| message.starts_with(m)) { Err((answer, message)) } else { Ok(answer) }
}

/// Maps a refused or failed change to its HTTP answer.
fn change_error(e: ChangeError) -> Response {
    match e {
        ChangeError::Invalid(m) => bad_request(m),
        e @ (ChangeError::Unsafe(_) | ChangeError::InProgress(_)) => {
            error_response(StatusCode::CONFLICT, e)
        }
        ChangeError::NotReady(m) => unavailable(m),
        ChangeError::Client(ClientError::NotLeader { .. }) => unavailable(LEADERSHIP_CHANGED),
        ChangeError::Client(e @ (ClientError::NoQuorum(_) | ClientError::Unknown(_))) => {
            unavailable(e)
        }
        ChangeError::Client(ClientError::Fatal(m)) => {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, m)
        }
    }
}

/// Reads a node id given as a number, or as a string (rqlite sends strings): digits, or a
/// node's name ([`raft::NodeName`]).
fn node_name(v: &Value) -> Result<raft::NodeName, String> {
    let text = match v {
        Value::Number(n) => match n.as_u64() {
            Some(id) => id.to_string(),
            None => return Err(format!("{v} is not a node id (a positive number)")),
        },
        Value::String(s) => s.trim().to_string(),
        _ => return Err(format!("{v} is not a node id (a positive number or a node's name)")),
    };
    raft::NodeName::parse(&text)
}

fn leader_answer(node: &Node, id: NodeId, term: raft::Term) -> Response {
    let name = node.member(id).and_then(|m| m.node.name);
    json_response(StatusCode::OK, &LeaderChanged { leader: id, name, term }, false)
}

/// `POST /admin/promote?node=ID`.
async fn promote(
    State(node): State<Arc<Node>>,
    Query(q): Query<Vec<(String, String)>>,
    req: Incoming,
) -> Response {
    let Some((_, id)) = q.iter().find(|(k, _)| k == "node") else {
        return bad_request("name the node to promote: /admin/promote?node=<id>");
    };
    let name = match node_name(&Value::String(id.clone())) {
        Ok(name) => name,
        Err(e) => return bad_request(e),
    };
    let (node, name) = (&node, &name);
    transfer(node, &req, true, move || async move {
        known(node, name)?;
        Ok((name.id(), node.make_leader(name.id()).await?))
    })
    .await
}

/// Refuses a name no member has: the Raft id it maps to would mean nothing to the operator.
fn known(node: &Node, name: &raft::NodeName) -> Result<(), ChangeError> {
    if name.name().is_some() && node.member(name.id()).is_none() {
        return Err(ChangeError::Invalid(format!("node {name} is not a member of the cluster")));
    }
    Ok(())
}

/// `POST /leader`: rqlite's step-down, to the node in the body or to the best successor. Only
/// a step-down to a named node is retried (see [`transfer`]): without one, a retry would move
/// the leadership away from a node that was never asked to give it up.
async fn step_down(State(node): State<Arc<Node>>, req: Incoming) -> Response {
    let named = if req.body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Value>(&req.body) {
            Ok(Value::Object(o)) => match o.get("id") {
                None => None,
                Some(v) => match node_name(v) {
                    Ok(name) => Some(name),
                    Err(e) => return bad_request(e),
                },
            },
            _ => return bad_request("body must be empty or a JSON object {\"id\": \"<node id>\"}"),
        }
    };
    let (node, named) = (&node, &named);
    transfer(node, &req, named.is_some(), move || async move {
        if let Some(name) = named {
            known(node, name)?;
        }
        node.step_down(named.as_ref().map(raft::NodeName::id)).await
    })
    .await
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
    let name = match req.get("id").map(node_name) {
        Some(Ok(name)) => name,
        Some(Err(e)) => return bad_request(e),
        None => return bad_request("id is required"),
    };
    let id = name.id();
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
                name: name.into_name(),
            };
            Change::Add { id, node, voter: action == "add-voter" }
        }
        "promote" | "demote" => {
            if let Err(e) = known(&node, &name) {
                return change_error(e);
            }
            Change::SetVoter { id, voter: action == "promote" }
        }
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
    let name = match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(o)) => match o.get("id").map(node_name) {
            Some(Ok(name)) => name,
            Some(Err(e)) => return bad_request(e),
            None => return bad_request("id is required: {\"id\": \"<node id>\"}"),
        },
        _ => return bad_request("body must be a JSON object {\"id\": \"<node id>\"}"),
    };
    if let Err(e) = known(&node, &name) {
        return change_error(e);
    }
    let id = name.id();
    match node.remove(id).await {
        Ok(()) => json_response(StatusCode::OK, &Removed { removed: id }, false),
        Err(e) => change_error(e),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node_id(v: &Value) -> Result<NodeId, String> {
        node_name(v).map(|n| n.id())
    }

    #[test]
    fn node_ids_are_numbers_or_strings_of_digits_or_names() {
        assert_eq!(node_id(&json!(3)), Ok(3));
        assert_eq!(node_id(&json!("3")), Ok(3));
        assert_eq!(node_id(&json!(" 12 ")), Ok(12));
        assert!(node_id(&json!(0)).is_err());
        assert_eq!(node_id(&json!("keel-1")), Ok(raft::NodeName::id_of_name("keel-1")));
        assert_eq!(node_name(&json!(" keel-1 ")).unwrap().to_string(), "keel-1");
        assert!(node_id(&json!("x y")).is_err());
        assert!(node_id(&json!("")).is_err());
        assert!(node_id(&json!(1.5)).is_err());
        assert!(node_id(&json!(-1)).is_err());
        assert!(node_id(&json!(null)).is_err());
    }

    #[tokio::test]
    async fn transfers_are_retried_only_when_no_leader_could_take_them() {
        let not_forwarded = super::super::not_forwarded("leader not contactable: …");
        for message in [
            LEADERSHIP_CHANGED,
            "leader not found",
            "forwarding to leader 1 failed: error sending request",
            "no new leader within the timeout after leader not contactable",
            not_forwarded.as_str(),
        ] {
            let (answer, why) = moved(unavailable(message)).await.expect_err(message);
            assert_eq!(why, message);
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        for final_answer in [
            unavailable("node 3 is not reachable: the leader last heard from it 4.0s ago"),
            unavailable("outcome unknown: node 3 was not elected: node 2 leads in term 9"),
            bad_request("leader not found"),
            json_response(StatusCode::OK, &LeaderChanged { leader: 3, name: None, term: 9 }, false),
        ] {
            assert!(moved(final_answer).await.is_ok());
        }
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
