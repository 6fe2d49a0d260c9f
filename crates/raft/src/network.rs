//! Node-to-node RPC: HTTP/JSON over the Raft port.
//!
//! The client side ([`Network`], [`Peer`]) implements openraft's `RaftNetworkV2` with reqwest:
//! each RPC is `POST http(s)://<raft_addr>/raft/<name>` with a JSON body and a JSON
//! `Result<Response, RaftError>` answer.
//!
//! # Snapshots are streamed
//!
//! `POST /raft/snapshot` carries the database image as the raw request body, streamed from the
//! image file in blocks ([`Peer::full_snapshot`]), with a `Content-Length` and the vote, meta,
//! length and CRC-32 as JSON in the `x-keel-snapshot` header. The receiver ([`router`]) streams
//! the body into `receiving-<term>-<index>-<nanos>-<n>.tmp` in the snapshot directory,
//! computing the checksum as it goes, checks length and checksum, fsyncs, and only then hands the
//! file to `Raft::install_full_snapshot`, whose state machine takes the file over as the live
//! database. Neither side holds more than a few blocks of the image in memory. On any failure
//! (bad header, short or long body, checksum mismatch, I/O error, the sender disconnecting) the
//! temporary file is deleted and the answer is an error; the leader retries. A snapshot that
//! openraft decides not to install (stale vote, already covered) is deleted after the call.
//!
//! Timeouts: openraft's `install_snapshot_timeout` (the RPC's `hard_ttl`) would cap the whole
//! transfer, which a big database on a slow link can exceed however healthy it is. Instead a
//! transfer fails when no block has been taken by the connection for
//! [`SNAPSHOT_IDLE_TIMEOUT`] while the body streams, and after the last byte the receiver has
//! `hard_ttl` to answer (it fsyncs and installs meanwhile). openraft's cancel signal (the
//! leader stepped down, the follower was removed) aborts the transfer at any point. The
//! sender logs progress at debug every 64 MiB and the total (bytes, MB/s) at info.
//!
//! The JSON RPCs keep a body limit ([`RPC_BODY_LIMIT`]); the snapshot route has none.
//!
//! The server also records when this node last heard from a leader ([`Contact`]), for reads
//! that bound their staleness (`freshness`).
//!
//! Connection failures map to `Unreachable` (openraft backs off); other failures to `Network`.
//!
//! # Transport security
//!
//! This module speaks plain HTTP unless it is given a [`Transport`] that builds TLS clients
//! (the `keel` binary's mutual TLS: each client presents this node's certificate and checks
//! that the server's certificate names the node it meant to reach). The server side
//! ([`router_with`]) can then insist on knowing who sent each request: the TLS layer in front
//! of it puts the sender's certificate-proven node id into the request as a [`PeerNode`]
//! extension, and every RPC that names its sender (the vote's node id of an append, a vote or
//! pre-vote, a snapshot, a leadership transfer) is refused with 403 when the two differ, or
//! when no [`PeerNode`] is present. Refusals are logged under the `keel::audit` target.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json};
use futures::{Stream, StreamExt};
use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Raft;
use crate::snapshot::{
    BLOCK, SnapshotFile, SnapshotStats, TempFile, receiving_path, remove_if_exists,
};
use crate::state_machine::{SnapshotMeta, StateMachine, mb_per_s};
use crate::types::{Node, NodeId, TypeConfig, Vote};

/// A snapshot transfer fails when the connection takes no new block for this long.
pub const SNAPSHOT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Body limit of the JSON RPCs (appends can carry big records; axum buffers these bodies).
/// Snapshots are streamed to disk and have no limit.
pub const RPC_BODY_LIMIT: usize = 4 << 30;

/// Size of the blocks a snapshot is read in for sending.
const SEND_BLOCK: usize = 256 << 10;

/// Progress is logged at debug every this many bytes of a transfer.
const PROGRESS_LOG_EVERY: u64 = 64 << 20;

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
    /// Whether every RPC must come with a [`PeerNode`] equal to the sender it names.
    verify_senders: bool,
    /// Last contact with a leader.
    contact: Arc<Contact>,
    /// Where received snapshots go, read from the state machine on the first transfer.
    snapshots: Arc<tokio::sync::OnceCell<Snapshots>>,
}

/// What the snapshot receiver needs from the state machine.
#[derive(Clone)]
struct Snapshots {
    /// The snapshot directory (on the database's file system).
    dir: PathBuf,
    /// Counters.
    stats: Arc<SnapshotStats>,
}

