//! What a node's `/status` says about it, as the tests read it.

use serde_json::Value;

use crate::{Lsn, NodeId};

/// The `node` subtree of `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node's id.
    pub id: NodeId,
    /// `leader`, `follower`, `learner` or `candidate`.
    pub role: String,
    /// The node's current term.
    pub term: u64,
    /// The leader the node knows, if any.
    pub leader_id: Option<NodeId>,
    /// Index of the last entry in the node's log.
    pub last_log_index: Lsn,
    /// Index of the last entry the node knows to be committed.
    pub commit_index: Lsn,
    /// Index of the last entry applied to the node's database.
    pub applied_index: Lsn,
    /// Index of the node's latest snapshot, if it has one: `snapshot.index`, or
    /// `node.snapshot_index` from nodes that do not serve the `snapshot` subtree.
    pub snapshot_index: Option<Lsn>,
    /// The top-level `snapshot` subtree; `None` if the node does not serve one.
    pub snapshot: Option<SnapshotStatus>,
}

impl NodeStatus {
    /// Parses the `node` subtree of a `/status` answer (and the top-level `snapshot` subtree,
    /// if present); `None` if a field of the `node` subtree is missing.
    pub(crate) fn parse(status: &Value) -> Option<Self> {
        let node = status.get("node")?;
        let snapshot = status.get("snapshot").and_then(SnapshotStatus::parse);
        let snapshot_index = match &snapshot {
            Some(snapshot) => snapshot.index,
            None => node.get("snapshot_index").and_then(Value::as_u64),
        };
        Some(Self {
            id: node["id"].as_u64()?,
            role: node["role"].as_str()?.to_string(),
            term: node["term"].as_u64()?,
            leader_id: node["leader_id"].as_u64(),
            last_log_index: node["last_log_index"].as_u64()?,
            commit_index: node["commit_index"].as_u64()?,
            applied_index: node["applied_index"].as_u64()?,
            snapshot_index,
            snapshot,
        })
    }
}

/// The top-level `snapshot` subtree of `/status`: the node's latest snapshot and counters of
/// snapshot work since the process started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// Log index of the node's latest snapshot, if it has one.
    pub index: Option<Lsn>,
    /// Snapshots this node built.
    pub built: u64,
    /// Snapshots this node sent to other nodes.
    pub sent: u64,
    /// Snapshots this node received and installed.
    pub installed: u64,
    /// Bytes of snapshot data sent.
    pub bytes_sent: u64,
    /// Bytes of snapshot data received.
    pub bytes_received: u64,
    /// Log index of the last snapshot installed, if any.
    pub last_installed_index: Option<Lsn>,
}

impl SnapshotStatus {
    /// Parses the `snapshot` subtree; `None` if a counter is missing.
    pub(crate) fn parse(snapshot: &Value) -> Option<Self> {
        Some(Self {
            index: snapshot.get("index").and_then(Value::as_u64),
            built: snapshot["built"].as_u64()?,
            sent: snapshot["sent"].as_u64()?,
            installed: snapshot["installed"].as_u64()?,
            bytes_sent: snapshot["bytes_sent"].as_u64()?,
            bytes_received: snapshot["bytes_received"].as_u64()?,
            last_installed_index: snapshot.get("last_installed_index").and_then(Value::as_u64),
        })
    }
}
