//! Elections that start as soon as a crashed leader's lease has run out, instead of one
//! election timeout after it.
//!
//! openraft starts an election when a follower has heard nothing from its leader for the
//! leader lease (the maximum election timeout) *plus* a random election timeout: about
//! 210–240 ms with Keel's defaults, most of a failover. The lease part cannot be shortened
//! without giving up what `weak` reads rely on (a voter that acknowledged the leader at `t`
//! grants no vote before `t + lease`). The random part can, when there is evidence that the
//! leader is gone: a leader that dies takes its sockets with it, so every replication stream it
//! had open to this node ends at once ([`Contact`] counts them).
//!
//! [`run`] watches for that. When the current leader has no stream open to this node any more
//! and nothing has been heard from it since, it waits until this node's lease from that leader
//! has expired (the last contact plus the lease, plus a margin), then asks openraft for a
//! **pre-vote** election (`Trigger::elect(true)`); if no new term has begun, it asks again every
//! [`RETRY`] until openraft's own timer would have fired. Voters are staggered by rank (their
//! place among the live voters, [`STAGGER`] apart) so two of them rarely campaign at once.
//!
//! Why this is safe (also in docs/architecture.md, "Prompt elections"):
//! - The trigger never cuts a lease short. openraft's `pre_elect` is a no-op while this node's
//!   own lease is valid, and every voter grants a pre-vote, and later a vote, only under the
//!   same lease rule as always. The leader's lease reads rely only on that rule.
//! - Election safety (one leader per term) does not depend on timing at all.
//! - A closed stream that does not mean a dead leader (a dropped connection, a proxy fault)
//!   costs at most one pre-vote round after the lease expired, which succeeds only if a
//!   majority also has not heard from the leader for a whole lease: then the leader's own
//!   lease has lapsed too, and openraft's timer would elect a new leader a little later anyway.
//! - A candidate whose log is behind is refused its pre-vote without any change of term, so the
//!   next voter by rank, whose log is longer, wins instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use crate::network::Contact;
use crate::{NodeId, Raft};

/// How long after this node's lease from the leader expired the first attempt is made. The last
/// contact is recorded after openraft took the append, so openraft's own lease has ended by
/// then; a peer that heard the leader a little later refuses the first pre-vote, and a retry
/// ([`RETRY`]) asks again.
pub const MARGIN: Duration = Duration::from_millis(1);
/// How far apart voters of consecutive ranks make their first attempt.
pub const STAGGER: Duration = Duration::from_millis(10);
/// Pause between attempts of one voter.
pub const RETRY: Duration = Duration::from_millis(10);

/// Watches this node's leader and starts a pre-vote election when the leader's streams have
/// closed and its lease has run out (see the module docs); `asked` is called for each election
/// asked of openraft. Runs until Raft stops.
pub async fn run(raft: Raft, contact: Arc<Contact>, asked: impl Fn() + Send + 'static) {
    let config = raft.config();
    let lease = Duration::from_millis(config.election_timeout_max);
    let timeout = Duration::from_millis(config.election_timeout_min);
    let mut closed = contact.stream_closures();
    let metrics = raft.server_metrics();
    loop {
        if closed.changed().await.is_err() {
            return;
        }
        let Some(watch) = Watched::now(&raft, &contact) else { continue };
        let rank = {
            let m = metrics.borrow_watched();
            let voters = m.membership_config.membership().voter_ids();
            voters.filter(|v| *v != watch.leader).position(|v| v == m.id)
        };
        let Some(rank) = rank else { continue };
        let first = watch.heard + lease + MARGIN + STAGGER * rank as u32;
        let last = watch.heard + lease + timeout;
        let mut at = first;
        while at < last {
            tokio::time::sleep_until(at.into()).await;
            if !watch.holds(&raft, &contact) || !watch.unchanged_in_core(&raft).await {
                break;
            }
            if at == first {
                tracing::info!(
                    leader = watch.leader,
                    term = watch.term,
                    "the leader's replication streams closed and its lease expired: asking for an election"
                );
            }
            if raft.trigger().elect(true).await.is_err() {
                return;
            }
            asked();
            at += RETRY;
        }
    }
}

/// What made this node decide to campaign: all of it must still hold at each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Watched {
    /// The leader whose streams closed.
    leader: NodeId,
    /// Its term.
    term: u64,
    /// When this node last heard from it.
    heard: Instant,
}

impl Watched {
    /// The situation now, if this node is a follower whose leader has no stream open to it.
    fn now(raft: &Raft, contact: &Contact) -> Option<Watched> {
        let m = raft.server_metrics();
        let m = m.borrow_watched();
        let leader = m.current_leader?;
        if m.state != ServerState::Follower || leader == m.id || !m.vote.is_committed() {
            return None;
        }
        if contact.streaming_from(leader) {
            return None;
        }
        let (heard, _) = contact.last()?;
        Some(Watched { leader, term: m.vote.leader_id().term, heard })
    }

    /// Whether nothing has changed since: same leader and term, still no stream from it, and
    /// nothing heard from it.
    fn holds(&self, raft: &Raft, contact: &Contact) -> bool {
        Watched::now(raft, contact).is_some_and(|now| now == *self)
    }

    /// Whether Raft itself, asked now rather than through its published metrics (which lag
    /// a little), is still a follower holding the leader's committed vote. An election asked
    /// of a node that has meanwhile become a candidate (an earlier attempt's pre-vote was
    /// granted) would start another one, a term higher.
    async fn unchanged_in_core(&self, raft: &Raft) -> bool {
        let term = self.term;
        raft.with_raft_state(move |st| {
            let vote = st.vote_ref();
            st.server_state == ServerState::Follower
                && vote.is_committed()
                && vote.leader_id().term == term
        })
        .await
        .unwrap_or(false)
    }
}
