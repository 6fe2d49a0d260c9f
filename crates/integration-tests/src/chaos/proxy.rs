//! The network nemesis's proxies: a TCP relay in front of every node's client API and Raft
//! port, through which the nodes reach each other, so the `net` fault can make links slow,
//! narrow, lossy, one-way, or replay old replication frames. The kernel here has no `tc
//! netem`; this does its work in userspace.
//!
//! # Where the proxies sit
//!
//! In network-namespace mode each node has an address of its own (`10.88.0.1x`) and the
//! harness lives in the hub namespace (`10.88.0.1`, see [`super::net`]). [`Proxies::start`]
//! binds two listeners per node on the hub's address, one for its HTTP port and one for its
//! Raft port, and the node is started with `--http-adv-addr`/`--raft-adv-addr` naming them:
//! the membership then holds the proxies' addresses, so every node-to-node connection (Raft
//! RPCs, the replication stream, snapshots, forwarded writes, read indexes) goes through one.
//! The harness's clients still talk to each node directly. A proxy tells which node a
//! connection comes from by its source address; the settings of the ordered link
//! (source → target, a [`Link`]) apply to it, and are read again for every chunk, so a fault
//! changes connections already open. "Up" is the direction from the connecting node to the
//! target, "down" the answers.
//!
//! # What a link can do
//!
//! - **delay** each chunk by `delay` plus up to `jitter` (chunks keep their order: a chunk
//!   never overtakes the one before it);
//! - **bandwidth**: at most so many bytes a second in each direction;
//! - **drop** connections mid-stream: each lives a random time in a range, then both ends are
//!   closed, whatever was in flight;
//! - **stall** one direction: its bytes are held (and TCP's windows fill, so the sender
//!   blocks) while the other flows;
//! - **cut**: partitions act here too (the routes [`super::net`] blackholes do not cover the
//!   proxies' address): new connections are closed at once, open ones stall both ways;
//! - **replay** replication frames. TCP never reorders, duplicates or drops bytes inside a
//!   connection, and the replication stream relies on that: answers are matched to appends by
//!   their order (`crates/raft/src/network/stream`). A proxy that swapped or repeated frames
//!   inside one connection would test a guarantee no network can take away, and would make
//!   the leader credit one append's answer to another. What a network *can* do is deliver
//!   the appends of an old connection after those of a newer one, or twice (a retransmitting
//!   middlebox, a leader's old session still draining). So the proxy parses the Raft port's
//!   traffic (HTTP requests, then after `POST /raft/stream` the stream's length-prefixed
//!   frames), keeps the last appends each leader sent each follower, and, while a link
//!   replays, opens stream connections of its own to the follower and sends it a shuffled
//!   handful of those appends, some twice. The follower must treat them as Raft treats stale
//!   or duplicated messages (its answers are read and dropped).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How one ordered link (source → target) behaves now. The default is a clean link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Least delay of every chunk.
    pub delay: Duration,
    /// Up to this much more, at random per chunk.
    pub jitter: Duration,
    /// Bytes a second, each direction.
    pub bandwidth: Option<u64>,
    /// Connections are closed after a random time in this range.
    pub drop_after: Option<(Duration, Duration)>,
    /// Bytes from source to target are held.
    pub stall_up: bool,
    /// Bytes from target to source (the answers) are held.
    pub stall_down: bool,
    /// A partition: nothing passes.
    pub cut: bool,
    /// Old replication frames are replayed to the target.
    pub replay: bool,
}

/// What the proxies did, since they started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections relayed.
    pub connections: u64,
    /// Connections closed mid-stream by a `drop_after` setting.
    pub dropped: u64,
    /// Replay connections the target accepted.
    pub replays: u64,
    /// Frames sent on them.
    pub replayed_frames: u64,
}

/// A node's real addresses, behind its proxies.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its own IP, by which connections from it are told apart.
    pub ip: String,
    /// Its client API.
    pub http: String,
    /// Its Raft port.
    pub raft: String,
}

/// Frames kept per link for replay.
const CAPTURE_FRAMES: usize = 64;
/// A frame larger than this is relayed but not kept for replay.
const CAPTURE_MAX_FRAME: usize = 256 << 10;
/// How much of one direction may wait in the proxy (in chunks) before it stops reading.
const QUEUE_CHUNKS: usize = 32;
/// The largest chunk read at once.
const CHUNK: usize = 16 << 10;
/// How often held bytes, connection lifetimes and replays are looked at.
const TICK: Duration = Duration::from_millis(20);

