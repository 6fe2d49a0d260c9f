//! The leader's session over an in-memory pipe, against a scripted follower: pipelining,
//! answer order, applied positions, clean and unclean ends, the unanswered-append limits.

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use openraft::raft::{AppendEntriesRequest, StreamAppendError};
use tokio::io::DuplexStream;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::*;
use crate::state_machine::log_id;
use crate::types::Vote;

/// The follower's end of the pipe.
struct Follower {
    /// Appends from the leader.
    frames: FramedRead<tokio::io::ReadHalf<DuplexStream>, Codec<Down, Up>>,
    /// Frames to the leader.
    out: FramedWrite<tokio::io::WriteHalf<DuplexStream>, Codec<Down, Up>>,
}

impl Follower {
    /// The next append's last log index.
    async fn read(&mut self) -> u64 {
        let Some(Ok(Up::Append(append))) = self.frames.next().await else {
            panic!("expected an append")
        };
        append.entries.last().map_or(0, |e| e.log_id.index)
    }

    async fn send(&mut self, frame: Down) {
        self.out.send(&frame).await.unwrap();
    }
}

/// The applied positions a leader received.
type Received = Arc<StdMutex<Vec<(NodeId, wal::Position)>>>;

/// A position without a hash, as a follower of an older version reports it.
fn bare(index: u64) -> wal::Position {
    wal::Position { index, hash: None }
}

/// A connection to a scripted follower, with the applied positions its leader received.
fn pipe() -> (Conn, Follower, Received) {
    let (leader, follower) = tokio::io::duplex(1 << 20);
    let received = Arc::new(StdMutex::new(Vec::new()));
    let sink = received.clone();
    let sink: AppliedSink =
        Arc::new(move |id, position: wal::Position| sink.lock().unwrap().push((id, position)));
    let conn = Conn::new(Box::new(leader), 2, Some(sink), Arc::default());
    let (read, write) = tokio::io::split(follower);
    let follower = Follower {
        frames: FramedRead::new(read, Codec::new()),
        out: FramedWrite::new(write, Codec::new()),
    };
    (conn, follower, received)
}

/// An append of one entry at `index`.
fn append(index: u64) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(1, 1),
        prev_log_id: Some(log_id(1, index - 1)),
        leader_commit: None,
        entries: vec![crate::types::Entry {
            log_id: log_id(1, index),
            payload: openraft::EntryPayload::Blank,
        }],
    }
}

/// Waits (up to 5 s) until `cond` holds.
async fn eventually(mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition not met within 5 s");
}

const TTL: Duration = Duration::from_secs(5);

#[tokio::test]
async fn appends_are_pipelined_and_answered_in_order() {
    let (conn, mut follower, received) = pipe();
    let pool = Arc::new(Pool::default());
    let input = futures::stream::iter((10..15).map(append));
    let mut answers = session(conn, pool.clone(), input, TTL, 2);

    // The follower reads all five appends before it answers any: a leader that waited for
    // each answer would never send the second.
    let follower = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(follower.read().await);
        }
        for (i, index) in seen.iter().enumerate() {
            follower.send(Down::Answer(Ok(Some(log_id(1, *index))))).await;
            if i == 1 {
                follower.send(Down::Applied(11)).await;
            }
        }
        (seen, follower)
    });
    let mut got = Vec::new();
    while let Some(answer) = answers.next().await {
        got.push(answer.unwrap().unwrap().unwrap().index);
    }
    let (seen, _follower) = follower.await.unwrap();
    assert_eq!(seen, vec![10, 11, 12, 13, 14]);
    assert_eq!(got, vec![10, 11, 12, 13, 14]);
    assert_eq!(*received.lock().unwrap(), vec![(2, bare(11))]);
    // A clean end gives the connection back for the next session.
    assert!(pool.take().is_some());
}

#[tokio::test]
async fn applied_positions_arrive_while_the_connection_is_idle() {
    let (conn, mut follower, received) = pipe();
    let pool = Arc::new(Pool::default());
    let mut answers = session(conn, pool.clone(), futures::stream::iter([append(5)]), TTL, 2);
    // The session sends only while it is polled.
    let (answer, ()) = tokio::join!(answers.next(), async {
        assert_eq!(follower.read().await, 5);
        follower.send(Down::Answer(Ok(Some(log_id(1, 5))))).await;
    });
    assert!(answer.unwrap().is_ok());
    assert!(answers.next().await.is_none());
    drop(answers);

    // No session uses the connection now; the follower applies and says so.
    follower.send(Down::Applied(5)).await;
    eventually(|| received.lock().unwrap().contains(&(2, bare(5)))).await;
    // A follower of this version sends the hash too.
    let hashed =
        wal::Position { index: 6, hash: Some(wal::ApplyHash { origin: 0, digest: [6; 32] }) };
    follower.send(Down::Position(hashed)).await;
    eventually(|| received.lock().unwrap().contains(&(2, hashed))).await;
    assert!(pool.take().is_some(), "the idle connection is still usable");
}

