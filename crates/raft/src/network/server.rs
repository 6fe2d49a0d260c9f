//! The server side of node-to-node RPC: the axum routes of the Raft port.
//!
//! Each handler checks the sender (when the transport proves senders, see the parent module)
//! and hands the RPC to a method of [`Server`] that knows nothing of HTTP: [`Server::append`]
//! (which records [`Contact`]), [`Server::vote`], [`Server::pre_vote`],
//! [`Server::transfer_leader`] and [`Server::install_snapshot`]. The in-memory network
//! (`super::memory`) calls the same methods, so both transports run the same server code.

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json};
use futures::Stream;
use openraft::Snapshot;
use openraft::errors::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tokio::sync::watch;

use super::transfer::{Outcome, ReceiveError, parse_snapshot_header, receive};
use super::{Contact, PeerNode, RPC_BODY_LIMIT, SnapshotHeader};
use crate::Raft;
use crate::snapshot::{SnapshotStats, remove_if_exists};
use crate::space::{Full, Space, entry_bytes};
use crate::state_machine::{StateMachine, mb_per_s};
use crate::types::{Entry, NodeId, TypeConfig, Vote};

/// A Raft answer as it travels: the response, or the error the receiving node returned.
pub(super) type Answer<T> = Result<T, RaftError<TypeConfig>>;

/// Shared state of the RPC server: the node's side of every RPC, whatever carried it.
#[derive(Clone)]
pub(super) struct Server {
    /// The Raft node.
    pub(super) raft: Raft,
    /// Whether every RPC must come with a [`PeerNode`] equal to the sender it names.
    pub(super) verify_senders: bool,
    /// Last contact with a leader, and the streams leaders have open to this node.
    pub(super) contact: Arc<Contact>,
    /// This node's applied index and apply hash, sent to leaders on their replication streams.
    pub(super) applied: Option<watch::Receiver<wal::Position>>,
    /// Where received snapshots go, read from the state machine on the first transfer.
    snapshots: Arc<tokio::sync::OnceCell<Snapshots>>,
    /// The data directory's free space: appends whose entries the disk cannot take are
    /// refused before Raft sees them (`None`: nothing is refused).
    pub(super) space: Option<Arc<Space>>,
}

/// What the snapshot receiver needs from the state machine.
#[derive(Clone)]
pub(super) struct Snapshots {
    /// The snapshot directory (on the database's file system).
    pub(super) dir: PathBuf,
    /// Counters.
    pub(super) stats: Arc<SnapshotStats>,
}

impl Server {
    /// The server of `raft`, recording leader contact in `contact`.
    pub(super) fn new(raft: Raft, contact: Arc<Contact>, verify_senders: bool) -> Server {
        Server {
            raft,
            contact,
            verify_senders,
            applied: None,
            snapshots: Arc::default(),
            space: None,
        }
    }

    /// Whether this node's disk can take `entries` on top of `pending` bytes of entries
    /// already handed to Raft and not yet answered; `Err` is the refusal. A heartbeat (no
    /// entries) is always taken. Refusing an append is what an unreachable follower does to
    /// the leader: it retries later, and the other voters carry the commit meanwhile.
    pub(super) fn room_for(&self, entries: &[Entry], pending: u64) -> Result<(), Full> {
        let Some(space) = &self.space else { return Ok(()) };
        if entries.is_empty() {
            return Ok(());
        }
        let bytes: u64 = entries.iter().map(entry_bytes).sum();
        space.admit_append(bytes + pending)
    }

    /// The node this server hands RPCs to.
    pub(super) fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The snapshot directory and counters. The router is built from the `Raft` alone, so they
    /// are asked of the state machine (through openraft's state machine task) once.
    pub(super) async fn snapshots(&self) -> Result<Snapshots, String> {
        let raft = self.raft.clone();
        self.snapshots
            .get_or_try_init(|| async move {
                raft.with_state_machine(|sm: &mut StateMachine| {
                    let s = Snapshots { dir: sm.dir().to_path_buf(), stats: sm.stats() };
                    Box::pin(async move { s })
                })
                .await
                .map_err(|e| e.to_string())
            })
            .await
            .cloned()
    }

