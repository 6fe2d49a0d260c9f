//! The cluster as the rest of Keel sees it: members, roles, positions, and membership changes.
//!
//! Everything here reads openraft's published metrics (a watch channel; values are cloned out
//! at once, never held across an `.await`, see stack.md pitfall 3) or calls its management API,
//! and returns plain Keel types.
//!
//! Operator changes, all called on the leader:
//!
//! - [`transfer_leader`]: hand leadership to a caught-up voter. It waits until the target's log
//!   matches the leader's, triggers openraft's leadership transfer (the leader stops accepting
//!   writes and asks the target to campaign at once, skipping the election timeout), and waits
//!   until the target leads. [`successor`] picks a target when the caller names none.
//! - [`add_member`], [`set_voter`], [`remove_node`]: add a voter or learner, turn a learner into
//!   a voter or back, remove a node (alive or dead) entirely. Voter changes go through
//!   openraft's joint consensus (`change_membership`), so they need a quorum of the old *and*
//!   the new voter set.
//!
//! Before changing anything these refuse, with a [`ChangeError`] that says why, what would
//! leave the cluster unable to work: removing or demoting the last voter, removing or demoting
//! the leader itself (transfer leadership first), or a new voter set whose reachable members are
//! fewer than its quorum. One pure function, `check` (in the `check` module), decides that
//! over a `View`: plain values taken from the leader's metrics ("reachable" = acknowledged the
//! leader within twice the longest election timeout, and at least a second). openraft allows
//! one membership change at a time and reports a second as [`ChangeError::InProgress`];
//! callers also serialize their own changes (the HTTP layer holds one mutex around each).
//!
//! What they deliberately do not do: force a membership on a cluster that has lost its quorum.
//! A change is itself a Raft entry and needs a quorum to commit; a cluster that lost a majority
//! of its voters cannot be reconfigured this way.

mod check;
mod orchestrate;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{
    ChangeMembershipError, ClientWriteError, ForwardReason, InitializeError, RaftError,
};
use openraft::{ChangeMembers, Instant as _, ServerState};
use serde::Serialize;

use self::check::{View, VoterChange, check};
pub use self::orchestrate::{MIN_VOTERS, Reaped, initialize_all, move_member, reap_once};
use crate::client::ClientError;
use crate::types::{Lsn, MemberAddr, NodeId, Term};
use crate::{Metrics, Raft};

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
    pub node: MemberAddr,
    /// Whether it votes (false for learners).
    pub voter: bool,
}

impl Member {
    /// How it is shown: its name, or its number ([`MemberAddr::label`]).
    pub fn label(&self) -> String {
        self.node.label(self.id)
    }
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
    /// On the leader: how long ago a quorum of voters last acknowledged it (by a heartbeat or
    /// an append); `None` elsewhere, and before the first acknowledgement.
    pub quorum_acked_ago: Option<std::time::Duration>,
}

