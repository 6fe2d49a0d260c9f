//! List-append transaction checking in the manner of Elle.
//!
//! [`check_append`] checks a history of transactions over append-only lists, following Kingsbury
//! & Alvaro, "Elle: Inferring Isolation Anomalies from Experimental Observations" (VLDB 2020)
//! and Adya's definitions of the anomalies ("Weak Consistency", 1999). Because every value is
//! appended once and a read returns the whole list, a read reveals the *version order* of its
//! key up to the point it observed, and with it the dependencies between transactions:
//!
//! * **ww**: the writer of element *i* of a key precedes the writer of element *i + 1*;
//! * **wr**: the writer of the last element a read saw precedes the reader;
//! * **rw**: a reader that saw a list ending at element *i* precedes the writer of element
//!   *i + 1* (an empty read precedes the writer of the first element);
//! * **rt** (only when checking strict serializability): a transaction that returned before
//!   another was invoked precedes it.
//!
//! A cycle of these is an anomaly, named after the weakest edges it needs: only ww is *G0*
//! (dirty write), ww and wr is *G1c* (circular information flow), exactly one rw is *G-single*
//! (read skew), more than one rw is *G2-item* (write skew and kin); a cycle that only exists
//! with real-time edges gets a `-realtime` suffix. Observations that need no cycle are reported
//! directly: reading an aborted write (*G1a*), reading a transaction's intermediate state
//! (*G1b*), a transaction not seeing its own writes (*internal*), reads of one key that are not
//! prefixes of one another (*incompatible-order*), duplicate or unknown elements, and
//! acknowledged appends missing from the final reads (*lost-append*).
//!
//! # Cost
//!
//! Everything is linear in the size of the history, apart from sorting: indexing appends and
//! reads takes one pass, real-time edges are built from the "frontier" of latest completions
//! (each transaction gets an edge from the transactions that had completed, and were not yet
//! known to precede another completed one, when it was invoked: a transitive reduction of the
//! real-time order), strongly connected components come from Tarjan's algorithm, and each
//! reported cycle is a breadth-first search inside one component.
//!
//! # Reporting
//!
//! Each strongly connected component is reported once per level (ww; ww+wr; with rw; with
//! real time), as one concrete shortest cycle through one of its edges, not every cycle it
//! holds. A component with rw edges is G-single if some rw edge closes through ww/wr edges
//! (checked in O(1) when both ends share a ww/wr component, otherwise by a bounded number of
//! searches), G2-item otherwise. Keys whose reads are incompatible or contain duplicates give
//! no version order and no edges (their anomalies are reported instead); reads that fail the
//! internal check are left out of everything else. Lost appends are reported once per key. At
//! most ten anomalies are listed per kind; the last one listed says how many more there were.
//!
//! # Ties
//!
//! Real-time precedence needs `ret < call`, strictly: a transaction that returned at the very
//! nanosecond another was invoked is concurrent with it (as in [`super::linear`]).

mod cycles;
#[cfg(test)]
mod tests;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use self::cycles::{Graph, Report, describe, find_cycles, show_list};

/// A micro-operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mop {
    /// Append `value` to the list at `key`. Values appended to one key are unique across the
    /// whole history.
    Append {
        /// The list appended to.
        key: u64,
        /// The value appended.
        value: u64,
    },
    /// Read the list at `key`: `Some(list)` as observed (empty list if absent) for a completed
    /// transaction, `None` when not known (failed or unknown transactions).
    Read {
        /// The list read.
        key: u64,
        /// What the read returned, if known.
        value: Option<Vec<u64>>,
    },
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed and answered.
    Ok,
    /// Definitely did not take effect.
    Fail,
    /// May or may not have taken effect.
    Info,
}

