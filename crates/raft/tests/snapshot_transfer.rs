//! Snapshots as files: building, publishing, streaming over the real HTTP transport (axum
//! handler + reqwest sender), receiving, installing, and cleaning up after failures.
//!
//! [`FakeStore`] stands in for the SQL store: its "database" is one file, a JSON header line
//! with the applied position followed by a few MiB of bytes derived from that position, so a
//! received image can be compared byte for byte with the one that was sent.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use openraft::async_runtime::WatchReceiver;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::storage::RaftStateMachine;
use openraft::{Membership, RaftSnapshotBuilder};
use raft::network::{Contact, Network, router};
use raft::snapshot::{SnapshotFile, SnapshotStats, checksum_file};
use raft::state_machine::{
    Committed, Result as StoreResult, SnapshotMeta, StateMachine, Store, log_id,
};
use raft::{MemberAddr, Options, Raft, StoredMembership, Vote};
use serde::{Deserialize, Serialize};
use wal::Applied;

/// The header line of a [`FakeStore`] image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Position {
    term: u64,
    index: u64,
    membership: Option<String>,
}

impl Position {
    fn applied(&self) -> Applied {
        Applied { term: self.term, index: self.index, membership: self.membership.clone() }
    }
}

/// A store whose database is `dir/live.bin`: a header line and `payload` bytes.
struct FakeStore {
    dir: PathBuf,
    payload: usize,
    applied: Mutex<Option<Position>>,
}

impl FakeStore {
    fn new(dir: &Path, payload: usize) -> Arc<FakeStore> {
        fs::create_dir_all(dir).unwrap();
        Arc::new(FakeStore { dir: dir.to_path_buf(), payload, applied: Mutex::new(None) })
    }

    fn live(&self) -> PathBuf {
        self.dir.join("live.bin")
    }

    fn position(&self) -> Option<Position> {
        self.applied.lock().unwrap().clone()
    }

    fn set(&self, p: Position) {
        *self.applied.lock().unwrap() = Some(p);
    }
}

/// Writes an image of position `p` with `payload` bytes derived from it, in 64 KiB pieces.
fn write_image(path: &Path, p: &Position, payload: usize) -> io::Result<()> {
    let mut f = io::BufWriter::new(fs::File::create(path)?);
    serde_json::to_writer(&mut f, p)?;
    f.write_all(b"\n")?;
    let mut x = p.index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut piece = vec![0u8; 64 << 10];
    let mut left = payload;
    while left > 0 {
        for b in piece.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let n = left.min(piece.len());
        f.write_all(&piece[..n])?;
        left -= n;
    }
    f.into_inner()?.sync_all()
}

fn read_position(path: &Path) -> io::Result<Position> {
    let mut line = String::new();
    io::BufReader::new(fs::File::open(path)?).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(io::Error::other)
}

impl Store for FakeStore {
    fn applied(&self) -> StoreResult<Option<Applied>> {
        Ok(self.position().map(|p| p.applied()))
    }

