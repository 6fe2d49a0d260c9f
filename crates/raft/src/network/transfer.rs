//! The streamed snapshot transfer, both ends: [`Peer::send_snapshot`] streams the image file
//! as an HTTP body, watched for stalls; [`receive`] streams a body (HTTP, or a file handed over
//! by the in-memory network) into a temporary file beside the database, checking length and
//! checksum, and fsyncs it before anything installs it. See the parent module for the protocol.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use futures::{Stream, StreamExt};
use openraft::OptionalSend;
use openraft::errors::{NetworkError, ReplicationClosed, StreamingError, Timeout};
use openraft::network::{RPCOption, RPCTypes};
use openraft::raft::SnapshotResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::Peer;
use super::server::Snapshots;
use super::{SNAPSHOT_HEADER, SnapshotHeader};
use crate::snapshot::{BLOCK, SnapshotFile, SnapshotStats, TempFile, receiving_path};
use crate::state_machine::mb_per_s;
use crate::types::{NodeId, TypeConfig, Vote};

/// Size of the blocks a snapshot is read in for sending.
pub(super) const SEND_BLOCK: usize = 256 << 10;

/// Progress is logged at debug every this many bytes of a transfer.
const PROGRESS_LOG_EVERY: u64 = 64 << 20;

/// How far a snapshot upload has got.
#[derive(Debug)]
struct Upload {
    /// Bytes handed to the connection.
    bytes: u64,
    /// When the connection last took a block.
    last: Instant,
    /// When the whole body had been handed over.
    done: Option<Instant>,
    /// `bytes` at the last progress log.
    logged: u64,
}

/// The body of a snapshot upload: the file's blocks, recording progress as the connection takes
/// them.
struct Metered<S> {
    /// The file's blocks.
    inner: S,
    /// Shared with the watchdog.
    upload: Arc<Mutex<Upload>>,
    /// Counts bytes sent.
    stats: Arc<SnapshotStats>,
    /// Total length, for logs.
    total: u64,
    /// Receiver, for logs.
    target: NodeId,
    /// Start of the transfer, for logs.
    started: Instant,
}

impl<S> Stream for Metered<S>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = ready!(Pin::new(&mut this.inner).poll_next(cx));
        let mut up = this.upload.lock().expect("upload mutex poisoned");
        let now = Instant::now();
        match &item {
            Some(Ok(block)) => {
                up.bytes += block.len() as u64;
                up.last = now;
                // hyper stops polling once Content-Length bytes went out, so the end of the
                // body is when the last byte was handed over, not the stream's `None`.
                if up.bytes >= this.total {
                    up.done.get_or_insert(now);
                }
                this.stats.add_bytes_sent(block.len() as u64);
                if up.bytes >= up.logged + PROGRESS_LOG_EVERY {
                    up.logged = up.bytes;
                    let secs = this.started.elapsed().as_secs_f64();
                    tracing::debug!(
                        peer = this.target,
                        bytes = up.bytes,
                        total = this.total,
                        mb_per_s = mb_per_s(up.bytes, secs),
                        "sending snapshot"
                    );
                }
            }
            Some(Err(_)) => {}
            None => {
                up.done.get_or_insert(now);
            }
        }
        Poll::Ready(item)
    }
}

/// Resolves when an upload stalls: no block taken for `idle` while the body streams, or no
/// answer `answer_ttl` after the last byte. Returns the limit that was hit.
async fn stalled(upload: Arc<Mutex<Upload>>, idle: Duration, answer_ttl: Duration) -> Duration {
    loop {
        let (deadline, limit) = {
            let up = upload.lock().expect("upload mutex poisoned");
            match up.done {
                Some(done) => (done + answer_ttl, answer_ttl),
                None => (up.last + idle, idle),
            }
        };
        if Instant::now() >= deadline {
            return limit;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}

impl Peer {
    /// Streams the snapshot's image file as the request body; see the module docs for the
    /// header, the timeouts and cancellation.
    pub(super) async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: super::OutgoingSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let file = snapshot.snapshot;
        let (len, checksum) = (file.len(), file.checksum());
        let last_log_id = snapshot.meta.last_log_id;
        let header =
            serde_json::to_string(&SnapshotHeader { vote, meta: snapshot.meta, len, checksum })
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let url = format!("{}://{}/raft/snapshot", self.scheme, self.addr);
        let client = self.client().map_err(StreamingError::Network)?.clone();
        let started = Instant::now();
        // An empty body is done before it starts (hyper will not poll it).
        let done = (len == 0).then_some(started);
        let upload = Arc::new(Mutex::new(Upload { bytes: 0, last: started, done, logged: 0 }));
        let reader = tokio::fs::File::from_std(file.into_file()).take(len);
        let body = Metered {
            inner: tokio_util::io::ReaderStream::with_capacity(reader, SEND_BLOCK),
            upload: upload.clone(),
            stats: self.stats.clone(),
            total: len,
            target: self.target,
            started,
        };
        tracing::debug!(peer = self.target, ?last_log_id, bytes = len, "sending snapshot");
        let send = async {
            let resp = client
                .post(&url)
                .header(SNAPSHOT_HEADER, header)
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await;
            self.answer::<SnapshotResponse<TypeConfig>>(&url, resp).await
        };
        let res = tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            limit = stalled(upload.clone(), self.idle_timeout, option.hard_ttl()) => {
                Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.id,
                    target: self.target,
                    timeout: limit,
                }))
            }
            res = send => res.map_err(StreamingError::from),
        };
        let sent = upload.lock().expect("upload mutex poisoned").bytes;
        let secs = started.elapsed().as_secs_f64();
        match &res {
            Ok(_) => {
                self.stats.on_sent(true);
                tracing::info!(
                    peer = self.target,
                    ?last_log_id,
                    bytes = sent,
                    secs,
                    mb_per_s = mb_per_s(sent, secs),
                    "sent snapshot"
                );
            }
            Err(StreamingError::Closed(e)) => {
                tracing::info!(peer = self.target, bytes = sent, total = len, reason = %e, "snapshot transfer cancelled");
            }
            Err(e) => {
                self.stats.on_sent(false);
                tracing::warn!(peer = self.target, bytes = sent, total = len, secs, error = %e, "snapshot transfer failed");
            }
        }
        res
    }
}