    /// An append or heartbeat; an accepted one is recorded as contact with the leader.
    pub(super) async fn append(
        &self,
        req: AppendEntriesRequest<TypeConfig>,
    ) -> Answer<AppendEntriesResponse<TypeConfig>> {
        let leader_commit = req.leader_commit.as_ref().map_or(0, |l| l.index);
        let res = self.raft.append_entries(req).await;
        if matches!(
            res,
            Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_))
        ) {
            self.contact.heard(leader_commit);
        }
        res
    }

    /// A vote request.
    pub(super) async fn vote(
        &self,
        req: VoteRequest<TypeConfig>,
    ) -> Answer<VoteResponse<TypeConfig>> {
        self.raft.vote(req).await
    }

    /// A pre-vote request (would this node vote; nothing is persisted).
    pub(super) async fn pre_vote(
        &self,
        req: VoteRequest<TypeConfig>,
    ) -> Answer<VoteResponse<TypeConfig>> {
        self.raft.pre_vote(req).await
    }

    /// A leader handing leadership to this node.
    pub(super) async fn transfer_leader(
        &self,
        req: TransferLeaderRequest<TypeConfig>,
    ) -> Answer<TransferLeaderResponse<TypeConfig>> {
        self.raft.handle_transfer_leader(req).await.map_err(RaftError::Fatal)
    }

    /// Streams a snapshot body to a file in `snapshots.dir` ([`receive`]) and installs it.
    /// `outcome` counts the transfer as failed unless the body was received whole. Returns
    /// the install's answer, or why the body was refused (nothing installed, file deleted).
    pub(super) async fn install_snapshot<E: Display>(
        &self,
        snapshots: &Snapshots,
        outcome: Outcome,
        header: SnapshotHeader,
        body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> Result<Answer<SnapshotResponse<TypeConfig>>, ReceiveError> {
        let started = Instant::now();
        let last_log_id = header.meta.last_log_id;
        let file = match receive(snapshots, &header, body).await {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(?last_log_id, error = %e, "snapshot transfer rejected");
                return Err(e);
            }
        };
        outcome.succeeded();
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            ?last_log_id,
            bytes = file.len(),
            secs,
            mb_per_s = mb_per_s(file.len(), secs),
            "received snapshot"
        );
        // Install in a task of its own: if the sender goes away now, the install still
        // completes (or is skipped) before the file is cleaned up, instead of racing with it.
        let raft = self.raft.clone();
        let installing = tokio::spawn(async move {
            let path = file.path().to_path_buf();
            let snapshot = Snapshot { meta: header.meta, snapshot: file };
            let res = raft.install_full_snapshot(header.vote, snapshot).await;
            // Installed: the store renamed the file away. Not installed (a stale vote, or
            // already covered by what this node has): nothing else will use it.
            remove_if_exists(&path);
            res
        });
        match installing.await {
            Ok(res) => Ok(res.map_err(RaftError::Fatal)),
            Err(e) => Err(ReceiveError::Install(e.to_string())),
        }
    }
}

/// The server side of node-to-node RPC, to be served on the node's Raft address. Accepted
/// appends and heartbeats are recorded in `contact`. Snapshot bodies are streamed to the
/// state machine's snapshot directory without a size limit; the JSON RPCs are limited to
/// [`RPC_BODY_LIMIT`].
pub fn router(raft: Raft, contact: Arc<Contact>) -> Router {
    router_with(raft, contact, false, None, None)
}

/// [`router`], refusing (403) every RPC whose named sender is not the [`PeerNode`] the
/// transport proved, when `verify_senders` is set, sending this node's `applied` position
/// (index and apply hash) to leaders on their replication streams, and refusing appends whose
/// entries the disk cannot take (`space`: the stream ends, a single append answers 507). See
/// the module docs.
pub fn router_with(
    raft: Raft,
    contact: Arc<Contact>,
    verify_senders: bool,
    applied: Option<watch::Receiver<wal::Position>>,
    space: Option<Arc<Space>>,
) -> Router {
    let server = Server { applied, space, ..Server::new(raft, contact, verify_senders) };
    Router::new()
        .route(super::stream::STREAM_PATH, post(super::stream::server::open))
        // Single appends, from nodes that predate the stream (or when it is refused).
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/pre-vote", post(pre_vote))
        .route("/raft/transfer-leader", post(transfer_leader))
        .layer(DefaultBodyLimit::max(RPC_BODY_LIMIT))
        // Added after the layer, so the limit does not apply (the handler takes the raw body
        // stream anyway, which no limit touches).
        .route("/raft/snapshot", post(snapshot).layer(DefaultBodyLimit::disable()))
        .with_state(server)
}

