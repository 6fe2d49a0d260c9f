//! The write queue's bookkeeping: sequence numbers, what is still pending, and the outcomes of
//! finished queued writes. Pure: no I/O, no clock (callers pass `now`), no tasks.
//!
//! Numbers are handed out one by one ([`Ledger::assign`]) in the order requests enter the
//! queue, and the queue is flushed in that order, so the finished numbers are always a prefix:
//! everything up to [`Ledger::flushed`] has an outcome, everything after it up to the last
//! number handed out is pending. That makes `pending` exact without storing anything per
//! pending request.
//!
//! Outcomes are kept for [`Retention::max_age`] and at most [`Retention::max_outcomes`] of
//! them, whichever runs out first; older ones are forgotten, and asking for them is the same
//! as asking for a number this node never gave ([`Lookup::Unknown`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A queued write's sequence number. rqlite's are `int64` nanoseconds-based numbers; so are
/// ours (see [`Ledger::new`]).
pub type Seq = i64;

/// The longest error message kept with a failed outcome, in bytes; longer ones are cut, so
/// that the table's memory stays bounded.
pub const MAX_ERROR_LEN: usize = 512;

/// How many outcomes are kept, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// At most this many outcomes (the oldest go first).
    pub max_outcomes: usize,
    /// Outcomes older than this are forgotten.
    pub max_age: Duration,
}

impl Default for Retention {
    /// 10 minutes, at most 100,000: long enough for a client that polls after a restart or a
    /// network blip, and at most about 60 MB even if every outcome carried a maximal error
    /// (a committed outcome takes about 50 bytes).
    fn default() -> Self {
        Retention { max_outcomes: 100_000, max_age: Duration::from_secs(600) }
    }
}

pub use keel_api::queue::Outcome;

/// A failure, with the message cut to [`MAX_ERROR_LEN`] bytes.
pub fn failed(error: &str, statement: Option<usize>, lsn: Option<wal::Lsn>) -> Outcome {
    Outcome::Failed { error: truncate(error), statement, lsn }
}

/// Cuts `s` to at most [`MAX_ERROR_LEN`] bytes, on a character boundary.
fn truncate(s: &str) -> String {
    if s.len() <= MAX_ERROR_LEN {
        return s.to_string();
    }
    let mut end = MAX_ERROR_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What is known about a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Queued here and not finished yet.
    Pending,
    /// Finished, with this outcome.
    Done(Outcome),
    /// Not handed out by this node since it started, or its outcome was forgotten.
    Unknown,
}

/// Sequence numbers and outcomes of one node's write queue.
///
/// Invariants:
/// * `start < flushed + 1 <= last + 1`: numbers `start+1 ..= flushed` are finished, numbers
///   `flushed+1 ..= last` are pending.
/// * `outcomes` is ordered by number, every number in it is in `start+1 ..= flushed`, and the
///   times are non-decreasing.
#[derive(Debug)]
pub struct Ledger {
    /// The number before the first one of this run.
    start: Seq,
    /// The last number handed out.
    last: Seq,
    /// Every number up to this one is finished.
    flushed: Seq,
    /// The kept outcomes, oldest first, with when each was recorded.
    outcomes: VecDeque<(Seq, Outcome, Instant)>,
    /// How many outcomes to keep, and for how long.
    retention: Retention,
}

impl Ledger {
    /// A ledger whose first number will be `start + 1`. rqlite starts from the wall clock in
    /// nanoseconds, so numbers keep growing across restarts (unless the clock goes back by more
    /// than the previous run handed out); so does `keel serve`.
    pub fn new(start: Seq, retention: Retention) -> Ledger {
        Ledger { start, last: start, flushed: start, outcomes: VecDeque::new(), retention }
    }

    /// Hands out the next number.
    pub fn assign(&mut self) -> Seq {
        self.last += 1;
        self.last
    }

