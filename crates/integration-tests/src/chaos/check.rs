//! Checking a history: one checker per workload, plus election safety from every node's log
//! and `/status`, plus convergence of the final state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::elle;
use super::history::{Op, Outcome};
use super::linear::{self, RegKind, RegOp, Verdict};
use super::workload::{self, BANK_ACCOUNTS, BANK_INITIAL, Workload};

/// What the checkers found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Safety violations, one line each (with details).
    pub violations: Vec<String>,
    /// Acknowledged writes whose effect is missing from the final state.
    pub lost: u64,
    /// Acknowledged writes (the denominator for `lost`).
    pub acknowledged: u64,
    /// Register keys whose check ran out of time (neither proven nor refuted).
    pub unchecked_keys: u64,
    /// Register keys checked.
    pub checked_keys: u64,
    /// Staleness of learner reads, in milliseconds (set workload).
    pub staleness_ms: Vec<f64>,
    /// Staleness of learner reads, in acknowledged inserts missing (set workload).
    pub staleness_entries: Vec<u64>,
}

/// Checks `ops` of `workload`.
pub fn check(workload: Workload, ops: &[Op]) -> Findings {
    match workload {
        Workload::Register => register(ops),
        Workload::Set => set(ops),
        Workload::Bank => bank(ops),
        Workload::Append => append(ops),
    }
}

fn key(op: &Op) -> u64 {
    op.value["key"].as_u64().unwrap_or(u64::MAX)
}

/// Linearizability per register key.
fn register(ops: &[Op]) -> Findings {
    let mut f = Findings::default();
    let mut by_key: BTreeMap<u64, Vec<RegOp>> = BTreeMap::new();
    for op in ops {
        if op.outcome == Outcome::Fail {
            continue;
        }
        let ret = if op.outcome == Outcome::Ok { op.ret } else { None };
        let kind = match op.f {
            "read" => {
                if op.outcome != Outcome::Ok {
                    continue;
                }
                let rows = workload::rows(&op.result, 0);
                RegKind::Read {
                    value: rows.first().and_then(|r| r.first()).and_then(Value::as_i64),
                }
            }
            "write" => RegKind::Write { value: op.value["value"].as_i64().unwrap_or(-1) },
            "cas" => RegKind::Cas {
                from: op.value["from"].as_i64().unwrap_or(-1),
                to: op.value["to"].as_i64().unwrap_or(-1),
                ok: (op.outcome == Outcome::Ok)
                    .then(|| workload::rows_affected(&op.result, 0) == 1),
            },
            _ => continue,
        };
        if matches!(kind, RegKind::Write { .. } | RegKind::Cas { ok: Some(true), .. })
            && op.outcome == Outcome::Ok
        {
            f.acknowledged += 1;
        }
        by_key.entry(key(op)).or_default().push(RegOp {
            process: op.process,
            call: op.call,
            ret,
            kind,
        });
    }
    for (key, history) in by_key {
        f.checked_keys += 1;
        match linear::check_register(&history, Duration::from_secs(10)) {
            Verdict::Linearizable => {}
            Verdict::Violation { explanation } => {
                f.violations.push(format!("register key {key} is not linearizable: {explanation}"));
            }
            Verdict::Timeout => f.unchecked_keys += 1,
        }
    }
    f
}

/// Every acknowledged insert is in the final read; nothing appears that was never attempted
/// or that was reported failed. Learner reads give the staleness figures.
fn set(ops: &[Op]) -> Findings {
    let mut f = Findings::default();
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new(); // value -> ack time
    let mut attempted = BTreeSet::new();
    let mut failed = BTreeSet::new();
    for op in ops.iter().filter(|op| op.f == "add") {
        let Some(v) = op.value.as_u64() else { continue };
        attempted.insert(v);
        match op.outcome {
            Outcome::Ok => {
                acked.insert(v, op.ret.unwrap_or(0));
            }
            Outcome::Fail => {
                failed.insert(v);
            }
            Outcome::Info => {}
        }
    }
    f.acknowledged = acked.len() as u64;
    let read_values = |op: &Op| -> BTreeSet<u64> {
        workload::rows(&op.result, 0)
            .iter()
            .filter_map(|r| r.first().and_then(Value::as_u64))
            .collect()
    };
    let finals: Vec<&Op> =
        ops.iter().filter(|op| op.final_read && op.outcome == Outcome::Ok).collect();
    let Some(last) = finals.last() else {
        f.violations.push("set: no final read succeeded".into());
        return f;
    };
    let present = read_values(last);
    let lost: Vec<u64> = acked.keys().copied().filter(|v| !present.contains(v)).collect();
    f.lost = lost.len() as u64;
    if !lost.is_empty() {
        f.violations.push(format!(
            "set: {} of {} acknowledged inserts lost, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(10)]
        ));
    }
    let unexpected: Vec<u64> = present.iter().copied().filter(|v| !attempted.contains(v)).collect();
    if !unexpected.is_empty() {
        f.violations.push(format!("set: values never inserted are present: {unexpected:?}"));
    }
    let resurrected: Vec<u64> = present.iter().copied().filter(|v| failed.contains(v)).collect();
    if !resurrected.is_empty() {
        f.violations.push(format!(
            "set: {} inserts answered as failed (nothing written) are present, e.g. {:?}",
            resurrected.len(),
            &resurrected[..resurrected.len().min(10)]
        ));
    }
    for op in
        ops.iter().filter(|op| op.f == "read-all" && op.outcome == Outcome::Ok && !op.final_read)
    {
        let seen = read_values(op);
        if op.value["learner"] == true {
            let missing: Vec<u64> = acked
                .iter()
                .filter(|&(v, &at)| at < op.call && !seen.contains(v))
                .map(|(_, &at)| at)
                .collect();
            let oldest = missing.iter().min().copied();
            f.staleness_entries.push(missing.len() as u64);
            f.staleness_ms.push(oldest.map_or(0.0, |at| (op.call - at) as f64 / 1e6));
        } else {
            // A linearizable read misses nothing acknowledged before it started.
            let missing: Vec<u64> = acked
                .iter()
                .filter(|&(v, &at)| at < op.call && !seen.contains(v))
                .map(|(v, _)| *v)
                .collect();
            if !missing.is_empty() {
                f.violations.push(format!(
                    "set: a linearizable read by process {} at {:.3}s misses {} inserts acknowledged before it began, e.g. {:?}",
                    op.process,
                    op.call as f64 / 1e9,
                    missing.len(),
                    &missing[..missing.len().min(10)]
                ));
            }
        }
    }
    f
}