impl Server {
    /// The snapshot directory and counters. The router is built from the `Raft` alone, so they
    /// are asked of the state machine (through openraft's state machine task) once.
    async fn snapshots(&self) -> Result<Snapshots, String> {
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
}

/// Header carrying a snapshot's [`SnapshotHeader`], the image being the raw body.
const SNAPSHOT_HEADER: &str = "x-keel-snapshot";

/// What travels in the `x-keel-snapshot` header, as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotHeader {
    /// The leader's vote.
    vote: Vote,
    /// What the image reflects.
    meta: SnapshotMeta,
    /// The image's length in bytes.
    len: u64,
    /// The image's CRC-32.
    checksum: u32,
}

/// The node id a request's sender proved, put into the request's extensions by the transport
/// in front of [`router_with`] (mutual TLS: the node id bound in the client's certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNode(pub NodeId);

/// Builds the HTTP client for RPCs to one node; see [`Transport`].
type ClientFactory = dyn Fn(NodeId) -> Result<reqwest::Client, String> + Send + Sync;

/// How RPCs reach other nodes: the URL scheme and the HTTP client for each target node.
///
/// [`Transport::plain`] is HTTP with one shared client. A TLS transport builds one client per
/// target (each verifying that the server is that node), and [`Network`] keeps it for as long
/// as the network lives, so connections are reused.
#[derive(Clone)]
pub struct Transport {
    /// `http` or `https`.
    scheme: &'static str,
    /// Builds the client for RPCs to a node; `None` means one shared plain client.
    clients: Option<Arc<ClientFactory>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("scheme", &self.scheme).finish_non_exhaustive()
    }
}

impl Default for Transport {
    fn default() -> Self {
        Transport::plain()
    }
}

impl Transport {
    /// Plain HTTP.
    pub fn plain() -> Transport {
        Transport { scheme: "http", clients: None }
    }

    /// HTTPS, with `clients(target)` building the client for RPCs to node `target`.
    pub fn https(
        clients: impl Fn(NodeId) -> Result<reqwest::Client, String> + Send + Sync + 'static,
    ) -> Transport {
        Transport { scheme: "https", clients: Some(Arc::new(clients)) }
    }

    /// The URL scheme: `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }
}

/// A plain HTTP client for RPCs.
fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .expect("building an HTTP client without TLS cannot fail")
}

/// Creates a [`Peer`] per replication target. Plain HTTP shares one client (connection pool);
/// TLS keeps one client per target.
#[derive(Clone)]
pub struct Network {
    /// This node's id (for errors).
    id: NodeId,
    /// Shared client for plain HTTP; keeps connections to peers alive between RPCs.
    client: reqwest::Client,
    /// Scheme and per-target clients.
    transport: Transport,
    /// Clients built by `transport`, by target node.
    clients: Arc<Mutex<std::collections::HashMap<NodeId, reqwest::Client>>>,
    /// Snapshot counters of this node.
    stats: Arc<SnapshotStats>,
    /// See [`SNAPSHOT_IDLE_TIMEOUT`].
    idle_timeout: Duration,
}

impl Network {
    /// The network of node `id`, with a fresh connection pool, counting snapshot transfers in
    /// `stats`.
    pub fn new(id: NodeId, stats: Arc<SnapshotStats>) -> Network {
        Network::with_transport(id, stats, Transport::plain())
    }

    /// [`Network::new`] over `transport`.
    pub fn with_transport(id: NodeId, stats: Arc<SnapshotStats>, transport: Transport) -> Network {
        Network {
            id,
            client: plain_client(),
            transport,
            clients: Arc::default(),
            stats,
            idle_timeout: SNAPSHOT_IDLE_TIMEOUT,
        }
    }

    /// The client for RPCs to `target`.
    fn client_for(&self, target: NodeId) -> Result<reqwest::Client, String> {
        let Some(factory) = &self.transport.clients else { return Ok(self.client.clone()) };
        let mut clients = self.clients.lock().expect("clients mutex poisoned");
        if let Some(client) = clients.get(&target) {
            return Ok(client.clone());
        }
        let client = factory(target)?;
        clients.insert(target, client.clone());
        Ok(client)
    }

