//! The frame codec: how one log entry is laid out in a segment file.
//!
//! Pure functions over byte slices, no files: [`encode`] appends a frame to a buffer, [`decode`]
//! parses the frame at the start of a slice and says precisely why it could not
//! ([`DecodeError`]). [`crate::repair`] builds its keep / truncate / refuse decision on
//! [`decode`], and [`crate::Log`] uses both for every write and read.
//!
//! # Layout
//!
//! All integers are little-endian. A frame is a 32-byte header followed by the payload:
//!
//! ```text
//! offset  size  field
//!      0     4  magic "KWAL"
//!      4     4  CRC32 (crc32fast) of bytes 8 .. 32+len, i.e. every field below and the payload
//!      8     1  version (1)
//!      9     3  reserved, zero
//!     12     4  len: payload length in bytes
//!     16     8  term
//!     24     8  index
//!     32   len  payload
//! ```
//!
//! The checksum covers the version, the length, the term, the index and the payload, so a frame
//! whose header was damaged is rejected just like one whose payload was. The magic is not covered
//! by the checksum; it is compared exactly, and lets a scan cheaply skip offsets where no frame
//! can start.
//!
//! The codec does not know what a payload means: the `raft` crate stores an openraft entry in it.

use crate::{Error, Lsn, Result, Term};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"KWAL";

/// The frame format version written by [`encode`] and accepted by [`decode`].
pub const VERSION: u8 = 1;

/// Length in bytes of a frame header.
pub const HEADER_LEN: usize = 32;

/// The largest payload a frame can carry (its length is a `u32`).
pub const MAX_PAYLOAD: usize = u32::MAX as usize;

/// One log entry as stored: term, index and an opaque payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: Lsn,
    /// The entry's contents; the `raft` crate encodes an openraft entry into it.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The number of bytes [`encode`] writes for this frame.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// A decoded frame that borrows its payload from the buffer it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: Lsn,
    /// The entry's contents.
    pub payload: &'a [u8],
}

impl FrameRef<'_> {
    /// Copies the payload into an owned [`Frame`].
    pub fn to_frame(&self) -> Frame {
        Frame { term: self.term, index: self.index, payload: self.payload.to_vec() }
    }
}

/// Why the bytes at some offset are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer ends before the frame does: too short for a header, or for the payload length
    /// the header announces.
    #[error("incomplete frame: needs {needed} bytes, {available} available")]
    Incomplete {
        /// Bytes the frame would occupy (header only, if even the header is missing).
        needed: u64,
        /// Bytes left in the buffer.
        available: u64,
    },
    /// The first four bytes are not [`MAGIC`].
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// The stored checksum does not match the frame's contents.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// The CRC32 found in the header.
        stored: u32,
        /// The CRC32 of the bytes as they are.
        computed: u32,
    },
    /// The checksum matches but the version is one this code does not read.
    #[error("unsupported frame version {0}")]
    BadVersion(u8),
    /// The checksum matches but the reserved header bytes are not zero.
    #[error("reserved header bytes are not zero: {0:02x?}")]
    BadReserved([u8; 3]),
}

/// Appends the encoding of `frame` to `out`.
///
/// Fails with [`Error::InvalidInput`] (leaving `out` untouched) if the payload is larger than
/// [`MAX_PAYLOAD`].
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<()> {
    let len = u32::try_from(frame.payload.len()).map_err(|_| {
        Error::InvalidInput(format!(
            "frame {} payload of {} bytes exceeds the {MAX_PAYLOAD}-byte limit",
            frame.index,
            frame.payload.len()
        ))
    })?;
    out.reserve(frame.encoded_len());
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 4]); // checksum, filled in below
    out.push(VERSION);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame.term.to_le_bytes());
    out.extend_from_slice(&frame.index.to_le_bytes());
    out.extend_from_slice(&frame.payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Decodes the frame at the start of `buf`, returning it and the number of bytes it occupies.
///
/// Bytes after the frame are ignored. Never panics, whatever `buf` holds.
pub fn decode(buf: &[u8]) -> std::result::Result<(FrameRef<'_>, usize), DecodeError> {
    let available = buf.len() as u64;
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Err(DecodeError::Incomplete { needed: HEADER_LEN as u64, available });
    };
    let magic: [u8; 4] = array(&header[0..4]);
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let stored = u32::from_le_bytes(array(&header[4..8]));
    let len = u32::from_le_bytes(array(&header[12..16])) as usize;
    let total = HEADER_LEN + len;
    let Some(frame) = buf.get(..total) else {
        return Err(DecodeError::Incomplete { needed: total as u64, available });
    };
    let computed = crc32fast::hash(&frame[8..]);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    if header[8] != VERSION {
        return Err(DecodeError::BadVersion(header[8]));
    }
    let reserved: [u8; 3] = array(&header[9..12]);
    if reserved != [0; 3] {
        return Err(DecodeError::BadReserved(reserved));
    }
    let term = u64::from_le_bytes(array(&header[16..24]));
    let index = u64::from_le_bytes(array(&header[24..32]));
    Ok((FrameRef { term, index, payload: &frame[HEADER_LEN..] }, total))
}

