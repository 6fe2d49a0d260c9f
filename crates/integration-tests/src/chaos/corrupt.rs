//! The `corrupt` fault: storage damage on one node, the way a disk rots it.
//!
//! One node's stored state is damaged, while the node is stopped (then it is started again on
//! it) or while it runs:
//!
//! - **log-flip**: one bit flipped inside a frame of a Raft log segment that is not the last
//!   frame of the log. Frames follow it, so the frame checksums show damage that a torn write
//!   cannot explain, and a node started on it must refuse to start. (A flip in the very last
//!   frame is indistinguishable from a write torn by a crash; that frame is cut as a torn tail
//!   would be, and is not produced here: see docs/reliability.md.)
//! - **log-truncate**: a segment that is not the last cut short, losing whole frames. Later
//!   segments prove the log went on, so a node started on it must refuse to start.
//! - **sqlite**: one bit flipped in the database file, past its 100-byte header. Page checksums
//!   make SQLite fail the read of that page instead of returning what it holds, so the damage
//!   never reaches a client or a changeset; a page that is free, or that SQLite's `-wal` file
//!   holds a newer copy of, can go unnoticed, harmlessly.
//! - **snapshot**: one bit flipped in the current snapshot image. The node checks the image's
//!   checksum before handing it out (at start, and before a transfer) and builds a new one.
//!
//! The target is picked among those the data directory has (a second segment, an image). The
//! heal ([`super::nemesis::heal`]) looks in the node's log for what it
//! detected, and rebuilds it: `keel admin rebuild --node N --data-dir DIR` on the stopped node,
//! which removes it through the leader and deletes its data; it then rejoins with `--join`. A
//! node started on a damaged log that did not refuse to start is a violation.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use rand::Rng as _;
use rand::rngs::StdRng;

/// What the fault damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A bit in a log frame other than the last.
    LogFlip,
    /// A segment other than the last, cut short.
    LogTruncate,
    /// A bit in the SQLite database file.
    Sqlite,
    /// A bit in the current snapshot image.
    Snapshot,
}

impl Target {
    /// Its name in the fault log.
    pub fn name(self) -> &'static str {
        match self {
            Target::LogFlip => "log-flip",
            Target::LogTruncate => "log-truncate",
            Target::Sqlite => "sqlite",
            Target::Snapshot => "snapshot",
        }
    }

    /// Whether a node started on this damage must refuse to start.
    pub fn refuses_start(self) -> bool {
        matches!(self, Target::LogFlip | Target::LogTruncate)
    }
}

/// Damage done to a node, remembered until the heal rebuilds it.
#[derive(Debug, Clone)]
pub struct Damage {
    /// What was damaged.
    pub target: Target,
    /// Whether the node was stopped (and then started on the damage).
    pub stopped: bool,
    /// The length of the node's log file when the damage was done: what it says after that
    /// is what it found.
    pub log_from: u64,
}

/// The Raft log segments in `data/raft`, oldest first, with the index each starts at.
fn segments(data: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let dir = data.join("raft");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The live SQLite database file in `data/db` (`db/CURRENT` names it).
fn database_file(data: &Path) -> anyhow::Result<PathBuf> {
    let db = data.join("db");
    let current = std::fs::read_to_string(db.join("CURRENT")).context("reading db/CURRENT")?;
    Ok(db.join(current.trim()))
}

/// The current snapshot image in `data/snapshots`, if there is one.
fn snapshot_image(data: &Path) -> Option<PathBuf> {
    let dir = data.join("snapshots");
    std::fs::read_dir(dir).ok()?.filter_map(Result::ok).map(|e| e.path()).find(|p| {
        p.extension().is_some_and(|e| e == "db")
            && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with("building"))
    })
}

/// Flips one random bit of `path` in `[from, to)`; returns the offset.
fn flip(path: &Path, from: u64, to: u64, rng: &mut StdRng) -> anyhow::Result<u64> {
    if to <= from {
        bail!("{} has no byte in [{from}, {to}) to damage", path.display());
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let at = rng.gen_range(from..to);
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at)?;
    byte[0] ^= 1 << rng.gen_range(0..8);
    file.write_all_at(&byte, at)?;
    Ok(at)
}

/// Damages one of the targets the data directory `data` has (see the module docs), picked at
/// random. Returns what was damaged and a description.
pub fn damage(data: &Path, rng: &mut StdRng) -> anyhow::Result<(Target, String)> {
    let segments = segments(data)?;
    let mut targets = vec![Target::LogFlip, Target::Sqlite];
    if segments.len() > 1 {
        targets.push(Target::LogTruncate);
    }
    let image = snapshot_image(data);
    if image.is_some() {
        targets.push(Target::Snapshot);
    }
    let target = targets[rng.gen_range(0..targets.len())];
    match target {
        Target::LogTruncate if segments.len() > 1 => {
            let (_, path) = &segments[rng.gen_range(0..segments.len() - 1)];
            let len = std::fs::metadata(path)?.len();
            let keep = rng.gen_range(0..len.max(1));
            OpenOptions::new().write(true).open(path)?.set_len(keep)?;
            Ok((target, format!("{} cut from {len} to {keep} bytes", path.display())))
        }
        Target::Snapshot if let Some(path) = image => {
            let len = std::fs::metadata(&path)?.len();
            let at = flip(&path, 0, len, rng)?;
            Ok((target, format!("{} bit flipped at byte {at} of {len}", path.display())))
        }
        Target::Sqlite => {
            let path = database_file(data)?;
            let len = std::fs::metadata(&path)?.len();
            let at = flip(&path, 100, len, rng)?;
            Ok((target, format!("{} bit flipped at byte {at} of {len}", path.display())))
        }
        _ => {
            // log-flip: a frame of any segment, but not the last frame of the log.
            let Some((last_first, _)) = segments.last() else {
                bail!("node has no Raft log segment to damage");
            };
            let mut frames = Vec::new();
            for (first, path) in &segments {
                let bytes = std::fs::read(path)?;
                let last = first == last_first;
                let mut scan = wal::repair::scan(&bytes, *first, last).frames;
                if last {
                    scan.pop();
                }
                frames.extend(scan.into_iter().map(|f| (path.clone(), f)));
            }
            if frames.is_empty() {
                bail!("node's Raft log has no frame but its last to damage");
            }
            let (path, frame) = &frames[rng.gen_range(0..frames.len())];
            let at = flip(path, frame.offset, frame.offset + frame.len, rng)?;
            let what = format!(
                "{} bit flipped at byte {at}, in the frame of index {} ({} frames could be hit)",
                path.display(),
                frame.index,
                frames.len()
            );
            Ok((Target::LogFlip, what))
        }
    }
}

/// The lines of a node's log after byte `from` that tell of damage it found (errors and
/// warnings, the reason a start failed, the log's own repairs), at most three, each cut to 300
/// characters.
pub fn findings(log: &Path, from: u64) -> Vec<String> {
    let bytes = std::fs::read(log).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[from..]);
    text.lines()
        .filter(|line| {
            let told = line.contains(" ERROR ")
                || line.contains(" WARN ")
                || line.starts_with("Error:")
                || line.starts_with("wal:");
            let line = line.to_ascii_lowercase();
            told && ["damaged", "corrupt", "checksum", "malformed"].iter().any(|w| line.contains(w))
        })
        .take(3)
        .map(|line| line.chars().take(300).collect())
        .collect()
}