/// Logs `became leader term=T` each time this node becomes leader, and `stepped down` when it
/// stops leading: the election-safety check of `keel-chaos` reads these lines from every
/// node's log (at most one leader per term), as operators do after a failover.
pub async fn log_leadership(raft: Raft) {
    // The server metrics change with the vote, role and membership only, not with every
    // append and apply as the full metrics do: no wake-up per write.
    let mut metrics = raft.server_metrics();
    let mut leading: Option<u64> = None;
    loop {
        let (is_leader, term) = {
            let m = metrics.borrow_watched();
            (m.state == ServerState::Leader, m.vote.leader_id().term)
        };
        match (leading, is_leader) {
            (None, true) => {
                tracing::info!(term, "became leader");
                leading = Some(term);
            }
            (Some(led), true) if led != term => {
                tracing::info!(term, "became leader");
                leading = Some(term);
            }
            (Some(led), false) => {
                tracing::info!(term = led, "stepped down");
                leading = None;
            }
            _ => {}
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
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
        quorum_acked_ago: m.last_quorum_acked.as_ref().map(|at| at.elapsed()),
    }
}

/// The member with `id`, if it is in the membership.
pub fn member(raft: &Raft, id: NodeId) -> Option<Member> {
    state(raft).members.into_iter().find(|m| m.id == id)
}

/// Whether `id` is in the membership, as a voter or a learner (without building [`state`]).
pub fn is_member(raft: &Raft, id: NodeId) -> bool {
    raft.metrics().borrow_watched().membership_config.membership().get_node(&id).is_some()
}

/// How member `id` is shown: its name if the membership gives it one, else its number.
pub fn label(raft: &Raft, id: NodeId) -> String {
    let m = raft.metrics();
    let m = m.borrow_watched();
    m.membership_config.membership().get_node(&id).map_or_else(|| id.to_string(), |n| n.label(id))
}

/// Refuses node `id`, named as `node` says, where a member holds the same Raft id under
/// another name: two names whose ids collide, or a number that is a name's id. A member of
/// the same name (a restart, a retry) passes.
pub fn check_name(raft: &Raft, id: NodeId, node: &MemberAddr) -> Result<(), ChangeError> {
    match member(raft, id) {
        Some(m) if m.node.name != node.name => Err(ChangeError::Invalid(format!(
            "node {} cannot be added: its Raft id {id} is held by member {}; give it another name",
            node.label(id),
            m.label()
        ))),
        _ => Ok(()),
    }
}

/// The current leader as a member, if known.
pub fn leader(raft: &Raft) -> Option<Member> {
    let id = raft.metrics().borrow_watched().current_leader?;
    member(raft, id)
}

/// Makes this node a one-node cluster. Harmless if it is already initialized.
pub async fn initialize(raft: &Raft, id: NodeId, node: MemberAddr) -> Result<(), ClientError> {
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
/// A member that asks again from other addresses (restarted elsewhere, as orchestrators do) has
/// its addresses replaced ([`move_member`]); the caller must have proven it is node `id` where it
/// can (mutual TLS).
pub async fn add_node(
    raft: &Raft,
    id: NodeId,
    node: MemberAddr,
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
        match &existing {
            // Blocking for voters: do not let a far-behind node into the quorum.
            None => {
                raft.add_learner(id, node, voter).await.map_err(write_err)?;
            }
            Some(m) if m.node != node => {
                // Restarted elsewhere (same data or fresh), as orchestrators do.
                orchestrate::move_member(raft, id, m, node, voter).await?;
            }
            Some(m) => {
                if voter && !m.voter {
                    // A retry after an earlier attempt timed out (a big database takes a while
                    // to send): the node is a learner already; still wait until it has caught up.
                    let target = raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
                    wait_matched(raft, id, target, timeout, reachable_window(raft))
                        .await
                        .map_err(|e| ClientError::Unknown(e.to_string()))?;
                }
            }
        }
        if voter && existing.as_ref().is_none_or(|m| !m.voter) {
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
        Err(_) => Err(ClientError::Unknown(format!(
            "adding node {} did not finish within {timeout:?}",
            label(raft, id)
        ))),
    }
}

/// Resolves when the Raft core stops (shutdown, or a fatal storage error such as a committed
/// entry that cannot be applied). Returns the reason with its whole cause chain: for a store
/// failure, whether doing it again can succeed and what to do (see
/// [`crate::state_machine::Error`]), then the store's own error.
pub async fn stopped(raft: &Raft) -> String {
    let stopped = |m: &crate::Metrics| m.running_state.is_err() || m.state == ServerState::Shutdown;
    match raft.wait(None).metrics(stopped, "raft stopped").await {
        Ok(m) => match m.running_state {
            Err(e) => crate::state_machine::chain(&e),
            Ok(()) => "shut down".to_string(),
        },
        Err(e) => e.to_string(),
    }
}

/// Why an operator change (a membership change or a leadership transfer) was not made. Each
/// variant says what the caller does.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChangeError {
    /// The request cannot be carried out as asked (an unknown node, a node that is already a
    /// member with other addresses or another role): fix the request.
    #[error("{0}")]
    Invalid(String),
    /// The change would leave the cluster unable to work (no voter left, the leader removed
    /// from under itself, a voter set whose reachable members are fewer than its quorum):
    /// change the cluster first, as the message says.
    #[error("{0}")]
    Unsafe(String),
    /// Another membership change has not committed yet; nothing was changed: retry shortly.
    #[error("membership change in progress: {0}")]
    InProgress(String),
    /// The node the change needs is not ready (not caught up with the leader, or not
    /// acknowledging it); nothing was changed: retry once it is.
    #[error("{0}")]
    NotReady(String),
    /// Raft could not carry the change out: not the leader, no quorum, outcome unknown, stopped.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// How long each step of an operator change may take.
#[derive(Debug, Clone)]
pub struct Deadlines {
    /// For a node to catch up with the leader's log before it becomes a voter or the leader.
    pub catch_up: Duration,
    /// For the target of a leadership transfer to be elected.
    pub takeover: Duration,
    /// For a membership change to commit (for a new voter: including its catching up).
    pub change: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            catch_up: Duration::from_secs(10),
            takeover: Duration::from_secs(5),
            change: Duration::from_secs(60),
        }
    }
}