/// One transaction of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    /// Unique id (index in the history).
    pub id: usize,
    /// Client process that issued it.
    pub process: usize,
    /// When it was invoked (nanoseconds since the run's start).
    pub call: u64,
    /// When it returned; `None` for unknown outcome.
    pub ret: Option<u64>,
    /// Ok: committed and answered. Fail: definitely did not take effect. Info: may or may not
    /// have.
    pub outcome: Outcome,
    /// What it did, in order.
    pub mops: Vec<Mop>,
    /// A read-only transaction issued after the faults were healed and the cluster recovered;
    /// its reads are the final state used for the lost-append check.
    pub final_read: bool,
}

/// One anomaly found by [`check_append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    /// One of: "G0", "G1a", "G1b", "G1c", "G-single", "G2-item", plus the same with a
    /// "-realtime" suffix when the cycle needs a real-time edge, "incompatible-order",
    /// "duplicate-elements", "internal", "unknown-element", "lost-append".
    pub kind: String,
    /// Human-readable: the transactions involved (id, process, mops) and the edges of the cycle.
    pub detail: String,
}

/// Anomalies listed per kind; the rest are only counted.
const LIST_PER_KIND: usize = 10;
/// Edge kinds, as bits of a mask.
const WW: u8 = 1;
const WR: u8 = 2;
const RW: u8 = 4;
const RT: u8 = 8;
/// Dependency edges (no real-time).
const DEP: u8 = WW | WR | RW;
/// Breadth-first searches tried per component when looking for a G-single cycle.
const SINGLE_TRIES: usize = 32;
/// Real-time edges tried per component when classifying a real-time cycle.
const REALTIME_TRIES: usize = 16;

/// Who appended a value.
#[derive(Debug, Clone, Copy)]
struct Writer {
    /// Index of the transaction in the history.
    txn: usize,
    key: u64,
    /// Whether it is the transaction's last append to `key`.
    last: bool,
}

/// A read of a committed transaction that passed the internal check.
#[derive(Debug, Clone, Copy)]
struct ReadObs {
    txn: usize,
    mop: usize,
    /// No append of the same transaction to the same key came before it.
    external: bool,
}

/// What a transaction knows of one key while it runs, for the internal check.
struct OwnView {
    key: u64,
    /// Its own appends to the key so far.
    own: Vec<u64>,
    /// Its last read of the key (mop index) and its own appends since.
    known: Option<(usize, Vec<u64>)>,
}

