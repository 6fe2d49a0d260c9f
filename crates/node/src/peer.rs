//! The node-to-node protocol in one place: what nodes say to each other besides the client API.
//!
//! Served on the Raft address by [`router`]:
//!
//! | route | from | what |
//! |---|---|---|
//! | `/raft/*` | the leader, candidates | Raft's own RPCs ([`raft::network`]) |
//! | `POST /keel/applied` | a follower the leader has no replication stream open to (a leader of an older version), after applies and once a second | its applied index and apply hash ([`report_applied`]); `sync` and `replicas:K` writes wait on these, lag is measured from them, and the leader compares the hash with its own ([`crate::apply_hash`]). With a stream open, the position rides on it instead ([`raft::network::stream`]) |
//! | `POST /keel/diverged` | the leader | this node's apply hash differs from the leader's ([`crate::apply_hash`]); kept as this node's divergence ([`Node::apply_hash_diverged`]) |
//! | `POST /keel/read-index` | a follower serving a linearizable read | the leader confirms its leadership with a quorum and answers `{"index": n}` ([`Node::remote_read_index`]) |
//! | `POST /keel/queue` | a follower's write-queue flusher | a batch of queued writes, run here if this node leads ([`crate::queue::flush`]) |
//! | `GET /keel/members` | a node asked to rebuild | the leader's member ids: the node must have been removed first ([`crate::rebuild`]) |
//! | `POST /keel/leave` | a node shutting down with `--leave-on-shutdown` | remove the sender, on the leader ([`crate::leave`]) |
//!
//! Under mutual TLS the binary puts a layer in front of the router that refuses any sender
//! without a node certificate of this cluster and records the proven node id as a
//! [`raft::network::PeerNode`]; an applied report naming another node is refused here
//! ([`check_reporter`]), and so is a read index asked for by a node that is not a member
//! ([`check_member`]): a certificate of this cluster's CA alone (a removed node's, one made
//! for a node never added) does not let its holder make the leader confirm its leadership
//! with a quorum round on demand.
//!
//! [`Peers`] is how this node reaches others: over their client API (forwarding, joins,
//! probes) and their Raft address (the calls above).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::BoxFuture;

use keel_api::internal::{
    APPLIED_PATH, AppliedReport, DIVERGED_PATH, Diverged, MEMBERS_PATH, Members, QUEUE_PATH,
    READ_INDEX_PATH, ReadIndex,
};

use crate::{Error, Node};

/// How long a call to another node may take.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an applied report may take (a newer one follows).
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// Proves that the server at a Raft address is the node it claims to be (under mutual TLS: a
/// handshake with that node's certificate). `Err` says why not.
pub type VerifyNode =
    Arc<dyn Fn(raft::NodeId, String) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// How a node reaches other nodes over HTTP outside Raft's own RPCs.
#[derive(Clone)]
pub struct Peers {
    /// `http` or `https`: the scheme of other nodes' client APIs (the same as this node's).
    pub api_scheme: &'static str,
    /// Client for other nodes' client APIs (forwarding, joins, probes). Never follows
    /// redirects.
    pub api: reqwest::Client,
    /// `http` or `https`: the scheme of other nodes' Raft addresses.
    pub node_scheme: &'static str,
    /// Client for other nodes' Raft addresses (`/keel/*`): under mutual TLS it presents this
    /// node's certificate and accepts any node of the cluster.
    pub node: reqwest::Client,
    /// Identity proof for joins; `None` when nodes do not use mutual TLS (nothing to prove).
    pub verify: Option<VerifyNode>,
}

impl Peers {
    /// Checks that the server at `raft_addr` is node `id` (see [`VerifyNode`]).
    pub async fn verify_node(&self, id: raft::NodeId, raft_addr: &str) -> Result<(), String> {
        match &self.verify {
            None => Ok(()),
            Some(verify) => verify(id, raft_addr.to_string()).await,
        }
    }

    /// The client API URL of a member.
    pub fn api_url(&self, member: &raft::MemberAddr, path_and_query: &str) -> String {
        format!("{}://{}{}", self.api_scheme, member.http_addr, path_and_query)
    }

    /// The URL of a node-to-node route of a member.
    pub(crate) fn node_url(&self, member: &raft::MemberAddr, path: &str) -> String {
        format!("{}://{}{}", self.node_scheme, member.raft_addr, path)
    }
}