/// This node's metrics if it is the leader.
fn leader_metrics(raft: &Raft) -> Result<Metrics, ChangeError> {
    crate::client::leader_term(raft)?;
    Ok(raft.metrics().borrow_watched().clone())
}

/// How long the leader may go without hearing from a member before the member counts as
/// unreachable: twice the longest election timeout, and at least a second. Election timeouts
/// are tuned short for fast failover; a member that misses a few heartbeats under load is
/// slow, not gone, and refusing a change because of it would only confuse the operator.
fn reachable_window(raft: &Raft) -> Duration {
    Duration::from_millis(raft.config().election_timeout_max * 2).max(Duration::from_secs(1))
}

/// How long ago the leader whose metrics are `m` last heard from `id` (a heartbeat or
/// replication acknowledgement); `None` if never. Zero for the leader itself.
fn last_heard(m: &Metrics, id: NodeId) -> Option<Duration> {
    if id == m.id {
        return Some(Duration::ZERO);
    }
    let at = m.heartbeat.as_ref()?.get(&id)?.as_ref()?;
    Some(at.elapsed())
}

/// Whether the leader whose metrics are `m` heard from `id` within `window`.
fn reachable(m: &Metrics, id: NodeId, window: Duration) -> bool {
    last_heard(m, id).is_some_and(|ago| ago <= window)
}

/// How far `id`'s log matches the leader's (leader metrics only).
fn matched(m: &Metrics, id: NodeId) -> Option<Lsn> {
    if id == m.id {
        return m.last_log_index;
    }
    m.replication.as_ref()?.get(&id)?.as_ref().map(|l| l.index)
}

/// The voter ids of the effective membership.
fn voter_ids(m: &Metrics) -> BTreeSet<NodeId> {
    m.membership_config.membership().voter_ids().collect()
}

/// Waits until `id`'s log matches the leader's through `index` and the leader has heard from
/// it within `window`, up to `timeout`. A node the leader heard from once but not within
/// `window` is refused at once: it is down, or cut off.
async fn wait_matched(
    raft: &Raft,
    id: NodeId,
    index: Lsn,
    timeout: Duration,
    window: Duration,
) -> Result<(), ChangeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first = true;
    loop {
        let m = leader_metrics(raft)?;
        let at = matched(&m, id);
        let heard = last_heard(&m, id);
        let up = heard.is_some_and(|ago| ago <= window);
        if up && at.is_some_and(|at| at >= index) {
            return Ok(());
        }
        if let (true, Some(ago)) = (first, heard)
            && ago > window
        {
            return Err(ChangeError::NotReady(format!(
                "node {} is not reachable: the leader last heard from it {:.1}s ago; is it running?",
                label(raft, id),
                ago.as_secs_f64()
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            let why = if up {
                String::new()
            } else {
                format!("; the leader has not heard from it within {window:?}: is it running?")
            };
            return Err(ChangeError::NotReady(format!(
                "node {} has not caught up with the leader within {timeout:?}: its log matches through index {} of {index}{why}",
                label(raft, id),
                at.unwrap_or(0)
            )));
        }
        first = false;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Maps openraft's answer to a membership change.
fn change_err(e: RaftError<crate::TypeConfig, ClientWriteError<crate::TypeConfig>>) -> ChangeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f))
            if f.reason == ForwardReason::LeaseExpired =>
        {
            ClientError::NoQuorum(
                "the leader has not heard from a quorum of voters recently".to_string(),
            )
            .into()
        }
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ClientError::NotLeader { leader: f.leader_id }.into()
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(p) => ChangeError::InProgress(p.to_string()),
            ChangeMembershipError::LearnerNotFound(l) => ChangeError::Invalid(l.to_string()),
            ChangeMembershipError::EmptyMembership(e) => ChangeError::Unsafe(e.to_string()),
            other => ClientError::Unknown(other.to_string()).into(),
        },
        RaftError::APIError(e) => ClientError::Unknown(e.to_string()).into(),
        RaftError::Fatal(f) => ClientError::Fatal(f.to_string()).into(),
    }
}

/// Proposes `change` through joint consensus and waits up to `timeout` for it to commit.
async fn change_membership(
    raft: &Raft,
    change: ChangeMembers<NodeId, MemberAddr>,
    retain: bool,
    timeout: Duration,
) -> Result<(), ChangeError> {
    tracing::info!(%change, retain, "changing membership");
    match tokio::time::timeout(timeout, raft.change_membership(change, retain)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(change_err(e)),
        Err(_) => Err(ClientError::Unknown(format!(
            "the membership change did not commit within {timeout:?}; it may still commit once a quorum of voters acknowledges it"
        ))
        .into()),
    }
}

