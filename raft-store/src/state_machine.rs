//! The openraft state machine: applies committed entries to [`State`], persists the changed rows
//! and `last_applied` in one RocksDB batch, builds and installs snapshots.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{WriteBatch, DB};
use tokio::sync::{broadcast, watch};

use crate::codec;
use crate::db::{cf, synced, StoreError, CF_META, CF_SM};
use crate::metrics::{StoreMetrics, BUILD, INSTALL};
use crate::state::{Change, RowOp, State, StateLimits};
use crate::{
    Entry, LogId, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// Applied batches buffered for watchers before a slow one is told it lagged.
const BATCH_BUFFER: usize = 4096;

/// What has been applied so far; published after every apply and snapshot install.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedView {
    /// Index of the last applied log entry (0 before any).
    pub log_index: u64,
    /// The cluster revision after it.
    pub revision: u64,
    /// Incremented each time a snapshot replaced the state wholesale, so followers of changes
    /// (the watch hub) know revisions may have been skipped.
    pub snapshot_epoch: u64,
}

/// What one `apply` call changed, published to watchers in apply order.
#[derive(Debug, Clone, Default)]
pub struct AppliedBatch {
    /// The cluster revision after the batch (also advanced by changes outside namespaces).
    pub revision: u64,
    /// Namespace changes, in revision order.
    pub changes: Vec<Arc<Change>>,
    /// Set when a snapshot replaced the state: watchers must resynchronise from the state.
    pub reset: bool,
}

/// A read handle on the applied state, shared by the node's read paths.
///
/// Readers hold the lock only while they copy out what they need; it is never held across an
/// `.await`.
#[derive(Clone)]
pub struct StateHandle {
    state: Arc<RwLock<State>>,
    applied: watch::Receiver<AppliedView>,
    batches: broadcast::Sender<Arc<AppliedBatch>>,
}

impl StateHandle {
    /// Borrows the state for a short, synchronous read.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        // A poisoned lock means a panic mid-apply; the data is still the last consistent view
        // we had, and reading it is better than taking the node down.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest applied position.
    pub fn applied(&self) -> AppliedView {
        *self.applied.borrow()
    }

    /// A receiver that wakes on every apply.
    pub fn subscribe(&self) -> watch::Receiver<AppliedView> {
        self.applied.clone()
    }

    /// Every applied batch from now on (bounded buffer: a receiver that falls behind gets
    /// `Lagged` and must resynchronise from the state).
    pub fn subscribe_batches(&self) -> broadcast::Receiver<Arc<AppliedBatch>> {
        self.batches.subscribe()
    }
}

/// RocksDB-backed [`RaftStateMachine`].
pub struct StateMachine {
    db: Arc<DB>,
    state: Arc<RwLock<State>>,
    limits: StateLimits,
    applied: watch::Sender<AppliedView>,
    batches: broadcast::Sender<Arc<AppliedBatch>>,
    metrics: StoreMetrics,
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}
fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn view_of(state: &State, snapshot_epoch: u64) -> AppliedView {
    AppliedView {
        log_index: state.last_applied().map(|l| l.index).unwrap_or(0),
        revision: state.revision(),
        snapshot_epoch,
    }
}

