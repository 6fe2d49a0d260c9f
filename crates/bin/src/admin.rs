//! Operator controls: leadership transfer and membership changes, over HTTP and as
//! `keel admin` commands.
//!
//! # HTTP
//!
//! Every route needs the leader: on another node the request is forwarded to it before the
//! body is parsed (`http::to_leader`), so any member's address works.
//!
//! - `POST /admin/promote?node=ID`: make node ID the leader ([`raft::cluster::transfer_leader`]:
//!   wait until it has caught up, transfer, wait until it leads). A learner is made a voter
//!   first. Naming the current leader changes nothing. Answer: `{"leader": ID, "term": T}`.
//! - `POST /leader` (rqlite's step-down), optional body `{"id": "<node id>"}`: the same; without
//!   an id, leadership goes to the most caught-up reachable voter ([`raft::cluster::successor`]).
//! - `POST /admin/membership`, body `{"action": "add-voter" | "add-learner" | "promote" |
//!   "demote", "id": N, "raft_addr": "…", "http_addr": "…"}` (addresses for `add-*` only):
//!   add a voter or a learner, turn a learner into a voter or a voter into a learner. Answer:
//!   `{"id": N, "voter": bool}`.
//! - `DELETE /remove`, body `{"id": "<node id>"}` (rqlite's; a number works too): remove a
//!   node from the membership, voter or learner, running or dead. Answer: `{"removed": N}`.
//!
//! Each change holds [`Node::membership`] from start to end, so changes made through this
//! node (joins included) run one at a time. What would break the cluster is refused before
//! anything changes, and errors map to status codes in one function, [`change_error`]: 400 for
//! a request that cannot be carried out as asked (an unknown node), 409 for one that would
//! leave the cluster unable to work (the last voter, the leader itself: transfer first) or that
//! collides with a membership change in progress, 503 when it may work if retried (no leader,
//! no quorum, a target that has not caught up).
//!
//! # CLI
//!
//! `keel admin [--cluster URL,…] status | promote [ID] | demote ID | add ID … | remove ID`: the
//! same operations for a person at a terminal, one line of result or error each; `status`
//! prints a table of the members. [`run`] asks the given members for the leader (`GET
//! /leader`) and talks to it, falling back to whichever member answers.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * A transfer whose target is not elected (it died after it was found caught up) leaves the
//!   old leader refusing writes until the cluster elects a leader on its own, after an election
//!   timeout; the answer is a 503 that says so. A node counts as dead once the leader has not
//!   heard from it for about a second, so one killed just before the request is not yet
//!   refused.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, post};
use clap::Subcommand;
use keel_api::cluster::MembershipChange;
use keel_api::status::Role;
use raft::NodeId;
use raft::client::ClientError;
use raft::cluster::{ChangeError, Deadlines};
use serde_json::{Value, json};

use crate::http::{
    Incoming, Node, Params, bad_request, error_response, json_response, to_leader, unavailable,
};

/// How long a forwarded admin request may take: beyond the longest change (adding a voter
/// that must catch up first, [`Deadlines::change`]). `to_leader` adds 5 s to a `timeout=`.
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
        .with_state(node)
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

