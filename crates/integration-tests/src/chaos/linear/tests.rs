//! Tests of the register checker: hand-built and generated histories, linearizable or not.

use super::*;

const BUDGET: Duration = Duration::from_secs(30);

fn read(process: usize, call: u64, ret: u64, value: Option<i64>) -> RegOp {
    RegOp { process, call, ret: Some(ret), kind: RegKind::Read { value } }
}

fn write(process: usize, call: u64, ret: Option<u64>, value: i64) -> RegOp {
    RegOp { process, call, ret, kind: RegKind::Write { value } }
}

fn cas(process: usize, call: u64, ret: Option<u64>, from: i64, to: i64, ok: Option<bool>) -> RegOp {
    RegOp { process, call, ret, kind: RegKind::Cas { from, to, ok } }
}

fn assert_ok(ops: &[RegOp]) {
    let verdict = check_register(ops, BUDGET);
    assert_eq!(verdict, Verdict::Linearizable, "{ops:#?}");
}

fn assert_violation(ops: &[RegOp]) -> String {
    match check_register(ops, BUDGET) {
        Verdict::Violation { explanation } => explanation,
        other => panic!("expected a violation, got {other:?} for {ops:#?}"),
    }
}

#[test]
fn empty_and_trivial() {
    assert_ok(&[]);
    assert_ok(&[read(0, 0, 1, None)]);
    assert_violation(&[read(0, 0, 1, Some(1))]);
}

#[test]
fn sequential() {
    assert_ok(&[
        read(0, 0, 1, None),
        write(0, 2, Some(3), 1),
        read(1, 4, 5, Some(1)),
        cas(0, 6, Some(7), 1, 2, Some(true)),
        cas(1, 8, Some(9), 1, 3, Some(false)),
        read(0, 10, 11, Some(2)),
        write(1, 12, Some(13), 5),
        read(0, 14, 15, Some(5)),
    ]);
}

#[test]
fn concurrent_overlapping_ok() {
    // Two writes overlap; the reads see them in opposite order to their invocations.
    assert_ok(&[
        write(0, 0, Some(100), 1),
        write(1, 10, Some(90), 2),
        read(2, 20, 30, Some(2)),
        read(3, 40, 50, Some(1)),
        read(2, 110, 120, Some(1)),
    ]);
    // A read concurrent with a write may see either value, and two concurrent reads may
    // disagree as long as the older one is placed first.
    assert_ok(&[
        write(0, 0, Some(10), 1),
        write(0, 20, Some(60), 2),
        read(1, 25, 70, Some(1)),
        read(2, 30, 40, Some(2)),
        read(3, 45, 80, Some(2)),
    ]);
}

#[test]
fn stale_read() {
    let explanation = assert_violation(&[
        write(0, 0, Some(10), 1),
        write(0, 20, Some(30), 2),
        read(1, 40, 50, Some(1)),
    ]);
    assert!(explanation.contains("p1 read 1"), "{explanation}");
    assert!(explanation.contains("register at 2"), "{explanation}");
}

#[test]
fn lost_write() {
    // p1's write of 2 completed after p0's write of 1 completed, yet a later read sees 1.
    let explanation = assert_violation(&[
        write(0, 0, Some(10), 1),
        write(1, 15, Some(25), 2),
        read(2, 30, 40, Some(2)),
        read(3, 45, 55, Some(1)),
    ]);
    assert!(explanation.contains("p3 read 1"), "{explanation}");
    // Reading the absent register after any write completed is impossible too.
    assert_violation(&[write(0, 0, Some(10), 1), read(1, 11, 12, None)]);
}

#[test]
fn tie_is_concurrent() {
    // The write returned at 10 and the read was invoked at 10: concurrent, so the read may
    // still see the absent register.
    assert_ok(&[write(0, 0, Some(10), 1), read(1, 10, 20, None)]);
    assert_violation(&[write(0, 0, Some(10), 1), read(1, 11, 20, None)]);
}

