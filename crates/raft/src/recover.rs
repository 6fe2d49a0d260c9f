//! Quorum recovery: rewriting a stopped node's Raft log so that the survivors of a cluster that
//! lost its voter majority for good can elect a leader again (`keel admin recover`).
//!
//! Raft changes its membership only through a quorum of the old one, so a cluster that lost most
//! of its voters is stuck: no leader, no writes, no membership change. Recovery does offline, on
//! each survivor, what the cluster can no longer do: it appends to the node's log a membership
//! entry naming only the given voters (a *recovery entry*), at a log id after everything the node
//! holds, and moves the node's vote above it. At start openraft takes the last membership entry
//! of the log as the effective membership even if it is not committed
//! (`StorageHelper::get_membership`), so the node campaigns among the given voters only; the
//! winner's first entry as leader (a blank) commits the recovery entry and everything before it.
//! The same idea as etcd's `--force-new-cluster` and hashicorp raft's `RecoverCluster`; the
//! argument for why it is sound is in docs/architecture.md ("Quorum recovery").
//!
//! # How data flows
//!
//! [`recover`] opens the log ([`wal::Log`]), and [`inspect`] reads what a decision needs into a
//! [`Found`]: where the log ends, the stored vote, the membership in effect before any recovery
//! (from the log, or from the database's applied position that the caller read with the `sql`
//! crate), the last entry's membership, and the pending file of an interrupted recovery.
//! [`plan`] (pure) turns that and the voters into a [`Plan`]; [`Rewrite::carry_out`] writes it.
//!
//! # Terms
//!
//! The recovery entry's term is the base's term (the log id it follows) plus [`ENTRY_TERM_JUMP`]
//! (2^33); the vote's term is that plus [`VOTE_TERM_JUMP`] (2^32). The entry's term is above any
//! term the cluster used, and every recovered node campaigns above every survivor's recovery
//! term, so no leader ever writes at a recovery term, and the recovered logs compare as the
//! original ones did (the longest, in Raft's order, wins). Both need only that the terms of one
//! cluster's nodes lie within 2^32 of each other (four billion elections).
//!
//! # Crash safety
//!
//! Before changing anything, [`Rewrite::carry_out`] writes the pending file (`recovery.json`
//! in the log's directory: the base log id and the voters; temporary file, fsync, rename,
//! directory fsync). Then, each step durable before the next: purge the log through the base if
//! the database has applied beyond the log's end (what openraft would do at start), save the
//! vote, cut anything after the base (a recovery entry of the interrupted run), append the
//! recovery entry, and remove the pending file. A rerun with the pending file resumes from its
//! base, and `keel serve` refuses to start while it exists ([`refuse_pending`]), so a node never
//! runs on a half-done recovery. A rerun after a complete one finds the log ending with a
//! membership of exactly the given voters and writes nothing ([`Plan::Done`]); with other
//! voters, it replaces the earlier run's entry at the same place if the node has not led since
//! (its vote is still the one recovery stored), and otherwise stacks a new recovery on top.
//!
//! # What it deliberately does not do
//!
//! - It does not know whose data directory it works on, nor whether that node runs: the caller
//!   holds the data directory's lock, which `keel serve` holds while it runs.
//! - Learners and the voters not named are dropped from the membership, not kept: a learner or
//!   a dead voter may hold entries beyond the survivors' logs, applied already, that the
//!   recovered cluster would overwrite. They come back as new nodes, with empty data.
//! - It sends nothing over the network: every survivor named is recovered by hand, with the
//!   same voters, before any of them starts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::Path;

use openraft::EntryPayload;
use serde::{Deserialize, Serialize};

use crate::log_store::{MEMBERSHIP, decode_entry, encode_entry};
use crate::types::{Entry, LogId, MemberAddr, NodeId, StoredMembership, Term, Vote};

/// A membership configuration with Keel's node ids and addresses.
pub type Membership = openraft::Membership<NodeId, MemberAddr>;

/// How far above the term of the log id it follows a recovery entry is written: above any term
/// the cluster used, so no other entry has its log id.
pub const ENTRY_TERM_JUMP: Term = 1 << 33;

/// How far above its recovery entry's term a recovered node's vote is moved: every recovered
/// node then campaigns above every survivor's recovery term.
pub const VOTE_TERM_JUMP: Term = 1 << 32;

/// The file, in the log's directory, that records a recovery under way.
pub const PENDING_FILE: &str = "recovery.json";

/// Entries read at a time while looking back for a membership entry.
const SCAN_CHUNK: u64 = 64;

