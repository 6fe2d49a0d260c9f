//! Small file helpers of [`super::Log`]: listing segments, the purge point's encoding, and
//! positioned reads and writes.

use std::fs::{self, File};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

use super::{SEGMENT_DIGITS, SEGMENT_EXT};
use crate::{Error, Lsn, Result, Term};

/// Lists the first indexes of the segment files in `dir`, ascending. Other files are ignored.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<Lsn>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_EXT)) else {
            continue;
        };
        if stem.len() == SEGMENT_DIGITS
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(first) = stem.parse::<Lsn>()
        {
            names.push(first);
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// Encodes the purge point for its metadata file.
pub(super) fn encode_purged(index: Lsn, term: Term) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&index.to_le_bytes());
    bytes.extend_from_slice(&term.to_le_bytes());
    bytes
}

/// Decodes the purge point from its metadata file.
pub(super) fn decode_purged(bytes: &[u8], path: &Path) -> Result<(Lsn, Term)> {
    let Ok(bytes) = <[u8; 16]>::try_from(bytes) else {
        return Err(Error::Corrupt {
            lsn: None,
            path: path.to_path_buf(),
            offset: 0,
            reason: format!("purge point has {} bytes, expected 16", bytes.len()),
        });
    };
    let (index, term) = bytes.split_at(8);
    let index = Lsn::from_le_bytes(index.try_into().unwrap_or_default());
    let term = Term::from_le_bytes(term.try_into().unwrap_or_default());
    Ok((index, term))
}

/// Writes all of `bytes` at `offset`.
pub(super) fn write_at(mut file: &File, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)
}

/// Reads exactly `len` bytes at `offset`.
pub(super) fn read_at(mut file: &File, offset: u64, len: u64) -> Result<Vec<u8>> {
    let len =
        usize::try_from(len).map_err(|_| Error::InvalidInput(format!("read of {len} bytes")))?;
    let mut bytes = vec![0; len];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}