/// Every node-to-node route: Raft's (senders checked against their certificates when
/// `verify_senders`) and Keel's.
pub fn router(node: Arc<Node>, verify_senders: bool) -> Router {
    let position = Some(node.position.clone());
    raft::network::router_with(
        node.raft.clone(),
        node.contact.clone(),
        verify_senders,
        position,
        Some(node.space.clone()),
    )
    .merge(
        Router::new()
            .route(APPLIED_PATH, post(applied))
            .route(DIVERGED_PATH, post(diverged))
            .route(READ_INDEX_PATH, post(move |node, peer| read_index(node, peer, verify_senders)))
            .route(MEMBERS_PATH, get(members))
            .route(keel_api::internal::LEAVE_PATH, post(crate::leave::leave_route))
            // A batch of another node's queued writes. No body limit of its own: each request
            // in it passed the client API's limit on that node, and a batch holds at most
            // --write-queue-batch-size of them.
            .route(QUEUE_PATH, post(queue_batch).layer(DefaultBodyLimit::disable()))
            .with_state(node),
    )
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(value).expect("the node-to-node answers serialize to JSON");
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
        .into_response()
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    json(status, &keel_api::ErrorAnswer::new(message.to_string()))
}

async fn applied(
    State(node): State<Arc<Node>>,
    peer: Option<axum::Extension<raft::network::PeerNode>>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<AppliedReport>(&body) {
        Ok(r) => {
            if let Err(refused) = check_reporter(peer.map(|p| p.0), r.id) {
                return refused;
            }
            node.progress.report(r.id, r.applied);
            let hash = r
                .apply_hash
                .as_deref()
                .and_then(|hex| wal::ApplyHash::parse_hex(r.apply_origin.unwrap_or_default(), hex));
            node.apply_hashes.report(r.id, wal::Position { index: r.applied, hash });
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, format!("invalid applied report: {e}")),
    }
}

/// `POST /keel/diverged`: the leader found this node's apply hash different from its own.
/// Under mutual TLS only the node the report names as leader may send it.
async fn diverged(
    State(node): State<Arc<Node>>,
    peer: Option<axum::Extension<raft::network::PeerNode>>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<Diverged>(&body) {
        Ok(d) => {
            if let Err(refused) = check_reporter(peer.map(|p| p.0), d.mismatch.leader) {
                return refused;
            }
            match node.apply_hash_diverged(d) {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        Err(e) => error(StatusCode::BAD_REQUEST, format!("invalid divergence report: {e}")),
    }
}

/// The `/keel/applied` check: a report naming node `claimed` must come from that node when
/// the transport proved the sender. Logs a refusal under `keel::audit`.
pub fn check_reporter(
    proven: Option<raft::network::PeerNode>,
    claimed: raft::NodeId,
) -> Result<(), Response> {
    match proven {
        Some(raft::network::PeerNode(node)) if node != claimed => {
            tracing::warn!(
                target: "keel::audit",
                claimed,
                certificate_node = node,
                "refused an applied report: the sender's certificate is for another node"
            );
            Err((
                StatusCode::FORBIDDEN,
                format!("this report claims node {claimed}, but the certificate is node {node}'s"),
            )
                .into_response())
        }
        _ => Ok(()),
    }
}

/// The `/keel/read-index` check under mutual TLS: the transport must have proven the sender,
/// and its node must be a member (voter or learner) of this node's membership. Logs a refusal
/// under `keel::audit`.
pub fn check_member(node: &Node, proven: Option<raft::network::PeerNode>) -> Result<(), Response> {
    let why = match proven {
        Some(raft::network::PeerNode(id)) if raft::cluster::is_member(&node.raft, id) => {
            return Ok(());
        }
        Some(raft::network::PeerNode(id)) => {
            tracing::warn!(
                target: "keel::audit",
                certificate_node = id,
                "refused a read index: the sender's certificate is of a node that is not a member"
            );
            format!("the client certificate is node {id}'s, which is not a member of the cluster")
        }
        None => {
            tracing::warn!(target: "keel::audit", "refused a read index: no proven node identity");
            "node-to-node requests need a node certificate".to_string()
        }
    };
    Err(error(StatusCode::FORBIDDEN, format!("{why}: only members may ask for a read index")))
}

/// Tells the leader how far this node has applied, when the leader has no replication stream
/// open to this node (a leader of an older version, or before its stream opens): after every
/// apply, and once a second while idle (so a new leader learns it too). A leader with a stream
/// open gets the position on it instead (`raft::network::stream`). `sync` and `replicas:K`
/// writes wait on these reports; lag in `/status` and `/metrics` comes from them. Reports are
/// sent one at a time, so a burst of applies coalesces into the latest value.
pub async fn report_applied(node: Arc<Node>) {
    let mut applied = node.position.clone();
    loop {
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), applied.changed()).await {
            return; // The state machine is gone: the node is stopping.
        }
        let position = *applied.borrow_and_update();
        let Some(leader) = raft::cluster::leader(&node.raft).filter(|l| l.id != node.id) else {
            continue;
        };
        if node.contact.streaming_from(leader.id) {
            continue;
        }
        let url = node.peers.node_url(&leader.node, APPLIED_PATH);
        let report = AppliedReport {
            apply_hash: position.hash.map(|h| h.hex()),
            apply_origin: position.hash.map(|h| h.origin),
            applied: position.index,
            id: node.id,
        };
        let sent = node.peers.node.post(&url).json(&report).timeout(REPORT_TIMEOUT).send().await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "applied report to the leader failed");
        }
    }
}

