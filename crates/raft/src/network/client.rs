//! The client side of node-to-node RPC: [`Network`] creates a [`Peer`] per target. Appends
//! and heartbeats go on the replication stream (`super::stream`, whose connections [`Network`]
//! pools per target); every other RPC is one HTTP POST with a JSON body (the snapshot streams
//! its file instead, see `transfer`). [`Transport`] says how to reach a node: plain HTTP or the
//! binary's TLS clients, and where followers' applied positions go.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use openraft::OptionalSend;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory, stream_append_sequential};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::SNAPSHOT_IDLE_TIMEOUT;
use super::stream::AppliedSink;
use super::stream::client::{Conn, OpenError, Pool, open, session};
use crate::snapshot::{SnapshotFile, SnapshotStats};
use crate::space::PeersFull;
use crate::types::{MemberAddr, NodeId, TypeConfig, Vote};

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
    /// Where the applied positions followers send on replication streams go.
    applied: Option<AppliedSink>,
    /// Peers that refused appends for lack of space (shared by every clone).
    peers_full: Arc<PeersFull>,
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
        Transport { scheme: "http", clients: None, applied: None, peers_full: Arc::default() }
    }

    /// HTTPS, with `clients(target)` building the client for RPCs to node `target`.
    pub fn https(
        clients: impl Fn(NodeId) -> Result<reqwest::Client, String> + Send + Sync + 'static,
    ) -> Transport {
        Transport {
            scheme: "https",
            clients: Some(Arc::new(clients)),
            applied: None,
            peers_full: Arc::default(),
        }
    }

    /// This transport, handing the applied positions followers send on replication streams to
    /// `sink` (`(follower, applied index)`; the leader's `sync` and `replicas:K` writes wait
    /// on them).
    pub fn with_applied(mut self, sink: AppliedSink) -> Transport {
        self.applied = Some(sink);
        self
    }

    /// The peers that refused this node's appends for lack of space, as RPCs over this
    /// transport (and its clones) saw them.
    pub fn peers_full(&self) -> Arc<PeersFull> {
        self.peers_full.clone()
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
    /// Idle replication-stream connections, by target node and address.
    pools: Arc<Mutex<Pools>>,
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
            pools: Arc::default(),
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

    /// The stream connections to `target` at `addr`, shared by its peers.
    fn pool_for(&self, target: NodeId, addr: &str) -> Arc<Pool> {
        let mut pools = self.pools.lock().expect("pools mutex poisoned");
        pools.entry((target, addr.to_string())).or_default().clone()
    }

    /// Replaces [`SNAPSHOT_IDLE_TIMEOUT`]: how long a snapshot upload may make no progress.
    pub fn with_snapshot_idle_timeout(mut self, timeout: Duration) -> Network {
        self.idle_timeout = timeout;
        self
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &MemberAddr) -> Peer {
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
            pool: self.pool_for(target, &node.raft_addr),
            applied: self.transport.applied.clone(),
            peers_full: self.transport.peers_full.clone(),
        }
    }
}

/// The client end of RPCs to one peer.
pub struct Peer {
    /// This node's id.
    pub(super) id: NodeId,
    /// The peer's node id, for logs.
    pub(super) target: NodeId,
    /// The peer's Raft address.
    pub(super) addr: String,
    /// `http` or `https`.
    pub(super) scheme: &'static str,
    /// HTTP client for this peer, or why none could be built (every RPC then fails with it).
    pub(super) client: Result<reqwest::Client, String>,
    /// Snapshot counters of this node.
    pub(super) stats: Arc<SnapshotStats>,
    /// How long a snapshot upload may make no progress.
    pub(super) idle_timeout: Duration,
    /// Idle replication-stream connections to the peer (shared with its other `Peer`s).
    pool: Arc<Pool>,
    /// Where the applied positions the peer sends go.
    applied: Option<AppliedSink>,
    /// Where the peer's refusals for lack of space go.
    peers_full: Arc<PeersFull>,
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
    pub(super) fn client(&self) -> Result<&reqwest::Client, NetworkError<TypeConfig>> {
        self.client.as_ref().map_err(|e| NetworkError::from_string(e.clone()))
    }

    pub(super) async fn answer<Resp>(
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
            if status == reqwest::StatusCode::INSUFFICIENT_STORAGE {
                self.peers_full.refused(self.target);
            }
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

/// Stream connection pools by target node and address.
type Pools = std::collections::HashMap<(NodeId, String), Arc<Pool>>;

/// What `RaftNetworkV2::stream_append` returns.
type AnswerStream<'s> = BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

impl Peer {
    /// An idle stream connection to the peer, or a new one; `Ok(None)` when the peer does not
    /// serve the stream (then appends go as single requests).
    async fn stream_conn(&self, option: &RPCOption) -> Result<Option<Conn>, RPCError<TypeConfig>> {
        if let Some(conn) = self.pool.take() {
            return Ok(Some(conn));
        }
        let client = self.client().map_err(RPCError::Network)?;
        match open(client, self.scheme, &self.addr, self.id, option.hard_ttl()).await {
            Ok(io) => {
                Ok(Some(Conn::new(io, self.target, self.applied.clone(), self.peers_full.clone())))
            }
            Err(OpenError::NotServed) => {
                tracing::info!(
                    peer = self.target,
                    "the peer does not serve the replication stream; sending single appends"
                );
                self.pool.refused_now();
                Ok(None)
            }
            Err(OpenError::Failed(e)) => Err(e),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotFile;

    /// Appends on a pipelined replication stream (see `super::stream`), or as single requests
    /// to a peer that does not serve it.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<AnswerStream<'s>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let conn =
                if self.pool.refused_recently() { None } else { self.stream_conn(&option).await? };
            match conn {
                Some(conn) => {
                    Ok(session(conn, self.pool.clone(), input, option.soft_ttl(), self.target))
                }
                None => stream_append_sequential(self, input, option).await,
            }
        })
    }

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
        snapshot: super::OutgoingSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        self.send_snapshot(vote, snapshot, cancel, option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("transfer-leader", &req, &option).await
    }
}
