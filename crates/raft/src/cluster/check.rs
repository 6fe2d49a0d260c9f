//! Whether a change of the voter set is safe: one pure function, [`check`], over a [`View`]
//! of what the leader knows.
//!
//! The operator changes of the parent module (`set_voter`, `remove_node`) take a `View` of
//! the leader's metrics ([`View::of`]) and ask `check` before they change anything; `check`
//! itself reads no clock, metrics or network, so its table of cases below covers every
//! refusal without a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{ChangeError, reachable};
use crate::Metrics;
use crate::client::ClientError;
use crate::types::{Lsn, NodeId};

/// What the leader knows when it judges a voter change: plain values taken from its metrics,
/// so [`check`] is a pure function.
#[derive(Debug, Clone)]
pub(super) struct View {
    /// The leader (this node).
    pub(super) leader: NodeId,
    /// Every member, voter or learner.
    pub(super) members: BTreeSet<NodeId>,
    /// The voters of the effective membership.
    pub(super) voters: BTreeSet<NodeId>,
    /// The members the leader heard from recently (the leader included).
    pub(super) reachable: BTreeSet<NodeId>,
    /// The log index of the effective membership if it is not committed yet: a change is in
    /// flight.
    pub(super) pending: Option<Lsn>,
    /// The names of the members named by one, to say them in messages.
    pub(super) names: BTreeMap<NodeId, String>,
}

impl View {
    /// The view of the leader whose metrics are `m`; a member it has not heard from within
    /// `window` counts as unreachable.
    pub(super) fn of(m: &Metrics, window: Duration) -> View {
        let membership = m.membership_config.membership();
        let members: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        let reachable = members.iter().copied().filter(|&id| reachable(m, id, window)).collect();
        let effective = m.membership_config.log_id();
        View {
            leader: m.id,
            voters: membership.voter_ids().collect(),
            members,
            reachable,
            pending: (effective != m.committed_membership_config.log_id())
                .then(|| effective.as_ref().map_or(0, |l| l.index)),
            names: membership
                .nodes()
                .filter_map(|(id, node)| Some((*id, node.name.clone()?)))
                .collect(),
        }
    }

    /// How member `id` is said: its name, or its number.
    pub(super) fn label(&self, id: NodeId) -> String {
        self.names.get(&id).cloned().unwrap_or_else(|| id.to_string())
    }

    /// How members `ids` are said: `[1, 2]`, or with names `[keel-0, keel-1]`.
    pub(super) fn labels<'a>(&self, ids: impl IntoIterator<Item = &'a NodeId>) -> String {
        let labels: Vec<String> = ids.into_iter().map(|&id| self.label(id)).collect();
        format!("[{}]", labels.join(", "))
    }
}

/// A change of the voter set, as [`check`] judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VoterChange {
    /// A learner becomes a voter.
    Promote(NodeId),
    /// A voter becomes a learner.
    Demote(NodeId),
    /// A member (voter or learner) leaves the cluster.
    Remove(NodeId),
}

