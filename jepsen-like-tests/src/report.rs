//! Runs every checker over a history and summarises: operations by type and outcome, faults,
//! anomalies per checker, observed staleness against the bound, watch statistics.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::check::linearizable::Verdict;
use crate::check::{bounded, register, sdk, set, watch};
use crate::history::{self, Record, F};

pub const LINEARIZABILITY_BUDGET: u64 = 5_000_000;

pub struct Report {
    pub ops: BTreeMap<String, usize>,
    pub faults: usize,
    pub registers: Vec<register::KeyVerdict>,
    pub bounded: bounded::BoundedReport,
    pub set: set::SetReport,
    pub watch: watch::WatchReport,
    pub sdk: sdk::SdkReport,
    /// Raft snapshots installed, per node (from the node logs).
    pub snapshots_installed: BTreeMap<u64, u64>,
    /// What each load burst got (its closing nemesis line).
    pub load_bursts: Vec<String>,
}

impl Report {
    pub fn linearizability_anomalies(&self) -> usize {
        self.registers
            .iter()
            .filter(|k| matches!(k.verdict, Verdict::NotLinearizable { .. }))
            .count()
    }
    pub fn undecided(&self) -> usize {
        self.registers
            .iter()
            .filter(|k| k.verdict == Verdict::Unknown)
            .count()
    }
    pub fn anomalies(&self) -> usize {
        self.linearizability_anomalies()
            + self.bounded.anomalies.len()
            + self.set.anomalies.len()
            + self.watch.anomalies.len()
            + self.sdk.anomalies.len()
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "operations (f/outcome: count):");
        for (k, v) in &self.ops {
            let _ = writeln!(s, "  {k:<22} {v}");
        }
        let _ = writeln!(s, "faults injected: {}", self.faults);
        for b in &self.load_bursts {
            let _ = writeln!(s, "  {b}");
        }
        let _ = writeln!(s, "linearizability (per register):");
        for k in &self.registers {
            let _ = writeln!(s, "  {:<6} {:>6} ops  {:?}", k.key, k.ops, k.verdict);
            if let Some(op) = &k.stuck_op {
                let _ = writeln!(
                    s,
                    "         cannot linearize past: {}",
                    serde_json::to_string(op).unwrap_or_default()
                );
            }
        }
        let _ = writeln!(
            s,
            "bounded reads: {} checked, max staleness {} ms (bound asked {} ms), {} anomalies",
            self.bounded.reads,
            self.bounded.max_staleness_ms,
            crate::workload::BOUNDED_MS,
            self.bounded.anomalies.len()
        );
        let _ = writeln!(
            s,
            "set: {} acknowledged, {} unknown ({} of them present), {} anomalies",
            self.set.acked,
            self.set.unknown,
            self.set.unknown_present,
            self.set.anomalies.len()
        );
        let _ = writeln!(
            s,
            "watch: {} watchers, {} changes, {} snapshots ({} mid-stream, after a Raft snapshot install), {} resumes, {} stale closes, {} anomalies",
            self.watch.watchers,
            self.watch.changes,
            self.watch.snapshots,
            self.watch.mid_stream_snapshots,
            self.watch.resumes,
            self.watch.stale_closes,
            self.watch.anomalies.len()
        );
        let _ = writeln!(
            s,
            "raft snapshots installed: {} (per node: {:?})",
            self.snapshots_installed.values().sum::<u64>(),
            self.snapshots_installed
        );
        let _ = writeln!(
            s,
            "sdk: {} evaluations {:?}, {} errors ({} before the first data), {} stale, max revision {}, {} anomalies",
            self.sdk.evaluations,
            self.sdk.by_source,
            self.sdk.errors,
            self.sdk.errors_before_ready,
            self.sdk.stale,
            self.sdk.max_revision,
            self.sdk.anomalies.len()
        );
        for a in self
            .bounded
            .anomalies
            .iter()
            .chain(&self.set.anomalies)
            .chain(&self.watch.anomalies)
            .chain(&self.sdk.anomalies)
            .take(8)
        {
            let _ = writeln!(s, "  ANOMALY {a}");
        }
        let _ = writeln!(
            s,
            "anomalies: {} (linearizability {}, bounded {}, set {}, watch {}, sdk {}); undecided registers: {}",
            self.anomalies(),
            self.linearizability_anomalies(),
            self.bounded.anomalies.len(),
            self.set.anomalies.len(),
            self.watch.anomalies.len(),
            self.sdk.anomalies.len(),
            self.undecided()
        );
        s
    }
}

