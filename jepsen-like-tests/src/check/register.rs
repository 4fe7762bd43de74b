//! Linearizability of the register workload: each flag is a register holding `(value,
//! version)`, checked per key (registers are independent, so the search splits by key).
//!
//! `version` is the revision of the write that set the value. After a write whose outcome is
//! unknown the version is unknown too, until a read reveals it; a CAS against an unknown
//! version is given the benefit of the doubt (it may have matched).

use std::collections::BTreeMap;

use crate::check::linearizable::{self, Model, Timed, Verdict};
use crate::history::{Op, Outcome, F};

/// `(value, version)`; `None` version: written by an operation whose revision is unknown.
pub type RegState = (Option<i64>, Option<u64>);

/// The register specification, starting from `init`.
pub struct Register {
    pub init: RegState,
}

impl Model for Register {
    type State = RegState;
    type Op = Op;

    fn init(&self) -> RegState {
        self.init
    }

    fn step(&self, s: &RegState, op: &Op) -> Vec<RegState> {
        let (value, version) = *s;
        let info = op.outcome == Outcome::Info;
        match op.f {
            F::Write => {
                // Revisions grow in apply order: a write cannot land below the current version.
                if !info && newer(op.revision, version) == Some(false) {
                    return vec![];
                }
                vec![(op.value, if info { None } else { op.revision })]
            }
            F::Read => {
                if op.value != value {
                    return vec![];
                }
                match (version, op.version) {
                    (Some(a), Some(b)) if a != b => vec![],
                    (None, seen) => vec![(value, seen)],
                    _ => vec![*s],
                }
            }
            F::Cas => {
                let matches = match version {
                    Some(v) => Some(v) == op.expect_version,
                    None => true,
                };
                let could_differ = version.is_none_or(|v| Some(v) != op.expect_version);
                let applied = (op.value, if info { None } else { op.revision });
                match op.outcome {
                    Outcome::Ok if matches && newer(op.revision, version) != Some(false) => {
                        vec![applied]
                    }
                    Outcome::Ok => vec![],
                    Outcome::Fail => {
                        if !could_differ {
                            return vec![];
                        }
                        match (version, op.version) {
                            (Some(a), Some(b)) if a != b => vec![],
                            (None, Some(b)) if Some(b) != op.expect_version => {
                                vec![(value, Some(b))]
                            }
                            _ => vec![*s],
                        }
                    }
                    Outcome::Info => {
                        let mut out = Vec::new();
                        if matches {
                            out.push(applied);
                        }
                        if could_differ {
                            out.push(*s);
                        }
                        out
                    }
                }
            }
            F::BoundedRead | F::Add => vec![*s],
        }
    }
}

/// Whether revision `a` is above `b`, when both are known.
fn newer(a: Option<u64>, b: Option<u64>) -> Option<bool> {
    Some(a? > b?)
}

/// The verdict for one key.
#[derive(Debug, Clone)]
pub struct KeyVerdict {
    pub key: String,
    pub ops: usize,
    pub verdict: Verdict,
    /// For a failure: the operation the search could not get past.
    pub stuck_op: Option<Op>,
}

/// The operations of `ops` that bear on linearizability: writes and CAS that did or may have
/// happened, refused CAS (they observe the version) and successful linearizable reads.
pub fn relevant(op: &Op) -> bool {
    match op.f {
        F::Write => op.outcome != Outcome::Fail,
        F::Cas => op.outcome != Outcome::Fail || op.version.is_some(),
        F::Read => op.outcome == Outcome::Ok,
        F::BoundedRead | F::Add => false,
    }
}