/// Whether `change` may be made, judged on `view`. Refuses:
///
/// - a node that is not a member ([`ChangeError::Invalid`]);
/// - any change while the last one has not committed ([`ChangeError::InProgress`]);
/// - demoting or removing the last voter, or the leader itself ([`ChangeError::Unsafe`]);
/// - any voter change while the leader cannot reach a quorum of the current voters: it could
///   not commit ([`ClientError::NoQuorum`]);
/// - a voter set with fewer reachable members than its quorum: the cluster could not commit
///   anything after it ([`ChangeError::Unsafe`]).
///
/// Promoting a voter, demoting a learner and removing a learner leave the voters as they are
/// and pass the voter checks; callers skip the no-ops before asking.
pub(super) fn check(view: &View, change: VoterChange) -> Result<(), ChangeError> {
    let (id, verb) = match change {
        VoterChange::Promote(id) => (id, "promoting"),
        VoterChange::Demote(id) => (id, "demoting"),
        VoterChange::Remove(id) => (id, "removing"),
    };
    if !view.members.contains(&id) {
        return Err(ChangeError::Invalid(format!(
            "node {} is not a member of the cluster",
            view.label(id)
        )));
    }
    let name = view.label(id);
    if let Some(index) = view.pending {
        return Err(ChangeError::InProgress(format!(
            "the membership at log index {index} is not committed yet"
        )));
    }
    let mut after = view.voters.clone();
    match change {
        VoterChange::Promote(id) => {
            after.insert(id);
        }
        VoterChange::Demote(id) | VoterChange::Remove(id) if view.voters.contains(&id) => {
            if view.voters.len() == 1 {
                return Err(ChangeError::Unsafe(format!(
                    "node {name} is the last voter: {verb} it would leave no voter to elect a leader or commit anything; add another voter first"
                )));
            }
            if id == view.leader {
                return Err(ChangeError::Unsafe(format!(
                    "node {name} is the leader: transfer leadership to another voter first, then retry {verb} it"
                )));
            }
            after.remove(&id);
        }
        VoterChange::Demote(_) | VoterChange::Remove(_) => {}
    }
    if after == view.voters {
        return Ok(());
    }
    let up = |voters: &BTreeSet<NodeId>| -> Vec<NodeId> {
        voters.iter().copied().filter(|v| view.reachable.contains(v)).collect()
    };
    let up_before = up(&view.voters);
    if up_before.len() < view.voters.len() / 2 + 1 {
        return Err(ClientError::NoQuorum(format!(
            "only voters {} of {} are reachable, fewer than a quorum: no membership change can commit",
            view.labels(&up_before),
            view.labels(&view.voters)
        ))
        .into());
    }
    let up_after = up(&after);
    let quorum = after.len() / 2 + 1;
    if up_after.len() < quorum {
        return Err(ChangeError::Unsafe(format!(
            "{verb} node {name} would leave voters {}, of which only {} are reachable: fewer than the {quorum} a quorum needs; bring the others back first",
            view.labels(&after),
            view.labels(&up_after)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A view of leader 1 with `voters` and `learners`, of which `down` are unreachable.
    fn view(voters: &[NodeId], learners: &[NodeId], down: &[NodeId]) -> View {
        let members: BTreeSet<NodeId> = voters.iter().chain(learners).copied().collect();
        View {
            leader: 1,
            reachable: members.iter().copied().filter(|id| !down.contains(id)).collect(),
            members,
            voters: voters.iter().copied().collect(),
            pending: None,
            names: BTreeMap::new(),
        }
    }

    /// What `check` answers, in short: "ok", or the variant and a word of its message.
    fn verdict(view: &View, change: VoterChange) -> String {
        match check(view, change) {
            Ok(()) => "ok".to_string(),
            Err(ChangeError::Invalid(m)) => format!("invalid: {m}"),
            Err(ChangeError::Unsafe(m)) => format!("unsafe: {m}"),
            Err(ChangeError::InProgress(m)) => format!("in progress: {m}"),
            Err(ChangeError::Client(ClientError::NoQuorum(m))) => format!("no quorum: {m}"),
            Err(e) => format!("other: {e}"),
        }
    }

    #[test]
    fn check_refuses_what_would_break_the_cluster() {
        use VoterChange::{Demote, Promote, Remove};
        let cases: &[(View, VoterChange, &str)] = &[
            // Plain changes.
            (view(&[1, 2, 3], &[4], &[]), Promote(4), "ok"),
            (view(&[1, 2, 3], &[4], &[]), Demote(2), "ok"),
            (view(&[1, 2, 3], &[4], &[]), Remove(3), "ok"),
            (view(&[1, 2, 3], &[4], &[]), Remove(4), "ok"),
            // A dead voter can be removed while the rest form a quorum of the new set.
            (view(&[1, 2, 3], &[], &[3]), Remove(3), "ok"),
            // A dead learner can always be removed; voters are untouched.
            (view(&[1, 2, 3], &[4], &[2, 3, 4]), Remove(4), "ok"),
            // Unknown nodes.
            (view(&[1, 2, 3], &[], &[]), Promote(9), "invalid: node 9 is not a member"),
            (view(&[1, 2, 3], &[], &[]), Remove(9), "invalid: node 9 is not a member"),
            // The last voter and the leader itself.
            (view(&[1], &[2], &[]), Remove(1), "unsafe: node 1 is the last voter"),
            (view(&[1], &[2], &[]), Demote(1), "unsafe: node 1 is the last voter"),
            (view(&[1, 2, 3], &[], &[]), Demote(1), "unsafe: node 1 is the leader"),
            (view(&[1, 2, 3], &[], &[]), Remove(1), "unsafe: node 1 is the leader"),
            // Removing a live voter while another is dead leaves 2 voters, 1 reachable.
            (view(&[1, 2, 3], &[], &[3]), Remove(2), "unsafe: removing node 2 would leave"),
            (view(&[1, 2, 3], &[], &[3]), Demote(2), "unsafe: demoting node 2 would leave"),
            // With a quorum of the current voters gone nothing can commit.
            (view(&[1, 2, 3], &[], &[2, 3]), Remove(3), "no quorum: only voters [1]"),
            (view(&[1, 2, 3], &[4], &[2, 3]), Promote(4), "no quorum: only voters [1]"),
            // An unreachable learner would make 4 voters with 2 reachable.
            (view(&[1, 2, 3], &[4], &[3, 4]), Promote(4), "unsafe: promoting node 4"),
        ];
        for (view, change, expected) in cases {
            let got = verdict(view, *change);
            assert!(got.starts_with(expected), "{change:?} on {view:?}: got {got:?}");
        }
    }

    #[test]
    fn messages_name_named_members() {
        let mut v = view(&[1, 2, 3], &[], &[3]);
        v.names = BTreeMap::from([(2, "keel-1".to_string()), (3, "keel-2".to_string())]);
        let got = verdict(&v, VoterChange::Remove(2));
        assert!(
            got.starts_with("unsafe: removing node keel-1 would leave voters [1, keel-2], of which only [1] are reachable"),
            "{got}"
        );
    }

    #[test]
    fn check_refuses_while_a_change_is_in_flight() {
        let mut v = view(&[1, 2, 3], &[4], &[]);
        v.pending = Some(17);
        let got = verdict(&v, VoterChange::Promote(4));
        assert_eq!(got, "in progress: the membership at log index 17 is not committed yet");
        assert!(verdict(&v, VoterChange::Remove(9)).starts_with("invalid"));
    }
}
