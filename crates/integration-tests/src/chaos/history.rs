//! The history of a run: every client operation with its invocation and completion, in
//! Jepsen's vocabulary (`ok`, `fail`, `info`), written as JSON lines for diagnosis.

use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Value, json};

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It completed and took effect (a write) or returned its result (a read).
    Ok,
    /// It definitely did not take effect (refused before anything was written).
    Fail,
    /// Unknown: it may or may not have taken effect (timeout, connection lost, an answer that
    /// says the outcome is unknown).
    Info,
}

impl Outcome {
    /// Jepsen's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        }
    }
}

/// One client operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// The logical client that ran it (one operation at a time per process).
    pub process: usize,
    /// The node it was sent to.
    pub node: u64,
    /// What it does: `read`, `write`, `cas`, `add`, `transfer`, `txn`, `read-all`, ….
    pub f: &'static str,
    /// Its input (workload-specific JSON).
    pub value: Value,
    /// Its result when `ok` (workload-specific JSON, only what the checkers and a reader of
    /// the history need), else null.
    pub result: Value,
    /// The values a read of a whole set returned (set workload), kept compactly as ranges;
    /// `None` for every other operation.
    pub values: Option<Ranges>,
    /// How it ended.
    pub outcome: Outcome,
    /// Nanoseconds since the run started, at invocation.
    pub call: u64,
    /// Nanoseconds since the run started, at completion; `None` for `info` (it may take
    /// effect at any later time).
    pub ret: Option<u64>,
    /// The error, for `fail` and `info`.
    pub error: Option<String>,
    /// Whether this is a read of the final state, after healing.
    pub final_read: bool,
}

impl Op {
    /// The JSON line written to `history.jsonl`.
    pub fn to_json(&self) -> Value {
        let mut result = self.result.clone();
        if let Some(values) = &self.values {
            let set = json!({ "count": values.len(), "ranges": values.to_string() });
            match &mut result {
                Value::Object(map) => {
                    map.insert("values".into(), set);
                }
                _ => result = json!({ "values": set }),
            }
        }
        json!({
            "process": self.process,
            "node": self.node,
            "f": self.f,
            "value": self.value,
            "result": result,
            "type": self.outcome.as_str(),
            "call_ms": self.call as f64 / 1e6,
            "ret_ms": self.ret.map(|r| r as f64 / 1e6),
            "error": self.error,
            "final": self.final_read,
        })
    }
}

/// A fault or recovery the nemesis carried out.
#[derive(Debug, Clone)]
pub struct FaultEvent {
    /// Nanoseconds since the run started.
    pub at: u64,
    /// What kind (`kill`, `pause`, `partition`, …, or `heal`).
    pub kind: String,
    /// Details (which nodes, which shape).
    pub detail: String,
}

/// The shared, append-only record of a run.
#[derive(Debug)]
pub struct History {
    /// When the run started; every time is relative to it.
    pub start: Instant,
    ops: Mutex<Vec<Op>>,
    faults: Mutex<Vec<FaultEvent>>,
}

impl History {
    /// An empty history starting now.
    pub fn new() -> History {
        History {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records a completed (or abandoned) operation.
    pub fn push(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    /// Records a fault event.
    pub fn fault(&self, kind: impl Into<String>, detail: impl Into<String>) {
        let event = FaultEvent { at: self.now(), kind: kind.into(), detail: detail.into() };
        eprintln!("chaos: {:>8.3}s {} {}", event.at as f64 / 1e9, event.kind, event.detail);
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }

    /// Takes every operation recorded so far out of the history (it is left empty), ordered
    /// by invocation time. The history of a long run is large: it is moved, never copied.
    pub fn take_ops(&self) -> Vec<Op> {
        let mut ops = std::mem::take(&mut *self.ops.lock().unwrap_or_else(|e| e.into_inner()));
        ops.sort_by_key(|op| (op.call, op.process));
        ops
    }

    /// Every fault event so far.
    pub fn faults(&self) -> Vec<FaultEvent> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Writes `ops` (see [`History::take_ops`]) to `history.jsonl` and the fault events to
    /// `faults.jsonl`, in `dir`.
    pub fn write(&self, dir: &Path, ops: &[Op]) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
        for op in ops {
            writeln!(out, "{}", op.to_json())?;
        }
        out.flush()?;
        let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("faults.jsonl"))?);
        for f in self.faults() {
            let line = json!({ "at_ms": f.at as f64 / 1e6, "kind": f.kind, "detail": f.detail });
            writeln!(out, "{line}")?;
        }
        out.flush()
    }
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

/// A set of integers kept as its runs of consecutive values (`[lo, hi]`, ascending, disjoint,
/// not adjacent), each run as two LEB128 varints: the gap since the previous run's end and its
/// length minus one. The values of a set read are nearly contiguous, so a read of 100,000
/// values takes a few bytes per hole instead of a JSON row per value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Ranges {
    /// The encoded runs (no spare capacity).
    bytes: Vec<u8>,
    /// How many values.
    count: u64,
}

