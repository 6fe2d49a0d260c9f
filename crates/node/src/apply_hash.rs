//! The leader's side of the apply hash (`sql::chain`): every follower's report of its applied
//! position carries its hash there, and the leader compares it with its own hash of the same
//! entry, always, as the reports arrive.
//!
//! Reports come from the replication stream (`raft::network::stream`, through the sink `Node`
//! installs) and from `POST /keel/applied` (`peer`); both call [`Comparer::report`], which
//! costs a lock and a lookup in the ring of recent hashes ([`sql::chain::Recent`]). A report is
//! compared only when it has a hash, the index is among this node's last
//! [`sql::chain::RECENT`] applied entries, and both chains start at the same origin; the
//! others are counted by reason (`keel_apply_hash_uncompared_total`).
//!
//! A mismatch is an event: the first mismatching report of a follower (after it last matched)
//! is logged at error level, counted in `keel_apply_hash_mismatches_total`, and the follower
//! is told (`POST /keel/diverged`, [`tell`]), which keeps it as its divergence, the same
//! record a table check leaves (`checksum`): `/status` shows it until the node is rebuilt.
//! Later reports of a flagged follower are compared and counted, not logged again.
//!
//! The leader's own hash is the reference: a leader whose own record path differs would flag
//! every follower at once, which is how that case shows.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use keel_api::checksum::ApplyHashMismatch;
use keel_api::internal::{DIVERGED_PATH, Diverged};
use prometheus::IntCounter;
use sql::chain::{Comparison, Recent, Uncompared};
use tokio::sync::mpsc;
use wal::{ApplyHash, Lsn, Position};

use crate::Node;

/// How often the leader tries to tell a follower it diverged, and the pause between tries.
const TELL_TRIES: u32 = 5;
const TELL_PAUSE: Duration = Duration::from_secs(2);

/// A follower whose hash differs from this node's at one index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// The follower.
    pub node: raft::NodeId,
    /// The index both hashes are of.
    pub index: Lsn,
    /// The follower's hash.
    pub theirs: ApplyHash,
    /// This node's.
    pub ours: ApplyHash,
}

/// The counters a [`Comparer`] keeps (registered in the node's metrics).
#[derive(Clone)]
pub struct Counters {
    /// Reports compared.
    pub compared: IntCounter,
    /// Followers found different (once until they match again).
    pub mismatches: IntCounter,
    /// Reports not compared: no hash.
    pub no_hash: IntCounter,
    /// Reports not compared: index outside this node's recent hashes.
    pub outside_ring: IntCounter,
    /// Reports not compared: chains of different origins.
    pub other_origin: IntCounter,
}

/// Compares followers' reported hashes with this node's own. Shared by the report paths.
pub struct Comparer {
    /// This node's hashes of its recent entries.
    recent: Arc<Recent>,
    /// Followers found different and not matching since.
    flagged: Mutex<BTreeSet<raft::NodeId>>,
    /// What is counted.
    counters: Counters,
    /// Where mismatches go to be told to the follower ([`tell`]).
    found: mpsc::UnboundedSender<Mismatch>,
}

impl Comparer {
    /// A comparer over `recent`; mismatches to tell arrive on the receiver.
    pub fn new(
        recent: Arc<Recent>,
        counters: Counters,
    ) -> (Comparer, mpsc::UnboundedReceiver<Mismatch>) {
        let (found, receiver) = mpsc::unbounded_channel();
        (Comparer { recent, flagged: Mutex::default(), counters, found }, receiver)
    }

    /// Compares follower `node`'s report with this node's hash at the same index. Returns the
    /// mismatch when it is news (the follower matched, or was not compared, before).
    pub fn report(&self, node: raft::NodeId, position: Position) -> Option<Mismatch> {
        let c = &self.counters;
        let flagged = || self.flagged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.recent.compare(position) {
            Comparison::Match => {
                c.compared.inc();
                flagged().remove(&node);
                None
            }
            Comparison::Mismatch { ours } => {
                c.compared.inc();
                if !flagged().insert(node) {
                    return None;
                }
                c.mismatches.inc();
                let theirs = position.hash.expect("a mismatch has the follower's hash");
                let mismatch = Mismatch { node, index: position.index, theirs, ours };
                tracing::error!(
                    node,
                    lsn = position.index,
                    origin = ours.origin,
                    leader_hash = %ours.hex(),
                    node_hash = %theirs.hex(),
                    "apply hash mismatch: node {node} applied other log entries than this leader, or in another order; rebuild it (`keel admin rebuild --node {node}`)"
                );
                let _ = self.found.send(mismatch);
                Some(mismatch)
            }
            Comparison::NotCompared(Uncompared::NoHash) => {
                c.no_hash.inc();
                None
            }
            Comparison::NotCompared(Uncompared::OutsideRing) => {
                c.outside_ring.inc();
                None
            }
            Comparison::NotCompared(Uncompared::OtherOrigin) => {
                c.other_origin.inc();
                None
            }
        }
    }
}