/// The replication frames a leader sent a follower lately.
#[derive(Debug, Default)]
struct Capture {
    /// The `POST /raft/stream` request that opened the stream (its head).
    head: Option<Vec<u8>>,
    /// The last frames (each with its 4-byte length), oldest first.
    frames: VecDeque<Vec<u8>>,
}

/// What every proxy task shares.
struct Shared {
    /// Link settings by (source, target); 0 is a source that is no node.
    links: Mutex<BTreeMap<(usize, usize), Link>>,
    /// Replication frames by (leader, follower).
    captures: Mutex<BTreeMap<(usize, usize), Capture>>,
    /// The nodes, index = id - 1.
    targets: Vec<Target>,
    connections: AtomicU64,
    dropped: AtomicU64,
    replays: AtomicU64,
    replayed_frames: AtomicU64,
}

impl Shared {
    fn link(&self, key: (usize, usize)) -> Link {
        self.links.lock().expect("links mutex").get(&key).cloned().unwrap_or_default()
    }

    /// The node whose address `addr` is, or 0.
    fn source(&self, addr: SocketAddr) -> usize {
        let ip = addr.ip().to_string();
        self.targets.iter().position(|t| t.ip == ip).map_or(0, |i| i + 1)
    }
}

/// The proxies of a cluster; they stop when this is dropped.
pub struct Proxies {
    /// Runs every listener and relay; they stop when it is dropped.
    _runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    /// Per node (index = id - 1): the proxies' addresses of its HTTP and Raft ports.
    addrs: Vec<(String, String)>,
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxies").field("addrs", &self.addrs).finish_non_exhaustive()
    }
}

/// Which of a node's ports a listener stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Http,
    Raft,
}

impl Proxies {
    /// Binds two listeners per target on `bind_ip` (ports chosen by the kernel) and starts
    /// relaying. Call it from the namespace the nodes reach `bind_ip` in (the hub).
    pub fn start(bind_ip: &str, targets: Vec<Target>) -> anyhow::Result<Proxies> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chaos-proxy")
            .enable_all()
            .build()
            .context("starting the proxies' runtime")?;
        let shared = Arc::new(Shared {
            links: Mutex::default(),
            captures: Mutex::default(),
            targets,
            connections: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            replayed_frames: AtomicU64::new(0),
        });
        let mut addrs = Vec::new();
        for target in 1..=shared.targets.len() {
            let mut pair = Vec::new();
            for port in [Port::Http, Port::Raft] {
                let listener = runtime
                    .block_on(TcpListener::bind(format!("{bind_ip}:0")))
                    .with_context(|| format!("binding a proxy on {bind_ip}"))?;
                pair.push(listener.local_addr()?.to_string());
                runtime.spawn(accept(listener, shared.clone(), target, port));
            }
            addrs.push((pair[0].clone(), pair[1].clone()));
        }
        runtime.spawn(replayer(shared.clone()));
        Ok(Proxies { _runtime: runtime, shared, addrs })
    }

    /// The address node `i` advertises for its HTTP port (its proxy's).
    pub fn http(&self, i: usize) -> &str {
        &self.addrs[i - 1].0
    }

    /// The address node `i` advertises for its Raft port (its proxy's).
    pub fn raft(&self, i: usize) -> &str {
        &self.addrs[i - 1].1
    }

    /// Changes the link `from` → `to` with `change`.
    pub fn set(&self, from: usize, to: usize, change: impl FnOnce(&mut Link)) {
        let mut links = self.shared.links.lock().expect("links mutex");
        change(links.entry((from, to)).or_default());
    }

    /// Cuts both directions between `a` and `b` (a partition).
    pub fn cut(&self, a: usize, b: usize) {
        self.set(a, b, |l| l.cut = true);
        self.set(b, a, |l| l.cut = true);
    }

    /// Makes every link clean again.
    pub fn heal(&self) {
        self.shared.links.lock().expect("links mutex").clear();
    }

    /// Whether any link is not clean.
    pub fn faulty(&self) -> bool {
        self.shared.links.lock().expect("links mutex").values().any(|l| *l != Link::default())
    }

    /// What the proxies did so far.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            connections: s.connections.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            replays: s.replays.load(Ordering::Relaxed),
            replayed_frames: s.replayed_frames.load(Ordering::Relaxed),
        }
    }
}

/// Accepts connections for `port` of node `target`, each relayed by a task of its own.
async fn accept(listener: TcpListener, shared: Arc<Shared>, target: usize, port: Port) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            tokio::time::sleep(TICK).await;
            continue;
        };
        let source = shared.source(peer);
        tokio::spawn(relay(client, shared.clone(), (source, target), port));
    }
}

