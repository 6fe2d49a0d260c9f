//! The apply hash: a running SHA-256 over the log entries a node has applied, in log order.
//!
//! Every node, the leader included, folds each entry it applies into one 32-byte digest
//! ([`advance`]), and `meta::write_applied` stores the result in `_keel_meta` in the
//! transaction that applies the entries, beside the applied index. Followers report
//! `(applied index, hash)` to the leader ([`wal::Position`]); the leader keeps its own hashes
//! of recent entries ([`Recent`]) and compares ([`Recent::compare`]). A snapshot image carries
//! the row, so a node that boots from one continues the chain of the node that made it.
//!
//! ## What is hashed
//!
//! For the entry at `index` in `term`, with `prev` the digest after the entry before it:
//!
//! ```text
//! digest = SHA-256( prev (32 bytes) || index (u64 LE) || term (u64 LE) || kind (u8) || body )
//!   kind 0, blank entry:      body empty
//!   kind 1, normal entry:     body = wal::Record::encode() of its record (the bytes the log
//!                             frame holds after its kind byte, CRC-32 included)
//!   kind 2, membership entry: body = the membership JSON the state machine stores
//!                             (`_keel_meta.membership`, the same serializer on every node)
//! ```
//!
//! `prev` is 32 zero bytes before the first entry of a database created empty (origin 0). A
//! database that predates the hash (`_keel_meta` has no digest while it has a position) has no
//! chain until it applies a blank entry: it starts there, from zero bytes, with that entry's
//! index as its origin. Every new leader's first entry is blank, so nodes upgraded in place
//! start together at the first election after the upgrade; hashes of different origins are
//! never compared.
//!
//! ## What it catches, and what not
//!
//! The hash covers the *record path*: which entries a node applied, in which order, with which
//! bytes. A node that skipped an entry, applied one twice or out of order, applied a different
//! record, or whose position was recorded by a path that did not see the log's bytes, reports a
//! different digest from that entry on. It says nothing about the database file itself: a row
//! edited by hand, a bit flipped on disk, or an apply that wrote something else than the
//! changeset says all leave the digest equal. `keel check` (`crate::checksum`) reads the data.
//!
//! Cost: one SHA-256 over each entry's bytes (no copy: [`wal::Record::encode_with`]) and two
//! more columns in the `_keel_meta` write every apply makes already.

use std::collections::VecDeque;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use wal::{ApplyHash, Lsn, Position};

use crate::meta::Apply;

/// The digest before the first entry of a chain.
pub const ZERO: [u8; 32] = [0; 32];

/// How many recent entries' hashes a node keeps for comparing reports ([`Recent`]): at
/// 40 bytes each, 640 KiB. A report for an index older than this is not compared.
pub const RECENT: usize = 16_384;

/// Kind byte of a blank entry.
const BLANK: u8 = 0;
/// Kind byte of a normal entry (a record).
const NORMAL: u8 = 1;
/// Kind byte of a membership entry.
const MEMBERSHIP: u8 = 2;

/// The digest after `entry`, given the digest `prev` after the entry before it.
pub fn step(prev: &[u8; 32], entry: &Apply<'_>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(entry.index.to_le_bytes());
    hasher.update(entry.term.to_le_bytes());
    match (entry.record, entry.membership) {
        (Some(record), _) => {
            hasher.update([NORMAL]);
            record.encode_with(|bytes| hasher.update(bytes));
        }
        (None, Some(membership)) => {
            hasher.update([MEMBERSHIP]);
            hasher.update(membership.as_bytes());
        }
        (None, None) => hasher.update([BLANK]),
    }
    hasher.finalize().into()
}

/// The chain after `entry`: `prev` advanced by [`step`]; or, for a node without a chain
/// (`None`, a database that predates the hash), a new chain when `entry` is blank (see the
/// module docs), else still none.
pub fn advance(prev: Option<ApplyHash>, entry: &Apply<'_>) -> Option<ApplyHash> {
    match prev {
        Some(hash) => Some(ApplyHash { origin: hash.origin, digest: step(&hash.digest, entry) }),
        None if entry.record.is_none() && entry.membership.is_none() => {
            Some(ApplyHash { origin: entry.index, digest: step(&ZERO, entry) })
        }
        None => None,
    }
}

/// What comparing a report with this node's own hash found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// Same digest at that index.
    Match,
    /// Another digest at that index: the reporter applied other entries, or in another order.
    Mismatch {
        /// This node's hash at that index.
        ours: ApplyHash,
    },
    /// Not compared, and why.
    NotCompared(Uncompared),
}

