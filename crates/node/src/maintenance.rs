//! Periodic upkeep of this node's own database file, outside the log: SQLite's `PRAGMA
//! optimize` ([`sql::Db::optimize`]), every `--optimize-interval`.
//!
//! It runs on every node, each on its own copy: it only refreshes the query planner's
//! statistics, which steer plans and nothing else (table checks and the apply hash do not
//! cover them, and they never travel in records). It runs on the database thread between
//! writes; while the writer holds a speculation open it waits and tries again shortly.

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