#[test]
fn cas_semantics() {
    // A CAS on the absent register fails.
    assert_ok(&[cas(0, 0, Some(1), 0, 1, Some(false)), read(0, 2, 3, None)]);
    assert_violation(&[cas(0, 0, Some(1), 0, 1, Some(true))]);
    // A successful CAS needs the expected value and installs the new one.
    assert_ok(&[
        write(0, 0, Some(1), 5),
        cas(1, 2, Some(3), 5, 6, Some(true)),
        read(0, 4, 5, Some(6)),
    ]);
    assert_violation(&[
        write(0, 0, Some(1), 5),
        cas(1, 2, Some(3), 5, 6, Some(true)),
        read(0, 4, 5, Some(5)),
    ]);
    // A failed CAS must have seen another value.
    let explanation =
        assert_violation(&[write(0, 0, Some(1), 5), cas(1, 2, Some(3), 5, 6, Some(false))]);
    assert!(explanation.contains("cas 5->6 failed"), "{explanation}");
    // ...which a concurrent write can provide.
    assert_ok(&[
        write(0, 0, Some(1), 5),
        cas(1, 2, Some(10), 5, 6, Some(false)),
        write(2, 3, Some(4), 7),
        write(2, 5, Some(6), 5),
    ]);
    // Two successful CASes from the same value cannot both happen without a write between.
    assert_violation(&[
        write(0, 0, Some(1), 5),
        cas(1, 2, Some(10), 5, 6, Some(true)),
        cas(2, 2, Some(10), 5, 7, Some(true)),
    ]);
    assert_ok(&[
        write(0, 0, Some(1), 5),
        cas(1, 2, Some(10), 5, 6, Some(true)),
        cas(2, 2, Some(10), 6, 5, Some(true)),
        cas(3, 2, Some(10), 5, 7, Some(true)),
        read(0, 11, 12, Some(7)),
    ]);
}

#[test]
fn unknown_writes_later_observed() {
    // The write never answered, but a later read saw it: it took effect.
    assert_ok(&[
        write(0, 0, Some(1), 1),
        write(1, 2, None, 2),
        read(2, 10, 11, Some(2)),
        read(2, 12, 13, Some(2)),
    ]);
    // It may take effect long after its call, even after later writes completed.
    assert_ok(&[
        write(1, 0, None, 2),
        write(0, 5, Some(6), 1),
        read(2, 10, 11, Some(1)),
        read(2, 12, 13, Some(2)),
    ]);
    // But only once: after the read saw it overwritten, it cannot come back.
    assert_violation(&[
        write(1, 0, None, 2),
        read(2, 10, 11, Some(2)),
        write(0, 12, Some(13), 1),
        read(2, 14, 15, Some(2)),
    ]);
    // It cannot be seen before it was invoked.
    assert_violation(&[read(2, 0, 1, Some(2)), write(1, 2, None, 2)]);
    // An unknown CAS may have swapped...
    assert_ok(&[write(0, 0, Some(1), 1), cas(1, 2, None, 1, 3, None), read(2, 10, 11, Some(3))]);
    // ...but only from the expected value.
    assert_violation(&[
        write(0, 0, Some(1), 4),
        cas(1, 2, None, 1, 3, None),
        read(2, 10, 11, Some(3)),
    ]);
    // Chains of unknown operations, each observed by the next.
    assert_ok(&[
        write(0, 0, None, 1),
        cas(1, 1, None, 1, 2, None),
        cas(2, 2, None, 2, 3, None),
        read(3, 10, 11, Some(3)),
    ]);
}

#[test]
fn unknown_writes_never_observed() {
    assert_ok(&[
        write(0, 0, Some(1), 1),
        write(1, 2, None, 2),
        write(1, 3, None, 3),
        cas(3, 3, None, 1, 4, None),
        read(2, 10, 11, Some(1)),
        write(0, 12, Some(13), 5),
        read(2, 14, 15, Some(5)),
    ]);
    // Many unobserved unknown writes do not make a violation search blow up.
    let mut ops: Vec<RegOp> = (0..60).map(|i| write(1, i, None, 100 + i as i64)).collect();
    ops.push(write(0, 100, Some(101), 1));
    ops.push(read(2, 102, 103, Some(1)));
    ops.push(read(2, 104, 105, Some(7)));
    let begin = Instant::now();
    assert_violation(&ops);
    assert!(begin.elapsed() < Duration::from_secs(5), "{:?}", begin.elapsed());
}

/// Deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A history of an atomic register: every operation takes effect at a random instant
/// between its call and its return; `clients` clients keep invoking with small gaps, so
/// about `clients` operations overlap at any time. With `unknown`, some writes and CASes
/// lose their answer (and take effect or not).
fn generate(seed: u64, n: usize, clients: usize, unknown: bool) -> Vec<RegOp> {
    let mut rng = Rng(seed);
    let mut free = vec![0u64; clients];
    // (linearization point, op)
    let mut planned: Vec<(u64, RegOp, bool)> = Vec::with_capacity(n);
    for _ in 0..n {
        let process = (0..clients).min_by_key(|&c| free[c]).unwrap_or(0);
        let call = free[process] + rng.below(50_000);
        let at = call + 1 + rng.below(300_000);
        let ret = at + 1 + rng.below(300_000);
        free[process] = ret;
        let kind = match rng.below(10) {
            0..=3 => RegKind::Read { value: None },
            4..=6 => RegKind::Write { value: rng.below(5) as i64 },
            _ => RegKind::Cas { from: rng.below(5) as i64, to: rng.below(5) as i64, ok: None },
        };
        let lost = unknown && !matches!(kind, RegKind::Read { .. }) && rng.below(20) == 0;
        let happens = !lost || rng.below(2) == 0;
        let ret = if lost { None } else { Some(ret) };
        planned.push((at, RegOp { process, call, ret, kind }, happens));
    }
    planned.sort_by_key(|p| p.0);
    let mut state: State = None;
    let mut ops = Vec::with_capacity(n);
    for (_, mut op, happens) in planned {
        match &mut op.kind {
            RegKind::Read { value } => *value = state,
            RegKind::Write { value } => {
                if happens {
                    state = Some(*value);
                }
            }
            RegKind::Cas { from, to, ok } => {
                let swaps = state == Some(*from);
                if happens && swaps {
                    state = Some(*to);
                }
                if op.ret.is_some() {
                    *ok = Some(swaps);
                }
            }
        }
        ops.push(op);
    }
    ops.sort_by_key(|op| (op.call, op.process));
    ops
}

#[test]
fn generated_linearizable() {
    for seed in 0..5 {
        let ops = generate(seed, 1000, 10, false);
        let begin = Instant::now();
        let verdict = check_register(&ops, BUDGET);
        let took = begin.elapsed();
        assert_eq!(verdict, Verdict::Linearizable, "seed {seed}");
        assert!(took < Duration::from_secs(2), "seed {seed} took {took:?}");
    }
}

#[test]
fn generated_with_unknown_outcomes() {
    for seed in 10..15 {
        let ops = generate(seed, 1000, 10, true);
        assert!(ops.iter().any(|op| op.ret.is_none()));
        let begin = Instant::now();
        let verdict = check_register(&ops, BUDGET);
        let took = begin.elapsed();
        assert_eq!(verdict, Verdict::Linearizable, "seed {seed}");
        assert!(took < Duration::from_secs(2), "seed {seed} took {took:?}");
    }
}

/// Corrupts the read at about the middle of the history that was invoked after some write
/// had returned, making it read the absent register: impossible whatever the order.
fn corrupt(ops: &mut [RegOp]) -> usize {
    let first_write_ret = ops
        .iter()
        .filter(|op| matches!(op.kind, RegKind::Write { .. }))
        .filter_map(|op| op.ret)
        .min()
        .unwrap_or(0);
    let victim = (ops.len() / 2..ops.len())
        .find(|&i| matches!(ops[i].kind, RegKind::Read { .. }) && ops[i].call > first_write_ret)
        .unwrap_or_else(|| panic!("no read to corrupt"));
    ops[victim].kind = RegKind::Read { value: None };
    victim
}

#[test]
fn generated_with_corrupted_read() {
    for seed in 0..3 {
        let mut ops = generate(seed, 1000, 10, false);
        let victim = corrupt(&mut ops);
        let begin = Instant::now();
        let verdict = check_register(&ops, BUDGET);
        let took = begin.elapsed();
        let Verdict::Violation { explanation } = verdict else {
            panic!("seed {seed}: expected a violation, got {verdict:?}");
        };
        assert!(explanation.contains(&describe(&ops[victim])), "{explanation}");
        assert!(took < Duration::from_secs(5), "seed {seed} took {took:?}");
    }
    // A value nobody wrote.
    let mut ops = generate(7, 1000, 10, false);
    let victim = ops.len() / 3
        + ops[ops.len() / 3..]
            .iter()
            .position(|op| matches!(op.kind, RegKind::Read { .. }))
            .unwrap_or(0);
    ops[victim].kind = RegKind::Read { value: Some(999) };
    assert!(matches!(check_register(&ops, BUDGET), Verdict::Violation { .. }));
}