/// Why a report was not compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uncompared {
    /// The report has no hash (an older version, or a node without a chain).
    NoHash,
    /// This node has no hash of that index: older than the last [`RECENT`] entries, not applied
    /// here yet, or applied before this node's chain began or before an install.
    OutsideRing,
    /// The two chains started at different places (see the module docs).
    OtherOrigin,
}

/// This node's hashes of its last [`RECENT`] applied entries, for comparing the reports of
/// other nodes. Shared (the state machine writes, the network's report handlers read).
///
/// Invariants: indexes ascend strictly; at most [`RECENT`] entries.
#[derive(Debug, Default)]
pub struct Recent {
    /// `(index, hash after that entry)`, ascending.
    hashes: Mutex<VecDeque<(Lsn, ApplyHash)>>,
}

impl Recent {
    /// Records the hashes of entries just applied (ascending). An index at or below the last
    /// one kept means the log was applied again from there (never with other bytes: that is
    /// what the hash checks), so the later ones are dropped first.
    pub(crate) fn extend(&self, applied: &[(Lsn, ApplyHash)]) {
        let Some(&(first, _)) = applied.first() else { return };
        let mut hashes = self.hashes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while hashes.back().is_some_and(|(index, _)| *index >= first) {
            hashes.pop_back();
        }
        hashes.extend(applied.iter().copied());
        let excess = hashes.len().saturating_sub(RECENT);
        hashes.drain(..excess);
    }

    /// Forgets every hash: the database was replaced (an install), so the entries before it
    /// were never applied here.
    pub(crate) fn clear(&self) {
        self.hashes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    /// This node's hash after the entry at `index`, if it is among the recent ones.
    pub fn get(&self, index: Lsn) -> Option<ApplyHash> {
        let hashes = self.hashes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (first, _) = *hashes.front()?;
        let at = usize::try_from(index.checked_sub(first)?).ok()?;
        // Indexes are consecutive while the log is; search when they are not (an install).
        match hashes.get(at) {
            Some(&(i, hash)) if i == index => Some(hash),
            _ => hashes.binary_search_by_key(&index, |(i, _)| *i).ok().map(|at| hashes[at].1),
        }
    }

    /// Compares another node's report with this node's own hash at the same index.
    pub fn compare(&self, report: Position) -> Comparison {
        let Some(theirs) = report.hash else {
            return Comparison::NotCompared(Uncompared::NoHash);
        };
        let Some(ours) = self.get(report.index) else {
            return Comparison::NotCompared(Uncompared::OutsideRing);
        };
        if ours.origin != theirs.origin {
            Comparison::NotCompared(Uncompared::OtherOrigin)
        } else if ours.digest == theirs.digest {
            Comparison::Match
        } else {
            Comparison::Mismatch { ours }
        }
    }
}

#[cfg(test)]
mod tests {
    use wal::{Op, Record, RequestAnswer};

    use super::*;

    fn normal(index: Lsn, record: &Record) -> Apply<'_> {
        Apply { term: 2, index, record: Some(record), membership: None }
    }

