//! Upkeep of the database files: SQLite's `PRAGMA optimize` on this node's own copy, outside
//! the log, and `VACUUM` on every replica, through the log.
//!
//! # `PRAGMA optimize`
//!
//! [`sql::Db::optimize`], every `--optimize-interval`.
//! It runs on every node, each on its own copy: it only refreshes the query planner's
//! statistics, which steer plans and nothing else (table checks and the apply hash do not
//! cover them, and they never travel in records). It runs on the database thread between
//! writes; while the writer holds a speculation open it waits and tries again shortly.
//!
//! # `VACUUM`
//!
//! [`Node::vacuum`] (`POST /admin/vacuum`, `keel admin vacuum`) and, every
//! `--auto-vacuum-interval` on the leader, [`auto_vacuum`] when free pages are at least
//! [`AUTO_VACUUM_FREE`] of the file. It goes through the log ([`leader::Leader::vacuum`]):
//! `VACUUM` renumbers the rowids of tables with neither an INTEGER PRIMARY KEY nor an index,
//! identically on identical content, so every replica must run it at the same log position,
//! and changesets are keyed by those rowids.

use std::sync::Weak;
use std::time::{Duration, Instant};

use crate::Node;

/// How long to wait before trying again when the writer held a speculation open.
const BUSY_RETRY: Duration = Duration::from_millis(50);
/// How many times to try in one round before waiting for the next.
const BUSY_TRIES: u32 = 100;

/// Runs `PRAGMA optimize` every `every` until the node is dropped.
pub(crate) async fn optimize(node: Weak<Node>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(node) = node.upgrade() else { return };
        let started = Instant::now();
        let mut ran = false;
        for _ in 0..BUSY_TRIES {
            match node.db.run(|db| db.optimize()).await {
                Ok(true) => {
                    ran = true;
                    break;
                }
                Ok(false) => tokio::time::sleep(BUSY_RETRY).await,
                Err(error) => {
                    tracing::warn!(%error, "PRAGMA optimize failed; trying again at the next interval");
                    break;
                }
            }
        }
        if ran {
            node.metrics.optimize_runs.inc();
            tracing::info!(secs = started.elapsed().as_secs_f64(), "ran PRAGMA optimize");
        }
    }
}

/// The share of free pages at which [`auto_vacuum`] vacuums.
pub const AUTO_VACUUM_FREE: f64 = 0.25;

impl Node {
    /// Runs `VACUUM` on every replica at one log position; this node must lead. Returns the
    /// entry's index.
    pub async fn vacuum(&self) -> Result<wal::Lsn, crate::Error> {
        match self.leader.vacuum().await {
            Ok(outcome) => {
                self.metrics.vacuums.inc();
                Ok(outcome.lsn)
            }
            Err(e) => {
                self.count_error(&e);
                Err(crate::Error::Leader(e))
            }
        }
    }

    /// This node's page count and free pages, from its read pool.
    pub fn free_pages(&self) -> Option<(u64, u64)> {
        let statements = ["PRAGMA page_count", "PRAGMA freelist_count"].map(sql::Statement::new);
        let results = self.readers.query(&statements, true).ok()?;
        let number = |i: usize| match results.get(i)? {
            sql::StatementResult::Rows { values, .. } => values.first()?.first()?.as_u64(),
            _ => None,
        };
        Some((number(0)?, number(1)?))
    }
}

/// On the leader, every `every`: a `VACUUM` when free pages are at least [`AUTO_VACUUM_FREE`]
/// of the file. Runs until the node is dropped.
pub(crate) async fn auto_vacuum(node: Weak<Node>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(node) = node.upgrade() else { return };
        if !node.is_leader() {
            continue;
        }
        let Some((pages, free)) = node.free_pages() else { continue };
        if pages == 0 || (free as f64) < AUTO_VACUUM_FREE * pages as f64 {
            continue;
        }
        let started = Instant::now();
        match node.vacuum().await {
            Ok(lsn) => tracing::info!(
                lsn,
                pages,
                free,
                secs = started.elapsed().as_secs_f64(),
                "VACUUM (--auto-vacuum-interval)"
            ),
            Err(error) => {
                tracing::warn!(%error, "VACUUM failed; trying again at the next interval")
            }
        }
    }
}
