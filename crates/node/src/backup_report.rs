//! What the scheduled backups to object storage did, for `/status` and `/metrics`.
//!
//! The `keel` binary runs the schedule (`keel serve --backup-to`, its `backup_to` module) and
//! reports each tick here: an upload (its time, lsn, size and duration), a skip (nothing
//! applied since the last upload) or a failure. The counters and last-upload gauges are
//! registered with the node's Prometheus registry ([`crate::metrics::Metrics`]); `/status`
//! reads [`BackupReport::status`], which is `None` on a node started without `--backup-to`.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_api::status::{Backup, LastBackup};
use prometheus::{Gauge, IntCounter, IntGauge, Registry};

/// The backup counters of one node.
pub struct BackupReport {
    /// The target URL, once the schedule runs.
    target: OnceLock<String>,
    /// Uploads that succeeded.
    uploads: IntCounter,
    /// Ticks skipped: nothing applied since the last upload.
    skipped: IntCounter,
    /// Uploads that failed.
    failures: IntCounter,
    /// When the last upload finished (Unix seconds).
    last_time: Gauge,
    /// The log index of the last upload.
    last_lsn: IntGauge,
    /// The size of the last upload in bytes.
    last_bytes: IntGauge,
    /// How long the last upload took.
    last_seconds: Gauge,
    /// The last upload and the last failure's message (cleared by an upload).
    last: Mutex<(Option<LastBackup>, Option<String>)>,
}

impl BackupReport {
    /// Creates the metrics and registers them with `registry`.
    pub(crate) fn new(registry: &Registry) -> BackupReport {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let report = BackupReport {
            target: OnceLock::new(),
            uploads: counter("keel_backup_uploads_total", "Backups uploaded (--backup-to)"),
            skipped: counter(
                "keel_backup_skipped_total",
                "Scheduled backups skipped: nothing applied since the last upload",
            ),
            failures: counter(
                "keel_backup_failures_total",
                "Backup uploads that failed (each is retried with backoff)",
            ),
            last_time: Gauge::new(
                "keel_backup_last_timestamp_seconds",
                "When the last backup upload finished, Unix time",
            )
            .expect("valid metric"),
            last_lsn: IntGauge::new(
                "keel_backup_last_lsn",
                "Log index of the last backup uploaded",
            )
            .expect("valid metric"),
            last_bytes: IntGauge::new("keel_backup_last_bytes", "Size of the last backup uploaded")
                .expect("valid metric"),
            last_seconds: Gauge::new(
                "keel_backup_last_duration_seconds",
                "How long the last backup (image and upload) took",
            )
            .expect("valid metric"),
            last: Mutex::new((None, None)),
        };
        for c in [
            Box::new(report.uploads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(report.skipped.clone()),
            Box::new(report.failures.clone()),
            Box::new(report.last_time.clone()),
            Box::new(report.last_lsn.clone()),
            Box::new(report.last_bytes.clone()),
            Box::new(report.last_seconds.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        report
    }

    /// Says that backups go to `target` (the schedule started): `/status` shows the section.
    pub fn set_target(&self, target: &str) {
        let _ = self.target.set(target.to_string());
    }

    /// Records an upload of `size` bytes holding log index `lsn`, named `name`, that took
    /// `took` and finished at `at`.
    pub fn uploaded(&self, name: &str, lsn: wal::Lsn, size: u64, took: Duration, at: SystemTime) {
        self.uploads.inc();
        let unix = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.last_time.set(unix.as_secs_f64());
        self.last_lsn.set(i64::try_from(lsn).unwrap_or(i64::MAX));
        self.last_bytes.set(i64::try_from(size).unwrap_or(i64::MAX));
        self.last_seconds.set(took.as_secs_f64());
        let last = LastBackup {
            duration_secs: took.as_secs_f64(),
            lsn,
            name: name.to_string(),
            size,
            time: sql::rfc3339_utc(Duration::from_secs(unix.as_secs())),
        };
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = (Some(last), None);
    }

    /// Records a tick skipped because nothing changed.
    pub fn skipped(&self) {
        self.skipped.inc();
    }

    /// Records a failed upload and why.
    pub fn failed(&self, error: &str) {
        self.failures.inc();
        self.last.lock().unwrap_or_else(PoisonError::into_inner).1 = Some(error.to_string());
    }

    /// The `backup` section of `/status`; `None` without `--backup-to`.
    pub fn status(&self) -> Option<Backup> {
        let target = self.target.get()?.clone();
        let (last, last_error) = self.last.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Some(Backup {
            failures: self.failures.get(),
            skipped: self.skipped.get(),
            last,
            last_error,
            target,
            uploads: self.uploads.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_follows_uploads_and_failures() {
        let report = BackupReport::new(&Registry::new());
        assert_eq!(report.status(), None, "no section without a target");
        report.set_target("s3://b/p");
        report.failed("unreachable");
        report.skipped();
        let status = report.status().unwrap();
        assert_eq!((status.failures, status.skipped, status.uploads), (1, 1, 0));
        assert_eq!(status.last_error.as_deref(), Some("unreachable"));
        let at = UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        report.uploaded("p/x", 7, 4096, Duration::from_millis(1500), at);
        let status = report.status().unwrap();
        assert_eq!(status.last_error, None, "an upload clears the failure");
        let last = status.last.unwrap();
        assert_eq!((last.lsn, last.size, last.time.as_str()), (7, 4096, "2024-05-01T12:00:00Z"));
    }
}
