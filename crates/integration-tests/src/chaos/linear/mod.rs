//! Per-key linearizability checking of a compare-and-set register.
//!
//! [`check_register`] decides whether one key's history of reads, writes and compare-and-sets
//! can be explained by a single atomic register that every operation touched at one instant
//! between its invocation and its answer. The search is the one of Wing & Gong as refined by
//! Lowe ("Testing for linearizability", 2017) and used by Porcupine and by Horn & Kroening:
//!
//! * Every operation contributes a *call* and a *return* entry to one list sorted by time. The
//!   operations whose call entries come before the first return entry of the list are the ones
//!   that may take effect next (none of them is known to have been preceded by an operation
//!   still pending).
//! * The search repeatedly picks such an operation, checks it against the current register
//!   value, and *lifts* its two entries out of the doubly linked list (restored in reverse order
//!   on backtracking, in the manner of dancing links). Reaching a return entry means the
//!   operation it belongs to can no longer be placed: backtrack.
//! * A cache of every configuration seen, (set of operations already placed, register value),
//!   prunes the search: two paths arriving at the same configuration have the same future.
//!
//! # Ties
//!
//! At equal times, call entries sort before return entries: an operation that returned at the
//! very nanosecond another was invoked is treated as *concurrent* with it, not as preceding it.
//! The two timestamps come from one clock but were taken by different threads, so equality says
//! nothing about which event really happened first; reading it as concurrency can only make the
//! checker more permissive, never report a violation that did not happen.
//!
//! # Unknown outcomes
//!
//! An operation whose answer never came (`ret: None`) may have taken effect at any time after
//! its call, or never. Writes and compare-and-sets in that state are kept apart from the main
//! list, in a list of their own sorted by call time: one of them may be placed whenever its call
//! precedes the first pending return, and is otherwise treated as "never" (equivalently, at the
//! very end, after every operation that returned). Placing them freely would make the search
//! exponential in their number (each one could be placed or not at every point), so two
//! dominance rules cut the branching without losing any linearization:
//!
//! 1. an unknown operation is only placed where it changes the register (a write of a different
//!    value, a compare-and-set whose `from` matches and whose `to` differs); placing it where it
//!    changes nothing is the same as never placing it;
//! 2. an unknown operation that changed the register must be followed directly by an operation
//!    that *observes* the register (a read or a compare-and-set, known or not): if a write came
//!    next instead, moving the unknown operation to "never" would leave every later value
//!    unchanged. The flag "the next operation must observe" is part of the cached configuration.
//!
//! Reads with unknown outcome are dropped (they constrain nothing), and so are compare-and-sets
//! reported as failed without a return time. A compare-and-set with unknown outcome but a
//! return time, or reported as successful without one, is treated as one with unknown outcome
//! (permissive: it may also take effect after that time, or not at all).
//!
//! # Cost
//!
//! A configuration is stored exactly but compactly (placed operations mostly form a prefix in
//! call order, which is left out), a few dozen bytes each. The search gives up with
//! [`Verdict::Timeout`] when it runs out of time or when the cache would exceed 1 GiB. A
//! linearizable history of 1,000 operations by 10 overlapping clients takes a few milliseconds
//! in release builds; refuting one with a single bad read in the middle means exhausting every
//! configuration before it, a few hundred thousand, about a tenth of a second.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// One operation on one register (one key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegOp {
    /// Client process that issued it (for messages only).
    pub process: usize,
    /// When it was invoked.
    pub call: u64,
    /// When its answer came back; `None` when the outcome is unknown (timeout, connection lost):
    /// such an operation may take effect at any time after `call`, or never.
    pub ret: Option<u64>,
    /// What it did.
    pub kind: RegKind,
}