/// Relays one connection of link `key` to the target's real `port`, both ways, until both
/// directions end or the link's `drop_after` closes it.
async fn relay(client: TcpStream, shared: Arc<Shared>, key: (usize, usize), port: Port) {
    if shared.link(key).cut {
        return;
    }
    let target = &shared.targets[key.1 - 1];
    let addr = match port {
        Port::Http => target.http.clone(),
        Port::Raft => target.raft.clone(),
    };
    let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr));
    let Ok(Ok(server)) = connect.await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let parser = (port == Port::Raft).then(Parser::default);
    let up = tokio::spawn(pump(client_read, server_write, shared.clone(), key, true, parser));
    let down = tokio::spawn(pump(server_read, client_write, shared.clone(), key, false, None));
    let mut deadline: Option<Instant> = None;
    while !(up.is_finished() && down.is_finished()) {
        tokio::time::sleep(TICK).await;
        match (shared.link(key).drop_after, deadline) {
            (Some((least, most)), None) => {
                let life = rand::thread_rng().gen_range(least..=most);
                deadline = Some(Instant::now() + life);
            }
            (None, _) => deadline = None,
            _ => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // Dropping both directions' halves closes both sockets, whatever was in flight.
            up.abort();
            down.abort();
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

/// Whether link settings hold the bytes of one direction now.
fn held(link: &Link, up: bool) -> bool {
    link.cut || if up { link.stall_up } else { link.stall_down }
}

/// Moves bytes from `from` to `to` (direction `up` of link `key`), each chunk delayed, held
/// and paced as the link says at the time. On the Raft port's up direction, `parser` keeps
/// the replication frames for replay.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: Arc<Shared>,
    key: (usize, usize),
    up: bool,
    mut parser: Option<Parser>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let reading = {
        let shared = shared.clone();
        async move {
            let mut last_due = Instant::now();
            loop {
                let mut chunk = vec![0; CHUNK];
                let n = match from.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                chunk.truncate(n);
                if let Some(parser) = &mut parser {
                    parser.feed(&chunk, &shared, key);
                }
                let link = shared.link(key);
                let jitter = rand::thread_rng().gen_range(0..=link.jitter.as_micros() as u64);
                let due =
                    (Instant::now() + link.delay + Duration::from_micros(jitter)).max(last_due);
                last_due = due;
                if tx.send((due, chunk)).await.is_err() {
                    return;
                }
            }
        }
    };
    let writing = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if write_paced(&mut to, &chunk, &shared, key, up).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reading, writing);
}

/// Writes `chunk` once the link lets this direction through, no faster than its bandwidth.
async fn write_paced(
    to: &mut OwnedWriteHalf,
    chunk: &[u8],
    shared: &Shared,
    key: (usize, usize),
    up: bool,
) -> std::io::Result<()> {
    let mut rest = chunk;
    while !rest.is_empty() {
        let link = shared.link(key);
        if held(&link, up) {
            tokio::time::sleep(TICK).await;
            continue;
        }
        let Some(rate) = link.bandwidth else { return to.write_all(rest).await };
        // Pieces of at most a 20th of a second's worth, each followed by its time.
        let piece = rest.len().min((rate as usize / 20).max(64));
        to.write_all(&rest[..piece]).await?;
        tokio::time::sleep(Duration::from_secs_f64(piece as f64 / rate as f64)).await;
        rest = &rest[piece..];
    }
    Ok(())
}

/// Follows the requests on a Raft-port connection and, once one opens a replication stream,
/// the stream's frames, keeping them in the link's [`Capture`].
#[derive(Debug)]
enum Parser {
    /// Reading a request head.
    Head(Vec<u8>),
    /// Skipping `n` bytes of a request body.
    Body(usize),
    /// In a replication stream: bytes of a frame not complete yet.
    Frames(Vec<u8>),
    /// In a replication stream, skipping `n` bytes of a frame too large to keep.
    Skip(usize),
    /// Something not understood (a chunked body, an oversized head): nothing more is kept.
    Off,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::Head(Vec::new())
    }
}

