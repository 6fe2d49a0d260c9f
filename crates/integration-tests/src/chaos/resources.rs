//! What the nodes hold while a run goes on: memory (RSS), open file descriptors and the bytes
//! and files of each data directory, sampled from `/proc` every [`EVERY`], and the bounds a soak
//! holds them to.
//!
//! The sampler finds each node's process by its `--data-dir` in `/proc/<pid>/cmdline`, so it
//! needs nothing from the nemesis, which kills and restarts nodes under it: every process
//! lifetime of a node is a series of its own. Samples go to `resources.csv` in the run's
//! directory; [`Summary`] reduces them to the figures a run reports, and [`Bounds::check`]
//! turns the ones past a soak's bounds into violations.
//!
//! Growth is measured per process from the end of its first [`WARM_UP`] (a node fills its
//! caches and pools at first) to its last sample, so a restart does not hide a leak and does
//! not fake one either. What is left in a data directory is read once the cluster has
//! recovered at the end: temporary files (an interrupted snapshot transfer or image) must be
//! gone, and the log must have been cut back after snapshots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the nodes are sampled.
pub const EVERY: Duration = Duration::from_secs(2);

/// How long after a process's first sample its growth starts to count.
pub const WARM_UP: Duration = Duration::from_secs(60);

/// One node process at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Seconds since sampling began.
    pub at: f64,
    /// The node (1-based).
    pub node: usize,
    /// Its process.
    pub pid: u32,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Bytes under its data directory.
    pub data_bytes: u64,
    /// Files under its data directory.
    pub data_files: u64,
}

/// Samples every node (its 1-based number and data directory) every [`EVERY`] until `stop`.
pub fn sample(nodes: Vec<(usize, PathBuf)>, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let started = Instant::now();
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let at = started.elapsed().as_secs_f64();
        for (pid, node, data) in processes(&nodes) {
            let (data_bytes, data_files) = dir_usage(&data);
            if let Some(rss_kib) = rss_kib(pid) {
                let fds = count_entries(&format!("/proc/{pid}/fd"));
                samples.push(Sample { at, node, pid, rss_kib, fds, data_bytes, data_files });
            }
        }
        let next = started + Duration::from_secs_f64(at) + EVERY;
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    samples
}

/// The running `keel serve` processes of `nodes`: (pid, node, data directory).
fn processes(nodes: &[(usize, PathBuf)]) -> Vec<(u32, usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if !args.iter().any(|a| *a == b"serve") {
            continue;
        }
        let data = args
            .windows(2)
            .find(|w| w[0] == b"--data-dir")
            .map(|w| PathBuf::from(String::from_utf8_lossy(w[1]).into_owned()));
        if let Some(data) = data
            && let Some((node, dir)) = nodes.iter().find(|(_, dir)| *dir == data)
        {
            found.push((pid, *node, dir.clone()));
        }
    }
    found
}

/// `VmRSS` of a process, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Entries of a directory (0 if it cannot be read).
fn count_entries(dir: &str) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count() as u64)
}

/// Bytes and files under `dir`, recursively.
pub fn dir_usage(dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return (0, 0) };
    let (mut bytes, mut files) = (0, 0);
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (b, f) = dir_usage(&entry.path());
            bytes += b;
            files += f;
        } else {
            bytes += meta.len();
            files += 1;
        }
    }
    (bytes, files)
}

/// Temporary files under `dir`, recursively: `*.tmp` and `receiving-*` (snapshot transfers
/// and images under way), by path.
pub fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(temporaries(&path));
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") || name.starts_with("receiving-") {
            found.push(path);
        }
    }
    found
}

/// Writes the samples as CSV.
pub fn write_csv(samples: &[Sample], path: &Path) -> std::io::Result<()> {
    let mut out = String::from("seconds,node,pid,rss_kib,fds,data_bytes,data_files\n");
    for s in samples {
        let _ = writeln!(
            out,
            "{:.1},{},{},{},{},{},{}",
            s.at, s.node, s.pid, s.rss_kib, s.fds, s.data_bytes, s.data_files
        );
    }
    std::fs::write(path, out)
}

/// One process's growth after its warm-up.
#[derive(Clone, Debug, PartialEq)]
pub struct Growth {
    /// The node.
    pub node: usize,
    /// The process.
    pub pid: u32,
    /// Seconds between the two samples compared.
    pub seconds: f64,
    /// RSS at the end of the warm-up and at the last sample, KiB.
    pub rss_kib: (u64, u64),
    /// File descriptors at the same two samples.
    pub fds: (u64, u64),
}

/// The figures of a run's samples.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Samples taken.
    pub samples: usize,
    /// The largest RSS seen, KiB, and its node.
    pub rss_max: (u64, usize),
    /// The most file descriptors seen, and the node.
    pub fds_max: (u64, usize),
    /// The largest data directory seen, bytes, and the node.
    pub data_max: (u64, usize),
    /// Per process that lived past its warm-up: its growth.
    pub growth: Vec<Growth>,
}

impl Summary {
    /// Reduces samples. The last sample of a process that died before sampling ended is left
    /// out: a process on its way out (a fatal error printed with its backtrace, which reads
    /// the binary's debug information) is not a node at work.
    pub fn of(samples: &[Sample]) -> Summary {
        let mut summary = Summary { samples: samples.len(), ..Summary::default() };
        let end = samples.iter().map(|s| s.at).fold(0.0, f64::max);
        let mut lives: BTreeMap<(usize, u32), Vec<&Sample>> = BTreeMap::new();
        for s in samples {
            lives.entry((s.node, s.pid)).or_default().push(s);
        }
        for ((node, pid), mut life) in lives {
            if life.len() > 1 && life[life.len() - 1].at < end - 1.5 * EVERY.as_secs_f64() {
                life.pop();
            }
            for s in &life {
                summary.rss_max = summary.rss_max.max((s.rss_kib, s.node));
                summary.fds_max = summary.fds_max.max((s.fds, s.node));
                summary.data_max = summary.data_max.max((s.data_bytes, s.node));
            }
            let first = life[0].at;
            let Some(warm) = life.iter().find(|s| s.at - first >= WARM_UP.as_secs_f64()) else {
                continue;
            };
            let last = life[life.len() - 1];
            summary.growth.push(Growth {
                node,
                pid,
                seconds: last.at - warm.at,
                rss_kib: (warm.rss_kib, last.rss_kib),
                fds: (warm.fds, last.fds),
            });
        }
        summary
    }