impl StateMachine {
    pub(crate) fn new(
        db: Arc<DB>,
        limits: StateLimits,
        metrics: StoreMetrics,
    ) -> Result<Self, StoreError> {
        let state = {
            let sm = cf(&db, CF_SM)?;
            let mut rows = Vec::new();
            for item in db.iterator_cf(sm, rocksdb::IteratorMode::Start) {
                rows.push(item?);
            }
            State::from_rows(rows.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))?
        };
        let (applied, _) = watch::channel(view_of(&state, 0));
        let (batches, _) = broadcast::channel(BATCH_BUFFER);
        Ok(Self {
            db,
            state: Arc::new(RwLock::new(state)),
            limits,
            applied,
            batches,
            metrics,
        })
    }

    /// A read handle for the node.
    pub fn handle(&self) -> StateHandle {
        StateHandle {
            state: self.state.clone(),
            applied: self.applied.subscribe(),
            batches: self.batches.clone(),
        }
    }

    fn write_rows(
        &self,
        rows: Vec<RowOp>,
        clear_first: bool,
        sync: bool,
    ) -> Result<(), StoreError> {
        let sm = cf(&self.db, CF_SM)?;
        let mut batch = WriteBatch::default();
        if clear_first {
            batch.delete_range_cf(sm, [0u8].as_slice(), [0xffu8; 16].as_slice());
        }
        for (key, value) in rows {
            match value {
                Some(v) => batch.put_cf(sm, key, v),
                None => batch.delete_cf(sm, key),
            }
        }
        if let Some(e) = crate::fault_injection::storage_fault(self.db.path()) {
            return Err(StoreError::Io(e));
        }
        if sync {
            self.db.write_opt(batch, &synced())?;
        } else {
            // Rides on the next synced log append; a crash before that re-applies from the log.
            self.db.write(batch)?;
        }
        Ok(())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        Ok((state.last_applied(), state.membership().clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut entries = entries.into_iter().peekable();
        // Deliberate slowdown, test builds only (see fault_injection.rs).
        let delay = entries.peek().and_then(|e| match &e.payload {
            EntryPayload::Normal(req) => {
                crate::fault_injection::apply_delay(e.log_id.leader_id.node_id, req.proposed_at_ms)
            }
            _ => None,
        });
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut rows = Vec::new();
        let mut replies = Vec::new();
        let view = {
            let mut state = self.write_state();
            for entry in entries {
                let reply = match &entry.payload {
                    EntryPayload::Blank => Response::default(),
                    EntryPayload::Normal(req) => Response {
                        results: state.apply_request(req, self.limits, &mut rows),
                    },
                    EntryPayload::Membership(m) => {
                        state.set_membership(StoredMembership::new(Some(entry.log_id), m.clone()));
                        Response::default()
                    }
                };
                state.set_applied(entry.log_id, &mut rows);
                replies.push(reply);
            }
            let changes = state.take_pending();
            (
                view_of(&state, self.applied.borrow().snapshot_epoch),
                changes,
            )
        };
        let (view, changes) = view;
        self.write_rows(rows, false, false).map_err(sm_write_err)?;
        self.applied.send_replace(view);
        // No receivers is fine: nobody is watching.
        let _ = self.batches.send(Arc::new(AppliedBatch {
            revision: view.revision,
            changes,
            reset: false,
        }));
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            state: self.state.clone(),
            metrics: self.metrics.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let data = snapshot.into_inner();
        let new_state = State::from_snapshot(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        let mut rows = new_state.all_rows();
        let blob = codec::encode(&(meta, &data)).map_err(sm_write_err)?;
        self.write_rows(std::mem::take(&mut rows), true, true)
            .map_err(sm_write_err)?;
        let meta_cf = cf(&self.db, CF_META).map_err(sm_write_err)?;
        self.db
            .put_cf_opt(meta_cf, KEY_SNAPSHOT, blob, &synced())
            .map_err(sm_write_err)?;
        let view = {
            let mut state = self.write_state();
            *state = new_state;
            view_of(&state, self.applied.borrow().snapshot_epoch + 1)
        };
        tracing::info!(
            log_index = view.log_index,
            revision = view.revision,
            bytes = data.len(),
            "installed snapshot"
        );
        self.metrics
            .snapshot_done(INSTALL, started.elapsed(), data.len());
        self.applied.send_replace(view);
        let reset = AppliedBatch {
            revision: view.revision,
            changes: Vec::new(),
            reset: true,
        };
        let _ = self.batches.send(Arc::new(reset));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let meta_cf = cf(&self.db, CF_META).map_err(sm_read_err)?;
        let Some(blob) = self.db.get_cf(meta_cf, KEY_SNAPSHOT).map_err(sm_read_err)? else {
            return Ok(None);
        };
        let (meta, data): (SnapshotMeta, Vec<u8>) = codec::decode(&blob).map_err(sm_read_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds a snapshot from a consistent view of the state (taken under one read lock).
pub struct SnapshotBuilder {
    db: Arc<DB>,
    state: Arc<RwLock<State>>,
    metrics: StoreMetrics,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        let (data, meta) = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            let data = state.to_snapshot().map_err(sm_read_err)?;
            let last = state.last_applied();
            let snapshot_id = match last {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, state.revision()),
                None => format!("0-0-{}", state.revision()),
            };
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: state.membership().clone(),
                snapshot_id,
            };
            (data, meta)
        };
        let blob = codec::encode(&(&meta, &data)).map_err(sm_write_err)?;
        let meta_cf = cf(&self.db, CF_META).map_err(sm_write_err)?;
        self.db
            .put_cf(meta_cf, KEY_SNAPSHOT, blob)
            .map_err(sm_write_err)?;
        self.metrics
            .snapshot_done(BUILD, started.elapsed(), data.len());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