    fn apply(&self, entries: Arc<Vec<Committed>>) -> BoxFuture<'static, StoreResult<()>> {
        let mut applied = self.applied.lock().unwrap();
        for e in entries.iter() {
            let membership = e
                .membership
                .clone()
                .or_else(|| applied.as_ref().and_then(|p| p.membership.clone()));
            *applied = Some(Position { term: e.term, index: e.index, membership });
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn snapshot_to(&self, path: &Path) -> StoreResult<Option<Applied>> {
        let p = self.position();
        if let Some(p) = &p {
            write_image(path, p, self.payload)?;
        } else {
            fs::File::create(path)?.sync_all()?;
        }
        Ok(p.map(|p| p.applied()))
    }

    fn install(&self, path: &Path) -> StoreResult<()> {
        let p = read_position(path)?;
        fs::rename(path, self.live())?;
        self.set(p);
        Ok(())
    }
}

fn node(addr: &str) -> MemberAddr {
    MemberAddr::new(addr, "")
}

/// A membership with `voters` as voters, as a store would keep it.
fn membership_json(voters: &[(u64, &str)], at: (u64, u64)) -> String {
    let nodes: BTreeMap<u64, MemberAddr> = voters.iter().map(|(id, a)| (*id, node(a))).collect();
    let stored = StoredMembership::new(Some(log_id(at.0, at.1)), Membership::from(nodes));
    serde_json::to_string(&stored).unwrap()
}

/// Files in `dir` whose names start with `prefix`.
fn files_starting(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// A started node serving its Raft router on a free local port.
struct TestNode {
    raft: Raft,
    stats: Arc<SnapshotStats>,
    store: Arc<FakeStore>,
    addr: String,
    dir: PathBuf,
}

impl TestNode {
    async fn start(id: u64, dir: &Path, payload: usize, options: &Options) -> TestNode {
        let store = FakeStore::new(&dir.join("db"), payload);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (raft, stats) = raft::start(id, dir, options, store.clone()).await.unwrap();
        let app = router(raft.clone(), Arc::new(Contact::default()));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestNode { raft, stats, store, addr, dir: dir.to_path_buf() }
    }

    fn snapshots(&self) -> PathBuf {
        self.dir.join("snapshots")
    }
}

/// A snapshot built by a state machine of its own (the "leader side").
async fn build_on_leader(
    dir: &Path,
    position: Position,
    payload: usize,
) -> (StateMachine, raft::state_machine::Snapshot) {
    let store = FakeStore::new(&dir.join("db"), payload);
    store.set(position);
    let mut sm = StateMachine::open(&dir.join("snapshots"), store).unwrap();
    let snapshot = sm.build_snapshot().await.unwrap();
    (sm, snapshot)
}

/// A receiving node in `dir/b`, and a snapshot of `payload` bytes built in `dir/a` by a
/// one-voter cluster's leader at index 40, with the image's bytes. The state machine is
/// returned so that it outlives the test's use of its image.
async fn receiver_and_image(
    dir: &Path,
    payload: usize,
) -> (TestNode, StateMachine, raft::state_machine::Snapshot, Vec<u8>) {
    let receiver = TestNode::start(2, &dir.join("b"), 1, &Options::default()).await;
    let position = Position {
        term: 1,
        index: 40,
        membership: Some(membership_json(&[(1, "127.0.0.1:1")], (1, 1))),
    };
    let (sm, snapshot) = build_on_leader(&dir.join("a"), position, payload).await;
    let bytes = fs::read(snapshot.snapshot.path()).unwrap();
    (receiver, sm, snapshot, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_mib_snapshot_streams_through_http_and_is_installed() {
    let tmp = tempfile::tempdir().unwrap();
    let payload = 9 << 20; // 9 MiB: several send blocks and receive buffers
    let receiver = TestNode::start(2, &tmp.path().join("b"), payload, &Options::default()).await;
    let position = Position {
        term: 1,
        index: 100,
        membership: Some(membership_json(&[(1, "127.0.0.1:1"), (2, &receiver.addr)], (1, 1))),
    };
    let (leader_sm, snapshot) =
        build_on_leader(&tmp.path().join("a"), position.clone(), payload).await;
    let image = snapshot.snapshot.path().to_path_buf();
    let (len, checksum) = checksum_file(&image).unwrap();
    assert_eq!((snapshot.snapshot.len(), snapshot.snapshot.checksum()), (len, checksum));
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 100)));
    assert_eq!(leader_sm.stats().read().built, 1);

    let leader_stats = leader_sm.stats();
    let mut network = Network::new(1, leader_stats.clone());
    let mut peer = network.new_client(2, &node(&receiver.addr)).await;
    let resp = peer
        .full_snapshot(
            Vote::new_committed(1, 1),
            snapshot,
            futures::future::pending(),
            RPCOption::new(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(resp.vote, Vote::new_committed(1, 1));

    // The receiver's store took the file over; it is byte for byte the leader's image.
    let live = receiver.store.live();
    assert_eq!(checksum_file(&live).unwrap(), (len, checksum));
    assert_eq!(receiver.store.position(), Some(position.clone()));
    assert!(files_starting(&receiver.snapshots(), "receiving-").is_empty());
    assert!(files_starting(&receiver.snapshots(), "").iter().all(|n| !n.ends_with(".db")));

    let sent = leader_stats.read();
    assert_eq!((sent.sent, sent.send_failures, sent.bytes_sent), (1, 0, len));
    let got = receiver.stats.read();
    assert_eq!((got.received, got.installed, got.bytes_received), (1, 1, len));
    assert_eq!((got.last_installed_index, got.current_index, got.current_size), (100, 100, 0));
    assert_eq!(got.built, 0);

    // The installed snapshot has no image any more: asking for the current snapshot (as a
    // leader sending to a follower would) builds one from the store, at its position.
    let current = receiver.raft.get_snapshot().await.unwrap().expect("a snapshot");
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 100)));
    assert_eq!(current.meta.last_membership.log_id(), &Some(log_id(1, 1)));
    assert_eq!(checksum_file(current.snapshot.path()).unwrap(), (len, checksum));
    let got = receiver.stats.read();
    assert_eq!((got.built, got.current_index, got.current_size), (1, 100, len));
    // Asking again reads the published image without building.
    let again = receiver.raft.get_snapshot().await.unwrap().expect("a snapshot");
    assert_eq!(again.meta.last_log_id, Some(log_id(1, 100)));
    assert_eq!(receiver.stats.read().built, 1);
    receiver.raft.shutdown().await.unwrap();
}

