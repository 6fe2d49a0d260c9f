//! Deciding what to do with a segment's bytes at open: keep them, cut a torn tail, or refuse.
//!
//! [`scan`] is pure: it takes the bytes of one segment file, the index its first frame must
//! carry (from the file name) and whether it is the last segment, and returns the frames it found
//! plus a [`Verdict`]. [`crate::Log::open`] does the file I/O around it: it truncates on
//! [`Verdict::TornTail`] and fails with [`crate::Error::Corrupt`] on [`Verdict::Corrupt`].
//!
//! # The rule
//!
//! A crash in the middle of an append can leave the end of the last segment holding a partial
//! frame, or blocks of zeros or garbage where the frame was going to be (file size updated before
//! data). None of it was acknowledged: the fsync that would have made it durable never returned.
//! Such a *torn tail* is cut off.
//!
//! Anything else that fails validation is *corruption*, and is never repaired silently, because
//! cutting there would throw away entries that were acknowledged (etcd's `repair.go`, mini-lsm's
//! WAL make the same split):
//!
//! - damage in any segment but the last: later segments prove the log went on;
//! - damage in the last segment followed, anywhere later in the file, by a valid frame (magic,
//!   version and checksum correct) with a greater index than the last good one. The scan for such
//!   a frame goes forward byte by byte from just past the damaged offset, since the damaged
//!   header's length field cannot be trusted;
//! - a valid frame with the wrong index (not one more than its predecessor, or not the file
//!   name's index for the first frame) or with a term lower than its predecessor's.
//!
//! # Caveats
//!
//! A payload that happens to embed the bytes of a valid frame with a greater index (say, a
//! changeset containing a copy of a log segment) would make a genuinely torn tail look like
//! corruption. That errs on the side of refusing, and an operator can still cut the file by hand.

use crate::codec::{self, DecodeError};
use crate::{Lsn, Term};

/// Where a valid frame sits in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The frame's log index.
    pub index: Lsn,
    /// The frame's term.
    pub term: Term,
    /// Byte offset of the frame's header in the segment.
    pub offset: u64,
    /// Length of the whole frame, header included.
    pub len: u64,
}

/// What to do with a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every byte belongs to a valid frame: keep the file as it is.
    Intact,
    /// The last segment ends in a torn write: truncate the file to `offset`.
    TornTail {
        /// Where the valid frames end and the torn bytes begin.
        offset: u64,
        /// The index the torn frame would have had.
        lsn: Lsn,
        /// Why the bytes at `offset` are not a frame.
        reason: String,
    },
    /// Damage that a torn write cannot explain: refuse to open.
    Corrupt {
        /// Byte offset of the damaged frame.
        offset: u64,
        /// The index the damaged frame holds or should hold.
        lsn: Option<Lsn>,
        /// What failed validation, and why it is not a torn tail.
        reason: String,
    },
}

/// The outcome of scanning one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The valid frames before any damage, in order.
    pub frames: Vec<Position>,
    /// What to do with the segment.
    pub verdict: Verdict,
}

/// Scans the bytes of a segment whose first frame must have index `first_index`.
///
/// `last` says whether this is the log's last segment, the only one that may have a torn tail.
pub fn scan(bytes: &[u8], first_index: Lsn, last: bool) -> Scan {
    let mut frames = Vec::new();
    let mut offset = 0usize;
    let mut expected = Some(first_index);
    let mut prev_term: Option<Term> = None;
    while offset < bytes.len() {
        let at = offset as u64;
        let err = match codec::decode(&bytes[offset..]) {
            Ok((frame, len)) => {
                let reason = match expected {
                    None => Some(format!(
                        "frame index {} follows the largest possible index",
                        frame.index
                    )),
                    Some(want) if frame.index != want => Some(format!(
                        "expected index {want}, found a valid frame with index {}",
                        frame.index
                    )),
                    Some(_) if prev_term.is_some_and(|t| frame.term < t) => Some(format!(
                        "term goes backwards: frame {} has term {} after term {}",
                        frame.index,
                        frame.term,
                        prev_term.unwrap_or_default()
                    )),
                    Some(_) => None,
                };
                if let Some(reason) = reason {
                    return Scan {
                        frames,
                        verdict: Verdict::Corrupt { offset: at, lsn: expected, reason },
                    };
                }
                frames.push(Position {
                    index: frame.index,
                    term: frame.term,
                    offset: at,
                    len: len as u64,
                });
                prev_term = Some(frame.term);
                expected = frame.index.checked_add(1);
                offset += len;
                continue;
            }
            Err(err) => err,
        };
        let verdict = damaged(bytes, offset, expected, last, err);
        return Scan { frames, verdict };
    }
    Scan { frames, verdict: Verdict::Intact }
}

/// Classifies the damage found at `offset`, where a frame with index `expected` should start.
fn damaged(
    bytes: &[u8],
    offset: usize,
    expected: Option<Lsn>,
    last: bool,
    err: DecodeError,
) -> Verdict {
    let at = offset as u64;
    if !last {
        let reason = format!("{err} in a segment that is not the last");
        return Verdict::Corrupt { offset: at, lsn: expected, reason };
    }
    let Some(expected) = expected else {
        let reason = format!("{err} after the largest possible index");
        return Verdict::Corrupt { offset: at, lsn: None, reason };
    };
    if let Some((later, index)) = later_frame(bytes, offset + 1, expected) {
        let reason =
            format!("{err}, but a valid frame with index {index} follows at offset {later}");
        return Verdict::Corrupt { offset: at, lsn: Some(expected), reason };
    }
    Verdict::TornTail { offset: at, lsn: expected, reason: err.to_string() }
}

