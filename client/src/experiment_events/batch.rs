//! The wire form of one request to `POST /v1/namespaces/{ns}/events`, and the cutting of an
//! interval's aggregates into batches of at most [`MAX_ENTRIES`] entries per list.

use serde::Serialize;

use super::aggregate::Aggregates;

/// Most entries in each list (exposures, conversions) of one request.
pub(crate) const MAX_ENTRIES: usize = 1_000;
/// Most flag keys one request reports as evaluated (the node's limit).
pub(crate) const MAX_EVALUATED: usize = 10_000;

/// One request body. Its `batch` id is fixed when it is formed, and a retry sends the same
/// body again, so a node that recorded an attempt whose answer was lost can recognise it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Batch {
    /// 32 lowercase hex characters, random.
    pub batch: String,
    pub exposures: Vec<Exposure>,
    pub conversions: Vec<Conversion>,
    /// Events dropped (backlog overflow, refused batches) before this batch was formed and
    /// not yet reported by an accepted one.
    pub dropped: u64,
    /// Keys of the flags evaluated in the interval (any flag), for the flag list's "last
    /// evaluated"; left out when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evaluated: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Exposure {
    pub flag: String,
    pub variant: String,
    pub count: u64,
    /// The distinct-user sketch in its sparse form (what serializing the `DistinctCount`
    /// writes), kept sparse here: a few hundred users take a few hundred entries, not 16 KiB.
    pub users: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Conversion {
    pub flag: String,
    pub variant: String,
    pub metric: String,
    pub count: u64,
    pub users: Vec<u32>,
    pub value_count: u64,
    pub value_sum: f64,
    pub value_sum_squares: f64,
}

/// A fresh batch id.
pub(crate) fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Batch {
    pub fn new(exposures: Vec<Exposure>, conversions: Vec<Conversion>) -> Self {
        Self {
            batch: new_id(),
            exposures,
            conversions,
            dropped: 0,
            evaluated: Vec::new(),
        }
    }

    /// Exposures plus conversions this batch carries (what is counted as dropped with it).
    pub fn events(&self) -> u64 {
        let e = self.exposures.iter().map(|x| x.count);
        let c = self.conversions.iter().map(|x| x.count);
        e.chain(c).fold(0u64, u64::saturating_add)
    }
}

/// The aggregates of one interval as batches of at most `max` entries per list, entries in
/// (flag, variant, metric) order. None when nothing was recorded.
pub(crate) fn cut(agg: Aggregates, max: usize) -> Vec<Batch> {
    let max = max.max(1);
    let mut exposures = Vec::new();
    let mut conversions = Vec::new();
    let mut flags: Vec<_> = agg.flags.into_iter().collect();
    flags.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (flag, mut arms) in flags {
        arms.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (variant, arm) in arms {
            if arm.exposures > 0 {
                exposures.push(Exposure {
                    flag: flag.to_string(),
                    variant: variant.to_string(),
                    count: arm.exposures,
                    users: arm.users.to_sparse(),
                });
            }
            let mut metrics = arm.conversions;
            metrics.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (metric, c) in metrics.into_iter().filter(|(_, c)| c.count > 0) {
                conversions.push(Conversion {
                    flag: flag.to_string(),
                    variant: variant.to_string(),
                    metric: metric.to_string(),
                    count: c.count,
                    users: c.users.to_sparse(),
                    value_count: c.value_count,
                    value_sum: c.value_sum,
                    value_sum_squares: c.value_sum_squares,
                });
            }
        }
    }
    let n = exposures
        .len()
        .div_ceil(max)
        .max(conversions.len().div_ceil(max));
    let mut exposures = exposures.into_iter();
    let mut conversions = conversions.into_iter();
    (0..n)
        .map(|_| {
            Batch::new(
                exposures.by_ref().take(max).collect(),
                conversions.by_ref().take(max).collect(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment_events::aggregate::Recorder;
    use flagstaff_experiments::DistinctCount;

    #[test]
    fn an_interval_is_cut_at_1000_entries_per_list_and_nothing_is_lost() {
        let r = Recorder::new();
        // 2,501 exposure entries (flag, variant) and 1,000 conversion entries.
        for i in 0..2_501 {
            r.expose(&format!("f{:04}", i / 3), ["a", "b", "c"][i % 3], Some("u"));
        }
        for f in 0..1_000 {
            r.convert(&[(&format!("f{f:04}"), "a")], "buy", Some("u"), Some(1.0));
        }
        let batches = cut(r.take(), MAX_ENTRIES);
        let sizes: Vec<_> = batches
            .iter()
            .map(|b| (b.exposures.len(), b.conversions.len()))
            .collect();
        assert_eq!(sizes, vec![(1000, 1000), (1000, 0), (501, 0)]);
        let ids: std::collections::HashSet<_> = batches.iter().map(|b| b.batch.clone()).collect();
        assert_eq!(ids.len(), 3, "every batch has its own id");
        assert!(batches.iter().all(|b| b.batch.len() == 32
            && b.batch
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))));
        let total: u64 = batches.iter().map(Batch::events).sum();
        assert_eq!(total, 2_501 + 1_000);
        let mut seen: Vec<_> = batches
            .iter()
            .flat_map(|b| {
                b.exposures
                    .iter()
                    .map(|e| (e.flag.clone(), e.variant.clone()))
            })
            .collect();
        let n = seen.len();
        seen.dedup();
        assert_eq!(seen.len(), n, "no entry is sent twice");
        assert!(cut(Recorder::new().take(), MAX_ENTRIES).is_empty());
    }

    #[test]
    fn the_body_is_the_documented_wire_format() {
        let r = Recorder::new();
        r.expose("checkout", "b", Some("user-1"));
        r.expose("checkout", "b", Some("user-2"));
        r.convert(
            &[("checkout", "b")],
            "checkout_completed",
            Some("user-1"),
            Some(4.0),
        );
        let mut batches = cut(r.take(), MAX_ENTRIES);
        assert_eq!(batches.len(), 1);
        let mut b = batches.remove(0);
        b.dropped = 7;
        let body = serde_json::to_value(&b).unwrap();
        let mut sketch = DistinctCount::new();
        sketch.insert("user-1");
        sketch.insert("user-2");
        let mut converters = DistinctCount::new();
        converters.insert("user-1");
        // `users` is exactly what serializing the sketch itself writes.
        assert_eq!(
            body,
            serde_json::json!({
                "batch": b.batch,
                "exposures": [{"flag": "checkout", "variant": "b", "count": 2,
                               "users": serde_json::to_value(&sketch).unwrap()}],
                "conversions": [{"flag": "checkout", "variant": "b", "metric": "checkout_completed",
                                 "count": 1, "users": serde_json::to_value(&converters).unwrap(),
                                 "valueCount": 1, "valueSum": 4.0, "valueSumSquares": 16.0}],
                "dropped": 7
            })
        );
        assert_eq!(body["exposures"][0]["users"].as_array().unwrap().len(), 2);
        // Both lists are always present.
        let empty = serde_json::to_value(Batch::new(Vec::new(), Vec::new())).unwrap();
        assert_eq!(empty["exposures"], serde_json::json!([]));
        assert_eq!(empty["conversions"], serde_json::json!([]));
    }
}
