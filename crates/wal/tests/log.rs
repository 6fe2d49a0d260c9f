//! Tests of `wal::Log` through its public API, on real files in temporary directories.
//!
//! The crash tests damage segment files by hand (truncating or flipping bytes), then reopen, the
//! way a power cut or a bad disk would leave them.

use std::fs;
use std::path::{Path, PathBuf};

use wal::{Error, Frame, Log, Lsn, Options, Term};

/// A frame whose payload identifies it, of a length that varies with the index.
fn frame(term: Term, index: Lsn) -> Frame {
    let payload =
        format!("entry {index} of term {term}: {}", "x".repeat((index % 7) as usize)).into_bytes();
    Frame { term, index, payload }
}

/// Frames `range` with term `term`.
fn frames(term: Term, range: std::ops::RangeInclusive<Lsn>) -> Vec<Frame> {
    range.map(|index| frame(term, index)).collect()
}

fn open(dir: &Path) -> Log {
    Log::open(dir, Options::default()).unwrap()
}

/// Options that put every append into its own segment after the first few bytes.
fn tiny() -> Options {
    Options { segment_bytes: 100, ..Options::default() }
}

fn all(log: &mut Log) -> Vec<Frame> {
    log.read(0..Lsn::MAX).unwrap()
}

/// The segment files in `dir`, in order.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths
}

fn segment_names(dir: &Path) -> Vec<String> {
    segments(dir).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn append_read_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    assert_eq!((log.first_index(), log.last(), log.last_purged()), (None, None, None));
    assert!(all(&mut log).is_empty());

    log.append(&[frame(0, 0)]).unwrap();
    log.append(&frames(1, 1..=5)).unwrap();
    log.append(&[]).unwrap();
    assert_eq!(log.first_index(), Some(0));
    assert_eq!(log.last(), Some((5, 1)));
    assert_eq!(log.term_at(0), Some(0));
    assert_eq!(log.term_at(3), Some(1));
    assert_eq!(log.term_at(6), None);

    let mut want = vec![frame(0, 0)];
    want.extend(frames(1, 1..=5));
    assert_eq!(all(&mut log), want);
    assert_eq!(log.read(2..4).unwrap(), frames(1, 2..=3));
    assert_eq!(log.read(4..100).unwrap(), frames(1, 4..=5));
    assert!(log.read(3..3).unwrap().is_empty());
    assert!(log.read(9..20).unwrap().is_empty());
    assert_eq!(segment_names(dir.path()), vec!["00000000000000000000.wal"]);

    drop(log);
    let mut log = open(dir.path());
    assert_eq!(all(&mut log), want);
    assert_eq!(log.last(), Some((5, 1)));
    log.append(&[frame(2, 6)]).unwrap();
    assert_eq!(log.last(), Some((6, 2)));
}

#[test]
fn empty_log_accepts_any_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(&frames(3, 42..=43)).unwrap();
    assert_eq!(log.first_index(), Some(42));
    assert_eq!(segment_names(dir.path()), vec!["00000000000000000042.wal"]);
    drop(log);
    let log = open(dir.path());
    assert_eq!((log.first_index(), log.last()), (Some(42), Some((43, 3))));
}

#[test]
fn append_rejects_holes_overlaps_and_backward_terms() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(&frames(2, 1..=3)).unwrap();
    let cases = [
        vec![frame(2, 5)],              // hole
        vec![frame(2, 3)],              // overlap
        vec![frame(1, 4)],              // term goes backwards
        vec![frame(2, 4), frame(2, 6)], // hole inside the batch
        vec![frame(3, 4), frame(2, 5)], // term goes backwards inside the batch
    ];
    for batch in cases {
        let err = log.append(&batch).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{batch:?}: {err}");
    }
    assert_eq!(log.last(), Some((3, 2)));
    drop(log);
    let mut log = open(dir.path());
    assert_eq!(all(&mut log), frames(2, 1..=3));
}

/// Writes frames 1..=n (one append each), returning the directory and the byte range of the last
/// frame in its (only) segment.
fn log_with_frames(n: Lsn) -> (tempfile::TempDir, PathBuf, std::ops::Range<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    for index in 1..=n {
        log.append(&[frame(1, index)]).unwrap();
    }
    drop(log);
    let path = segments(dir.path()).remove(0);
    let len = fs::metadata(&path).unwrap().len() as usize;
    let last = frame(1, n).encoded_len();
    (dir, path, len - last..len)
}