/// Finds the first offset at or after `from` where a valid frame with index `>= min_index`
/// starts.
fn later_frame(bytes: &[u8], from: usize, min_index: Lsn) -> Option<(u64, Lsn)> {
    (from..bytes.len()).find_map(|at| match codec::decode(&bytes[at..]) {
        Ok((frame, _)) if frame.index >= min_index => Some((at as u64, frame.index)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;
    use crate::codec::{Frame, HEADER_LEN, encode};

    /// Encodes frames `first..first+n` with term 1, returning the bytes and each frame's offset.
    fn segment(first: Lsn, n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for index in first..first + n {
            offsets.push(bytes.len());
            let payload = format!("payload of entry {index}").into_bytes();
            encode(&Frame { term: 1, index, payload }, &mut bytes).unwrap();
        }
        (bytes, offsets)
    }

    fn indexes(scan: &Scan) -> Vec<Lsn> {
        scan.frames.iter().map(|p| p.index).collect()
    }

    #[test_case(true ; "last segment")]
    #[test_case(false ; "earlier segment")]
    fn intact_segment(last: bool) {
        let (bytes, offsets) = segment(5, 4);
        let scan = scan(&bytes, 5, last);
        assert_eq!(scan.verdict, Verdict::Intact);
        assert_eq!(indexes(&scan), vec![5, 6, 7, 8]);
        assert_eq!(scan.frames[2].offset, offsets[2] as u64);
    }

    #[test]
    fn empty_segment_is_intact() {
        assert_eq!(scan(&[], 1, false), Scan { frames: vec![], verdict: Verdict::Intact });
    }

    #[test_case(1 ; "one byte of header")]
    #[test_case(HEADER_LEN ; "header only")]
    #[test_case(HEADER_LEN + 3 ; "part of payload")]
    fn partial_last_frame_is_torn(keep: usize) {
        let (bytes, offsets) = segment(1, 3);
        let cut = offsets[2] + keep;
        let scan = scan(&bytes[..cut], 1, true);
        assert_eq!(indexes(&scan), vec![1, 2]);
        assert!(
            matches!(scan.verdict, Verdict::TornTail { offset, lsn: 3, .. } if offset == offsets[2] as u64)
        );
    }

    #[test]
    fn zeros_after_the_last_frame_are_torn() {
        let (mut bytes, _) = segment(1, 2);
        let end = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 4096]);
        let scan = scan(&bytes, 1, true);
        assert_eq!(indexes(&scan), vec![1, 2]);
        assert!(matches!(scan.verdict, Verdict::TornTail { offset, lsn: 3, .. } if offset == end));
    }

    #[test]
    fn damage_in_an_earlier_segment_is_corrupt() {
        let (bytes, offsets) = segment(1, 3);
        let cut = offsets[2] + 5;
        let scan = scan(&bytes[..cut], 1, false);
        assert!(
            matches!(scan.verdict, Verdict::Corrupt { offset, lsn: Some(3), .. } if offset == offsets[2] as u64)
        );
    }

    #[test]
    fn damage_followed_by_a_valid_frame_is_corrupt() {
        let (mut bytes, offsets) = segment(1, 4);
        bytes[offsets[1] + HEADER_LEN + 2] ^= 0xff;
        let scan = scan(&bytes, 1, true);
        assert_eq!(indexes(&scan), vec![1]);
        match scan.verdict {
            Verdict::Corrupt { offset, lsn, reason } => {
                assert_eq!((offset, lsn), (offsets[1] as u64, Some(2)));
                assert!(
                    reason.contains(&format!("index 3 follows at offset {}", offsets[2])),
                    "{reason}"
                );
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn wrong_first_index_is_corrupt() {
        let (bytes, _) = segment(7, 2);
        let scan = scan(&bytes, 6, true);
        assert!(matches!(scan.verdict, Verdict::Corrupt { offset: 0, lsn: Some(6), .. }));
    }

    #[test]
    fn gap_between_frames_is_corrupt() {
        let mut bytes = Vec::new();
        for index in [1, 2, 4] {
            encode(&Frame { term: 1, index, payload: vec![] }, &mut bytes).unwrap();
        }
        let scan = scan(&bytes, 1, true);
        assert_eq!(indexes(&scan), vec![1, 2]);
        assert!(matches!(scan.verdict, Verdict::Corrupt { lsn: Some(3), .. }));
    }

    #[test]
    fn term_going_backwards_is_corrupt() {
        let mut bytes = Vec::new();
        for (term, index) in [(2, 1), (1, 2)] {
            encode(&Frame { term, index, payload: vec![] }, &mut bytes).unwrap();
        }
        let scan = scan(&bytes, 1, true);
        assert!(matches!(scan.verdict, Verdict::Corrupt { lsn: Some(2), .. }));
    }

    #[test]
    fn frame_after_the_largest_index_is_corrupt() {
        let mut bytes = Vec::new();
        for index in [u64::MAX, 0] {
            encode(&Frame { term: 1, index, payload: vec![] }, &mut bytes).unwrap();
        }
        let scan = scan(&bytes, u64::MAX, true);
        assert_eq!(indexes(&scan), vec![u64::MAX]);
        assert!(matches!(scan.verdict, Verdict::Corrupt { lsn: None, .. }));
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            for last in [false, true] {
                let _ = scan(&bytes, 0, last);
            }
        }
    }
}
