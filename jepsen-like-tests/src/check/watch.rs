//! Watch streams: every change of the namespace exactly once, in revision order, with no gap,
//! across reconnects that resume with `Last-Event-ID`; checked against the namespace's audit
//! history and the register writes.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Op, Outcome, WatchEvent, F};

#[derive(Debug, Default, Clone)]
pub struct WatchReport {
    pub watchers: usize,
    pub changes: usize,
    pub snapshots: usize,
    /// `snapshot` events in the middle of a stream (the node installed a Raft snapshot, or
    /// its hub fell behind), as opposed to the first event of a connection.
    pub mid_stream_snapshots: usize,
    pub resumes: usize,
    pub stale_closes: usize,
    pub anomalies: Vec<String>,
}

/// `authoritative`: the namespace's change revisions from the audit history after healing.
pub fn check(events: &[&WatchEvent], authoritative: Option<&[u64]>, ops: &[&Op]) -> WatchReport {
    let mut report = WatchReport::default();
    let auth: Option<BTreeSet<u64>> = authoritative.map(|a| a.iter().copied().collect());
    let written: BTreeMap<(u64, &str), Option<i64>> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && matches!(o.f, F::Write | F::Cas))
        .filter_map(|o| Some(((o.revision?, o.key.as_str()), o.value)))
        .collect();
    let mut by_watcher: BTreeMap<u64, Vec<&WatchEvent>> = BTreeMap::new();
    for e in events {
        by_watcher.entry(e.watcher).or_default().push(e);
    }
    report.watchers = by_watcher.len();
    for (w, evs) in by_watcher {
        // `covered`: revision up to which this watcher's view is complete; `last_change`: the
        // newest change it saw since its last snapshot.
        let mut covered: Option<u64> = None;
        let mut last_change: Option<u64> = None;
        // Whether this connection has delivered an event yet.
        let mut started = false;
        let mut bad = |msg: String| report.anomalies.push(format!("watcher {w}: {msg}"));
        for e in evs {
            let first_of_connection = !started;
            started = !matches!(e.event.as_str(), "connect" | "closed" | "refused");
            match e.event.as_str() {
                "connect" => {
                    if e.since.is_some() {
                        report.resumes += 1;
                    }
                    match (e.since, covered) {
                        (Some(s), Some(c)) if s > c => {
                            bad(format!("resumed from {s} but had seen only up to {c}"))
                        }
                        (None, _) => {
                            // A fresh stream starts over with a snapshot.
                            covered = None;
                            last_change = None;
                        }
                        _ => covered = e.since,
                    }
                }
                "snapshot" => {
                    report.snapshots += 1;
                    if !first_of_connection {
                        report.mid_stream_snapshots += 1;
                    }
                    let Some(rev) = e.revision else {
                        bad("snapshot without revision".into());
                        continue;
                    };
                    if covered.is_some_and(|c| rev < c) {
                        bad(format!("snapshot at {rev} goes back from {covered:?}"));
                    }
                    covered = Some(rev);
                    last_change = None;
                }
                "change" => {
                    report.changes += 1;
                    let (Some(rev), Some(prev)) = (e.revision, e.prev_revision) else {
                        bad(format!("change without revision/prev_revision: {e:?}"));
                        continue;
                    };
                    let Some(c) = covered else {
                        bad(format!("change {rev} before any snapshot"));
                        continue;
                    };
                    if rev <= c {
                        bad(format!(
                            "change {rev} at or below {c}: duplicate or out of order"
                        ));
                        continue;
                    }
                    match last_change {
                        Some(l) if prev != l => bad(format!(
                            "change {rev} says the previous change was {prev}, but {l} was"
                        )),
                        None if prev > c => bad(format!(
                            "gap: change {rev} follows {prev}, which was never sent (covered {c})"
                        )),
                        _ => {}
                    }
                    if let Some(a) = &auth {
                        if !a.contains(&rev) {
                            bad(format!("change {rev} is not in the namespace's history"));
                        }
                        if let Some(missed) = a.range(c + 1..rev).next() {
                            bad(format!(
                                "gap: change {missed} missing between {c} and {rev}"
                            ));
                        }
                    }
                    for (key, v) in &e.values {
                        if let Some(w) = written.get(&(rev, key.as_str())) {
                            if *w != Some(*v) {
                                bad(format!("change {rev} says {key}={v}, the write said {w:?}"));
                            }
                        }
                    }
                    covered = Some(rev);
                    last_change = Some(rev);
                }
                "heartbeat" => {
                    if let (Some(rev), Some(c)) = (e.revision, covered) {
                        if rev < c {
                            bad(format!("heartbeat at {rev} below {c}"));
                        } else {
                            let missed = auth
                                .as_ref()
                                .filter(|_| rev > c)
                                .and_then(|a| a.range(c + 1..=rev).next());
                            if let Some(missed) = missed {
                                bad(format!(
                                    "heartbeat at {rev} but change {missed} was not sent"
                                ));
                            }
                            covered = Some(rev);
                        }
                    }
                }
                "stale" => report.stale_closes += 1,
                _ => {}
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, rev: Option<u64>, prev: Option<u64>, since: Option<u64>) -> WatchEvent {
        WatchEvent {
            watcher: 1,
            node: 1,
            event: event.into(),
            time_ns: 0,
            revision: rev,
            prev_revision: prev,
            since,
            values: vec![],
        }
    }
    fn run(evs: Vec<WatchEvent>) -> Vec<String> {
        let refs: Vec<&WatchEvent> = evs.iter().collect();
        check(&refs, Some(&[2, 5, 7, 9]), &[]).anomalies
    }

    #[test]
    fn in_order_stream_with_a_resume_passes() {
        let a = run(vec![
            ev("connect", None, None, None),
            ev("snapshot", Some(4), None, None),
            ev("change", Some(5), Some(2), None),
            ev("closed", None, None, None),
            ev("connect", None, None, Some(5)),
            ev("change", Some(7), Some(5), None),
            ev("heartbeat", Some(8), None, None),
            ev("change", Some(9), Some(7), None),
        ]);
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn a_fresh_snapshot_mid_stream_passes_and_a_skip_fails() {
        // A Raft snapshot install at 8 reaches the stream as a snapshot event: no gap.
        let evs = [
            ev("connect", None, None, None),
            ev("snapshot", Some(4), None, None),
            ev("change", Some(5), Some(2), None),
            ev("snapshot", Some(8), None, None),
            ev("change", Some(9), Some(7), None),
        ];
        let refs: Vec<&WatchEvent> = evs.iter().collect();
        let r = check(&refs, Some(&[2, 5, 7, 9]), &[]);
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        assert_eq!((r.snapshots, r.mid_stream_snapshots), (2, 1));
        // The same install skipped silently: change 7 never arrives.
        let skipped = run(vec![
            ev("connect", None, None, None),
            ev("snapshot", Some(4), None, None),
            ev("change", Some(5), Some(2), None),
            ev("change", Some(9), Some(7), None),
        ]);
        assert!(!skipped.is_empty());
    }

    #[test]
    fn gaps_duplicates_and_reordering_fail() {
        let gap = run(vec![
            ev("snapshot", Some(4), None, None),
            ev("change", Some(5), Some(2), None),
            ev("change", Some(9), Some(7), None),
        ]);
        assert!(!gap.is_empty());
        let dup = run(vec![
            ev("snapshot", Some(4), None, None),
            ev("change", Some(5), Some(2), None),
            ev("change", Some(5), Some(2), None),
        ]);
        assert!(!dup.is_empty());
        // A resume that skips a change the server should have replayed.
        let resume_gap = run(vec![
            ev("snapshot", Some(5), None, None),
            ev("connect", None, None, Some(5)),
            ev("change", Some(9), Some(7), None),
        ]);
        assert!(!resume_gap.is_empty());
    }
}
