//! What a node can say about its own health and its cluster's members: `/readyz`'s checks
//! ([`Node::readiness`]) and the member list of `/nodes` with reachability probes
//! ([`Node::members`]).

use std::time::{Duration, Instant};

use crate::Node;

/// How long past the election timeout a follower may go without hearing from its leader before
/// it says the leader cannot be reached (heartbeats come many times per election timeout; this
/// leaves room for a busy machine).
pub const LEADER_SILENCE: Duration = Duration::from_secs(1);
/// How long a reachability probe of another member may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// rqlite's `/readyz` check list: the checks that passed, and the one that failed if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Lines of the checks that passed, in order (`node ok`, `leader ok`, …).
    pub passed: Vec<String>,
    /// The line of the first check that failed; `None`: ready.
    pub failed: Option<String>,
}

impl Readiness {
    fn fail(mut self, why: String) -> Readiness {
        self.failed = Some(why);
        self
    }
}

/// A member of the cluster as `/nodes` reports it.
#[derive(Debug, Clone)]
pub struct MemberView {
    /// Id, addresses and suffrage.
    pub member: raft::cluster::Member,
    /// Whether it leads.
    pub leader: bool,
    /// Whether it answered a probe (this node always does).
    pub reachable: bool,
    /// On the leader: its replication progress.
    pub replication: Option<Replication>,
}

/// A member's replication progress, as the leader sees it (the wire type).
pub use keel_api::cluster::Replication;

impl Node {
    /// rqlite's `/readyz` checks (`handleReadyz`), stopping at the first that fails:
    ///
    /// * `node ok`: the node answers. With `noleader`, that is all.
    /// * `leader ok`: a leader is known (`leader does not exist` otherwise) and reachable: this
    ///   node leads and a quorum of voters acknowledged it within the election timeout plus
    ///   [`LEADER_SILENCE`] (`leader cannot reach a quorum` otherwise), or it heard from the
    ///   leader within that time (`leader not contactable` otherwise).
    /// * `store ok`: Raft runs (`store not ready` once it stopped on a fatal error).
    /// * The disk is not full (`disk full: …` otherwise; no line of its own when it passes,
    ///   so the answer stays rqlite's).
    /// * `sync ok`, with `sync` only: this node has applied what the leader had committed when
    ///   it last heard from it (the leader: its own commit index), within `timeout`.
    /// * `db ok`: the database answers `SELECT 1` on a read connection within `timeout`.
    pub async fn readiness(&self, noleader: bool, sync: bool, timeout: Duration) -> Readiness {
        let mut r = Readiness { passed: vec!["node ok".into()], failed: None };
        if noleader {
            return r;
        }
        let s = raft::cluster::state(&self.raft);
        if let Err(why) = self.leader_reachable(&s) {
            return r.fail(why);
        }
        r.passed.push("leader ok".into());
        let leading = self.is_leader();
        let contact = self.contact.last();
        if let Some(reason) = &s.stopped {
            return r.fail(format!("store not ready: {reason}"));
        }
        r.passed.push("store ok".into());
        if self.space.is_full() {
            let d = self.space.report();
            return r.fail(format!(
                "disk full: {} bytes free, below the reserve of {} bytes (--disk-reserve); \
                 writes are refused until space returns",
                d.free, d.reserve
            ));
        }
        if sync {
            let target =
                if leading { s.commit_index } else { contact.map_or(0, |(_, c)| c) }.max(1);
            let mut applied = self.applied.clone();
            if tokio::time::timeout(timeout, applied.wait_for(|a| *a >= target)).await.is_err() {
                return r.fail(format!(
                    "sync timeout waiting for applied index {target} (applied {})",
                    self.applied()
                ));
            }
            r.passed.push("sync ok".into());
        }
        match self.probe_db(timeout).await {
            Ok(()) => {
                r.passed.push("db ok".into());
                r
            }
            Err(why) => r.fail(format!("db not ok: {why}")),
        }
    }

