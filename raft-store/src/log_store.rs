//! The Raft log and vote on RocksDB.
//!
//! Durability rule: an append is reported flushed (`log_io_completed`) only after its
//! `sync=true` write returned, and `save_vote` returns only after its synced write. Writes run on
//! the blocking pool, one at a time (openraft serialises log IO calls), so the async runtime is
//! never stalled by an fsync.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use crate::codec;
use crate::db::{cf, synced, StoreError, CF_LOGS, CF_META};
use crate::metrics::StoreMetrics;
use crate::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// RocksDB-backed [`RaftLogStorage`]. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// What the state machine has applied or installed (see `purge`).
    applied: Option<tokio::sync::watch::Receiver<crate::state_machine::AppliedView>>,
    metrics: StoreMetrics,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}
fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>, metrics: StoreMetrics) -> Result<Self, StoreError> {
        cf(&db, CF_LOGS)?;
        cf(&db, CF_META)?;
        Ok(Self {
            db,
            applied: None,
            metrics,
        })
    }

    /// Lets `purge` wait for the state machine (see there). A node calls it with its state
    /// machine's applied position; openraft's conformance suite purges entries that no state
    /// machine ever applied, so `open` does not.
    pub fn follow(
        &mut self,
        applied: tokio::sync::watch::Receiver<crate::state_machine::AppliedView>,
    ) {
        self.applied = Some(applied);
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let cf = cf(&self.db, CF_META)?;
        match self.db.get_cf(cf, key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        }
    }

    fn last_entry(&self) -> Result<Option<LogId>, StoreError> {
        let cf = cf(&self.db, CF_LOGS)?;
        match self.db.iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item?;
                let entry: Entry = codec::decode(&value)?;
                Ok(Some(entry.log_id))
            }
        }
    }

    /// Runs a RocksDB batch on the blocking pool with `sync=true`.
    async fn write_synced(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if let Some(e) = crate::fault_injection::storage_fault(self.db.path()) {
            return Err(write_err(e));
        }
        let (db, took) = (self.db.clone(), self.metrics.log_sync.clone());
        tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            let written = db.write_opt(batch, &synced());
            took.observe(t.elapsed().as_secs_f64());
            written
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = cf(&self.db, CF_LOGS).map_err(read_err)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            cf,
            IteratorMode::From(&index_key(start), Direction::Forward),
        ) {
            let (key, value) = item.map_err(read_err)?;
            let index = u64::from_be_bytes(key.as_ref().try_into().unwrap_or([0xff; 8]));
            if !range.contains(&index) {
                break;
            }
            out.push(codec::decode(&value).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_LAST_PURGED).map_err(read_err)?;
        let last_log_id = self.last_entry().map_err(read_err)?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let cf = cf(&self.db, CF_META).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, KEY_VOTE, codec::encode(vote).map_err(write_err)?);
        self.write_synced(batch)
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let index = committed.map_or(0, |c| c.index);
        self.metrics
            .committed_index
            .set(i64::try_from(index).unwrap_or(i64::MAX));
        // Not synced on its own: it rides on the next synced append. After a crash the node
        // re-applies at most up to what it had durably recorded, which is always safe.
        let cf = cf(&self.db, CF_META).map_err(write_err)?;
        self.db
            .put_cf(
                cf,
                KEY_COMMITTED,
                codec::encode(&committed).map_err(write_err)?,
            )
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_meta::<Option<LogId>>(KEY_COMMITTED)
            .map_err(read_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = cf(&self.db, CF_LOGS).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(
                cf,
                index_key(entry.log_id.index),
                codec::encode(&entry).map_err(write_err)?,
            );
        }
        let result = self.write_synced(batch).await;
        // Only now is the append durable; tell openraft either way.
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = cf(&self.db, CF_LOGS).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(cf, index_key(u64::MAX));
        self.write_synced(batch).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // openraft 0.9 asks for the purge up to a snapshot it is installing at the same time as
        // it asks the state machine to install it. Purging first would leave, after a crash in
        // between, a log purged past the stored state (and a node that cannot start). So the
        // purge waits until the state machine holds `log_id` (installs are synced before they
        // are published; after a snapshot build it already does), for at most 60 s.
        if let Some(applied) = &self.applied {
            let mut applied = applied.clone();
            let covered = applied.wait_for(|v| v.log_index >= log_id.index);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), covered).await;
        }
        let logs = cf(&self.db, CF_LOGS).map_err(write_err)?;
        let meta = cf(&self.db, CF_META).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            meta,
            KEY_LAST_PURGED,
            codec::encode(&log_id).map_err(write_err)?,
        );
        batch.delete_range_cf(
            logs,
            index_key(0),
            index_key(log_id.index.saturating_add(1)),
        );
        self.write_synced(batch).await
    }
}