/// The total of every read (from any node, at any level) is the opening total.
fn bank(ops: &[Op]) -> Findings {
    let mut f = Findings::default();
    let total = BANK_ACCOUNTS * BANK_INITIAL;
    let mut bad = 0;
    for op in ops.iter().filter(|op| op.f == "read" && op.outcome == Outcome::Ok) {
        let rows = workload::rows(&op.result, 0);
        let sum: i64 = rows.iter().filter_map(|r| r.get(1).and_then(Value::as_i64)).sum();
        if sum != total || rows.len() as i64 != BANK_ACCOUNTS {
            bad += 1;
            if bad <= 10 {
                f.violations.push(format!(
                    "bank: read by process {} on node {} at {:.3}s ({}) has {} accounts totalling {sum}, expected {BANK_ACCOUNTS} totalling {total}: {rows:?}",
                    op.process,
                    op.node,
                    op.call as f64 / 1e9,
                    op.value["level"],
                    rows.len()
                ));
            }
        }
    }
    if bad > 10 {
        f.violations.push(format!("bank: {} more reads with a wrong total", bad - 10));
    }
    f.acknowledged =
        ops.iter().filter(|op| op.f == "transfer" && op.outcome == Outcome::Ok).count() as u64;
    f
}

/// Elle-style cycle detection on list-append transactions.
fn append(ops: &[Op]) -> Findings {
    let mut f = Findings::default();
    let mut txns = Vec::new();
    for op in ops.iter().filter(|op| op.f == "txn") {
        let Some(mops_in) = op.value.as_array() else { continue };
        let mut mops = Vec::new();
        for (j, m) in mops_in.iter().enumerate() {
            let key = m[1].as_u64().unwrap_or(0);
            if m[0] == "append" {
                mops.push(elle::Mop::Append { key, value: m[2].as_u64().unwrap_or(0) });
            } else {
                let value = (op.outcome == Outcome::Ok).then(|| {
                    let rows = workload::rows(&op.result, j);
                    workload::parse_list(
                        rows.first().and_then(|r| r.first()).and_then(Value::as_str),
                    )
                });
                mops.push(elle::Mop::Read { key, value });
            }
        }
        if op.outcome == Outcome::Ok {
            f.acknowledged +=
                mops.iter().filter(|m| matches!(m, elle::Mop::Append { .. })).count() as u64;
        }
        txns.push(elle::Txn {
            id: txns.len(),
            process: op.process,
            call: op.call,
            ret: op.ret,
            outcome: match op.outcome {
                Outcome::Ok => elle::Outcome::Ok,
                Outcome::Fail => elle::Outcome::Fail,
                Outcome::Info => elle::Outcome::Info,
            },
            mops,
            final_read: op.final_read,
        });
    }
    if !txns.iter().any(|t| t.final_read && t.outcome == elle::Outcome::Ok) {
        f.violations.push("append: no final read succeeded".into());
    }
    // Lost appends, counted one by one (the checker reports them per key).
    let mut last: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for txn in txns.iter().filter(|t| t.final_read && t.outcome == elle::Outcome::Ok) {
        for m in &txn.mops {
            if let elle::Mop::Read { key, value: Some(list) } = m {
                last.insert(*key, list.iter().copied().collect());
            }
        }
    }
    for txn in txns.iter().filter(|t| t.outcome == elle::Outcome::Ok && !t.final_read) {
        for m in &txn.mops {
            if let elle::Mop::Append { key, value } = m
                && !last.get(key).is_some_and(|seen| seen.contains(value))
            {
                f.lost += 1;
            }
        }
    }
    if f.lost > 0 {
        f.violations.push(format!(
            "append: {} of {} acknowledged appends are missing from the final read",
            f.lost, f.acknowledged
        ));
    }
    for anomaly in elle::check_append(&txns, true) {
        f.violations.push(format!("append: {}: {}", anomaly.kind, anomaly.detail));
    }
    f
}

/// Leaders by term, from each node's log (`became leader term=T`) and from `/status`
/// samples; a term with two leaders is a violation.
pub fn election_safety(
    dir: &Path,
    nodes: usize,
    sampled: &BTreeMap<u64, BTreeSet<usize>>,
) -> (Vec<String>, BTreeMap<u64, BTreeSet<usize>>) {
    let mut leaders = sampled.clone();
    for i in 1..=nodes {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("node{i}.log"))) else { continue };
        for line in text.lines().filter(|l| l.contains("became leader")) {
            let Some(rest) = line.split("term=").nth(1) else { continue };
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(term) = digits.parse::<u64>() {
                leaders.entry(term).or_default().insert(i);
            }
        }
    }
    let violations = leaders
        .iter()
        .filter(|(_, who)| who.len() > 1)
        .map(|(term, who)| {
            format!("election: term {term} had {} leaders: nodes {who:?}", who.len())
        })
        .collect();
    (violations, leaders)
}