    /// The longest-lived process's growth, if any lived past its warm-up.
    pub fn longest(&self) -> Option<&Growth> {
        self.growth.iter().max_by(|a, b| a.seconds.total_cmp(&b.seconds))
    }

    /// One line for the run's summary.
    pub fn line(&self) -> String {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let mut line = format!(
            "resources: {} samples; rss max {:.1} MiB (node {}), fds max {} (node {}), data dir max {:.1} MiB (node {})",
            self.samples,
            mib(self.rss_max.0),
            self.rss_max.1,
            self.fds_max.0,
            self.fds_max.1,
            self.data_max.0 as f64 / (1 << 20) as f64,
            self.data_max.1
        );
        if let Some(g) = self.longest() {
            let _ = write!(
                line,
                "; longest-lived process (node {}, {:.0} s after warm-up): rss {:.1} -> {:.1} MiB, fds {} -> {}",
                g.node,
                g.seconds,
                mib(g.rss_kib.0),
                mib(g.rss_kib.1),
                g.fds.0,
                g.fds.1
            );
        }
        line
    }
}

/// The bounds a soak holds every node to (`keel-chaos soak`; docs/reliability.md states them).
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Resident memory, KiB, at any sample.
    pub rss_kib: u64,
    /// RSS growth of a process after its warm-up, KiB.
    pub rss_growth_kib: u64,
    /// Open file descriptors at any sample.
    pub fds: u64,
    /// Files in a data directory once the cluster has recovered at the end.
    pub data_files: u64,
}

impl Bounds {
    /// The soak's bounds.
    pub const SOAK: Bounds =
        Bounds { rss_kib: 160 << 10, rss_growth_kib: 32 << 10, fds: 256, data_files: 64 };

    /// Violations: figures past the bounds, and temporary files or too many files left in the
    /// data directories (`ends`: each node's number and directory, read after recovery).
    pub fn check(&self, summary: &Summary, ends: &[(usize, PathBuf)]) -> Vec<String> {
        let mut violations = Vec::new();
        if summary.rss_max.0 > self.rss_kib {
            violations.push(format!(
                "resources: node {} reached {} KiB of RSS, above the bound of {} KiB",
                summary.rss_max.1, summary.rss_max.0, self.rss_kib
            ));
        }
        if summary.fds_max.0 > self.fds {
            violations.push(format!(
                "resources: node {} held {} file descriptors, above the bound of {}",
                summary.fds_max.1, summary.fds_max.0, self.fds
            ));
        }
        for g in &summary.growth {
            if g.rss_kib.1 > g.rss_kib.0 + self.rss_growth_kib {
                violations.push(format!(
                    "resources: node {} (pid {}) grew from {} to {} KiB of RSS in {:.0} s after its warm-up, more than {} KiB",
                    g.node, g.pid, g.rss_kib.0, g.rss_kib.1, g.seconds, self.rss_growth_kib
                ));
            }
        }
        for (node, dir) in ends {
            let left = temporaries(dir);
            if !left.is_empty() {
                violations.push(format!("resources: node {node} left temporary files: {left:?}"));
            }
            let (_, files) = dir_usage(dir);
            if files > self.data_files {
                violations.push(format!(
                    "resources: node {node} has {files} files in {} after recovery, more than {}",
                    dir.display(),
                    self.data_files
                ));
            }
        }
        violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at: f64, node: usize, pid: u32, rss_kib: u64) -> Sample {
        Sample { at, node, pid, rss_kib, fds: 10, data_bytes: 0, data_files: 1 }
    }

    #[test]
    fn growth_counts_per_process_after_its_warm_up() {
        let samples = vec![
            at(0.0, 1, 100, 5_000),
            at(61.0, 1, 100, 40_000),
            at(300.0, 1, 100, 90_000),
            at(301.0, 1, 100, 95_000),
            // A restart: its own series, too short to count.
            at(302.0, 1, 101, 30_000),
            at(320.0, 1, 101, 35_000),
            at(322.0, 1, 101, 36_000),
            // Another node's process that died: its last sample (on its way out) is left out.
            at(300.0, 2, 200, 50_000),
            at(302.0, 2, 200, 500_000),
        ];
        let summary = Summary::of(&samples);
        assert_eq!(summary.rss_max, (90_000, 1));
        assert_eq!(summary.growth.len(), 1);
        let g = &summary.growth[0];
        assert_eq!((g.pid, g.rss_kib), (100, (40_000, 90_000)));
        let bounds = Bounds { rss_kib: 100_000, rss_growth_kib: 32_000, fds: 100, data_files: 9 };
        let violations = bounds.check(&summary, &[]);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("grew from 40000 to 90000"), "{violations:?}");
    }

    #[test]
    fn temporaries_are_found_at_any_depth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/receiving-7.tmp"), b"x").unwrap();
        std::fs::write(dir.path().join("a/keep.db"), b"x").unwrap();
        assert_eq!(temporaries(dir.path()).len(), 1);
        assert_eq!(dir_usage(dir.path()), (2, 2));
    }
}
