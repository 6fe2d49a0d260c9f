//! Who serves a request that needs the leader.
//!
//! During an election there is briefly no leader (or a stale one): [`Node::route`] waits up to
//! [`LEADER_WAIT`] for one to emerge rather than failing at once. It only decides; forwarding
//! the request or answering a redirect is the caller's (the HTTP layer holds the request as it
//! arrived, and forwards it unchanged).

use std::time::{Duration, Instant};

use crate::Node;

/// How long a request waits for a leader to emerge (an election) before it is refused.
pub const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How often the wait looks again.
const LEADER_POLL: Duration = Duration::from_millis(20);

/// Where a request that needs the leader goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// This node leads: serve it here.
    Here,
    /// Another node leads: send it there.
    Leader(raft::cluster::Member),
    /// No leader emerged within [`LEADER_WAIT`].
    NoLeader,
}

impl Node {
    /// Where a request that needs the leader goes (see the module docs).
    pub async fn route(&self) -> Route {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            if self.is_leader() {
                return Route::Here;
            }
            if let Some(l) = self.other_leader() {
                return Route::Leader(l);
            }
            if Instant::now() >= deadline {
                return Route::NoLeader;
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// Resolves, with the reason, once `leader` no longer looks like the leader from here:
    /// another node (or this one) leads, or this node has not heard from it for the election
    /// timeout plus [`crate::health::LEADER_SILENCE`] (`/readyz`'s "not contactable"). A
    /// request forwarded to `leader` waits on this beside the answer, so a frozen leader costs
    /// it about an election instead of the whole forward timeout.
    pub async fn leader_gone(&self, leader: raft::NodeId) -> String {
        loop {
            let s = raft::cluster::state(&self.raft);
            match s.leader_id {
                Some(id) if id != leader => return format!("node {id} leads now"),
                _ => {}
            }
            if let Err(why) = self.leader_reachable(&s) {
                return why;
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// The leader this node knows of, when it is another node.
    fn other_leader(&self) -> Option<raft::cluster::Member> {
        raft::cluster::leader(&self.raft).filter(|l| l.id != self.id)
    }
}
