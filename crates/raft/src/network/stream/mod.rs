//! The replication stream: appends from a leader to one follower as binary frames on a
//! long-lived connection, pipelined, with the follower's applied position flowing back.
//!
//! # How a connection opens
//!
//! The leader sends `POST /raft/stream` on the follower's Raft port with `Connection: upgrade`,
//! `Upgrade: keel-raft-stream/1` and its node id in `x-keel-node`. The follower checks the
//! sender as every Raft RPC is checked (under mutual TLS the certificate's node must be the one
//! named, else 403, logged under `keel::audit`), answers `101 Switching Protocols`, and from then
//! on both sides speak [`frame`]s on the upgraded connection: TLS, when the Raft port speaks
//! it, stays underneath. Every append's vote must still name the node that opened the stream;
//! one that names another ends the stream with a [`Down::Failed`] frame (and an audit line).
//!
//! # What travels
//!
//! Leader to follower: [`Up::Append`], one AppendEntries request each. Follower to leader:
//! [`Down::Answer`], one per append and in the same order (the follower feeds the appends to
//! `Raft::stream_append`, which answers in order, and one ordered connection keeps it so);
//! [`Down::Position`], the follower's applied index with its apply hash ([`wal::Position`]),
//! sent when the stream opens and whenever it advances, interleaved with the answers (to a
//! leader that did not send [`HASH_HEADER`] when it opened the stream, an older version that
//! does not know that frame, [`Down::Applied`] with the index alone); and [`Down::Failed`], why
//! the follower ends the stream. An answer that is an error (a conflict, a higher vote) is the follower's last: its
//! `Raft::stream_append` ends there, so the connection closes after it.
//!
//! # Sessions and connections (`client`)
//!
//! openraft runs a *session* per `stream_append` call: the replication task's sessions are
//! long (they last until the payload changes or an error), the heartbeat worker's carry one
//! heartbeat each. Connections are pooled per target (`client::Pool`, shared by every
//! `Peer` of that target): a session takes an idle connection or opens one, and hands it back
//! when it ends cleanly (input exhausted and every append answered). A session that ends any
//! other way (an error answer, a failure, a timeout, openraft dropping it) closes its
//! connection, since answers may still be owed on it. So in steady state a follower has two
//! connections from the leader, the replication one and the heartbeat one, and neither
//! reconnects: a heartbeat costs one frame each way.
//!
//! Each connection has a reader task of its own that hands answers to the session using the
//! connection and applied positions to the [`AppliedSink`], also while the connection is idle
//! in the pool, so a position is delivered as soon as it arrives. The follower sends its
//! position on every stream the leader has open to it (two, usually); reports are idempotent.
//!
//! Pipelining: a session writes each append as openraft's request stream yields it, without
//! waiting for earlier answers, and flushes when no further append is ready (so a burst goes out
//! in one write). Answers come back in order, so no sequence numbers are needed.
//!
//! Timeouts: while appends are unanswered, the stream fails when no answer has arrived for
//! `option.soft_ttl()` (openraft then backs off and opens a new session); opening a connection
//! may take `option.hard_ttl()`. An idle session has no deadline.
//!
//! Errors: failing to connect is `Unreachable` (openraft backs off); everything else is
//! `Network`.
//!
//! # Older nodes
//!
//! A node that does not know the stream answers the upgrade with 404; the leader then sends that
//! node's appends as single `POST /raft/append` requests (openraft's sequential
//! `stream_append`) and asks again after [`RETRY_STREAM_AFTER`]. Every node still serves
//! `/raft/append`, and a follower reports its applied position by `POST /keel/applied` while
//! the leader has no stream open to it, so mixed versions keep replicating during a rolling
//! upgrade.

use std::sync::Arc;
use std::time::Duration;

use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use serde::{Deserialize, Serialize};

use crate::types::{Lsn, NodeId, TypeConfig};
use wal::Position;

pub(super) mod client;
pub mod frame;
pub(super) mod server;

/// The route that opens a stream.
pub const STREAM_PATH: &str = "/raft/stream";
/// The `Upgrade` protocol token of the stream.
pub const PROTOCOL: &str = "keel-raft-stream/1";
/// The header naming the node that opens a stream.
pub const SENDER_HEADER: &str = "x-keel-node";
/// The header by which a leader that opens a stream says it reads [`Down::Position`] frames
/// (value `1`). A follower sends [`Down::Applied`] to a leader that does not send it.
pub const HASH_HEADER: &str = "x-keel-apply-hash";
/// After a node refused the upgrade, how long its appends go as single requests before the
/// stream is tried again.
pub const RETRY_STREAM_AFTER: Duration = Duration::from_secs(30);

/// Where a leader's network delivers the applied positions its followers send:
/// `(follower, applied index and apply hash)`; the hash is `None` from a follower of an older
/// version.
pub type AppliedSink = Arc<dyn Fn(NodeId, Position) + Send + Sync>;

/// How a follower's refusal of entries for lack of space begins, as the reason that ends a
/// stream (`Down::Failed`); the leader notes the follower's disk as full on seeing it
/// ([`crate::space::PeersFull`]).
pub const NO_ROOM: &str = "this node cannot take the entries";

/// A frame from the leader.
#[derive(Debug, Serialize, Deserialize)]
pub enum Up {
    /// An AppendEntries request (entries or a heartbeat).
    Append(AppendEntriesRequest<TypeConfig>),
}

/// A frame from the follower.
#[derive(Debug, Serialize, Deserialize)]
pub enum Down {
    /// The answer to the oldest unanswered append.
    Answer(StreamAppendResult<TypeConfig>),
    /// The follower's applied index, now (to a leader that did not ask for [`Down::Position`]).
    Applied(Lsn),
    /// The follower ends the stream, and why.
    Failed(String),
    /// The follower's applied index and its apply hash there, now. Added after the others, so
    /// the older variants keep their postcard tags.
    Position(Position),
}
