//! What the cluster keeps of its A/B tests: per experiment flag and variant, the exposures,
//! distinct users and conversions, as totals and as time buckets rolled up from minutes to hours
//! to days.
//!
//! Nodes gather the events they receive and propose one [`Command::RecordEvents`] per namespace
//! per interval, never one entry per event. Applying it adds each SDK batch's counts once (a
//! retried batch id is skipped) and merges the distinct-user sketches, which is idempotent by
//! itself. Every bound here is part of `apply`, so every node keeps exactly the same data.
//!
//! [`Command::RecordEvents`]: crate::command::Command::RecordEvents

use std::collections::{BTreeMap, VecDeque};

use flagstaff_experiments::DistinctCount;
use flagstaff_flags::limits::{MAX_EXPERIMENT_METRICS, MAX_EXPERIMENT_VARIANTS};
use serde::{Deserialize, Serialize};

/// A sum of finite `f64`s, compared bit for bit (the replicated state is `Eq`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Sum(pub f64);

impl PartialEq for Sum {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Sum {}

/// The events of one namespace that one node gathered in one interval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    /// Counts, per batch the node received (each counted once, whatever the retries).
    pub parts: Vec<EventPart>,
    /// Distinct-user sketches, merged over all parts (merging twice changes nothing).
    pub sketches: Vec<SketchUpdate>,
    /// Flags evaluated in the interval (any flag, experiment or not): their "last evaluated"
    /// time becomes the entry's.
    pub evaluated: Vec<String>,
}

/// The counts of one received batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPart {
    /// The sender's batch id; `None` for events the node counted itself (OFREP evaluations,
    /// HTTP conversions), which are never retried as such.
    pub id: Option<String>,
    pub counts: Vec<CountDelta>,
}

/// Exposures (`metric: None`) or conversions of one metric for one (flag, variant).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountDelta {
    pub flag: String,
    pub variant: String,
    pub metric: Option<String>,
    pub count: u64,
    pub value_count: u64,
    pub value_sum: Sum,
    pub value_sum_squares: Sum,
}

/// The targeting keys seen for one (flag, variant) (exposed users) or one metric of it
/// (converted users).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SketchUpdate {
    pub flag: String,
    pub variant: String,
    pub metric: Option<String>,
    pub users: DistinctCount,
}

/// Everything kept for one experiment flag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentRecord {
    /// Variant → what its users did.
    pub arms: BTreeMap<String, ArmRecord>,
    /// When the first and the latest events were recorded (the cluster's apply clock).
    pub first_ms: u64,
    pub last_ms: u64,
}

/// One variant's exposures and conversions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmRecord {
    pub exposures: u64,
    pub users: DistinctCount,
    /// Metric (conversion event) → its conversions.
    pub metrics: BTreeMap<String, MetricRecord>,
    pub series: Series,
}

/// One metric's conversions in one variant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricRecord {
    pub conversions: u64,
    pub converters: DistinctCount,
    /// Conversions that carried a value, and the sums of their values and squared values.
    pub value_count: u64,
    pub value_sum: Sum,
    pub value_sum_squares: Sum,
}

/// Exposures and conversions over time: the latest minutes, then hours, then days.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Series {
    pub minutes: VecDeque<Bucket>,
    pub hours: VecDeque<Bucket>,
    pub days: VecDeque<Bucket>,
}

/// What one time bucket counted; `start_ms` is aligned to the bucket's width.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub start_ms: u64,
    pub exposures: u64,
    pub conversions: u64,
}

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
pub const DAY_MS: u64 = 24 * HOUR_MS;
/// Minute buckets kept before they are folded into hours (three hours).
pub const KEEP_MINUTES: usize = 180;
/// Hour buckets kept before they are folded into days (two weeks).
pub const KEEP_HOURS: usize = 14 * 24;
/// Day buckets kept (the totals keep counting after the oldest is dropped).
pub const KEEP_DAYS: usize = 400;

impl Series {
    fn add(&mut self, now_ms: u64, exposures: u64, conversions: u64) {
        let bucket = Bucket {
            start_ms: now_ms - now_ms % MINUTE_MS,
            exposures,
            conversions,
        };
        fold(&mut self.minutes, bucket, MINUTE_MS);
        while self.minutes.len() > KEEP_MINUTES {
            if let Some(b) = self.minutes.pop_front() {
                fold(&mut self.hours, b, HOUR_MS);
            }
        }
        while self.hours.len() > KEEP_HOURS {
            if let Some(b) = self.hours.pop_front() {
                fold(&mut self.days, b, DAY_MS);
            }
        }
        while self.days.len() > KEEP_DAYS {
            self.days.pop_front();
        }
    }

