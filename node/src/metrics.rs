//! The node's Prometheus metrics (`GET /metrics`, in the OpenMetrics text format): what the
//! write, read and watch paths count and time, the Raft core's gauges read at each scrape, and
//! the store's own series ([`flagstaff_raft_store::metrics`]). Every name starts with
//! `flagstaff_`; counters end in `_total`, durations are `_seconds`, sizes `_bytes`.
//!
//! Cardinality: every label has a fixed set of values except the evaluation counter's
//! namespace, flag and variant, which stop growing at `--metrics-max-evaluation-series`
//! series; evaluations beyond go to one `_other` series.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flagstaff_raft_store::Raft;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::bounded_read::Proofs;

/// How a write through [`crate::Node::write`] ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteOutcome {
    /// `committed` (applied, whatever each command's own result), `no_leader` or
    /// `outcome_unknown`.
    pub outcome: &'static str,
}

/// How an attempt to reload the TLS certificates ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadOutcome {
    /// `reloaded` or `failed` (the certificates in use were kept).
    pub outcome: &'static str,
}

/// The consistency a read asked for.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadConsistency {
    /// `linearizable` or `bounded`.
    pub consistency: &'static str,
}

/// An HTTP status code.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    pub code: u16,
}

/// A gRPC status code, by its name (`FailedPrecondition`), as grpc-prometheus labels it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcCode {
    pub grpc_code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Evaluation {
    pub namespace: String,
    pub flag: String,
    /// Empty when the flag had no value for the context or failed.
    pub variant: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_seconds() -> Histogram {
    // 100 µs to about 6.5 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

/// Everything the request paths update. Clones share the same series.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub leader_changes: Counter,
    pub proposal_batch: Histogram,
    pub writes: HistogramFamily<WriteOutcome>,
    pub read_barrier: HistogramFamily<ReadConsistency>,
    pub stale_replica: Counter,
    pub watch_streams: Gauge,
    pub events_sent: Counter,
    pub slow_subscribers: Counter,
    pub ofrep_requests: Family<Code, Counter>,
    pub snapshot_requests: Family<Code, Counter>,
    pub tls_reloads: Family<ReloadOutcome, Counter>,
    pub sync_streams: Gauge,
    pub sync_messages: Counter,
    pub sync_refusals: Family<GrpcCode, Counter>,
    evaluations: Family<Evaluation, Counter>,
    /// Series created in `evaluations` (besides `_other`), under the lock that creates them.
    evaluation_series: Arc<Mutex<usize>>,
    max_evaluation_series: usize,
}

impl Metrics {
    pub fn new(max_evaluation_series: usize) -> Self {
        Self {
            leader_changes: Counter::default(),
            // 1 to 1,024 commands per log entry (the proposer's largest batch).
            proposal_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            writes: Family::new_with_constructor(request_seconds),
            read_barrier: Family::new_with_constructor(request_seconds),
            stale_replica: Counter::default(),
            watch_streams: Gauge::default(),
            events_sent: Counter::default(),
            slow_subscribers: Counter::default(),
            ofrep_requests: Family::default(),
            snapshot_requests: Family::default(),
            tls_reloads: Family::default(),
            sync_streams: Gauge::default(),
            sync_messages: Counter::default(),
            sync_refusals: Family::default(),
            evaluations: Family::default(),
            evaluation_series: Arc::default(),
            max_evaluation_series,
        }
    }

    /// Counts an answer by its status in `family` (OFREP or snapshot requests).
    pub fn answered(family: &Family<Code, Counter>, status: u16) {
        family.get_or_create(&Code { code: status }).inc();
    }

    /// A flagd sync request refused, or a stream ended by this node, with `code`.
    pub fn sync_refused(&self, code: tonic::Code) {
        let grpc_code = format!("{code:?}");
        self.sync_refusals
            .get_or_create(&GrpcCode { grpc_code })
            .inc();
    }

    pub fn write_done(&self, outcome: &'static str, took: Duration) {
        self.writes
            .get_or_create(&WriteOutcome { outcome })
            .observe(took.as_secs_f64());
    }

    pub fn read_barrier_done(&self, consistency: &'static str, took: Duration) {
        self.read_barrier
            .get_or_create(&ReadConsistency { consistency })
            .observe(took.as_secs_f64());
    }

    /// Counts one OFREP evaluation of `flag` in `namespace` that gave `variant`. Once the
    /// family holds `max_evaluation_series` series, new combinations count under `_other`.
    pub fn evaluated(&self, namespace: &str, flag: &str, variant: Option<&str>) {
        if self.max_evaluation_series == 0 {
            return;
        }
        let labels = Evaluation {
            namespace: namespace.to_string(),
            flag: flag.to_string(),
            variant: variant.unwrap_or_default().to_string(),
        };
        if let Some(c) = self.evaluations.get(&labels) {
            c.inc();
            return;
        }
        let mut series = self
            .evaluation_series
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let labels = if self.evaluations.get(&labels).is_some() {
            labels
        } else if *series < self.max_evaluation_series {
            *series += 1;
            labels
        } else {
            Evaluation {
                namespace: "_other".into(),
                flag: "_other".into(),
                variant: "_other".into(),
            }
        };
        self.evaluations.get_or_create(&labels).inc();
    }

    /// A registry with every series of the node: these, the store's and the Raft gauges.
    pub fn registry(
        &self,
        store: &flagstaff_raft_store::metrics::StoreMetrics,
        raft: RaftGauges,
    ) -> Registry {
        let mut r = Registry::with_prefix("flagstaff");
        r.register(
            "raft_leader_changes",
            "Times the leader this node knows of changed",
            self.leader_changes.clone(),
        );
        r.register(
            "raft_proposal_batch_commands",
            "Commands per Raft log entry proposed by this node",
            self.proposal_batch.clone(),
        );
        r.register_with_unit(
            "write_duration",
            "Writes through this node, from the request to its outcome",
            Unit::Seconds,
            self.writes.clone(),
        );
        r.register_with_unit(
            "read_barrier_duration",
            "The wait before a read may be answered: a quorum read index (linearizable) or a staleness proof (bounded)",
            Unit::Seconds,
            self.read_barrier.clone(),
        );
        r.register(
            "stale_replica_answers",
            "Reads refused with STALE_REPLICA (no proof of freshness in time, or min_revision not reached)",
            self.stale_replica.clone(),
        );
        r.register(
            "tls_reloads",
            "Reloads of the TLS certificates (SIGHUP or a changed file), by outcome",
            self.tls_reloads.clone(),
        );
        r.register(
            "watch_streams",
            "Watch streams open on this node",
            self.watch_streams.clone(),
        );
        r.register(
            "watch_events_sent",
            "Events (snapshots, changes, heartbeats) queued to watch streams",
            self.events_sent.clone(),
        );
        r.register(
            "watch_slow_subscribers_dropped",
            "Watch streams closed because the client did not take events in time or fell behind",
            self.slow_subscribers.clone(),
        );
        r.register(
            "ofrep_requests",
            "OFREP evaluation requests, by HTTP status",
            self.ofrep_requests.clone(),
        );
        r.register(
            "snapshot_requests",
            "SDK namespace snapshot requests, by HTTP status",
            self.snapshot_requests.clone(),
        );
        r.register(
            "sync_streams",
            "flagd sync streams (SyncFlags) open on this node",
            self.sync_streams.clone(),
        );
        r.register(
            "sync_messages",
            "flagd documents sent on sync streams",
            self.sync_messages.clone(),
        );
        r.register(
            "sync_refusals",
            "flagd sync requests refused and streams ended by this node, by gRPC status \
             (FailedPrecondition: the provider would split users otherwise)",
            self.sync_refusals.clone(),
        );
        r.register(
            "evaluations",
            "OFREP evaluations by namespace, flag and variant (series capped; the rest under _other)",
            self.evaluations.clone(),
        );
        store.register(&mut r);
        r.register_collector(Box::new(raft));
        r
    }
}

/// One open stream counted in a gauge (`flagstaff_watch_streams`, `flagstaff_sync_streams`),
/// for as long as it lives.
pub struct Open(Gauge);

impl Open {
    pub fn new(streams: &Gauge) -> Self {
        streams.inc();
        Self(streams.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The Raft core's state and this node's staleness proof, read at each scrape.
pub struct RaftGauges {
    pub raft: Raft,
    pub node_id: u64,
    pub proofs: Arc<Proofs>,
}

impl std::fmt::Debug for RaftGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftGauges")
            .field("node_id", &self.node_id)
            .finish()
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl Into<f64>,
) -> std::fmt::Result {
    let g = ConstGauge::new(value.into());
    let m = encoder.encode_descriptor(name, help, unit, g.metric_type())?;
    g.encode(m)
}

impl Collector for RaftGauges {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let m = self.raft.metrics().borrow().clone();
        let index = |i: Option<u64>| i.unwrap_or(0) as f64;
        gauge(
            &mut e,
            "raft_term",
            "The current Raft term",
            None,
            m.current_term as f64,
        )?;
        let leads = m.current_leader == Some(self.node_id);
        gauge(
            &mut e,
            "raft_is_leader",
            "1 when this node is the leader",
            None,
            u8::from(leads),
        )?;
        gauge(
            &mut e,
            "raft_last_log_index",
            "The last index in this node's Raft log",
            None,
            index(m.last_log_index),
        )?;
        gauge(
            &mut e,
            "raft_applied_index",
            "The last log index applied to this node's state",
            None,
            index(m.last_applied.map(|l| l.index)),
        )?;
        if let Some(ms) = self.proofs.staleness_ms() {
            gauge(
                &mut e,
                "staleness_proof_age",
                "Age of this node's latest proof of freshness (how stale a bounded read may be)",
                Some(&Unit::Seconds),
                ms as f64 / 1000.0,
            )?;
        }
        Ok(())
    }
}

/// Counts leader changes as this node sees them, until Raft shuts down.
pub async fn count_leader_changes(raft: Raft, changes: Counter) {
    let mut rx = raft.metrics();
    let mut leader = rx.borrow_and_update().current_leader;
    while rx.changed().await.is_ok() {
        let now = rx.borrow_and_update().current_leader;
        if now.is_some() && now != leader {
            changes.inc();
        }
        if now.is_some() {
            leader = now;
        }
    }
}
