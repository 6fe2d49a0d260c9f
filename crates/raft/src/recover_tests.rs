//! Tests of quorum recovery on real log directories: what the rewrite leaves in the log, the
//! refusals, reruns, interrupted runs, and the order of recovered logs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::EntryPayload;

use super::*;

fn addr(id: NodeId) -> MemberAddr {
    MemberAddr::new(format!("10.0.0.{id}:4002"), format!("10.0.0.{id}:4001"))
}

/// A membership of `voters` and `learners`, each at its [`addr`].
fn membership(voters: &[NodeId], learners: &[NodeId]) -> Membership {
    let nodes: BTreeMap<NodeId, MemberAddr> =
        voters.iter().chain(learners).map(|&id| (id, addr(id))).collect();
    Membership::new(vec![voters.iter().copied().collect()], nodes).unwrap()
}

fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
    ids.iter().copied().collect()
}

/// What a test log entry holds.
enum Kind {
    Blank,
    Members(Membership),
}

/// Appends entries `(term, index, kind)` to the log in `dir`.
fn append(dir: &Path, entries: Vec<(Term, u64, Kind)>) {
    let mut log = wal::Log::open(dir, wal::Options::default()).unwrap();
    let frames: Vec<wal::Frame> = entries
        .into_iter()
        .map(|(term, index, kind)| {
            let payload = match kind {
                Kind::Blank => EntryPayload::Blank,
                Kind::Members(m) => EntryPayload::Membership(m),
            };
            encode_entry(&Entry { log_id: LogId::new_term_index(term, index), payload }).unwrap()
        })
        .collect();
    log.append(&frames).unwrap();
}

fn save_vote(dir: &Path, term: Term, node: NodeId) {
    let mut log = wal::Log::open(dir, wal::Options::default()).unwrap();
    log.save_vote(&serde_json::to_vec(&Vote::new(term, node)).unwrap()).unwrap();
}

/// The usual log of a three-voter cluster with a learner: bootstrap membership at index 1,
/// the full membership at 2, blanks through index `last` in term 3.
fn three_voters(dir: &Path, last: u64) {
    let mut entries = vec![
        (1, 1, Kind::Members(membership(&[1], &[]))),
        (1, 2, Kind::Members(membership(&[1, 2, 3], &[4]))),
    ];
    entries.extend((3..=last).map(|index| (3, index, Kind::Blank)));
    append(dir, entries);
    save_vote(dir, 3, 1);
}

/// The log's last entry, decoded.
fn last_entry(dir: &Path) -> Entry {
    let mut log = wal::Log::open(dir, wal::Options::default()).unwrap();
    let (index, _) = log.last().unwrap();
    decode_entry(log.read(index..index + 1).unwrap().remove(0)).unwrap()
}

fn stored_vote(dir: &Path) -> Vote {
    let log = wal::Log::open(dir, wal::Options::default()).unwrap();
    serde_json::from_slice(&log.vote().unwrap()).unwrap()
}

fn rewrite(plan: Plan) -> Rewrite {
    match plan {
        Plan::Recover(rewrite) => rewrite,
        other => panic!("expected a rewrite, got {other:?}"),
    }
}

#[test]
fn the_log_ends_with_the_new_membership_above_every_term() {
    let dir = tempfile::tempdir().unwrap();
    three_voters(dir.path(), 10);

    let plan = rewrite(recover(dir.path(), None, &set(&[1]), true).unwrap());
    assert_eq!(plan.base, LogId::new_term_index(3, 10));
    assert_eq!(plan.entry, LogId::new_term_index(3 + ENTRY_TERM_JUMP, 11));
    assert_eq!(plan.dropped(), vec![2, 3, 4], "unnamed voters and the learner are dropped");

    let entry = last_entry(dir.path());
    assert_eq!(entry.log_id, plan.entry);
    let EntryPayload::Membership(m) = entry.payload else { panic!("not a membership entry") };
    assert_eq!(m, membership(&[1], &[]), "the survivor keeps its addresses, nobody else stays");
    let vote = stored_vote(dir.path());
    assert_eq!(vote.leader_id.term, 3 + ENTRY_TERM_JUMP + VOTE_TERM_JUMP);
    assert!(!vote.is_committed());
    assert!(!dir.path().join(PENDING_FILE).exists());
    refuse_pending(dir.path()).unwrap();
}