    /// Replaces [`SNAPSHOT_IDLE_TIMEOUT`]: how long a snapshot upload may make no progress.
    pub fn with_snapshot_idle_timeout(mut self, timeout: Duration) -> Network {
        self.idle_timeout = timeout;
        self
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Peer {
        let client = self.client_for(target).map_err(|e| {
            tracing::error!(peer = target, error = %e, "cannot build the RPC client for a peer");
            e
        });
        Peer {
            id: self.id,
            target,
            addr: node.raft_addr.clone(),
            scheme: self.transport.scheme,
            client,
            stats: self.stats.clone(),
            idle_timeout: self.idle_timeout,
        }
    }
}

/// The client end of RPCs to one peer.
pub struct Peer {
    /// This node's id.
    id: NodeId,
    /// The peer's node id, for logs.
    target: NodeId,
    /// The peer's Raft address.
    addr: String,
    /// `http` or `https`.
    scheme: &'static str,
    /// HTTP client for this peer, or why none could be built (every RPC then fails with it).
    client: Result<reqwest::Client, String>,
    /// Snapshot counters of this node.
    stats: Arc<SnapshotStats>,
    /// How long a snapshot upload may make no progress.
    idle_timeout: Duration,
}

fn rpc_error(e: reqwest::Error) -> RPCError<TypeConfig> {
    if e.is_connect() {
        RPCError::Unreachable(Unreachable::new(&e))
    } else {
        RPCError::Network(NetworkError::new(&e))
    }
}

impl Peer {
    /// The HTTP client, or the reason there is none as an RPC error.
    fn client(&self) -> Result<&reqwest::Client, NetworkError<TypeConfig>> {
        self.client.as_ref().map_err(|e| NetworkError::from_string(e.clone()))
    }

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
        let url = format!("{}://{}/raft/{name}", self.scheme, self.addr);
        let client = self.client().map_err(RPCError::Network)?;
        let resp = client.post(&url).json(req).timeout(option.hard_ttl()).send().await;
        self.answer(&url, resp).await
    }
}

/// How far a snapshot upload has got.
#[derive(Debug)]
struct Upload {
    /// Bytes handed to the connection.
    bytes: u64,
    /// When the connection last took a block.
    last: Instant,
    /// When the whole body had been handed over.
    done: Option<Instant>,
    /// `bytes` at the last progress log.
    logged: u64,
}

/// The body of a snapshot upload: the file's blocks, recording progress as the connection takes
/// them.
struct Metered<S> {
    /// The file's blocks.
    inner: S,
    /// Shared with the watchdog.
    upload: Arc<Mutex<Upload>>,
    /// Counts bytes sent.
    stats: Arc<SnapshotStats>,
    /// Total length, for logs.
    total: u64,
    /// Receiver, for logs.
    target: NodeId,
    /// Start of the transfer, for logs.
    started: Instant,
}

impl<S> Stream for Metered<S>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = ready!(Pin::new(&mut this.inner).poll_next(cx));
        let mut up = this.upload.lock().expect("upload mutex poisoned");
        let now = Instant::now();
        match &item {
            Some(Ok(block)) => {
                up.bytes += block.len() as u64;
                up.last = now;
                // hyper stops polling once Content-Length bytes went out, so the end of the
                // body is when the last byte was handed over, not the stream's `None`.
                if up.bytes >= this.total {
                    up.done.get_or_insert(now);
                }
                this.stats.add_bytes_sent(block.len() as u64);
                if up.bytes >= up.logged + PROGRESS_LOG_EVERY {
                    up.logged = up.bytes;
                    let secs = this.started.elapsed().as_secs_f64();
                    tracing::debug!(
                        peer = this.target,
                        bytes = up.bytes,
                        total = this.total,
                        mb_per_s = mb_per_s(up.bytes, secs),
                        "sending snapshot"
                    );
                }
            }
            Some(Err(_)) => {}
            None => {
                up.done.get_or_insert(now);
            }
        }
        Poll::Ready(item)
    }
}

