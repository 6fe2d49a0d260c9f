//! Frames of the replication stream: a 4-byte big-endian length, then that many bytes of
//! postcard (serde, binary). [`Codec`] is both ends' `tokio_util` codec: it encodes one message
//! type and decodes another (the leader sends [`super::Up`], the follower [`super::Down`]).
//!
//! Decoding refuses a frame announced longer than the codec's limit before reading it (the
//! buffer grows with the bytes that actually arrive, never to an announced length), and a
//! connection that ends inside a frame is an error, not a short message.

use std::io;
use std::marker::PhantomData;

use bytes::{BufMut, BytesMut};
use futures::Sink;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWrite;
use tokio_util::codec::{Decoder, Encoder, FramedWrite, LengthDelimitedCodec};

/// The largest frame a peer may send: the most a 4-byte length can say. Appends carry whole
/// records; the client API's request limit keeps them far below this.
pub const MAX_FRAME: usize = u32::MAX as usize;

/// Length of the frame header.
const HEADER: usize = 4;

/// Encodes `Out` messages and decodes `In` messages as length-prefixed postcard frames.
pub struct Codec<Out, In> {
    /// Splits the byte stream into frames (and enforces the limit).
    frames: LengthDelimitedCodec,
    /// The largest frame this end sends or accepts.
    max: usize,
    /// The message types.
    types: PhantomData<fn(Out) -> In>,
}

impl<Out, In> Default for Codec<Out, In> {
    fn default() -> Self {
        Codec::new()
    }
}

impl<Out, In> Codec<Out, In> {
    /// A codec accepting frames of up to [`MAX_FRAME`] bytes.
    pub fn new() -> Self {
        Codec::with_max(MAX_FRAME)
    }

    /// A codec accepting frames of up to `max` bytes (at most [`MAX_FRAME`]).
    pub fn with_max(max: usize) -> Self {
        let max = max.min(MAX_FRAME);
        let frames = LengthDelimitedCodec::builder()
            .length_field_type::<u32>()
            .big_endian()
            .max_frame_length(max)
            .new_codec();
        Codec { frames, max, types: PhantomData }
    }
}

impl<Out: Serialize, In> Encoder<&Out> for Codec<Out, In> {
    type Error = io::Error;

    fn encode(&mut self, item: &Out, dst: &mut BytesMut) -> io::Result<()> {
        let start = dst.len();
        dst.put_u32(0);
        postcard::to_io(item, dst.writer()).map_err(io::Error::other)?;
        let len = dst.len() - start - HEADER;
        if len > self.max {
            dst.truncate(start);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a replication frame of {len} bytes is over the limit of {}", self.max),
            ));
        }
        dst[start..start + HEADER].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

impl<Out, In: DeserializeOwned> Decoder for Codec<Out, In> {
    type Item = In;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<In>> {
        let Some(frame) = self.frames.decode(src)? else { return Ok(None) };
        postcard::from_bytes(&frame).map(Some).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad replication frame: {e}"))
        })
    }
}

/// Writes out every frame `frames` has buffered.
pub async fn flush<W, Out, In>(frames: &mut FramedWrite<W, Codec<Out, In>>) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    Out: Serialize,
{
    futures::future::poll_fn(|cx| Sink::<&Out>::poll_flush(std::pin::Pin::new(&mut *frames), cx))
        .await
}

/// Writes out every frame `frames` has buffered and closes the connection.
pub async fn close<W, Out, In>(frames: &mut FramedWrite<W, Codec<Out, In>>) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    Out: Serialize,
{
    futures::future::poll_fn(|cx| Sink::<&Out>::poll_close(std::pin::Pin::new(&mut *frames), cx))
        .await
}

#[cfg(test)]
mod tests {
    use futures::{SinkExt, StreamExt};
    use openraft::EntryPayload;
    use openraft::raft::AppendEntriesRequest;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::{FramedRead, FramedWrite};

    use super::*;
    use crate::network::stream::{Down, Up};
    use crate::state_machine::log_id;
    use crate::types::Vote;

