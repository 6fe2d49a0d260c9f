//! Membership and leadership: adding a node at its request ([`Node::add`]) and a starting
//! node's side of it ([`join_cluster`]); the operator's changes ([`Node::change`],
//! [`Node::remove`]) and leadership transfers ([`Node::make_leader`], [`Node::step_down`]).
//! Every call must run on the leader (route first). Changes are serialized on the node
//! ([`Node::membership`]): Raft allows one at a time, and concurrent joins would otherwise
//! fail each other. What would break the cluster is refused before anything changes; the
//! errors ([`ChangeError`]) say what the caller should do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::NodeId;
use raft::cluster::{ChangeError, Deadlines};

use crate::{Error, Node, Peers};

/// How long adding a node may take (it is added as a learner, caught up, then promoted).
const ADD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a starting node keeps asking to be added.
const JOIN_DEADLINE: Duration = Duration::from_secs(300);
/// Pause between rounds of join attempts.
const JOIN_RETRY: Duration = Duration::from_millis(500);
/// How long one join attempt may take.
const JOIN_ATTEMPT: Duration = Duration::from_secs(120);

/// A starting node's request to be added to the cluster (`POST /join`).
pub use keel_api::cluster::JoinRequest;

impl Node {
    /// Adds the node of `request` to the cluster. This node must lead (route first). Under
    /// mutual TLS the node at `raft_addr` must first prove it is node `id` of this cluster.
    pub async fn add(&self, request: JoinRequest) -> Result<(), Error> {
        let target = member_addr(request.id, request.name, request.raft_addr, request.http_addr)
            .map_err(Error::InvalidInput)?;
        let label = target.label(request.id);
        if let Err(e) = self.peers.verify_node(request.id, &target.raft_addr).await {
            tracing::warn!(target: "keel::audit", id = %label, raft_addr = %target.raft_addr, error = %e, "refused a join");
            return Err(Error::Forbidden(e));
        }
        let _one_at_a_time = self.membership.lock().await;
        raft::cluster::check_name(&self.raft, request.id, &target)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        tracing::info!(id = %label, node = %target, voter = request.voter, "adding node");
        raft::cluster::add_node(&self.raft, request.id, target, request.voter, ADD_TIMEOUT).await?;
        Ok(())
    }
}

/// The member a join or a notification describes: node `id`, named `name` if it has one, at
/// these addresses. Refuses an id of 0, an invalid name, and a name whose Raft id is not `id`.
pub(crate) fn member_addr(
    id: NodeId,
    name: Option<String>,
    raft_addr: String,
    http_addr: String,
) -> Result<raft::MemberAddr, String> {
    match &name {
        None if id == 0 => return Err("node id must be positive".into()),
        None => {}
        Some(name) => {
            let parsed = raft::NodeName::parse(name)?;
            if parsed.name().is_none() || parsed.id() != id {
                return Err(format!(
                    "node name '{name}' does not go with node id {id} (its id is {})",
                    parsed.id()
                ));
            }
        }
    }
    Ok(raft::MemberAddr { raft_addr, http_addr, name })
}

/// An operator's membership change.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add node `id` at `node`'s addresses, as a voter or a learner.
    Add {
        /// Its id.
        id: NodeId,
        /// Its addresses.
        node: raft::MemberAddr,
        /// Voter or learner.
        voter: bool,
    },
    /// Make member `id` a voter, or a learner.
    SetVoter {
        /// Its id.
        id: NodeId,
        /// Voter or learner.
        voter: bool,
    },
}

impl Node {
    /// Makes `id` the leader: a learner becomes a voter first, then leadership is transferred
    /// ([`raft::cluster::transfer_leader`]: wait until it has caught up, transfer, wait until it
    /// leads). Returns the new leader's term.
    pub async fn make_leader(&self, id: NodeId) -> Result<raft::Term, ChangeError> {
        let deadlines = Deadlines::default();
        let _one_at_a_time = self.membership.lock().await;
        match raft::cluster::member(&self.raft, id) {
            None => {
                return Err(ChangeError::Invalid(format!(
                    "node {id} is not a member of the cluster"
                )));
            }
            Some(m) if !m.voter => {
                tracing::info!(id = %m.label(), "promoting learner to voter before transferring leadership");
                raft::cluster::set_voter(&self.raft, id, true, &deadlines).await?;
            }
            Some(_) => {}
        }
        raft::cluster::transfer_leader(&self.raft, id, &deadlines).await
    }