/// Reopens a damaged copy of a log whose last frame `n` was damaged, and checks that exactly
/// frames 1..n remain and that the repaired log takes appends that survive a reopen.
fn check_repaired(dir: &Path, n: Lsn, what: &str) {
    let mut log = Log::open(dir, Options::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(all(&mut log), frames(1, 1..=n - 1), "{what}");
    assert_eq!(log.last(), Some((n - 1, 1)), "{what}");
    let replacement = Frame { term: 2, index: n, payload: b"written after repair".to_vec() };
    log.append(std::slice::from_ref(&replacement)).unwrap();
    drop(log);
    let mut log = open(dir);
    let mut want = frames(1, 1..=n - 1);
    want.push(replacement);
    assert_eq!(all(&mut log), want, "{what}");
}

/// Copies `original` (a log's segment) into a fresh directory after applying `damage` to it.
fn damaged_copy(
    original: &[u8],
    name: &str,
    damage: impl FnOnce(&mut Vec<u8>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = original.to_vec();
    damage(&mut bytes);
    fs::write(dir.path().join(name), bytes).unwrap();
    dir
}

#[test]
fn torn_last_frame_truncated_at_every_offset() {
    const N: Lsn = 6;
    let (_dir, path, last) = log_with_frames(N);
    let original = fs::read(&path).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    for cut in last.clone() {
        let dir = damaged_copy(&original, name, |b| b.truncate(cut));
        check_repaired(dir.path(), N, &format!("truncated at {cut}"));
        assert!(
            fs::metadata(dir.path().join(name)).unwrap().len() as usize > last.start,
            "the append after the repair went to the same segment"
        );
    }
}

#[test]
fn flipped_byte_in_last_frame_at_every_offset() {
    const N: Lsn = 6;
    let (_dir, path, last) = log_with_frames(N);
    let original = fs::read(&path).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    for at in last {
        let dir = damaged_copy(&original, name, |b| b[at] ^= 0x5a);
        check_repaired(dir.path(), N, &format!("byte flipped at {at}"));
    }
}

#[test]
fn garbage_after_the_last_frame_is_cut() {
    let (_dir, path, _) = log_with_frames(3);
    let original = fs::read(&path).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let dir = damaged_copy(&original, name, |b| b.extend_from_slice(&[0; 512]));
    let mut log = open(dir.path());
    assert_eq!(all(&mut log), frames(1, 1..=3));
    assert_eq!(fs::metadata(dir.path().join(name)).unwrap().len() as usize, original.len());
}

#[test]
fn damaged_middle_frame_is_corruption() {
    const N: Lsn = 6;
    let (dir, path, _) = log_with_frames(N);
    let original = fs::read(&path).unwrap();
    // Frame 3 starts after frames 1 and 2.
    let offset = (frame(1, 1).encoded_len() + frame(1, 2).encoded_len()) as u64;
    let mut bytes = original.clone();
    bytes[offset as usize + 40] ^= 0x01; // a payload byte of frame 3
    fs::write(&path, bytes).unwrap();

    let err = Log::open(dir.path(), Options::default()).unwrap_err();
    match &err {
        Error::Corrupt { lsn, path: p, offset: o, reason } => {
            assert_eq!((*lsn, p, *o), (Some(3), &path, offset), "{err}");
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected corruption, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("lsn 3") && message.contains(&format!("offset {offset}")),
        "{message}"
    );
    // Refusing must not have modified the file.
    assert_eq!(fs::read(&path).unwrap().len(), original.len());
}

#[test]
fn damage_in_an_earlier_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    for index in 1..=6 {
        log.append(&[frame(1, index)]).unwrap();
    }
    drop(log);
    let paths = segments(dir.path());
    assert!(paths.len() >= 3, "{paths:?}");
    // Tear the tail of the first segment: not a torn tail, since later segments exist.
    let bytes = fs::read(&paths[0]).unwrap();
    fs::write(&paths[0], &bytes[..bytes.len() - 3]).unwrap();
    let err = Log::open(dir.path(), tiny()).unwrap_err();
    assert!(matches!(&err, Error::Corrupt { path, .. } if *path == paths[0]), "{err}");
}

#[test]
fn missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    for index in 1..=6 {
        log.append(&[frame(1, index)]).unwrap();
    }
    drop(log);
    let paths = segments(dir.path());
    fs::remove_file(&paths[1]).unwrap();
    let err = Log::open(dir.path(), tiny()).unwrap_err();
    assert!(matches!(&err, Error::Corrupt { path, offset: 0, .. } if *path == paths[2]), "{err}");
}

#[test]
fn batches_rotate_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    log.append(&frames(1, 1..=4)).unwrap(); // one batch, one segment, however large
    log.append(&frames(1, 5..=6)).unwrap();
    log.append(&frames(2, 7..=7)).unwrap();
    assert_eq!(
        segment_names(dir.path()),
        vec!["00000000000000000001.wal", "00000000000000000005.wal", "00000000000000000007.wal"]
    );
    // A read across segment boundaries.
    let mut want = frames(1, 3..=6);
    want.push(frame(2, 7));
    assert_eq!(log.read(3..8).unwrap(), want);
    drop(log);
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    assert_eq!(log.read(3..8).unwrap(), want);
}