/// Runs every checker over `records`.
pub fn check(records: &[Record]) -> Report {
    let mut ops_count = BTreeMap::new();
    let ops: Vec<&history::Op> = history::ops(records).collect();
    for o in &ops {
        let name = format!(
            "{}/{}",
            serde_json::to_value(o.f)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?"),
            serde_json::to_value(o.outcome)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?")
        );
        *ops_count.entry(name).or_insert(0) += 1;
    }
    let mut initial = BTreeMap::new();
    let mut set_final = None;
    let mut changes: BTreeMap<&str, &[(u64, Vec<String>)]> = BTreeMap::new();
    let mut faults = 0;
    let mut load_bursts = Vec::new();
    let mut snapshots_installed = BTreeMap::new();
    let mut evals = Vec::new();
    for r in records {
        match r {
            Record::Meta { info } => {
                if let Some(m) = info["initial"].as_object() {
                    for (k, v) in m {
                        initial.insert(k.clone(), (v[0].as_i64(), v[1].as_u64()));
                    }
                }
            }
            Record::SetFinal { elements } => set_final = Some(elements.as_slice()),
            Record::Sdk(e) => evals.push(e),
            Record::SnapshotsInstalled { node, count } => {
                snapshots_installed.insert(*node, *count);
            }
            Record::Changes { ns, changes: c } => {
                changes.insert(ns.as_str(), c.as_slice());
            }
            Record::Nemesis { action, .. } if action.starts_with("load burst") => {
                if action.contains(" over: ") {
                    load_bursts.push(action.clone());
                } else {
                    faults += 1;
                }
            }
            // Counted once per fault: the heal, restart and resume steps, and the steps of a
            // voter replacement after its first, are not new faults.
            Record::Nemesis { action, .. }
                if !action.contains("heal")
                    && !action.starts_with("restart")
                    && !action.starts_with("SIGCONT")
                    && !action.starts_with("promote")
                    && !action.starts_with("remove") =>
            {
                faults += 1;
            }
            _ => {}
        }
    }
    let registers = register::check(
        ops.iter().copied().filter(|o| o.f != F::Add),
        &initial,
        LINEARIZABILITY_BUDGET,
    );
    let bounded = bounded::check(&ops, &initial);
    let set_ops: Vec<&history::Op> = ops.iter().copied().filter(|o| o.f == F::Add).collect();
    let set = set::check(
        &set_ops,
        set_final,
        changes.get(crate::workload::SET_NS).copied(),
    );
    let events: Vec<&history::WatchEvent> = records
        .iter()
        .filter_map(|r| match r {
            Record::Watch(w) => Some(w),
            _ => None,
        })
        .collect();
    let reg_changes: Option<Vec<u64>> = changes
        .get(crate::workload::REG_NS)
        .map(|c| c.iter().map(|(r, _)| *r).collect());
    let watch = watch::check(&events, reg_changes.as_deref(), &ops);
    let sdk = sdk::check(
        &evals,
        &ops,
        &initial,
        changes.get(crate::workload::REG_NS).copied(),
    );
    Report {
        ops: ops_count,
        faults,
        registers,
        bounded,
        set,
        watch,
        sdk,
        snapshots_installed,
        load_bursts,
    }
}