/// Why a recovery was refused or failed. The messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory holds no Raft log.
    #[error(
        "{0} does not exist: this is not a Keel data directory (give the directory of `keel serve --data-dir`)"
    )]
    NotDataDir(String),
    /// The node never founded or joined a cluster.
    #[error(
        "this data directory holds no cluster membership: the node never founded or joined a cluster, so there is nothing to recover"
    )]
    NoMembership,
    /// `--voters` named nobody.
    #[error("name at least one voter")]
    NoVoters,
    /// A voter named is not a member of the cluster the node knows.
    #[error(
        "node {id} is not a member of this node's cluster (members: {members}); name only members, whose addresses the membership holds"
    )]
    NotMember {
        /// The id named.
        id: NodeId,
        /// The members, for the message.
        members: String,
    },
    /// The node has seen a term at or above the one its recovery would use: a recovered cluster
    /// already ran and reached it.
    #[error(
        "this node has seen term {seen}, at or above the recovery term {term}: it took part in an election of a cluster recovered before it. Do not recover it: delete its data directory and add it to that cluster as a new node"
    )]
    SeenRecoveredTerm {
        /// The stored vote's term.
        seen: Term,
        /// The term the recovery entry would have.
        term: Term,
    },
    /// A recovery was interrupted; the node must not start before it is finished.
    #[error(
        "a recovery of this data directory was interrupted ({0} exists): run `keel admin recover` on it again, with the voters you meant, before starting the node"
    )]
    Pending(String),
    /// Stored state that cannot be read or does not fit together.
    #[error("{0}")]
    Invalid(String),
    /// The log failed.
    #[error("write-ahead log: {0}")]
    Wal(#[from] wal::Error),
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// What a node's storage holds, as [`plan`] needs it ([`inspect`] reads it).
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Where the log ends: its last entry, or its purge point once everything is purged.
    pub last: Option<LogId>,
    /// The last entry's membership, if the log ends with a membership entry.
    pub last_membership: Option<Membership>,
    /// The database's applied position.
    pub applied: Option<LogId>,
    /// The membership in effect before any recovery: the later of the log's last membership
    /// entry that is not a recovery entry and the database's applied membership.
    pub before: StoredMembership,
    /// The stored vote.
    pub vote: Option<Vote>,
    /// The base of an interrupted recovery, from its pending file.
    pub pending: Option<LogId>,
    /// If the log ends with a recovery entry: the log id before it (that run's base).
    pub trailing: Option<LogId>,
}

/// What a recovery does, decided by [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The log already ends with a membership entry naming exactly these voters: nothing to do.
    Done {
        /// That entry's log id.
        entry: LogId,
        /// Its membership.
        membership: Membership,
    },
    /// Write a recovery.
    Recover(Rewrite),
}

/// The writes of a recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The membership in effect before the recovery.
    pub before: StoredMembership,
    /// The new membership: the voters named, with their addresses, and nobody else.
    pub membership: Membership,
    /// The log id the recovery entry follows: where the log ends (or the database's applied
    /// position, if beyond it).
    pub base: LogId,
    /// Whether the log must first be purged through `base`, because the database has applied
    /// entries beyond the log's end (openraft does the same at start).
    pub purge: bool,
    /// The recovery entry's log id.
    pub entry: LogId,
    /// The vote to store.
    pub vote: Vote,
    /// Whether the stored vote is below `vote` and must be replaced.
    pub save_vote: bool,
    /// Whether this resumes an interrupted recovery.
    pub resumed: bool,
    /// Whether this replaces the recovery entry of an earlier run, which the node never sent
    /// (its vote is still the one that run stored).
    pub replaces: bool,
}

/// The pending file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    /// The log id the recovery entry follows.
    base: LogId,
    /// The voters of that run (for a person reading the file).
    voters: BTreeSet<NodeId>,
}

/// Recovers the node whose log is in `raft_dir` (the data directory's `raft/`) so that it can
/// elect a leader among `voters`, or with `write == false` only says what it would do.
/// `applied` is the database's applied position (`sql::Db::applied`). The caller must hold the
/// data directory's lock.
pub fn recover(
    raft_dir: &Path,
    applied: Option<&wal::Applied>,
    voters: &BTreeSet<NodeId>,
    write: bool,
) -> Result<Plan> {
    if !raft_dir.is_dir() {
        return Err(Error::NotDataDir(raft_dir.display().to_string()));
    }
    let mut log = wal::Log::open(raft_dir, wal::Options::default())?;
    let found = inspect(&mut log, raft_dir, applied)?;
    let plan = plan(&found, voters)?;
    if write && let Plan::Recover(rewrite) = &plan {
        rewrite.carry_out(&mut log, raft_dir)?;
    }
    Ok(plan)
}