/// Checks the history; `realtime` adds real-time precedence edges (T1 returned before T2 was
/// invoked), i.e. checks strict serializability instead of serializability.
pub fn check_append(txns: &[Txn], realtime: bool) -> Vec<Anomaly> {
    let mut report = Report::default();

    // Who appended what. Values are meant to be unique; a second append of one is reported.
    let mut writers: HashMap<u64, Writer> = HashMap::new();
    let mut appends_by_key: HashMap<u64, Vec<u64>> = HashMap::new();
    for (t, txn) in txns.iter().enumerate() {
        let mut later_keys: Vec<u64> = Vec::new();
        let mut last_flags = vec![false; txn.mops.len()];
        for (m, mop) in txn.mops.iter().enumerate().rev() {
            if let Mop::Append { key, .. } = mop
                && !later_keys.contains(key)
            {
                later_keys.push(*key);
                last_flags[m] = true;
            }
        }
        for (m, mop) in txn.mops.iter().enumerate() {
            let Mop::Append { key, value } = *mop else { continue };
            match writers.entry(value) {
                Entry::Occupied(first) => {
                    let first = first.get().txn;
                    report.add("duplicate-elements", || {
                        format!(
                            "value {value} was appended twice:\n  {}\n  {}",
                            describe(&txns[first]),
                            describe(txn)
                        )
                    });
                }
                Entry::Vacant(slot) => {
                    slot.insert(Writer { txn: t, key, last: last_flags[m] });
                    appends_by_key.entry(key).or_default().push(value);
                }
            }
        }
    }

    // Reads of committed transactions, checked against the transaction's own earlier reads and
    // appends ("internal").
    let mut reads_by_key: HashMap<u64, Vec<ReadObs>> = HashMap::new();
    for (t, txn) in txns.iter().enumerate() {
        if txn.outcome != Outcome::Ok {
            continue;
        }
        let mut per_key: Vec<OwnView> = Vec::new();
        for (m, mop) in txn.mops.iter().enumerate() {
            let key = match mop {
                Mop::Append { key, .. } | Mop::Read { key, .. } => *key,
            };
            let slot = match per_key.iter().position(|s| s.key == key) {
                Some(i) => i,
                None => {
                    per_key.push(OwnView { key, own: Vec::new(), known: None });
                    per_key.len() - 1
                }
            };
            let OwnView { own, known, .. } = &mut per_key[slot];
            match mop {
                Mop::Append { value, .. } => {
                    own.push(*value);
                    if let Some((_, since)) = known {
                        since.push(*value);
                    }
                }
                Mop::Read { value: None, .. } => {}
                Mop::Read { value: Some(list), .. } => {
                    let expected: Option<Vec<u64>> = match known {
                        Some((prev, since)) => {
                            let prev = read_list(&txn.mops[*prev]);
                            let fits = list.len() == prev.len() + since.len()
                                && list.starts_with(prev)
                                && list.ends_with(since);
                            (!fits).then(|| prev.iter().chain(since.iter()).copied().collect())
                        }
                        None => (!list.ends_with(own)).then(|| own.clone()),
                    };
                    match expected {
                        Some(expected) => {
                            let what = if known.is_some() {
                                "its earlier read followed by its own appends"
                            } else {
                                "a list ending with its own appends"
                            };
                            report.add("internal", || {
                                format!(
                                    "T{} read key {key} as {} where it must have seen {what}, {}\
                                     \n  {}",
                                    txn.id,
                                    show_list(list),
                                    show_list(&expected),
                                    describe(txn)
                                )
                            });
                        }
                        None => reads_by_key.entry(key).or_default().push(ReadObs {
                            txn: t,
                            mop: m,
                            external: own.is_empty(),
                        }),
                    }
                    *known = Some((m, Vec::new()));
                }
            }
        }
    }

    // Per key: the version order (the longest read, when all reads are prefixes of it), and the
    // checks on individual elements.
    let mut keys: Vec<u64> = reads_by_key.keys().copied().collect();
    keys.sort_unstable();
    let mut observed = vec![false; txns.len()];
    let mut orders: Vec<(u64, &[u64])> = Vec::new();
    let mut longest_by_key: HashMap<u64, ReadObs> = HashMap::new();
    let mut flagged: HashSet<u64> = HashSet::new();
    for &key in &keys {
        let reads = &reads_by_key[&key];
        let Some(longest) = reads.iter().copied().max_by(|a, b| {
            let (la, lb) = (obs_list(txns, a).len(), obs_list(txns, b).len());
            // Prefer the earliest of equally long reads.
            la.cmp(&lb).then(b.txn.cmp(&a.txn))
        }) else {
            continue;
        };
        longest_by_key.insert(key, longest);
        let order = obs_list(txns, &longest);
        let mut element_check = ElementCheck {
            txns,
            writers: &writers,
            observed: &mut observed,
            flagged: &mut flagged,
            report: &mut report,
        };
        let mut poisoned = element_check.check(key, longest.txn, order);
        let mut incompatible = 0usize;
        for r in reads {
            let list = obs_list(txns, r);
            if order.starts_with(list) {
                continue;
            }
            poisoned = true;
            incompatible += 1;
            element_check.check(key, r.txn, list);
            if incompatible == 1 {
                element_check.report.add("incompatible-order", || {
                    format!(
                        "reads of key {key} are not prefixes of one another: {} and {} \
                         (and maybe more, see below)\n  {}\n  {}",
                        show_list(order),
                        show_list(list),
                        describe(&txns[longest.txn]),
                        describe(&txns[r.txn])
                    )
                });
            }
        }
        if incompatible > 1 {
            report.append_to_last(
                "incompatible-order",
                &format!("\n  ({incompatible} reads of key {key} disagree with the longest one)"),
            );
        }
        if !poisoned {
            orders.push((key, order));
        }

        // Intermediate reads: the last element seen was not its writer's last append there.
        for r in reads.iter().filter(|r| r.external) {
            let Some(last) = obs_list(txns, r).last() else { continue };
            let Some(w) = writers.get(last) else { continue };
            if w.key == key && w.txn != r.txn && !w.last && txns[w.txn].outcome != Outcome::Fail {
                report.add("G1b", || {
                    format!(
                        "T{} read key {key} ending with {last}, an intermediate append of T{}\
                         \n  {}\n  {}",
                        txns[r.txn].id,
                        txns[w.txn].id,
                        describe(&txns[w.txn]),
                        describe(&txns[r.txn])
                    )
                });
            }
        }
    }

    // The dependency graph.
    let is_node: Vec<bool> = txns
        .iter()
        .zip(&observed)
        .map(|(t, &seen)| t.outcome == Outcome::Ok || (t.outcome == Outcome::Info && seen))
        .collect();
    let mut edges: Vec<(u32, u32, u8, u64)> = Vec::new();
    for &(key, order) in &orders {
        let node_writer: Vec<Option<usize>> = order
            .iter()
            .map(|v| writers.get(v).filter(|w| w.key == key && is_node[w.txn]).map(|w| w.txn))
            .collect();
        let mut previous: Option<usize> = None;
        for w in node_writer.iter().flatten().copied() {
            if let Some(p) = previous
                && p != w
            {
                edges.push((p as u32, w as u32, WW, key));
            }
            previous = Some(w);
        }
        // next_writer[i]: the first node writer at position i or later.
        let mut next_writer: Vec<Option<usize>> = vec![None; order.len() + 1];
        for i in (0..order.len()).rev() {
            next_writer[i] = node_writer[i].or(next_writer[i + 1]);
        }
        for r in reads_by_key[&key].iter().filter(|r| r.external) {
            let len = obs_list(txns, r).len();
            if let Some(w) = len.checked_sub(1).and_then(|i| node_writer[i])
                && w != r.txn
            {
                edges.push((w as u32, r.txn as u32, WR, key));
            }
            if let Some(w) = next_writer[len]
                && w != r.txn
            {
                edges.push((r.txn as u32, w as u32, RW, key));
            }
        }
    }
    if realtime {
        realtime_edges(txns, &mut edges);
    }
    let graph = Graph::new(txns.len(), edges);
    find_cycles(txns, &graph, realtime, &mut report);

    // Lost appends: acknowledged or observed values missing from the final read of their key.
    for &key in &keys {
        let finals = reads_by_key[&key].iter().filter(|r| txns[r.txn].final_read);
        let Some(last) = finals.max_by_key(|r| (obs_list(txns, r).len(), r.txn)) else {
            continue;
        };
        let final_call = txns[last.txn].call;
        let present: HashSet<u64> = obs_list(txns, last).iter().copied().collect();
        let before = |t: usize| txns[t].ret.is_some_and(|r| r < final_call);
        let mut lost: Vec<u64> = Vec::new();
        for &v in appends_by_key.get(&key).map_or(&[][..], Vec::as_slice) {
            let w = writers[&v];
            if txns[w.txn].outcome == Outcome::Ok && before(w.txn) && !present.contains(&v) {
                lost.push(v);
            }
        }
        if let Some(longest) = longest_by_key.get(&key)
            && before(longest.txn)
        {
            let listed: HashSet<u64> = lost.iter().copied().collect();
            for &v in obs_list(txns, longest) {
                if !present.contains(&v) && !listed.contains(&v) {
                    lost.push(v);
                }
            }
        }
        if lost.is_empty() {
            continue;
        }
        report.add("lost-append", || {
            let mut out = format!(
                "{} value(s) appended to key {key} and acknowledged or read before the final read \
                 are missing from it: {}\n  final read: {}",
                lost.len(),
                show_list(&lost),
                describe(&txns[last.txn])
            );
            for v in lost.iter().take(LIST_PER_KIND) {
                if let Some(w) = writers.get(v) {
                    let _ = write!(out, "\n  {v} appended by {}", describe(&txns[w.txn]));
                }
            }
            out
        });
    }

    report.finish()
}

