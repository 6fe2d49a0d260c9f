//! Node-to-node calls on the Raft port besides Raft's own: not a client API, and free to change
//! between versions (every node of a cluster runs the same one).
//!
//! * `POST /keel/applied`, body [`AppliedReport`]: a non-leader's applied index (with its apply
//!   hash there), after every apply and once a second while idle; answered 204. The leader's
//!   `sync` and `replicas:K` writes wait on these reports, and it compares the hashes.
//! * `POST /keel/diverged`, body [`Diverged`]: the leader tells a node that its apply hash
//!   differs from the leader's; answered 204. The node keeps it as its divergence.
//! * `POST /keel/read-index`, no body, answer [`ReadIndex`]: the leader confirms its leadership
//!   with a quorum and returns the index a follower must apply before a linearizable read.
//! * `POST /keel/queue`, body [`queue::Batch`](crate::queue::Batch), answer one
//!   [`queue::Verdict`](crate::queue::Verdict) per request: a follower's flushed write queue.
//! * `GET /keel/members`, answer [`Members`]: the leader's membership (a node asked to rebuild
//!   checks that it was removed first: a removed node is not told).
//! * `POST /keel/leave`, body [`Leave`]: a node shutting down with `--leave-on-shutdown` asks
//!   the leader to remove it; answered 204 once it is not a member.

use serde::{Deserialize, Serialize};

use crate::{Lsn, NodeId};

/// The route of [`AppliedReport`].
pub const APPLIED_PATH: &str = "/keel/applied";
/// The route of [`Diverged`].
pub const DIVERGED_PATH: &str = "/keel/diverged";
/// The route of [`ReadIndex`].
pub const READ_INDEX_PATH: &str = "/keel/read-index";
/// The route of a queue batch.
pub const QUEUE_PATH: &str = "/keel/queue";
/// The route of [`Members`].
pub const MEMBERS_PATH: &str = "/keel/members";

/// The route of [`Leave`].
pub const LEAVE_PATH: &str = "/keel/leave";

/// A node's request to be removed from the cluster (it is shutting down for good).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    /// The node that leaves: the sender itself.
    pub id: NodeId,
}

/// The leader's membership: voters and learners.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// The leader that answers.
    pub leader: NodeId,
    /// Every member's id.
    pub ids: Vec<NodeId>,
}

/// A node's report of its applied index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedReport {
    /// Its apply hash after that index (64 hex digits); absent from nodes without one and from
    /// older versions, whose reports are then not compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_hash: Option<String>,
    /// Where its apply hash chain starts (with `apply_hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_origin: Option<Lsn>,
    /// Its applied index.
    pub applied: Lsn,
    /// The reporting node.
    pub id: NodeId,
}

/// The leader's word that a node's apply hash differs from its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diverged {
    /// The log index both hashes are of.
    pub lsn: Lsn,
    /// The two hashes.
    pub mismatch: crate::checksum::ApplyHashMismatch,
}

/// The leader's answer to a read-index request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndex {
    /// The index to apply before reading.
    pub index: Lsn,
}