/// What a [`RegOp`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegKind {
    /// A read that returned this value (`None`: the key did not exist). Reads with unknown
    /// outcome (`ret` is `None`) are ignored.
    Read {
        /// The value read.
        value: Option<i64>,
    },
    /// A write of `value` (an upsert).
    Write {
        /// The value written.
        value: i64,
    },
    /// Compare-and-set from `from` to `to`. `ok`: `Some(true)` it swapped, `Some(false)` it saw
    /// another value (it had no effect), `None` unknown outcome (`ret` is `None` then).
    Cas {
        /// The value the register had to hold.
        from: i64,
        /// The value it was to be set to.
        to: i64,
        /// Whether it swapped, if known.
        ok: Option<bool>,
    },
}

/// The result of [`check_register`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the operations, consistent with their real-time order, explains every
    /// result.
    Linearizable,
    /// No linearization exists; `explanation` names the operations (process, kind, times in ms)
    /// around the point where the search got stuck: the longest linearizable prefix found and
    /// the operations that could not be placed after it.
    Violation {
        /// Human-readable account of where the search got stuck.
        explanation: String,
    },
    /// The search exceeded its budget; neither proven nor refuted.
    Timeout,
}

/// The register's value: `None` while the key does not exist.
type State = Option<i64>;

/// An operation as the search sees it.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A read that returned this value.
    Read(State),
    /// A write that took effect.
    Write(i64),
    /// A compare-and-set with a known result.
    Cas { from: i64, to: i64, ok: bool },
    /// A write that may or may not have taken effect.
    MaybeWrite(i64),
    /// A compare-and-set that may or may not have taken effect.
    MaybeCas { from: i64, to: i64 },
}

impl Step {
    /// The register after this operation, if it can take effect on `state`; `observe` is set
    /// when the previous operation was an unknown one that must be observed (rule 2 above).
    fn apply(self, state: State, observe: bool) -> Option<State> {
        match self {
            Step::Read(v) => (state == v).then_some(state),
            Step::Write(v) => (!observe).then_some(Some(v)),
            Step::Cas { from, to, ok: true } => (state == Some(from)).then_some(Some(to)),
            Step::Cas { from, ok: false, .. } => (state != Some(from)).then_some(state),
            Step::MaybeWrite(v) => (!observe && state != Some(v)).then_some(Some(v)),
            Step::MaybeCas { from, to } => (state == Some(from) && from != to).then_some(Some(to)),
        }
    }

    /// Whether placing this operation sets the "must be observed next" flag.
    fn unknown(self) -> bool {
        matches!(self, Step::MaybeWrite(_) | Step::MaybeCas { .. })
    }
}

/// End of a linked list.
const NIL: usize = usize::MAX;
/// Iterations between two looks at the clock.
const CLOCK_EVERY: u64 = 1024;
/// Memory the cache of explored configurations may use before the search gives up (as
/// [`Verdict::Timeout`]).
const MAX_CACHE_BYTES: usize = 1 << 30;

/// A call or return entry of an operation with a known return.
#[derive(Debug, Clone, Copy)]
struct Entry {
    time: u64,
    /// Index into the known operations.
    op: usize,
    /// List index of the matching return entry (for call entries).
    ret_entry: usize,
    is_call: bool,
}

/// A hasher for keys that are already well-mixed `u64`s.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// SplitMix64's finalizer: a bijective mix of a `u64`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The set of configurations already explored, each stored exactly in a compact encoding (see
/// [`Config`]) in one flat arena, chained per hash.
struct Cache {
    heads: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    arena: Vec<u64>,
    /// Where each configuration starts in `arena` (one more entry at the end).
    starts: Vec<usize>,
    /// Per configuration: the previous one with the same hash (`u32::MAX`: none).
    chain: Vec<u32>,
}

impl Cache {
    fn new() -> Self {
        Cache { heads: HashMap::default(), arena: Vec::new(), starts: vec![0], chain: Vec::new() }
    }

