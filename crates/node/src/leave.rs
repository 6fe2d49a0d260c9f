//! Leaving the cluster on shutdown (`keel serve --leave-on-shutdown`): a node an orchestrator
//! stops for good takes itself out of the membership first, so the others do not keep counting
//! it in their quorum.
//!
//! [`Node::leave`] runs on the leaving node, before Raft stops. A follower or learner asks the
//! leader to remove it (`POST /keel/leave` on the leader's Raft address, answered by
//! [`leave_route`]: under mutual TLS only the node itself may ask, its certificate proves the
//! id). A leader first hands leadership to the most caught-up voter it hears from
//! ([`Node::step_down`]), then asks the new leader the same way. The removal is an ordinary
//! removal ([`Node::remove`]): refused if the voters left that the leader hears from would not
//! be a quorum, which the leaving node, still running, still is part of until the change has
//! committed, so removing voters one at a time this way never leaves a cluster that cannot elect.
//! The last voter cannot leave (there is nobody to hand over to).
//!
//! Bounded: the node tries for at most the given time (no leader, no quorum, a refusal all
//! retry until then), then logs why it could not leave and shuts down anyway: the cluster
//! then sees a stopped member, as without the flag.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use keel_api::internal::{LEAVE_PATH, Leave};

use crate::Node;

/// Pause between two attempts to leave.
const RETRY: Duration = Duration::from_millis(200);
/// How long one request to the leader may take (a removal commits within it, or is retried).
const ATTEMPT: Duration = Duration::from_secs(10);

/// Why an attempt to leave did not finish.
enum NotYet {
    /// It cannot succeed (the last voter); stop trying.
    Never(String),
    /// Try again until the deadline.
    Retry(String),
}

impl Node {
    /// Takes this node out of the cluster before it shuts down; gives up after `within` (see
    /// the module docs). Logs what happened; never fails.
    pub async fn leave(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let why = match self.try_leave().await {
                Ok(()) => {
                    tracing::info!("left the cluster");
                    return;
                }
                Err(NotYet::Never(why)) => {
                    tracing::warn!("not leaving the cluster: {why}");
                    return;
                }
                Err(NotYet::Retry(why)) => why,
            };
            if Instant::now() + RETRY >= deadline {
                tracing::warn!(
                    "could not leave the cluster within {within:?} ({why}); shutting down as a member: remove this node with `keel admin remove` if it is gone for good"
                );
                return;
            }
            tracing::info!("leaving the cluster: {why}; retrying");
            tokio::time::sleep(RETRY).await;
        }
    }

    /// One attempt: hand over leadership if this node leads, else ask the leader.
    async fn try_leave(&self) -> Result<(), NotYet> {
        let state = self.cluster();
        if !state.members.iter().any(|m| m.id == self.id) {
            return Ok(());
        }
        if state.role == raft::cluster::Role::Leader {
            let voters = state.members.iter().filter(|m| m.voter).count();
            if voters == 1 {
                return Err(NotYet::Never(format!(
                    "node {} is the last voter: nobody could take over",
                    self.me.label(self.id)
                )));
            }
            return match self.step_down(None).await {
                Ok((to, term)) => Err(NotYet::Retry(format!(
                    "handed leadership over to node {} (term {term})",
                    self.label(to)
                ))),
                Err(e) => Err(NotYet::Retry(format!("handing leadership over failed: {e}"))),
            };
        }
        let leader = state
            .leader_id
            .and_then(|id| state.members.iter().find(|m| m.id == id))
            .ok_or_else(|| NotYet::Retry("no leader is known".to_string()))?;
        let url = self.peers.node_url(&leader.node, LEAVE_PATH);
        let sent = self.peers.node.post(&url).json(&Leave { id: self.id }).timeout(ATTEMPT).send();
        match sent.await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                Err(NotYet::Retry(format!("node {} answered {status}: {text}", leader.label())))
            }
            Err(e) => Err(NotYet::Retry(format!(
                "asking node {}: {}",
                leader.label(),
                crate::membership::error_chain(&e)
            ))),
        }
    }
}

/// `POST /keel/leave`, body [`Leave`]: removes the sender, if this node leads. 204 once it is
/// not a member (also when it was not one); 403 when a proven sender asks for another node;
/// 503 when this node does not lead or the removal cannot be made now (the message says why).
pub(crate) async fn leave_route(
    State(node): State<Arc<Node>>,
    peer: Option<axum::Extension<raft::network::PeerNode>>,
    body: Bytes,
) -> Response {
    let Ok(Leave { id }) = serde_json::from_slice(&body) else {
        return (StatusCode::BAD_REQUEST, "the body must be {\"id\": N}").into_response();
    };
    if let Some(axum::Extension(raft::network::PeerNode(proven))) = peer
        && proven != id
    {
        tracing::warn!(target: "keel::audit", id, certificate_node = proven, "refused a request to remove another node");
        let why = format!("node {proven} may ask only for itself to leave, not node {id}");
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    if !raft::cluster::is_member(&node.raft, id) {
        return StatusCode::NO_CONTENT.into_response();
    }
    tracing::info!(id = %node.label(id), "node asks to leave the cluster");
    match node.remove(id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}