/// Makes `id` the leader: a learner becomes a voter first, then leadership is transferred.
async fn make_leader(node: &Node, id: NodeId) -> Response {
    let deadlines = Deadlines::default();
    let _one_at_a_time = node.membership.lock().await;
    match raft::cluster::member(&node.raft, id) {
        None => return bad_request(format!("node {id} is not a member of the cluster")),
        Some(m) if !m.voter => {
            tracing::info!(id, "promoting learner to voter before transferring leadership");
            if let Err(e) = raft::cluster::set_voter(&node.raft, id, true, &deadlines).await {
                return change_error(e);
            }
        }
        Some(_) => {}
    }
    match raft::cluster::transfer_leader(&node.raft, id, &deadlines).await {
        Ok(term) => json_response(StatusCode::OK, &json!({ "leader": id, "term": term }), false),
        Err(e) => change_error(e),
    }
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
        Ok(id) => make_leader(&node, id).await,
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
    let id = match named {
        Some(id) => id,
        None => match raft::cluster::successor(&node.raft) {
            Some(id) => id,
            None => {
                return error_response(
                    StatusCode::CONFLICT,
                    format!(
                        "node {} cannot step down: no other voter is reachable to take over",
                        node.id
                    ),
                );
            }
        },
    };
    make_leader(&node, id).await
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
    let deadlines = Deadlines::default();
    let _one_at_a_time = node.membership.lock().await;
    let result = match action {
        "add-voter" | "add-learner" => {
            let addr = |key: &str| req[key].as_str().map(str::trim).filter(|a| !a.is_empty());
            let (Some(raft_addr), Some(http_addr)) = (addr("raft_addr"), addr("http_addr")) else {
                return bad_request(format!("{action} needs raft_addr and http_addr"));
            };
            let target =
                raft::Node { raft_addr: raft_addr.to_string(), http_addr: http_addr.to_string() };
            let voter = action == "add-voter";
            raft::cluster::add_member(&node.raft, id, target, voter, &deadlines).await
        }
        "promote" => raft::cluster::set_voter(&node.raft, id, true, &deadlines).await,
        "demote" => raft::cluster::set_voter(&node.raft, id, false, &deadlines).await,
        other => {
            return bad_request(format!(
                "unknown action {other:?}: use add-voter, add-learner, promote or demote"
            ));
        }
    };
    match result {
        Ok(()) => {
            let voter = matches!(action, "add-voter" | "promote");
            json_response(StatusCode::OK, &json!({ "id": id, "voter": voter }), false)
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
    let _one_at_a_time = node.membership.lock().await;
    tracing::info!(id, "removing node");
    match raft::cluster::remove_node(&node.raft, id, &Deadlines::default()).await {
        Ok(()) => json_response(StatusCode::OK, &json!({ "removed": id }), false),
        Err(e) => change_error(e),
    }
}

// ---- keel admin -------------------------------------------------------------------------------

/// Flags of `keel admin`.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// HTTP URL of any cluster member (comma-separated to try several); requests find the
    /// leader.
    #[arg(
        long,
        global = true,
        env = "KEEL_CLUSTER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:4001"
    )]
    pub cluster: Vec<String>,
    /// How long to wait for an answer.
    #[arg(long, global = true, default_value = "150s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    /// CA certificate (PEM) to trust for `https://` URLs, besides the system's.
    #[arg(long, global = true, env = "KEEL_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// `keel admin` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Show every member: role, HTTP address, applied index and lag behind the leader.
    Status,
    /// Make a node the leader once it has caught up (a learner is made a voter first). Without
    /// an id, hand leadership to the most caught-up other voter.
    Promote {
        /// The node to promote.
        id: Option<NodeId>,
        /// Only make a learner a voter; leave leadership where it is.
        #[arg(long, requires = "id")]
        voter_only: bool,
    },
    /// Turn a voter into a learner (a non-voting replica).
    Demote {
        /// The node to demote.
        id: NodeId,
    },
    /// Add a running node as a voter, or with --learner as a learner. Start it with
    /// `keel serve --join <member URL>` (without --join it would found a cluster of its own);
    /// or re-add a removed node that kept its data directory.
    Add {
        /// The new node's id.
        id: NodeId,
        /// Its Raft address, host:port.
        #[arg(long)]
        raft_addr: String,
        /// Its HTTP address, host:port.
        #[arg(long)]
        http_addr: String,
        /// Add it as a learner (a non-voting read replica).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster, voter or learner, running or dead.
    Remove {
        /// The node to remove.
        id: NodeId,
    },
}

/// Runs `keel admin …`. A failure is printed as one line, `error: <reason>`, and exits with
/// status 1.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    if let Err(e) = execute(args).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

/// Carries out one `keel admin` command, printing its result.
async fn execute(args: AdminArgs) -> anyhow::Result<()> {
    let cluster = Cluster::new(&args.cluster, args.timeout, args.cacert.as_deref())?;
    let client = &cluster.client;
    match args.command {
        AdminCommand::Status => {
            print!("{}", cluster.status().await?);
        }
        AdminCommand::Promote { id: None, .. } => {
            let answer = client.step_down(None).await.map_err(failed)?;
            println!("node {} is now the leader (term {})", answer.leader, answer.term);
        }
        AdminCommand::Promote { id: Some(id), voter_only: false } => {
            let answer = client.promote(id).await.map_err(failed)?;
            println!("node {} is now the leader (term {})", answer.leader, answer.term);
        }
        AdminCommand::Promote { id: Some(id), voter_only: true } => {
            client.set_voter(id, true).await.map_err(failed)?;
            println!("node {id} is now a voter");
        }
        AdminCommand::Demote { id } => {
            client.set_voter(id, false).await.map_err(failed)?;
            println!("node {id} is now a learner");
        }
        AdminCommand::Add { id, raft_addr, http_addr, learner } => {
            let change = MembershipChange::add(id, !learner, raft_addr.clone(), http_addr.clone());
            client.change_membership(&change).await.map_err(failed)?;
            let role = if learner { "learner" } else { "voter" };
            println!("node {id} added as a {role} (raft {raft_addr}, http {http_addr})");
        }
        AdminCommand::Remove { id } => {
            client.remove(id).await.map_err(failed)?;
            println!("node {id} removed from the cluster");
        }
    }
    Ok(())
}

