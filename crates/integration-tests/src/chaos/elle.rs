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

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;

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

/// The dependency graph in compressed-sparse-row form; parallel edges are merged, their kinds
/// or-ed together (with one example key per dependency kind).
struct Graph {
    offsets: Vec<usize>,
    targets: Vec<u32>,
    kinds: Vec<u8>,
    /// Example key per kind: ww, wr, rw.
    keys: Vec<[u64; 3]>,
}

impl Graph {
    fn new(nodes: usize, mut edges: Vec<(u32, u32, u8, u64)>) -> Graph {
        edges.sort_unstable_by_key(|e| (e.0, e.1, e.2, e.3));
        let mut offsets = vec![0usize; nodes + 1];
        let mut targets = Vec::with_capacity(edges.len());
        let mut kinds: Vec<u8> = Vec::with_capacity(edges.len());
        let mut keys: Vec<[u64; 3]> = Vec::with_capacity(edges.len());
        let mut last: Option<(u32, u32)> = None;
        for (from, to, kind, key) in edges {
            if last != Some((from, to)) {
                last = Some((from, to));
                offsets[from as usize + 1] += 1;
                targets.push(to);
                kinds.push(0);
                keys.push([0; 3]);
            }
            let i = kinds.len() - 1;
            if let Some(slot) = key_slot(kind)
                && kinds[i] & kind == 0
            {
                keys[i][slot] = key;
            }
            kinds[i] |= kind;
        }
        for v in 0..nodes {
            offsets[v + 1] += offsets[v];
        }
        Graph { offsets, targets, kinds, keys }
    }

    fn nodes(&self) -> usize {
        self.offsets.len() - 1
    }

    fn out(&self, v: usize) -> std::ops::Range<usize> {
        self.offsets[v]..self.offsets[v + 1]
    }

    /// The key an edge of the given single kind is about, if any.
    fn key(&self, e: usize, kind: u8) -> Option<u64> {
        key_slot(kind).map(|slot| self.keys[e][slot])
    }
}

fn key_slot(kind: u8) -> Option<usize> {
    match kind {
        WW => Some(0),
        WR => Some(1),
        RW => Some(2),
        _ => None,
    }
}

/// Strongly connected components over the edges whose kind intersects `mask` (Tarjan's
/// algorithm, iterative). Returns each node's component number and the components with more
/// than one node.
fn tarjan(g: &Graph, mask: u8) -> (Vec<u32>, Vec<Vec<u32>>) {
    const UNSEEN: u32 = u32::MAX;
    let n = g.nodes();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut comp = vec![UNSEEN; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut calls: Vec<(u32, usize)> = Vec::new();
    let mut counter = 0u32;
    let mut comps = 0u32;
    let mut big: Vec<Vec<u32>> = Vec::new();
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        index[root] = counter;
        low[root] = counter;
        counter += 1;
        stack.push(root as u32);
        on_stack[root] = true;
        calls.push((root as u32, g.offsets[root]));
        while let Some(&mut (v, ref mut pos)) = calls.last_mut() {
            let v = v as usize;
            if *pos < g.offsets[v + 1] {
                let e = *pos;
                *pos += 1;
                if g.kinds[e] & mask == 0 {
                    continue;
                }
                let w = g.targets[e] as usize;
                if index[w] == UNSEEN {
                    index[w] = counter;
                    low[w] = counter;
                    counter += 1;
                    stack.push(w as u32);
                    on_stack[w] = true;
                    calls.push((w as u32, g.offsets[w]));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(u, _)) = calls.last() {
                let u = u as usize;
                low[u] = low[u].min(low[v]);
            }
            if low[v] == index[v] {
                let mut members = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w as usize] = false;
                    comp[w as usize] = comps;
                    members.push(w);
                    if w as usize == v {
                        break;
                    }
                }
                if members.len() > 1 {
                    members.reverse();
                    big.push(members);
                }
                comps += 1;
            }
        }
    }
    (comp, big)
}

/// One edge of a reported cycle: from, to, the kind it is shown as, its key.
type Hop = (usize, usize, u8, Option<u64>);