/// Posts a snapshot body with the given header fields.
async fn post_snapshot(
    addr: &str,
    meta: &SnapshotMeta,
    len: u64,
    checksum: u32,
    body: reqwest::Body,
) -> reqwest::Response {
    let header = serde_json::json!({
        "vote": Vote::new_committed(1, 1),
        "meta": meta,
        "len": len,
        "checksum": checksum,
    });
    reqwest::Client::new()
        .post(format!("http://{addr}/raft/snapshot"))
        .header("x-keel-snapshot", header.to_string())
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_rejects_bad_bodies_and_leaves_no_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (receiver, _sm, snapshot, bytes) = receiver_and_image(tmp.path(), 3 << 20).await;
    let (len, crc) = (bytes.len() as u64, crc32fast::hash(&bytes));
    let meta = snapshot.meta.clone();
    let dir = receiver.snapshots();

    // A wrong checksum.
    let resp = post_snapshot(&receiver.addr, &meta, len, crc ^ 1, bytes.clone().into()).await;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("checksum"));
    assert!(files_starting(&dir, "receiving-").is_empty());

    // Bodies rejected before they are read (or while they are) are small, so that the client
    // has written them whole before the server answers and closes.
    let small = bytes[..20_000].to_vec();
    let small_crc = crc32fast::hash(&small);

    // A Content-Length different from the announced length: a truncated or overlong body.
    for announced in [30_000, 10_000] {
        let resp =
            post_snapshot(&receiver.addr, &meta, announced, small_crc, small.clone().into()).await;
        assert_eq!(resp.status(), 400);
        assert!(resp.text().await.unwrap().contains("content-length"));
    }

    // The same without a Content-Length (chunked bodies): caught while streaming.
    let chunked = |b: &[u8]| {
        let blocks: Vec<Result<Vec<u8>, io::Error>> =
            b.chunks(4_000).map(|c| Ok(c.to_vec())).collect();
        reqwest::Body::wrap_stream(futures::stream::iter(blocks))
    };
    let resp = post_snapshot(&receiver.addr, &meta, 30_000, small_crc, chunked(&small)).await;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("has 20000 bytes, the header announced 30000"));
    let resp = post_snapshot(&receiver.addr, &meta, 10_000, small_crc, chunked(&small)).await;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("longer"));
    // A chunked body of the right length with the wrong checksum.
    let resp = post_snapshot(&receiver.addr, &meta, 20_000, small_crc ^ 1, chunked(&small)).await;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("checksum"));
    assert!(files_starting(&dir, "receiving-").is_empty());

    // A missing or malformed header.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/raft/snapshot", receiver.addr))
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = reqwest::Client::new()
        .post(format!("http://{}/raft/snapshot", receiver.addr))
        .header("x-keel-snapshot", "{not json")
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // The sender dies mid-body: the stream fails after 1 MiB.
    let first = bytes[..1 << 20].to_vec();
    let failing = futures::stream::iter(vec![
        Ok::<_, io::Error>(first),
        Err(io::Error::other("sender crashed")),
    ])
    .then(|item| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        item
    });
    let res = reqwest::Client::new()
        .post(format!("http://{}/raft/snapshot", receiver.addr))
        .header(
            "x-keel-snapshot",
            serde_json::json!({"vote": Vote::new_committed(1, 1), "meta": meta, "len": len, "checksum": crc})
                .to_string(),
        )
        .body(reqwest::Body::wrap_stream(failing))
        .send()
        .await;
    assert!(res.is_err() || !res.unwrap().status().is_success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !files_starting(&dir, "receiving-").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "temporary file left behind");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    while receiver.stats.read().receive_failures < 9 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", receiver.stats.read());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = receiver.stats.read();
    assert_eq!(stats.received, 0);
    assert_eq!(stats.installed, 0);
    assert_eq!(stats.receive_failures, 9, "{stats:?}");
    assert_eq!(receiver.store.position(), None, "nothing was installed");

    // The same image with the right header is accepted afterwards.
    let resp = post_snapshot(&receiver.addr, &meta, len, crc, bytes.into()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(receiver.stats.read().installed, 1);
    assert!(files_starting(&dir, "receiving-").is_empty());
    receiver.raft.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_not_installed_is_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let (receiver, _sm, snapshot, bytes) = receiver_and_image(tmp.path(), 1 << 20).await;
    let (len, crc) = (bytes.len() as u64, crc32fast::hash(&bytes));
    let resp = post_snapshot(&receiver.addr, &snapshot.meta, len, crc, bytes.clone().into()).await;
    assert_eq!(resp.status(), 200);
    // The same snapshot again: already covered, openraft does not install it.
    let resp = post_snapshot(&receiver.addr, &snapshot.meta, len, crc, bytes.into()).await;
    assert_eq!(resp.status(), 200);
    let stats = receiver.stats.read();
    assert_eq!((stats.received, stats.installed), (2, 1));
    assert!(files_starting(&receiver.snapshots(), "receiving-").is_empty());
    receiver.raft.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_learner_catches_up_from_a_streamed_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let options =
        Options { snapshot_entries: 10, max_in_snapshot_log_to_keep: 0, ..Options::default() };
    let payload = 5 << 20;
    let a = TestNode::start(1, &tmp.path().join("a"), payload, &options).await;
    let b = TestNode::start(2, &tmp.path().join("b"), payload, &options).await;
    a.raft.initialize(BTreeMap::from([(1, node(&a.addr))])).await.unwrap();
    a.raft
        .wait(Some(Duration::from_secs(10)))
        .state(raft::ServerState::Leader, "leader")
        .await
        .unwrap();
    for _ in 0..25 {
        a.raft.client_write(wal::Record { ops: vec![], requests: vec![] }).await.unwrap();
    }
    // The leader snapshots by policy and purges the log behind it.
    a.raft
        .wait(Some(Duration::from_secs(20)))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= 10), "purged")
        .await
        .unwrap();
    assert!(a.stats.read().built >= 1);

    a.raft.add_learner(2, node(&b.addr), true).await.unwrap();
    let last = a.raft.metrics().borrow_watched().last_applied.unwrap();
    b.raft
        .wait(Some(Duration::from_secs(20)))
        .applied_index_at_least(Some(last.index), "learner caught up")
        .await
        .unwrap();

    // The leader counts the transfer when the answer arrives, which may be after the learner
    // has applied.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.stats.read().sent == 0 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", a.stats.read());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = a.stats.read();
    let got = b.stats.read();
    assert!(sent.sent >= 1 && sent.bytes_sent >= payload as u64, "{sent:?}");
    assert_eq!(got.installed, 1, "{got:?}");
    assert!(got.bytes_received >= payload as u64);
    // The learner's database is the leader's image at the installed index, then applied on.
    let installed = got.last_installed_index;
    let image = read_position(&b.store.live()).unwrap();
    assert_eq!(image.index, installed);
    let leader_image = tmp.path().join("expected.bin");
    write_image(&leader_image, &image, payload).unwrap();
    assert_eq!(checksum_file(&leader_image).unwrap(), checksum_file(&b.store.live()).unwrap());
    assert!(b.store.position().unwrap().index >= last.index);
    assert!(files_starting(&b.snapshots(), "receiving-").is_empty());

    a.raft.shutdown().await.unwrap();
    b.raft.shutdown().await.unwrap();
}

