//! The follower's end of the replication stream: [`open`] (the `POST /raft/stream` route that
//! checks the sender and upgrades the connection) and [`serve`] (the frames on it). See the
//! parent module for the protocol.

use std::collections::VecDeque;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, UPGRADE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::frame::{Codec, close, flush};
use super::{Down, HASH_HEADER, PROTOCOL, SENDER_HEADER, Up};
use crate::network::PeerNode;
use crate::network::server::{Server, refuse_sender, voter};
use crate::space::entry_bytes;
use crate::types::NodeId;
use wal::Position;

/// `POST /raft/stream`: checks the upgrade request and its sender, answers 101 and serves the
/// stream on the upgraded connection in a task of its own.
pub(in crate::network) async fn open(
    State(server): State<Server>,
    mut request: Request,
) -> Response {
    let claimed = match sender(request.headers()) {
        Ok(id) => id,
        Err(msg) => return (StatusCode::BAD_REQUEST, msg).into_response(),
    };
    let peer = request.extensions().get::<PeerNode>().copied().map(Extension);
    if let Some(refused) = refuse_sender(&server, peer, "stream", claimed) {
        return refused;
    }
    let hashes = request.headers().get(HASH_HEADER).is_some_and(|v| v == "1");
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => serve(server, TokioIo::new(io), claimed, hashes).await,
            Err(e) => tracing::debug!(leader = claimed, error = %e, "stream upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, PROTOCOL)
        .body(Body::empty())
        .expect("a 101 answer with static headers is valid")
}

/// The node an upgrade request says it comes from, or why it is not a stream request.
fn sender(headers: &HeaderMap) -> Result<NodeId, String> {
    let upgrade = headers.get(UPGRADE).and_then(|v| v.to_str().ok());
    if upgrade != Some(PROTOCOL) {
        return Err(format!("{} needs `Upgrade: {PROTOCOL}`", super::STREAM_PATH));
    }
    headers
        .get(SENDER_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("a stream request names its node id in {SENDER_HEADER}"))
}

/// What ends a stream, for the log.
enum End {
    /// The leader closed it, or it broke.
    Closed(String),
    /// This node ends it, telling the leader why.
    Failed(String),
    /// The last answer was sent (an error answer, after which openraft's stream is over).
    Answered,
    /// This node's disk cannot take the entries: it ends the stream, telling the leader why
    /// (logged quietly: the disk's state is logged where it changes, `crate::space`).
    Refused(String),
}

/// Serves the stream that node `sender` opened on `io` until it ends: appends go to
/// `Raft::stream_append`, its answers and this node's applied positions go back (with the
/// apply hash when `hashes`: the leader said it reads them). Registered with
/// [`crate::network::Contact`] while it lasts.
pub(in crate::network) async fn serve<IO>(server: Server, io: IO, sender: NodeId, hashes: bool)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let _open = server.contact.stream_opened(sender);
    let (read, write) = tokio::io::split(io);
    let mut frames = FramedRead::new(read, Codec::<Down, Up>::new());
    let mut out = FramedWrite::new(write, Codec::<Down, Up>::new());
    let (appends, input) = futures::channel::mpsc::unbounded();
    let mut answers = std::pin::pin!(server.raft.stream_append(input));
    // The leader's commit index of each unanswered append, for `Contact`, and the bytes of
    // its entries, for the disk check of the next ones.
    let mut commits = VecDeque::new();
    let mut pending: VecDeque<u64> = VecDeque::new();
    let mut applied = server.applied.clone();
    let mut unflushed = false;
    let report = |position: Position| match hashes {
        true => Down::Position(position),
        false => Down::Applied(position.index),
    };
    if let Some(rx) = &mut applied {
        let position = *rx.borrow_and_update();
        unflushed = out.feed(&report(position)).await.is_ok();
    }
    let end = loop {
        tokio::select! {
            biased;
            answer = answers.next() => match answer {
                Some(Ok(answer)) => {
                    let commit = commits.pop_front().unwrap_or(0);
                    pending.pop_front();
                    let last = answer.is_err();
                    if !last {
                        server.contact.heard(commit);
                    }
                    if let Err(e) = out.feed(&Down::Answer(answer)).await {
                        break End::Closed(e.to_string());
                    }
                    if last {
                        break End::Answered;
                    }
                    unflushed = true;
                }
                Some(Err(fatal)) => break End::Failed(format!("Raft stopped: {fatal}")),
                None => break End::Closed("the append pipeline ended".into()),
            },
            frame = frames.next() => match frame {
                Some(Ok(Up::Append(append))) => {
                    let named = voter(&append.vote);
                    if server.verify_senders && named != sender {
                        break End::Failed(refusal(sender, named));
                    }
                    if let Err(full) = server.room_for(&append.entries, pending.iter().sum()) {
                        break End::Refused(format!("{}: {full}", super::NO_ROOM));
                    }
                    pending.push_back(append.entries.iter().map(entry_bytes).sum());
                    commits.push_back(append.leader_commit.as_ref().map_or(0, |l| l.index));
                    if appends.unbounded_send(append).is_err() {
                        break End::Closed("the append pipeline ended".into());
                    }
                }
                Some(Err(e)) => break End::Closed(e.to_string()),
                None => break End::Closed("the leader closed it".into()),
            },
            position = changed(&mut applied) => match position {
                Some(position) => match out.feed(&report(position)).await {
                    Ok(()) => unflushed = true,
                    Err(e) => break End::Closed(e.to_string()),
                },
                None => applied = None,
            },
            flushed = flush(&mut out), if unflushed => match flushed {
                Ok(()) => unflushed = false,
                Err(e) => break End::Closed(e.to_string()),
            },
        }
    };
    finish(&mut out, end, sender).await;
}

/// This node's next applied position, or `None` when its source is gone; never without one.
async fn changed(applied: &mut Option<watch::Receiver<Position>>) -> Option<Position> {
    let Some(rx) = applied else { return std::future::pending().await };
    rx.changed().await.ok()?;
    Some(*rx.borrow_and_update())
}

/// The refusal of an append whose vote names `named` on a stream `sender` opened, logged
/// under `keel::audit`.
fn refusal(sender: NodeId, named: NodeId) -> String {
    tracing::warn!(
        target: "keel::audit",
        rpc = "stream",
        claimed = named,
        certificate_node = sender,
        "refused a Raft RPC: an append on node {sender}'s stream names another leader"
    );
    format!("this append claims to come from node {named}, but the stream is node {sender}'s")
}

/// Sends what is left (and the reason, if this node ends the stream), then closes it.
async fn finish<W: AsyncWrite + Unpin>(
    out: &mut FramedWrite<W, Codec<Down, Up>>,
    end: End,
    sender: NodeId,
) {
    match end {
        End::Closed(why) => tracing::debug!(leader = sender, %why, "replication stream closed"),
        End::Answered => {}
        End::Failed(why) => {
            tracing::info!(leader = sender, %why, "ending a replication stream");
            let _ = out.feed(&Down::Failed(why)).await;
        }
        End::Refused(why) => {
            tracing::debug!(leader = sender, %why, "ending a replication stream");
            let _ = out.feed(&Down::Failed(why)).await;
        }
    }
    let _ = close(out).await;
}
