//! Tests of the list-append checker: hand-built histories with and without each anomaly.

use super::*;
use std::time::{Duration, Instant};

/// A history under construction: transactions get consecutive ids.
#[derive(Default)]
struct H(Vec<Txn>);

impl H {
    fn txn(
        &mut self,
        process: usize,
        call: u64,
        ret: Option<u64>,
        outcome: Outcome,
        mops: Vec<Mop>,
    ) -> usize {
        let id = self.0.len();
        self.0.push(Txn { id, process, call, ret, outcome, mops, final_read: false });
        id
    }

    fn ok(&mut self, process: usize, call: u64, ret: u64, mops: Vec<Mop>) -> usize {
        self.txn(process, call, Some(ret), Outcome::Ok, mops)
    }

    fn final_read(&mut self, call: u64, ret: u64, mops: Vec<Mop>) -> usize {
        let id = self.ok(99, call, ret, mops);
        self.0[id].final_read = true;
        id
    }
}

fn a(key: u64, value: u64) -> Mop {
    Mop::Append { key, value }
}

fn r(key: u64, list: &[u64]) -> Mop {
    Mop::Read { key, value: Some(list.to_vec()) }
}

fn kinds(anomalies: &[Anomaly]) -> Vec<&str> {
    anomalies.iter().map(|a| a.kind.as_str()).collect()
}

/// Checks with and without real-time edges; both must give `expected` kinds.
fn expect(h: &H, expected: &[&str]) -> Vec<Anomaly> {
    let plain = check_append(&h.0, false);
    assert_eq!(kinds(&plain), expected, "{plain:#?}");
    let strict = check_append(&h.0, true);
    assert_eq!(kinds(&strict), expected, "{strict:#?}");
    plain
}

#[test]
fn empty_history() {
    assert!(check_append(&[], true).is_empty());
}

#[test]
fn serial_valid() {
    let mut h = H::default();
    h.ok(0, 0, 10, vec![r(1, &[]), a(1, 1)]);
    h.ok(1, 20, 30, vec![r(1, &[1]), a(1, 2), a(2, 3), r(1, &[1, 2])]);
    h.ok(0, 40, 50, vec![a(1, 4), r(1, &[1, 2, 4]), r(2, &[3])]);
    h.ok(1, 60, 70, vec![r(2, &[3]), r(1, &[1, 2, 4])]);
    h.final_read(80, 90, vec![r(1, &[1, 2, 4]), r(2, &[3])]);
    expect(&h, &[]);
}

#[test]
fn concurrent_valid() {
    // Overlapping transactions whose serial order differs from invocation order.
    let mut h = H::default();
    h.ok(0, 0, 100, vec![a(1, 1), r(2, &[2])]);
    h.ok(1, 10, 50, vec![a(2, 2)]);
    h.ok(2, 20, 120, vec![r(1, &[1]), r(2, &[2]), a(2, 3)]);
    h.ok(3, 30, 40, vec![r(1, &[]), r(2, &[])]);
    // Failed and indeterminate transactions that nobody saw change nothing.
    h.txn(4, 35, Some(45), Outcome::Fail, vec![a(1, 10), Mop::Read { key: 2, value: None }]);
    h.txn(5, 36, None, Outcome::Info, vec![a(2, 11)]);
    // An indeterminate append that was seen took effect; it joins the graph.
    h.txn(6, 37, None, Outcome::Info, vec![a(3, 12)]);
    h.ok(7, 130, 140, vec![r(3, &[12])]);
    h.final_read(200, 210, vec![r(1, &[1]), r(2, &[2, 3]), r(3, &[12])]);
    expect(&h, &[]);
}

#[test]
fn g0_write_cycle() {
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1), a(2, 2)]);
    h.ok(1, 0, 10, vec![a(1, 3), a(2, 4)]);
    h.ok(2, 20, 30, vec![r(1, &[1, 3]), r(2, &[4, 2])]);
    let found = expect(&h, &["G0"]);
    let detail = &found[0].detail;
    assert!(detail.contains("-ww k1->") && detail.contains("-ww k2->"), "{detail}");
}

#[test]
fn g1a_aborted_read() {
    let mut h = H::default();
    h.txn(0, 0, Some(10), Outcome::Fail, vec![a(1, 1)]);
    h.ok(1, 20, 30, vec![r(1, &[1])]);
    let found = expect(&h, &["G1a"]);
    assert!(found[0].detail.contains("failed T0"), "{}", found[0].detail);
}