#[tokio::test]
async fn open_deletes_leftovers_and_unreferenced_images() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snapshots");
    fs::create_dir_all(&dir).unwrap();
    for name in ["receiving-1-2-3-0.tmp", "building-5-1.tmp", "current.json.tmp", "1-1.db"] {
        fs::write(dir.join(name), b"partial").unwrap();
    }
    let store = FakeStore::new(&tmp.path().join("db"), 1);
    let sm = StateMachine::open(&dir, store).unwrap();
    assert!(files_starting(&dir, "").is_empty(), "{:?}", files_starting(&dir, ""));
    assert_eq!(sm.stats().read(), raft::SnapshotCounts::default());
}

#[tokio::test]
async fn install_then_build_and_publish_never_goes_backwards() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snapshots");
    let store = FakeStore::new(&tmp.path().join("db"), 64 << 10);
    let mut sm = StateMachine::open(&dir, store.clone()).unwrap();
    assert!(sm.get_current_snapshot().await.unwrap().is_none());

    // A received image at (2, 50), as the network hands it over.
    let membership = membership_json(&[(1, "a"), (2, "b")], (2, 3));
    let p = Position { term: 2, index: 50, membership: Some(membership.clone()) };
    let received = dir.join("receiving-2-50-1-0.tmp");
    write_image(&received, &p, 64 << 10).unwrap();
    let file = SnapshotFile::open_and_checksum(&received).unwrap();
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(2, 50)),
        last_membership: serde_json::from_str(&membership).unwrap(),
    };
    sm.install_snapshot(&meta, file).await.unwrap();
    assert_eq!(store.position(), Some(p.clone()));
    assert!(!received.exists(), "the store took the file over");
    assert_eq!(files_starting(&dir, ""), vec!["current.json"]);

    // Applied on to 60, then asked for the current snapshot: built from the store at 60.
    store.set(Position { term: 2, index: 60, membership: Some(membership.clone()) });
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(2, 60)));
    assert_eq!(files_starting(&dir, ""), vec!["2-60.db", "current.json"]);

    // A build that finds the store behind the current snapshot does not replace it.
    store.set(Position { term: 2, index: 55, membership: Some(membership.clone()) });
    let older = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(older.meta.last_log_id, Some(log_id(2, 55)));
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(2, 60)));
    assert_eq!(files_starting(&dir, ""), vec!["2-60.db", "current.json"]);

    // A newer build replaces it and deletes the old image; a reader of the old one keeps it.
    store.set(Position { term: 3, index: 70, membership: Some(membership) });
    let newer = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(newer.meta.last_log_id, Some(log_id(3, 70)));
    assert_eq!(files_starting(&dir, ""), vec!["3-70.db", "current.json"]);
    let old_len = current.snapshot.len();
    let mut old = current.snapshot.into_file();
    let mut buf = Vec::new();
    io::Read::read_to_end(&mut old, &mut buf).unwrap();
    assert_eq!(buf.len() as u64, old_len, "an open image stays readable after deletion");

    // Reopening keeps the published image and reports it.
    drop(sm);
    let mut sm = StateMachine::open(&dir, store).unwrap();
    let stats = sm.stats().read();
    assert_eq!(stats.current_index, 70);
    assert_eq!(stats.current_size, newer.snapshot.len());
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(3, 70)));
    assert_eq!(current.snapshot.checksum(), newer.snapshot.checksum());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_image_is_never_handed_out_and_is_built_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snapshots");
    let store = FakeStore::new(&tmp.path().join("db"), 64 << 10);
    let membership = membership_json(&[(1, "a")], (1, 1));
    store.set(Position { term: 1, index: 30, membership: Some(membership.clone()) });
    let mut sm = StateMachine::open(&dir, store.clone()).unwrap();
    let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let image = built.snapshot.path().to_path_buf();
    let good = fs::read(&image).unwrap();

    // One bit flipped in the middle of the published image, as a disk might; the length holds.
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x04;
    fs::write(&image, &bad).unwrap();
    store.set(Position { term: 1, index: 35, membership: Some(membership) });

    // Asked for the current snapshot (to send, or at start), the node does not hand out the
    // damaged image: it builds one from the database, whose checksum is what it records.
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 35)));
    let (len, crc) = checksum_file(current.snapshot.path()).unwrap();
    assert_eq!((len, crc), (current.snapshot.len(), current.snapshot.checksum()));
    assert_eq!(sm.stats().read().damaged, 1);
    assert_eq!(files_starting(&dir, ""), vec!["1-35.db", "current.json"]);

    // An intact image is handed out as it is, and counts nothing.
    let again = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(again.snapshot.checksum(), current.snapshot.checksum());
    assert_eq!(sm.stats().read().damaged, 1);
}

