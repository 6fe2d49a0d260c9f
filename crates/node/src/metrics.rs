//! `GET /metrics`: Prometheus text format, from the `prometheus` crate.
//!
//! Counters and histograms are updated where things happen (the HTTP handlers); gauges that
//! describe state (applied index, replica lag) are refreshed from Raft and the leader's
//! [`leader::Progress`] at scrape time. The read counter is a [`Sharded`] one, copied into its
//! Prometheus counter at scrape time: every worker thread serves reads, and one shared atomic
//! bounced its cache line between the cores on every read.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use prometheus::{
    Encoder, Gauge, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The node's metrics.
pub struct Metrics {
    /// The registry everything below is registered in.
    registry: Registry,
    /// Time from receiving a write to acknowledging it, by durability mode.
    pub commit_seconds: HistogramVec,
    /// Writes acknowledged.
    pub writes: IntCounter,
    /// Reads served.
    pub reads: Sharded,
    /// `reads` as Prometheus sees it, brought up to date at scrape time.
    reads_total: IntCounter,
    /// Held while `render` brings counters up to date (two scrapes at once would add twice).
    rendering: Mutex<()>,
    /// Requests answered with an error, by kind.
    pub errors: IntCounterVec,
    /// This node's applied index.
    applied: IntGauge,
    /// This node's commit index.
    committed: IntGauge,
    /// This node's term.
    term: IntGauge,
    /// Whether this node leads (1) or not (0).
    is_leader: Gauge,
    /// On the leader: entries each other member has not applied.
    lag_entries: IntGaugeVec,
    /// On the leader: age of the oldest record each other member has not applied.
    lag_seconds: prometheus::GaugeVec,
    /// Queued writes accepted (`/db/execute?queue`).
    pub queue_accepted: IntCounter,
    /// Queued writes refused because the queue was full.
    pub queue_refused: IntCounter,
    /// Queued writes committed.
    pub queue_committed: IntCounter,
    /// Queued writes failed (a statement's error, or refused by the leader).
    pub queue_failed: IntCounter,
    /// Flush attempts that left queued writes to retry (no leader, forward failed, …).
    pub queue_retries: IntCounter,
    /// Queued writes accepted and not yet committed or failed.
    pub queue_depth: IntGauge,
    /// Rows this node checksummed for table checks.
    pub checksum_rows: IntCounter,
    /// Runs of `PRAGMA optimize` on this node's copy.
    pub optimize_runs: IntCounter,
    /// `VACUUM`s this node proposed as the leader (each runs on every replica).
    pub vacuums: IntCounter,
    /// Elections this node asked for because its leader's streams closed and its lease expired
    /// (`raft::prompt_election`).
    pub prompt_elections: IntCounter,
    /// Page reads that failed their checksum (`sql::pagesum`), brought up to date at scrape
    /// time.
    page_checksum_failures: IntCounter,
    /// Write batches the writer proposed, brought up to date at scrape time.
    write_batches: IntCounter,
    /// Of those, the ones speculated on top of a batch in flight.
    write_batches_stacked: IntCounter,
    /// When the last table check that reported to this node ended (Unix seconds).
    pub check_last: Gauge,
    /// Differing chunks table checks reported to this node.
    pub check_mismatches: IntCounter,
    /// The apply hash comparison's counters (on the leader).
    apply_hash: crate::apply_hash::Counters,
    /// Scheduled backups to object storage.
    pub backups: crate::backup_report::BackupReport,
    /// The data directory's free space and what a full disk refused.
    disk: Disk,
}

/// The disk's metrics, brought up to date from [`raft::space::Report`] at scrape time.
struct Disk {
    /// 1 while the disk is full (writes and appends refused).
    full: IntGauge,
    /// Free bytes at the last observation.
    free: IntGauge,
    /// Times the disk became full.
    episodes: IntCounter,
    /// Writes refused with 507.
    refused_writes: IntCounter,
    /// Appends from a leader refused.
    refused_appends: IntCounter,
    /// Applies tried again after the disk was full.
    apply_retries: IntCounter,
}