    fn append(records: usize, size: usize) -> Up {
        let entries = (0..records)
            .map(|i| {
                let record = wal::Record {
                    ops: vec![wal::Op::Changes(vec![7; size])],
                    requests: Vec::new(),
                };
                crate::types::Entry {
                    log_id: log_id(3, 10 + i as u64),
                    payload: EntryPayload::Normal(record),
                }
            })
            .collect();
        Up::Append(AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(3, 9)),
            leader_commit: Some(log_id(3, 8)),
            entries,
        })
    }

    #[tokio::test]
    async fn frames_round_trip_in_order() {
        let (a, b) = tokio::io::duplex(1 << 10);
        let mut tx = FramedWrite::new(a, Codec::<Up, Up>::new());
        let mut rx = FramedRead::new(b, Codec::<Up, Up>::new());
        let sent = [append(0, 0), append(3, 5_000), append(1, 10)];
        let writer = tokio::spawn(async move {
            for m in &sent {
                tx.feed(m).await.unwrap();
            }
            tx.flush().await.unwrap();
            sent
        });
        let mut got = Vec::new();
        while got.len() < 3 {
            got.push(rx.next().await.unwrap().unwrap());
        }
        let sent = writer.await.unwrap();
        assert_eq!(format!("{got:?}"), format!("{sent:?}"));
        // A record travels as its encoded bytes, not as base64 text.
        let mut buf = BytesMut::new();
        Codec::<Up, Up>::new().encode(&append(1, 3_000), &mut buf).unwrap();
        assert!(buf.len() < 3_200, "a 3 kB record took {} bytes", buf.len());
    }

    #[tokio::test]
    async fn the_answers_and_positions_round_trip() {
        let mut codec = Codec::<Down, Down>::new();
        let mut buf = BytesMut::new();
        let sent = [
            Down::Answer(Ok(Some(log_id(2, 7)))),
            Down::Answer(Ok(None)),
            Down::Answer(Err(openraft::raft::StreamAppendError::Conflict(log_id(1, 4)))),
            Down::Applied(12),
            Down::Failed("no".into()),
            Down::Position(wal::Position {
                index: 13,
                hash: Some(wal::ApplyHash { origin: 2, digest: [5; 32] }),
            }),
            Down::Position(wal::Position { index: 14, hash: None }),
        ];
        for m in &sent {
            codec.encode(m, &mut buf).unwrap();
        }
        let mut got = Vec::new();
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            got.push(m);
        }
        assert_eq!(format!("{got:?}"), format!("{sent:?}"));
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_error() {
        let mut buf = BytesMut::new();
        Codec::<Up, Up>::new().encode(&append(2, 100), &mut buf).unwrap();
        let (mut a, b) = tokio::io::duplex(1 << 16);
        a.write_all(&buf[..buf.len() - 1]).await.unwrap();
        drop(a);
        let mut rx = FramedRead::new(b, Codec::<Up, Up>::new());
        let err = rx.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("bytes remaining"), "{err}");
        // A clean end between frames is the end of the stream.
        let (mut a, b) = tokio::io::duplex(1 << 16);
        a.write_all(&buf).await.unwrap();
        drop(a);
        let mut rx = FramedRead::new(b, Codec::<Up, Up>::new());
        assert!(rx.next().await.unwrap().is_ok());
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn an_oversize_frame_is_refused_on_both_ends() {
        let big = append(1, 2_000);
        let mut buf = BytesMut::new();
        let err = Codec::<Up, Up>::with_max(1_000).encode(&big, &mut buf).unwrap_err();
        assert!(err.to_string().contains("over the limit of 1000"), "{err}");
        assert!(buf.is_empty(), "a refused frame leaves nothing behind");

        // The reader refuses it from the header alone, before its body arrives.
        Codec::<Up, Up>::new().encode(&big, &mut buf).unwrap();
        let mut header_only = BytesMut::from(&buf[..HEADER]);
        let err = Codec::<Up, Up>::with_max(1_000).decode(&mut header_only).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn garbage_is_an_error() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0xff, 0xff, 0xff]);
        let err = Codec::<Up, Up>::new().decode(&mut buf).unwrap_err();
        assert!(err.to_string().contains("bad replication frame"), "{err}");
    }
}