/// Copies a slice whose length the caller has already fixed into an array.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    fn frame(term: Term, index: Lsn, payload: &[u8]) -> Frame {
        Frame { term, index, payload: payload.to_vec() }
    }

    fn encoded(f: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        encode(f, &mut out).unwrap();
        out
    }

    #[test_case(frame(0, 0, b"") ; "empty payload at index zero")]
    #[test_case(frame(1, 1, b"x") ; "one byte")]
    #[test_case(frame(7, 42, b"hello world") ; "small")]
    #[test_case(frame(u64::MAX, u64::MAX, &[0xff; 300]) ; "extreme numbers")]
    #[test_case(frame(3, 9, &vec![0xab; 1 << 20]) ; "one mebibyte payload")]
    fn round_trip(f: Frame) {
        let bytes = encoded(&f);
        assert_eq!(bytes.len(), f.encoded_len());
        let (got, used) = decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(got.to_frame(), f);
    }

    #[test]
    fn decode_ignores_trailing_bytes() {
        let a = frame(1, 5, b"first");
        let b = frame(1, 6, b"second");
        let mut bytes = encoded(&a);
        encode(&b, &mut bytes).unwrap();
        let (got, used) = decode(&bytes).unwrap();
        assert_eq!(got.to_frame(), a);
        let (got, _) = decode(&bytes[used..]).unwrap();
        assert_eq!(got.to_frame(), b);
    }

    #[test]
    fn layout_is_stable() {
        let bytes = encoded(&frame(2, 3, b"ab"));
        assert_eq!(&bytes[0..4], b"KWAL");
        assert_eq!(bytes[8], VERSION);
        assert_eq!(&bytes[12..16], &2u32.to_le_bytes());
        assert_eq!(&bytes[16..24], &2u64.to_le_bytes());
        assert_eq!(&bytes[24..32], &3u64.to_le_bytes());
        assert_eq!(&bytes[32..], b"ab");
        assert_eq!(&bytes[4..8], &crc32fast::hash(&bytes[8..]).to_le_bytes());
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let bytes = encoded(&frame(4, 10, b"payload bytes"));
        for cut in 0..bytes.len() {
            let err = decode(&bytes[..cut]).unwrap_err();
            assert!(matches!(err, DecodeError::Incomplete { .. }), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let bytes = encoded(&frame(4, 10, b"payload bytes"));
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                assert!(decode(&damaged).is_err(), "flip of bit {bit} at {at} went unnoticed");
            }
        }
    }

    #[test_case(&[] ; "empty")]
    #[test_case(&[0; 64] ; "zeros")]
    #[test_case(b"KWAL" ; "magic only")]
    #[test_case(b"KWAL\0\0\0\0\x01\0\0\0\xff\xff\xff\xff" ; "huge length")]
    fn garbage_is_an_error(bytes: &[u8]) {
        assert!(decode(bytes).is_err());
    }

    #[test]
    fn reserved_and_version_are_checked_after_the_checksum() {
        let mut bytes = encoded(&frame(1, 1, b"v"));
        bytes[8] = 2;
        let crc = crc32fast::hash(&bytes[8..]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes).unwrap_err(), DecodeError::BadVersion(2));

        let mut bytes = encoded(&frame(1, 1, b"v"));
        bytes[10] = 1;
        let crc = crc32fast::hash(&bytes[8..]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes).unwrap_err(), DecodeError::BadReserved([0, 1, 0]));
    }
}