#[test]
fn truncate_after_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    for index in 1..=9 {
        log.append(&[frame(1, index)]).unwrap();
    }
    let before = segments(dir.path()).len();
    assert!(before >= 4, "{before} segments");

    log.truncate_after(Some(20)).unwrap(); // beyond the end: no-op
    log.truncate_after(Some(9)).unwrap(); // at the end: no-op
    assert_eq!(log.last(), Some((9, 1)));

    log.truncate_after(Some(4)).unwrap();
    assert_eq!(log.last(), Some((4, 1)));
    assert_eq!(all(&mut log), frames(1, 1..=4));
    assert!(log.term_at(5).is_none());
    assert!(segments(dir.path()).len() < before);

    // The log goes on with a new term where it was cut, and that survives a reopen.
    log.append(&frames(2, 5..=6)).unwrap();
    drop(log);
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    let mut want = frames(1, 1..=4);
    want.extend(frames(2, 5..=6));
    assert_eq!(all(&mut log), want);

    log.truncate_after(None).unwrap();
    assert_eq!((log.first_index(), log.last()), (None, None));
    assert!(segments(dir.path()).is_empty());
    log.append(&frames(3, 10..=11)).unwrap();
    drop(log);
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    assert_eq!(all(&mut log), frames(3, 10..=11));
}

#[test]
fn truncate_after_at_a_segment_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    log.append(&frames(1, 1..=3)).unwrap();
    log.append(&frames(1, 4..=6)).unwrap();
    log.truncate_after(Some(3)).unwrap();
    assert_eq!(segment_names(dir.path()), vec!["00000000000000000001.wal"]);
    log.append(&frames(2, 4..=4)).unwrap();
    drop(log);
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    let mut want = frames(1, 1..=3);
    want.push(frame(2, 4));
    assert_eq!(all(&mut log), want);
}

#[test]
fn purge_through_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    for index in 1..=9 {
        log.append(&[frame(1, index)]).unwrap();
    }
    let names = segment_names(dir.path());

    log.purge_through(4, 1).unwrap();
    assert_eq!(log.first_index(), Some(5));
    assert_eq!(log.last_purged(), Some((4, 1)));
    assert_eq!(log.term_at(4), Some(1), "the purge point remembers its term");
    assert_eq!(log.term_at(3), None);
    assert_eq!(all(&mut log), frames(1, 5..=9));
    let remaining = segment_names(dir.path());
    assert!(remaining.len() < names.len(), "{remaining:?}");
    assert!(remaining[0].as_str() <= "00000000000000000005.wal", "{remaining:?}");

    log.purge_through(2, 1).unwrap(); // below the purge point: no-op
    assert_eq!(log.last_purged(), Some((4, 1)));

    drop(log);
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    assert_eq!(log.last_purged(), Some((4, 1)));
    assert_eq!(all(&mut log), frames(1, 5..=9));

    // Purging beyond the end (a snapshot ahead of the log) empties it.
    log.purge_through(12, 2).unwrap();
    assert_eq!((log.first_index(), log.last()), (None, Some((12, 2))));
    assert!(segments(dir.path()).is_empty());
    assert!(matches!(log.append(&[frame(2, 14)]), Err(Error::InvalidInput(_))));
    log.append(&frames(2, 13..=14)).unwrap();
    drop(log);
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    assert_eq!(log.last_purged(), Some((12, 2)));
    assert_eq!(all(&mut log), frames(2, 13..=14));
}