/// Tells each follower found different (`POST /keel/diverged` on its Raft address), trying a
/// few times; runs until the node is gone.
pub async fn tell(node: Weak<Node>, mut found: mpsc::UnboundedReceiver<Mismatch>) {
    while let Some(mismatch) = found.recv().await {
        let Some(node) = node.upgrade() else { return };
        let body = Diverged {
            lsn: mismatch.index,
            mismatch: ApplyHashMismatch {
                leader: node.id,
                leader_hash: mismatch.ours.hex(),
                node_hash: mismatch.theirs.hex(),
                origin: mismatch.ours.origin,
            },
        };
        tokio::spawn(async move {
            for attempt in 1..=TELL_TRIES {
                match tell_once(&node, mismatch.node, &body).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(
                        node = mismatch.node,
                        attempt,
                        error = %e,
                        "cannot tell a node that its apply hash differs"
                    ),
                }
                tokio::time::sleep(TELL_PAUSE).await;
            }
        });
    }
}

/// One attempt of [`tell`].
async fn tell_once(node: &Node, target: raft::NodeId, body: &Diverged) -> Result<(), String> {
    let member = raft::cluster::member(&node.raft, target)
        .ok_or_else(|| format!("node {target} is not a member"))?;
    let url = node.peers.node_url(&member.node, DIVERGED_PATH);
    let response = node
        .peers
        .node
        .post(&url)
        .json(body)
        .timeout(crate::peer::PEER_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status => {
            Err(format!("{url} answered {status}: {}", response.text().await.unwrap_or_default()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> Counters {
        let c = || IntCounter::new("c", "c").unwrap();
        Counters {
            compared: c(),
            mismatches: c(),
            no_hash: c(),
            outside_ring: c(),
            other_origin: c(),
        }
    }

    fn at(index: Lsn, byte: u8) -> Position {
        Position { index, hash: Some(ApplyHash { origin: 0, digest: [byte; 32] }) }
    }

    /// Hashes of entries 1..=3 as this node recorded them, through a real apply.
    fn recent() -> Arc<Recent> {
        let dir = tempfile::tempdir().unwrap();
        let mut db = sql::Db::open(dir.path()).unwrap();
        for index in 1..=3 {
            db.apply(&[sql::Apply { term: 1, index, record: None, membership: None }]).unwrap();
        }
        db.recent_hashes()
    }

    #[test]
    fn a_mismatch_is_news_once_until_the_follower_matches_again() {
        let recent = recent();
        let ours = recent.get(2).unwrap();
        let (comparer, mut found) = Comparer::new(recent, counters());
        let same = Position { index: 2, hash: Some(ours) };
        assert_eq!(comparer.report(7, same), None);
        let mismatch = comparer.report(7, at(2, 9)).expect("news");
        assert_eq!((mismatch.node, mismatch.index, mismatch.ours), (7, 2, ours));
        assert_eq!(found.try_recv().unwrap(), mismatch);
        assert_eq!(comparer.report(7, at(2, 9)), None, "told already");
        assert!(found.try_recv().is_err());
        assert_eq!(comparer.report(7, same), None);
        assert!(comparer.report(7, at(2, 9)).is_some(), "news again after a match");
        let c = &comparer.counters;
        assert_eq!((c.compared.get(), c.mismatches.get()), (5, 2));
    }

    #[test]
    fn reports_that_cannot_be_compared_are_counted_by_reason() {
        let recent = recent();
        let other_origin =
            Position { index: 3, hash: Some(ApplyHash { origin: 1, ..recent.get(3).unwrap() }) };
        let (comparer, _found) = Comparer::new(recent, counters());
        assert_eq!(comparer.report(7, Position { index: 2, hash: None }), None);
        assert_eq!(comparer.report(7, at(40, 1)), None);
        assert_eq!(comparer.report(7, other_origin), None);
        let c = &comparer.counters;
        assert_eq!((c.no_hash.get(), c.outside_ring.get(), c.other_origin.get()), (1, 1, 1));
        assert_eq!((c.compared.get(), c.mismatches.get()), (0, 0));
    }
}