impl Ranges {
    /// No value.
    pub const EMPTY: Ranges = Ranges { bytes: Vec::new(), count: 0 };

    /// The set of `values` (in any order; duplicates count once).
    pub fn new(values: impl IntoIterator<Item = u64>) -> Ranges {
        let mut values: Vec<u64> = values.into_iter().collect();
        if !values.is_sorted_by(|a, b| a < b) {
            values.sort_unstable();
            values.dedup();
        }
        let mut bytes = Vec::new();
        let mut run: Option<(u64, u64)> = None;
        // The value after the previous run's end (0 before the first run).
        let mut next = 0;
        let flush = |(lo, hi): (u64, u64), bytes: &mut Vec<u8>, next: &mut u64| {
            put_varint(bytes, lo - *next);
            put_varint(bytes, hi - lo);
            *next = hi.saturating_add(1);
        };
        for &v in &values {
            run = match run {
                Some((lo, hi)) if hi.checked_add(1) == Some(v) => Some((lo, v)),
                Some(done) => {
                    flush(done, &mut bytes, &mut next);
                    Some((v, v))
                }
                None => Some((v, v)),
            };
        }
        if let Some(done) = run {
            flush(done, &mut bytes, &mut next);
        }
        bytes.shrink_to_fit();
        Ranges { bytes, count: values.len() as u64 }
    }

    /// How many values.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of its encoding (what it keeps on the heap).
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// The runs, `(lo, hi)` inclusive, ascending.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut at = 0;
        let mut next = 0u64;
        std::iter::from_fn(move || {
            if at >= self.bytes.len() {
                return None;
            }
            let lo = next + get_varint(&self.bytes, &mut at);
            let hi = lo + get_varint(&self.bytes, &mut at);
            next = hi.saturating_add(1);
            Some((lo, hi))
        })
    }

    /// The values, ascending.
    pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs().flat_map(|(lo, hi)| lo..=hi)
    }

    /// Whether `v` is in it (a scan of the runs).
    pub fn contains(&self, v: u64) -> bool {
        self.runs().take_while(|&(lo, _)| lo <= v).any(|(_, hi)| v <= hi)
    }
}

/// `0-1041,1043,1045-5000`.
impl fmt::Display for Ranges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.runs().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            if lo == hi {
                write!(f, "{sep}{lo}")?;
            } else {
                write!(f, "{sep}{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Ranges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ranges({} values: {self})", self.count)
    }
}

/// Appends `v` as a LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads the LEB128 varint at `*at` (written by [`put_varint`]) and moves past it.
fn get_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    while let Some(&b) = bytes.get(*at) {
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip() {
        let cases: [Vec<u64>; 5] = [
            vec![],
            vec![0],
            vec![5, 3, 4, 4, 9, 200, 201, 1 << 40, u64::MAX],
            (0..1000).collect(),
            (0..1000).filter(|v| v % 7 != 3).collect(),
        ];
        for values in cases {
            let mut want = values.clone();
            want.sort_unstable();
            want.dedup();
            let ranges = Ranges::new(values);
            assert_eq!(ranges.values().collect::<Vec<_>>(), want);
            assert_eq!(ranges.len(), want.len() as u64);
            for v in [0, 1, 3, 4, 6, 9, 10, 200, 202, 999, 1000, 1 << 40, u64::MAX] {
                assert_eq!(ranges.contains(v), want.contains(&v), "{v} in {ranges:?}");
            }
        }
        assert_eq!(Ranges::new([1, 2, 3, 5, 7, 8]).to_string(), "1-3,5,7-8");
    }

    #[test]
    fn a_read_of_many_values_is_kept_in_a_few_bytes() {
        // 100,000 values with a hole every 1,000 (failed inserts): about 100 runs.
        let values = (0..100_000u64).filter(|v| v % 1000 != 999);
        let ranges = Ranges::new(values);
        assert_eq!(ranges.len(), 99_900);
        assert_eq!(ranges.runs().count(), 100);
        // Two varints per run, each of one or two bytes.
        assert!(ranges.encoded_len() <= 400, "{} bytes", ranges.encoded_len());
        // And what the history keeps for such a read, all told, stays small.
        let op = Op {
            process: 0,
            node: 1,
            f: "read-all",
            value: json!({ "learner": false }),
            result: json!({ "lsn": 123 }),
            values: Some(ranges),
            outcome: Outcome::Ok,
            call: 0,
            ret: Some(1),
            error: None,
            final_read: false,
        };
        assert!(op.to_json().to_string().len() < 2048);
    }
}
