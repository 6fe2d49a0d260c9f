//! The leader's end of the replication stream: opening connections ([`open`]), the pool of
//! idle ones per target ([`Pool`]), and the pipelined session ([`session`]) that
//! `Peer::stream_append` returns. See the parent module for the protocol.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, Stream, StreamExt};
use openraft::base::BoxStream;
use openraft::errors::{NetworkError, RPCError, Unreachable};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use reqwest::StatusCode;
use reqwest::header::{CONNECTION, UPGRADE};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::frame::{Codec, flush};
use super::{
    AppliedSink, Down, HASH_HEADER, PROTOCOL, RETRY_STREAM_AFTER, SENDER_HEADER, STREAM_PATH, Up,
};
use crate::space::{PeersFull, entry_bytes};
use crate::types::{NodeId, TypeConfig};

/// A connection's byte stream: the upgraded HTTP connection (TLS or not), or a test's pipe.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// What the reader task hands the session: an answer, or why the connection ended.
type Answer = Result<StreamAppendResult<TypeConfig>, String>;

/// How many idle connections a pool keeps per target.
const IDLE_CONNECTIONS: usize = 4;

/// How many appends a session has unanswered at most: the follower reads every frame as it
/// arrives (and openraft's `Raft::stream_append` takes 64 at a time), so this bounds what a
/// slow follower buffers.
const MAX_UNANSWERED: usize = 64;

/// How many entry bytes (as the log stores them, [`entry_bytes`]) a session has unanswered at
/// most; one append goes out whatever its size. With [`MAX_UNANSWERED`] alone, appends of
/// large entries (each up to `log_store::MAX_BATCH_BYTES`) could put 64 times that in the
/// follower's memory while it catches up; with this, a follower buffers at most this plus one
/// append, and a stream still keeps 16 MiB in flight, enough to fill a link with a round trip
/// of 100 ms at 160 MB/s.
pub(crate) const MAX_UNANSWERED_BYTES: u64 = 16 << 20;

/// An open stream connection to one follower.
pub(crate) struct Conn {
    /// Appends go out here.
    writer: FramedWrite<WriteHalf<Box<dyn Io>>, Codec<Up, Down>>,
    /// Answers, in order, from the reader task; after an `Err` nothing more comes.
    answers: mpsc::UnboundedReceiver<Answer>,
    /// The reader task, stopped when the connection is dropped.
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Conn {
    /// A connection over `io` to node `target`, whose applied positions go to `applied` and
    /// whose refusals for lack of space to `full`.
    pub(crate) fn new(
        io: Box<dyn Io>,
        target: NodeId,
        applied: Option<AppliedSink>,
        full: Arc<PeersFull>,
    ) -> Conn {
        let (read, write) = tokio::io::split(io);
        let (tx, answers) = mpsc::unbounded_channel();
        let frames = FramedRead::new(read, Codec::<Up, Down>::new());
        let reader = tokio::spawn(read_answers(frames, tx, target, applied, full));
        Conn { writer: FramedWrite::new(write, Codec::new()), answers, reader }
    }

    /// Whether a session can start on this idle connection: it is open and owes nothing.
    fn usable(&self) -> bool {
        !self.reader.is_finished() && self.answers.is_empty()
    }
}

/// Reads a connection's frames until it ends: answers go to `tx`, applied positions to
/// `applied`; the end (and why) is the last thing sent to `tx`.
async fn read_answers(
    mut frames: FramedRead<ReadHalf<Box<dyn Io>>, Codec<Up, Down>>,
    tx: mpsc::UnboundedSender<Answer>,
    target: NodeId,
    applied: Option<AppliedSink>,
    full: Arc<PeersFull>,
) {
    let ended = loop {
        match frames.next().await {
            Some(Ok(Down::Answer(answer))) => {
                if tx.send(Ok(answer)).is_err() {
                    return;
                }
            }
            Some(Ok(Down::Applied(index))) => {
                if let Some(sink) = &applied {
                    sink(target, wal::Position { index, hash: None });
                }
            }
            Some(Ok(Down::Position(position))) => {
                if let Some(sink) = &applied {
                    sink(target, position);
                }
            }
            Some(Ok(Down::Failed(why))) => {
                if why.starts_with(super::NO_ROOM) {
                    full.refused(target);
                }
                break format!("node {target} ended the replication stream: {why}");
            }
            Some(Err(e)) => break format!("the replication stream to node {target} failed: {e}"),
            None => break format!("node {target} closed the replication stream"),
        }
    };
    let _ = tx.send(Err(ended));
}

/// The idle stream connections to one target, shared by every `Peer` of it.
#[derive(Default)]
pub(crate) struct Pool {
    /// Connections no session uses, most recently used last.
    idle: Mutex<Vec<Conn>>,
    /// When the target last refused to open a stream (a node of an older version).
    refused: Mutex<Option<Instant>>,
}

impl Pool {
    /// An idle connection that is still open, if there is one.
    pub(crate) fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().expect("stream pool mutex poisoned");
        while let Some(conn) = idle.pop() {
            if conn.usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Gives back a connection whose session ended cleanly.
    fn put(&self, conn: Conn) {
        let mut idle = self.idle.lock().expect("stream pool mutex poisoned");
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(conn);
        }
    }

