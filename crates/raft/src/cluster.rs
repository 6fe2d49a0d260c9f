//! The cluster as the rest of Keel sees it: members, roles, positions, and membership changes.
//!
//! Everything here reads openraft's published metrics (a watch channel; values are cloned out
//! at once, never held across an `.await`, see stack.md pitfall 3) or calls its management API,
//! and returns plain Keel types.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, InitializeError, RaftError};
use serde::Serialize;

use crate::Raft;
use crate::client::ClientError;
use crate::types::{Lsn, Node, NodeId, Term};

/// A node's role, as Keel names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accepts writes.
    Leader,
    /// A voter following the leader.
    Follower,
    /// A voter campaigning for leadership.
    Candidate,
    /// A non-voting replica (async read replica).
    Learner,
    /// Shutting down.
    Shutdown,
}

/// One member of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// Its node id.
    pub id: NodeId,
    /// Its addresses.
    pub node: Node,
    /// Whether it votes (false for learners).
    pub voter: bool,
}

/// This node's view of itself and the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct State {
    /// This node's id.
    pub id: NodeId,
    /// This node's role.
    pub role: Role,
    /// The current term.
    pub term: Term,
    /// The leader this node knows of.
    pub leader_id: Option<NodeId>,
    /// Index of the last entry in this node's log.
    pub last_log_index: Lsn,
    /// Index of the last entry known committed.
    pub commit_index: Lsn,
    /// Index of the last entry applied to the database.
    pub applied_index: Lsn,
    /// Index of the last snapshot, if any.
    pub snapshot_index: Option<Lsn>,
    /// Whether the Raft core has stopped on a fatal error.
    pub stopped: Option<String>,
    /// On the leader: each member's matched (durably replicated) index.
    pub matched: Option<BTreeMap<NodeId, Option<Lsn>>>,
    /// The cluster's members.
    pub members: Vec<Member>,
}

/// Reads this node's state from Raft's metrics.
pub fn state(raft: &Raft) -> State {
    let m = raft.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| Member { id: *id, node: node.clone(), voter: voters.contains(id) })
        .collect();
    let role = match m.state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    };
    State {
        id: m.id,
        role,
        term: m.current_term,
        leader_id: m.current_leader,
        last_log_index: m.last_log_index.unwrap_or(0),
        commit_index: m.local_committed.as_ref().map_or(0, |l| l.index),
        applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
        snapshot_index: m.snapshot.as_ref().map(|l| l.index),
        stopped: m.running_state.as_ref().err().map(|e| e.to_string()),
        matched: m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.as_ref().map(|l| l.index))).collect()),
        members,
    }
}

/// The member with `id`, if it is in the membership.
pub fn member(raft: &Raft, id: NodeId) -> Option<Member> {
    state(raft).members.into_iter().find(|m| m.id == id)
}

/// The current leader as a member, if known.
pub fn leader(raft: &Raft) -> Option<Member> {
    let id = raft.metrics().borrow_watched().current_leader?;
    member(raft, id)
}

/// Makes this node a one-node cluster. Harmless if it is already initialized.
pub async fn initialize(raft: &Raft, id: NodeId, node: Node) -> Result<(), ClientError> {
    match raft.initialize(BTreeMap::from([(id, node)])).await {
        Ok(()) => Ok(()),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(ClientError::Fatal(e.to_string())),
    }
}

/// Whether this node has any membership yet (bootstrapped, or joined).
pub async fn is_initialized(raft: &Raft) -> Result<bool, ClientError> {
    raft.is_initialized().await.map_err(|e| ClientError::Fatal(e.to_string()))
}

fn write_err(e: RaftError<crate::TypeConfig, ClientWriteError<crate::TypeConfig>>) -> ClientError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ClientError::NotLeader { leader: f.leader_id }
        }
        RaftError::APIError(e) => ClientError::Unknown(e.to_string()),
        RaftError::Fatal(f) => ClientError::Fatal(f.to_string()),
    }
}

/// Adds a node on the leader: as a learner first (catching up from the log or a snapshot), then,
/// if `voter`, promoted to voter. Idempotent: a member already in the wanted role is left alone.
pub async fn add_node(
    raft: &Raft,
    id: NodeId,
    node: Node,
    voter: bool,
    timeout: Duration,
) -> Result<(), ClientError> {
    let existing = member(raft, id);
    if let Some(m) = &existing
        && m.node == node
        && (m.voter || !voter)
    {
        return Ok(());
    }
    let add = async {
        if existing.as_ref().is_none_or(|m| m.node != node) {
            // Blocking for voters: do not let a far-behind node into the quorum.
            raft.add_learner(id, node, voter).await.map_err(write_err)?;
        }
        if voter {
            raft.change_membership(
                openraft::ChangeMembers::AddVoterIds(BTreeSet::from([id])),
                false,
            )
            .await
            .map_err(write_err)?;
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, add).await {
        Ok(r) => r,
        Err(_) => {
            Err(ClientError::Unknown(format!("adding node {id} did not finish within {timeout:?}")))
        }
    }
}

/// Resolves when the Raft core stops (shutdown, or a fatal storage error such as a committed
/// entry that cannot be applied). Returns the reason.
pub async fn stopped(raft: &Raft) -> String {
    let stopped = |m: &crate::Metrics| m.running_state.is_err() || m.state == ServerState::Shutdown;
    match raft.wait(None).metrics(stopped, "raft stopped").await {
        Ok(m) => match m.running_state {
            Err(e) => e.to_string(),
            Ok(()) => "shut down".to_string(),
        },
        Err(e) => e.to_string(),
    }
}
