//! The replication stream over real HTTP: a leader replicating to a follower on it (and the
//! follower's applied positions reaching the leader), the sender checks at the opening and on
//! every append, and the fallback to single appends for a node that does not serve it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use openraft::async_runtime::WatchReceiver;
use raft::network::stream::frame::Codec;
use raft::network::stream::{Down, HASH_HEADER, PROTOCOL, SENDER_HEADER, STREAM_PATH, Up};
use raft::network::{AppliedSink, Contact, PeerNode, Transport, router_with};
use raft::state_machine::{Committed, Result as StoreResult, Store, log_id};
use raft::{MemberAddr, Options, Raft, Vote};
use tokio::sync::watch;
use tokio_util::codec::{FramedRead, FramedWrite};
use wal::{Applied, ApplyHash};

/// A store that only keeps its applied position.
#[derive(Default)]
struct Position(Mutex<Option<Applied>>);

/// The applied positions a leader received: `(follower, position)`.
type Received = Arc<Mutex<Vec<(u64, wal::Position)>>>;

impl Store for Position {
    fn applied(&self) -> StoreResult<Option<Applied>> {
        Ok(self.0.lock().unwrap().clone())
    }

    fn apply(&self, entries: Arc<Vec<Committed>>) -> BoxFuture<'static, StoreResult<()>> {
        let mut applied = self.0.lock().unwrap();
        for e in entries.iter() {
            let membership = e
                .membership
                .clone()
                .or_else(|| applied.as_ref().and_then(|a| a.membership.clone()));
            *applied = Some(Applied { term: e.term, index: e.index, membership });
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn snapshot_to(&self, path: &Path) -> StoreResult<Option<Applied>> {
        fs::File::create(path)?.sync_all()?;
        Ok(self.0.lock().unwrap().clone())
    }

    fn install(&self, _: &Path) -> StoreResult<()> {
        Ok(())
    }
}

/// A node serving `routes(raft)` on a free port.
struct TestNode {
    raft: Raft,
    addr: String,
}

impl TestNode {
    async fn start(
        id: u64,
        dir: &Path,
        transport: Transport,
        routes: impl FnOnce(Raft) -> Router,
    ) -> TestNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let options = Options { transport, ..Options::default() };
        let (raft, _) =
            raft::start(id, dir, &options, Arc::new(Position::default())).await.unwrap();
        let app = routes(raft.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestNode { raft, addr }
    }
}

fn member(addr: &str) -> MemberAddr {
    MemberAddr::new(addr, "")
}

/// A leader (node 1, recording the applied positions it receives) and a follower (node 2)
/// served by `follower_routes`, in one cluster, with a few entries written and applied on
/// both.
async fn cluster(
    dir: &Path,
    follower_routes: impl FnOnce(Raft) -> Router,
) -> (TestNode, TestNode, Received) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let sink: AppliedSink =
        Arc::new(move |id, position: wal::Position| sink.lock().unwrap().push((id, position)));
    let transport = Transport::plain().with_applied(sink);
    let contact = Arc::new(Contact::default());
    let leader = TestNode::start(1, &dir.join("a"), transport, |raft| {
        router_with(raft, contact, false, None, None)
    })
    .await;
    let follower = TestNode::start(2, &dir.join("b"), Transport::plain(), follower_routes).await;
    let members = BTreeMap::from([(1, member(&leader.addr)), (2, member(&follower.addr))]);
    leader.raft.initialize(members).await.unwrap();
    leader
        .raft
        .wait(Some(Duration::from_secs(10)))
        .state(raft::ServerState::Leader, "leader")
        .await
        .unwrap();
    // The new leader's lease starts with its followers' first answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    let mut written = 0;
    while written < 20 {
        let record = wal::Record { ops: vec![], requests: vec![] };
        match leader.raft.client_write(record).await {
            Ok(w) => (last, written) = (w.log_id.index, written + 1),
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "writing: {e}"),
        }
    }

    follower
        .raft
        .wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(Some(last), "follower applied")
        .await
        .unwrap();
    (leader, follower, received)
}

/// Waits (up to 10 s) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_replicates_on_the_stream_and_hears_applied_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let contact = Arc::new(Contact::default());
    let (position, applied) = watch::channel(wal::Position::default());
    let routes = contact.clone();
    let (leader, follower, received) =
        cluster(tmp.path(), move |raft| router_with(raft, routes, false, Some(applied), None))
            .await;
    assert!(contact.streaming_from(1), "the leader's appends came on a stream");
    assert!(contact.last().is_some(), "appends on the stream count as contact");
    // The position sent when the stream opened, and each one after, with its apply hash.
    let opening = wal::Position::default();
    eventually("the opening position", || received.lock().unwrap().contains(&(2, opening))).await;
    let next = wal::Position { index: 17, hash: Some(ApplyHash { origin: 0, digest: [7; 32] }) };
    position.send(next).unwrap();
    eventually("a new position", || received.lock().unwrap().contains(&(2, next))).await;
    leader.raft.shutdown().await.unwrap();
    follower.raft.shutdown().await.unwrap();
}