    /// Whether the target refused a stream within [`RETRY_STREAM_AFTER`].
    pub(crate) fn refused_recently(&self) -> bool {
        let refused = self.refused.lock().expect("stream pool mutex poisoned");
        refused.is_some_and(|at| at.elapsed() < RETRY_STREAM_AFTER)
    }

    /// Notes that the target refused a stream now.
    pub(crate) fn refused_now(&self) {
        *self.refused.lock().expect("stream pool mutex poisoned") = Some(Instant::now());
    }
}

/// Why a stream could not be opened.
pub(crate) enum OpenError {
    /// The target does not serve the stream (404: an older version).
    NotServed,
    /// Anything else, as openraft should see it.
    Failed(RPCError<TypeConfig>),
}

/// Opens a stream to `addr` as node `id`: the upgrade request, then the upgraded connection.
/// Takes at most `limit`.
pub(crate) async fn open(
    client: &reqwest::Client,
    scheme: &str,
    addr: &str,
    id: NodeId,
    limit: Duration,
) -> Result<Box<dyn Io>, OpenError> {
    let url = format!("{scheme}://{addr}{STREAM_PATH}");
    let request = client
        .post(&url)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, PROTOCOL)
        .header(SENDER_HEADER, id.to_string())
        .header(HASH_HEADER, "1");
    let opening = async {
        let resp = request.send().await.map_err(|e| {
            let rpc = if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            };
            OpenError::Failed(rpc)
        })?;
        match resp.status() {
            StatusCode::SWITCHING_PROTOCOLS => {}
            StatusCode::NOT_FOUND => return Err(OpenError::NotServed),
            status => {
                let body = resp.text().await.unwrap_or_default();
                return Err(failed(format!("opening {url} answered HTTP {status}: {body}")));
            }
        }
        let io = resp.upgrade().await.map_err(|e| failed(format!("upgrading {url}: {e}")))?;
        Ok(Box::new(io) as Box<dyn Io>)
    };
    match tokio::time::timeout(limit, opening).await {
        Ok(res) => res,
        Err(_) => Err(failed(format!("opening {url} took more than {limit:?}"))),
    }
}

/// A `Network` error with `msg`, as an [`OpenError`].
fn failed(msg: String) -> OpenError {
    OpenError::Failed(RPCError::Network(NetworkError::from_string(msg)))
}

/// The answers of the appends `input` yields, sent on `conn` without waiting for earlier
/// answers. The stream ends after an error answer or a failure (the connection is then
/// closed), or once the input has ended and every append is answered (the connection then
/// goes back to `pool`). Fails when appends are unanswered and no answer came for `soft_ttl`.
pub(crate) fn session<'s, S>(
    conn: Conn,
    pool: std::sync::Arc<Pool>,
    input: S,
    soft_ttl: Duration,
    target: NodeId,
) -> BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let session = Session {
        conn: Some(conn),
        pool,
        input: Some(input),
        unanswered: VecDeque::new(),
        unanswered_bytes: 0,
        progress: Instant::now(),
        unflushed: false,
        soft_ttl,
        target,
    };
    Box::pin(futures::stream::unfold(session, |mut s| async move {
        let item = s.next().await?;
        Some((item, s))
    }))
}

