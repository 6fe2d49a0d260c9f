//! The dependency graph of a list-append history and the search for its cycles: Tarjan's
//! strongly connected components per level of edges, then one shortest cycle per component
//! (see the parent module's docs, "Reporting"), and the words each anomaly is reported in.

use std::collections::VecDeque;
use std::fmt::Write as _;

use super::*;

/// The dependency graph in compressed-sparse-row form; parallel edges are merged, their kinds
/// or-ed together (with one example key per dependency kind).
pub(super) struct Graph {
    offsets: Vec<usize>,
    targets: Vec<u32>,
    kinds: Vec<u8>,
    /// Example key per kind: ww, wr, rw.
    keys: Vec<[u64; 3]>,
}

impl Graph {
    pub(super) fn new(nodes: usize, mut edges: Vec<(u32, u32, u8, u64)>) -> Graph {
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

    pub(super) fn nodes(&self) -> usize {
        self.offsets.len() - 1
    }

    pub(super) fn out(&self, v: usize) -> std::ops::Range<usize> {
        self.offsets[v]..self.offsets[v + 1]
    }

    /// The key an edge of the given single kind is about, if any.
    pub(super) fn key(&self, e: usize, kind: u8) -> Option<u64> {
        key_slot(kind).map(|slot| self.keys[e][slot])
    }
}

pub(super) fn key_slot(kind: u8) -> Option<usize> {
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
pub(super) fn tarjan(g: &Graph, mask: u8) -> (Vec<u32>, Vec<Vec<u32>>) {
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
pub(super) type Hop = (usize, usize, u8, Option<u64>);

/// Breadth-first search for shortest paths, with scratch space reused between searches.
pub(super) struct Bfs {
    stamp: Vec<u32>,
    epoch: u32,
    /// Per state: previous state, edge, kind shown.
    parent: Vec<(u32, u32, u8)>,
    queue: VecDeque<u32>,
}

impl Bfs {
    pub(super) fn new(nodes: usize) -> Bfs {
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
    pub(super) fn path(
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
pub(super) fn strongest(kinds: u8) -> u8 {
    [WW, WR, RT, RW].into_iter().find(|k| kinds & k != 0).unwrap_or(RW)
}

/// Finds and classifies cycles, reporting one per strongly connected component and kind.
pub(super) fn find_cycles(txns: &[Txn], g: &Graph, realtime: bool, report: &mut Report) {
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
pub(super) fn close(g: &Graph, u: usize, e: usize, kind: u8, path: Vec<Hop>) -> Vec<Hop> {
    let mut cycle = vec![(u, g.targets[e] as usize, kind, g.key(e, kind))];
    cycle.extend(path);
    cycle
}

pub(super) fn kind_name(kind: u8) -> &'static str {
    match kind {
        WW => "ww",
        WR => "wr",
        RW => "rw",
        _ => "rt",
    }
}

/// A cycle and the transactions on it.
pub(super) fn describe_cycle(txns: &[Txn], cycle: &[Hop]) -> String {
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
pub(super) fn ms(ns: u64) -> String {
    format!("{:.3}ms", ns as f64 / 1e6)
}

/// A list for messages, elided in the middle when long.
pub(super) fn show_list(list: &[u64]) -> String {
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
pub(super) fn describe(t: &Txn) -> String {
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
pub(super) struct Report {
    anomalies: Vec<Anomaly>,
    counts: HashMap<String, usize>,
}

impl Report {
    /// Adds an anomaly; its detail is only built if it will be listed.
    pub(super) fn add(&mut self, kind: &str, detail: impl FnOnce() -> String) {
        let count = self.counts.entry(kind.to_string()).or_insert(0);
        *count += 1;
        if *count <= LIST_PER_KIND {
            self.anomalies.push(Anomaly { kind: kind.to_string(), detail: detail() });
        }
    }

    /// Appends text to the detail of the last listed anomaly of `kind`.
    pub(super) fn append_to_last(&mut self, kind: &str, text: &str) {
        if let Some(a) = self.anomalies.iter_mut().rev().find(|a| a.kind == kind) {
            a.detail.push_str(text);
        }
    }

    pub(super) fn finish(mut self) -> Vec<Anomaly> {
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