    /// Records the encoded configuration; false if it was already there.
    fn insert(&mut self, hash: u64, key: &[u64]) -> bool {
        let mut at = self.heads.get(&hash).copied();
        while let Some(i) = at {
            let i = i as usize;
            if &self.arena[self.starts[i]..self.starts[i + 1]] == key {
                return false;
            }
            at = (self.chain[i] != u32::MAX).then_some(self.chain[i]);
        }
        let fresh = u32::try_from(self.chain.len()).unwrap_or(u32::MAX);
        let previous = self.heads.insert(hash, fresh).unwrap_or(u32::MAX);
        self.chain.push(previous);
        self.arena.extend_from_slice(key);
        self.starts.push(self.arena.len());
        true
    }

    /// Approximate heap use in bytes.
    fn bytes(&self) -> usize {
        self.arena.capacity() * 8
            + self.starts.capacity() * 8
            + self.chain.capacity() * 4
            + self.heads.capacity() * 16
    }
}

/// The set of placed operations as two bitsets (known operations, numbered in call order, then
/// unknown ones, each part starting on a word boundary), encoded canonically and compactly:
/// per part, the words before the first one that is not all ones and after the last one that
/// is not zero are left out. Placed operations mostly form a prefix in call order with a short
/// ragged edge, so a configuration takes a handful of words whatever the history's length.
struct Config {
    bits: Vec<u64>,
    /// Number of words of the known part.
    known_words: usize,
    /// Scratch for the encoding.
    key: Vec<u64>,
}

impl Config {
    fn new(known: usize, unknown: usize) -> Self {
        let known_words = known.div_ceil(64);
        Config { bits: vec![0; known_words + unknown.div_ceil(64)], known_words, key: Vec::new() }
    }

    /// The bit of operation `op` (known operations first, then unknown ones from `n_known`).
    fn position(&self, op: usize, n_known: usize) -> usize {
        if op < n_known { op } else { self.known_words * 64 + (op - n_known) }
    }

    fn set(&mut self, bit: usize) {
        self.bits[bit / 64] |= 1u64 << (bit % 64);
    }

    fn clear(&mut self, bit: usize) {
        self.bits[bit / 64] &= !(1u64 << (bit % 64));
    }

    /// Encodes the current set with the register value and the observe flag into `self.key`.
    fn encode(&mut self, state: State, observe: bool) -> &[u64] {
        self.key.clear();
        let (known, unknown) = self.bits.split_at(self.known_words);
        for part in [known, unknown] {
            let first = part.iter().position(|&w| w != u64::MAX).unwrap_or(part.len());
            let end = part.iter().rposition(|&w| w != 0).map_or(0, |i| i + 1).max(first);
            self.key.push(((first as u64) << 32) | (end - first) as u64);
            self.key.extend_from_slice(&part[first..end]);
        }
        let (tag, value) = encode(state, observe);
        self.key.push(tag);
        self.key.push(value);
        &self.key
    }
}

/// The register value and the observe flag as two words.
fn encode(state: State, observe: bool) -> (u64, u64) {
    let tag = u64::from(state.is_some()) | (u64::from(observe) << 1);
    (tag, state.map_or(0, |v| v as u64))
}

/// Hash of everything but the bitset (whose hash is kept incrementally).
fn state_hash(state: State, observe: bool) -> u64 {
    let (tag, value) = encode(state, observe);
    mix(value ^ mix(tag ^ 0x5bd1_e995))
}

/// Where the search stands in one of the two lists.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    /// At an entry of the main list (`NIL`: past the end).
    Main(usize),
    /// At a node of the unknown-outcome list; `bound` is the time of the first pending return.
    Unknown { node: usize, bound: u64 },
}

/// One placed operation, for backtracking.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// Index into all operations (known first, then unknown).
    op: usize,
    /// Where to resume after undoing it: its own list node.
    cursor: Cursor,
    state: State,
    observe: bool,
}