/// The state of one [`session`].
struct Session<S> {
    /// The connection; `None` once the session has ended.
    conn: Option<Conn>,
    /// Where the connection goes back after a clean end.
    pool: std::sync::Arc<Pool>,
    /// openraft's appends; `None` once it has ended.
    input: Option<S>,
    /// The entry bytes of each append sent and not answered yet, oldest first.
    unanswered: VecDeque<u64>,
    /// Their sum.
    unanswered_bytes: u64,
    /// When the last answer came, or the first unanswered append went out.
    progress: Instant,
    /// Appends written to the connection's buffer but not flushed.
    unflushed: bool,
    /// How long unanswered appends may wait for an answer.
    soft_ttl: Duration,
    /// The follower, for messages.
    target: NodeId,
}

/// The next append of `input`, or never when it has ended.
async fn next_append<S>(input: &mut Option<S>) -> Option<AppendEntriesRequest<TypeConfig>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    match input {
        Some(input) => input.next().await,
        None => std::future::pending().await,
    }
}

impl<S> Session<S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    /// The next answer, a failure, or `None` when the session is over.
    async fn next(
        &mut self,
    ) -> Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
        loop {
            let conn = self.conn.as_mut()?;
            if self.input.is_none() && self.unanswered.is_empty() {
                let mut conn = self.conn.take()?;
                if flush(&mut conn.writer).await.is_ok() {
                    self.pool.put(conn);
                }
                return None;
            }
            let deadline = self.progress + self.soft_ttl;
            let room = self.unanswered.len() < MAX_UNANSWERED
                && self.unanswered_bytes < MAX_UNANSWERED_BYTES;
            let Conn { writer, answers, .. } = conn;
            // Answers first; then appends, as long as more are ready; a flush only when no
            // append is ready, so a burst leaves in one write.
            tokio::select! {
                biased;
                answer = answers.recv() => return Some(self.answered(answer)),
                append = next_append(&mut self.input), if room => {
                    let Some(append) = append else {
                        self.input = None;
                        continue;
                    };
                    if let Err(e) = self.send(append).await {
                        return Some(Err(e));
                    }
                }
                flushed = flush(writer), if self.unflushed => match flushed {
                    Ok(()) => self.unflushed = false,
                    Err(e) => return Some(Err(self.fail(format!("sending appends failed: {e}")))),
                },
                () = tokio::time::sleep_until(deadline.into()), if !self.unanswered.is_empty() => {
                    let msg = format!(
                        "no answer for {:?} with {} appends unanswered",
                        self.soft_ttl,
                        self.unanswered.len()
                    );
                    return Some(Err(self.fail(msg)));
                }
            }
        }
    }

    /// Writes one append to the connection's buffer.
    async fn send(
        &mut self,
        append: AppendEntriesRequest<TypeConfig>,
    ) -> Result<(), RPCError<TypeConfig>> {
        let conn = self.conn.as_mut().expect("a session sends only while it has a connection");
        let bytes = append.entries.iter().map(entry_bytes).sum();
        let fed = tokio::time::timeout(self.soft_ttl, conn.writer.feed(&Up::Append(append))).await;
        match fed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.fail(format!("sending an append failed: {e}"))),
            Err(_) => {
                let msg = format!("sending an append took more than {:?}", self.soft_ttl);
                return Err(self.fail(msg));
            }
        }
        if self.unanswered.is_empty() {
            self.progress = Instant::now();
        }
        self.unanswered.push_back(bytes);
        self.unanswered_bytes += bytes;
        self.unflushed = true;
        Ok(())
    }

    /// What an answer from the reader task means for the session.
    fn answered(
        &mut self,
        answer: Option<Answer>,
    ) -> Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>> {
        let answer = match answer {
            Some(Ok(answer)) => answer,
            Some(Err(why)) => return Err(self.fail(why)),
            None => return Err(self.fail("the stream's reader stopped".to_string())),
        };
        let Some(bytes) = self.unanswered.pop_front() else {
            return Err(self.fail("an answer came for no append".to_string()));
        };
        self.unanswered_bytes -= bytes;
        self.progress = Instant::now();
        if answer.is_err() {
            // The follower's last answer: its side of the stream has ended.
            self.conn = None;
        }
        Ok(answer)
    }

    /// Ends the session, closing its connection, with a `Network` error saying `why`.
    fn fail(&mut self, why: String) -> RPCError<TypeConfig> {
        self.conn = None;
        let msg = format!("replication stream to node {}: {why}", self.target);
        RPCError::Network(NetworkError::from_string(msg))
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
