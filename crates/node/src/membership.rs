//! Membership: adding a node at its request ([`Node::add`]), and a starting node's side of
//! it ([`join_cluster`]). Changes are serialized on the node ([`Node::membership`]): Raft allows
//! one at a time, and concurrent joins would otherwise fail each other.

use std::time::{Duration, Instant};

use crate::{Error, Node, Peers};

/// How long adding a node may take (it is added as a learner, caught up, then promoted).
const ADD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a starting node keeps asking to be added.
const JOIN_DEADLINE: Duration = Duration::from_secs(300);
/// Pause between rounds of join attempts.
const JOIN_RETRY: Duration = Duration::from_millis(500);
/// How long one join attempt may take.
const JOIN_ATTEMPT: Duration = Duration::from_secs(120);

/// A starting node's request to be added to the cluster.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JoinRequest {
    /// Its node id.
    pub id: raft::NodeId,
    /// Its Raft address.
    pub raft_addr: String,
    /// Its HTTP address.
    pub http_addr: String,
    /// Voter (default) or learner.
    #[serde(default = "yes")]
    pub voter: bool,
}

fn yes() -> bool {
    true
}

impl Node {
    /// Adds the node of `request` to the cluster. This node must lead (route first). Under
    /// mutual TLS the node at `raft_addr` must first prove it is node `id` of this cluster.
    pub async fn add(&self, request: JoinRequest) -> Result<(), Error> {
        if request.id == 0 {
            return Err(Error::InvalidInput("node id must be positive".into()));
        }
        if let Err(e) = self.peers.verify_node(request.id, &request.raft_addr).await {
            tracing::warn!(target: "keel::audit", id = request.id, raft_addr = %request.raft_addr, error = %e, "refused a join");
            return Err(Error::Forbidden(e));
        }
        let target = raft::Node { raft_addr: request.raft_addr, http_addr: request.http_addr };
        let _one_at_a_time = self.membership.lock().await;
        tracing::info!(id = request.id, node = %target, voter = request.voter, "adding node");
        raft::cluster::add_node(&self.raft, request.id, target, request.voter, ADD_TIMEOUT).await?;
        Ok(())
    }
}

/// Asks the cluster (any of `urls`; the request finds the leader) to add this node, retrying for
/// up to five minutes while the cluster is unreachable or electing.
pub async fn join_cluster(
    id: raft::NodeId,
    me: raft::Node,
    urls: &[String],
    voter: bool,
    credentials: Option<(String, String)>,
    peers: &Peers,
) -> anyhow::Result<()> {
    // HTTPS joins trust the cluster CA and present the node certificate.
    let body = JoinRequest { id, raft_addr: me.raft_addr, http_addr: me.http_addr, voter };
    let deadline = Instant::now() + JOIN_DEADLINE;
    let mut attempt = 0u32;
    loop {
        for url in urls {
            let url = format!("{}/join", url.trim_end_matches('/'));
            attempt += 1;
            let mut request = peers.api.post(&url).json(&body).timeout(JOIN_ATTEMPT);
            if let Some((user, password)) = &credentials {
                request = request.basic_auth(user, Some(password));
            }
            match request.send().await {
                Ok(resp) if resp.status().is_success() => {
                    tracing::info!(%url, voter, "joined the cluster");
                    return Ok(());
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    tracing::warn!(%url, %status, %text, attempt, "join refused; retrying");
                }
                Err(e) => {
                    let error = error_chain(&e);
                    tracing::warn!(%url, %error, attempt, "join failed; retrying")
                }
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("no member of {urls:?} accepted this node within 5 minutes");
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
}

/// An error with its sources, `a: b: c` (reqwest hides the TLS reason in a source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
