//! A/B test events on their way into the log: what a node gathers between two flushes.
//!
//! Batches from SDKs (`POST /v1/namespaces/{ns}/events`) and the exposures this node counts
//! itself (OFREP evaluations of experiment flags) wait here. Once per interval the flusher
//! proposes one [`Command::RecordEvents`] per namespace, and only when it is committed does a
//! sender get its answer: an acknowledged batch is durable, on a quorum. A batch keeps its
//! sender's id into the log, where a retry of it is skipped, so a retry after a lost answer
//! or a leader change never counts twice.
//!
//! Everything waiting is bounded: parts and counts per namespace per interval (over them a
//! sender gets 429 and retries), and sketches by what the namespace's experiment flags allow.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flagstaff_experiments::DistinctCount;
use flagstaff_raft_store::experiment_data::{CountDelta, EventBatch, EventPart, SketchUpdate, Sum};
use flagstaff_raft_store::{Command, Envelope};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::node::Node;

/// Batches one namespace may have waiting per interval.
pub const MAX_PENDING_PARTS: usize = 512;
/// Count rows one namespace may have waiting per interval (about 50 bytes each in the entry).
pub const MAX_PENDING_COUNTS: usize = 50_000;
/// Distinct (flag, variant, metric) sketches one namespace may have waiting per interval: at
/// most 16 KiB each, so at most 64 MiB.
pub const MAX_PENDING_SKETCHES: usize = 4_096;
/// How fresh a flag's recorded "last evaluated" time must be for a new evaluation not to be
/// written again.
pub const LAST_EVALUATED_RESOLUTION_MS: u64 = 60_000;

/// (flag, variant, metric): `metric` is `None` for exposures.
pub type ArmKey = (String, String, Option<String>);

/// What waits for one namespace's next flush.
#[derive(Default)]
struct Gathered {
    parts: Vec<EventPart>,
    /// Ids of the parts above, so a retry within one interval is merged away.
    ids: HashSet<String>,
    counts: usize,
    /// Counted by this node itself (OFREP): one part per flush.
    local: BTreeMap<ArmKey, CountDelta>,
    sketches: BTreeMap<ArmKey, DistinctCount>,
    /// Flags evaluated (by senders or this node), for their "last evaluated" time.
    evaluated: HashSet<String>,
    waiters: Vec<Waiter>,
}

impl Gathered {
    fn merge_sketch(&mut self, key: ArmKey, users: &DistinctCount) {
        if users.is_empty() {
            return;
        }
        self.sketches.entry(key).or_default().merge(users);
    }
}

/// The events waiting on this node. See the module docs.
pub struct EventIntake {
    pending: Mutex<HashMap<String, Gathered>>,
    node_id: u64,
    /// Numbers this node's own parts, with a random start so ids never repeat across restarts.
    local_seq: AtomicU64,
    run: u64,
}

/// Answers a sender once the flush that carries its batch is committed (or failed).
pub type Acknowledgement = oneshot::Receiver<Result<(), String>>;
type Waiter = oneshot::Sender<Result<(), String>>;

impl EventIntake {
    pub fn new(node_id: u64) -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
            node_id,
            local_seq: AtomicU64::new(0),
            run: rand::random(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Gathered>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one sender's batch for `ns`; 429 when the namespace already has as much waiting
    /// as one entry may carry. A retry of a batch still waiting is answered with it.
    pub fn submit(
        &self,
        ns: &str,
        part: EventPart,
        sketches: Vec<(ArmKey, DistinctCount)>,
        evaluated: Vec<String>,
    ) -> Result<Acknowledgement, ApiError> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.lock();
        let g = pending.entry(ns.to_string()).or_default();
        if let Some(id) = &part.id {
            if g.ids.contains(id) {
                g.waiters.push(tx);
                return Ok(rx);
            }
        }
        let new_sketches = sketches
            .iter()
            .filter(|(k, _)| !g.sketches.contains_key(k))
            .count();
        if g.parts.len() >= MAX_PENDING_PARTS
            || g.counts + part.counts.len() > MAX_PENDING_COUNTS
            || g.sketches.len() + new_sketches > MAX_PENDING_SKETCHES
        {
            return Err(ApiError::RateLimited {
                retry_after_secs: 1,
            });
        }
        for (key, users) in &sketches {
            g.merge_sketch(key.clone(), users);
        }
        g.evaluated.extend(evaluated);
        if let Some(id) = &part.id {
            g.ids.insert(id.clone());
        }
        g.counts += part.counts.len();
        g.parts.push(part);
        g.waiters.push(tx);
        Ok(rx)
    }