/// A "receiver" that accepts connections and then either never reads (`read = false`) or
/// reads everything and never answers.
async fn silent_receiver(read: bool) -> String {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            if read {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1 << 16];
                    while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                });
            } else {
                held.push(conn);
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_transfer_times_out_and_a_cancelled_one_stops() {
    use openraft::errors::{ReplicationClosed, StreamingError};
    let tmp = tempfile::tempdir().unwrap();
    let position = Position { term: 1, index: 5, membership: None };
    let (sm, _) = build_on_leader(tmp.path(), position, 32 << 20).await;
    let mut current = sm.clone();
    let mut network =
        Network::new(1, sm.stats()).with_snapshot_idle_timeout(Duration::from_millis(300));

    // The receiver stops reading: no progress for the idle timeout. The whole transfer is not
    // capped by the (short) RPC timeout while it makes progress, only the wait for the answer.
    let stalled = silent_receiver(false).await;
    let mut peer = network.new_client(2, &node(&stalled)).await;
    let snapshot = current.get_current_snapshot().await.unwrap().unwrap();
    let started = std::time::Instant::now();
    let err = peer
        .full_snapshot(
            Vote::new_committed(1, 1),
            snapshot,
            futures::future::pending(),
            RPCOption::new(Duration::from_secs(60)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StreamingError::Timeout(t) if t.timeout == Duration::from_millis(300)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // The receiver takes every byte but never answers: the answer timeout (hard_ttl) applies
    // from the last byte.
    let mute = silent_receiver(true).await;
    let mut peer = network.new_client(2, &node(&mute)).await;
    let snapshot = current.get_current_snapshot().await.unwrap().unwrap();
    let err = peer
        .full_snapshot(
            Vote::new_committed(1, 1),
            snapshot,
            futures::future::pending(),
            RPCOption::new(Duration::from_millis(500)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StreamingError::Timeout(t) if t.timeout == Duration::from_millis(500)),
        "{err}"
    );

    // openraft cancels (the leader stepped down): the transfer stops at once.
    let mut network = Network::new(1, sm.stats());
    let mut peer = network.new_client(2, &node(&stalled)).await;
    let snapshot = current.get_current_snapshot().await.unwrap().unwrap();
    let started = std::time::Instant::now();
    let err = peer
        .full_snapshot(
            Vote::new_committed(1, 1),
            snapshot,
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                ReplicationClosed::new("stepped down")
            },
            RPCOption::new(Duration::from_secs(60)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StreamingError::Closed(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let stats = sm.stats().read();
    assert_eq!((stats.sent, stats.send_failures), (0, 2), "{stats:?}");
}

/// Peak resident memory of this process (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A 1 GiB snapshot (`KEEL_SNAPSHOT_TEST_MIB` to change) is built, checksummed, sent, received
/// and installed with both ends in this process, and the peak RSS grows by far less than the
/// image. Needs about 2 GiB of free disk in the temp directory and a minute; run with
/// `cargo test -p raft --release --test snapshot_transfer -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn a_big_snapshot_is_never_held_in_memory() {
    let mib: usize =
        std::env::var("KEEL_SNAPSHOT_TEST_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let payload = mib << 20;
    let tmp = tempfile::tempdir().unwrap();
    let receiver = TestNode::start(2, &tmp.path().join("b"), payload, &Options::default()).await;
    let position = Position {
        term: 1,
        index: 100,
        membership: Some(membership_json(&[(1, "127.0.0.1:1"), (2, &receiver.addr)], (1, 1))),
    };
    let before = peak_rss().unwrap_or(0);
    let started = std::time::Instant::now();
    let (leader_sm, snapshot) = build_on_leader(&tmp.path().join("a"), position, payload).await;
    let len = snapshot.snapshot.len();
    let built = started.elapsed();
    let mut network = Network::new(1, leader_sm.stats());
    let mut peer = network.new_client(2, &node(&receiver.addr)).await;
    let started = std::time::Instant::now();
    peer.full_snapshot(
        Vote::new_committed(1, 1),
        snapshot,
        futures::future::pending(),
        RPCOption::new(Duration::from_secs(120)),
    )
    .await
    .unwrap();
    let sent = started.elapsed();
    let after = peak_rss().unwrap_or(0);
    assert_eq!(receiver.stats.read().installed, 1);
    assert_eq!(fs::metadata(receiver.store.live()).unwrap().len(), len);
    println!(
        "{mib} MiB: built+checksummed in {built:.2?}, sent+received+installed in {sent:.2?}; \
         peak RSS {} MiB -> {} MiB",
        before >> 20,
        after >> 20
    );
    assert!(
        after.saturating_sub(before) < 64 << 20,
        "peak RSS grew by {} MiB",
        (after - before) >> 20
    );
    receiver.raft.shutdown().await.unwrap();
}