/// Breadth-first search for shortest paths, with scratch space reused between searches.
struct Bfs {
    stamp: Vec<u32>,
    epoch: u32,
    /// Per state: previous state, edge, kind shown.
    parent: Vec<(u32, u32, u8)>,
    queue: VecDeque<u32>,
}

impl Bfs {
    fn new(nodes: usize) -> Bfs {
        Bfs {
            stamp: vec![0; 2 * nodes],
            epoch: 0,
            parent: vec![(0, 0, 0); 2 * nodes],
            queue: VecDeque::new(),
        }
    }

    /// A shortest path from `from` to `to` over edges of kinds in `mask`, staying inside the
    /// component of `to` in `comp`. With `rw_limit` `Some(k)`, at most `k` (0 or 1) edges may be
    /// used as rw edges (an edge that is also of another allowed kind is used as that);
    /// `None`: no limit.
    fn path(
        &mut self,
        g: &Graph,
        from: usize,
        to: usize,
        mask: u8,
        rw_limit: Option<u8>,
        comp: &[u32],
    ) -> Option<Vec<Hop>> {
        let c = comp[to];
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamp.fill(0);
            self.epoch = 1;
        }
        self.queue.clear();
        let start = 2 * from as u32;
        self.stamp[start as usize] = self.epoch;
        self.queue.push_back(start);
        while let Some(s) = self.queue.pop_front() {
            let (v, layer) = (s as usize / 2, (s % 2) as u8);
            if v == to {
                let mut hops = Vec::new();
                let mut at = s;
                while at != start {
                    let (p, e, kind) = self.parent[at as usize];
                    hops.push((p as usize / 2, at as usize / 2, kind, g.key(e as usize, kind)));
                    at = p;
                }
                hops.reverse();
                return Some(hops);
            }
            for e in g.out(v) {
                let w = g.targets[e] as usize;
                let k = g.kinds[e] & mask;
                if k == 0 || comp[w] != c {
                    continue;
                }
                let (kind, next_layer) = match rw_limit {
                    None => (strongest(k), layer),
                    Some(limit) => {
                        let free = k & !RW;
                        if free != 0 {
                            (strongest(free), layer)
                        } else if layer < limit {
                            (RW, layer + 1)
                        } else {
                            continue;
                        }
                    }
                };
                let ns = 2 * w as u32 + u32::from(next_layer);
                if self.stamp[ns as usize] == self.epoch {
                    continue;
                }
                self.stamp[ns as usize] = self.epoch;
                self.parent[ns as usize] = (s, e as u32, kind);
                self.queue.push_back(ns);
            }
        }
        None
    }
}

/// The kind an edge is shown as: the one making the weakest claim.
fn strongest(kinds: u8) -> u8 {
    [WW, WR, RT, RW].into_iter().find(|k| kinds & k != 0).unwrap_or(RW)
}