/// The position just past the first `\r\n\r\n` in `buf`.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// A request head's `Content-Length`, or `None` when its body is chunked.
fn body_length(head: &str) -> Option<usize> {
    let mut length = 0;
    for line in head.lines() {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            return None;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    Some(length)
}

impl Parser {
    /// Takes the next bytes of the connection's up direction.
    fn feed(&mut self, mut data: &[u8], shared: &Shared, key: (usize, usize)) {
        while !data.is_empty() {
            match self {
                Parser::Off => return,
                Parser::Body(n) | Parser::Skip(n) => {
                    let take = (*n).min(data.len());
                    *n -= take;
                    data = &data[take..];
                    if *n == 0 {
                        *self = match self {
                            Parser::Body(_) => Parser::Head(Vec::new()),
                            _ => Parser::Frames(Vec::new()),
                        };
                    }
                }
                Parser::Head(buf) => {
                    buf.extend_from_slice(data);
                    let Some(end) = head_end(buf) else {
                        if buf.len() > 16 << 10 {
                            *self = Parser::Off;
                        }
                        return;
                    };
                    let head = buf[..end].to_vec();
                    let rest = buf[end..].to_vec();
                    let text = String::from_utf8_lossy(&head).to_string();
                    if text.starts_with("POST /raft/stream ") {
                        let mut captures = shared.captures.lock().expect("captures mutex");
                        captures.entry(key).or_default().head = Some(head);
                        *self = Parser::Frames(Vec::new());
                    } else {
                        *self = body_length(&text).map_or(Parser::Off, Parser::Body);
                    }
                    self.feed(&rest, shared, key);
                    return;
                }
                Parser::Frames(buf) => {
                    buf.extend_from_slice(data);
                    data = &[];
                    self.frames(shared, key);
                }
            }
        }
    }

    /// Takes the complete frames out of a [`Parser::Frames`] buffer.
    fn frames(&mut self, shared: &Shared, key: (usize, usize)) {
        let Parser::Frames(buf) = self else { return };
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > CAPTURE_MAX_FRAME {
                let skip = 4 + len;
                let rest = buf.split_off(skip.min(buf.len()));
                let left = skip - buf.len();
                *self = Parser::Skip(left);
                self.feed(&rest, shared, key);
                return;
            }
            if buf.len() < 4 + len {
                return;
            }
            let frame: Vec<u8> = buf.drain(..4 + len).collect();
            let mut captures = shared.captures.lock().expect("captures mutex");
            let capture = captures.entry(key).or_default();
            capture.frames.push_back(frame);
            if capture.frames.len() > CAPTURE_FRAMES {
                capture.frames.pop_front();
            }
        }
    }
}

/// Every 200 ms, starts a replay on each link that replays and has frames to replay.
async fn replayer(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let keys: Vec<(usize, usize)> = {
            let links = shared.links.lock().expect("links mutex");
            links.iter().filter(|(_, l)| l.replay && !l.cut).map(|(k, _)| *k).collect()
        };
        for key in keys {
            let Some((head, frames)) = pick_replay(&shared, key) else { continue };
            tokio::spawn(replay(shared.clone(), key, head, frames));
        }
    }
}

/// A stream head and a shuffled handful of the link's frames, some of them twice.
fn pick_replay(shared: &Shared, key: (usize, usize)) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let captures = shared.captures.lock().expect("captures mutex");
    let capture = captures.get(&key)?;
    let head = capture.head.clone()?;
    if capture.frames.is_empty() {
        return None;
    }
    let mut rng = rand::thread_rng();
    let n = capture.frames.len();
    let count = rng.gen_range(1..=n.min(8));
    let start = rng.gen_range(0..=n - count);
    let mut frames: Vec<Vec<u8>> = capture.frames.range(start..start + count).cloned().collect();
    let twice = frames[rng.gen_range(0..frames.len())].clone();
    frames.push(twice);
    frames.shuffle(&mut rng);
    Some((head, frames))
}

/// Opens a replication stream to the follower of link `key` as its leader did, sends
/// `frames`, and reads and drops the answers for a moment.
async fn replay(shared: Arc<Shared>, key: (usize, usize), head: Vec<u8>, frames: Vec<Vec<u8>>) {
    let addr = shared.targets[key.1 - 1].raft.clone();
    let attempt = async {
        let mut stream = TcpStream::connect(&addr).await?;
        stream.write_all(&head).await?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while head_end(&answer).is_none() && answer.len() < 16 << 10 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            answer.extend_from_slice(&buf[..n]);
        }
        if !answer.starts_with(b"HTTP/1.1 101") {
            return Ok(None);
        }
        for frame in &frames {
            stream.write_all(frame).await?;
        }
        Ok(Some(stream))
    };
    let Ok(Ok(Some(mut stream))) = tokio::time::timeout(Duration::from_secs(1), attempt).await
    else {
        return;
    };
    shared.replays.fetch_add(1, Ordering::Relaxed);
    shared.replayed_frames.fetch_add(frames.len() as u64, Ordering::Relaxed);
    let mut buf = [0u8; 4096];
    let drain = async { while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
