//! Node-to-node RPC: HTTP/JSON over the Raft port.
//!
//! The client side ([`Network`], [`Peer`]) implements openraft's `RaftNetworkV2` with reqwest:
//! each RPC is `POST http://<raft_addr>/raft/<name>` with a JSON body and a JSON
//! `Result<Response, RaftError>` answer. A snapshot travels as the raw database image in the
//! body, with the vote and meta as JSON in the `x-keel-snapshot` header, so a multi-megabyte
//! image is not inflated into a JSON byte array.
//!
//! The server side is [`router`], an axum `Router` the binary serves on `--raft-addr`. It also
//! records when this node last heard from a leader ([`Contact`]), for reads that bound their
//! staleness (`freshness`).
//!
//! Connection failures map to `Unreachable` (openraft backs off); other failures to `Network`.

use std::future::Future;
use std::io::Cursor;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Raft;
use crate::state_machine::SnapshotMeta;
use crate::types::{Node, NodeId, TypeConfig, Vote};

/// When this node last heard from a leader, and what that leader had committed then.
#[derive(Debug, Default)]
pub struct Contact {
    /// `(when, leader's commit index)` of the last accepted append or heartbeat.
    last: std::sync::Mutex<Option<(std::time::Instant, crate::Lsn)>>,
}

impl Contact {
    /// Records an accepted append or heartbeat from the leader.
    fn heard(&self, leader_commit: crate::Lsn) {
        *self.last.lock().expect("contact mutex poisoned") =
            Some((std::time::Instant::now(), leader_commit));
    }

    /// When this node last heard from a leader, and the leader's commit index then.
    pub fn last(&self) -> Option<(std::time::Instant, crate::Lsn)> {
        *self.last.lock().expect("contact mutex poisoned")
    }
}

/// Shared state of the RPC server.
#[derive(Clone)]
struct Server {
    /// The Raft node.
    raft: Raft,
    /// Last contact with a leader.
    contact: std::sync::Arc<Contact>,
}

/// Header carrying `(vote, meta)` of a snapshot sent as a raw body.
const SNAPSHOT_HEADER: &str = "x-keel-snapshot";

/// Creates a [`Peer`] per replication target. One shared HTTP client (connection pool).
#[derive(Clone)]
pub struct Network {
    /// Shared client; keeps connections to peers alive between RPCs.
    client: reqwest::Client,
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Network {
    /// A network with a fresh connection pool.
    pub fn new() -> Network {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .build()
            .expect("building an HTTP client without TLS cannot fail");
        Network { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Peer {
        Peer { target, addr: node.raft_addr.clone(), client: self.client.clone() }
    }
}

/// The client end of RPCs to one peer.
pub struct Peer {
    /// The peer's node id, for logs.
    target: NodeId,
    /// The peer's Raft address.
    addr: String,
    /// Shared HTTP client.
    client: reqwest::Client,
}

fn rpc_error(e: reqwest::Error) -> RPCError<TypeConfig> {
    if e.is_connect() {
        RPCError::Unreachable(Unreachable::new(&e))
    } else {
        RPCError::Network(NetworkError::new(&e))
    }
}

impl Peer {
    async fn answer<Resp>(
        &self,
        url: &str,
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Resp: DeserializeOwned,
    {
        let resp = resp.map_err(rpc_error)?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(RPCError::Network(NetworkError::from_string(format!(
                "HTTP {status} from {url} (node {}): {body}",
                self.target
            ))));
        }
        let res: Result<Resp, RaftError<TypeConfig>> =
            resp.json().await.map_err(|e| NetworkError::new(&e))?;
        res.map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))
    }

    async fn call<Req, Resp>(
        &self,
        name: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let url = format!("http://{}/raft/{name}", self.addr);
        let resp = self.client.post(&url).json(req).timeout(option.hard_ttl()).send().await;
        self.answer(&url, resp).await
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("append", &req, &option).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("vote", &req, &option).await
    }

    async fn pre_vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("pre-vote", &req, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<
            openraft::alias::CommittedLeaderIdOf<TypeConfig>,
            NodeId,
            Node,
            Cursor<Vec<u8>>,
        >,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = serde_json::to_string(&(vote, snapshot.meta))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let url = format!("http://{}/raft/snapshot", self.addr);
        let send = async {
            let resp = self
                .client
                .post(&url)
                .header(SNAPSHOT_HEADER, header)
                .body(snapshot.snapshot.into_inner())
                .timeout(option.hard_ttl())
                .send()
                .await;
            self.answer::<SnapshotResponse<TypeConfig>>(&url, resp).await
        };
        tokio::pin!(cancel);
        tokio::select! {
            closed = &mut cancel => Err(StreamingError::Closed(closed)),
            res = send => Ok(res?),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("transfer-leader", &req, &option).await
    }
}

/// The server side of node-to-node RPC, to be served on the node's Raft address. Accepted
/// appends and heartbeats are recorded in `contact`.
pub fn router(raft: Raft, contact: std::sync::Arc<Contact>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/pre-vote", post(pre_vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/transfer-leader", post(transfer_leader))
        // Snapshots are whole database images; appends can be large batches.
        .layer(DefaultBodyLimit::max(4 << 30))
        .with_state(Server { raft, contact })
}

async fn append(
    State(server): State<Server>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    let leader_commit = req.leader_commit.as_ref().map_or(0, |l| l.index);
    let res = server.raft.append_entries(req).await;
    if matches!(res, Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)))
    {
        server.contact.heard(leader_commit);
    }
    Json(res).into_response()
}

async fn vote(
    State(Server { raft, .. }): State<Server>,
    Json(req): Json<VoteRequest<TypeConfig>>,
) -> Response {
    Json(raft.vote(req).await).into_response()
}

async fn pre_vote(
    State(Server { raft, .. }): State<Server>,
    Json(req): Json<VoteRequest<TypeConfig>>,
) -> Response {
    Json(raft.pre_vote(req).await).into_response()
}

async fn snapshot(
    State(Server { raft, .. }): State<Server>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(header) = headers.get(SNAPSHOT_HEADER).and_then(|h| h.to_str().ok()) else {
        return (StatusCode::BAD_REQUEST, "missing snapshot header").into_response();
    };
    let (vote, meta): (Vote, SnapshotMeta) = match serde_json::from_str(header) {
        Ok(v) => v,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("bad snapshot header: {e}")).into_response();
        }
    };
    let snapshot = Snapshot { meta, snapshot: Cursor::new(body.to_vec()) };
    let res: Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>> =
        raft.install_full_snapshot(vote, snapshot).await.map_err(RaftError::Fatal);
    Json(res).into_response()
}

async fn transfer_leader(
    State(Server { raft, .. }): State<Server>,
    Json(req): Json<TransferLeaderRequest<TypeConfig>>,
) -> Response {
    let res: Result<TransferLeaderResponse<TypeConfig>, RaftError<TypeConfig>> =
        raft.handle_transfer_leader(req).await.map_err(RaftError::Fatal);
    Json(res).into_response()
}
