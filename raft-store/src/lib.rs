//! Flagstaff's replicated store: the openraft type configuration, a RocksDB log store and the
//! flag state machine.
//!
//! Guarantees this crate keeps (see `docs/design.md`, "How they are kept"):
//! - [`LogStore::append`](openraft::storage::RaftLogStorage::append) reports an append as
//!   flushed only after a `sync=true` RocksDB write; votes are synced before `save_vote` returns.
//! - State-machine rows and `last_applied` are written in one `WriteBatch`.
//! - Applying a log entry is deterministic: no wall clock, no randomness, no hash-map order.
//!   Conditions (`If-Match`, create-only, `$ref` targets, namespace existence, idempotency keys)
//!   are decided here; a failed condition changes nothing and bumps no revision.
//! - Everything on disk is postcard behind a leading format-version byte; flag definitions travel
//!   as JSON text inside it.

pub mod backup;
pub mod codec;
pub mod command;
mod db;
pub mod definition;
pub mod experiment_data;
pub mod fault_injection;
mod log_store;
pub mod marker;
pub mod metrics;
pub mod state;
mod state_machine;
#[cfg(test)]
mod state_tests;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

pub use command::{
    Actor, Applied, ApplyError, Command, CommandResult, Condition, Envelope, IdempotencyKey,
    Request, Response,
};
pub use db::StoreError;
pub use log_store::LogStore;
pub use state::{
    AdminToken, Change, ChangeItem, ChangeKind, Definition, Item, Namespace, SdkKey, State,
    StateLimits,
};
pub use state_machine::{AppliedBatch, AppliedView, StateHandle, StateMachine};

/// A cluster member: the client (HTTP API) address and the peer (raft RPC) address.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Base URL of the client listener, e.g. `http://127.0.0.1:7701`.
    pub api_addr: String,
    /// Base URL of the peer listener, e.g. `http://127.0.0.1:7801`.
    pub peer_addr: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "api={} peer={}", self.api_addr, self.peer_addr)
    }
}

/// Node ids are plain integers, as in etcd and openraft's examples.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Flagstaff's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;

/// Opens (or creates) the RocksDB instance in `dir` and returns the log store and the state
/// machine that share it (one instance, one WAL), and the metrics both update.
pub fn open(
    dir: &Path,
    limits: StateLimits,
) -> Result<(LogStore, StateMachine, metrics::StoreMetrics), StoreError> {
    let db = Arc::new(db::open_db(dir)?);
    let metrics = metrics::StoreMetrics::new(db.clone());
    let log = LogStore::new(db.clone(), metrics.clone())?;
    let sm = StateMachine::new(db, limits, metrics.clone())?;
    Ok((log, sm, metrics))
}