#[test]
fn a_rerun_with_the_same_voters_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    three_voters(dir.path(), 5);
    let first = rewrite(recover(dir.path(), None, &set(&[1, 2]), true).unwrap());
    let again = recover(dir.path(), None, &set(&[1, 2]), true).unwrap();
    assert_eq!(again, Plan::Done { entry: first.entry, membership: first.membership });
    assert_eq!(last_entry(dir.path()).log_id, first.entry);
}

#[test]
fn a_rerun_with_other_voters_replaces_the_entry_of_a_node_that_never_led() {
    let dir = tempfile::tempdir().unwrap();
    three_voters(dir.path(), 5);
    let first = rewrite(recover(dir.path(), None, &set(&[1]), true).unwrap());
    // Node 2 is not in the first recovery's membership, but was in the cluster's.
    let second = rewrite(recover(dir.path(), None, &set(&[1, 2]), true).unwrap());
    assert!(second.replaces);
    assert_eq!((second.base, second.entry), (first.base, first.entry), "same place, same term");
    assert_eq!(second.before.membership(), &membership(&[1, 2, 3], &[4]));
    let EntryPayload::Membership(m) = last_entry(dir.path()).payload else { panic!() };
    assert_eq!(m, membership(&[1, 2], &[]));
    assert_eq!(stored_vote(dir.path()), first.vote);
}

#[test]
fn a_rerun_after_the_node_campaigned_stacks_on_top() {
    let dir = tempfile::tempdir().unwrap();
    three_voters(dir.path(), 5);
    let first = rewrite(recover(dir.path(), None, &set(&[1, 2]), true).unwrap());
    // The node started and campaigned (its vote moved on) but nobody else was recovered.
    save_vote(dir.path(), first.vote.leader_id.term + 3, 1);
    let second = rewrite(recover(dir.path(), None, &set(&[1]), true).unwrap());
    assert!(!second.replaces);
    assert_eq!(second.base, first.entry);
    assert_eq!(second.entry.leader_id.term, first.entry.leader_id.term + ENTRY_TERM_JUMP);
    assert_eq!(second.before.membership(), &membership(&[1, 2, 3], &[4]));
    assert!(stored_vote(dir.path()).leader_id.term > second.entry.leader_id.term);
}

#[test]
fn refusals_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    three_voters(dir.path(), 5);
    let err = recover(dir.path(), None, &set(&[1, 9]), true).unwrap_err();
    assert!(matches!(err, Error::NotMember { id: 9, .. }), "{err}");
    assert!(err.to_string().contains("1 (voter), 2 (voter), 3 (voter), 4 (learner)"), "{err}");
    assert!(matches!(recover(dir.path(), None, &set(&[]), true), Err(Error::NoVoters)));
    assert_eq!(last_entry(dir.path()).log_id, LogId::new_term_index(3, 5), "nothing written");

    let empty = tempfile::tempdir().unwrap();
    let err = recover(empty.path(), None, &set(&[1]), true).unwrap_err();
    assert!(matches!(err, Error::NoMembership), "{err}");
    let missing = empty.path().join("nothing-here");
    let err = recover(&missing, None, &set(&[1]), true).unwrap_err();
    assert!(matches!(err, Error::NotDataDir(_)), "{err}");
    assert!(!missing.exists(), "a missing directory is not created");
}

#[test]
fn a_node_that_saw_a_recovered_clusters_term_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    three_voters(dir.path(), 5);
    // Another survivor was recovered and started first; its election reached this node.
    save_vote(dir.path(), 2 + ENTRY_TERM_JUMP + VOTE_TERM_JUMP + 1, 2);
    let err = recover(dir.path(), None, &set(&[1, 2]), true).unwrap_err();
    assert!(matches!(err, Error::SeenRecoveredTerm { .. }), "{err}");
}