    /// rqlite's step-down: leadership goes to `to`, or without it to the most caught-up
    /// reachable voter ([`raft::cluster::successor`]). Returns the new leader and its term.
    pub async fn step_down(&self, to: Option<NodeId>) -> Result<(NodeId, raft::Term), ChangeError> {
        let id = match to.or_else(|| raft::cluster::successor(&self.raft)) {
            Some(id) => id,
            None => {
                return Err(ChangeError::Unsafe(format!(
                    "node {} cannot step down: no other voter is reachable to take over",
                    self.me.label(self.id)
                )));
            }
        };
        Ok((id, self.make_leader(id).await?))
    }

    /// Carries out an operator's membership change.
    pub async fn change(&self, change: Change) -> Result<(), ChangeError> {
        let deadlines = Deadlines::default();
        let _one_at_a_time = self.membership.lock().await;
        match change {
            Change::Add { id, node, voter } => {
                raft::cluster::check_name(&self.raft, id, &node)?;
                raft::cluster::add_member(&self.raft, id, node, voter, &deadlines).await
            }
            Change::SetVoter { id, voter } => {
                raft::cluster::set_voter(&self.raft, id, voter, &deadlines).await
            }
        }
    }

    /// Removes member `id`, voter or learner, running or dead.
    pub async fn remove(&self, id: NodeId) -> Result<(), ChangeError> {
        let _one_at_a_time = self.membership.lock().await;
        tracing::info!(id = %self.label(id), "removing node");
        raft::cluster::remove_node(&self.raft, id, &Deadlines::default()).await
    }
}

/// How long a node that believes it is a member asks for the leader's member list.
const REMOVED_CHECK: Duration = Duration::from_secs(60);

impl Node {
    /// For a node started with `--join` that believes it is a member: asks the leader's member
    /// list (for up to a minute, until a leader answers) and, if this node is not on it (it
    /// left the cluster or was reaped while it was away), joins again through `join`. Its log
    /// is a prefix of the cluster's, so the leader catches it up from where it stopped, as a
    /// learner first. A join of a member is a no-op, so a stale answer costs nothing.
    pub(crate) async fn rejoin_if_removed(
        self: Arc<Self>,
        join: Vec<String>,
        voter: bool,
        credentials: Option<(String, String)>,
    ) {
        let deadline = Instant::now() + REMOVED_CHECK;
        let ids = loop {
            match self.leader_members().await {
                Ok(ids) => break ids,
                Err(e) if Instant::now() > deadline => {
                    tracing::info!(error = %e, "could not ask the leader whether this node is still a member");
                    return;
                }
                Err(_) => tokio::time::sleep(JOIN_RETRY).await,
            }
        };
        if ids.contains(&self.id) {
            return;
        }
        tracing::info!(members = ?ids, "this node is not a member any more (it left or was removed): joining again");
        if let Err(e) =
            join_cluster(self.id, self.me.clone(), &join, voter, credentials, &self.peers).await
        {
            tracing::error!(error = %e, "could not join the cluster again");
        }
    }
}

/// Asks the cluster (any of `urls`; the request finds the leader) to add this node, retrying for
/// up to five minutes while the cluster is unreachable or electing.
pub async fn join_cluster(
    id: raft::NodeId,
    me: raft::MemberAddr,
    urls: &[String],
    voter: bool,
    credentials: Option<(String, String)>,
    peers: &Peers,
) -> anyhow::Result<()> {
    // HTTPS joins trust the cluster CA and present the node certificate.
    let body =
        JoinRequest { id, name: me.name, raft_addr: me.raft_addr, http_addr: me.http_addr, voter };
    let deadline = Instant::now() + JOIN_DEADLINE;
    let mut attempt = 0u32;
    loop {
        for url in urls {
            attempt += 1;
            match ask(peers, url, "/join", &body, credentials.as_ref(), JOIN_ATTEMPT).await {
                Ok(_) => {
                    tracing::info!(%url, voter, "joined the cluster");
                    return Ok(());
                }
                Err(why) => tracing::warn!(%url, attempt, "join failed; retrying: {why}"),
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("no member of {urls:?} accepted this node within 5 minutes");
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
}

/// POSTs `body` to `path` of the client API at `url`, with `credentials` if any; the answer's
/// body on success, else why not.
pub(crate) async fn ask(
    peers: &Peers,
    url: &str,
    path: &str,
    body: &JoinRequest,
    credentials: Option<&(String, String)>,
    timeout: Duration,
) -> Result<axum::body::Bytes, String> {
    let url = format!("{}{path}", url.trim_end_matches('/'));
    let mut request = peers.api.post(&url).json(body).timeout(timeout);
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, Some(password));
    }
    match request.send().await {
        Ok(resp) if resp.status().is_success() => resp.bytes().await.map_err(|e| error_chain(&e)),
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            Err(format!("{status}: {text}"))
        }
        Err(e) => Err(error_chain(&e)),
    }
}

/// An error with its sources, `a: b: c` (reqwest hides the TLS reason in a source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
