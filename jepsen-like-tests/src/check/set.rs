//! The set workload: every acknowledged add is present at the end, nothing appears that was
//! never added, and nothing was applied twice (the audit history lists each element once).

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Op, Outcome, F};

#[derive(Debug, Default, Clone)]
pub struct SetReport {
    pub acked: usize,
    pub unknown: usize,
    pub unknown_present: usize,
    pub anomalies: Vec<String>,
}

/// `final_elements`: element → version read linearizably after healing; `changes`: the
/// namespace's audit history (revision, keys), when recorded.
pub fn check(
    ops: &[&Op],
    final_elements: Option<&[(String, u64)]>,
    changes: Option<&[(u64, Vec<String>)]>,
) -> SetReport {
    let mut report = SetReport::default();
    let Some(final_elements) = final_elements else {
        if ops.iter().any(|o| o.f == F::Add) {
            report
                .anomalies
                .push("no final read of the set was recorded".into());
        }
        return report;
    };
    let present: BTreeMap<&str, u64> = final_elements
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    let mut attempted = BTreeSet::new();
    for o in ops.iter().filter(|o| o.f == F::Add) {
        attempted.insert(o.key.as_str());
        match o.outcome {
            Outcome::Ok => {
                report.acked += 1;
                match present.get(o.key.as_str()) {
                    None => report
                        .anomalies
                        .push(format!("acknowledged add of {} is lost: {o:?}", o.key)),
                    Some(v) if Some(*v) != o.revision => report.anomalies.push(format!(
                        "{} acknowledged at revision {:?} but holds version {v}: applied again?",
                        o.key, o.revision
                    )),
                    _ => {}
                }
            }
            Outcome::Info => {
                report.unknown += 1;
                if present.contains_key(o.key.as_str()) {
                    report.unknown_present += 1;
                }
            }
            Outcome::Fail => {
                if present.contains_key(o.key.as_str()) {
                    report.anomalies.push(format!(
                        "{} is present although its add certainly failed: {o:?}",
                        o.key
                    ));
                }
            }
        }
    }
    for k in present.keys() {
        if !attempted.contains(k) {
            report
                .anomalies
                .push(format!("{k} is present but was never added"));
        }
    }
    if let Some(changes) = changes {
        let mut seen: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (rev, keys) in changes {
            for k in keys {
                seen.entry(k.as_str()).or_default().push(*rev);
            }
        }
        for (k, revs) in seen {
            if revs.len() > 1 && attempted.contains(k) {
                report.anomalies.push(format!(
                    "{k} was applied {} times, at revisions {revs:?}",
                    revs.len()
                ));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(key: &str, outcome: Outcome, rev: Option<u64>) -> Op {
        Op {
            process: 0,
            node: 1,
            f: F::Add,
            key: key.into(),
            value: None,
            expect_version: None,
            version: None,
            max_staleness_ms: None,
            invoke_ns: 0,
            complete_ns: Some(1),
            outcome,
            revision: rev,
            staleness_ms: None,
            error: None,
        }
    }

    #[test]
    fn lost_phantom_and_double_applies_are_found() {
        let ops = [
            add("a", Outcome::Ok, Some(5)),
            add("b", Outcome::Ok, Some(6)),
            add("c", Outcome::Info, None),
            add("d", Outcome::Fail, None),
        ];
        let refs: Vec<&Op> = ops.iter().collect();
        let good = [
            ("a".to_string(), 5),
            ("b".to_string(), 6),
            ("c".to_string(), 7),
        ];
        let changes = [(5, vec!["a".to_string()]), (6, vec!["b".to_string()])];
        let r = check(&refs, Some(&good), Some(&changes));
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        assert_eq!((r.acked, r.unknown, r.unknown_present), (2, 1, 1));

        let lost = [("a".to_string(), 5)];
        assert_eq!(check(&refs, Some(&lost), None).anomalies.len(), 1);
        let phantom = [
            ("a".to_string(), 5),
            ("b".to_string(), 6),
            ("z".to_string(), 9),
        ];
        assert_eq!(check(&refs, Some(&phantom), None).anomalies.len(), 1);
        let twice = [
            (5, vec!["a".to_string()]),
            (6, vec!["b".to_string()]),
            (8, vec!["a".to_string()]),
        ];
        assert_eq!(check(&refs, Some(&good), Some(&twice)).anomalies.len(), 1);
    }
}