/// Checks every register key. `initial` gives each key's starting state (the setup write).
pub fn check<'a>(
    ops: impl Iterator<Item = &'a Op>,
    initial: &BTreeMap<String, RegState>,
    budget: u64,
) -> Vec<KeyVerdict> {
    let mut by_key: BTreeMap<&str, Vec<Timed<Op>>> = BTreeMap::new();
    for op in ops.filter(|o| relevant(o)) {
        by_key.entry(&op.key).or_default().push(Timed {
            op: op.clone(),
            call: op.invoke_ns,
            ret: if op.outcome == Outcome::Info {
                None
            } else {
                op.complete_ns
            },
        });
    }
    by_key
        .into_iter()
        .map(|(key, hist)| {
            let model = Register {
                init: initial.get(key).copied().unwrap_or((None, None)),
            };
            let verdict = linearizable::check(&model, &hist, budget);
            let stuck_op = match &verdict {
                Verdict::NotLinearizable { stuck_at, .. } => Some(hist[*stuck_at].op.clone()),
                _ => None,
            };
            KeyVerdict {
                key: key.to_string(),
                ops: hist.len(),
                verdict,
                stuck_op,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(f: F, value: Option<i64>, call: u64, ret: Option<u64>) -> Op {
        Op {
            process: 0,
            node: 1,
            f,
            key: "k".into(),
            value,
            expect_version: None,
            version: None,
            max_staleness_ms: None,
            invoke_ns: call,
            complete_ns: ret,
            outcome: if ret.is_some() {
                Outcome::Ok
            } else {
                Outcome::Info
            },
            revision: None,
            staleness_ms: None,
            error: None,
        }
    }
    fn write(v: i64, rev: u64, call: u64, ret: Option<u64>) -> Op {
        Op {
            revision: ret.map(|_| rev),
            ..op(F::Write, Some(v), call, ret)
        }
    }
    fn read(v: i64, version: u64, call: u64, ret: u64) -> Op {
        Op {
            version: Some(version),
            ..op(F::Read, Some(v), call, Some(ret))
        }
    }
    fn cas(expect: u64, v: i64, rev: u64, call: u64, ret: Option<u64>) -> Op {
        Op {
            expect_version: Some(expect),
            revision: ret.map(|_| rev),
            ..op(F::Cas, Some(v), call, ret)
        }
    }
    fn cas_refused(expect: u64, v: i64, current: u64, call: u64, ret: u64) -> Op {
        Op {
            expect_version: Some(expect),
            version: Some(current),
            outcome: Outcome::Fail,
            ..op(F::Cas, Some(v), call, Some(ret))
        }
    }
    fn verdict(ops: Vec<Op>) -> Verdict {
        let init = BTreeMap::from([("k".to_string(), (Some(0), Some(1)))]);
        let v = check(ops.iter(), &init, 1_000_000);
        v.into_iter()
            .next()
            .map(|k| k.verdict)
            .unwrap_or(Verdict::Linearizable)
    }
    fn bad(v: Verdict) -> bool {
        matches!(v, Verdict::NotLinearizable { .. })
    }

    #[test]
    fn sequential_history_passes() {
        let h = vec![
            write(1, 2, 0, Some(10)),
            read(1, 2, 20, 30),
            cas(2, 3, 3, 40, Some(50)),
            read(3, 3, 60, 70),
        ];
        assert_eq!(verdict(h), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_a_completed_write_fails() {
        // The classic: the write finished before the read began, yet the read saw the old value.
        let h = vec![write(1, 2, 0, Some(10)), read(0, 1, 20, 30)];
        assert!(bad(verdict(h)));
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let old = vec![write(1, 2, 0, Some(100)), read(0, 1, 10, 20)];
        let new = vec![write(1, 2, 0, Some(100)), read(1, 2, 10, 20)];
        assert_eq!(verdict(old), Verdict::Linearizable);
        assert_eq!(verdict(new), Verdict::Linearizable);
    }

    #[test]
    fn reads_must_not_go_back_in_time() {
        // Two reads during one write: new then old, in real-time order — no single point of
        // the write explains both (Herlihy & Wing's register example).
        let h = vec![
            write(1, 2, 0, Some(100)),
            read(1, 2, 10, 20),
            read(0, 1, 30, 40),
        ];
        assert!(bad(verdict(h)));
    }

    #[test]
    fn concurrent_writes_can_be_ordered_either_way() {
        let h = vec![
            write(1, 2, 0, Some(50)),
            write(2, 3, 5, Some(55)),
            read(1, 2, 60, 70),
        ];
        // Real time allows either order, but revisions say write 1 (rev 2) applied first, so a
        // later read of 1 means write 2 was lost.
        assert!(bad(verdict(h)));
        let h2 = vec![
            write(1, 3, 0, Some(50)),
            write(2, 2, 5, Some(55)),
            read(1, 3, 60, 70),
        ];
        assert_eq!(verdict(h2), Verdict::Linearizable);
        let h2 = vec![
            write(1, 2, 0, Some(50)),
            write(2, 3, 5, Some(55)),
            read(2, 3, 60, 70),
        ];
        assert_eq!(verdict(h2), Verdict::Linearizable);
    }

    #[test]
    fn unknown_write_may_or_may_not_have_happened() {
        let happened = vec![write(5, 0, 0, None), read(5, 7, 100, 110)];
        let did_not = vec![write(5, 0, 0, None), read(0, 1, 100, 110)];
        let both_orders = vec![
            write(5, 0, 0, None),
            read(0, 1, 100, 110),
            read(5, 7, 200, 210),
        ];
        assert_eq!(verdict(happened), Verdict::Linearizable);
        assert_eq!(verdict(did_not), Verdict::Linearizable);
        assert_eq!(verdict(both_orders), Verdict::Linearizable);
        // But not back again: once seen, it stays.
        let flicker = vec![
            write(5, 0, 0, None),
            read(5, 7, 100, 110),
            read(0, 1, 200, 210),
        ];
        assert!(bad(verdict(flicker)));
        // And never before it was invoked.
        let early = vec![read(5, 7, 0, 10), write(5, 0, 20, None)];
        assert!(bad(verdict(early)));
    }

    #[test]
    fn cas_needs_its_condition() {
        // Two CAS from the same version both succeed, one after the other: one must fail.
        let h = vec![cas(1, 2, 2, 0, Some(10)), cas(1, 3, 3, 20, Some(30))];
        assert!(bad(verdict(h)));
        // Concurrent CAS: one wins, the other is refused seeing the winner's version.
        let h = vec![
            cas(1, 2, 2, 0, Some(50)),
            cas_refused(1, 3, 2, 10, 60),
            read(2, 2, 70, 80),
        ];
        assert_eq!(verdict(h), Verdict::Linearizable);
        // A refusal when the condition held is wrong too.
        let h = vec![cas_refused(1, 3, 1, 0, 10)];
        assert!(bad(verdict(h)));
    }

    #[test]
    fn unknown_cas_may_apply_or_not() {
        let applied = vec![cas(1, 9, 0, 0, None), read(9, 4, 100, 110)];
        let not = vec![cas(1, 9, 0, 0, None), read(0, 1, 100, 110)];
        assert_eq!(verdict(applied), Verdict::Linearizable);
        assert_eq!(verdict(not), Verdict::Linearizable);
    }

    #[test]
    fn a_lost_acknowledged_write_fails() {
        let h = vec![
            write(1, 2, 0, Some(10)),
            write(2, 3, 20, Some(30)),
            read(1, 2, 40, 50),
        ];
        assert!(bad(verdict(h)));
    }

    #[test]
    fn many_concurrent_ops_finish_within_budget() {
        // 12 overlapping writes and a read of the last-revision value: the cache keeps the
        // search small.
        let mut h: Vec<Op> = (0..12)
            .map(|i| write(i + 1, (i + 2) as u64, i as u64, Some(1000 + i as u64)))
            .collect();
        h.push(read(12, 13, 2000, 2010));
        assert_eq!(verdict(h), Verdict::Linearizable);
    }
}
