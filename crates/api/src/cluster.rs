//! Membership: `GET /nodes`, `GET /leader`, `POST /join`, and the admin routes
//! (`POST /admin/promote`, `POST /leader`, `POST /admin/membership`, `DELETE /remove`).
//!
//! A member is described by [`NodeInfo`] in rqlite's shape: its id as a *string*, `api_addr`
//! (a URL), `addr` (its Raft address), `voter`, `reachable` and `leader`. On the leader, each
//! other member also carries Keel's [`Replication`] fields, which rqlite clients ignore.
//! `/nodes` answers a map by id, or with `?ver=2` a [`NodeList`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Lsn, NodeId, Term};

/// A member as `/nodes` and `/leader` describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its Raft address, `host:port`.
    pub addr: String,
    /// Its client API, `http://host:port` (or `https://`).
    pub api_addr: String,
    /// Its node id, as a string (rqlite's).
    pub id: String,
    /// Whether it leads.
    pub leader: bool,
    /// Whether it answered a readiness probe (`/readyz?noleader`, 1 s).
    pub reachable: bool,
    /// Voter or learner.
    pub voter: bool,
    /// On the leader, for each other member: how far it has come.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<Replication>,
}

impl NodeInfo {
    /// The id as a number, if it is one (a named node's id is its name).
    pub fn node_id(&self) -> Option<NodeId> {
        self.id.parse().ok()
    }
}

/// A member's replication progress, as the leader sees it (`/status` `replication`, and the
/// extra fields of `/nodes` on the leader). `null` where the leader does not know yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    /// The index it reports having applied.
    pub applied_index: Option<Lsn>,
    /// Entries the leader has that it has not applied.
    pub lag_entries: Option<u64>,
    /// Milliseconds since the leader proposed the oldest record it has not applied.
    pub lag_ms: Option<u64>,
    /// The same age in microseconds (sub-millisecond lags round to 0 in `lag_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_us: Option<u64>,
    /// The log index Raft has matched on it.
    pub matched_index: Option<Lsn>,
    /// `follower` (a voter) or `learner`.
    pub role: String,
}

/// `/nodes?ver=2`: the members as a list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeList {
    /// The members (voters only, unless `?nonvoters`).
    pub nodes: Vec<NodeInfo>,
}

/// `/nodes` without `ver=2`: the members keyed by id.
pub type NodeMap = BTreeMap<String, NodeInfo>;

/// `POST /join`: a starting node asks to be added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Its HTTP address, `host:port`.
    pub http_addr: String,
    /// Its node id: its number, or for a named node the Raft id of its name.
    pub id: NodeId,
    /// Its name, for a node started with a name as `--id` (`keel-0`); its `id` is derived
    /// from it. Absent for a numeric id (the form older versions send and read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its Raft address, `host:port`.
    pub raft_addr: String,
    /// Voter (the default) or learner.
    #[serde(default = "yes")]
    pub voter: bool,
}

fn yes() -> bool {
    true
}

/// `POST /notify` (`--bootstrap-expect`): a node waiting to form a new cluster tells another
/// its id and addresses (the body is a [`JoinRequest`]); the answer is the other's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notified {
    /// Its HTTP address, `host:port`.
    pub http_addr: String,
    /// Its node id.
    pub id: NodeId,
    /// Its name, for a named node (see [`JoinRequest::name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether it is a member of a cluster already: join it instead of forming one.
    pub member: bool,
    /// Its Raft address, `host:port`.
    pub raft_addr: String,
}

/// The answer of `POST /join`: `{}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {}

/// The answer of a leadership transfer (`POST /admin/promote`, `POST /leader`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderChanged {
    /// The new leader.
    pub leader: NodeId,
    /// Its name, for a node named by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its term.
    pub term: Term,
}

impl LeaderChanged {
    /// How the new leader is shown: its name, or its number.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.leader.to_string())
    }
}

/// The answer of `POST /admin/vacuum`: every replica runs `VACUUM` when it applies the entry
/// at `lsn`; the leader has.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vacuumed {
    /// The log index of the `VACUUM` entry.
    pub lsn: Lsn,
    /// How long the leader took, proposal to its own apply, in seconds.
    pub seconds: f64,
}

/// The body of `POST /leader` (rqlite's step-down) and `DELETE /remove`: a node id, which
/// Keel accepts as a number or a string of digits and rqlite sends as a string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    /// The node id, as rqlite sends it (a string); omitted for a step-down to whoever is best.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
}

impl NodeRef {
    /// `{"id": "<id>"}`, rqlite's spelling: a number as a string, or a node's name.
    pub fn to(id: impl fmt::Display) -> NodeRef {
        NodeRef { id: Some(id.to_string().into()) }
    }
}

/// What `POST /admin/membership` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Add a voter (a learner first, promoted once caught up).
    AddVoter,
    /// Add a learner.
    AddLearner,
    /// Make a learner a voter.
    Promote,
    /// Make a voter a learner.
    Demote,
}

/// The body of `POST /admin/membership`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChange {
    /// What to do.
    pub action: Action,
    /// With `add-*`: the node's HTTP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    /// The node: its number, or its name (see [`id_value`]).
    pub id: serde_json::Value,
    /// With `add-*`: the node's Raft address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_addr: Option<String>,
}

impl MembershipChange {
    /// `promote` or `demote`, which name only the node.
    pub fn of(action: Action, id: impl fmt::Display) -> MembershipChange {
        MembershipChange { action, id: id_value(id), http_addr: None, raft_addr: None }
    }

    /// `add-voter` or `add-learner` of a node at these addresses.
    pub fn add(id: impl fmt::Display, voter: bool, raft_addr: String, http_addr: String) -> Self {
        let action = if voter { Action::AddVoter } else { Action::AddLearner };
        MembershipChange {
            action,
            id: id_value(id),
            http_addr: Some(http_addr),
            raft_addr: Some(raft_addr),
        }
    }
}

/// A node id as a body carries it: a number for a numeric id (as Keel has always sent it), a
/// string for a node's name (`keel-0`).
pub fn id_value(id: impl fmt::Display) -> serde_json::Value {
    let id = id.to_string();
    match id.parse::<NodeId>() {
        Ok(n) if n.to_string() == id => n.into(),
        _ => id.into(),
    }
}

/// The answer of `POST /admin/membership`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChanged {
    /// The node.
    pub id: NodeId,
    /// Whether it is a voter now.
    pub voter: bool,
}

/// The body of `POST /admin/rebuild` (on the node to rebuild, after its removal): the members
/// to rejoin through.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuild {
    /// HTTP URLs of members.
    pub join: Vec<String>,
}

/// The answer of `POST /admin/rebuild`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuilding {
    /// The node that deletes its data and rejoins.
    pub rebuilding: NodeId,
}

/// The answer of `DELETE /remove`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The node removed.
    pub removed: NodeId,
}
