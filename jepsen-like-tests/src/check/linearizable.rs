//! Linearizability of one object's history: Wing & Gong's search with Lowe's refinements as
//! Porcupine uses them (Lowe, "Testing for linearizability", 2017; Athalye, Porcupine).
//!
//! Calls and returns are laid out in time order in a doubly linked list. The search walks it:
//! at a call, it tries to linearize that operation now (the model must accept it from the
//! current state); on success the call and its return are lifted out of the list and the walk
//! restarts; reaching a return whose operation is not yet linearized means the last choice was
//! wrong, so it backtracks. A cache of (linearized set, state) pairs already explored prunes
//! repeated work (Lowe's memoisation); a step budget bounds the search, which then answers
//! [`Verdict::Unknown`] rather than running for ever.
//!
//! Operations whose outcome is unknown return at "infinity": they may be linearized anywhere
//! after their call, including after everything else (which is the same as not happening).
//! Nondeterministic models are handled by searching over sets of states (Porcupine's
//! power-set construction), so a step may have several outcomes.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Ord + Hash + Debug;
    type Op: Debug;
    fn init(&self) -> Self::State;
    /// The states `op` (with its recorded result) may lead to from `state`; empty when the
    /// result is impossible there.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Vec<Self::State>;
}

/// One operation of a history, with its real-time interval.
#[derive(Debug, Clone)]
pub struct Timed<O> {
    pub op: O,
    pub call: u64,
    /// `None`: the outcome is unknown (returns at infinity).
    pub ret: Option<u64>,
}

/// The answer of a search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists. `stuck_at` is the operation (index into the input) whose return the
    /// deepest attempt could not get past; `prefix` is how many operations that attempt had
    /// linearized.
    NotLinearizable {
        stuck_at: usize,
        prefix: usize,
    },
    /// The step budget ran out first.
    Unknown,
}

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// For a call: the list position of its return.
    partner: usize,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

/// Fixed-size set of operation indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Checks one object's history against `model`, exploring at most `budget` steps.
pub fn check<M: Model>(model: &M, history: &[Timed<M::Op>], budget: u64) -> Verdict {
    let n = history.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Events: (time, is_return, op). At equal times calls sort first, so touching intervals
    // count as concurrent (the permissive reading, as Porcupine does).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, t) in history.iter().enumerate() {
        let ret = t.ret.unwrap_or(u64::MAX).max(t.call);
        events.push((t.call, false, i));
        events.push((ret, true, i));
    }
    events.sort();
    // Position 0 is the head sentinel; events follow at 1..=2n.
    let mut list: Vec<Entry> = Vec::with_capacity(2 * n + 1);
    list.push(Entry {
        op: NIL,
        is_call: false,
        partner: NIL,
        prev: NIL,
        next: 1,
    });
    let mut ret_pos = vec![0usize; n];
    for (k, &(_, is_ret, op)) in events.iter().enumerate() {
        let pos = k + 1;
        if is_ret {
            ret_pos[op] = pos;
        }
        list.push(Entry {
            op,
            is_call: !is_ret,
            partner: NIL,
            prev: pos - 1,
            next: if k + 1 < events.len() { pos + 1 } else { NIL },
        });
    }
    for e in list.iter_mut().skip(1) {
        if e.is_call {
            e.partner = ret_pos[e.op];
        }
    }

    let lift = |list: &mut Vec<Entry>, call: usize| {
        let ret = list[call].partner;
        let (p, nx) = (list[call].prev, list[call].next);
        list[p].next = nx;
        if nx != NIL {
            list[nx].prev = p;
        }
        let (p, nx) = (list[ret].prev, list[ret].next);
        list[p].next = nx;
        if nx != NIL {
            list[nx].prev = p;
        }
    };
    let unlift = |list: &mut Vec<Entry>, call: usize| {
        let ret = list[call].partner;
        let (p, nx) = (list[ret].prev, list[ret].next);
        list[p].next = ret;
        if nx != NIL {
            list[nx].prev = ret;
        }
        let (p, nx) = (list[call].prev, list[call].next);
        list[p].next = call;
        if nx != NIL {
            list[nx].prev = call;
        }
    };

    let mut states: Vec<M::State> = vec![model.init()];
    let mut linearized = Bits::new(n);
    let mut cache: HashSet<(Bits, Vec<M::State>)> = HashSet::new();
    let mut stack: Vec<(usize, Vec<M::State>)> = Vec::new();
    let mut entry = list[0].next;
    let mut steps = 0u64;
    let (mut best_prefix, mut best_stuck) = (0usize, 0usize);

    while list[0].next != NIL {
        steps += 1;
        if steps > budget {
            return Verdict::Unknown;
        }
        let e = list[entry];
        if e.is_call {
            let mut next_states: Vec<M::State> = states
                .iter()
                .flat_map(|s| model.step(s, &history[e.op].op))
                .collect();
            if !next_states.is_empty() {
                next_states.sort();
                next_states.dedup();
                let mut lin = linearized.clone();
                lin.set(e.op);
                if cache.insert((lin.clone(), next_states.clone())) {
                    stack.push((entry, std::mem::replace(&mut states, next_states)));
                    linearized = lin;
                    lift(&mut list, entry);
                    entry = list[0].next;
                    continue;
                }
            }
            entry = e.next;
        } else {
            // A return of an operation not yet linearized: undo the latest choice.
            if stack.len() >= best_prefix {
                best_prefix = stack.len();
                best_stuck = e.op;
            }
            let Some((call, prev_states)) = stack.pop() else {
                return Verdict::NotLinearizable {
                    stuck_at: best_stuck,
                    prefix: best_prefix,
                };
            };
            states = prev_states;
            linearized.clear(list[call].op);
            unlift(&mut list, call);
            entry = list[call].next;
        }
    }
    Verdict::Linearizable
}