impl Disk {
    /// Creates the metrics and registers them in `registry`.
    fn new(registry: &Registry) -> Disk {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let disk = Disk {
            full: gauge(
                "keel_disk_full",
                "1 while this node's disk is full: writes answer 507 and appends from a leader are refused",
            ),
            free: gauge(
                "keel_disk_free_bytes",
                "Free bytes in the data directory's file system, as last observed",
            ),
            episodes: counter("keel_disk_full_total", "Times this node's disk became full"),
            refused_writes: counter(
                "keel_disk_refused_writes_total",
                "Write batches refused (507) because this node's disk was full",
            ),
            refused_appends: counter(
                "keel_disk_refused_appends_total",
                "Appends from a leader refused because this node's disk was full",
            ),
            apply_retries: counter(
                "keel_disk_apply_retries_total",
                "Applies of committed entries that found the disk full and were tried again",
            ),
        };
        for c in [
            Box::new(disk.full.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(disk.free.clone()),
            Box::new(disk.episodes.clone()),
            Box::new(disk.refused_writes.clone()),
            Box::new(disk.refused_appends.clone()),
            Box::new(disk.apply_retries.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        disk
    }

    /// Brings every value up to `report`.
    fn update(&self, report: &raft::space::Report) {
        self.full.set(i64::from(report.full));
        self.free.set(i64::try_from(report.free).unwrap_or(-1));
        for (counter, value) in [
            (&self.episodes, report.episodes),
            (&self.refused_writes, report.refused_writes),
            (&self.refused_appends, report.refused_appends),
            (&self.apply_retries, report.apply_retries),
        ] {
            counter.inc_by(value.saturating_sub(counter.get()));
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let commit_seconds = HistogramVec::new(
            prometheus::HistogramOpts::new(
                "keel_commit_seconds",
                "Write latency until acknowledged, by durability",
            )
            .buckets(prometheus::exponential_buckets(0.0002, 2.0, 16).expect("valid buckets")),
            &["durability"],
        )
        .expect("valid metric");
        let writes = IntCounter::new("keel_writes_total", "Write requests acknowledged")
            .expect("valid metric");
        let reads_total =
            IntCounter::new("keel_reads_total", "Read requests served").expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new("keel_errors_total", "Requests answered with an error, by kind"),
            &["kind"],
        )
        .expect("valid metric");
        let applied =
            IntGauge::new("keel_applied_index", "Last log index applied to this node's database")
                .expect("valid metric");
        let committed =
            IntGauge::new("keel_commit_index", "Last log index this node knows committed")
                .expect("valid metric");
        let term = IntGauge::new("keel_term", "Current Raft term").expect("valid metric");
        let is_leader =
            Gauge::new("keel_is_leader", "1 if this node is the leader").expect("valid metric");
        let lag_entries = IntGaugeVec::new(
            Opts::new(
                "keel_replica_lag_entries",
                "On the leader: log entries a member has not applied",
            ),
            &["node"],
        )
        .expect("valid metric");
        let lag_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "keel_replica_lag_seconds",
                "On the leader: age of the oldest record a member has not applied",
            ),
            &["node"],
        )
        .expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let queue_accepted =
            counter("keel_queued_writes_accepted_total", "Queued writes accepted (?queue)");
        let queue_refused =
            counter("keel_queued_writes_refused_total", "Queued writes refused: queue full");
        let queue_committed =
            counter("keel_queued_writes_committed_total", "Queued writes committed");
        let queue_failed = counter(
            "keel_queued_writes_failed_total",
            "Queued writes failed (a statement's error, or refused by the leader)",
        );
        let queue_retries = counter(
            "keel_queue_flush_retries_total",
            "Flush attempts that left queued writes to retry (no leader, forward failed, ...)",
        );
        let queue_depth = IntGauge::new(
            "keel_queue_depth",
            "Queued writes accepted, not committed or failed yet",
        )
        .expect("valid metric");
        let checksum_rows =
            counter("keel_checksum_rows_total", "Rows this node checksummed for table checks");
        let optimize_runs =
            counter("keel_optimize_runs_total", "Runs of PRAGMA optimize on this node's copy");
        let vacuums = counter(
            "keel_vacuums_total",
            "VACUUMs this node proposed as the leader (each runs on every replica)",
        );
        let prompt_elections = counter(
            "keel_prompt_elections_total",
            "Elections asked for because the leader's replication streams closed and its lease expired",
        );
        let page_checksum_failures = counter(
            "keel_page_checksum_failures_total",
            "Page reads of the database file that failed their checksum: damage on this node's disk",
        );
        let write_batches =
            counter("keel_write_batches_total", "Write batches this node proposed as the leader");
        let write_batches_stacked = counter(
            "keel_write_batches_stacked_total",
            "Write batches proposed on top of a batch in flight (--write-pipeline)",
        );
        let check_last = Gauge::new(
            "keel_check_last_timestamp_seconds",
            "When the last table check (keel check) reported to this node ended, Unix time",
        )
        .expect("valid metric");
        let check_mismatches = counter(
            "keel_check_mismatches_total",
            "Differing chunks found by table checks that reported to this node",
        );
        let uncompared = IntCounterVec::new(
            Opts::new(
                "keel_apply_hash_uncompared_total",
                "Followers' apply hash reports not compared: no_hash (an older version, or a chain not started yet), outside_ring (index not among this node's last 16384 applied entries), other_origin (chains that start at different entries)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let apply_hash = crate::apply_hash::Counters {
            compared: counter(
                "keel_apply_hash_compared_total",
                "Followers' apply hash reports this node compared with its own hash (as leader)",
            ),
            mismatches: counter(
                "keel_apply_hash_mismatches_total",
                "Followers found with another apply hash than this leader's at the same index (once until they match again)",
            ),
            no_hash: uncompared.with_label_values(&["no_hash"]),
            outside_ring: uncompared.with_label_values(&["outside_ring"]),
            other_origin: uncompared.with_label_values(&["other_origin"]),
        };
        for c in [
            Box::new(commit_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(apply_hash.compared.clone()),
            Box::new(apply_hash.mismatches.clone()),
            Box::new(uncompared.clone()),
            Box::new(writes.clone()),
            Box::new(reads_total.clone()),
            Box::new(errors.clone()),
            Box::new(applied.clone()),
            Box::new(committed.clone()),
            Box::new(term.clone()),
            Box::new(is_leader.clone()),
            Box::new(lag_entries.clone()),
            Box::new(lag_seconds.clone()),
            Box::new(queue_accepted.clone()),
            Box::new(queue_refused.clone()),
            Box::new(queue_committed.clone()),
            Box::new(queue_failed.clone()),
            Box::new(queue_retries.clone()),
            Box::new(queue_depth.clone()),
            Box::new(checksum_rows.clone()),
            Box::new(optimize_runs.clone()),
            Box::new(vacuums.clone()),
            Box::new(prompt_elections.clone()),
            Box::new(page_checksum_failures.clone()),
            Box::new(write_batches.clone()),
            Box::new(write_batches_stacked.clone()),
            Box::new(check_last.clone()),
            Box::new(check_mismatches.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        let disk = Disk::new(&registry);
        let backups = crate::backup_report::BackupReport::new(&registry);
        // Export every error kind from the start, at zero, so dashboards see the series.
        for kind in crate::error::KINDS {
            errors.with_label_values(&[kind]).reset();
        }
        Metrics {
            registry,
            commit_seconds,
            writes,
            reads: Sharded::default(),
            reads_total,
            rendering: Mutex::new(()),
            errors,
            applied,
            committed,
            term,
            is_leader,
            lag_entries,
            lag_seconds,
            queue_accepted,
            queue_refused,
            queue_committed,
            queue_failed,
            queue_retries,
            queue_depth,
            checksum_rows,
            optimize_runs,
            vacuums,
            prompt_elections,
            page_checksum_failures,
            write_batches,
            write_batches_stacked,
            check_last,
            check_mismatches,
            apply_hash,
            disk,
            backups,
        }
    }

    /// The counters of the apply hash comparison ([`crate::apply_hash::Comparer`]).
    pub fn apply_hash_counters(&self) -> crate::apply_hash::Counters {
        self.apply_hash.clone()
    }

    /// Brings `keel_reads_total` up to the sharded count.
    fn export_reads(&self) {
        let _rendering = self.rendering.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (reads, exported) = (self.reads.get(), self.reads_total.get());
        self.reads_total.inc_by(reads.saturating_sub(exported));
    }

    /// Refreshes the state gauges and renders everything in Prometheus text format.
    pub fn render(
        &self,
        raft: &raft::Raft,
        progress: &leader::Progress,
        writer: &leader::Counters,
        disk: &raft::space::Report,
    ) -> String {
        self.export_reads();
        {
            let _rendering =
                self.rendering.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.disk.update(disk);
            for (counter, value) in [
                (&self.write_batches, writer.proposed()),
                (&self.write_batches_stacked, writer.stacked()),
                (&self.page_checksum_failures, sql::pagesum::failures()),
            ] {
                counter.inc_by(value.saturating_sub(counter.get()));
            }
        }
        let s = raft::cluster::state(raft);
        self.applied.set(s.applied_index as i64);
        self.committed.set(s.commit_index as i64);
        self.term.set(s.term as i64);
        let leading = s.role == raft::cluster::Role::Leader;
        self.is_leader.set(if leading { 1.0 } else { 0.0 });
        self.lag_entries.reset();
        self.lag_seconds.reset();
        if leading {
            let now = Instant::now();
            for m in s.members.iter().filter(|m| m.id != s.id) {
                if let Some(lag) = progress.lag(m.id, s.last_log_index, now) {
                    let node = m.id.to_string();
                    self.lag_entries.with_label_values(&[node.as_str()]).set(lag.entries as i64);
                    self.lag_seconds.with_label_values(&[node.as_str()]).set(lag.ms as f64 / 1e3);
                }
            }
        }
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }
}

/// Shards of a [`Sharded`] counter; more than the threads that usually update one at once.
const SHARDS: usize = 16;

/// A counter that many threads add to at once without sharing a cache line: each thread adds
/// to one of [`SHARDS`] cells (chosen once per thread, round robin), and [`Sharded::get`] sums
/// them.
#[derive(Debug, Default)]
pub struct Sharded {
    /// The cells.
    cells: [Cell; SHARDS],
}

/// One cell of a [`Sharded`] counter, alone on its cache lines (two, against the adjacent-line
/// prefetcher).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Cell(AtomicU64);

impl Sharded {
    /// Adds one.
    pub fn inc(&self) {
        self.cells[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.cells.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

/// This thread's shard.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_counts_from_every_thread() {
        let counter = Sharded::default();
        std::thread::scope(|s| {
            for _ in 0..20 {
                s.spawn(|| (0..1000).for_each(|_| counter.inc()));
            }
        });
        assert_eq!(counter.get(), 20_000);
    }

    #[test]
    fn reads_reach_prometheus_at_scrape_time() {
        let metrics = Metrics::new();
        (0..3).for_each(|_| metrics.reads.inc());
        assert_eq!(metrics.reads_total.get(), 0, "until a scrape");
        metrics.export_reads();
        metrics.export_reads();
        assert_eq!(metrics.reads_total.get(), 3);
        metrics.reads.inc();
        metrics.export_reads();
        assert_eq!(metrics.reads_total.get(), 4);
    }
}