/// Stands in for a node of an older version: no stream route.
async fn no_stream(request: Request, next: Next) -> Response {
    if request.uri().path() == STREAM_PATH {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    }
    next.run(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_stream_gets_single_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let contact = Arc::new(Contact::default());
    let routes = contact.clone();
    let (leader, follower, _) = cluster(tmp.path(), move |raft| {
        router_with(raft, routes, false, None, None).layer(axum::middleware::from_fn(no_stream))
    })
    .await;
    assert!(!contact.streaming_from(1));
    assert!(contact.last().is_some(), "the follower heard the leader by /raft/append");
    leader.raft.shutdown().await.unwrap();
    follower.raft.shutdown().await.unwrap();
}

/// Opens a stream to `addr` as node `claimed`: the answer's status, and the connection if it
/// was upgraded.
async fn open(addr: &str, claimed: u64) -> (u16, Option<reqwest::Upgraded>) {
    open_with(addr, claimed, &[]).await
}

/// [`open`] with extra request headers.
async fn open_with(
    addr: &str,
    claimed: u64,
    headers: &[(&str, &str)],
) -> (u16, Option<reqwest::Upgraded>) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}{STREAM_PATH}"))
        .header("connection", "upgrade")
        .header("upgrade", PROTOCOL)
        .header(SENDER_HEADER, claimed.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    let io = if status == 101 { Some(resp.upgrade().await.unwrap()) } else { None };
    (status, io)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_refused_to_a_sender_that_is_not_the_node_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::start(2, tmp.path(), Transport::plain(), |raft| {
        // The transport proved that the client is node 3.
        router_with(raft, Arc::new(Contact::default()), true, None, None)
            .layer(axum::Extension(PeerNode(3)))
    })
    .await;

    // Claiming another node at the opening: 403.
    let (status, _) = open(&node.addr, 1).await;
    assert_eq!(status, 403);

    // Node 3's stream carrying an append whose vote names node 1: the stream ends, saying why.
    let (status, io) = open(&node.addr, 3).await;
    assert_eq!(status, 101);
    let (read, write) = tokio::io::split(io.unwrap());
    let mut out = FramedWrite::new(write, Codec::<Up, Down>::new());
    let mut frames = FramedRead::new(read, Codec::<Up, Down>::new());
    let append = openraft::raft::AppendEntriesRequest {
        vote: Vote::new_committed(5, 1),
        prev_log_id: None,
        leader_commit: Some(log_id(5, 0)),
        entries: vec![],
    };
    out.send(&Up::Append(append)).await.unwrap();
    let mut failed = None;
    while let Some(frame) = frames.next().await {
        match frame.unwrap() {
            Down::Applied(_) | Down::Position(_) => {}
            Down::Failed(why) => failed = Some(why),
            Down::Answer(a) => panic!("a refused append was answered: {a:?}"),
        }
    }
    let why = failed.expect("a Failed frame before the end");
    assert!(why.contains("claims to come from node 1"), "{why}");
    // Nothing reached Raft: the node still has its initial vote.
    let vote = node.raft.metrics().borrow_watched().vote;
    assert_eq!(vote.leader_id().term, 0, "{vote:?}");
    node.raft.shutdown().await.unwrap();
}

/// A leader of an older version does not send [`HASH_HEADER`] and gets the index alone, in the
/// frame it knows; a leader that sends it gets the index with the apply hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apply_hash_goes_only_to_leaders_that_ask_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let hash = Some(ApplyHash { origin: 0, digest: [3; 32] });
    let (_position, applied) = watch::channel(wal::Position { index: 9, hash });
    let node = TestNode::start(2, tmp.path(), Transport::plain(), |raft| {
        router_with(raft, Arc::new(Contact::default()), false, Some(applied), None)
    })
    .await;
    for (headers, expected) in [
        (&[][..], Down::Applied(9)),
        (&[(HASH_HEADER, "1")][..], Down::Position(wal::Position { index: 9, hash })),
    ] {
        let (status, io) = open_with(&node.addr, 1, headers).await;
        assert_eq!(status, 101);
        let (read, _write) = tokio::io::split(io.unwrap());
        let mut frames = FramedRead::new(read, Codec::<Up, Down>::new());
        let first = frames.next().await.expect("a frame").unwrap();
        assert_eq!(format!("{first:?}"), format!("{expected:?}"));
    }
    node.raft.shutdown().await.unwrap();
}
