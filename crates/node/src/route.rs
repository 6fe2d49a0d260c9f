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

    /// Resolves, with the reason, once `leader` looks unable to answer from here: while this
    /// node still follows it, when it has not heard from it for the election timeout plus
    /// [`crate::health::LEADER_SILENCE`] (`/readyz`'s "not contactable"); once it follows
    /// another leader or none, after as long again (a deposed leader that still runs answers
    /// within that time; one that froze never does). A request forwarded to `leader` waits on
    /// this beside the answer, so a frozen leader costs it about an election and a second
    /// instead of the whole forward timeout. A request that moves the leadership on purpose
    /// (`/admin/promote`) is answered by the old leader well within the grace.
    pub async fn leader_gone(&self, leader: raft::NodeId) -> String {
        let limit = self.settings.election_timeout + crate::health::LEADER_SILENCE;
        let mut moved: Option<Instant> = None;
        loop {
            let s = raft::cluster::state(&self.raft);
            if s.leader_id == Some(leader) {
                moved = None;
                if let Some(why) = self.leader_silent(leader) {
                    return why;
                }
            } else {
                let since = *moved.get_or_insert_with(Instant::now);
                if since.elapsed() > limit {
                    let now = match s.leader_id {
                        Some(id) => format!("node {id} leads now"),
                        None => "no leader is known".to_string(),
                    };
                    return format!(
                        "{now}, and node {leader} has not answered for {:.3}s since",
                        since.elapsed().as_secs_f64()
                    );
                }
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// Why `leader`, the leader this node follows, looks gone already: this node has not heard
    /// from it for the election timeout plus [`crate::health::LEADER_SILENCE`] (`/readyz`'s
    /// "not contactable"). `None` while it is heard from, before it was ever heard from, and
    /// for this node itself (it hears no one while it leads). The first condition of
    /// [`Node::leader_gone`], checked at once: a write that finds its leader gone before it is
    /// forwarded is refused with nothing sent, so its outcome is known (not applied).
    pub fn leader_silent(&self, leader: raft::NodeId) -> Option<String> {
        let limit = self.settings.election_timeout + crate::health::LEADER_SILENCE;
        let (at, _) = self.contact.last()?;
        (leader != self.id && at.elapsed() > limit).then(|| {
            format!(
                "leader not contactable: last heard from node {leader} {:.3}s ago",
                at.elapsed().as_secs_f64()
            )
        })
    }

    /// The leader this node knows of, when it is another node.
    fn other_leader(&self) -> Option<raft::cluster::Member> {
        raft::cluster::leader(&self.raft).filter(|l| l.id != self.id)
    }
}
