//! Table checksums at one log index, on any node: the node side of `keel check` (see
//! `sql::checksum` for pins and the checksum itself).
//!
//! A check names a log index `N`. The first call for `N` pins it here (an error if this node
//! has applied `N` already: the check then picks a later index); every call then waits, up to
//! its timeout, until this node has applied `N` and taken the snapshot, and reads from that
//! snapshot: the list of tables, or one chunk of one table. The pin goes when the check says
//! it is done with it, or after `sql::checksum::PIN_IDLE` without use.
//!
//! A divergence found here, by a check or by the leader's apply hash comparison
//! (`crate::apply_hash`), is kept in the data directory ([`DIVERGENCE_FILE`]) and shown by
//! `/status` until the node is rebuilt.

use std::time::Duration;

use crate::{Error, Node};

/// How long a call waits for this node to apply the pinned index unless it says otherwise.
pub const PIN_WAIT: Duration = Duration::from_secs(30);

/// One call.
#[derive(Debug, Clone)]
pub struct ChecksumCall {
    /// The log index to read at.
    pub lsn: wal::Lsn,
    /// The table; `None` asks for the list of tables.
    pub table: Option<String>,
    /// The key after which the chunk starts (hex, from an earlier answer); `None`: the start.
    pub from: Option<String>,
    /// Rows in the chunk.
    pub limit: u64,
    /// Also give each row's key and hash.
    pub detail: bool,
    /// How long to wait for the index to be applied.
    pub timeout: Duration,
    /// Drop the pin afterwards (the check is done with this node).
    pub release: bool,
}

/// What a call answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksumAnswer {
    /// The tables a check covers here, at the index.
    Tables(Vec<String>),
    /// One chunk of one table.
    Chunk(sql::checksum::Chunk),
}

impl Node {
    /// Serves one call of a table check (see the module docs).
    pub async fn checksum(&self, call: ChecksumCall) -> Result<ChecksumAnswer, Error> {
        let pins = self.pins.clone();
        let answer = tokio::task::spawn_blocking(move || -> Result<ChecksumAnswer, Error> {
            pins.pin(call.lsn)?;
            let snapshot = pins.wait(call.lsn, call.timeout)?;
            let conn = snapshot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let answer = match &call.table {
                None => ChecksumAnswer::Tables(sql::checksum::tables(&conn)?),
                Some(table) => ChecksumAnswer::Chunk(sql::checksum::chunk(
                    &conn,
                    table,
                    call.from.as_deref(),
                    call.limit,
                    call.detail,
                )?),
            };
            drop(conn);
            if call.release {
                pins.release(call.lsn);
            }
            Ok(answer)
        })
        .await??;
        if let ChecksumAnswer::Chunk(chunk) = &answer {
            self.metrics.checksum_rows.inc_by(chunk.rows);
        }
        Ok(answer)
    }
}

/// The file in the data directory that remembers a divergence found here, until the data is
/// rebuilt (a rebuilt node starts from an empty data directory).
pub const DIVERGENCE_FILE: &str = "diverged.json";

/// The divergence recorded in `data_dir`, if any. An unreadable file counts as one: it was
/// written only because a check found this node different.
pub fn load_divergence(data_dir: &std::path::Path) -> Option<keel_api::checksum::Divergence> {
    let bytes = std::fs::read(data_dir.join(DIVERGENCE_FILE)).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| keel_api::checksum::Divergence {
        apply_hash: None,
        lsn: 0,
        tables: vec![format!("(unreadable {DIVERGENCE_FILE}: {e})")],
        reported_at: String::new(),
    }))
}

impl Node {
    /// Records what a finished check found ([`keel_api::checksum::CheckReport`]): the time and
    /// mismatch count in the metrics, and, when this node's data differs, an error in the log
    /// and a divergence kept in the data directory and shown by `/status` until the node is
    /// rebuilt.
    pub fn check_report(&self, report: keel_api::checksum::CheckReport) -> Result<(), Error> {
        let now = std::time::SystemTime::now();
        let unix = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.metrics.check_last.set(unix.as_secs_f64());
        self.metrics.check_mismatches.inc_by(report.mismatches);
        if report.diverged_tables.is_empty() {
            tracing::info!(
                lsn = report.lsn,
                mismatches = report.mismatches,
                "table check reported: this node agrees"
            );
            return Ok(());
        }
        tracing::error!(
            lsn = report.lsn,
            tables = ?report.diverged_tables,
            "table check: this node's data differs from the other replicas'; rebuild it (`keel admin rebuild --node {}`)",
            self.id
        );
        self.keep_divergence(keel_api::checksum::Divergence {
            apply_hash: None,
            lsn: report.lsn,
            tables: report.diverged_tables,
            reported_at: sql::rfc3339_utc(unix),
        })
    }

    /// Records what the leader found comparing apply hashes ([`crate::apply_hash`]): this
    /// node applied other log entries than the leader, or in another order. Kept as a table
    /// check's divergence is, until the node is rebuilt.
    pub fn apply_hash_diverged(&self, diverged: keel_api::internal::Diverged) -> Result<(), Error> {
        let unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mismatch = &diverged.mismatch;
        tracing::error!(
            lsn = diverged.lsn,
            leader = mismatch.leader,
            leader_hash = %mismatch.leader_hash,
            node_hash = %mismatch.node_hash,
            "apply hash: this node applied other log entries than its leader, or in another order; rebuild it (`keel admin rebuild --node {}`)",
            self.id
        );
        self.keep_divergence(keel_api::checksum::Divergence {
            apply_hash: Some(diverged.mismatch),
            lsn: diverged.lsn,
            tables: Vec::new(),
            reported_at: sql::rfc3339_utc(unix),
        })
    }

    /// Keeps `divergence` in the data directory and in memory (`/status`) until a rebuild.
    fn keep_divergence(&self, divergence: keel_api::checksum::Divergence) -> Result<(), Error> {
        let path = self.data_dir.join(DIVERGENCE_FILE);
        let bytes = serde_json::to_vec_pretty(&divergence).expect("plain data serializes");
        std::fs::write(&path, bytes)
            .map_err(|e| Error::Internal(format!("writing {}: {e}", path.display())))?;
        *self.divergence.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(divergence);
        Ok(())
    }

    /// The divergence a check or the apply hash found in this node's data, if any (see
    /// [`Node::check_report`], [`Node::apply_hash_diverged`]).
    pub fn divergence(&self) -> Option<keel_api::checksum::Divergence> {
        self.divergence.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}
