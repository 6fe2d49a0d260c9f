//! The leader keeps its speculations: the writer's transaction stays open until Raft commits
//! its records, and is then committed instead of applying the records' changesets again.
//!
//! [`Db::execute_held`] speculates a group of requests and leaves the transaction open on the
//! client connection: it holds exactly the effect of the group's record on the applied state
//! (`base`). [`Db::execute_stacked`] speculates the next group on top of it, in the same
//! transaction (inside a savepoint), while the first record replicates: its changeset is
//! computed against the first group's effects, which is the state it will be applied to,
//! since the writer proposes it right after the first in the same term. The transaction then
//! holds a stack of records, in proposal order.
//!
//! [`Db::apply`] matches the entries it is handed against the stack: the entry at `base + 1`,
//! in the stack's term, carrying the first record; then `base + 2` carrying the second; and so
//! on. A matched entry is committed by Raft, but SQLite cannot commit part of a transaction:
//! it is *deferred* until the whole stack is matched, and the transaction is then committed
//! once, with every entry's answers and the applied position and apply hash of the last,
//! exactly as `apply` would have written them. Until then the applied position does not move
//! and readers (their own connections, WAL snapshots) see none of it, so nobody sees a row
//! before the commit that makes it durable on this node too; the writer answers a group's
//! clients only once the applied position covers its entry.
//!
//! Anything else rolls the transaction back: an entry that does not match (another leader's,
//! a membership change, a blank entry), any other use of the client connection, an install,
//! a table check's pin between two stacked entries, or the writer giving up on the stack
//! ([`Db::release_held`], when a stacked record may never commit). The deferred entries are
//! then applied from their records first, on the apply connection, the path every follower
//! takes, and so is every later one. Every one of these cases thus ends in the state the log
//! describes; the held transaction is only a faster way to the same state.
//!
//! The counters a later statement that writes no rows reports (`last_insert_rowid`, `changes`)
//! are those the last stacked speculation left; the commit's bookkeeping writes are undone
//! from them (see `hold` in `speculation`).

use std::collections::BTreeMap;

use wal::{Lsn, Record, Term};

use super::speculation::{Failure, Speculation, Speculator, assemble, runnable};
use super::{Db, internal, set_last_insert_rowid};
use crate::WriteRequest;
use crate::answers;
use crate::error::Result;
use crate::meta::{self, Apply};

/// The savepoint a stacked speculation runs in, inside the held transaction.
const STACK_BEGIN: &str = "SAVEPOINT keel_stack";
/// Undoes a stacked speculation that produced nothing to propose.
const STACK_ROLLBACK: &str = "ROLLBACK TO keel_stack";
/// Keeps a stacked speculation in the held transaction.
const STACK_RELEASE: &str = "RELEASE keel_stack";

/// Speculations left open on the client connection: the transaction holds exactly the effect
/// of `records`, in order, on the state at `base`.
#[derive(Debug)]
pub(super) struct Held {
    /// The term the writer proposes the records in.
    term: Term,
    /// The applied index the first speculation ran on.
    base: Lsn,
    /// The records, in proposal order; the n-th (from 0) is expected at `base + 1 + n`.
    records: Vec<Record>,
    /// How many of them `apply` has been handed already (committed by Raft, not yet here).
    matched: usize,
}

impl Held {
    /// One speculation's record, to be proposed in `term`, on the state at `base`.
    pub(super) fn new(term: Term, base: Lsn, record: Record) -> Held {
        Held { term, base, records: vec![record], matched: 0 }
    }

    /// The entries `apply` has been handed and deferred, as it would have applied them.
    pub(super) fn deferred(&self) -> Vec<Apply<'_>> {
        self.entries(self.matched)
    }

    /// The first `n` held records as the entries that carry them.
    fn entries(&self, n: usize) -> Vec<Apply<'_>> {
        (0..n)
            .map(|i| Apply {
                term: self.term,
                index: self.base + 1 + i as Lsn,
                record: Some(&self.records[i]),
                membership: None,
            })
            .collect()
    }

    /// Whether `entry` is the next held record's entry.
    fn is_next(&self, entry: &Apply<'_>) -> bool {
        let next = self.matched;
        next < self.records.len()
            && entry.index == self.base + 1 + next as Lsn
            && entry.term == self.term
            && entry.membership.is_none()
            && entry.record == Some(&self.records[next])
    }
}

/// What [`Db::take_held`] did with the front of an apply's entries.
pub(super) enum Taken {
    /// It took this many entries (matched, or committed with the whole stack).
    Entries(usize),
    /// The held transaction is rolled back: the entries it had matched (`held`'s deferred
    /// ones, some perhaps from this apply's front) must be applied from their records, then
    /// the entries from `taken` on.
    RolledBack {
        /// What was held.
        held: Held,
        /// How many entries of this apply were among the matched ones.
        taken: usize,
    },
}

