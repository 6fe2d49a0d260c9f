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

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(30);

    fn read(process: usize, call: u64, ret: u64, value: Option<i64>) -> RegOp {
        RegOp { process, call, ret: Some(ret), kind: RegKind::Read { value } }
    }

    fn write(process: usize, call: u64, ret: Option<u64>, value: i64) -> RegOp {
        RegOp { process, call, ret, kind: RegKind::Write { value } }
    }

    fn cas(
        process: usize,
        call: u64,
        ret: Option<u64>,
        from: i64,
        to: i64,
        ok: Option<bool>,
    ) -> RegOp {
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
        assert_ok(&[
            write(0, 0, Some(1), 1),
            cas(1, 2, None, 1, 3, None),
            read(2, 10, 11, Some(3)),
        ]);
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
}