    /// Every bucket, oldest first, each with its width in milliseconds.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, &Bucket)> {
        let days = self.days.iter().map(|b| (DAY_MS, b));
        let hours = self.hours.iter().map(|b| (HOUR_MS, b));
        days.chain(hours)
            .chain(self.minutes.iter().map(|b| (MINUTE_MS, b)))
    }
}

/// Adds `b` to the last bucket of `into` when it falls in it, else starts a new one. Buckets
/// arrive in time order (the apply clock never goes back), so `into` stays sorted.
fn fold(into: &mut VecDeque<Bucket>, b: Bucket, width_ms: u64) {
    let start_ms = b.start_ms - b.start_ms % width_ms;
    match into.back_mut() {
        Some(last) if last.start_ms == start_ms => {
            last.exposures = last.exposures.saturating_add(b.exposures);
            last.conversions = last.conversions.saturating_add(b.conversions);
        }
        _ => into.push_back(Bucket { start_ms, ..b }),
    }
}

/// The bounds on what is kept; like every state limit, the same on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExperimentLimits {
    /// Experiment flags with recorded data per namespace.
    pub max_experiments: usize,
    /// Batch ids remembered to skip retries (oldest forgotten first).
    pub batch_ids: usize,
}

impl Default for ExperimentLimits {
    fn default() -> Self {
        Self {
            max_experiments: 50,
            batch_ids: 100_000,
        }
    }
}

/// What applying one [`EventBatch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Parts whose counts were added.
    pub parts: usize,
    /// Parts skipped as retries of a batch already recorded.
    pub duplicates: usize,
    /// Counts and sketches dropped by a bound (an experiment, variant or metric over its limit).
    pub over_limit: usize,
}

/// All recorded experiments, and the batch ids already counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentStore {
    /// (namespace, flag) → its record.
    records: BTreeMap<(String, String), ExperimentRecord>,
    /// `namespace/id` → its sequence number.
    batches: BTreeMap<String, u64>,
    /// Batch ids in sequence order, for first-in-first-out eviction.
    batch_order: VecDeque<String>,
    batch_seq: u64,
    /// (namespace, flag) → when an evaluation of it was last reported.
    last_evaluated: BTreeMap<(String, String), u64>,
}

/// A row write for the state-machine column family (`None` deletes).
pub(crate) type RowOp = (Vec<u8>, Option<Vec<u8>>);

pub(crate) const RECORD_TAG: &[u8] = b"x:";
pub(crate) const BATCH_TAG: &[u8] = b"b:";
pub(crate) const EVALUATED_TAG: &[u8] = b"l:";

fn record_row(ns: &str, flag: &str) -> Vec<u8> {
    [RECORD_TAG, ns.as_bytes(), b"\0", flag.as_bytes()].concat()
}
fn evaluated_row(ns: &str, flag: &str) -> Vec<u8> {
    [EVALUATED_TAG, ns.as_bytes(), b"\0", flag.as_bytes()].concat()
}
fn batch_row(scoped: &str) -> Vec<u8> {
    [BATCH_TAG, scoped.as_bytes()].concat()
}

impl ExperimentStore {
    /// The record of `flag` in `ns`, if any event was recorded for it.
    pub fn record(&self, ns: &str, flag: &str) -> Option<&ExperimentRecord> {
        self.records.get(&(ns.to_string(), flag.to_string()))
    }