impl Db {
    /// Speculates `requests` on top of the held transaction (see the module docs) for the
    /// writer, which proposes the record in `term` right after the records already held. The
    /// record's changeset is computed against their effects.
    ///
    /// `Ok(None)` when there is nothing to stack on in `term` (no held transaction: it was
    /// committed or rolled back meanwhile), when a request repeats a request id of a held
    /// record, or when a statement ended the whole transaction: the caller then waits until
    /// its proposed records are applied and speculates afresh ([`Db::execute_held`]). A
    /// speculation that changed nothing is undone and the stack stays as it was. One whose
    /// last statement left more than one change cannot be held (see `hold`): the whole
    /// transaction is rolled back, so every record of it is applied from its changesets,
    /// this one included; the record is still valid to propose.
    pub fn execute_stacked(
        &mut self,
        requests: &[WriteRequest],
        term: Term,
    ) -> Result<Option<Speculation>> {
        let Some(mut held) = self.held.take() else { return Ok(None) };
        if self.conn.is_autocommit() {
            return Ok(None);
        }
        let repeats = requests
            .iter()
            .filter_map(|r| r.request_id.as_deref())
            .any(|id| held.records.iter().any(|record| record.requests.iter().any(|a| a.id == id)));
        if held.term != term || held.matched > 0 || repeats {
            self.held.set(Some(held));
            return Ok(None);
        }
        let prepared: Result<Vec<_>> = self.prepare_connection().and_then(|()| self.plan(requests));
        let plans = match prepared {
            Ok(plans) => plans,
            Err(error) => {
                self.end_transaction();
                return Err(error);
            }
        };
        let run = runnable(requests, &plans);
        let last_rowid = self.conn.last_insert_rowid();
        let outcome =
            Speculator::run(self.checks(), &self.conn, STACK_BEGIN, &run, &BTreeMap::new());
        let attempt = match outcome {
            Ok(attempt) => attempt,
            Err(Failure::EndedTransaction { .. }) => {
                self.end_transaction();
                set_last_insert_rowid(&self.conn, last_rowid);
                return Ok(None);
            }
            Err(Failure::Fatal(error)) => {
                self.end_transaction();
                return Err(error);
            }
        };
        let speculation = assemble(requests, plans, attempt);
        let record = &speculation.record;
        let kept = if record.ops.is_empty() && record.requests.is_empty() {
            internal(&self.conn, STACK_ROLLBACK).and_then(|()| internal(&self.conn, STACK_RELEASE))
        } else if self.conn.changes() > 1 {
            self.end_transaction();
            return Ok(Some(speculation));
        } else {
            internal(&self.conn, STACK_RELEASE).map(|()| held.records.push(record.clone()))
        };
        match kept {
            Ok(()) => self.held.set(Some(held)),
            Err(error) => {
                tracing::warn!(%error, "ending a stacked speculation; the held records are applied from their changesets");
                self.end_transaction();
            }
        }
        Ok(Some(speculation))
    }

    /// For the writer, when a held record may not commit soon (its proposal failed or timed
    /// out): rolls the held transaction back, after applying from their records the entries
    /// `apply` was handed and deferred, so the applied position covers everything Raft has
    /// committed. Records not yet handed to `apply` are applied from their changesets when
    /// they are.
    pub fn release_held(&mut self) -> Result<()> {
        let Some(held) = self.held.take() else { return Ok(()) };
        self.end_transaction();
        self.apply_entries(&held.deferred())
    }

    /// For [`Db::apply`]: matches the front of `entries` against the held records. Takes the
    /// entries that match, committing the transaction when the whole stack has matched; rolls
    /// it back at the first entry that does not match.
    pub(super) fn take_held(&mut self, entries: &[Apply<'_>]) -> Taken {
        let Some(mut held) = self.held.take() else { return Taken::Entries(0) };
        let mut taken = 0;
        if self.conn.is_autocommit() {
            return Taken::RolledBack { held, taken };
        }
        for entry in entries {
            if !held.is_next(entry) {
                break;
            }
            held.matched += 1;
            taken += 1;
            if held.matched == held.records.len() {
                // A table check wants the state between two of them, which this commit skips.
                let inner = (1..held.records.len()).map(|i| held.base + i as Lsn);
                if self.pins.split_at(inner).is_some() {
                    self.end_transaction();
                    return Taken::RolledBack { held, taken };
                }
                return match self.commit_held(&held) {
                    Ok(()) => Taken::Entries(taken),
                    Err(error) => {
                        tracing::warn!(%error, index = entry.index, "committing the leader's speculation failed; applying its records instead");
                        self.end_transaction();
                        Taken::RolledBack { held, taken }
                    }
                };
            }
        }
        if taken < entries.len() {
            // Something else comes next.
            self.end_transaction();
            return Taken::RolledBack { held, taken };
        }
        self.held.set(Some(held));
        Taken::Entries(taken)
    }

    /// Commits the held transaction as the apply of every held record's entry, writing what
    /// applying them would have written: their answers, and the position and apply hash after
    /// the last.
    fn commit_held(&mut self, held: &Held) -> Result<()> {
        let entries = held.entries(held.records.len());
        // What the client statements left in the connection's counters, which the next
        // speculation's results show (see `speculation`): the bookkeeping writes below change
        // both, and are undone (`hold` kept only speculations that left at most 1 change).
        let (rowid, changes) = (self.conn.last_insert_rowid(), self.conn.changes());
        let chain = self.chain_to_extend();
        for entry in &entries {
            let requests = entry.record.map_or(&[][..], |r| &r.requests);
            answers::store(&self.conn, entry.index, requests)?;
            answers::prune(&self.conn, entry.index)?;
        }
        let recorded = meta::write_applied(&self.conn, chain, &entries)?;
        if changes == 0 {
            internal(&self.conn, "UPDATE _keel_meta SET idx = idx WHERE 0")?;
        }
        set_last_insert_rowid(&self.conn, rowid);
        internal(&self.conn, "COMMIT")?;
        let last = entries.last().map_or(held.base, |e| e.index);
        self.held_commits += entries.len() as u64;
        self.chain = recorded.chain;
        self.recent.extend(&recorded.hashes);
        self.committed(last);
        Ok(())
    }
}