/// Checks one key's history; the register starts absent (`None`). A CAS on an absent register
/// fails. `budget` bounds wall-clock time of the search (and the cache is capped at 1 GiB; both
/// give [`Verdict::Timeout`]).
pub fn check_register(ops: &[RegOp], budget: Duration) -> Verdict {
    let start = Instant::now();

    // Normalize: known operations first, then unknown ones; `src` maps back to `ops`.
    let mut known: Vec<(usize, u64, u64, Step)> = Vec::new();
    let mut unknown: Vec<(usize, u64, Step)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match (&op.kind, op.ret) {
            (RegKind::Read { value }, Some(ret)) => {
                known.push((i, op.call, ret.max(op.call), Step::Read(*value)));
            }
            (RegKind::Read { .. }, None) => {}
            (RegKind::Write { value }, Some(ret)) => {
                known.push((i, op.call, ret.max(op.call), Step::Write(*value)));
            }
            (RegKind::Write { value }, None) => {
                unknown.push((i, op.call, Step::MaybeWrite(*value)))
            }
            (RegKind::Cas { from, to, ok: Some(ok) }, Some(ret)) => {
                let step = Step::Cas { from: *from, to: *to, ok: *ok };
                known.push((i, op.call, ret.max(op.call), step));
            }
            (RegKind::Cas { ok: Some(false), .. }, None) => {}
            (RegKind::Cas { from, to, .. }, _) => {
                unknown.push((i, op.call, Step::MaybeCas { from: *from, to: *to }));
            }
        }
    }
    let n_known = known.len();
    if n_known == 0 {
        return Verdict::Linearizable;
    }
    known.sort_by_key(|&(i, call, ret, _)| (call, ret, i));
    unknown.sort_by_key(|&(i, call, _)| (call, i));
    let total = n_known + unknown.len();
    let src: Vec<usize> = known.iter().map(|k| k.0).chain(unknown.iter().map(|u| u.0)).collect();
    let steps: Vec<Step> = known.iter().map(|k| k.3).chain(unknown.iter().map(|u| u.2)).collect();

    // The main list: index 0 is the head, entries follow in time order (calls first on ties).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n_known);
    for (op, &(_, call, ret, _)) in known.iter().enumerate() {
        order.push((call, false, op));
        order.push((ret, true, op));
    }
    order.sort_unstable();
    let mut entries = vec![Entry { time: 0, op: 0, ret_entry: NIL, is_call: false }];
    let mut ret_entry_of = vec![NIL; n_known];
    for (pos, &(time, is_ret, op)) in order.iter().enumerate() {
        entries.push(Entry { time, op, ret_entry: NIL, is_call: !is_ret });
        if is_ret {
            ret_entry_of[op] = pos + 1;
        }
    }
    for e in entries.iter_mut().skip(1) {
        if e.is_call {
            e.ret_entry = ret_entry_of[e.op];
        }
    }
    let len = entries.len();
    let mut next: Vec<usize> = (1..=len).map(|i| if i == len { NIL } else { i }).collect();
    let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();

    // The unknown list: node 0 is the head, node j + 1 is unknown operation j.
    let ulen = unknown.len() + 1;
    let mut unext: Vec<usize> = (1..=ulen).map(|i| if i == ulen { NIL } else { i }).collect();
    let mut uprev: Vec<usize> = (0..ulen).map(|i| i.wrapping_sub(1)).collect();
    let ucall: Vec<u64> = std::iter::once(0).chain(unknown.iter().map(|u| u.1)).collect();

    let mut config = Config::new(n_known, unknown.len());
    let zobrist: Vec<u64> = (0..total as u64).map(|i| mix(i ^ 0xa076_1d64_78bd_642f)).collect();
    let mut zhash = 0u64;
    let mut cache = Cache::new();

    let mut state: State = None;
    let mut observe = false;
    let mut placed_known = 0usize;
    let mut stack: Vec<Frame> = Vec::new();
    let mut best_known = 0usize;
    let mut best: (Vec<usize>, State) = (Vec::new(), None);
    let mut cursor = Cursor::Main(next[0]);
    let mut iterations = 0u64;

    loop {
        if placed_known == n_known {
            return Verdict::Linearizable;
        }
        iterations += 1;
        if iterations.is_multiple_of(CLOCK_EVERY)
            && (start.elapsed() > budget || cache.bytes() > MAX_CACHE_BYTES)
        {
            return Verdict::Timeout;
        }

        // Pick the operation under the cursor, or move on.
        let candidate = match cursor {
            Cursor::Main(e) if e == NIL => None,
            Cursor::Main(e) if !entries[e].is_call => {
                cursor = Cursor::Unknown { node: unext[0], bound: entries[e].time };
                continue;
            }
            Cursor::Main(e) => Some(entries[e].op),
            Cursor::Unknown { node, bound } if node == NIL || ucall[node] > bound => None,
            Cursor::Unknown { node, .. } => Some(n_known + node - 1),
        };

        let Some(op) = candidate else {
            // Nothing more to try here: undo the last placement.
            let Some(frame) = stack.pop() else {
                return Verdict::Violation {
                    explanation: explain(ops, &src, &steps, &known, n_known, &best.0, best.1),
                };
            };
            config.clear(config.position(frame.op, n_known));
            zhash ^= zobrist[frame.op];
            state = frame.state;
            observe = frame.observe;
            cursor = match frame.cursor {
                Cursor::Main(e) => {
                    let r = entries[e].ret_entry;
                    relink(&mut next, &mut prev, r);
                    relink(&mut next, &mut prev, e);
                    placed_known -= 1;
                    Cursor::Main(next[e])
                }
                Cursor::Unknown { node, bound } => {
                    relink(&mut unext, &mut uprev, node);
                    Cursor::Unknown { node: unext[node], bound }
                }
            };
            continue;
        };

        let advance = |c: Cursor, next: &[usize], unext: &[usize]| match c {
            Cursor::Main(e) => Cursor::Main(next[e]),
            Cursor::Unknown { node, bound } => Cursor::Unknown { node: unext[node], bound },
        };
        let Some(new_state) = steps[op].apply(state, observe) else {
            cursor = advance(cursor, &next, &unext);
            continue;
        };
        let new_observe = steps[op].unknown();
        let bit = config.position(op, n_known);
        config.set(bit);
        let new_zhash = zhash ^ zobrist[op];
        let hash = new_zhash ^ state_hash(new_state, new_observe);
        if !cache.insert(hash, config.encode(new_state, new_observe)) {
            config.clear(bit);
            cursor = advance(cursor, &next, &unext);
            continue;
        }
        stack.push(Frame { op, cursor, state, observe });
        zhash = new_zhash;
        state = new_state;
        observe = new_observe;
        match cursor {
            Cursor::Main(e) => {
                unlink(&mut next, &mut prev, e);
                unlink(&mut next, &mut prev, entries[e].ret_entry);
                placed_known += 1;
                if placed_known > best_known {
                    best_known = placed_known;
                    best = (stack.iter().map(|f| f.op).collect(), state);
                }
            }
            Cursor::Unknown { node, .. } => unlink(&mut unext, &mut uprev, node),
        }
        cursor = Cursor::Main(next[0]);
    }
}