    /// Notes an evaluation this node made itself (OFREP): the flag's "last evaluated" time and,
    /// for an experiment flag, one exposure of `variant`. Never waits; an exposure is dropped
    /// (and logged) when the namespace is over its bound for this interval.
    pub fn count_evaluation(&self, ns: &str, flag: &str, exposure: Option<(&str, Option<&str>)>) {
        let mut pending = self.lock();
        let g = pending.entry(ns.to_string()).or_default();
        if !g.evaluated.contains(flag) {
            g.evaluated.insert(flag.to_string());
        }
        let Some((variant, targeting_key)) = exposure else {
            return;
        };
        let key: ArmKey = (flag.to_string(), variant.to_string(), None);
        let new_row = !g.local.contains_key(&key);
        let full = (new_row && g.counts >= MAX_PENDING_COUNTS)
            || (!g.sketches.contains_key(&key) && g.sketches.len() >= MAX_PENDING_SKETCHES);
        if full {
            tracing::debug!(ns, flag, "exposure dropped: the interval's intake is full");
            return;
        }
        if new_row {
            // One count row per (flag, variant), however many evaluations it counts.
            g.counts += 1;
        }
        if let Some(k) = targeting_key {
            g.sketches.entry(key.clone()).or_default().insert(k);
        }
        let delta = g.local.entry(key).or_insert_with(|| CountDelta {
            flag: flag.to_string(),
            variant: variant.to_string(),
            ..CountDelta::default()
        });
        delta.count += 1;
    }

    /// Takes everything waiting, one command per namespace with its waiters. A flag whose
    /// evaluation `recent(ns, flag)` says is already recorded as recent is left out, and a
    /// namespace with nothing else to record writes nothing.
    fn take(&self, recent: impl Fn(&str, &str) -> bool) -> Vec<(Command, Vec<Waiter>)> {
        let taken = std::mem::take(&mut *self.lock());
        taken
            .into_iter()
            .filter_map(|(ns, mut g)| {
                g.evaluated.retain(|flag| !recent(&ns, flag));
                if g.parts.is_empty()
                    && g.local.is_empty()
                    && g.sketches.is_empty()
                    && g.evaluated.is_empty()
                    && g.waiters.is_empty()
                {
                    return None;
                }
                if !g.local.is_empty() {
                    let seq = self.local_seq.fetch_add(1, Ordering::Relaxed);
                    g.parts.push(EventPart {
                        id: Some(format!("node-{}-{:016x}-{seq}", self.node_id, self.run)),
                        counts: std::mem::take(&mut g.local).into_values().collect(),
                    });
                }
                let sketches = g
                    .sketches
                    .into_iter()
                    .map(|((flag, variant, metric), users)| SketchUpdate {
                        flag,
                        variant,
                        metric,
                        users,
                    })
                    .collect();
                let batch = EventBatch {
                    parts: g.parts,
                    sketches,
                    evaluated: g.evaluated.into_iter().collect(),
                };
                Some((Command::RecordEvents { ns, batch }, g.waiters))
            })
            .collect()
    }
}

/// One count row for a received batch.
pub fn count_delta(
    flag: &str,
    variant: &str,
    metric: Option<&str>,
    count: u64,
    values: (u64, f64, f64),
) -> CountDelta {
    CountDelta {
        flag: flag.to_string(),
        variant: variant.to_string(),
        metric: metric.map(str::to_string),
        count,
        value_count: values.0,
        value_sum: Sum(values.1),
        value_sum_squares: Sum(values.2),
    }
}

/// Proposes what waits, every `interval`, until `stop` resolves; then flushes once more.
pub async fn run_flusher(node: Arc<Node>, interval: Duration, stop: impl Future<Output = ()>) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = ticks.tick() => flush(&node).await,
            () = &mut stop => break,
        }
    }
    flush(&node).await;
}

