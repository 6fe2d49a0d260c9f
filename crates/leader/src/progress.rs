//! What the leader knows of the other members' applied positions, and when it appended entries.
//!
//! Raft tells the leader how far each member's log matches (durably stored), but not how far
//! each has *applied*. Every non-leader node therefore reports its applied index to the leader
//! after each apply (and once a second while idle); [`Progress::report`] records it. `sync` and
//! `replicas:K` writes wait on it ([`Progress::wait`]); `/status` and `/metrics` derive lag
//! from it ([`Progress::lag`]).
//!
//! Append times are kept for the last [`APPEND_TIMES`] records so lag can be given in
//! milliseconds: a member that has applied through index i lags by the age of the oldest
//! record after i.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raft::NodeId;
use tokio::sync::watch;
use wal::Lsn;

/// How many recent append times are kept for lag in milliseconds.
pub const APPEND_TIMES: usize = 65_536;

/// Followers' applied positions and recent append times. Shared; all methods take `&self`.
pub struct Progress {
    /// Last applied index reported by each member.
    applied: watch::Sender<BTreeMap<NodeId, Lsn>>,
    /// `(index, when the leader proposed it)`, ascending by index, at most [`APPEND_TIMES`].
    appended: Mutex<VecDeque<(Lsn, Instant)>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            applied: watch::channel(BTreeMap::new()).0,
            appended: Mutex::new(VecDeque::new()),
        }
    }
}

/// A member's lag behind the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Entries the leader has that the member has not applied.
    pub entries: Lsn,
    /// How long ago the leader proposed the oldest record the member has not applied, in
    /// whole milliseconds.
    pub ms: u64,
    /// The same age in microseconds.
    pub us: u64,
}

impl Progress {
    /// Records `id`'s applied index. A node's applied index only grows, whoever leads, so
    /// reports stay true across leadership changes; a node re-added with an empty data
    /// directory reports a lower value, which replaces the old one.
    pub fn report(&self, id: NodeId, applied: Lsn) {
        self.applied.send_if_modified(|map| map.insert(id, applied) != Some(applied));
    }

    /// The applied index `id` last reported.
    pub fn applied(&self, id: NodeId) -> Option<Lsn> {
        self.applied.borrow().get(&id).copied()
    }

    /// Notes that the record at `lsn` was proposed at `at`.
    pub fn appended(&self, lsn: Lsn, at: Instant) {
        let mut q = self.appended.lock().expect("progress mutex poisoned");
        if q.back().is_some_and(|(last, _)| *last >= lsn) {
            return;
        }
        q.push_back((lsn, at));
        while q.len() > APPEND_TIMES {
            q.pop_front();
        }
    }

    /// A member's lag, given the leader's last log index; `None` if it never reported.
    pub fn lag(&self, id: NodeId, last_log_index: Lsn, now: Instant) -> Option<Lag> {
        let applied = self.applied(id)?;
        let q = self.appended.lock().expect("progress mutex poisoned");
        Some(lag_of(&q, applied, last_log_index, now))
    }

    /// Waits until `needed` of `targets` have applied `lsn`, or `timeout` passes; on timeout
    /// returns the targets that have not.
    pub async fn wait(
        &self,
        lsn: Lsn,
        targets: &[NodeId],
        needed: usize,
        timeout: Duration,
    ) -> Result<(), Vec<NodeId>> {
        if needed == 0 {
            return Ok(());
        }
        let mut rx = self.applied.subscribe();
        let met = |map: &BTreeMap<NodeId, Lsn>| confirmed(map, targets, lsn).0 >= needed;
        match tokio::time::timeout(timeout, rx.wait_for(met)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(confirmed(&self.applied.borrow(), targets, lsn).1),
        }
    }
}

/// How many of `targets` have applied `lsn`, and which have not.
pub fn confirmed(
    applied: &BTreeMap<NodeId, Lsn>,
    targets: &[NodeId],
    lsn: Lsn,
) -> (usize, Vec<NodeId>) {
    let (done, missing): (Vec<NodeId>, Vec<NodeId>) =
        targets.iter().partition(|id| applied.get(id).is_some_and(|a| *a >= lsn));
    (done.len(), missing)
}

/// Lag of a member that applied through `applied`, from the append times in `q`.
fn lag_of(q: &VecDeque<(Lsn, Instant)>, applied: Lsn, last_log_index: Lsn, now: Instant) -> Lag {
    let entries = last_log_index.saturating_sub(applied);
    let age = if entries == 0 {
        Duration::ZERO
    } else {
        // The oldest known record the member has not applied.
        let i = q.partition_point(|(lsn, _)| *lsn <= applied);
        q.get(i).map_or(Duration::ZERO, |(_, at)| now.saturating_duration_since(*at))
    };
    Lag { entries, ms: age.as_millis() as u64, us: age.as_micros() as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmed_counts_targets_at_or_past_lsn() {
        let applied = BTreeMap::from([(2, 10), (3, 9), (4, 12)]);
        assert_eq!(confirmed(&applied, &[2, 3, 4, 5], 10), (2, vec![3, 5]));
        assert_eq!(confirmed(&applied, &[], 10), (0, vec![]));
    }

    #[test]
    fn reports_replace_the_previous_value() {
        let p = Progress::default();
        assert_eq!(p.applied(2), None);
        p.report(2, 10);
        assert_eq!(p.applied(2), Some(10));
        p.report(2, 3);
        assert_eq!(p.applied(2), Some(3));
    }

    #[test]
    fn lag_in_entries_and_ms() {
        let t0 = Instant::now();
        let q: VecDeque<_> =
            [(5, t0), (6, t0 + Duration::from_millis(10)), (8, t0 + Duration::from_millis(30))]
                .into();
        let now = t0 + Duration::from_millis(100);
        assert_eq!(lag_of(&q, 8, 8, now), Lag { entries: 0, ms: 0, us: 0 });
        assert_eq!(lag_of(&q, 5, 8, now), Lag { entries: 3, ms: 90, us: 90_000 });
        assert_eq!(lag_of(&q, 6, 8, now), Lag { entries: 2, ms: 70, us: 70_000 });
        // Older than anything remembered: the oldest known age is a lower bound.
        assert_eq!(lag_of(&q, 1, 8, now), Lag { entries: 7, ms: 100, us: 100_000 });
    }

    #[tokio::test(start_paused = true)]
    async fn wait_reports_unconfirmed_on_timeout() {
        let p = std::sync::Arc::new(Progress::default());
        p.report(2, 5);
        let res = p.wait(5, &[2, 3], 2, Duration::from_millis(50)).await;
        assert_eq!(res, Err(vec![3]));
        let p2 = p.clone();
        let waiter =
            tokio::spawn(async move { p2.wait(6, &[2, 3], 1, Duration::from_secs(5)).await });
        p.report(3, 6);
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }
}