/// Removes node `x` from a doubly linked list (its own links are kept for [`relink`]).
fn unlink(next: &mut [usize], prev: &mut [usize], x: usize) {
    let (p, n) = (prev[x], next[x]);
    next[p] = n;
    if n != NIL {
        prev[n] = p;
    }
}

/// Puts back a node removed by [`unlink`]; removals must be undone in reverse order.
fn relink(next: &mut [usize], prev: &mut [usize], x: usize) {
    let (p, n) = (prev[x], next[x]);
    next[p] = x;
    if n != NIL {
        prev[n] = x;
    }
}

/// Nanoseconds as milliseconds, for messages.
fn ms(ns: u64) -> String {
    format!("{:.3}ms", ns as f64 / 1e6)
}

/// One operation for messages: process, kind, interval.
fn describe(op: &RegOp) -> String {
    let what = match &op.kind {
        RegKind::Read { value: Some(v) } => format!("read {v}"),
        RegKind::Read { value: None } => "read nil".to_string(),
        RegKind::Write { value } => format!("write {value}"),
        RegKind::Cas { from, to, ok } => {
            let result = match ok {
                Some(true) => "ok",
                Some(false) => "failed",
                None => "unknown",
            };
            format!("cas {from}->{to} {result}")
        }
    };
    let ret = op.ret.map_or_else(|| "?".to_string(), ms);
    format!("p{} {what} [{}, {ret}]", op.process, ms(op.call))
}

