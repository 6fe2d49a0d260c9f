//! Node-to-node RPC over the Raft port, and an in-memory network for tests.
//!
//! The client side ([`Network`], [`Peer`]) implements openraft's `RaftNetworkV2`. Appends and
//! heartbeats travel on the replication [`stream`]: binary frames on long-lived, pipelined
//! connections opened by an HTTP/1.1 upgrade of `POST /raft/stream`, which also carry the
//! follower's applied position back to the leader. The other RPCs are one
//! `POST http(s)://<raft_addr>/raft/<name>` each, with a JSON body and a JSON
//! `Result<Response, RaftError>` answer; so are appends to a node that does not serve the
//! stream (`POST /raft/append`, an older version).
//!
//! The module's parts:
//!
//! - `client`: [`Network`] (openraft's `RaftNetworkFactory`), [`Peer`] (its `RaftNetworkV2`
//!   for one target) and [`Transport`] (plain HTTP or the binary's TLS clients, and where
//!   followers' applied positions go).
//! - [`stream`]: the replication stream, both ends, and its frames.
//! - `server`: [`router`] / [`router_with`], the axum routes that hand each RPC to the local
//!   `Raft`, checking senders and recording [`Contact`]. The handlers are thin: each RPC's work
//!   is a transport-free method of the server state, which [`memory`] calls too.
//! - `transfer`: the streamed snapshot transfer, both ends (below).
//! - [`memory`]: the same RPCs without HTTP, between nodes of one process, through a
//!   [`memory::Switchboard`] a test controls (partitions, dropped or held messages, a log of
//!   every message). The `keel` binary never builds one.
//!
//! # Snapshots are streamed
//!
//! `POST /raft/snapshot` carries the database image as the raw request body, streamed from the
//! image file in blocks (`Peer::full_snapshot`), with a `Content-Length` and the vote, meta,
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
//! The JSON RPCs keep a body limit ([`RPC_BODY_LIMIT`]); the snapshot route has none; stream
//! frames are limited to [`stream::frame::MAX_FRAME`].
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
//! when no [`PeerNode`] is present. A replication stream is checked when it opens (the node it
//! names), and each append on it must name that node too. Refusals are logged under the
//! `keel::audit` target.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state_machine::SnapshotMeta;
use crate::types::{NodeId, Vote};

mod client;
pub mod memory;
mod server;
pub mod stream;
mod transfer;

pub use client::{Network, Peer, Transport};
pub use server::{router, router_with};
pub use stream::AppliedSink;

/// A snapshot as openraft hands it to the network to send: its meta and the image file.
pub(crate) type OutgoingSnapshot = openraft::Snapshot<
    openraft::alias::CommittedLeaderIdOf<crate::types::TypeConfig>,
    NodeId,
    crate::types::MemberAddr,
    crate::snapshot::SnapshotFile,
>;

/// A snapshot transfer fails when the connection takes no new block for this long.
pub const SNAPSHOT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Body limit of the JSON RPCs (appends can carry big records; axum buffers these bodies).
/// Snapshots are streamed to disk and have no limit.
pub const RPC_BODY_LIMIT: usize = 4 << 30;

/// When this node last heard from a leader, and what that leader had committed then; and
/// which leaders have a replication stream open to this node.
#[derive(Debug, Default)]
pub struct Contact {
    /// `(when, leader's commit index)` of the last accepted append or heartbeat.
    last: std::sync::Mutex<Option<(std::time::Instant, crate::Lsn)>>,
    /// Open replication streams, by the node that opened them.
    streams: std::sync::Mutex<std::collections::BTreeMap<NodeId, usize>>,
    /// How many replication streams have ended, for [`crate::prompt_election`].
    closures: tokio::sync::watch::Sender<u64>,
}

/// A replication stream counted in [`Contact`] while this lives.
struct OpenStream<'a> {
    /// Where it is counted.
    contact: &'a Contact,
    /// The node that opened it.
    leader: NodeId,
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        let mut streams = self.contact.streams.lock().expect("contact mutex poisoned");
        if let Some(n) = streams.get_mut(&self.leader) {
            *n -= 1;
            if *n == 0 {
                streams.remove(&self.leader);
            }
        }
        drop(streams);
        self.contact.closures.send_modify(|n| *n += 1);
    }
}

impl Contact {
    /// Counts a stream `leader` opened, until the returned guard is dropped.
    fn stream_opened(&self, leader: NodeId) -> OpenStream<'_> {
        *self.streams.lock().expect("contact mutex poisoned").entry(leader).or_default() += 1;
        OpenStream { contact: self, leader }
    }

    /// Whether node `leader` has a replication stream open to this node (which then carries
    /// this node's applied positions to it).
    pub fn streaming_from(&self, leader: NodeId) -> bool {
        self.streams.lock().expect("contact mutex poisoned").contains_key(&leader)
    }

    /// Changes whenever a replication stream to this node ends.
    pub fn stream_closures(&self) -> tokio::sync::watch::Receiver<u64> {
        self.closures.subscribe()
    }

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