    /// The flags of `ns` with recorded data, with their records.
    pub fn records_of<'a>(
        &'a self,
        ns: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a ExperimentRecord)> + 'a {
        self.records
            .range((ns.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == ns)
            .map(|((_, f), r)| (f.as_str(), r))
    }

    /// When an evaluation of `flag` in `ns` was last reported (by an SDK or this cluster's
    /// OFREP endpoints), in the cluster's apply clock.
    pub fn last_evaluated(&self, ns: &str, flag: &str) -> Option<u64> {
        self.last_evaluated
            .get(&(ns.to_string(), flag.to_string()))
            .copied()
    }

    /// Whether batch `id` of `ns` was already counted.
    pub fn seen(&self, ns: &str, id: &str) -> bool {
        self.batches.contains_key(&format!("{ns}/{id}"))
    }

    /// Applies `batch` to `ns` at `now_ms`. `has_flag` says whether the namespace still has a
    /// flag (a flag deleted since the events were gathered gets nothing).
    pub(crate) fn apply(
        &mut self,
        ns: &str,
        batch: &EventBatch,
        has_flag: impl Fn(&str) -> bool,
        now_ms: u64,
        limits: ExperimentLimits,
        rows: &mut Vec<RowOp>,
    ) -> Recorded {
        let mut done = Recorded::default();
        for flag in &batch.evaluated {
            if has_flag(flag) {
                self.last_evaluated
                    .insert((ns.to_string(), flag.clone()), now_ms);
                rows.push((
                    evaluated_row(ns, flag),
                    Some(super::state::encode_row(&now_ms)),
                ));
            }
        }
        for part in &batch.parts {
            if let Some(id) = &part.id {
                let scoped = format!("{ns}/{id}");
                if self.batches.contains_key(&scoped) {
                    done.duplicates += 1;
                    continue;
                }
                self.remember_batch(scoped, limits, rows);
            }
            done.parts += 1;
            for c in &part.counts {
                let added = self
                    .arm(ns, &c.flag, &c.variant, &has_flag, limits, now_ms)
                    .is_some_and(|arm| add_count(arm, c, now_ms));
                if !added {
                    done.over_limit += 1;
                }
            }
        }
        for s in &batch.sketches {
            let Some(arm) = self.arm(ns, &s.flag, &s.variant, &has_flag, limits, now_ms) else {
                done.over_limit += 1;
                continue;
            };
            let target = match &s.metric {
                None => &mut arm.users,
                Some(m) => match metric_of(arm, m) {
                    Some(metric) => &mut metric.converters,
                    None => {
                        done.over_limit += 1;
                        continue;
                    }
                },
            };
            target.merge(&s.users);
        }
        // Every record the batch named that exists now was created or changed (its `last_ms`).
        let mut touched: Vec<&str> = batch
            .parts
            .iter()
            .flat_map(|p| p.counts.iter().map(|c| c.flag.as_str()))
            .chain(batch.sketches.iter().map(|s| s.flag.as_str()))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        for flag in touched {
            if let Some(rec) = self.records.get(&(ns.to_string(), flag.to_string())) {
                rows.push((record_row(ns, flag), Some(super::state::encode_row(rec))));
            }
        }
        done
    }

    /// The arm of (flag, variant), created when the bounds allow it.
    fn arm(
        &mut self,
        ns: &str,
        flag: &str,
        variant: &str,
        has_flag: &impl Fn(&str) -> bool,
        limits: ExperimentLimits,
        now_ms: u64,
    ) -> Option<&mut ArmRecord> {
        let key = (ns.to_string(), flag.to_string());
        if !self.records.contains_key(&key) {
            if !has_flag(flag) || self.records_of(ns).count() >= limits.max_experiments {
                return None;
            }
            self.records.insert(
                key.clone(),
                ExperimentRecord {
                    first_ms: now_ms,
                    ..ExperimentRecord::default()
                },
            );
        }
        let rec = self.records.get_mut(&key)?;
        rec.last_ms = now_ms;
        if !rec.arms.contains_key(variant) && rec.arms.len() >= MAX_EXPERIMENT_VARIANTS {
            return None;
        }
        Some(rec.arms.entry(variant.to_string()).or_default())
    }

    fn remember_batch(&mut self, scoped: String, limits: ExperimentLimits, rows: &mut Vec<RowOp>) {
        self.batch_seq += 1;
        rows.push((
            batch_row(&scoped),
            Some(super::state::encode_row(&self.batch_seq)),
        ));
        self.batches.insert(scoped.clone(), self.batch_seq);
        self.batch_order.push_back(scoped);
        while self.batch_order.len() > limits.batch_ids {
            if let Some(old) = self.batch_order.pop_front() {
                self.batches.remove(&old);
                rows.push((batch_row(&old), None));
            }
        }
    }

    /// Drops the records of `ns` whose flag `has_flag` no longer knows (the flag or the whole
    /// namespace was deleted, or an import replaced it).
    pub(crate) fn prune(
        &mut self,
        ns: &str,
        has_flag: impl Fn(&str) -> bool,
        rows: &mut Vec<RowOp>,
    ) {
        let gone: Vec<String> = self
            .records_of(ns)
            .filter(|(flag, _)| !has_flag(flag))
            .map(|(flag, _)| flag.to_string())
            .collect();
        for flag in gone {
            rows.push((record_row(ns, &flag), None));
            self.records.remove(&(ns.to_string(), flag));
        }
        let forgotten: Vec<String> = self
            .last_evaluated
            .range((ns.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .filter(|((_, flag), _)| !has_flag(flag))
            .map(|((_, flag), _)| flag.clone())
            .collect();
        for flag in forgotten {
            rows.push((evaluated_row(ns, &flag), None));
            self.last_evaluated.remove(&(ns.to_string(), flag));
        }
    }

    /// Every row that persists this store.
    pub(crate) fn all_rows(&self, rows: &mut Vec<RowOp>) {
        for ((ns, flag), rec) in &self.records {
            rows.push((record_row(ns, flag), Some(super::state::encode_row(rec))));
        }
        for (scoped, seq) in &self.batches {
            rows.push((batch_row(scoped), Some(super::state::encode_row(seq))));
        }
        for ((ns, flag), at) in &self.last_evaluated {
            rows.push((evaluated_row(ns, flag), Some(super::state::encode_row(at))));
        }
    }

    /// Reads one row written by [`ExperimentStore::apply`] or [`ExperimentStore::all_rows`];
    /// `rest` is the key after its tag. Call [`ExperimentStore::finish_load`] after the last.
    pub(crate) fn load_row(
        &mut self,
        tag: &[u8],
        rest: &[u8],
        value: &[u8],
    ) -> Result<(), crate::codec::CodecError> {
        let ns_flag = || {
            let mut parts = rest.splitn(2, |b| *b == 0);
            let ns = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let flag = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            (ns, flag)
        };
        if tag == RECORD_TAG {
            self.records.insert(ns_flag(), crate::codec::decode(value)?);
        } else if tag == EVALUATED_TAG {
            self.last_evaluated
                .insert(ns_flag(), crate::codec::decode(value)?);
        } else {
            let seq: u64 = crate::codec::decode(value)?;
            self.batches
                .insert(String::from_utf8_lossy(rest).into_owned(), seq);
        }
        Ok(())
    }

    /// Rebuilds the eviction order after [`ExperimentStore::load_row`] (or decoding).
    pub(crate) fn finish_load(&mut self) {
        let mut order: Vec<(u64, &String)> = self.batches.iter().map(|(k, s)| (*s, k)).collect();
        order.sort();
        self.batch_seq = order.last().map(|(s, _)| *s).unwrap_or(0);
        self.batch_order = order.into_iter().map(|(_, k)| k.clone()).collect();
    }
}

fn metric_of<'a>(arm: &'a mut ArmRecord, metric: &str) -> Option<&'a mut MetricRecord> {
    if !arm.metrics.contains_key(metric) && arm.metrics.len() >= MAX_EXPERIMENT_METRICS {
        return None;
    }
    Some(arm.metrics.entry(metric.to_string()).or_default())
}

