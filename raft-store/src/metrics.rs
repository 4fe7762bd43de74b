//! What the store measures for the node's `/metrics`: how long log fsyncs take, the committed
//! index, and the Raft snapshots built and installed. The node registers these with its
//! registry ([`StoreMetrics::register`]); the store only updates them.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use rocksdb::DB;

use crate::db::{CF_LOGS, CF_META, CF_SM};

/// Which side of a Raft snapshot: built here from the state, or received and installed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SnapshotPhase {
    pub phase: &'static str,
}

pub const BUILD: SnapshotPhase = SnapshotPhase { phase: "build" };
pub const INSTALL: SnapshotPhase = SnapshotPhase { phase: "install" };

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn snapshot_seconds() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The store's metrics. Clones share the same series.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Each synced RocksDB write of the log (appends, truncations, purges, votes).
    pub log_sync: Histogram,
    /// The last committed log index openraft reported.
    pub committed_index: Gauge,
    pub snapshot_duration: HistogramFamily<SnapshotPhase>,
    /// The size of the last snapshot built or installed.
    pub snapshot_size: Family<SnapshotPhase, Gauge>,
    disk: DiskUsage,
}

impl StoreMetrics {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        Self {
            // 50 µs to about 1.6 s.
            log_sync: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            committed_index: Gauge::default(),
            snapshot_duration: Family::new_with_constructor(snapshot_seconds),
            snapshot_size: Family::default(),
            disk: DiskUsage(db),
        }
    }

    /// Adds every series to `registry` (the node's, prefixed `flagstaff`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "raft_log_sync_duration",
            "Time of each synced (fsynced) write of the Raft log or vote",
            Unit::Seconds,
            self.log_sync.clone(),
        );
        registry.register(
            "raft_committed_index",
            "The last log index this node knows to be committed",
            self.committed_index.clone(),
        );
        registry.register_with_unit(
            "raft_snapshot_duration",
            "Time to build a Raft snapshot of the state, or to install one received",
            Unit::Seconds,
            self.snapshot_duration.clone(),
        );
        registry.register_with_unit(
            "raft_snapshot_size",
            "Size of the last Raft snapshot built or installed",
            Unit::Bytes,
            self.snapshot_size.clone(),
        );
        registry.register_collector(Box::new(self.disk.clone()));
    }

    pub(crate) fn snapshot_done(&self, phase: SnapshotPhase, took: Duration, bytes: usize) {
        self.snapshot_duration
            .get_or_create(&phase)
            .observe(took.as_secs_f64());
        self.snapshot_size
            .get_or_create(&phase)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// The RocksDB instance's size on disk and in memtables, read at each scrape.
#[derive(Clone)]
struct DiskUsage(Arc<DB>);

impl std::fmt::Debug for DiskUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DiskUsage").field(&self.0.path()).finish()
    }
}

impl DiskUsage {
    /// Live SST files plus memtables, over every column family.
    fn bytes(&self) -> u64 {
        [CF_LOGS, CF_META, CF_SM]
            .into_iter()
            .filter_map(|name| self.0.cf_handle(name))
            .flat_map(|cf| {
                [
                    "rocksdb.total-sst-files-size",
                    "rocksdb.cur-size-all-mem-tables",
                ]
                .map(|p| self.0.property_int_value_cf(cf, p).ok().flatten())
            })
            .map(|v| v.unwrap_or(0))
            .sum()
    }
}

impl Collector for DiskUsage {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let size = ConstGauge::new(i64::try_from(self.bytes()).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "rocksdb_size",
            "Size of the node's RocksDB instance: live SST files and memtables",
            Some(&Unit::Bytes),
            size.metric_type(),
        )?;
        size.encode(metric)
    }
}