/// A register value for messages.
fn show(state: State) -> String {
    state.map_or_else(|| "nil".to_string(), |v| v.to_string())
}

/// Describes the deepest point the search reached: the prefix that was linearized, the value
/// it left, and the operations that were due next and why each failed.
fn explain(
    ops: &[RegOp],
    src: &[usize],
    steps: &[Step],
    known: &[(usize, u64, u64, Step)],
    n_known: usize,
    prefix: &[usize],
    state: State,
) -> String {
    const SHOW_PREFIX: usize = 8;
    const SHOW_STUCK: usize = 10;
    let mut placed = vec![false; steps.len()];
    for &op in prefix {
        placed[op] = true;
    }
    let placed_known = prefix.iter().filter(|&&op| op < n_known).count();
    let mut out = format!(
        "not linearizable: at most {placed_known} of {n_known} operations with known results \
         can be linearized"
    );
    if prefix.is_empty() {
        out.push_str("; not even the first one can be placed");
    } else {
        let skip = prefix.len().saturating_sub(SHOW_PREFIX);
        if skip > 0 {
            let _ = write!(out, "; the longest linearizable prefix ends (after {skip} more) with");
        } else {
            let _ = write!(out, "; the longest linearizable prefix is");
        }
        for &op in &prefix[skip..] {
            let _ = write!(out, "\n  {}", describe(&ops[src[op]]));
        }
    }
    let _ = write!(out, "\nleaving the register at {}", show(state));

    // Due next: unplaced known operations invoked no later than the first pending return.
    let deadline = (0..n_known).filter(|&op| !placed[op]).map(|op| known[op].2).min();
    let Some(deadline) = deadline else {
        return out;
    };
    let mut due: Vec<usize> =
        (0..n_known).filter(|&op| !placed[op] && known[op].1 <= deadline).collect();
    due.sort_by_key(|&op| (known[op].1, op));
    let _ = write!(out, "; none of these can be linearized next:");
    for &op in due.iter().take(SHOW_STUCK) {
        let why = match steps[op] {
            Step::Read(_) => format!("the register holds {}", show(state)),
            Step::Cas { from, ok: true, .. } => {
                format!("needs {from}, the register holds {}", show(state))
            }
            Step::Cas { from, ok: false, .. } => {
                format!("failed, but the register holds {from}")
            }
            _ => String::new(),
        };
        let why = if steps[op].apply(state, false).is_some() {
            "possible here, but no continuation works".to_string()
        } else {
            why
        };
        let _ = write!(out, "\n  {} ({why})", describe(&ops[src[op]]));
    }
    if due.len() > SHOW_STUCK {
        let _ = write!(out, "\n  ... and {} more", due.len() - SHOW_STUCK);
    }
    let pending_unknown = (n_known..steps.len()).filter(|&op| !placed[op]).count();
    if pending_unknown > 0 {
        let _ = write!(
            out,
            "\n(the {pending_unknown} unplaced operation(s) with unknown outcome were tried at \
             every point too)"
        );
    }
    out
}