/// Adds one count to its arm; false when its metric is over the limit.
fn add_count(arm: &mut ArmRecord, c: &CountDelta, now_ms: u64) -> bool {
    match &c.metric {
        None => {
            arm.exposures = arm.exposures.saturating_add(c.count);
            arm.series.add(now_ms, c.count, 0);
        }
        Some(m) => {
            let Some(metric) = metric_of(arm, m) else {
                return false;
            };
            metric.conversions = metric.conversions.saturating_add(c.count);
            metric.value_count = metric.value_count.saturating_add(c.value_count);
            metric.value_sum.0 += c.value_sum.0;
            metric.value_sum_squares.0 += c.value_sum_squares.0;
            arm.series.add(now_ms, 0, c.count);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(flag: &str, variant: &str, metric: Option<&str>, n: u64) -> CountDelta {
        CountDelta {
            flag: flag.into(),
            variant: variant.into(),
            metric: metric.map(Into::into),
            count: n,
            value_count: n,
            value_sum: Sum(2.0 * n as f64),
            value_sum_squares: Sum(4.0 * n as f64),
        }
    }

    fn sketch(flag: &str, variant: &str, users: &[&str]) -> SketchUpdate {
        let mut s = DistinctCount::new();
        for u in users {
            s.insert(u);
        }
        SketchUpdate {
            flag: flag.into(),
            variant: variant.into(),
            metric: None,
            users: s,
        }
    }

    #[test]
    fn a_retried_batch_counts_once_and_sketches_merge() {
        let mut store = ExperimentStore::default();
        let batch = EventBatch {
            parts: vec![EventPart {
                id: Some("b1".into()),
                counts: vec![count("f", "a", None, 3), count("f", "a", Some("buy"), 1)],
            }],
            sketches: vec![sketch("f", "a", &["u1", "u2", "u3"])],
            evaluated: Vec::new(),
        };
        let mut rows = Vec::new();
        let lim = ExperimentLimits::default();
        let first = store.apply("ns", &batch, |_| true, 1_000, lim, &mut rows);
        let again = store.apply("ns", &batch, |_| true, 2_000, lim, &mut rows);
        assert_eq!((first.parts, first.duplicates), (1, 0));
        assert_eq!((again.parts, again.duplicates), (0, 1));
        let arm = &store.record("ns", "f").unwrap().arms["a"];
        assert_eq!(arm.exposures, 3);
        assert_eq!(arm.metrics["buy"].conversions, 1);
        assert_eq!(arm.metrics["buy"].value_sum, Sum(2.0));
        assert!((arm.users.estimate() - 3.0).abs() < 0.5);
        assert!(store.seen("ns", "b1") && !store.seen("other", "b1"));
    }

    #[test]
    fn unknown_flags_and_limits_are_dropped_and_counted() {
        let mut store = ExperimentStore::default();
        let lim = ExperimentLimits {
            max_experiments: 1,
            batch_ids: 2,
        };
        let mut rows = Vec::new();
        let parts = (0..3)
            .map(|i| EventPart {
                id: Some(format!("b{i}")),
                counts: vec![count(&format!("f{i}"), "a", None, 1)],
            })
            .collect();
        let done = store.apply(
            "ns",
            &EventBatch {
                parts,
                sketches: vec![sketch("gone", "a", &["u"])],
                evaluated: Vec::new(),
            },
            |f| f != "gone",
            0,
            lim,
            &mut rows,
        );
        assert_eq!(done.parts, 3);
        // f1 and f2 are over the one-experiment limit; "gone" is not a flag.
        assert_eq!(done.over_limit, 3);
        assert_eq!(store.records_of("ns").count(), 1);
        // Only the last two batch ids are remembered.
        assert!(!store.seen("ns", "b0") && store.seen("ns", "b2"));
    }

    #[test]
    fn minutes_roll_up_into_hours_and_days() {
        let mut s = Series::default();
        let steps = (KEEP_MINUTES + KEEP_HOURS * 60 + 5) as u64;
        for i in 0..steps {
            s.add(i * MINUTE_MS, 1, 0);
        }
        assert_eq!(s.minutes.len(), KEEP_MINUTES);
        assert!(s.hours.len() <= KEEP_HOURS && !s.days.is_empty());
        let total: u64 = s.buckets().map(|(_, b)| b.exposures).sum();
        assert_eq!(total, steps, "rolling up loses nothing until days expire");
        let starts: Vec<u64> = s.buckets().map(|(_, b)| b.start_ms).collect();
        assert!(
            starts.windows(2).all(|w| w[0] < w[1]),
            "buckets stay in time order"
        );
    }

    #[test]
    fn prune_drops_records_of_deleted_flags() {
        let mut store = ExperimentStore::default();
        let mut rows = Vec::new();
        let batch = EventBatch {
            parts: vec![EventPart {
                id: None,
                counts: vec![count("f", "a", None, 1), count("g", "a", None, 1)],
            }],
            sketches: Vec::new(),
            evaluated: vec!["f".into(), "other".into()],
        };
        let lim = ExperimentLimits::default();
        store.apply("ns", &batch, |_| true, 7, lim, &mut rows);
        assert_eq!(store.last_evaluated("ns", "other"), Some(7));
        rows.clear();
        store.prune("ns", |f| f == "g", &mut rows);
        assert!(store.record("ns", "f").is_none() && store.record("ns", "g").is_some());
        assert_eq!(store.last_evaluated("ns", "f"), None);
        assert_eq!(rows.len(), 3, "the record and two evaluation times");
        assert!(rows.iter().all(|r| r.1.is_none()));
    }
}