async fn flush(node: &Node) {
    // "Last evaluated" is kept to the minute: a flag recorded within the last one is not
    // written again, so evaluations alone cost one entry per namespace per minute at most.
    let commands = {
        let state = node.state.read();
        let now = crate::clock::wall_ms();
        node.events.take(|ns, flag| {
            state
                .experiments()
                .last_evaluated(ns, flag)
                .is_some_and(|at| now.saturating_sub(at) < LAST_EVALUATED_RESOLUTION_MS)
        })
    };
    if commands.is_empty() {
        return;
    }
    let writes = commands.into_iter().map(|(command, waiters)| async move {
        let envelope = Envelope {
            actor: "events".into(),
            // Every part carries its own id, which `apply` checks: resending is safe.
            idempotency: None,
            command,
        };
        let outcome = match node.write(vec![envelope]).await {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("the write returned no result".to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, "recording A/B test events failed; senders will retry");
        }
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
    });
    futures::future::join_all(writes).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(id: &str, rows: usize) -> EventPart {
        EventPart {
            id: Some(id.into()),
            counts: (0..rows)
                .map(|i| count_delta("f", &format!("v{i}"), None, 1, (0, 0.0, 0.0)))
                .collect(),
        }
    }

    fn sketch(n: usize) -> Vec<(ArmKey, DistinctCount)> {
        (0..n)
            .map(|i| {
                let mut s = DistinctCount::new();
                s.insert("u");
                ((format!("f{i}"), "a".into(), None), s)
            })
            .collect()
    }

    #[test]
    fn many_evaluations_of_one_flag_take_one_row_and_leave_room_for_senders() {
        let intake = EventIntake::new(1);
        for i in 0..(MAX_PENDING_COUNTS + 10) {
            intake.count_evaluation("ns", "f", Some(("a", Some(&format!("u{i}")))));
        }
        assert!(intake
            .submit("ns", part("b1", 10), Vec::new(), Vec::new())
            .is_ok());
        let taken = intake.take(|_, _| false);
        let Command::RecordEvents { batch, .. } = &taken[0].0 else {
            panic!("a RecordEvents");
        };
        let local = batch.parts.iter().find(|p| p.counts.len() == 1).unwrap();
        assert_eq!(local.counts[0].count, (MAX_PENDING_COUNTS + 10) as u64);
        assert_eq!(batch.evaluated, vec!["f".to_string()]);
    }

    #[test]
    fn waiting_sketches_parts_and_rows_are_bounded_per_namespace() {
        let intake = EventIntake::new(1);
        assert!(intake
            .submit(
                "ns",
                part("s1", 1),
                sketch(MAX_PENDING_SKETCHES),
                Vec::new()
            )
            .is_ok());
        let over = intake.submit(
            "ns",
            part("s2", 1),
            sketch(MAX_PENDING_SKETCHES + 1),
            Vec::new(),
        );
        assert!(matches!(over, Err(ApiError::RateLimited { .. })));
        // Another namespace has its own room.
        assert!(intake
            .submit("other", part("s2", 1), sketch(1), Vec::new())
            .is_ok());
        let too_many_rows = intake.submit(
            "ns",
            part("r", MAX_PENDING_COUNTS + 1),
            Vec::new(),
            Vec::new(),
        );
        assert!(matches!(too_many_rows, Err(ApiError::RateLimited { .. })));
        // A retry of a waiting batch is answered with it, not queued twice.
        assert!(intake
            .submit("ns", part("s1", 1), Vec::new(), Vec::new())
            .is_ok());
        let taken = intake.take(|_, _| false);
        let ns = taken.iter().find(|(c, _)| c.namespace() == "ns").unwrap();
        let Command::RecordEvents { batch, .. } = &ns.0 else {
            panic!("a RecordEvents");
        };
        assert_eq!(batch.parts.len(), 1);
        assert_eq!(ns.1.len(), 2, "both senders of s1 are answered");
        // Nothing waiting writes nothing; a recent "last evaluated" is not written again.
        intake.count_evaluation("ns", "f", None);
        assert!(intake.take(|_, flag| flag == "f").is_empty());
    }
}
