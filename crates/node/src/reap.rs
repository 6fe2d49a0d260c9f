//! Reaping (`keel serve --reap-after DURATION`): on the leader, members it has not heard from
//! for that long are removed, so a cluster run by an orchestrator that replaces dead nodes with
//! new ones (new ids) does not keep the dead ones in its quorum forever.
//!
//! [`run`] is a loop on every node that acts only while the node leads: each round asks
//! [`raft::cluster::reap_once`], which judges from the leader's heartbeat view (when each member
//! last acknowledged it; a member not heard from at all counts as silent since this loop first
//! saw it as a member under this leadership, so a node being added is not taken for a dead one)
//! and removes at most one member. Learners are always reaped; voters only while at
//! least [`raft::cluster::MIN_VOTERS`] remain and the voters the leader hears from stay a quorum
//! of the new set. A silent member that stays is logged with the reason, once per reason, and
//! judged again next round.

use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use raft::cluster::{Reaped, Role};

use crate::Node;

/// Runs until the node is dropped: every quarter of `after` (between 100 ms and 5 s), while this
/// node leads, removes one member silent for `after`, if it may.
pub async fn run(node: Weak<Node>, after: Duration) {
    let every = (after / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    // The term this node leads in, and since when it has known each member in that term.
    let mut led: Option<raft::Term> = None;
    let mut known: BTreeMap<raft::NodeId, Instant> = BTreeMap::new();
    // The reason last logged for keeping each silent member.
    let mut said: BTreeMap<raft::NodeId, String> = BTreeMap::new();
    loop {
        tokio::time::sleep(every).await;
        let Some(node) = node.upgrade() else { return };
        let state = node.cluster();
        if state.role != Role::Leader {
            led = None;
            said.clear();
            continue;
        }
        if led != Some(state.term) {
            led = Some(state.term);
            known.clear();
        }
        let now = Instant::now();
        known.retain(|id, _| state.members.iter().any(|m| m.id == *id));
        for m in &state.members {
            known.entry(m.id).or_insert(now);
        }
        let known_for = known.iter().map(|(id, since)| (*id, now - *since)).collect();
        let label = |id: raft::NodeId| {
            state.members.iter().find(|m| m.id == id).map_or_else(|| id.to_string(), |m| m.label())
        };
        match raft::cluster::reap_once(&node.raft, after, &known_for).await {
            Ok(Reaped::Removed { id, voter, silent }) => {
                let role = if voter { "voter" } else { "learner" };
                tracing::info!(id = %label(id), role, silent = ?silent, "reaped a member the leader had not heard from for --reap-after");
                said.remove(&id);
            }
            Ok(Reaped::Kept(kept)) => {
                let now: BTreeMap<raft::NodeId, String> = kept.into_iter().collect();
                for (id, why) in &now {
                    if said.get(id) != Some(why) {
                        let id = label(*id);
                        tracing::warn!(
                            %id,
                            "not reaping node {id}, silent for --reap-after or longer: {why}; judging again later"
                        );
                    }
                }
                said = now;
            }
            Err(e) => tracing::warn!(error = %e, "reaping failed; trying again later"),
        }
    }
}