/// A failed call in `keel admin`'s words: the server's reason and status, or which members
/// did not answer.
fn failed(e: keel_api::Error) -> anyhow::Error {
    match e {
        keel_api::Error::Unreachable(why) => anyhow::anyhow!("no cluster member answered ({why})"),
        other => other.into(),
    }
}

/// The cluster as `keel admin` reaches it: the member URLs it was given.
struct Cluster {
    /// The client: finds the leader among the members (`GET /leader`) and sends to it. One
    /// attempt per command, as a person at a terminal retries by hand.
    client: keel_api::Client,
}

impl Cluster {
    fn new(
        urls: &[String],
        timeout: Duration,
        cacert: Option<&std::path::Path>,
    ) -> anyhow::Result<Cluster> {
        let urls: Vec<&str> = urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()).collect();
        if urls.is_empty() {
            bail!("--cluster names no member URL");
        }
        let client = keel_api::Client::builder(urls)
            .http(crate::tls::client_builder(cacert)?)
            .timeout(timeout)
            .retry_for(Duration::ZERO)
            .build()?;
        Ok(Cluster { client })
    }

    /// The members as a table, from the leader's `/status` and `/nodes` (from the first
    /// member that answers when none knows a leader: it says why in its own view).
    async fn status(&self) -> anyhow::Result<String> {
        let node = match self.client.find_leader().await {
            Ok(leader) => self.client.on(&leader)?,
            Err(_) => self.client.clone(),
        };
        let status = node.status().await.map_err(failed)?;
        let nodes = node.nodes().await.map_err(failed)?;
        Ok(table(&status.node, &nodes))
    }
}

/// `keel admin status`'s table: a line about leadership, then one row per member.
fn table(me: &keel_api::status::Node, nodes: &[keel_api::cluster::NodeInfo]) -> String {
    let mut out = String::new();
    if me.role == Role::Leader {
        out.push_str(&format!(
            "leader: node {}, term {}, commit index {}\n",
            me.id, me.term, me.commit_index
        ));
    } else {
        out.push_str(&format!(
            "no leader: node {}'s view ({}), term {}\n",
            me.id,
            me.role.as_str(),
            me.term
        ));
    }
    let mut rows = vec![["ID", "ROLE", "HTTP", "APPLIED", "LAG"].map(String::from)];
    for n in nodes {
        let is_me = me.id.to_string() == n.id;
        let role = if n.leader {
            "leader"
        } else if n.voter {
            "follower"
        } else {
            "learner"
        };
        let http = n.api_addr.trim_start_matches("http://");
        let progress = n.replication.as_ref();
        let applied =
            if is_me { Some(me.applied_index) } else { progress.and_then(|p| p.applied_index) };
        let applied = applied.map_or("-".to_string(), |a| a.to_string());
        let lag = if n.leader {
            "-".to_string()
        } else if !n.reachable {
            "unreachable".to_string()
        } else {
            match (progress.and_then(|p| p.lag_entries), progress.and_then(|p| p.lag_ms)) {
                (Some(0), _) => "0".to_string(),
                (Some(e), Some(ms)) => format!("{e} ({ms} ms)"),
                (Some(e), None) => e.to_string(),
                (None, _) => "-".to_string(),
            }
        };
        rows.push([n.id.clone(), role.to_string(), http.to_string(), applied, lag]);
    }
    let widths: Vec<usize> =
        (0..5).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    for row in &rows {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, &w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The innermost error of a chain (reqwest's own message is only "error sending request").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
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
    fn cluster_urls_get_a_scheme() {
        let urls = ["127.0.0.1:4001/".to_string(), " https://a:1 ".to_string(), String::new()];
        let c = Cluster::new(&urls, Duration::from_secs(1), None).unwrap();
        assert_eq!(c.client.nodes_known(), vec!["http://127.0.0.1:4001", "https://a:1"]);
        assert!(Cluster::new(&[String::new()], Duration::from_secs(1), None).is_err());
    }
}