/// Why a snapshot body was not accepted.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReceiveError {
    #[error("reading the snapshot body: {0}")]
    Body(String),
    #[error("snapshot body is longer than the announced {0} bytes")]
    TooLong(u64),
    #[error("snapshot body has {got} bytes, the header announced {expected}")]
    Length { got: u64, expected: u64 },
    #[error("snapshot checksum {got:08x} does not match the announced {expected:08x}")]
    Checksum { got: u32, expected: u32 },
    #[error("writing the snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error("installing the snapshot: {0}")]
    Install(String),
}

impl ReceiveError {
    /// The HTTP status that answers this refusal.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ReceiveError::Io(_) | ReceiveError::Install(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Counts a received snapshot as failed when dropped, unless [`Outcome::succeeded`].
pub(super) struct Outcome(Option<Arc<SnapshotStats>>);

impl Outcome {
    /// A transfer counted in `stats`: as failed, unless [`Outcome::succeeded`] is called.
    pub(super) fn new(stats: Arc<SnapshotStats>) -> Outcome {
        Outcome(Some(stats))
    }

    /// Counts the transfer as received.
    pub(super) fn succeeded(mut self) {
        if let Some(stats) = self.0.take() {
            stats.on_received(true);
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if let Some(stats) = self.0.take() {
            stats.on_received(false);
        }
    }
}

/// The snapshot header of a request, checked against its `Content-Length` if it has one.
pub(super) fn parse_snapshot_header(headers: &HeaderMap) -> Result<SnapshotHeader, String> {
    let header = headers
        .get(SNAPSHOT_HEADER)
        .and_then(|h| h.to_str().ok())
        .ok_or("missing snapshot header")?;
    let header: SnapshotHeader =
        serde_json::from_str(header).map_err(|e| format!("bad snapshot header: {e}"))?;
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = announced
        && n != header.len
    {
        return Err(format!(
            "content-length of {n} bytes differs from the snapshot's {} bytes",
            header.len
        ));
    }
    Ok(header)
}

/// Streams a snapshot body into a new temporary file in the snapshot directory, checking its
/// length and checksum against `header`, and fsyncs it. On any error (or if the future is
/// dropped) the file is deleted. The returned file is no longer guarded: the caller hands it
/// to the state machine and deletes it if that did not take it.
pub(super) async fn receive<E: Display>(
    snapshots: &Snapshots,
    header: &SnapshotHeader,
    mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
) -> Result<SnapshotFile, ReceiveError> {
    let (term, index) = header.meta.last_log_id.map_or((0, 0), |l| (l.leader_id.term, l.index));
    let tmp = TempFile::new(receiving_path(&snapshots.dir, term, index));
    let file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(tmp.path()).await?;
    let mut out = tokio::io::BufWriter::with_capacity(BLOCK, file);
    let mut hasher = crc32fast::Hasher::new();
    let mut got = 0u64;
    let mut logged = 0u64;
    let started = Instant::now();
    while let Some(block) = body.next().await {
        let block = block.map_err(|e| ReceiveError::Body(e.to_string()))?;
        got += block.len() as u64;
        snapshots.stats.add_bytes_received(block.len() as u64);
        if got > header.len {
            return Err(ReceiveError::TooLong(header.len));
        }
        hasher.update(&block);
        out.write_all(&block).await?;
        if got >= logged + PROGRESS_LOG_EVERY {
            logged = got;
            let secs = started.elapsed().as_secs_f64();
            tracing::debug!(
                bytes = got,
                total = header.len,
                mb_per_s = mb_per_s(got, secs),
                "receiving snapshot"
            );
        }
    }
    if got != header.len {
        return Err(ReceiveError::Length { got, expected: header.len });
    }
    let checksum = hasher.finalize();
    if checksum != header.checksum {
        return Err(ReceiveError::Checksum { got: checksum, expected: header.checksum });
    }
    out.flush().await?;
    let file = out.into_inner();
    file.sync_all().await?;
    drop(file);
    let received = SnapshotFile::open(tmp.path(), got, checksum)?;
    tmp.keep();
    Ok(received)
}