/// Makes `to` the leader; on the leader. Returns the new leader's term.
///
/// `to` must be a voter. Naming the leader itself changes nothing. Otherwise this waits (up to
/// `deadlines.catch_up`) until `to` acknowledges the leader and its log matches the leader's
/// last entry as of the call, so a dead or lagging target is refused before leadership is
/// touched. Then openraft's transfer starts: this leader stops accepting writes (they fail as
/// "not the leader", safe to retry), sends the target its last log id, and the target
/// campaigns at once, skipping the election timeout, when its log has everything. This waits
/// (up to `deadlines.takeover`) until this node sees a leader in a newer term.
///
/// If the target is not elected, this node stays leader without accepting writes until the
/// cluster elects a leader on its own after an election timeout; the error says so.
pub async fn transfer_leader(
    raft: &Raft,
    to: NodeId,
    deadlines: &Deadlines,
) -> Result<Term, ChangeError> {
    let m = leader_metrics(raft)?;
    if to == m.id {
        return Ok(m.current_term);
    }
    let membership = m.membership_config.membership();
    let Some(name) = membership.get_node(&to).map(|n| n.label(to)) else {
        return Err(ChangeError::Invalid(format!("node {to} is not a member of the cluster")));
    };
    if !voter_ids(&m).contains(&to) {
        return Err(ChangeError::Invalid(format!(
            "node {name} is a learner: make it a voter before it can lead"
        )));
    }
    let window = reachable_window(raft);
    let index = m.last_log_index.unwrap_or(0);
    wait_matched(raft, to, index, deadlines.catch_up, window).await?;

    let term = m.current_term;
    tracing::info!(to = %name, term, "transferring leadership");
    raft.trigger().transfer_leader(to).await.map_err(|f| ClientError::Fatal(f.to_string()))?;
    let new_leader = move |m: &Metrics| m.current_term > term && m.current_leader.is_some();
    let takeover = deadlines.takeover;
    match raft.wait(Some(takeover)).metrics(new_leader, "a leader in a newer term").await {
        Ok(m) if m.current_leader == Some(to) => {
            tracing::info!(to = %name, term = m.current_term, "leadership transferred");
            Ok(m.current_term)
        }
        Ok(m) => Err(ClientError::Unknown(format!(
            "node {name} was not elected: node {} leads in term {}",
            m.current_leader.map_or_else(String::new, |l| label(raft, l)),
            m.current_term
        ))
        .into()),
        Err(_) => Err(ClientError::Unknown(format!(
            "node {name} did not take over leadership within {takeover:?}; the cluster elects a leader on its own after an election timeout"
        ))
        .into()),
    }
}

/// The voter best placed to take over from this leader: one the leader hears from, with the
/// most of the log (ties go to the lowest id). A voter a new leader has not heard from yet is a
/// candidate of last resort ([`transfer_leader`] then waits for it); one it heard from once but
/// not recently is none. `None` if there is no candidate, or this node does not lead.
pub fn successor(raft: &Raft) -> Option<NodeId> {
    let m = leader_metrics(raft).ok()?;
    let window = reachable_window(raft);
    voter_ids(&m)
        .into_iter()
        .filter(|&id| id != m.id && last_heard(&m, id).is_none_or(|ago| ago <= window))
        .max_by_key(|&id| (reachable(&m, id, window), matched(&m, id), std::cmp::Reverse(id)))
}