/// The definition, by exhaustive search: some order of the known operations, plus any
/// subset of the unknown ones, respects real time and the register's semantics.
fn brute_force(ops: &[RegOp]) -> bool {
    fn go(ops: &[RegOp], placed: &mut Vec<bool>, state: State) -> bool {
        let done = ops.iter().zip(placed.iter()).all(|(op, &p)| p || op.ret.is_none());
        if done {
            return true;
        }
        for i in 0..ops.len() {
            if placed[i] {
                continue;
            }
            // Every operation that returned before this one was invoked must be placed.
            let ready = ops
                .iter()
                .zip(placed.iter())
                .all(|(other, &p)| p || other.ret.is_none_or(|r| r >= ops[i].call));
            if !ready {
                continue;
            }
            let next = match ops[i].kind {
                RegKind::Read { value } => (value == state).then_some(state),
                RegKind::Write { value } => Some(Some(value)),
                RegKind::Cas { from, to, ok: Some(true) } => {
                    (state == Some(from)).then_some(Some(to))
                }
                RegKind::Cas { from, ok: Some(false), .. } => {
                    (state != Some(from)).then_some(state)
                }
                RegKind::Cas { from, to, ok: None } => {
                    Some(if state == Some(from) { Some(to) } else { state })
                }
            };
            if let Some(next) = next {
                placed[i] = true;
                let found = go(ops, placed, next);
                placed[i] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }
    // Same preprocessing as documented: reads and failed CASes without a return are
    // dropped, and a CAS with unknown result has no deadline.
    let ops: Vec<RegOp> = ops
        .iter()
        .filter(|op| {
            op.ret.is_some()
                || matches!(op.kind, RegKind::Write { .. } | RegKind::Cas { ok: None, .. })
        })
        .cloned()
        .map(|mut op| {
            if matches!(op.kind, RegKind::Cas { ok: None, .. }) {
                op.ret = None;
            }
            op
        })
        .collect();
    go(&ops, &mut vec![false; ops.len()], None)
}

#[test]
fn agrees_with_brute_force() {
    let mut rng = Rng(42);
    let (mut valid, mut invalid) = (0, 0);
    for _ in 0..3000 {
        let n = 1 + rng.below(7) as usize;
        let ops: Vec<RegOp> = (0..n)
            .map(|i| {
                let call = rng.below(20);
                let ret = call + rng.below(10);
                let value = rng.below(3) as i64;
                let lost = rng.below(5) == 0;
                match rng.below(3) {
                    0 => read(i, call, ret, (rng.below(4) > 0).then_some(value)),
                    1 => write(i, call, (!lost).then_some(ret), value),
                    _ => {
                        let ok = (!lost).then(|| rng.below(2) == 0);
                        cas(i, call, ok.map(|_| ret), value, rng.below(3) as i64, ok)
                    }
                }
            })
            .collect();
        let expected = brute_force(&ops);
        let verdict = check_register(&ops, BUDGET);
        let got = match verdict {
            Verdict::Linearizable => true,
            Verdict::Violation { .. } => false,
            Verdict::Timeout => panic!("timeout on {ops:#?}"),
        };
        assert_eq!(got, expected, "{ops:#?}");
        if expected {
            valid += 1;
        } else {
            invalid += 1;
        }
    }
    assert!(valid > 300 && invalid > 300, "{valid} valid, {invalid} invalid");
}

#[test]
fn budget_exhaustion() {
    let mut ops = generate(3, 1000, 10, true);
    corrupt(&mut ops);
    let verdict = check_register(&ops, Duration::ZERO);
    assert!(matches!(verdict, Verdict::Timeout | Verdict::Violation { .. }), "{verdict:?}");
    let ops = generate(4, 1000, 10, false);
    let verdict = check_register(&ops, Duration::ZERO);
    assert!(matches!(verdict, Verdict::Timeout | Verdict::Linearizable), "{verdict:?}");
    // A search that cannot finish in time: many concurrent writes and a read that nothing
    // can explain, with plenty of ways to order the rest.
    let mut ops: Vec<RegOp> = (0..40).map(|i| write(i, 0, Some(1_000), i as i64 % 3)).collect();
    ops.extend((0..40).map(|i| read(40 + i, 0, 1_000, Some(i as i64 % 3))));
    ops.push(read(99, 2_000, 2_001, Some(77)));
    let verdict = check_register(&ops, Duration::from_millis(1));
    assert!(matches!(verdict, Verdict::Timeout | Verdict::Violation { .. }), "{verdict:?}");
}