#[test]
fn g1b_intermediate_read() {
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1), a(1, 2)]);
    h.ok(1, 5, 30, vec![r(1, &[1])]);
    expect(&h, &["G1b"]);
    // Seeing the final append is fine, and so is a transaction reading its own
    // intermediate state.
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1), r(1, &[1]), a(1, 2)]);
    h.ok(1, 5, 30, vec![r(1, &[1, 2])]);
    expect(&h, &[]);
}

#[test]
fn g1c_circular_information_flow() {
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1), r(2, &[2])]);
    h.ok(1, 0, 10, vec![a(2, 2), r(1, &[1])]);
    let found = expect(&h, &["G1c"]);
    assert!(found[0].detail.contains("-wr k"), "{}", found[0].detail);
}

#[test]
fn g_single_read_skew() {
    // T1 sees T0's append to key 2 but not its append to key 1.
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1), a(2, 2)]);
    h.ok(1, 0, 10, vec![r(1, &[]), r(2, &[2])]);
    h.ok(2, 20, 30, vec![r(1, &[1]), r(2, &[2])]);
    let found = expect(&h, &["G-single"]);
    let detail = &found[0].detail;
    assert_eq!(detail.matches("-rw").count(), 1, "{detail}");
}

#[test]
fn g2_item_write_skew() {
    let mut h = H::default();
    h.ok(0, 0, 10, vec![r(1, &[]), a(2, 1)]);
    h.ok(1, 0, 10, vec![r(2, &[]), a(1, 2)]);
    h.ok(2, 20, 30, vec![r(1, &[2]), r(2, &[1])]);
    let found = expect(&h, &["G2-item"]);
    let detail = &found[0].detail;
    assert_eq!(detail.matches("-rw").count(), 2, "{detail}");
}

#[test]
fn internal_inconsistency() {
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1), r(1, &[])]);
    expect(&h, &["internal"]);
    // A second read must be the first plus the appends in between.
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 5)]);
    h.ok(1, 20, 30, vec![r(1, &[5]), a(1, 6), r(1, &[5, 7, 6])]);
    h.ok(2, 0, 10, vec![a(1, 7)]);
    let found = expect(&h, &["internal"]);
    assert!(found[0].detail.contains("[5, 6]"), "{}", found[0].detail);
    // Reading one's own appends is fine.
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1), r(1, &[1]), a(1, 2), r(1, &[1, 2])]);
    expect(&h, &[]);
}

#[test]
fn incompatible_order() {
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1)]);
    h.ok(1, 0, 10, vec![a(1, 2)]);
    h.ok(2, 20, 30, vec![r(1, &[1, 2])]);
    h.ok(3, 20, 30, vec![r(1, &[2])]);
    h.ok(4, 20, 30, vec![r(1, &[2, 1])]);
    let found = expect(&h, &["incompatible-order"]);
    assert!(found[0].detail.contains("2 reads of key 1 disagree"), "{}", found[0].detail);
}

#[test]
fn duplicate_elements() {
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1)]);
    h.ok(1, 20, 30, vec![r(1, &[1, 1])]);
    expect(&h, &["duplicate-elements"]);
    // The same value appended twice is reported too.
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1)]);
    h.ok(1, 0, 10, vec![a(1, 1)]);
    expect(&h, &["duplicate-elements"]);
}

#[test]
fn unknown_element() {
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1), a(2, 2)]);
    h.ok(1, 20, 30, vec![r(1, &[1, 9])]);
    h.ok(2, 20, 30, vec![r(2, &[2, 1])]);
    let found = expect(&h, &["unknown-element", "unknown-element"]);
    assert!(found[1].detail.contains("appended it to key 1"), "{}", found[1].detail);
}