#[test]
fn purge_everything_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(&frames(1, 1..=3)).unwrap();
    log.purge_through(3, 1).unwrap();
    assert_eq!((log.first_index(), log.last()), (None, Some((3, 1))));
    drop(log);
    let log = open(dir.path());
    assert_eq!(
        (log.first_index(), log.last(), log.last_purged()),
        (None, Some((3, 1)), Some((3, 1)))
    );
}

#[test]
fn purge_validates_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(&frames(2, 5..=8)).unwrap();
    assert!(matches!(log.purge_through(6, 1), Err(Error::InvalidInput(_))), "wrong term");
    assert!(matches!(log.purge_through(2, 1), Err(Error::InvalidInput(_))), "would leave a hole");
    log.purge_through(4, 1).unwrap(); // just below the first entry: fine
    assert_eq!(log.first_index(), Some(5));
    assert!(
        matches!(log.truncate_after(Some(3)), Err(Error::InvalidInput(_))),
        "below the purge point"
    );
    assert!(
        matches!(log.truncate_after(None), Err(Error::InvalidInput(_))),
        "below the purge point"
    );
    log.truncate_after(Some(4)).unwrap();
    assert_eq!((log.first_index(), log.last()), (None, Some((4, 1))));
}

#[test]
fn interrupted_purge_is_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    for index in 1..=9 {
        log.append(&[frame(1, index)]).unwrap();
    }
    drop(log);
    let before = segments(dir.path());
    let saved: Vec<(PathBuf, Vec<u8>)> =
        before.iter().map(|p| (p.clone(), fs::read(p).unwrap())).collect();

    let mut log = Log::open(dir.path(), tiny()).unwrap();
    log.purge_through(6, 1).unwrap();
    drop(log);
    // Put the deleted segments back, as if the crash came before the deletions reached the disk.
    for (path, bytes) in &saved {
        if !path.exists() {
            fs::write(path, bytes).unwrap();
        }
    }
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    assert_eq!(log.first_index(), Some(7));
    assert_eq!(all(&mut log), frames(1, 7..=9));
    assert!(segments(dir.path()).len() < before.len());
}

#[test]
fn empty_last_segment_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(&frames(1, 1..=3)).unwrap();
    drop(log);
    // A crash right after creating the next segment.
    fs::write(dir.path().join("00000000000000000004.wal"), b"").unwrap();
    let mut log = open(dir.path());
    assert_eq!(segment_names(dir.path()), vec!["00000000000000000001.wal"]);
    log.append(&frames(1, 4..=4)).unwrap();
    assert_eq!(all(&mut log), frames(1, 1..=4));
}

#[test]
fn fully_torn_last_segment_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    log.append(&frames(1, 1..=3)).unwrap();
    log.append(&frames(1, 4..=5)).unwrap();
    drop(log);
    let last = segments(dir.path()).pop().unwrap();
    fs::write(&last, &fs::read(&last).unwrap()[..10]).unwrap();
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    assert_eq!(all(&mut log), frames(1, 1..=3));
    assert!(!last.exists());
    log.append(&frames(2, 4..=4)).unwrap();
    assert_eq!(log.last(), Some((4, 2)));
}

#[test]
fn vote_and_committed_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    assert_eq!((log.vote(), log.committed()), (None, None));
    log.save_vote(b"{\"term\":1}").unwrap();
    log.save_vote(b"{\"term\":2}").unwrap();
    log.save_committed(b"{\"index\":7}").unwrap();
    drop(log);
    // A crash in the middle of a metadata write leaves a temporary file behind.
    fs::write(dir.path().join("vote.tmp"), b"half written").unwrap();
    let log = open(dir.path());
    assert_eq!(log.vote().as_deref(), Some(&b"{\"term\":2}"[..]));
    assert_eq!(log.committed().as_deref(), Some(&b"{\"index\":7}"[..]));
    assert!(!dir.path().join("vote.tmp").exists());
}

#[test]
fn damaged_vote_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.save_vote(b"vote bytes").unwrap();
    drop(log);
    let path = dir.path().join("vote");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let err = Log::open(dir.path(), Options::default()).unwrap_err();
    assert!(matches!(&err, Error::Corrupt { path: p, .. } if *p == path), "{err}");
}