/// Adds node `id` at `node`, as a voter or a learner; on the leader. A voter joins as a
/// learner first and becomes a voter once it has caught up (see [`add_node`]).
///
/// Adding a member that is already there with the same addresses and role changes nothing;
/// with other addresses or another role it is refused (remove it first, or use
/// [`set_voter`]).
pub async fn add_member(
    raft: &Raft,
    id: NodeId,
    node: MemberAddr,
    voter: bool,
    deadlines: &Deadlines,
) -> Result<(), ChangeError> {
    if id == 0 {
        return Err(ChangeError::Invalid("node id must be positive".to_string()));
    }
    let m = leader_metrics(raft)?;
    if let Some(existing) = m.membership_config.membership().get_node(&id) {
        let is_voter = voter_ids(&m).contains(&id);
        let name = existing.label(id);
        if existing != &node {
            return Err(ChangeError::Invalid(format!(
                "node {name} is already a member at {existing}: remove it first to give it other addresses"
            )));
        }
        return match (is_voter, voter) {
            (true, true) | (false, false) => Ok(()),
            (true, false) => Err(ChangeError::Invalid(format!(
                "node {name} is already a voter: demote it to make it a learner"
            ))),
            (false, true) => Err(ChangeError::Invalid(format!(
                "node {name} is already a learner: promote it to make it a voter"
            ))),
        };
    }
    if m.membership_config.log_id() != m.committed_membership_config.log_id() {
        return Err(ChangeError::InProgress(
            "the last membership change is not committed yet".to_string(),
        ));
    }
    let name = node.label(id);
    tracing::info!(id = %name, %node, voter, "adding node");
    let add = async {
        // Blocking for voters: a far-behind node must not enter the quorum.
        raft.add_learner(id, node, voter).await.map_err(change_err)?;
        if voter {
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(change_err)?;
        }
        Ok(())
    };
    match tokio::time::timeout(deadlines.change, add).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Unknown(format!(
            "adding node {name} did not finish within {:?}; it may still finish (is the node running and reachable?)",
            deadlines.change
        ))
        .into()),
    }
}

/// Turns learner `id` into a voter (`voter`) or voter `id` into a learner; on the leader. A
/// member already in the wanted role is left alone.
///
/// A learner becomes a voter only once it acknowledges the leader and has caught up with the
/// leader's log, so it cannot stall commits it now counts towards. Demoting refuses the last
/// voter, the leader itself, and a voter set whose reachable members are fewer than its quorum.
pub async fn set_voter(
    raft: &Raft,
    id: NodeId,
    voter: bool,
    deadlines: &Deadlines,
) -> Result<(), ChangeError> {
    let m = leader_metrics(raft)?;
    let window = reachable_window(raft);
    let view = View::of(&m, window);
    if view.members.contains(&id) && view.voters.contains(&id) == voter {
        return Ok(());
    }
    if voter {
        // Refuse an unknown node or a change in flight before waiting for anything; whether
        // the target is reachable is for `wait_matched` to judge, with a better message.
        let mut before = view;
        before.reachable.insert(id);
        check(&before, VoterChange::Promote(id))?;
        let index = m.last_log_index.unwrap_or(0);
        wait_matched(raft, id, index, deadlines.catch_up, window).await?;
        settled_view(raft, VoterChange::Promote(id)).await?;
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        change_membership(raft, change, false, deadlines.change).await
    } else {
        settled_view(raft, VoterChange::Demote(id)).await?;
        let change = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
        change_membership(raft, change, true, deadlines.change).await
    }
}

/// The leader's view once `change` passes [`check`] on it. A refusal that a leader elected a
/// moment ago gives because it has not heard from every member yet, or has not yet committed
/// the membership it inherited, is judged again every 50 ms for up to [`reachable_window`]
/// (a change asked for right after a leadership transfer); the last refusal is returned. Every
/// voter change goes through it, so none is refused for what a new leader has not yet seen.
async fn settled_view(raft: &Raft, change: VoterChange) -> Result<View, ChangeError> {
    let window = reachable_window(raft);
    let deadline = tokio::time::Instant::now() + window;
    loop {
        let view = View::of(&leader_metrics(raft)?, window);
        let refusal = match check(&view, change) {
            Ok(()) => return Ok(view),
            Err(refusal) => refusal,
        };
        let settling = view.reachable != view.members || view.pending.is_some();
        let transient = matches!(
            refusal,
            ChangeError::InProgress(_)
                | ChangeError::Unsafe(_)
                | ChangeError::Client(ClientError::NoQuorum(_))
        );
        if !(settling && transient) || tokio::time::Instant::now() >= deadline {
            return Err(refusal);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes node `id` from the membership entirely, voter or learner, running or dead for good;
/// on the leader. The leader stops replicating to it.
///
/// Removing a dead voter is what lets the others form a quorum without it again: 3 voters with
/// one dead become 2 voters that both must acknowledge each write. Refuses the last voter, the
/// leader itself (transfer leadership first), and a voter set whose reachable members are fewer
/// than its quorum.
pub async fn remove_node(
    raft: &Raft,
    id: NodeId,
    deadlines: &Deadlines,
) -> Result<(), ChangeError> {
    let view = settled_view(raft, VoterChange::Remove(id)).await?;
    let change = if view.voters.contains(&id) {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    change_membership(raft, change, false, deadlines.change).await
}
