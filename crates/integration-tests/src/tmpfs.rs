//! A small file system per node, so a test can fill one node's disk: a tmpfs mounted on the
//! node's data directory ([`Tmpfs`]), a balloon file that takes every free byte of it
//! ([`fill`]), and its removal ([`free`]).
//!
//! Mounting needs root. [`available`] says whether it works here; a test that cannot mount says
//! so loudly and checks nothing (CI runs as root, so there it always runs).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The balloon's name in a data directory.
const BALLOON: &str = "balloon";

/// A tmpfs mounted on a directory; unmounted (lazily, in case a file is still open) on drop.
#[derive(Debug)]
pub struct Tmpfs {
    /// Where it is mounted.
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount`'s syntax: `64m`) on `path`, creating the directory.
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mounting a tmpfs on {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { path: path.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

/// Whether a tmpfs can be mounted here (root, and `mount` works): tries one.
pub fn available() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    Tmpfs::mount(&dir.path().join("probe"), "1m").map(drop)
}

/// Fills the file system of `dir` with a balloon file until a write fails for lack of space.
pub fn fill(dir: &Path) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(BALLOON))
        .unwrap_or_else(|e| panic!("creating a balloon in {}: {e}", dir.display()));
    let block = vec![0u8; 1 << 20];
    while file.write_all(&block).is_ok() {}
    let small = vec![0u8; 4096];
    while file.write_all(&small).is_ok() {}
}

/// Removes the balloon of `dir`.
pub fn free(dir: &Path) {
    std::fs::remove_file(dir.join(BALLOON))
        .unwrap_or_else(|e| panic!("removing the balloon in {}: {e}", dir.display()));
}