/// Resolves when an upload stalls: no block taken for `idle` while the body streams, or no
/// answer `answer_ttl` after the last byte. Returns the limit that was hit.
async fn stalled(upload: Arc<Mutex<Upload>>, idle: Duration, answer_ttl: Duration) -> Duration {
    loop {
        let (deadline, limit) = {
            let up = upload.lock().expect("upload mutex poisoned");
            match up.done {
                Some(done) => (done + answer_ttl, answer_ttl),
                None => (up.last + idle, idle),
            }
        };
        if Instant::now() >= deadline {
            return limit;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotFile;

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

    /// Streams the snapshot's image file as the request body; see the module docs for the
    /// header, the timeouts and cancellation.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<
            openraft::alias::CommittedLeaderIdOf<TypeConfig>,
            NodeId,
            Node,
            SnapshotFile,
        >,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let file = snapshot.snapshot;
        let (len, checksum) = (file.len(), file.checksum());
        let last_log_id = snapshot.meta.last_log_id;
        let header =
            serde_json::to_string(&SnapshotHeader { vote, meta: snapshot.meta, len, checksum })
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let url = format!("{}://{}/raft/snapshot", self.scheme, self.addr);
        let client = self.client().map_err(StreamingError::Network)?.clone();
        let started = Instant::now();
        // An empty body is done before it starts (hyper will not poll it).
        let done = (len == 0).then_some(started);
        let upload = Arc::new(Mutex::new(Upload { bytes: 0, last: started, done, logged: 0 }));
        let reader = tokio::fs::File::from_std(file.into_file()).take(len);
        let body = Metered {
            inner: tokio_util::io::ReaderStream::with_capacity(reader, SEND_BLOCK),
            upload: upload.clone(),
            stats: self.stats.clone(),
            total: len,
            target: self.target,
            started,
        };
        tracing::debug!(peer = self.target, ?last_log_id, bytes = len, "sending snapshot");
        let send = async {
            let resp = client
                .post(&url)
                .header(SNAPSHOT_HEADER, header)
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await;
            self.answer::<SnapshotResponse<TypeConfig>>(&url, resp).await
        };
        let res = tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            limit = stalled(upload.clone(), self.idle_timeout, option.hard_ttl()) => {
                Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.id,
                    target: self.target,
                    timeout: limit,
                }))
            }
            res = send => res.map_err(StreamingError::from),
        };
        let sent = upload.lock().expect("upload mutex poisoned").bytes;
        let secs = started.elapsed().as_secs_f64();
        match &res {
            Ok(_) => {
                self.stats.on_sent(true);
                tracing::info!(
                    peer = self.target,
                    ?last_log_id,
                    bytes = sent,
                    secs,
                    mb_per_s = mb_per_s(sent, secs),
                    "sent snapshot"
                );
            }
            Err(StreamingError::Closed(e)) => {
                tracing::info!(peer = self.target, bytes = sent, total = len, reason = %e, "snapshot transfer cancelled");
            }
            Err(e) => {
                self.stats.on_sent(false);
                tracing::warn!(peer = self.target, bytes = sent, total = len, secs, error = %e, "snapshot transfer failed");
            }
        }
        res
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
/// appends and heartbeats are recorded in `contact`. Snapshot bodies are streamed to the
/// state machine's snapshot directory without a size limit; the JSON RPCs are limited to
/// [`RPC_BODY_LIMIT`].
pub fn router(raft: Raft, contact: Arc<Contact>) -> Router {
    router_with(raft, contact, false)
}

/// [`router`], refusing (403) every RPC whose named sender is not the [`PeerNode`] the
/// transport proved, when `verify_senders` is set. See the module docs.
pub fn router_with(raft: Raft, contact: Arc<Contact>, verify_senders: bool) -> Router {
    let server = Server { raft, contact, verify_senders, snapshots: Arc::default() };
    Router::new()
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
fn refuse_sender(
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
fn voter(vote: &Vote) -> NodeId {
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
    let leader_commit = req.leader_commit.as_ref().map_or(0, |l| l.index);
    let res = server.raft.append_entries(req).await;
    if matches!(res, Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)))
    {
        server.contact.heard(leader_commit);
    }
    Json(res).into_response()
}

async fn vote(
    State(server): State<Server>,
    peer: Option<Extension<PeerNode>>,
    Json(req): Json<VoteRequest<TypeConfig>>,
) -> Response {
    if let Some(refused) = refuse_sender(&server, peer, "vote", voter(&req.vote)) {
        return refused;
    }
    Json(server.raft.vote(req).await).into_response()
}

async fn pre_vote(
    State(server): State<Server>,
    peer: Option<Extension<PeerNode>>,
    Json(req): Json<VoteRequest<TypeConfig>>,
) -> Response {
    if let Some(refused) = refuse_sender(&server, peer, "pre-vote", voter(&req.vote)) {
        return refused;
    }
    Json(server.raft.pre_vote(req).await).into_response()
}