/// Leader side of a follower's linearizable read: confirm leadership with a quorum and return
/// the index the follower must apply before reading. With `verify_senders` (mutual TLS) only
/// a member may ask ([`check_member`]).
async fn read_index(
    State(node): State<Arc<Node>>,
    peer: Option<axum::Extension<raft::network::PeerNode>>,
    verify_senders: bool,
) -> Response {
    if verify_senders && let Err(refused) = check_member(&node, peer.map(|p| p.0)) {
        return refused;
    }
    match raft::client::barrier(&node.raft, raft::ReadPolicy::ReadIndex).await {
        Ok(index) => json(StatusCode::OK, &ReadIndex { index }),
        Err(e) => {
            let e = leader::Error::from(e);
            let status = match e {
                leader::Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                leader::Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, crate::error::describe(&e))
        }
    }
}

impl Node {
    /// Asks `leader` for a read index (see [`read_index`]).
    pub(crate) async fn remote_read_index(
        &self,
        leader: &raft::cluster::Member,
    ) -> Result<wal::Lsn, Error> {
        let url = self.peers.node_url(&leader.node, READ_INDEX_PATH);
        let resp = self.peers.node.post(&url).timeout(PEER_TIMEOUT).send().await.map_err(|e| {
            Error::Unavailable(format!("asking leader {} for a read index failed: {e}", leader.id))
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::Unavailable(format!("bad read-index answer: {e}")))?;
        if status.is_success() {
            let answer: ReadIndex = serde_json::from_slice(&body)
                .map_err(|e| Error::Unavailable(format!("bad read-index answer: {e}")))?;
            return Ok(answer.index);
        }
        let why = serde_json::from_slice::<keel_api::ErrorAnswer>(&body)
            .map_or_else(|_| "unknown error".to_string(), |a| a.error);
        Err(Error::Unavailable(format!("leader {} gave no read index: {why}", leader.id)))
    }
}

/// `GET /keel/members`: this node's membership, if it leads (503 otherwise).
async fn members(State(node): State<Arc<Node>>) -> Response {
    let state = node.cluster();
    if state.role != raft::cluster::Role::Leader {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("node {} does not lead", node.id));
    }
    json(
        StatusCode::OK,
        &Members { leader: state.id, ids: state.members.iter().map(|m| m.id).collect() },
    )
}

impl Node {
    /// The member ids as the leader knows them: this node's own view when it leads; otherwise
    /// the answer of whichever member of this node's view leads (a node removed from the
    /// cluster is not told, and may no longer know who leads).
    pub(crate) async fn leader_members(&self) -> Result<Vec<raft::NodeId>, Error> {
        let state = self.cluster();
        if state.role == raft::cluster::Role::Leader {
            return Ok(state.members.iter().map(|m| m.id).collect());
        }
        let mut why = Vec::new();
        for m in state.members.iter().filter(|m| m.id != self.id) {
            let url = self.peers.node_url(&m.node, MEMBERS_PATH);
            match self.peers.node.get(&url).timeout(REPORT_TIMEOUT).send().await {
                Ok(resp) if resp.status().is_success() => match resp.json::<Members>().await {
                    Ok(answer) => return Ok(answer.ids),
                    Err(e) => why.push(format!("node {}: {e}", m.id)),
                },
                Ok(resp) => why.push(format!("node {}: HTTP {}", m.id, resp.status())),
                Err(e) => why.push(format!("node {}: {e}", m.id)),
            }
        }
        Err(Error::Unavailable(format!("no member answered as the leader: {}", why.join("; "))))
    }
}

/// `POST /keel/queue`: another node's flushed batch, run here if this node leads. Answers one
/// [`crate::queue::verdict::Verdict`] per request.
async fn queue_batch(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let batch: crate::queue::Batch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid queue batch: {e}")),
    };
    let verdicts = if node.is_leader() {
        crate::queue::flush::execute(&node, &batch).await
    } else {
        let why = format!("node {} is not the leader", node.id);
        vec![crate::queue::verdict::Verdict::Retry(why); batch.requests.len()]
    };
    json(StatusCode::OK, &verdicts)
}
