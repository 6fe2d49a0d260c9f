//! Forming a new cluster from nodes started at once (`keel serve --bootstrap-expect N --join
//! A,B,C`), as an orchestrator starts a StatefulSet: no node is special, yet exactly one cluster
//! forms. rqlite's `-bootstrap-expect`, on openraft.
//!
//! A node with no cluster yet ([`Node::bootstrap_expect`]) repeats, every half second, for up
//! to five minutes:
//!
//! 1. If it has become a member meanwhile (another node formed the cluster and its leader
//!    reached this one), it is done.
//! 2. It tells each node of `--join` its id and addresses (`POST /notify`); each records it and
//!    answers with its own ([`Node::notified`]), so both learn of each other.
//! 3. A node that answers that it is a member of a cluster already is asked to add this one
//!    (`POST /join`, as a plain `--join` does): this is how a node restarted with an empty data
//!    directory, or started after the others formed the cluster, joins it instead of forming a
//!    second one.
//! 4. Once it knows `N` nodes (itself included), it initializes Raft with all of them as voters
//!    ([`raft::cluster::initialize_all`]).
//!
//! With `--discovery` ([`crate::discovery`]) the list of step 2 is not fixed: each round asks
//! DNS again, so nodes that appear over time (the pods of a StatefulSet) are found, and a name
//! that does not exist yet (NXDOMAIN) is asked again next round, until the deadline. Each
//! round's answer is logged when it differs from the last one, and every ten seconds anyway.
//!
//! Every node started with the same list learns the same `N` nodes with the same addresses, so
//! each writes the same first membership entry; openraft allows exactly that and the nodes
//! elect one leader. A node whose Raft already holds a cluster skips all this, so a restart of
//! every node with the same flags forms nothing new. List exactly the `N` nodes: with more
//! listed, two groups could each count `N` and form two clusters (as in rqlite). Under mutual
//! TLS a notification is recorded only after the node at the notified Raft address proved its
//! id ([`crate::Peers::verify_node`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_api::cluster::Notified;

use crate::discovery::Discovery;
use crate::membership::{JoinRequest, ask};
use crate::{Error, Node};

/// How long a node waits for the others before giving up (and stopping).
const DEADLINE: Duration = Duration::from_secs(300);
/// Pause between rounds.
const ROUND: Duration = Duration::from_millis(500);
/// How long one join or notification may take.
const ATTEMPT: Duration = Duration::from_secs(10);
/// How often an unchanged DNS answer is logged again while waiting.
const REPEAT_LOG: Duration = Duration::from_secs(10);

/// Where the nodes to form a cluster with come from.
#[derive(Debug, Clone)]
pub enum Seeds {
    /// The client API URLs of `--join`, the same every round.
    Join(Vec<String>),
    /// DNS records (`--discovery`), asked again every round.
    Discovery(Arc<Discovery>),
}

impl Seeds {
    /// The client API URLs of the nodes this round: `--join`'s, or what DNS names now (its
    /// answer logged through `answers`).
    async fn urls(&self, answers: &mut Answers) -> Vec<String> {
        match self {
            Seeds::Join(urls) => urls.clone(),
            Seeds::Discovery(discovery) => answers.ask(discovery).await,
        }
    }
}

/// The last DNS answer of the rounds and when it was logged, so that an answer is logged when
/// it changes and every [`REPEAT_LOG`] otherwise.
#[derive(Default)]
struct Answers {
    /// The last answer: the URLs found, or why none were.
    last: Option<Result<Vec<String>, String>>,
    /// When an answer was last logged.
    logged: Option<Instant>,
}

impl Answers {
    /// Asks `discovery` and logs its answer if it is news; returns the URLs (none on an error).
    async fn ask(&mut self, discovery: &Discovery) -> Vec<String> {
        let answer = discovery.urls().await;
        let due = self.logged.is_none_or(|at| at.elapsed() >= REPEAT_LOG);
        if self.last.as_ref() != Some(&answer) || due {
            let source = discovery.describe();
            match &answer {
                Ok(urls) => tracing::info!(?urls, "{source}: found {} node(s)", urls.len()),
                Err(why) => tracing::warn!("{source}: no nodes found yet ({why}); asking again"),
            }
            self.logged = Some(Instant::now());
        }
        self.last = Some(answer.clone());
        answer.unwrap_or_default()
    }
}

impl Node {
    /// Starts or joins a cluster of `expect` voters with the nodes of `seeds` (see the module
    /// docs), in the background; a node that is a member already goes on as
    /// [`Node::bootstrap_or_join`] does (with the nodes DNS names now, for `--discovery`).
    pub async fn bootstrap_expect(
        self: &Arc<Self>,
        expect: u64,
        seeds: Seeds,
        voter: bool,
        credentials: Option<(String, String)>,
    ) -> anyhow::Result<()> {
        if raft::cluster::is_initialized(&self.raft).await? {
            let join = seeds.urls(&mut Answers::default()).await;
            return self.bootstrap_or_join(&join, voter, credentials).await;
        }
        let node = self.clone();
        tokio::spawn(async move {
            if let Err(e) = node.form(expect, &seeds, voter, credentials).await {
                tracing::error!(error = %e, "could not form or join a cluster; stopping");
                let _ = node.raft.shutdown().await;
            }
        });
        Ok(())
    }