#[test]
fn damage_after_open_is_caught_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(&frames(1, 1..=3)).unwrap();
    let path = segments(dir.path()).remove(0);
    let mut bytes = fs::read(&path).unwrap();
    let at = frame(1, 1).encoded_len() + 35;
    bytes[at] ^= 0x10;
    fs::write(&path, bytes).unwrap();
    assert_eq!(log.read(1..2).unwrap(), frames(1, 1..=1));
    let err = log.read(1..4).unwrap_err();
    assert!(matches!(err, Error::Corrupt { lsn: Some(2), .. }), "{err}");
}

#[test]
fn other_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    fs::write(dir.path().join("1.wal"), b"not a segment name").unwrap();
    let mut log = open(dir.path());
    log.append(&frames(1, 1..=2)).unwrap();
    drop(log);
    let mut log = open(dir.path());
    assert_eq!(all(&mut log), frames(1, 1..=2));
}

#[test]
fn open_creates_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let mut log = open(&nested);
    log.append(&[frame(1, 1)]).unwrap();
    assert!(nested.is_dir());
}

#[test]
fn bounded_prefixes_for_replication_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(&frames(1, 1..=10)).unwrap();
    let sizes: Vec<u64> = (1..=10).map(|i| frame(1, i).encoded_len() as u64).collect();
    // Exactly the entries that fit.
    let three = sizes[0] + sizes[1] + sizes[2];
    assert_eq!(log.prefix_within(1..11, three), 1..4);
    assert_eq!(log.prefix_within(1..11, three + sizes[3] - 1), 1..4);
    assert_eq!(log.prefix_within(3..11, sizes[2] + sizes[3]), 3..5);
    // At least one entry, however small the budget.
    assert_eq!(log.prefix_within(5..11, 1), 5..6);
    // Never past the range or the log.
    assert_eq!(log.prefix_within(2..4, u64::MAX), 2..4);
    assert_eq!(log.prefix_within(8..100, u64::MAX), 8..11);
    // A range with nothing in the log is returned as it is (reading it gives nothing).
    assert_eq!(log.prefix_within(20..30, 10), 20..30);
    assert!(log.read(log.prefix_within(20..30, 10)).unwrap().is_empty());
    let read = log.read(log.prefix_within(1..11, three)).unwrap();
    assert_eq!(read, frames(1, 1..=3));
}

/// Unsynced appends are readable at once; one pending sync covers every segment written since
/// the last one (rotation included), and the sync marks record each segment's durable length
/// only after the sync has run.
#[test]
fn unsynced_appends_are_covered_by_one_pending_sync() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { sync_marks: true, ..tiny() };
    let mut log = Log::open(dir.path(), options).unwrap();
    assert!(log.pending_sync().is_none(), "nothing written, nothing to sync");
    log.append_unsynced(&frames(1, 1..=3)).unwrap();
    log.append_unsynced(&frames(1, 4..=6)).unwrap();
    assert_eq!(all(&mut log), frames(1, 1..=6), "unsynced frames are readable");
    let marks = |dir: &Path| -> Vec<(String, u64)> {
        segments(dir)
            .iter()
            .filter_map(|seg| {
                let mark = fs::read_to_string(format!("{}.synced", seg.display())).ok()?;
                Some((seg.file_name()?.to_string_lossy().into_owned(), mark.parse().ok()?))
            })
            .collect()
    };
    // The tiny segments rotated: at least two were written, each marked 0 at creation.
    assert!(segments(dir.path()).len() >= 2);
    assert!(marks(dir.path()).iter().all(|(_, len)| *len == 0), "{:?}", marks(dir.path()));
    let pending = log.pending_sync().expect("writes are pending");
    assert!(log.pending_sync().is_none(), "taking the sync marks the segments clean");
    pending.sync();
    let after = marks(dir.path());
    assert_eq!(after.len(), segments(dir.path()).len());
    for ((name, len), path) in after.iter().zip(segments(dir.path())) {
        assert_eq!(*len, fs::metadata(&path).unwrap().len(), "{name} is marked whole");
    }
    drop(log);
    let mut log = Log::open(dir.path(), tiny()).unwrap();
    assert_eq!(all(&mut log), frames(1, 1..=6));
}