#[tokio::test]
async fn an_error_answer_ends_the_session_and_its_connection() {
    let (conn, mut follower, _) = pipe();
    let pool = Arc::new(Pool::default());
    let input = futures::stream::iter((7..10).map(append));
    let mut answers = session(conn, pool.clone(), input, TTL, 2);
    let follower = tokio::spawn(async move {
        for _ in 0..3 {
            follower.read().await;
        }
        follower.send(Down::Answer(Ok(Some(log_id(1, 7))))).await;
        follower.send(Down::Answer(Err(StreamAppendError::Conflict(log_id(1, 7))))).await;
        follower
    });
    assert_eq!(answers.next().await.unwrap().unwrap(), Ok(Some(log_id(1, 7))));
    assert_eq!(
        answers.next().await.unwrap().unwrap(),
        Err(StreamAppendError::Conflict(log_id(1, 7)))
    );
    assert!(answers.next().await.is_none());
    let _follower = follower.await.unwrap();
    assert!(pool.take().is_none(), "a connection that owes answers is not reused");
}

#[tokio::test]
async fn unanswered_appends_time_out_and_a_refusal_is_an_error() {
    let (conn, mut follower, _) = pipe();
    let pool = Arc::new(Pool::default());
    let ttl = Duration::from_millis(100);
    let mut answers = session(conn, pool.clone(), futures::stream::iter([append(3)]), ttl, 2);
    let started = std::time::Instant::now();
    let err = answers.next().await.unwrap().unwrap_err();
    assert!(err.to_string().contains("no answer for 100ms"), "{err}");
    assert!(started.elapsed() >= ttl);
    assert!(answers.next().await.is_none());
    assert_eq!(follower.read().await, 3);

    let (conn, mut follower, _) = pipe();
    let mut answers = session(conn, pool.clone(), futures::stream::iter([append(4)]), TTL, 2);
    let (answer, ()) = tokio::join!(answers.next(), async {
        assert_eq!(follower.read().await, 4);
        follower.send(Down::Failed("not your stream".into())).await;
    });
    let err = answer.unwrap().unwrap_err();
    assert!(err.to_string().contains("not your stream"), "{err}");
    assert!(pool.take().is_none());
}

#[tokio::test]
async fn an_idle_session_has_no_deadline_and_a_closed_connection_is_not_reused() {
    let (conn, follower, _) = pipe();
    let pool = Arc::new(Pool::default());
    // Input that never yields: the session waits without failing.
    let mut answers = session(conn, pool.clone(), futures::stream::pending(), Duration::ZERO, 2);
    let waited = tokio::time::timeout(Duration::from_millis(50), answers.next()).await;
    assert!(waited.is_err(), "an idle session ended: {:?}", waited.map(|a| a.map(|r| r.is_ok())));
    drop(answers);

    drop(follower);

    // A pool skips connections whose follower closed them.
    let (open, _alive, _) = pipe();
    let (closed, gone, _) = pipe();
    drop(gone);
    eventually(|| closed.reader.is_finished()).await;
    pool.put(open);
    pool.put(closed);
    assert!(pool.take().is_some(), "the open connection is taken");
    assert!(pool.take().is_none(), "the closed one was dropped");
}

/// Takes every answer of a session in a task of its own, each a success; the task returns
/// how many there were.
fn count_answers(
    mut answers: BoxStream<'static, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(answer) = answers.next().await {
            answer.unwrap().unwrap();
            n += 1;
        }
        n
    })
}

#[tokio::test]
async fn a_session_has_at_most_64_appends_unanswered() {
    let (conn, mut follower, _) = pipe();
    let input = futures::stream::iter((1..=100).map(|i| append(i + 1)));
    let answers = session(conn, Arc::new(Pool::default()), input, TTL, 2);
    let leader = count_answers(answers);
    for _ in 0..MAX_UNANSWERED {
        follower.read().await;
    }
    let more = tokio::time::timeout(Duration::from_millis(100), follower.frames.next()).await;
    assert!(more.is_err(), "a 65th append was sent before any answer");
    for index in 2..=101 {
        if index > 2 + MAX_UNANSWERED as u64 - 1 {
            assert_eq!(follower.read().await, index);
        }
        follower.send(Down::Answer(Ok(Some(log_id(1, index))))).await;
    }
    assert_eq!(leader.await.unwrap(), 100);
}

/// An append of one entry at `index` whose record holds a changeset of `bytes` bytes.
fn large_append(index: u64, bytes: usize) -> AppendEntriesRequest<TypeConfig> {
    let record = wal::Record { ops: vec![wal::Op::Changes(vec![7; bytes])], requests: vec![] };
    let mut append = append(index);
    append.entries[0].payload = openraft::EntryPayload::Normal(record);
    append
}

#[tokio::test]
async fn a_session_has_at_most_16_mib_of_entries_unanswered() {
    const { assert!(MAX_UNANSWERED_BYTES == 16 << 20, "the sizes below assume 16 MiB") };
    const SIX_MIB: usize = 6 << 20;
    let (conn, mut follower, _) = pipe();
    let input = futures::stream::iter((2..=7).map(|i| large_append(i, SIX_MIB)));
    let answers = session(conn, Arc::new(Pool::default()), input, TTL, 2);
    let leader = count_answers(answers);
    // 0, 6 and 12 MiB unanswered leave room for one more; 18 MiB do not.
    for index in 2..=4 {
        assert_eq!(follower.read().await, index);
    }
    let more = tokio::time::timeout(Duration::from_millis(100), follower.frames.next()).await;
    assert!(more.is_err(), "a fourth 6 MiB append was sent with 18 MiB unanswered");
    // Each answer makes room for one more append.
    for index in 2..=7 {
        follower.send(Down::Answer(Ok(Some(log_id(1, index))))).await;
        if index + 3 <= 7 {
            assert_eq!(follower.read().await, index + 3);
        }
    }
    assert_eq!(leader.await.unwrap(), 6);
}