/// Fails with [`Error::Pending`] if a recovery of the log in `raft_dir` was interrupted: a node
/// must not start on a half-done recovery.
pub fn refuse_pending(raft_dir: &Path) -> Result<()> {
    let path = raft_dir.join(PENDING_FILE);
    if path.exists() {
        return Err(Error::Pending(path.display().to_string()));
    }
    Ok(())
}

/// Decides what a recovery to `voters` does, from what the storage holds.
pub fn plan(found: &Found, voters: &BTreeSet<NodeId>) -> Result<Plan> {
    let Some(&lowest) = voters.first() else { return Err(Error::NoVoters) };
    let before = found.before.membership();
    if before.voter_ids().next().is_none() {
        return Err(Error::NoMembership);
    }
    if found.pending.is_none()
        && let (Some(entry), Some(membership)) = (found.last, &found.last_membership)
        && names_exactly(membership, voters)
    {
        return Ok(Plan::Done { entry, membership: membership.clone() });
    }
    let membership = new_membership(before, voters)?;
    let purge = found.applied.is_some_and(|a| found.last.is_none_or(|l| a.index > l.index));
    let replaces = found.pending.is_none() && replaceable(found);
    let base = match (found.pending, found.trailing) {
        (Some(base), _) => check_resumable(found, base)?,
        (None, Some(base)) if replaces => base,
        (None, _) if purge => found.applied.ok_or(Error::NoMembership)?,
        (None, _) => found.last.ok_or(Error::NoMembership)?,
    };
    let overflow = || Error::Invalid(format!("the log's term {} is too high", base.leader_id.term));
    let entry_term = base.leader_id.term.checked_add(ENTRY_TERM_JUMP).ok_or_else(overflow)?;
    let vote_term = entry_term.checked_add(VOTE_TERM_JUMP).ok_or_else(overflow)?;
    let seen = found.vote.as_ref().map_or(0, |v| v.leader_id.term);
    if found.pending.is_none() && !replaces && seen >= entry_term {
        return Err(Error::SeenRecoveredTerm { seen, term: entry_term });
    }
    Ok(Plan::Recover(Rewrite {
        before: found.before.clone(),
        membership,
        base,
        purge,
        entry: LogId::new_term_index(entry_term, base.index + 1),
        vote: Vote::new(vote_term, lowest),
        save_vote: seen < vote_term,
        resumed: found.pending.is_some(),
        replaces,
    }))
}

/// Whether the recovery entry the log ends with may be replaced: the node's vote is still the
/// one that recovery stored (its term, not committed), so the node never led since, and only a
/// leader sends its entries; nobody else has it.
fn replaceable(found: &Found) -> bool {
    let (Some(last), Some(_), Some(vote)) = (found.last, found.trailing, &found.vote) else {
        return false;
    };
    last.leader_id.term.checked_add(VOTE_TERM_JUMP) == Some(vote.leader_id.term)
        && !vote.is_committed()
}

/// Whether `membership` is one configuration of exactly `voters`, without learners.
fn names_exactly(membership: &Membership, voters: &BTreeSet<NodeId>) -> bool {
    membership.get_joint_config().as_slice() == std::slice::from_ref(voters)
        && membership.learner_ids().next().is_none()
}

/// The recovered membership: `voters`, each with its address in `before`.
fn new_membership(before: &Membership, voters: &BTreeSet<NodeId>) -> Result<Membership> {
    let mut nodes = BTreeMap::new();
    for &id in voters {
        let Some(addr) = before.get_node(&id) else {
            return Err(Error::NotMember { id, members: describe_members(before) });
        };
        nodes.insert(id, addr.clone());
    }
    Membership::new(vec![voters.clone()], nodes).map_err(|e| Error::Invalid(e.to_string()))
}

/// An interrupted recovery's base, if the log is where that run could have left it: at the
/// base, just past it with the recovery entry, or short of it with the purge still to do.
fn check_resumable(found: &Found, base: LogId) -> Result<LogId> {
    let last = found.last.map_or(0, |l| l.index);
    let purge_left = found.applied == Some(base) && last < base.index;
    if last == base.index || last == base.index + 1 || purge_left {
        return Ok(base);
    }
    Err(Error::Invalid(format!(
        "an interrupted recovery after index {} is pending, but the log now ends at index {last}; \
         the data directory was changed by something else: restore it or rebuild the node",
        base.index
    )))
}

