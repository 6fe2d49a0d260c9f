//! Membership for orchestrators: on the leader, a member that comes back at new addresses
//! ([`move_member`]) and members gone silent for good ([`reap_once`]); on a new node, a cluster
//! formed by several nodes at once ([`initialize_all`]).
//!
//! Moving a member. openraft keeps a leader's replication stream to a member across membership
//! changes (it rebuilds streams only for new members, or when a leader is elected), so replacing
//! the addresses alone would leave the leader sending to the old ones. A learner is therefore
//! removed and added again at its new addresses (a new stream; it catches up from its log
//! position or a snapshot). A voter cannot leave the voter set without a joint change that may
//! not commit, so its addresses are replaced in place (openraft's `SetNodes`) and leadership is
//! then handed to another caught-up voter: the new leader's streams are built from the new
//! membership. When no other voter can take over, the moved voter is left to campaign (it hears
//! no leader at its new address): the leader's lease lapses without its acknowledgements and
//! the election rebuilds the streams just as well.
//!
//! Reaping. A member the leader has not heard from for the reaping delay is removed: learners
//! always, voters only when the cluster stays safe. The rule, in [`judge`]: never below
//! [`MIN_VOTERS`] voters (a smaller cluster tolerates no further loss, and a voter that comes
//! back would find its place gone), and only when the voters left that the leader hears from
//! are a quorum of the new voter set (`check`, as for an operator's removal, with every silent
//! member counted unreachable). Otherwise the member is kept and the caller says why, and asks
//! again later: a voter that comes back stops being a candidate.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::ChangeMembers;

use super::check::{View, VoterChange, check};
use super::{
    ChangeError, Deadlines, Member, last_heard, leader_metrics, matched, reachable,
    reachable_window, remove_node, transfer_leader, voter_ids, write_err,
};
use crate::Raft;
use crate::client::ClientError;
use crate::types::{MemberAddr, NodeId};

/// Reaping never leaves fewer voters than this.
pub const MIN_VOTERS: usize = 3;

/// Gives member `old` (node `id`) the addresses `new`; on the leader. `voter`: whether the node
/// asks to be a voter (a learner that asks is promoted by the caller afterwards). Safe only when
/// the node at `new` is node `id`: an address of another node would let two quorums form
/// (openraft's docs on updating a node); callers prove it under mutual TLS.
pub async fn move_member(
    raft: &Raft,
    id: NodeId,
    old: &Member,
    new: MemberAddr,
    voter: bool,
) -> Result<(), ClientError> {
    tracing::info!(id, old = %old.node, %new, "member is back at new addresses; updating the membership");
    if !old.voter {
        let ids = BTreeSet::from([id]);
        raft.change_membership(ChangeMembers::RemoveNodes(ids), false).await.map_err(write_err)?;
        raft.add_learner(id, new, voter).await.map_err(write_err)?;
        return Ok(());
    }
    let change = ChangeMembers::SetNodes(BTreeMap::from([(id, new)]));
    raft.change_membership(change, true).await.map_err(write_err)?;
    hand_over_after_move(raft, id).await;
    Ok(())
}

/// After voter `moved` got new addresses: hands leadership to another caught-up voter the
/// leader hears from, so that replication to `moved` starts again at its new addresses (see
/// the module docs). Failing that, logs and leaves it to an election.
async fn hand_over_after_move(raft: &Raft, moved: NodeId) {
    let Ok(m) = leader_metrics(raft) else { return };
    if moved == m.id {
        return;
    }
    let window = reachable_window(raft);
    let to = voter_ids(&m)
        .into_iter()
        .filter(|&v| v != m.id && v != moved && reachable(&m, v, window))
        .max_by_key(|&v| (matched(&m, v), std::cmp::Reverse(v)));
    let Some(to) = to else {
        tracing::warn!(
            moved,
            "no other voter can take over to reach the moved node at its new addresses; it will campaign and be reached after an election"
        );
        return;
    };
    match transfer_leader(raft, to, &Deadlines::default()).await {
        Ok(term) => tracing::info!(
            moved,
            to,
            term,
            "leadership handed over to reach the moved node at its new addresses"
        ),
        Err(e) => {
            tracing::warn!(moved, to, error = %e, "handing over leadership after a move failed; the moved node is reached after the next election")
        }
    }
}

/// Makes this node a member of a new cluster of `members`, all voters (`--bootstrap-expect`).
/// Every node of `members` may do the same with the same map: openraft writes the same first
/// log entry on each, and they elect one leader. Harmless if this node is initialized already.
pub async fn initialize_all(
    raft: &Raft,
    members: BTreeMap<NodeId, MemberAddr>,
) -> Result<(), ClientError> {
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        Err(openraft::errors::RaftError::APIError(
            openraft::errors::InitializeError::NotAllowed(_),
        )) => Ok(()),
        Err(e) => Err(ClientError::Fatal(e.to_string())),
    }
}

/// What one reaping round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reaped {
    /// Removed member `id` (a voter or a learner), silent for `silent`.
    Removed {
        /// Its id.
        id: NodeId,
        /// Whether it was a voter.
        voter: bool,
        /// How long the leader had not heard from it.
        silent: Duration,
    },
    /// Nothing removed. Each member silent for the reaping delay or longer, with why it stays
    /// (empty when none is).
    Kept(Vec<(NodeId, String)>),
}

