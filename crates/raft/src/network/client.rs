//! The client side of node-to-node RPC: [`Network`] creates a [`Peer`] per target, and each
//! RPC is one HTTP POST with a JSON body (the snapshot streams its file instead, see
//! `transfer`). [`Transport`] says how to reach a node: plain HTTP or the binary's TLS clients.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::OptionalSend;
use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::SNAPSHOT_IDLE_TIMEOUT;
use crate::snapshot::{SnapshotFile, SnapshotStats};
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