/// `1 (voter), 4 (learner)`, for messages.
fn describe_members(membership: &Membership) -> String {
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let described: Vec<String> = membership
        .nodes()
        .map(|(id, _)| {
            let role = if voters.contains(id) { "voter" } else { "learner" };
            format!("{id} ({role})")
        })
        .collect();
    if described.is_empty() { "none".to_string() } else { described.join(", ") }
}

/// Reads what [`plan`] needs from the open log, its directory and the database's applied
/// position.
pub fn inspect(
    log: &mut wal::Log,
    raft_dir: &Path,
    applied: Option<&wal::Applied>,
) -> Result<Found> {
    let last = log.last().map(|(index, term)| LogId::new_term_index(term, index));
    let vote = log.vote().map(|bytes| from_json::<Vote>(&bytes, "vote")).transpose()?;
    let pending = read_pending(raft_dir)?.map(|p| p.base);
    let last_entry = log.first_index().and(last).map(|l| l.index);
    let last_membership = match last_entry {
        Some(index) => membership_at(log, index)?.map(|stored| stored.membership().clone()),
        None => None,
    };
    // Entries after an interrupted run's base are that run's own.
    let scan_end = match (pending, last_entry) {
        (Some(base), Some(last)) => Some(base.index.min(last)),
        (_, last) => last,
    };
    let in_log = match scan_end {
        Some(end) => last_membership_before(log, end)?,
        None => None,
    };
    let in_db = match applied.and_then(|a| a.membership.as_deref()) {
        Some(json) => from_json::<StoredMembership>(json.as_bytes(), "applied membership")?,
        None => StoredMembership::default(),
    };
    let before = match in_log {
        Some(in_log) if in_log.log_id() >= in_db.log_id() => in_log,
        _ => in_db,
    };
    let trailing = match last_entry {
        Some(index) if is_recovery_entry(log, index)? => {
            let previous = index - 1;
            log.term_at(previous).map(|term| LogId::new_term_index(term, previous))
        }
        _ => None,
    };
    let applied = applied.map(|a| LogId::new_term_index(a.term, a.index));
    Ok(Found { last, last_membership, applied, before, vote, pending, trailing })
}

/// The membership of the entry at `index`, if it is a membership entry.
fn membership_at(log: &mut wal::Log, index: u64) -> Result<Option<StoredMembership>> {
    let frames = log.read(index..index + 1)?;
    Ok(frames.into_iter().next().and_then(|frame| membership_of(frame).transpose()).transpose()?)
}

/// Decodes `frame` if it holds a membership entry.
fn membership_of(frame: wal::Frame) -> io::Result<Option<StoredMembership>> {
    if frame.payload.first() != Some(&MEMBERSHIP) {
        return Ok(None);
    }
    let entry: Entry = decode_entry(frame)?;
    match entry.payload {
        EntryPayload::Membership(m) => Ok(Some(StoredMembership::new(Some(entry.log_id), m))),
        _ => Ok(None),
    }
}

/// The last membership entry at or before `end` that is not one of the recovery entries the log
/// ends with (those name the voters of earlier runs; the members and addresses to recover from
/// are the cluster's before any of them).
fn last_membership_before(log: &mut wal::Log, mut end: u64) -> Result<Option<StoredMembership>> {
    let Some(first) = log.first_index() else { return Ok(None) };
    while end >= first && is_recovery_entry(log, end)? {
        let Some(previous) = end.checked_sub(1) else { return Ok(None) };
        end = previous;
    }
    let mut high = end.saturating_add(1);
    while high > first {
        let low = high.saturating_sub(SCAN_CHUNK).max(first);
        for frame in log.read(low..high)?.into_iter().rev() {
            if let Some(stored) = membership_of(frame)? {
                return Ok(Some(stored));
            }
        }
        high = low;
    }
    Ok(None)
}

/// Whether the entry at `index` is a recovery entry: a membership entry whose term is the term
/// before it plus [`ENTRY_TERM_JUMP`].
fn is_recovery_entry(log: &mut wal::Log, index: u64) -> Result<bool> {
    let previous = index.checked_sub(1).and_then(|p| log.term_at(p));
    let (Some(term), Some(previous)) = (log.term_at(index), previous) else { return Ok(false) };
    Ok(previous.checked_add(ENTRY_TERM_JUMP) == Some(term) && membership_at(log, index)?.is_some())
}