/// One reaping round on the leader: removes at most one member the leader has not heard from
/// for `after` (see the module docs for the rule). `known_for`: how long this leader has known
/// each member, the silence of a member it has not heard from at all (one missing from it, just
/// added, counts as not silent). Not the leader: `Kept(vec![])`.
pub async fn reap_once(
    raft: &Raft,
    after: Duration,
    known_for: &BTreeMap<NodeId, Duration>,
) -> Result<Reaped, ChangeError> {
    let Ok(m) = leader_metrics(raft) else { return Ok(Reaped::Kept(Vec::new())) };
    let view = View::of(&m, reachable_window(raft));
    let silent: BTreeMap<NodeId, Duration> = view
        .members
        .iter()
        .filter(|&&id| id != m.id)
        .map(|&id| {
            let known = known_for.get(&id).copied().unwrap_or_default();
            (id, last_heard(&m, id).unwrap_or(known))
        })
        .filter(|(_, silent)| *silent >= after)
        .collect();
    let (remove, kept) = judge(&view, &silent);
    let Some(id) = remove else { return Ok(Reaped::Kept(kept)) };
    let voter = view.voters.contains(&id);
    remove_node(raft, id, &Deadlines::default()).await?;
    Ok(Reaped::Removed { id, voter, silent: silent[&id] })
}

/// Which member of `silent` (each silent for the reaping delay) to remove, if any, and why the
/// others stay. Learners go first; then voters, each only if [`MIN_VOTERS`] remain and `check`
/// accepts its removal with every silent member counted unreachable.
fn judge(
    view: &View,
    silent: &BTreeMap<NodeId, Duration>,
) -> (Option<NodeId>, Vec<(NodeId, String)>) {
    let mut view = view.clone();
    view.reachable.retain(|id| !silent.contains_key(id));
    let mut kept = Vec::new();
    let (voters, learners): (Vec<NodeId>, Vec<NodeId>) =
        silent.keys().partition(|id| view.voters.contains(id));
    for id in learners.into_iter().chain(voters) {
        let voter = view.voters.contains(&id);
        if voter && view.voters.len() <= MIN_VOTERS {
            kept.push((id, format!(
                "removing voter {} would leave {} voters: reaping keeps at least {MIN_VOTERS}; remove it by hand (`keel admin remove`) if it is gone for good",
                view.label(id),
                view.voters.len() - 1
            )));
            continue;
        }
        match check(&view, VoterChange::Remove(id)) {
            Ok(()) => return (Some(id), kept),
            Err(e) => kept.push((id, e.to_string())),
        }
    }
    (None, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A view of leader 1 with `voters` and `learners`; reachability comes from `silent`.
    fn view(voters: &[NodeId], learners: &[NodeId]) -> View {
        let members: BTreeSet<NodeId> = voters.iter().chain(learners).copied().collect();
        View {
            leader: 1,
            reachable: members.clone(),
            members,
            voters: voters.iter().copied().collect(),
            pending: None,
            names: BTreeMap::new(),
        }
    }

    fn silent(ids: &[NodeId]) -> BTreeMap<NodeId, Duration> {
        ids.iter().map(|&id| (id, Duration::from_secs(5))).collect()
    }

    #[test]
    fn learners_are_always_reaped() {
        assert_eq!(judge(&view(&[1], &[2]), &silent(&[2])).0, Some(2));
        assert_eq!(judge(&view(&[1, 2, 3], &[4]), &silent(&[3, 4])).0, Some(4));
    }

    #[test]
    fn voters_are_reaped_down_to_three_and_no_further() {
        assert_eq!(judge(&view(&[1, 2, 3, 4, 5], &[]), &silent(&[5])).0, Some(5));
        assert_eq!(judge(&view(&[1, 2, 3, 4], &[]), &silent(&[4])).0, Some(4));
        let (remove, kept) = judge(&view(&[1, 2, 3], &[]), &silent(&[3]));
        assert_eq!(remove, None);
        assert!(kept[0].1.contains("at least 3"), "{kept:?}");
    }

    #[test]
    fn voters_are_kept_when_the_rest_would_not_be_a_quorum() {
        // 5 voters, 2 silent: removing one leaves 4 voters with 3 heard, a quorum of 4.
        assert_eq!(judge(&view(&[1, 2, 3, 4, 5], &[]), &silent(&[4, 5])).0, Some(4));
        // 4 voters, 2 silent: the leader has no quorum at all; nothing could commit.
        let (remove, kept) = judge(&view(&[1, 2, 3, 4], &[]), &silent(&[3, 4]));
        assert_eq!(remove, None);
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|(_, why)| why.contains("quorum")), "{kept:?}");
    }

    #[test]
    fn nothing_is_reaped_while_a_change_is_in_flight() {
        let mut v = view(&[1, 2, 3, 4, 5], &[6]);
        v.pending = Some(7);
        let (remove, kept) = judge(&v, &silent(&[5, 6]));
        assert_eq!(remove, None);
        assert!(kept.iter().all(|(_, why)| why.contains("not committed")), "{kept:?}");
    }
}
