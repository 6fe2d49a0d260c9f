//! `wal`: Keel's write-ahead log. The Raft log *is* the WAL: every replicated change is a
//! [`Record`] inside a log entry, and an entry is durable once [`Log::append`] returns.
//!
//! The crate knows nothing of SQLite, HTTP, tokio or openraft. It owns two things:
//!
//! - **The record** ([`Record`], [`Op`]): the logical, row-based description of one
//!   group-committed batch of client requests: DDL as SQL text, row changes as SQLite session
//!   changesets, plus the answers of requests that carry a client request id
//!   ([`RequestAnswer`]), for deduplicating retries. See [`record`] for its encoding.
//! - **The segmented log** ([`Log`]): a directory of append-only segment files holding
//!   checksummed frames, with an in-memory index, torn-tail repair, truncation, purging, and the
//!   small durable values Raft keeps beside its log (vote, committed position, purge point).
//!
//! # Layout on disk
//!
//! ```text
//! <dir>/00000000000000000001.wal   segment: frames for indexes 1..=N, back to back
//! <dir>/0000000000000000000N+1.wal next segment, named by the index of its first frame
//! <dir>/vote                       CRC32 + opaque bytes (replaced atomically)
//! <dir>/committed                  CRC32 + opaque bytes (replaced atomically)
//! <dir>/purged                     CRC32 + last purged (index, term)
//! ```
//!
//! A frame ([`codec`]) is a 32-byte header (magic, CRC32, version, length, term, index) and an
//! opaque payload; the `raft` crate puts an encoded openraft entry in the payload.
//!
//! # How data flows
//!
//! - [`Log::open`] lists the segments, reads each one whole and asks [`repair::scan`] what to do
//!   with it: keep it, cut a torn tail (then fsync the cut), or refuse with
//!   [`Error::Corrupt`]. The scan also yields every frame's position, which becomes the in-memory
//!   index from log index to (segment, offset, length).
//! - [`Log::append`] checks that the batch continues the log, encodes it with
//!   [`codec::encode`] into one buffer, starts a new segment if the current one has reached
//!   [`Options::segment_bytes`], then issues one write and one fdatasync, and only then indexes
//!   the entries.
//! - [`Log::room`]: the log keeps space preallocated past its last frame (`fallocate` without
//!   changing the length), so an append its callers checked with [`Log::ensure_room`] cannot
//!   fail on a full disk (see the `log::room` module).
//! - [`Log::read`] reads runs of frames with one read per segment and decodes (re-checksums) each.
//! - [`Log::truncate_after`] deletes later segments newest first and shortens the one that keeps
//!   the tail; [`Log::purge_through`] records the purge point, then deletes whole segments before
//!   it.
//!
//! # Durability rules
//!
//! fsync before acknowledging; abort the process if an fsync fails (see the private `disk`
//! module); cut a torn tail only; refuse a bad checksum anywhere else ([`repair`] states the
//! exact rule).
//!
//! # What it deliberately does not do
//!
//! - No threads and no async: callers run it on a blocking thread (`spawn_blocking`) and hold
//!   it behind a mutex. Every method is synchronous and does its own fsyncs.
//! - No caching of payloads: reads go to the file (and the OS page cache).
//! - No interpretation of payloads, vote or committed bytes: they are opaque here.
//!
//! # Implementation caveats
//!
//! - The in-memory index costs 32 bytes per entry present; Raft snapshots and purges keep the
//!   log short, so this is not paged.
//! - [`Log::open`] reads each segment whole into memory to validate it (64 MiB by default).
//! - Nothing stops two processes from opening the same directory; the node's data directory is
//!   assumed to belong to one process.
//! - An append spans exactly one segment, so a batch larger than `segment_bytes` makes an
//!   oversized segment rather than being split.

pub mod codec;
mod disk;
mod error;
mod log;
pub mod record;
pub mod repair;

pub use codec::Frame;
pub use error::{CORRUPT, Error, Result, is_no_space};
pub use log::{Log, Options, PendingSync};
pub use record::{Op, Record, RequestAnswer};

/// A log index: the position of an entry in the Raft log. Clients see it as the `lsn` of their
/// write, and can wait until a replica has applied at least that position.
pub type Lsn = u64;

/// A Raft term: the election epoch of the leader that created an entry.
pub type Term = u64;

/// The last log entry a database has applied, as stored inside that database (`sql` keeps it
/// in `_keel_meta`, in the transaction that applies the entries) and as the Raft state machine
/// reports it (`raft::state_machine::Store`). Defined here, the crate both depend on, so the
/// two speak of one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The term of that entry.
    pub term: Term,
    /// Its index.
    pub index: Lsn,
    /// The last membership configuration applied, serialized by the Raft layer (opaque JSON
    /// here), if any.
    pub membership: Option<String>,
}

/// Where a node's apply hash stands: a running SHA-256 over the log entries it has applied, in
/// log order (`sql::chain` defines exactly what is hashed). Two replicas that applied the same
/// entries in the same order from the same `origin` have the same `digest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ApplyHash {
    /// Where the chain starts: 0 for a chain over the whole log (from an empty database); for a
    /// database that predates the hash, the index of the first blank entry it applied since
    /// (every node upgraded in place starts there, so their chains agree). Hashes of different
    /// origins are not comparable.
    pub origin: Lsn,
    /// The running hash after the entry it is reported with.
    pub digest: [u8; 32],
}

impl ApplyHash {
    /// The digest as lower-case hex.
    pub fn hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses [`ApplyHash::hex`]'s form; `None` if it is not 64 hex digits.
    pub fn parse_hex(origin: Lsn, hex: &str) -> Option<ApplyHash> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut digest = [0u8; 32];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ApplyHash { origin, digest })
    }
}

/// A node's applied index with its apply hash there, as followers report it to the leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// The last applied index.
    pub index: Lsn,
    /// The apply hash after that entry; `None` when the node has none (a database that
    /// predates the hash, before its first blank entry) or does not say (an older version).
    pub hash: Option<ApplyHash>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_hash_hex_round_trip() {
        let mut digest = [0u8; 32];
        digest[0] = 0xab;
        digest[31] = 0x01;
        let hash = ApplyHash { origin: 7, digest };
        let hex = hash.hex();
        assert_eq!(hex.len(), 64);
        assert!(hex.starts_with("ab00") && hex.ends_with("01"));
        assert_eq!(ApplyHash::parse_hex(7, &hex), Some(hash));
        assert_eq!(ApplyHash::parse_hex(7, &hex[1..]), None);
        assert_eq!(ApplyHash::parse_hex(7, &"g".repeat(64)), None);
    }
}