impl Rewrite {
    /// Writes the recovery into the open log `log` in `raft_dir`, each step durable before the
    /// next (see the module docs, "Crash safety").
    pub fn carry_out(&self, log: &mut wal::Log, raft_dir: &Path) -> Result<()> {
        let voters: BTreeSet<NodeId> = self.membership.voter_ids().collect();
        write_pending(raft_dir, &Pending { base: self.base, voters })?;
        if self.purge {
            log.purge_through(self.base.index, self.base.leader_id.term)?;
        }
        if self.save_vote {
            log.save_vote(&serde_json::to_vec(&self.vote).map_err(io::Error::other)?)?;
        }
        log.truncate_after(Some(self.base.index))?;
        let entry = Entry {
            log_id: self.entry,
            payload: EntryPayload::Membership(self.membership.clone()),
        };
        log.append(&[encode_entry(&entry)?])?;
        remove_pending(raft_dir)
    }

    /// The members before the recovery that the new membership leaves out.
    pub fn dropped(&self) -> Vec<NodeId> {
        let kept: BTreeSet<NodeId> = self.membership.voter_ids().collect();
        self.before.nodes().map(|(id, _)| *id).filter(|id| !kept.contains(id)).collect()
    }
}

impl Plan {
    /// What the plan does (or did, if `written`), in lines for a person.
    pub fn describe(&self, written: bool) -> String {
        let rewrite = match self {
            Plan::Done { entry, membership } => {
                return format!(
                    "nothing to do: the log already ends with a membership of exactly these voters \
                     (term {}, index {}): {}\n",
                    entry.leader_id.term,
                    entry.index,
                    describe_addresses(membership)
                );
            }
            Plan::Recover(rewrite) => rewrite,
        };
        let mut out = String::new();
        let before = &rewrite.before;
        let at = before.log_id().map_or(String::new(), |id| {
            format!(" (entry at term {}, index {})", id.leader_id.term, id.index)
        });
        let _ = writeln!(out, "membership before: {}{at}", describe_members(before.membership()));
        let _ = writeln!(out, "new membership:    {}", describe_addresses(&rewrite.membership));
        let dropped: Vec<String> = rewrite.dropped().iter().map(|id| id.to_string()).collect();
        if !dropped.is_empty() {
            let _ = writeln!(out, "dropped:           {}", dropped.join(", "));
        }
        let (verb, vote) = if written { ("wrote", "moved") } else { ("would write", "would move") };
        if rewrite.resumed {
            let _ = writeln!(out, "resuming an interrupted recovery");
        }
        if rewrite.replaces {
            let _ = writeln!(
                out,
                "replacing the membership an earlier recovery wrote (the node has not led since)"
            );
        }
        let base = &rewrite.base;
        let _ = writeln!(
            out,
            "log position: the log ends at term {}, index {}; {verb} the new membership at term {}, index {}",
            base.leader_id.term, base.index, rewrite.entry.leader_id.term, rewrite.entry.index
        );
        if rewrite.purge {
            let _ = writeln!(
                out,
                "the database has applied through index {}, past the log's end: the log is purged through it first",
                base.index
            );
        }
        let _ = writeln!(out, "vote: {vote} to term {}", rewrite.vote.leader_id.term);
        out
    }
}

/// `1 (raft 10.0.0.1:4002, http 10.0.0.1:4001), 2 (…)`, for messages.
fn describe_addresses(membership: &Membership) -> String {
    let described: Vec<String> = membership
        .voter_ids()
        .map(|id| match membership.get_node(&id) {
            Some(addr) => format!("{id} (raft {}, http {})", addr.raft_addr, addr.http_addr),
            None => id.to_string(),
        })
        .collect();
    format!("voters {}", described.join(", "))
}

/// Decodes a JSON value stored beside the log or in the database.
fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Invalid(format!("the stored {what} is not valid: {e}")))
}

/// Reads the pending file, if any.
fn read_pending(raft_dir: &Path) -> Result<Option<Pending>> {
    match fs::read(raft_dir.join(PENDING_FILE)) {
        Ok(bytes) => Ok(Some(from_json(&bytes, "pending recovery")?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes the pending file durably: temporary file, fsync, rename, directory fsync.
fn write_pending(raft_dir: &Path, pending: &Pending) -> Result<()> {
    let tmp = raft_dir.join(format!("{PENDING_FILE}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(pending).map_err(io::Error::other)?)?;
    file.sync_all()?;
    fs::rename(&tmp, raft_dir.join(PENDING_FILE))?;
    fs::File::open(raft_dir)?.sync_all()?;
    Ok(())
}

/// Removes the pending file durably.
fn remove_pending(raft_dir: &Path) -> Result<()> {
    fs::remove_file(raft_dir.join(PENDING_FILE))?;
    fs::File::open(raft_dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
#[path = "recover_tests.rs"]
mod tests;