#[test]
fn lost_append() {
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1)]);
    h.ok(1, 20, 30, vec![a(1, 2)]);
    h.ok(2, 20, 30, vec![a(2, 3)]);
    h.final_read(100, 110, vec![r(1, &[1]), r(2, &[3])]);
    let found = expect(&h, &["lost-append"]);
    assert!(found[0].detail.contains("2 appended by T1"), "{}", found[0].detail);
    // A value some read saw is lost too when the final read misses it, even if its writer's
    // outcome was unknown; an unseen indeterminate append is not.
    let mut h = H::default();
    h.txn(0, 0, None, Outcome::Info, vec![a(1, 1)]);
    h.txn(1, 0, None, Outcome::Info, vec![a(1, 2)]);
    h.ok(2, 20, 30, vec![r(1, &[1])]);
    h.final_read(100, 110, vec![r(1, &[])]);
    let found = check_append(&h.0, false);
    assert_eq!(kinds(&found), ["lost-append"], "{found:#?}");
    assert!(found[0].detail.contains("missing from it: [1]"), "{}", found[0].detail);
    // (With real time, the final read is also a stale read.)
    let found = check_append(&h.0, true);
    assert_eq!(kinds(&found), ["G-single-realtime", "lost-append"], "{found:#?}");
    // Appends acknowledged after the final read began may be missing from it.
    let mut h = H::default();
    h.ok(0, 0, 105, vec![a(1, 1)]);
    h.final_read(100, 110, vec![r(1, &[])]);
    expect(&h, &[]);
}

#[test]
fn stale_read_is_only_a_realtime_anomaly() {
    // T1 committed an append before T2 began, yet T2 read the empty list: serializable
    // (T2 before T1), not strictly serializable.
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1)]);
    h.ok(1, 20, 30, vec![r(1, &[])]);
    h.ok(2, 40, 50, vec![r(1, &[1])]);
    assert!(check_append(&h.0, false).is_empty());
    let strict = check_append(&h.0, true);
    assert_eq!(kinds(&strict), ["G-single-realtime"], "{strict:#?}");
    let detail = &strict[0].detail;
    assert!(detail.contains("-rt->") && detail.contains("-rw k1->"), "{detail}");
    // Touching intervals are concurrent: no real-time edge, no anomaly.
    let mut h = H::default();
    h.ok(0, 0, 20, vec![a(1, 1)]);
    h.ok(1, 20, 30, vec![r(1, &[])]);
    h.ok(2, 40, 50, vec![r(1, &[1])]);
    assert!(check_append(&h.0, true).is_empty());
}

#[test]
fn realtime_write_order() {
    // T0's append finished before T1's began, but the version order puts T1's first: only
    // the real-time edge closes the cycle, made of ww edges otherwise.
    let mut h = H::default();
    h.ok(0, 0, 10, vec![a(1, 1)]);
    h.ok(1, 20, 30, vec![a(1, 2)]);
    h.ok(2, 40, 50, vec![r(1, &[2, 1])]);
    assert!(check_append(&h.0, false).is_empty());
    assert_eq!(kinds(&check_append(&h.0, true)), ["G0-realtime"]);
}

#[test]
fn reports_are_capped_per_kind() {
    let mut h = H::default();
    for i in 0..25 {
        h.txn(0, 0, Some(10), Outcome::Fail, vec![a(i, i)]);
        h.ok(1, 20, 30, vec![r(i, &[i])]);
    }
    let found = check_append(&h.0, false);
    assert_eq!(kinds(&found), ["G1a"; LIST_PER_KIND]);
    let last = &found[LIST_PER_KIND - 1].detail;
    assert!(last.contains("15 more G1a anomalies not listed"), "{last}");
    // One cycle per component, however many edges it has.
    let mut h = H::default();
    for i in 0..50 {
        h.ok(0, 0, 10, vec![a(1, 2 * i), a(2, 2 * i + 1)]);
    }
    let order_1: Vec<u64> = (0..50).map(|i| 2 * i).collect();
    let order_2: Vec<u64> = (0..50).rev().map(|i| 2 * i + 1).collect();
    h.ok(1, 20, 30, vec![r(1, &order_1), r(2, &order_2)]);
    assert_eq!(kinds(&check_append(&h.0, true)), ["G0"]);
}

/// Deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (x ^ (x >> 31)) % n
    }
}

