//! Validation faults and the JSON path they point at.

use std::fmt;

/// One validation fault: the JSON path of the offending value (dotted, with `[i]` for array
/// indices, e.g. `flags.new-checkout.defaultVariant`, `targeting.if[0]`) and a message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fault {
    /// Where the fault is, relative to the value that was validated. Empty for the root.
    pub path: String,
    /// What is wrong, in one sentence.
    pub message: String,
}

impl Fault {
    /// A fault at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same fault with `prefix` put in front of its path (`prefix.path`).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.path = join_path(prefix, &self.path);
        self
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "(root): {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Joins two path fragments: `a` + `b` → `a.b`, or `a[0]` when `b` starts with an index.
pub(crate) fn join_path(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else if rest.is_empty() {
        prefix.to_string()
    } else if rest.starts_with('[') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

/// A path under construction while walking a JSON value, plus the faults found so far.
///
/// Some constructs are faults only because Flagstaff refuses them for new writes, while flagd
/// accepts them and resolves them when it evaluates (a branch naming no variant, a `sem_ver`
/// that cannot compare, a negative weight): [`Faults::flagd_resolves`] records those as
/// faults, or, when `lenient`, as warnings; what they compile to already evaluates as flagd.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    segments: Vec<Segment>,
    pub(crate) list: Vec<Fault>,
    /// Record flagd-resolved constructs as warnings, not faults.
    pub(crate) lenient: bool,
    pub(crate) warnings: Vec<Fault>,
}

#[derive(Debug)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Faults {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn push_key(&mut self, key: &str) {
        self.segments.push(Segment::Key(key.to_string()));
    }

    pub(crate) fn push_index(&mut self, index: usize) {
        self.segments.push(Segment::Index(index));
    }

    pub(crate) fn pop(&mut self) {
        self.segments.pop();
    }

    /// Records a fault at the current path.
    pub(crate) fn add(&mut self, message: impl Into<String>) {
        let path = self.path();
        self.list.push(Fault::new(path, message));
    }

    /// Records a construct flagd accepts and resolves at evaluation: a warning when lenient,
    /// else a fault.
    pub(crate) fn flagd_resolves(&mut self, message: impl Into<String>) {
        let fault = Fault::new(self.path(), message);
        if self.lenient {
            self.warnings.push(fault);
        } else {
            self.list.push(fault);
        }
    }

    /// Records a fault at the current path extended by `key`.
    pub(crate) fn add_at_key(&mut self, key: &str, message: impl Into<String>) {
        self.push_key(key);
        self.add(message);
        self.pop();
    }

    pub(crate) fn path(&self) -> String {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Segment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn into_result(self) -> Result<(), Vec<Fault>> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(self.list)
        }
    }
}

impl Faults {
    /// Records a fault at an already formatted path (relative to the current one, which must be the root).
    pub(crate) fn add_at_key_path(&mut self, path: &str, message: impl Into<String>) {
        self.list.push(Fault::new(path, message));
    }
}