    /// `SELECT 1` on a read connection within `timeout`.
    async fn probe_db(&self, timeout: Duration) -> Result<(), String> {
        let readers = self.readers.clone();
        let probe = tokio::task::spawn_blocking(move || {
            readers.query_within(&[sql::Statement::new("SELECT 1")], false, Some(timeout))
        });
        match tokio::time::timeout(timeout, probe).await {
            Ok(Ok(Ok(results))) => match results.as_slice() {
                [sql::StatementResult::Rows { values, .. }]
                    if values == &[vec![serde_json::json!(1)]] =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            },
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:.3}s", timeout.as_secs_f64())),
        }
    }

    /// Whether this node has a leader it can reach: it leads, or it heard from the leader
    /// within the election timeout plus [`LEADER_SILENCE`]. `Err` says why not, in `/readyz`'s
    /// words.
    pub fn leader_reachable(&self, s: &raft::cluster::State) -> Result<(), String> {
        let Some(leader) = s.leader_id else {
            return Err("leader does not exist".into());
        };
        if leader == self.id && self.is_leader() {
            return self.quorum_reachable(s);
        }
        match self.contact.last() {
            None => Err(format!("leader not contactable: node {leader} has not been heard from")),
            Some((at, _)) if at.elapsed() > self.settings.election_timeout + LEADER_SILENCE => {
                Err(format!(
                    "leader not contactable: last heard from node {leader} {:.3}s ago",
                    at.elapsed().as_secs_f64()
                ))
            }
            Some(_) => Ok(()),
        }
    }

    /// On the leader: whether a quorum of voters acknowledged it within the election timeout
    /// plus [`LEADER_SILENCE`]. A leader cut off from its majority keeps its role until it
    /// hears of a higher term, but can commit nothing: it is not ready.
    fn quorum_reachable(&self, s: &raft::cluster::State) -> Result<(), String> {
        let voters = s.members.iter().filter(|m| m.voter).count();
        if voters <= 1 {
            return Ok(());
        }
        let limit = self.settings.election_timeout + LEADER_SILENCE;
        match s.quorum_acked_ago {
            Some(ago) if ago <= limit => Ok(()),
            Some(ago) => Err(format!(
                "leader cannot reach a quorum: last acknowledged by a majority of the {voters} voters {:.3}s ago",
                ago.as_secs_f64()
            )),
            None => Err(format!(
                "leader cannot reach a quorum: not yet acknowledged by a majority of the {voters} voters"
            )),
        }
    }

    /// The cluster's members (learners too with `nonvoters`), each probed for reachability
    /// over its client API (`/readyz?noleader`) in parallel, with replication progress when
    /// this node leads.
    pub async fn members(&self, nonvoters: bool) -> Vec<MemberView> {
        let s = raft::cluster::state(&self.raft);
        let members: Vec<_> = s.members.iter().filter(|m| m.voter || nonvoters).cloned().collect();
        let probes = members.iter().map(|m| self.probe(m));
        let reachable = futures::future::join_all(probes).await;
        let now = Instant::now();
        members
            .into_iter()
            .zip(reachable)
            .map(|(member, reachable)| MemberView {
                leader: s.leader_id == Some(member.id),
                reachable,
                replication: self.replication(&s, &member, now),
                member,
            })
            .collect()
    }

    /// On the leader, each other member's replication progress (by id); empty elsewhere.
    pub fn replication_all(
        &self,
        s: &raft::cluster::State,
    ) -> Option<Vec<(raft::NodeId, Replication)>> {
        s.matched.as_ref()?;
        let now = Instant::now();
        Some(
            s.members
                .iter()
                .filter(|m| m.id != s.id)
                .filter_map(|m| self.replication(s, m, now).map(|r| (m.id, r)))
                .collect(),
        )
    }

    fn replication(
        &self,
        s: &raft::cluster::State,
        m: &raft::cluster::Member,
        now: Instant,
    ) -> Option<Replication> {
        let matched = s.matched.as_ref()?;
        if m.id == s.id {
            return None;
        }
        let lag = self.progress.lag(m.id, s.last_log_index, now);
        Some(Replication {
            role: if m.voter { "follower" } else { "learner" }.to_string(),
            matched_index: matched.get(&m.id).copied().flatten(),
            applied_index: self.progress.applied(m.id),
            lag_entries: lag.map(|l| l.entries),
            lag_ms: lag.map(|l| l.ms),
            lag_us: lag.map(|l| l.us),
        })
    }

    /// Whether member `m` answers its client API (this node always does). A node that requires
    /// credentials (`--auth`) answers 401 or 403: it is up, though its readiness is not ours to
    /// see.
    async fn probe(&self, m: &raft::cluster::Member) -> bool {
        if m.id == self.id {
            return true;
        }
        let url = self.peers.api_url(&m.node, "/readyz?noleader");
        self.peers.api.get(&url).timeout(PROBE_TIMEOUT).send().await.is_ok_and(|r| {
            let status = r.status();
            status.is_success()
                || matches!(
                    status,
                    reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
                )
        })
    }
}
