//! The bounds every accepted definition and every evaluation lives within.
//!
//! These are the crate's hard limits: the same in the node and in every application that
//! embeds the SDK, so both evaluate every accepted definition identically. A node may enforce
//! lower limits at write time (its options), never higher ones.

use std::cell::Cell;

/// How deeply a rule may nest operations and arrays.
pub const MAX_RULE_DEPTH: usize = 64;

/// How many segments a `$ref` chain may pass through (a segment with no `$ref` is a chain of
/// one). flagd does not let segments reference segments at all; short chains are allowed here.
pub const MAX_REF_CHAIN: usize = 8;

/// Steps one evaluation may take: one per operation visited, plus one per element an operation
/// walks (list items, compared or copied values) and one per 64 bytes a string operation scans.
/// The largest rule in the test tables takes under 100; a rule ten times larger, over a context
/// list of a thousand items, stays far below.
pub const EVAL_MAX_STEPS: u64 = 200_000;

/// Bytes one evaluation may produce: built strings, and 16 bytes per element of a built list.
pub const EVAL_MAX_BYTES: u64 = 1 << 20;

/// How deeply values built during an evaluation may nest (lists of lists).
pub const EVAL_MAX_VALUE_DEPTH: u32 = 32;

/// Variants an experiment flag may have (each is an arm whose exposures and conversions the
/// cluster keeps).
pub const MAX_EXPERIMENT_VARIANTS: usize = 10;

/// Conversion events one experiment may count.
pub const MAX_EXPERIMENT_METRICS: usize = 10;

/// Bytes of a conversion event's name.
pub const MAX_EVENT_NAME_BYTES: usize = 64;

/// Why an evaluation was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Steps,
    Bytes,
    Depth,
}

impl Exceeded {
    pub(crate) fn describe(self) -> String {
        match self {
            Exceeded::Steps => format!("it took more than {EVAL_MAX_STEPS} steps"),
            Exceeded::Bytes => format!("it built more than {EVAL_MAX_BYTES} bytes of values"),
            Exceeded::Depth => {
                format!("it built values nested deeper than {EVAL_MAX_VALUE_DEPTH} levels")
            }
        }
    }
}

/// The steps and bytes left to one evaluation, checked as it runs. Once exceeded, every later
/// charge fails too, so the evaluation unwinds at once and its result is discarded.
pub(crate) struct Budget {
    steps: Cell<u64>,
    bytes: Cell<u64>,
    over: Cell<Option<Exceeded>>,
}

/// Bytes charged for one element of a built list.
pub(crate) const LIST_SLOT_BYTES: u64 = 16;

impl Budget {
    pub(crate) fn new() -> Self {
        Self::with(EVAL_MAX_STEPS, EVAL_MAX_BYTES)
    }

    pub(crate) fn with(steps: u64, bytes: u64) -> Self {
        Self {
            steps: Cell::new(steps),
            bytes: Cell::new(bytes),
            over: Cell::new(None),
        }
    }

    /// One step.
    #[inline]
    pub(crate) fn step(&self) -> bool {
        self.work(1)
    }

    /// `n` steps (at least one is charged).
    #[inline]
    pub(crate) fn work(&self, n: u64) -> bool {
        let n = n.max(1);
        let left = self.steps.get();
        if left >= n {
            self.steps.set(left - n);
            true
        } else {
            self.fail(Exceeded::Steps)
        }
    }

    /// Steps for scanning `len` bytes of string.
    #[inline]
    pub(crate) fn scan(&self, len: usize) -> bool {
        self.work(1 + (len as u64 >> 6))
    }

    /// `n` bytes of built value (and the steps to build them).
    #[inline]
    pub(crate) fn alloc(&self, n: u64) -> bool {
        let left = self.bytes.get();
        if left >= n {
            self.bytes.set(left - n);
            self.scan(n as usize)
        } else {
            self.fail(Exceeded::Bytes)
        }
    }

    /// A built value nested `depth` deep.
    #[inline]
    pub(crate) fn depth(&self, depth: u32) -> bool {
        depth <= EVAL_MAX_VALUE_DEPTH || self.fail(Exceeded::Depth)
    }

    #[cold]
    fn fail(&self, why: Exceeded) -> bool {
        self.steps.set(0);
        self.bytes.set(0);
        if self.over.get().is_none() {
            self.over.set(Some(why));
        }
        false
    }

    /// Steps spent so far (all of them once exceeded).
    pub(crate) fn spent(&self) -> u64 {
        match self.over.get() {
            Some(_) => EVAL_MAX_STEPS,
            None => EVAL_MAX_STEPS.saturating_sub(self.steps.get()),
        }
    }

    #[inline]
    pub(crate) fn ok(&self) -> bool {
        self.over.get().is_none()
    }

    pub(crate) fn exceeded(&self) -> Option<Exceeded> {
        self.over.get()
    }
}
