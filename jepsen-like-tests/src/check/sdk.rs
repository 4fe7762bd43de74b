//! The embedded SDK's evaluations: once it has had data from a node it never answers with an
//! error or the call-site default, never goes back to a lower revision of the same cluster, and
//! the value it returns is the register's value at the revision it reports.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Op, Outcome, SdkEval, F};

#[derive(Debug, Default, Clone)]
pub struct SdkReport {
    pub evaluations: usize,
    /// Evaluations by source (`network`, `lkg`, `bootstrap`, `default`).
    pub by_source: BTreeMap<String, usize>,
    /// Evaluations with reason `ERROR` (before the first data too).
    pub errors: usize,
    /// Errors before the SDK first had data from a node (allowed: not ready yet).
    pub errors_before_ready: usize,
    pub max_revision: u64,
    pub stale: usize,
    pub anomalies: Vec<String>,
}

/// `ops`: the whole history; `initial`: each register's setup value and version;
/// `changes`: the register namespace's audit history `(revision, keys)`, if it was read.
pub fn check(
    evals: &[&SdkEval],
    ops: &[&Op],
    initial: &BTreeMap<String, (Option<i64>, Option<u64>)>,
    changes: Option<&[(u64, Vec<String>)]>,
) -> SdkReport {
    let mut report = SdkReport::default();
    // Per key: revision of each change (audit history), value known at a revision, and the
    // revision each (unique) value was acknowledged at.
    let mut changed: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (rev, keys) in changes.into_iter().flatten() {
        for k in keys {
            changed.entry(k.as_str()).or_default().insert(*rev);
        }
    }
    let mut value_at: BTreeMap<(&str, u64), i64> = BTreeMap::new();
    let mut rev_of_value: BTreeMap<(&str, i64), Option<u64>> = BTreeMap::new();
    for (key, (v, ver)) in initial {
        if let (Some(v), Some(ver)) = (v, ver) {
            value_at.insert((key, *ver), *v);
            rev_of_value.insert((key, *v), Some(*ver));
            changed.entry(key.as_str()).or_default().insert(*ver);
        }
    }
    for o in ops.iter().filter(|o| matches!(o.f, F::Write | F::Cas)) {
        let Some(v) = o.value else { continue };
        match (o.outcome, o.revision) {
            (Outcome::Ok, Some(r)) => {
                value_at.insert((&o.key, r), v);
                rev_of_value.insert((&o.key, v), Some(r));
            }
            (Outcome::Info, _) => {
                rev_of_value.entry((&o.key, v)).or_insert(None);
            }
            _ => {}
        }
    }

    let mut ready = false;
    // Highest revision seen per cluster id.
    let mut high: BTreeMap<Option<&str>, u64> = BTreeMap::new();
    for e in evals {
        report.evaluations += 1;
        *report.by_source.entry(e.source.clone()).or_insert(0) += 1;
        report.stale += usize::from(e.stale);
        let error = e.reason == "ERROR" || e.source == "default";
        if error {
            report.errors += 1;
            if ready {
                report.anomalies.push(format!(
                    "an error or the call-site default after the SDK had data: {e:?}"
                ));
            } else {
                report.errors_before_ready += 1;
            }
            continue;
        }
        if e.source == "network" {
            ready = true;
        }
        let Some(rev) = e.revision else {
            continue;
        };
        report.max_revision = report.max_revision.max(rev);
        let h = high.entry(e.cluster_id.as_deref()).or_insert(0);
        if rev < *h {
            report.anomalies.push(format!(
                "revision {rev} after revision {h} of the same cluster: {e:?}"
            ));
        }
        *h = (*h).max(rev);
        // The value must be the register's value at `rev`.
        let key = e.key.as_str();
        match rev_of_value.get(&(key, e.value)) {
            None => report.anomalies.push(format!(
                "value {} was never written to {key}: {e:?}",
                e.value
            )),
            Some(Some(r)) if *r > rev => report.anomalies.push(format!(
                "value {} was written at revision {r}, after the revision {rev} reported: {e:?}",
                e.value
            )),
            _ => {}
        }
        // The key's last change at or below `rev`, from the audit history.
        if let Some(last) = changed.get(key).and_then(|c| c.range(..=rev).next_back()) {
            if let Some(expected) = value_at.get(&(key, *last)) {
                if *expected != e.value {
                    report.anomalies.push(format!(
                        "value {} at revision {rev}, but the register was {expected} since revision {last}: {e:?}",
                        e.value
                    ));
                }
            } else if rev_of_value
                .get(&(key, e.value))
                .copied()
                .flatten()
                .is_some()
            {
                // The last change was a write of unknown outcome; an acknowledged value
                // (written at another revision) cannot be the one at `rev`.
                report.anomalies.push(format!(
                    "value {} at revision {rev}, but {key} changed at revision {last} by another write: {e:?}",
                    e.value
                ));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(value: i64, rev: Option<u64>, source: &str, reason: &str) -> SdkEval {
        SdkEval {
            time_ns: 0,
            key: "k".into(),
            value,
            reason: reason.into(),
            error: None,
            source: source.into(),
            revision: rev,
            stale: false,
            cluster_id: Some("c".into()),
        }
    }
    fn write(value: i64, rev: u64) -> Op {
        Op {
            process: 0,
            node: 1,
            f: F::Write,
            key: "k".into(),
            value: Some(value),
            expect_version: None,
            version: None,
            max_staleness_ms: None,
            invoke_ns: 0,
            complete_ns: Some(1),
            outcome: Outcome::Ok,
            revision: Some(rev),
            staleness_ms: None,
            error: None,
        }
    }
    fn run(evals: Vec<SdkEval>) -> SdkReport {
        let init = BTreeMap::from([("k".to_string(), (Some(0), Some(1)))]);
        let ops = [write(5, 3), write(6, 7)];
        let op_refs: Vec<&Op> = ops.iter().collect();
        let changes = vec![
            (1, vec!["k".to_string()]),
            (3, vec!["k".to_string()]),
            (7, vec!["k".to_string()]),
        ];
        let refs: Vec<&SdkEval> = evals.iter().collect();
        check(&refs, &op_refs, &init, Some(&changes))
    }

    #[test]
    fn a_correct_sequence_passes() {
        let r = run(vec![
            eval(-1, None, "default", "ERROR"),
            eval(0, Some(2), "network", "STATIC"),
            eval(5, Some(3), "network", "STATIC"),
            eval(5, Some(6), "network", "STATIC"),
            eval(6, Some(9), "network", "STATIC"),
        ]);
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        assert_eq!(r.errors_before_ready, 1);
    }

    #[test]
    fn an_error_after_ready_fails() {
        let r = run(vec![
            eval(0, Some(2), "network", "STATIC"),
            eval(-1, Some(2), "default", "ERROR"),
        ]);
        assert_eq!(r.anomalies.len(), 1, "{:?}", r.anomalies);
    }

    #[test]
    fn going_back_in_revision_fails() {
        let r = run(vec![
            eval(5, Some(6), "network", "STATIC"),
            eval(5, Some(4), "network", "STATIC"),
        ]);
        assert_eq!(r.anomalies.len(), 1, "{:?}", r.anomalies);
    }

    #[test]
    fn a_value_not_of_its_revision_fails() {
        // Revision 8 covers the write of 6 at revision 7.
        let stale = run(vec![eval(5, Some(8), "network", "STATIC")]);
        assert_eq!(stale.anomalies.len(), 1, "{:?}", stale.anomalies);
        // 6 was written at 7: reporting it at 4 is a value from the future.
        let early = run(vec![eval(6, Some(4), "network", "STATIC")]);
        assert!(!early.anomalies.is_empty());
        let never = run(vec![eval(42, Some(8), "network", "STATIC")]);
        assert!(!never.anomalies.is_empty());
    }
}