    fn blank(index: Lsn) -> Apply<'static> {
        Apply { term: 2, index, record: None, membership: None }
    }

    fn record(byte: u8) -> Record {
        Record {
            ops: vec![Op::Ddl("CREATE TABLE t (a)".into()), Op::Changes(vec![byte; 40])],
            requests: vec![RequestAnswer { id: "r".into(), results: b"[]".to_vec() }],
        }
    }

    /// The chain over `entries` from an empty database.
    fn chain(entries: &[Apply<'_>]) -> Option<ApplyHash> {
        entries.iter().fold(Some(ApplyHash { origin: 0, digest: ZERO }), advance)
    }

    /// The definition in the module docs, spelled out on the encoded bytes.
    #[test]
    fn step_hashes_prev_index_term_kind_and_the_encoded_record() {
        let r = record(7);
        let mut expected = Sha256::new();
        expected.update([9u8; 32]);
        expected.update(5u64.to_le_bytes());
        expected.update(2u64.to_le_bytes());
        expected.update([1u8]);
        expected.update(r.encode());
        assert_eq!(step(&[9; 32], &normal(5, &r)), <[u8; 32]>::from(expected.finalize()));

        let mut blank_expected = Sha256::new();
        blank_expected.update(ZERO);
        blank_expected.update(6u64.to_le_bytes());
        blank_expected.update(2u64.to_le_bytes());
        blank_expected.update([0u8]);
        assert_eq!(step(&ZERO, &blank(6)), <[u8; 32]>::from(blank_expected.finalize()));
    }

    #[test]
    fn same_entries_same_order_agree_whatever_the_batches() {
        let (a, b) = (record(1), record(2));
        let entries = [blank(1), normal(2, &a), normal(3, &b)];
        let whole = chain(&entries);
        let split = entries[1..].iter().fold(chain(&entries[..1]), advance);
        assert_eq!(whole, split);
        assert_eq!(whole.unwrap().origin, 0);
    }

    #[test]
    fn any_difference_in_the_record_path_changes_the_digest() {
        let (a, b) = (record(1), record(2));
        let reference = chain(&[blank(1), normal(2, &a), normal(3, &b)]);
        // Order, a skipped entry, an entry applied twice, other bytes, another term, and a
        // membership entry where a blank one was.
        let variants: Vec<Vec<Apply<'_>>> = vec![
            vec![blank(1), normal(2, &b), normal(3, &a)],
            vec![blank(1), normal(3, &b)],
            vec![blank(1), normal(2, &a), normal(2, &a), normal(3, &b)],
            vec![blank(1), normal(2, &a), normal(3, &a)],
            vec![Apply { term: 3, ..blank(1) }, normal(2, &a), normal(3, &b)],
            vec![Apply { membership: Some("{}"), ..blank(1) }, normal(2, &a), normal(3, &b)],
        ];
        for variant in variants {
            assert_ne!(chain(&variant), reference, "{variant:?}");
        }
    }

    #[test]
    fn a_node_without_a_chain_starts_at_its_next_blank_entry() {
        let a = record(1);
        assert_eq!(advance(None, &normal(10, &a)), None);
        let started = advance(None, &blank(11)).unwrap();
        assert_eq!(started, ApplyHash { origin: 11, digest: step(&ZERO, &blank(11)) });
        // Two such nodes agree from there on.
        let next = advance(Some(started), &normal(12, &a));
        assert_eq!(next, advance(advance(None, &blank(11)), &normal(12, &a)));
    }

    fn hash(origin: Lsn, byte: u8) -> ApplyHash {
        ApplyHash { origin, digest: [byte; 32] }
    }

    #[test]
    fn recent_compares_within_the_ring_and_origin_only() {
        let recent = Recent::default();
        recent.extend(&[(5, hash(0, 5)), (6, hash(0, 6)), (7, hash(0, 7))]);
        let report = |index, hash| Position { index, hash };
        assert_eq!(recent.compare(report(6, Some(hash(0, 6)))), Comparison::Match);
        assert_eq!(
            recent.compare(report(6, Some(hash(0, 9)))),
            Comparison::Mismatch { ours: hash(0, 6) }
        );
        assert_eq!(recent.compare(report(6, None)), Comparison::NotCompared(Uncompared::NoHash));
        assert_eq!(
            recent.compare(report(4, Some(hash(0, 4)))),
            Comparison::NotCompared(Uncompared::OutsideRing)
        );
        assert_eq!(
            recent.compare(report(8, Some(hash(0, 8)))),
            Comparison::NotCompared(Uncompared::OutsideRing)
        );
        assert_eq!(
            recent.compare(report(7, Some(hash(3, 7)))),
            Comparison::NotCompared(Uncompared::OtherOrigin)
        );
    }

    #[test]
    fn recent_is_bounded_and_replaces_entries_applied_again() {
        let recent = Recent::default();
        let many: Vec<_> = (1..=RECENT as Lsn + 10).map(|i| (i, hash(0, i as u8))).collect();
        recent.extend(&many);
        assert_eq!(recent.get(10), None);
        assert_eq!(recent.get(11), Some(hash(0, 11)));
        let last = RECENT as Lsn + 10;
        recent.extend(&[(last - 1, hash(0, 1))]);
        assert_eq!(recent.get(last - 1), Some(hash(0, 1)));
        assert_eq!(recent.get(last), None);
        // After an install the indexes jump; lookups still find them.
        recent.extend(&[(last + 100, hash(0, 2))]);
        assert_eq!(recent.get(last + 100), Some(hash(0, 2)));
        recent.clear();
        assert_eq!(recent.get(last + 100), None);
    }
}