/// Checks that an RPC claiming to come from node `claimed` was sent by that node, when the
/// server verifies senders. Returns the refusal (403) if not, logged under `keel::audit`.
pub(super) fn refuse_sender(
    server: &Server,
    peer: Option<Extension<PeerNode>>,
    rpc: &'static str,
    claimed: NodeId,
) -> Option<Response> {
    if !server.verify_senders {
        return None;
    }
    match peer {
        Some(Extension(PeerNode(proven))) if proven == claimed => None,
        Some(Extension(PeerNode(proven))) => {
            tracing::warn!(
                target: "keel::audit",
                rpc,
                claimed,
                certificate_node = proven,
                "refused a Raft RPC: the sender's certificate is for another node"
            );
            Some(
                (
                    StatusCode::FORBIDDEN,
                    format!(
                        "this {rpc} request claims to come from node {claimed}, but the client \
                         certificate is node {proven}'s"
                    ),
                )
                    .into_response(),
            )
        }
        None => {
            tracing::warn!(
                target: "keel::audit",
                rpc,
                claimed,
                "refused a Raft RPC: no verified node certificate"
            );
            Some(
                (StatusCode::FORBIDDEN, "Raft RPCs need a verified node certificate")
                    .into_response(),
            )
        }
    }
}

/// The node a vote names: the leader of an append or a transfer, the candidate of a vote.
pub(super) fn voter(vote: &Vote) -> NodeId {
    vote.leader_id().voted_for
}

async fn append(
    State(server): State<Server>,
    peer: Option<Extension<PeerNode>>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    if let Some(refused) = refuse_sender(&server, peer, "append", voter(&req.vote)) {
        return refused;
    }
    if let Err(full) = server.room_for(&req.entries, 0) {
        return (StatusCode::INSUFFICIENT_STORAGE, full.to_string()).into_response();
    }
    Json(server.append(req).await).into_response()
}

async fn vote(
    State(server): State<Server>,
    peer: Option<Extension<PeerNode>>,
    Json(req): Json<VoteRequest<TypeConfig>>,
) -> Response {
    if let Some(refused) = refuse_sender(&server, peer, "vote", voter(&req.vote)) {
        return refused;
    }
    Json(server.vote(req).await).into_response()
}

async fn pre_vote(
    State(server): State<Server>,
    peer: Option<Extension<PeerNode>>,
    Json(req): Json<VoteRequest<TypeConfig>>,
) -> Response {
    if let Some(refused) = refuse_sender(&server, peer, "pre-vote", voter(&req.vote)) {
        return refused;
    }
    Json(server.pre_vote(req).await).into_response()
}

async fn snapshot(
    State(server): State<Server>,
    peer: Option<Extension<PeerNode>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The sender is checked before anything is written to disk.
    if server.verify_senders {
        let claimed = match parse_snapshot_header(&headers) {
            Ok(h) => voter(&h.vote),
            Err(msg) => return (StatusCode::BAD_REQUEST, msg).into_response(),
        };
        if let Some(refused) = refuse_sender(&server, peer, "snapshot", claimed) {
            return refused;
        }
    }
    let snapshots = match server.snapshots().await {
        Ok(s) => s,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    };
    // Counts a failure unless the transfer succeeds, also when the sender disconnects and the
    // server drops this future.
    let outcome = Outcome::new(snapshots.stats.clone());
    let header = match parse_snapshot_header(&headers) {
        Ok(h) => h,
        Err(msg) => {
            tracing::warn!(error = %msg, "snapshot transfer rejected");
            return (StatusCode::BAD_REQUEST, msg).into_response();
        }
    };
    match server.install_snapshot(&snapshots, outcome, header, body.into_data_stream()).await {
        Ok(res) => Json(res).into_response(),
        Err(e) => (e.status(), e.to_string()).into_response(),
    }
}

async fn transfer_leader(
    State(server): State<Server>,
    peer: Option<Extension<PeerNode>>,
    Json(req): Json<TransferLeaderRequest<TypeConfig>>,
) -> Response {
    if let Some(refused) = refuse_sender(&server, peer, "transfer-leader", voter(req.from_leader()))
    {
        return refused;
    }
    Json(server.transfer_leader(req).await).into_response()
}
