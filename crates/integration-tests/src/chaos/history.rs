//! The history of a run: every client operation with its invocation and completion, in
//! Jepsen's vocabulary (`ok`, `fail`, `info`), written as JSON lines for diagnosis.

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
    /// Its result when `ok` (workload-specific JSON), else null.
    pub result: Value,
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
        json!({
            "process": self.process,
            "node": self.node,
            "f": self.f,
            "value": self.value,
            "result": self.result,
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

    /// Every operation so far, ordered by invocation time.
    pub fn ops(&self) -> Vec<Op> {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ops.sort_by_key(|op| (op.call, op.process));
        ops
    }

    /// Every fault event so far.
    pub fn faults(&self) -> Vec<FaultEvent> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Writes `history.jsonl` (operations) and `faults.jsonl` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
        for op in self.ops() {
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
