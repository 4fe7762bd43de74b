//! Bounded reads, checked by revision: a read that claims staleness `s` must reflect every
//! write acknowledged before `invoke - s`, and its value must be the register's value at the
//! revision it reports.

use std::collections::BTreeMap;

use crate::history::{Op, Outcome, F};

/// What the bounded-read checker found.
#[derive(Debug, Default, Clone)]
pub struct BoundedReport {
    pub reads: usize,
    pub max_staleness_ms: u64,
    pub anomalies: Vec<String>,
}

/// `ops`: the whole history (writes of every workload count: revisions are cluster-wide).
/// `initial`: each register's setup value and version.
pub fn check(ops: &[&Op], initial: &BTreeMap<String, (Option<i64>, Option<u64>)>) -> BoundedReport {
    let mut report = BoundedReport::default();
    // Acknowledged writes by completion time, with a running maximum of their revisions.
    let mut acked: Vec<(u64, u64)> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && matches!(o.f, F::Write | F::Cas | F::Add))
        .filter_map(|o| Some((o.complete_ns?, o.revision?)))
        .collect();
    acked.sort();
    let mut running_max = Vec::with_capacity(acked.len());
    let mut m = 0;
    for (_, r) in &acked {
        m = m.max(*r);
        running_max.push(m);
    }
    // Per key: revision → value of acknowledged writes; value → revision (values are unique).
    let mut by_rev: BTreeMap<&str, BTreeMap<u64, Option<i64>>> = BTreeMap::new();
    let mut rev_of_value: BTreeMap<(&str, i64), Option<u64>> = BTreeMap::new();
    for (key, (v, ver)) in initial {
        if let Some(ver) = ver {
            by_rev.entry(key).or_default().insert(*ver, *v);
        }
        if let Some(v) = v {
            rev_of_value.insert((key, *v), *ver);
        }
    }
    for o in ops.iter().filter(|o| matches!(o.f, F::Write | F::Cas)) {
        if o.outcome == Outcome::Ok {
            if let Some(r) = o.revision {
                by_rev.entry(&o.key).or_default().insert(r, o.value);
            }
        }
        if o.outcome != Outcome::Fail {
            if let Some(v) = o.value {
                rev_of_value.insert((&o.key, v), o.revision.filter(|_| o.outcome == Outcome::Ok));
            }
        }
    }

    for o in ops
        .iter()
        .filter(|o| o.f == F::BoundedRead && o.outcome == Outcome::Ok)
    {
        report.reads += 1;
        let (Some(rev), Some(s)) = (o.revision, o.staleness_ms) else {
            report
                .anomalies
                .push(format!("bounded read without revision or staleness: {o:?}"));
            continue;
        };
        report.max_staleness_ms = report.max_staleness_ms.max(s);
        if let Some(bound) = o.max_staleness_ms {
            if s > bound {
                report.anomalies.push(format!(
                    "staleness {s} ms above the bound {bound} ms asked for: {o:?}"
                ));
            }
        }
        // Every write acknowledged before invoke - s must be at or below `rev`.
        let horizon = o.invoke_ns.saturating_sub(s.saturating_mul(1_000_000));
        let n = acked.partition_point(|(t, _)| *t < horizon);
        if n > 0 && running_max[n - 1] > rev {
            report.anomalies.push(format!(
                "stale bounded read: revision {rev} with claimed staleness {s} ms, but revision {} \
                 was acknowledged before invoke - staleness: {o:?}",
                running_max[n - 1]
            ));
        }
        // The value must be the register's value at `rev`.
        if let Some(version) = o.version {
            if version > rev {
                report.anomalies.push(format!(
                    "item version {version} above the answer's revision {rev}: {o:?}"
                ));
            }
            let writes = by_rev.get(o.key.as_str());
            if let Some(w) = writes.and_then(|w| w.get(&version)) {
                if *w != o.value {
                    report.anomalies.push(format!(
                        "value {:?} at version {version}, but the write at that revision wrote {w:?}: {o:?}",
                        o.value
                    ));
                }
            }
            let missed = writes
                .filter(|_| version < rev)
                .and_then(|w| w.range(version + 1..=rev).next());
            if let Some((later, _)) = missed {
                report.anomalies.push(format!(
                    "read at revision {rev} returned version {version}, missing the write at revision {later}: {o:?}"
                ));
            }
        }
        if let Some(v) = o.value {
            match rev_of_value.get(&(o.key.as_str(), v)) {
                None => report
                    .anomalies
                    .push(format!("value {v} was never written to {}: {o:?}", o.key)),
                Some(Some(r)) if Some(*r) != o.version => report.anomalies.push(format!(
                    "value {v} was written at revision {r} but read with version {:?}: {o:?}",
                    o.version
                )),
                _ => {}
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;

    fn op(f: F, value: i64, rev: u64, call: u64, ret: u64) -> Op {
        Op {
            process: 0,
            node: 1,
            f,
            key: "k".into(),
            value: Some(value),
            expect_version: None,
            version: None,
            max_staleness_ms: None,
            invoke_ns: call,
            complete_ns: Some(ret),
            outcome: Outcome::Ok,
            revision: Some(rev),
            staleness_ms: None,
            error: None,
        }
    }
    fn bread(value: i64, version: u64, rev: u64, staleness_ms: u64, call_ms: u64) -> Op {
        Op {
            version: Some(version),
            staleness_ms: Some(staleness_ms),
            max_staleness_ms: Some(500),
            ..op(
                F::BoundedRead,
                value,
                rev,
                call_ms * 1_000_000,
                call_ms * 1_000_000 + 1,
            )
        }
    }
    fn run(ops: Vec<Op>) -> BoundedReport {
        let init = BTreeMap::from([("k".to_string(), (Some(0), Some(1)))]);
        let refs: Vec<&Op> = ops.iter().collect();
        check(&refs, &init)
    }
    const MS: u64 = 1_000_000;

    #[test]
    fn a_read_within_its_staleness_may_be_old() {
        // Write acked at 100 ms; a read at 300 ms claiming 250 ms staleness may miss it.
        let r = run(vec![
            op(F::Write, 1, 2, 0, 100 * MS),
            bread(0, 1, 1, 250, 300),
        ]);
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
    }

    #[test]
    fn a_read_older_than_it_claims_fails() {
        // The same read claiming 100 ms staleness must have seen revision 2.
        let r = run(vec![
            op(F::Write, 1, 2, 0, 100 * MS),
            bread(0, 1, 1, 100, 300),
        ]);
        assert_eq!(r.anomalies.len(), 1, "{:?}", r.anomalies);
    }

    #[test]
    fn value_must_match_the_revision() {
        // Revision 3 is reported, which covers the write at 2, but the old value came back.
        let r = run(vec![
            op(F::Write, 1, 2, 0, 100 * MS),
            bread(0, 1, 3, 1, 300),
        ]);
        assert!(!r.anomalies.is_empty());
        let ok = run(vec![
            op(F::Write, 1, 2, 0, 100 * MS),
            bread(1, 2, 3, 1, 300),
        ]);
        assert!(ok.anomalies.is_empty(), "{:?}", ok.anomalies);
    }
}