#[test]
fn a_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    three_voters(dir.path(), 5);
    let plan = recover(dir.path(), None, &set(&[1]), false).unwrap();
    let described = plan.describe(false);
    assert!(described.contains("would write the new membership at term 8589934595, index 6"));
    assert!(described.contains("dropped:           2, 3, 4"), "{described}");
    assert_eq!(last_entry(dir.path()).log_id, LogId::new_term_index(3, 5));
    assert_eq!(stored_vote(dir.path()).leader_id.term, 3);
}

#[test]
fn an_interrupted_run_blocks_start_and_is_resumed() {
    let dir = tempfile::tempdir().unwrap();
    three_voters(dir.path(), 5);
    // Cut short after the pending file, the vote and the entry: the last step (removing the
    // pending file) did not happen.
    let plan = rewrite(recover(dir.path(), None, &set(&[1]), false).unwrap());
    let mut log = wal::Log::open(dir.path(), wal::Options::default()).unwrap();
    write_pending(dir.path(), &Pending { base: plan.base, voters: set(&[1]) }).unwrap();
    log.save_vote(&serde_json::to_vec(&plan.vote).unwrap()).unwrap();
    let entry = Entry { log_id: plan.entry, payload: EntryPayload::Membership(plan.membership) };
    log.append(&[encode_entry(&entry).unwrap()]).unwrap();
    drop(log);

    assert!(matches!(refuse_pending(dir.path()), Err(Error::Pending(_))));
    // Resumed with other voters: the interrupted run's entry is replaced, at the same place.
    let resumed = rewrite(recover(dir.path(), None, &set(&[1, 2]), true).unwrap());
    assert!(resumed.resumed);
    assert_eq!((resumed.base, resumed.entry), (plan.base, plan.entry));
    assert!(!resumed.save_vote, "the vote was saved already");
    let EntryPayload::Membership(m) = last_entry(dir.path()).payload else { panic!() };
    assert_eq!(m, membership(&[1, 2], &[]));
    refuse_pending(dir.path()).unwrap();
}

#[test]
fn the_database_membership_counts_when_the_log_has_none() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), (1..=4).map(|index| (2, index, Kind::Blank)).collect());
    let stored =
        StoredMembership::new(Some(LogId::new_term_index(1, 0)), membership(&[1, 2, 3], &[]));
    // The database applied through index 7, past the log's end (a snapshot was installed).
    let applied = wal::Applied {
        term: 2,
        index: 7,
        membership: Some(serde_json::to_string(&stored).unwrap()),
    };
    let plan = rewrite(recover(dir.path(), Some(&applied), &set(&[3]), true).unwrap());
    assert!(plan.purge);
    assert_eq!(plan.base, LogId::new_term_index(2, 7));
    assert_eq!(plan.entry.index, 8);
    let log = wal::Log::open(dir.path(), wal::Options::default()).unwrap();
    assert_eq!(log.last_purged(), Some((7, 2)));
    assert_eq!(log.first_index(), Some(8));
}

/// Two survivors with different logs: the recovered logs compare as the originals did, so the
/// one that must win (the more up-to-date in Raft's order) still wins.
#[test]
fn recovered_logs_keep_the_order_of_the_originals() {
    let found = |term: Term, index: u64| Found {
        last: Some(LogId::new_term_index(term, index)),
        before: StoredMembership::new(
            Some(LogId::new_term_index(1, 1)),
            membership(&[1, 2, 3], &[]),
        ),
        vote: Some(Vote::new(term + 2, 1)),
        ..Found::default()
    };
    let entry = |term, index| rewrite(plan(&found(term, index), &set(&[1, 2])).unwrap()).entry;
    let cases = [((5, 10), (4, 12)), ((5, 10), (5, 9)), ((7, 3), (6, 300))];
    for (higher, lower) in cases {
        assert!(entry(higher.0, higher.1) > entry(lower.0, lower.1), "{higher:?} vs {lower:?}");
    }
    // Every recovered node campaigns above every survivor's recovery entry.
    let lowest = rewrite(plan(&found(1, 2), &set(&[1, 2])).unwrap());
    let highest = rewrite(plan(&found(1_000_000, 2), &set(&[1, 2])).unwrap());
    assert!(lowest.vote.leader_id.term > highest.entry.leader_id.term);
}