/// Finds and classifies cycles, reporting one per strongly connected component and kind.
fn find_cycles(txns: &[Txn], g: &Graph, realtime: bool, report: &mut Report) {
    let mut bfs = Bfs::new(g.nodes());
    let first_edge = |u: usize, comp: &[u32], want: &dyn Fn(usize, usize) -> bool| {
        g.out(u).find(|&e| comp[g.targets[e] as usize] == comp[u] && want(u, e))
    };

    // G0: cycles of ww edges.
    let (comp_ww, sccs) = tarjan(g, WW);
    for scc in &sccs {
        let u = scc[0] as usize;
        let Some(e) = first_edge(u, &comp_ww, &|_, e| g.kinds[e] & WW != 0) else { continue };
        let v = g.targets[e] as usize;
        if let Some(path) = bfs.path(g, v, u, WW, Some(0), &comp_ww) {
            let cycle = close(g, u, e, WW, path);
            report.add("G0", || describe_cycle(txns, &cycle));
        }
    }

    // G1c: cycles of ww and wr edges with at least one wr edge that is not part of a ww cycle.
    let (comp_wr, sccs) = tarjan(g, WW | WR);
    for scc in &sccs {
        let found = scc.iter().find_map(|&u| {
            let u = u as usize;
            first_edge(u, &comp_wr, &|u, e| {
                let k = g.kinds[e];
                let v = g.targets[e] as usize;
                k & WR != 0 && !(k & WW != 0 && comp_ww[u] == comp_ww[v])
            })
            .map(|e| (u, e))
        });
        let Some((u, e)) = found else { continue };
        let v = g.targets[e] as usize;
        if let Some(path) = bfs.path(g, v, u, WW | WR, Some(0), &comp_wr) {
            let cycle = close(g, u, e, WR, path);
            report.add("G1c", || describe_cycle(txns, &cycle));
        }
    }

    // G-single and G2-item: cycles through an rw edge.
    let (comp_dep, sccs) = tarjan(g, DEP);
    for scc in &sccs {
        let rw_edges: Vec<(usize, usize)> = scc
            .iter()
            .flat_map(|&u| {
                let u = u as usize;
                g.out(u).map(move |e| (u, e))
            })
            .filter(|&(u, e)| {
                g.kinds[e] & DEP == RW && comp_dep[g.targets[e] as usize] == comp_dep[u]
            })
            .collect();
        let Some(&(u0, e0)) = rw_edges.first() else { continue };
        // A single rw edge closed by ww/wr edges: cheap when both ends share a ww/wr
        // component, a bounded number of searches otherwise.
        let mut single = rw_edges.iter().find_map(|&(u, e)| {
            let v = g.targets[e] as usize;
            (comp_wr[u] == comp_wr[v])
                .then(|| bfs.path(g, v, u, WW | WR, Some(0), &comp_wr))
                .flatten()
                .map(|path| close(g, u, e, RW, path))
        });
        if single.is_none() {
            single = rw_edges.iter().take(SINGLE_TRIES).find_map(|&(u, e)| {
                let v = g.targets[e] as usize;
                bfs.path(g, v, u, WW | WR, Some(0), &comp_dep).map(|path| close(g, u, e, RW, path))
            });
        }
        if let Some(cycle) = single {
            report.add("G-single", || describe_cycle(txns, &cycle));
            continue;
        }
        let v0 = g.targets[e0] as usize;
        if let Some(path) = bfs.path(g, v0, u0, DEP, None, &comp_dep) {
            let cycle = close(g, u0, e0, RW, path);
            report.add("G2-item", || describe_cycle(txns, &cycle));
        }
    }

    if !realtime {
        return;
    }
    // Cycles that need a real-time edge: through an edge that is only real-time and joins two
    // different components of the dependency graph.
    let (comp_rt, sccs) = tarjan(g, DEP | RT);
    let levels: [(&str, u8, Option<u8>); 4] = [
        ("G0-realtime", WW | RT, Some(0)),
        ("G1c-realtime", WW | WR | RT, Some(0)),
        ("G-single-realtime", DEP | RT, Some(1)),
        ("G2-item-realtime", DEP | RT, None),
    ];
    for scc in &sccs {
        let rt_edges = scc
            .iter()
            .flat_map(|&u| {
                let u = u as usize;
                g.out(u).map(move |e| (u, e))
            })
            .filter(|&(u, e)| {
                let v = g.targets[e] as usize;
                g.kinds[e] == RT && comp_rt[v] == comp_rt[u] && comp_dep[v] != comp_dep[u]
            })
            .take(REALTIME_TRIES);
        let mut best: Option<(usize, Vec<Hop>)> = None;
        for (u, e) in rt_edges {
            let v = g.targets[e] as usize;
            let worse_than_best = best.as_ref().map_or(levels.len(), |b| b.0);
            for (level, &(_, mask, limit)) in levels.iter().enumerate().take(worse_than_best) {
                if let Some(path) = bfs.path(g, v, u, mask, limit, &comp_rt) {
                    best = Some((level, close(g, u, e, RT, path)));
                    break;
                }
            }
            if best.as_ref().is_some_and(|b| b.0 == 0) {
                break;
            }
        }
        if let Some((level, cycle)) = best {
            report.add(levels[level].0, || describe_cycle(txns, &cycle));
        }
    }
}

/// A cycle: the edge `e` from `u` (shown as `kind`), then `path` back to `u`.
fn close(g: &Graph, u: usize, e: usize, kind: u8, path: Vec<Hop>) -> Vec<Hop> {
    let mut cycle = vec![(u, g.targets[e] as usize, kind, g.key(e, kind))];
    cycle.extend(path);
    cycle
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        WW => "ww",
        WR => "wr",
        RW => "rw",
        _ => "rt",
    }
}