/// Why a snapshot body was not accepted.
#[derive(Debug, thiserror::Error)]
enum ReceiveError {
    #[error("reading the snapshot body: {0}")]
    Body(String),
    #[error("snapshot body is longer than the announced {0} bytes")]
    TooLong(u64),
    #[error("snapshot body has {got} bytes, the header announced {expected}")]
    Length { got: u64, expected: u64 },
    #[error("snapshot checksum {got:08x} does not match the announced {expected:08x}")]
    Checksum { got: u32, expected: u32 },
    #[error("writing the snapshot: {0}")]
    Io(#[from] std::io::Error),
}

impl ReceiveError {
    fn status(&self) -> StatusCode {
        match self {
            ReceiveError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Counts a received snapshot as failed when dropped, unless [`Outcome::succeeded`].
struct Outcome(Option<Arc<SnapshotStats>>);

impl Outcome {
    fn succeeded(mut self) {
        if let Some(stats) = self.0.take() {
            stats.on_received(true);
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if let Some(stats) = self.0.take() {
            stats.on_received(false);
        }
    }
}

/// The snapshot header of a request, checked against its `Content-Length` if it has one.
fn parse_snapshot_header(headers: &HeaderMap) -> Result<SnapshotHeader, String> {
    let header = headers
        .get(SNAPSHOT_HEADER)
        .and_then(|h| h.to_str().ok())
        .ok_or("missing snapshot header")?;
    let header: SnapshotHeader =
        serde_json::from_str(header).map_err(|e| format!("bad snapshot header: {e}"))?;
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = announced
        && n != header.len
    {
        return Err(format!(
            "content-length of {n} bytes differs from the snapshot's {} bytes",
            header.len
        ));
    }
    Ok(header)
}

/// Streams a snapshot body into a new temporary file in the snapshot directory, checking its
/// length and checksum against `header`, and fsyncs it. On any error (or if the future is
/// dropped) the file is deleted. The returned file is no longer guarded: the caller hands it
/// to the state machine and deletes it if that did not take it.
async fn receive(
    snapshots: &Snapshots,
    header: &SnapshotHeader,
    mut body: impl Stream<Item = Result<Bytes, axum::Error>> + Unpin,
) -> Result<SnapshotFile, ReceiveError> {
    let (term, index) = header.meta.last_log_id.map_or((0, 0), |l| (l.leader_id.term, l.index));
    let tmp = TempFile::new(receiving_path(&snapshots.dir, term, index));
    let file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(tmp.path()).await?;
    let mut out = tokio::io::BufWriter::with_capacity(BLOCK, file);
    let mut hasher = crc32fast::Hasher::new();
    let mut got = 0u64;
    let mut logged = 0u64;
    let started = Instant::now();
    while let Some(block) = body.next().await {
        let block = block.map_err(|e| ReceiveError::Body(e.to_string()))?;
        got += block.len() as u64;
        snapshots.stats.add_bytes_received(block.len() as u64);
        if got > header.len {
            return Err(ReceiveError::TooLong(header.len));
        }
        hasher.update(&block);
        out.write_all(&block).await?;
        if got >= logged + PROGRESS_LOG_EVERY {
            logged = got;
            let secs = started.elapsed().as_secs_f64();
            tracing::debug!(
                bytes = got,
                total = header.len,
                mb_per_s = mb_per_s(got, secs),
                "receiving snapshot"
            );
        }
    }
    if got != header.len {
        return Err(ReceiveError::Length { got, expected: header.len });
    }
    let checksum = hasher.finalize();
    if checksum != header.checksum {
        return Err(ReceiveError::Checksum { got: checksum, expected: header.checksum });
    }
    out.flush().await?;
    let file = out.into_inner();
    file.sync_all().await?;
    drop(file);
    let received = SnapshotFile::open(tmp.path(), got, checksum)?;
    tmp.keep();
    Ok(received)
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
    let outcome = Outcome(Some(snapshots.stats.clone()));
    let header = match parse_snapshot_header(&headers) {
        Ok(h) => h,
        Err(msg) => {
            tracing::warn!(error = %msg, "snapshot transfer rejected");
            return (StatusCode::BAD_REQUEST, msg).into_response();
        }
    };
    let started = Instant::now();
    let last_log_id = header.meta.last_log_id;
    let file = match receive(&snapshots, &header, body.into_data_stream()).await {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(?last_log_id, error = %e, "snapshot transfer rejected");
            return (e.status(), e.to_string()).into_response();
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
    // Install in a task of its own: if the sender goes away now, the install still completes
    // (or is skipped) before the file is cleaned up, instead of racing with it.
    let raft = server.raft.clone();
    let installing = tokio::spawn(async move {
        let path = file.path().to_path_buf();
        let snapshot = Snapshot { meta: header.meta, snapshot: file };
        let res = raft.install_full_snapshot(header.vote, snapshot).await;
        // Installed: the store renamed the file away. Not installed (a stale vote, or already
        // covered by what this node has): nothing else will use it.
        remove_if_exists(&path);
        res
    });
    match installing.await {
        Ok(res) => {
            let res: Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>> =
                res.map_err(RaftError::Fatal);
            Json(res).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("installing the snapshot: {e}"))
            .into_response(),
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
    let res: Result<TransferLeaderResponse<TypeConfig>, RaftError<TypeConfig>> =
        server.raft.handle_transfer_leader(req).await.map_err(RaftError::Fatal);
    Json(res).into_response()
}