    /// The rounds of the module docs, until this node is a member.
    async fn form(
        &self,
        expect: u64,
        seeds: &Seeds,
        voter: bool,
        credentials: Option<(String, String)>,
    ) -> anyhow::Result<()> {
        let expect = usize::try_from(expect).unwrap_or(usize::MAX);
        let deadline = Instant::now() + DEADLINE;
        let me = self.join_request(voter);
        match seeds {
            Seeds::Join(urls) => tracing::info!(
                expect,
                ?urls,
                "waiting for {expect} nodes to form a cluster (--bootstrap-expect)"
            ),
            Seeds::Discovery(discovery) => tracing::info!(
                expect,
                "waiting for {expect} nodes to form a cluster (--bootstrap-expect), finding them through the {}",
                discovery.describe()
            ),
        }
        let mut answers = Answers::default();
        loop {
            if raft::cluster::is_initialized(&self.raft).await? {
                tracing::info!("a member of the cluster formed with the other nodes");
                return Ok(());
            }
            let urls = seeds.urls(&mut answers).await;
            for url in &urls {
                let credentials = credentials.as_ref();
                let answer = match ask(&self.peers, url, "/notify", &me, credentials, ATTEMPT).await
                {
                    Ok(answer) => answer,
                    Err(why) => {
                        tracing::debug!(%url, "not notified yet: {why}");
                        continue;
                    }
                };
                let other: Notified = match serde_json::from_slice(&answer) {
                    Ok(other) => other,
                    Err(e) => {
                        tracing::warn!(%url, "unreadable answer to /notify: {e}");
                        continue;
                    }
                };
                if other.member {
                    match ask(&self.peers, url, "/join", &me, credentials, ATTEMPT).await {
                        Ok(_) => {
                            tracing::info!(%url, "joined a running cluster instead of forming one");
                            return Ok(());
                        }
                        Err(why) => {
                            tracing::info!(%url, "the node is in a cluster already; joining it failed: {why}")
                        }
                    }
                    continue;
                }
                let addr = match crate::membership::member_addr(
                    other.id,
                    other.name,
                    other.raft_addr,
                    other.http_addr,
                ) {
                    Ok(addr) => addr,
                    Err(e) => {
                        tracing::warn!(%url, "ignored an invalid answer to /notify: {e}");
                        continue;
                    }
                };
                match self.peers.verify_node(other.id, &addr.raft_addr).await {
                    Ok(()) => {
                        if let Err(e) = self.record(other.id, addr) {
                            tracing::warn!(%url, "ignored a node: {e}");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%url, id = %addr.label(other.id), "ignored a node that did not prove its id: {e}")
                    }
                }
            }
            let known = self.known();
            if known.len() >= expect {
                let ids: Vec<String> = known.iter().map(|(id, m)| m.label(*id)).collect();
                tracing::info!(
                    ?ids,
                    "{} nodes known: bootstrapping the cluster with them all",
                    known.len()
                );
                raft::cluster::initialize_all(&self.raft, known).await?;
                return Ok(());
            }
            if Instant::now() > deadline {
                let hint = match seeds {
                    Seeds::Join(_) => "is --join the same on every node?".to_string(),
                    Seeds::Discovery(discovery) => {
                        format!("do the {} name them all?", discovery.describe())
                    }
                };
                anyhow::bail!(
                    "only {} of the {expect} nodes of --bootstrap-expect made contact within {DEADLINE:?}: are the others running, and {hint}",
                    known.len()
                );
            }
            tokio::time::sleep(ROUND).await;
        }
    }

    /// `POST /notify`: node `other` is waiting to form a cluster with this one. Records it
    /// (under mutual TLS once it proved its id at its Raft address) and answers with this
    /// node's own id and addresses.
    pub async fn notified(&self, other: JoinRequest) -> Result<Notified, Error> {
        let addr =
            crate::membership::member_addr(other.id, other.name, other.raft_addr, other.http_addr)
                .map_err(Error::InvalidInput)?;
        if let Err(e) = self.peers.verify_node(other.id, &addr.raft_addr).await {
            tracing::warn!(target: "keel::audit", id = %addr.label(other.id), raft_addr = %addr.raft_addr, error = %e, "refused a notification");
            return Err(Error::Forbidden(e));
        }
        self.record(other.id, addr).map_err(Error::InvalidInput)?;
        Ok(Notified {
            id: self.id,
            name: self.me.name.clone(),
            raft_addr: self.me.raft_addr.clone(),
            http_addr: self.me.http_addr.clone(),
            member: raft::cluster::is_initialized(&self.raft).await.unwrap_or(false),
        })
    }

    /// Records node `id` among the nodes known to form a cluster with (its id proven already).
    /// Refuses a node whose name has the Raft id of another node's name (or number).
    fn record(&self, id: raft::NodeId, addr: raft::MemberAddr) -> Result<(), String> {
        let mut notified = self.notified.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = if id == self.id { Some(&self.me) } else { notified.get(&id) };
        if let Some(held) = held
            && held.name != addr.name
        {
            return Err(format!(
                "node {} has the Raft id {id} of node {}: rename one of them",
                addr.label(id),
                held.label(id)
            ));
        }
        if id != self.id && notified.get(&id) != Some(&addr) {
            tracing::info!(id = %addr.label(id), node = %addr, "node made contact to form a cluster");
            notified.insert(id, addr);
        }
        Ok(())
    }

    /// This node and the nodes recorded.
    fn known(&self) -> BTreeMap<raft::NodeId, raft::MemberAddr> {
        let mut known =
            self.notified.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        known.insert(self.id, self.me.clone());
        known
    }

    /// This node's id and addresses, as a join or a notification says them.
    fn join_request(&self, voter: bool) -> JoinRequest {
        JoinRequest {
            id: self.id,
            name: self.me.name.clone(),
            raft_addr: self.me.raft_addr.clone(),
            http_addr: self.me.http_addr.clone(),
            voter,
        }
    }
}