    /// Records the outcomes of the next finished requests: exactly the numbers after
    /// [`Ledger::flushed`], in order. Panics otherwise: the queue is flushed in order, so a
    /// gap or a repeat is a bug in the flusher.
    pub fn finish(&mut self, outcomes: impl IntoIterator<Item = (Seq, Outcome)>, now: Instant) {
        for (seq, outcome) in outcomes {
            assert!(
                seq == self.flushed + 1 && seq <= self.last,
                "queued writes finish in order: expected {} (last handed out {}), got {seq}",
                self.flushed + 1,
                self.last
            );
            self.flushed = seq;
            self.outcomes.push_back((seq, outcome, now));
        }
        self.expire(now);
    }

    /// What is known about `seq`.
    pub fn lookup(&mut self, seq: Seq, now: Instant) -> Lookup {
        self.expire(now);
        if seq > self.flushed && seq <= self.last {
            return Lookup::Pending;
        }
        match self.outcomes.binary_search_by_key(&seq, |(s, _, _)| *s) {
            Ok(i) => Lookup::Done(self.outcomes[i].1.clone()),
            Err(_) => Lookup::Unknown,
        }
    }

    /// How many requests are queued and not finished.
    pub fn depth(&self) -> u64 {
        (self.last - self.flushed).unsigned_abs()
    }

    /// The last finished number, or 0 if none finished since this node started (rqlite's
    /// `http.queue._default.sequence_number` in `/status`).
    pub fn flushed(&self) -> Seq {
        if self.flushed == self.start { 0 } else { self.flushed }
    }

    /// The pending numbers, first and last, if any.
    pub fn pending(&self) -> Option<(Seq, Seq)> {
        (self.last > self.flushed).then_some((self.flushed + 1, self.last))
    }

    /// Forgets outcomes beyond the retention.
    fn expire(&mut self, now: Instant) {
        while self.outcomes.len() > self.retention.max_outcomes {
            self.outcomes.pop_front();
        }
        while let Some((_, _, at)) = self.outcomes.front() {
            if now.saturating_duration_since(*at) <= self.retention.max_age {
                break;
            }
            self.outcomes.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(lsn: wal::Lsn) -> Outcome {
        Outcome::Committed { lsn }
    }

    #[test]
    fn numbers_are_pending_until_finished_in_order() {
        let now = Instant::now();
        let mut l = Ledger::new(1000, Retention::default());
        assert_eq!(l.flushed(), 0, "nothing finished yet");
        let (a, b, c) = (l.assign(), l.assign(), l.assign());
        assert_eq!((a, b, c), (1001, 1002, 1003));
        assert_eq!(l.depth(), 3);
        assert_eq!(l.pending(), Some((1001, 1003)));
        l.finish([(a, committed(7)), (b, failed("no such table: t", Some(0), None))], now);
        assert_eq!(l.lookup(a, now), Lookup::Done(committed(7)));
        assert!(matches!(l.lookup(b, now), Lookup::Done(Outcome::Failed { .. })));
        assert_eq!(l.lookup(c, now), Lookup::Pending);
        assert_eq!(l.lookup(1000, now), Lookup::Unknown, "before this run");
        assert_eq!(l.lookup(1004, now), Lookup::Unknown, "not handed out");
        assert_eq!((l.depth(), l.flushed()), (1, 1002));
    }

    #[test]
    #[should_panic(expected = "finish in order")]
    fn finishing_out_of_order_is_a_bug() {
        let mut l = Ledger::new(0, Retention::default());
        l.assign();
        let b = l.assign();
        l.finish([(b, committed(1))], Instant::now());
    }

    #[test]
    fn outcomes_expire_by_count_and_age() {
        let t0 = Instant::now();
        let retention = Retention { max_outcomes: 2, max_age: Duration::from_secs(10) };
        let mut l = Ledger::new(0, retention);
        let seqs: Vec<Seq> = (0..3).map(|_| l.assign()).collect();
        l.finish(seqs.iter().map(|&s| (s, committed(1))), t0);
        assert_eq!(l.lookup(1, t0), Lookup::Unknown, "beyond the count");
        assert_eq!(l.lookup(2, t0), Lookup::Done(committed(1)));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(l.lookup(3, later), Lookup::Unknown, "beyond the age");
        assert_eq!(l.depth(), 0);
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let Outcome::Failed { error, .. } = failed(&long, None, None) else { unreachable!() };
        assert!(error.len() <= MAX_ERROR_LEN + "…".len());
        assert!(error.ends_with('…'));
    }
}
