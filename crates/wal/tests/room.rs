//! The log's room: space preallocated past its end, so that appends it agreed to take cannot
//! fail on a full disk. The full-disk test mounts a small tmpfs (root only; it says so loudly
//! and passes without checking anything when it cannot mount).

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use wal::{Frame, Log, Lsn, Options};

const MIB: u64 = 1 << 20;

fn frame(index: Lsn, bytes: usize) -> Frame {
    Frame { term: 1, index, payload: vec![7; bytes] }
}

fn segment(dir: &Path) -> PathBuf {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths.pop().unwrap()
}

#[test]
fn room_is_preallocated_past_the_end_without_changing_the_length() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { room_bytes: MIB, ..Options::default() };
    let mut log = Log::open(dir.path(), options.clone()).unwrap();
    assert_eq!(log.room(), None, "no segment yet, so no room");
    log.append(&[frame(1, 100)]).unwrap();
    let room = log.room().unwrap();
    assert!(room >= MIB / 2, "room {room}");
    let meta = fs::metadata(segment(dir.path())).unwrap();
    assert!(meta.len() < 200, "the length is the frames' ({})", meta.len());
    assert!(meta.blocks() * 512 >= MIB, "the room is allocated: {} blocks", meta.blocks());

    log.ensure_room(3 * MIB).unwrap();
    assert!(log.room().unwrap() >= 3 * MIB);
    // Appends use the room; a top-up keeps it at least half the configured size.
    for i in 2..=40 {
        log.append(&[frame(i, 64 << 10)]).unwrap();
        assert!(log.room().unwrap() >= MIB / 2);
    }
    // Truncation gives the blocks past the cut back to the file system; the room is taken
    // again.
    log.truncate_after(Some(10)).unwrap();
    assert!(log.room().unwrap() >= MIB / 2);
    drop(log);
    let mut log = Log::open(dir.path(), options).unwrap();
    assert_eq!(log.read(1..11).unwrap().len(), 10);
    assert!(log.room().unwrap() >= MIB / 2, "the room is taken at open");
    log.append(&[frame(11, 10)]).unwrap();
}

#[test]
fn without_room_nothing_is_promised() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), Options { room_bytes: 0, ..Options::default() }).unwrap();
    log.append(&[frame(1, 100)]).unwrap();
    assert_eq!(log.room(), None);
    log.ensure_room(u64::MAX).unwrap();
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        out.status.success().then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).output();
    }
}

/// Fills the file system of `dir` with a balloon file.
fn fill(dir: &Path) {
    use std::io::Write as _;
    let mut file = fs::File::create(dir.join("balloon")).unwrap();
    while file.write_all(&[0; 4096]).is_ok() {}
}

#[test]
fn a_full_disk_fails_nothing_the_room_promised() {
    let Some(fs) = Tmpfs::mount("8m") else {
        eprintln!(
            "\n\n*** SKIPPED a_full_disk_fails_nothing_the_room_promised: cannot mount a tmpfs \
             (needs root) ***\n\n"
        );
        return;
    };
    let dir = fs.0.path().join("raft");
    let options = Options { room_bytes: 2 * MIB, segment_bytes: 64 << 10, ..Options::default() };
    let mut log = Log::open(&dir, options).unwrap();
    log.append(&[frame(1, 100)]).unwrap();
    log.ensure_room(2 * MIB).unwrap();
    fill(fs.0.path());

    // More room cannot be had, and says why.
    let err = log.ensure_room(4 * MIB).unwrap_err();
    assert!(err.is_no_space(), "{err}");
    // What the room holds can be appended, across the segment size (no new segment can get
    // room, so appends stay in the current one).
    let mut index = 2;
    while log.room().unwrap() >= 80 << 10 {
        log.append(&[frame(index, 64 << 10)]).unwrap();
        index += 1;
    }
    assert!(index > 20, "appended {} entries into the room", index - 2);
    // A vote still gets saved: the room gives back what the file needs.
    log.save_vote(b"vote in term 2").unwrap();
    assert_eq!(log.vote().as_deref(), Some(&b"vote in term 2"[..]));
    // Space returns: the room grows again, appends go on, and everything reads back.
    fs::remove_file(fs.0.path().join("balloon")).unwrap();
    log.ensure_room(2 * MIB).unwrap();
    log.append(&[frame(index, 100)]).unwrap();
    assert_eq!(log.read(1..index + 1).unwrap().len() as u64, index);
}