/// The list a read mop returned (empty if unknown).
fn read_list(mop: &Mop) -> &[u64] {
    match mop {
        Mop::Read { value: Some(list), .. } => list,
        _ => &[],
    }
}

/// The list of an observed read.
fn obs_list<'a>(txns: &'a [Txn], r: &ReadObs) -> &'a [u64] {
    read_list(&txns[r.txn].mops[r.mop])
}

/// Checks of the elements of one list: known, appended to this key by a transaction that did
/// not fail, not repeated. Marks their writers as observed.
struct ElementCheck<'a, 'b> {
    txns: &'a [Txn],
    writers: &'b HashMap<u64, Writer>,
    observed: &'b mut [bool],
    /// Values already reported as unknown or aborted.
    flagged: &'b mut HashSet<u64>,
    report: &'b mut Report,
}

impl ElementCheck<'_, '_> {
    /// Checks `list`, read by `reader` at `key`; true if it has duplicates.
    fn check(&mut self, key: u64, reader: usize, list: &[u64]) -> bool {
        let txns = self.txns;
        let mut seen: HashSet<u64> = HashSet::with_capacity(list.len());
        let mut duplicated = false;
        for &v in list {
            if !seen.insert(v) && !duplicated {
                duplicated = true;
                self.report.add("duplicate-elements", || {
                    format!(
                        "T{} read key {key} with {v} more than once: {}\n  {}",
                        txns[reader].id,
                        show_list(list),
                        describe(&txns[reader])
                    )
                });
            }
            match self.writers.get(&v) {
                Some(w) if w.key == key => {
                    self.observed[w.txn] = true;
                    if txns[w.txn].outcome == Outcome::Fail && self.flagged.insert(v) {
                        self.report.add("G1a", || {
                            format!(
                                "T{} read key {key} = {}, which includes {v} appended by the \
                                 failed T{}\n  {}\n  {}",
                                txns[reader].id,
                                show_list(list),
                                txns[w.txn].id,
                                describe(&txns[w.txn]),
                                describe(&txns[reader])
                            )
                        });
                    }
                }
                other => {
                    if self.flagged.insert(v) {
                        let elsewhere = other
                            .map(|w| format!(" (T{} appended it to key {})", txns[w.txn].id, w.key))
                            .unwrap_or_default();
                        self.report.add("unknown-element", || {
                            format!(
                                "T{} read key {key} = {}, which includes {v}, never appended to \
                                 key {key}{elsewhere}\n  {}",
                                txns[reader].id,
                                show_list(list),
                                describe(&txns[reader])
                            )
                        });
                    }
                }
            }
        }
        duplicated
    }
}

/// Adds real-time edges between committed transactions: each one from the frontier of latest
/// completions at its invocation. A transaction completing removes from the frontier the
/// transactions it was ordered after, which stay reachable through it.
fn realtime_edges(txns: &[Txn], edges: &mut Vec<(u32, u32, u8, u64)>) {
    // (time, 0 = call / 1 = return, txn): calls first at equal times.
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    for (t, txn) in txns.iter().enumerate() {
        if txn.outcome == Outcome::Ok
            && let Some(ret) = txn.ret
        {
            events.push((txn.call, 0, t));
            events.push((ret.max(txn.call), 1, t));
        }
    }
    events.sort_unstable();
    let mut frontier: Vec<usize> = Vec::new();
    let mut preds: HashMap<usize, Vec<usize>> = HashMap::new();
    for (_, kind, t) in events {
        if kind == 0 {
            edges.extend(frontier.iter().map(|&p| (p as u32, t as u32, RT, 0)));
            preds.insert(t, frontier.clone());
        } else {
            let before = preds.remove(&t).unwrap_or_default();
            frontier.retain(|f| !before.contains(f));
            frontier.push(t);
        }
    }
}
