//! Reaping (`keel serve --reap-after DURATION`): on the leader, members it has not heard from
//! for that long are removed, so a cluster run by an orchestrator that replaces dead nodes with
//! new ones (new ids) does not keep the dead ones in its quorum forever.
//!
//! [`run`] is a loop on every node that acts only while the node leads: each round asks
//! [`raft::cluster::reap_once`], which judges from the leader's heartbeat view (when each member
//! last acknowledged it; a member not heard from since this node became leader counts as silent
//! since then) and removes at most one member. Learners are always reaped; voters only while at
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
    // The term this node leads in, and since when.
    let mut led: Option<(raft::Term, Instant)> = None;
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
        let since = match led {
            Some((term, since)) if term == state.term => since,
            _ => {
                let now = Instant::now();
                led = Some((state.term, now));
                now
            }
        };
        match raft::cluster::reap_once(&node.raft, after, since.elapsed()).await {
            Ok(Reaped::Removed { id, voter, silent }) => {
                let role = if voter { "voter" } else { "learner" };
                tracing::info!(id, role, silent = ?silent, "reaped a member the leader had not heard from for --reap-after");
                said.remove(&id);
            }
            Ok(Reaped::Kept(kept)) => {
                let now: BTreeMap<raft::NodeId, String> = kept.into_iter().collect();
                for (id, why) in &now {
                    if said.get(id) != Some(why) {
                        tracing::warn!(
                            id,
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