/// A cycle and the transactions on it.
fn describe_cycle(txns: &[Txn], cycle: &[Hop]) -> String {
    let Some(&(first, ..)) = cycle.first() else { return String::new() };
    let mut out = format!("cycle: T{}", txns[first].id);
    for &(_, to, kind, key) in cycle {
        let on = key.map(|k| format!(" k{k}")).unwrap_or_default();
        let _ = write!(out, " -{}{on}-> T{}", kind_name(kind), txns[to].id);
    }
    for &(from, ..) in cycle.iter().take(LIST_PER_KIND) {
        let _ = write!(out, "\n  {}", describe(&txns[from]));
    }
    if cycle.len() > LIST_PER_KIND {
        let _ = write!(out, "\n  ... and {} more", cycle.len() - LIST_PER_KIND);
    }
    out
}

/// Nanoseconds as milliseconds, for messages.
fn ms(ns: u64) -> String {
    format!("{:.3}ms", ns as f64 / 1e6)
}

/// A list for messages, elided in the middle when long.
fn show_list(list: &[u64]) -> String {
    const HEAD: usize = 3;
    const TAIL: usize = 6;
    let join = |l: &[u64]| l.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    if list.len() <= HEAD + TAIL + 1 {
        format!("[{}]", join(list))
    } else {
        let elided = list.len() - HEAD - TAIL;
        format!(
            "[{}, ...{elided} more..., {}]",
            join(&list[..HEAD]),
            join(&list[list.len() - TAIL..])
        )
    }
}

/// A transaction for messages: id, process, outcome, interval, micro-operations.
fn describe(t: &Txn) -> String {
    let outcome = match t.outcome {
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Info => "info",
    };
    let ret = t.ret.map_or_else(|| "?".to_string(), ms);
    let mops: Vec<String> = t
        .mops
        .iter()
        .map(|m| match m {
            Mop::Append { key, value } => format!("append k{key} {value}"),
            Mop::Read { key, value: Some(list) } => format!("read k{key} {}", show_list(list)),
            Mop::Read { key, value: None } => format!("read k{key} ?"),
        })
        .collect();
    let final_read = if t.final_read { ", final" } else { "" };
    format!(
        "T{} (p{}, {outcome}{final_read}, {}..{ret}): {}",
        t.id,
        t.process,
        ms(t.call),
        mops.join(", ")
    )
}

/// Collects anomalies, listing at most [`LIST_PER_KIND`] per kind and counting the rest.
#[derive(Default)]
struct Report {
    anomalies: Vec<Anomaly>,
    counts: HashMap<String, usize>,
}

impl Report {
    /// Adds an anomaly; its detail is only built if it will be listed.
    fn add(&mut self, kind: &str, detail: impl FnOnce() -> String) {
        let count = self.counts.entry(kind.to_string()).or_insert(0);
        *count += 1;
        if *count <= LIST_PER_KIND {
            self.anomalies.push(Anomaly { kind: kind.to_string(), detail: detail() });
        }
    }

    /// Appends text to the detail of the last listed anomaly of `kind`.
    fn append_to_last(&mut self, kind: &str, text: &str) {
        if let Some(a) = self.anomalies.iter_mut().rev().find(|a| a.kind == kind) {
            a.detail.push_str(text);
        }
    }

    fn finish(mut self) -> Vec<Anomaly> {
        let mut over: Vec<(String, usize)> = self
            .counts
            .iter()
            .filter(|&(_, &n)| n > LIST_PER_KIND)
            .map(|(k, &n)| (k.clone(), n))
            .collect();
        over.sort();
        for (kind, n) in over {
            self.append_to_last(
                &kind,
                &format!("\n({} more {kind} anomalies not listed)", n - LIST_PER_KIND),
            );
        }
        self.anomalies
    }
}

#[cfg(test)]
mod tests {
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
                    .position(
                        |m| matches!(m, Mop::Read { value: Some(list), .. } if list.len() > 3),
                    )
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
}
