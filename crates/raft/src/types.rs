//! The openraft type configuration: what a log entry carries and how nodes are named.
//!
//! Keel uses classic Raft leader ids (one leader per term, `leader_id_std`), so a log id is
//! `(term, index)` and the WAL frame header can carry both as plain numbers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's identity in the cluster, chosen by the operator (`keel serve --id`).
pub type NodeId = u64;

/// A Raft term.
pub type Term = wal::Term;

/// A log index: the position of an entry in the Raft log, which is also its LSN.
pub type Lsn = wal::Lsn;

/// Where to reach a member of the cluster: its Raft (node-to-node) address and its client
/// HTTP address, as it advertises them. openraft keeps one per member in every membership
/// config (its `Node` type), so this is part of the Raft log and of snapshots on disk: its
/// serialized form (`{"raft_addr": …, "http_addr": …}`) must not change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddr {
    /// `host:port` of the node's Raft RPC listener.
    pub raft_addr: String,
    /// `host:port` of the node's client HTTP API.
    pub http_addr: String,
}

impl fmt::Display for MemberAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{raft: {}, http: {}}}", self.raft_addr, self.http_addr)
    }
}

openraft::declare_raft_types!(
    /// Keel's Raft types: entries carry a [`wal::Record`]; applying answers nothing, because the
    /// leader computed every statement's result when it executed the request speculatively.
    pub TypeConfig:
        D = wal::Record,
        R = (),
        NodeId = NodeId,
        Node = MemberAddr,
        Term = Term,
        LeaderId = openraft::impls::leader_id_std::LeaderId<Term, NodeId>,
);

/// A log id: `(term of the leader that wrote it, index)`.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A log entry as openraft sees it.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A vote as openraft persists it.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A membership config together with the log id that introduced it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Membership configs in the Raft log and in snapshots hold this form; a change would
    /// make existing data directories unreadable.
    #[test]
    fn serialized_form_is_stable() {
        let addr =
            MemberAddr { raft_addr: "10.0.0.1:4002".into(), http_addr: "10.0.0.1:4001".into() };
        let json = r#"{"raft_addr":"10.0.0.1:4002","http_addr":"10.0.0.1:4001"}"#;
        assert_eq!(serde_json::to_string(&addr).unwrap(), json);
        assert_eq!(serde_json::from_str::<MemberAddr>(json).unwrap(), addr);
    }
}