/// A history of a strictly serializable store: each transaction takes effect atomically at
/// a random instant inside its interval; `procs` processes overlap. Some transactions fail
/// (no effect) or lose their answer (effect or not). Ends with final reads of every key.
fn generate(seed: u64, n: usize, procs: usize) -> Vec<Txn> {
    let mut rng = Rng(seed);
    let mut free = vec![0u64; procs];
    let mut txns: Vec<Txn> = Vec::with_capacity(n);
    let mut plan: Vec<(u64, usize, bool)> = Vec::with_capacity(n);
    let mut next_value = 0u64;
    for i in 0..n {
        let process = (0..procs).min_by_key(|&p| free[p]).unwrap_or(0);
        let call = free[process] + 1 + rng.below(20_000);
        let commit = call + rng.below(200_000);
        let ret = commit + 1 + rng.below(200_000);
        free[process] = ret;
        let (outcome, happens) = match rng.below(50) {
            0 => (Outcome::Fail, false),
            1 => (Outcome::Info, rng.below(2) == 0),
            _ => (Outcome::Ok, true),
        };
        let base = i as u64 / 100;
        let mops = (0..1 + rng.below(4))
            .map(|_| {
                let key = base + rng.below(8);
                if rng.below(2) == 0 {
                    next_value += 1;
                    a(key, next_value)
                } else {
                    Mop::Read { key, value: None }
                }
            })
            .collect();
        let ret = (outcome != Outcome::Info).then_some(ret);
        txns.push(Txn { id: i, process, call, ret, outcome, mops, final_read: false });
        plan.push((commit, i, happens));
    }
    plan.sort_unstable();
    let mut state: HashMap<u64, Vec<u64>> = HashMap::new();
    for (_, i, happens) in plan {
        if !happens {
            continue;
        }
        let record = txns[i].outcome == Outcome::Ok;
        for mop in &mut txns[i].mops {
            match mop {
                Mop::Append { key, value } => state.entry(*key).or_default().push(*value),
                Mop::Read { key, value } => {
                    if record {
                        *value = Some(state.get(key).cloned().unwrap_or_default());
                    }
                }
            }
        }
    }
    let end = free.iter().max().copied().unwrap_or(0) + 1_000;
    let mut keys: Vec<u64> = state.keys().copied().collect();
    keys.sort_unstable();
    for (j, chunk) in keys.chunks(4).enumerate() {
        let id = txns.len();
        let call = end + 10 * j as u64;
        let mops = chunk.iter().map(|k| r(*k, &state[k])).collect();
        txns.push(Txn {
            id,
            process: procs,
            call,
            ret: Some(call + 5),
            outcome: Outcome::Ok,
            mops,
            final_read: true,
        });
    }
    txns
}

#[test]
fn generated_valid_history() {
    let txns = generate(1, 20_000, 10);
    for realtime in [false, true] {
        let begin = Instant::now();
        let found = check_append(&txns, realtime);
        let took = begin.elapsed();
        assert!(found.is_empty(), "realtime {realtime}: {found:#?}");
        assert!(took < Duration::from_secs(5), "realtime {realtime} took {took:?}");
    }
}

#[test]
fn generated_history_with_faults() {
    // Drop a committed append from the final reads: a lost append.
    let mut txns = generate(2, 2_000, 5);
    let victim = txns
        .iter_mut()
        .filter(|t| t.final_read)
        .flat_map(|t| t.mops.iter_mut())
        .find_map(|m| match m {
            Mop::Read { value: Some(list), .. } if list.len() > 2 => Some(list),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no final read to corrupt"));
    victim.pop();
    let found = check_append(&txns, false);
    assert!(kinds(&found).contains(&"lost-append"), "{found:#?}");

    // Make a committed read-only transaction read a stale list: with real time, it shows.
    let mut txns = generate(3, 2_000, 5);
    let (t, m) = (0..txns.len())
        .rev()
        .filter(|&t| txns[t].outcome == Outcome::Ok && !txns[t].final_read)
        .find_map(|t| {
            let mut keys: Vec<u64> = Vec::new();
            for mop in &txns[t].mops {
                match mop {
                    Mop::Read { key, .. } if !keys.contains(key) => keys.push(*key),
                    _ => return None,
                }
            }
            txns[t]
                .mops
                .iter()
                .position(|m| matches!(m, Mop::Read { value: Some(list), .. } if list.len() > 3))
                .map(|m| (t, m))
        })
        .unwrap_or_else(|| panic!("no read to corrupt"));
    if let Mop::Read { value: Some(list), .. } = &mut txns[t].mops[m] {
        list.truncate(1);
    }
    let found = check_append(&txns, true);
    let found = kinds(&found);
    assert!(!found.is_empty() && !found.contains(&"internal"), "{found:?}");
    assert!(found.iter().all(|k| k.ends_with("-realtime") || k.starts_with('G')), "{found:?}");
}
