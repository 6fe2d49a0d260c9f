//! Checking a history: one checker per workload, plus election safety from every node's log
//! and `/status`, plus convergence of the final state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::elle;
use super::history::{Op, Outcome, Ranges};
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
    static EMPTY: Ranges = Ranges::EMPTY;
    fn read_values(op: &Op) -> &Ranges {
        op.values.as_ref().unwrap_or(&EMPTY)
    }
    let finals: Vec<&Op> =
        ops.iter().filter(|op| op.final_read && op.outcome == Outcome::Ok).collect();
    let Some(last) = finals.last() else {
        f.violations.push("set: no final read succeeded".into());
        return f;
    };
    let present = read_values(last);
    let lost: Vec<u64> = missing(&acked, present, u64::MAX).map(|(v, _)| v).collect();
    f.lost = lost.len() as u64;
    if !lost.is_empty() {
        f.violations.push(format!(
            "set: {} of {} acknowledged inserts lost, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(10)]
        ));
    }
    let unexpected: Vec<u64> = present.values().filter(|v| !attempted.contains(v)).collect();
    if !unexpected.is_empty() {
        f.violations.push(format!("set: values never inserted are present: {unexpected:?}"));
    }
    if let Some(n) = last.result["not_integers"].as_u64() {
        f.violations.push(format!("set: {n} values that are not integers are present"));
    }
    let resurrected: Vec<u64> = present.values().filter(|v| failed.contains(v)).collect();
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
            let mut behind = 0;
            let mut oldest: Option<u64> = None;
            for (_, at) in missing(&acked, seen, op.call) {
                behind += 1;
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
            f.staleness_entries.push(behind);
            f.staleness_ms.push(oldest.map_or(0.0, |at| (op.call - at) as f64 / 1e6));
        } else {
            // A linearizable read misses nothing acknowledged before it started.
            let missed: Vec<u64> = missing(&acked, seen, op.call).map(|(v, _)| v).collect();
            if !missed.is_empty() {
                f.violations.push(format!(
                    "set: a linearizable read by process {} at {:.3}s misses {} inserts acknowledged before it began, e.g. {:?}",
                    op.process,
                    op.call as f64 / 1e9,
                    missed.len(),
                    &missed[..missed.len().min(10)]
                ));
            }
        }
    }
    f
}

/// The acknowledged values (value → acknowledgement time) acknowledged before `before` that
/// `seen` lacks, as `(value, acknowledged at)`, ascending: one walk of both.
fn missing<'a>(
    acked: &'a BTreeMap<u64, u64>,
    seen: &'a Ranges,
    before: u64,
) -> impl Iterator<Item = (u64, u64)> + 'a {
    let mut runs = seen.runs().peekable();
    acked
        .iter()
        .filter(move |&(&v, &at)| {
            at < before && {
                while runs.next_if(|&(_, hi)| hi < v).is_some() {}
                runs.peek().is_none_or(|&(lo, _)| lo > v)
            }
        })
        .map(|(&v, &at)| (v, at))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// An insert of `v`, answered at `ret` (`None`: unknown) or failed.
    fn add(v: u64, call: u64, ret: Option<u64>, outcome: Outcome) -> Op {
        Op {
            process: 0,
            node: 1,
            f: "add",
            value: json!(v),
            result: Value::Null,
            values: None,
            outcome,
            call,
            ret,
            error: None,
            final_read: false,
        }
    }

    /// An ok read of the whole set, seeing `seen`.
    fn read_all(call: u64, learner: bool, seen: &[u64], final_read: bool) -> Op {
        Op {
            process: 1,
            node: if learner { 4 } else { 1 },
            f: "read-all",
            value: json!({ "learner": learner }),
            result: json!({ "lsn": 1 }),
            values: Some(Ranges::new(seen.iter().copied())),
            outcome: Outcome::Ok,
            call,
            ret: Some(call + 1),
            error: None,
            final_read,
        }
    }

    /// Inserts 0..1000 acknowledged at 10·v + 5 ms, except 500 (failed) and 600 (unknown).
    fn inserts() -> Vec<Op> {
        (0..1000u64)
            .map(|v| {
                let call = v * 10_000_000;
                match v {
                    500 => add(v, call, Some(call + 1), Outcome::Fail),
                    600 => add(v, call, None, Outcome::Info),
                    _ => add(v, call, Some(call + 5_000_000), Outcome::Ok),
                }
            })
            .collect()
    }

    fn all_but(skip: &[u64]) -> Vec<u64> {
        (0..1000).filter(|v| !skip.contains(v)).collect()
    }

    #[test]
    fn set_checker_passes_a_clean_history() {
        let mut ops = inserts();
        // A linearizable read at 5 s sees everything acknowledged by then (and 600).
        ops.push(read_all(
            5_000_000_000,
            false,
            &(0..=600).filter(|&v| v != 500).collect::<Vec<_>>(),
            false,
        ));
        ops.push(read_all(20_000_000_000, false, &all_but(&[500]), true));
        let f = set(&ops);
        assert_eq!(f.violations, Vec::<String>::new());
        assert_eq!((f.acknowledged, f.lost), (998, 0));
    }

    #[test]
    fn set_checker_finds_lost_unexpected_and_resurrected_values() {
        let mut ops = inserts();
        let mut seen = all_but(&[17, 400]);
        seen.push(5000);
        ops.push(read_all(20_000_000_000, false, &seen, true));
        let f = set(&ops);
        assert_eq!(f.lost, 2);
        assert!(
            f.violations
                .iter()
                .any(|v| v.contains("2 of 998 acknowledged inserts lost, e.g. [17, 400]")),
            "{:?}",
            f.violations
        );
        assert!(
            f.violations.iter().any(|v| v.contains("never inserted are present: [5000]")),
            "{:?}",
            f.violations
        );
        assert!(
            f.violations.iter().any(|v| v.contains("answered as failed") && v.contains("[500]")),
            "{:?}",
            f.violations
        );
    }

    #[test]
    fn set_checker_finds_a_stale_linearizable_read_and_measures_learners() {
        let mut ops = inserts();
        // At 5 s (value 499 was acknowledged at 4.995 s), the linearizable read lacks 450..500.
        ops.push(read_all(5_000_000_000, false, &(0..450).collect::<Vec<_>>(), false));
        // A learner at the same time lacks the same 50: 450 was acknowledged at 4.505 s.
        ops.push(read_all(5_000_000_000, true, &(0..450).collect::<Vec<_>>(), false));
        // A learner that is up to date.
        ops.push(read_all(5_000_000_000, true, &(0..500).collect::<Vec<_>>(), false));
        ops.push(read_all(20_000_000_000, false, &all_but(&[500]), true));
        let f = set(&ops);
        assert_eq!(f.violations.len(), 1, "{:?}", f.violations);
        assert!(
            f.violations[0]
                .contains("misses 50 inserts acknowledged before it began, e.g. [450, 451"),
            "{}",
            f.violations[0]
        );
        assert_eq!(f.staleness_entries, vec![50, 0]);
        assert_eq!(f.staleness_ms.len(), 2);
        assert!((f.staleness_ms[0] - 495.0).abs() < 1e-6, "{:?}", f.staleness_ms);
        assert_eq!(f.staleness_ms[1], 0.0);
    }
}
