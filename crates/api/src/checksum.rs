//! Table checks (`keel check`): `GET /db/checksum` answers and `POST /db/checksum/report`.
//!
//! `GET /db/checksum?lsn=N` answers [`Tables`]: the tables a check covers, read at log index
//! `N`; `GET /db/checksum?lsn=N&table=T[&from=K][&limit=L][&detail]` answers one [`Chunk`] of
//! table `T`. The first call for `N` on a node pins it there; a node that has applied `N`
//! already answers 409 (`applied_index` says how far it is: pin a later index). The checksum is
//! specified in `docs/operations.md` ("Checking replicas"). After comparing, the check posts a
//! [`CheckReport`] to every node; a node found to differ remembers it as a [`Divergence`]
//! (`/status` `divergence`) until its data is rebuilt.

use serde::{Deserialize, Serialize};

use crate::Lsn;

/// The tables a check covers at `lsn`, the schema (`sqlite_schema`) first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tables {
    /// The log index read at.
    pub lsn: Lsn,
    /// Table names.
    pub tables: Vec<String>,
}

/// One chunk of one table at `lsn`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// The log index read at.
    pub lsn: Lsn,
    /// The table.
    pub table: String,
    /// Rows in the chunk.
    pub rows: u64,
    /// SHA-256 of the rows, lowercase hex.
    pub checksum: String,
    /// The last row's key (hex): the next chunk's `from`. Absent for an empty chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_key: Option<String>,
    /// No rows follow this chunk.
    pub done: bool,
    /// With `detail`: each row's key and a short hash of the row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Vec<RowDigest>>,
}

/// One row of a chunk's `detail`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowDigest {
    /// The row's key (hex).
    pub key: String,
    /// The first 8 bytes of the SHA-256 of the row, hex.
    pub hash: String,
}

/// What a finished check tells a node (`POST /db/checksum/report`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// The log index the check read at.
    pub lsn: Lsn,
    /// Chunks that differed between replicas, on any node.
    pub mismatches: u64,
    /// The tables in which THIS node's data differs from the majority's; empty when it agrees.
    pub diverged_tables: Vec<String>,
}

/// A node's data found to differ from the other replicas' (`/status` `divergence`): by a
/// table check (`tables`), or by the leader comparing apply hashes (`apply_hash`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// Set when the leader found this node's apply hash different from its own at `lsn`: this
    /// node applied other log entries, or in another order (no table is named then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_hash: Option<ApplyHashMismatch>,
    /// The log index of the check that found it.
    pub lsn: Lsn,
    /// The tables that differ.
    pub tables: Vec<String>,
    /// When it was reported (RFC 3339).
    pub reported_at: String,
}

/// What a leader tells a node whose apply hash differs from its own at one index
/// (`POST /keel/diverged` on the Raft port), kept in that node's [`Divergence`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyHashMismatch {
    /// The leader that compared.
    pub leader: crate::NodeId,
    /// The leader's apply hash at that index (hex).
    pub leader_hash: String,
    /// The hash this node reported (hex).
    pub node_hash: String,
    /// Where both chains start (see `docs/operations.md`).
    pub origin: Lsn,
}
