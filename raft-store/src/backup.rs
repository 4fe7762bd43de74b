//! Backups: the whole applied state at one revision, in a file that says which cluster it came
//! from and carries a checksum, and seeding the data dir of a new cluster's node from one.
//!
//! File layout: the 8 bytes `FSBACKUP`, then [`codec`] of [`Backup`], then the SHA-256 of all
//! that precedes it. The state inside is the Raft snapshot payload (`codec` of [`State`]).
//!
//! A restored node starts as a member of no cluster: its state holds every namespace, flag,
//! segment, SDK key, admin token and the retained history at the backup's revision, but no
//! membership and no applied log position. `cluster init` then makes the seeded nodes one new
//! cluster, whose first log entries apply on top of that state, so revisions continue from the
//! backup's.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{self, CodecError};
use crate::db::{cf, synced, StoreError, CF_LOGS, CF_META, CF_SM};
use crate::state::State;

const MAGIC: &[u8; 8] = b"FSBACKUP";

/// What a backup file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// The cluster the state was read from.
    pub cluster_id: String,
    /// The cluster revision of the state.
    pub revision: u64,
    /// When it was taken (the serving node's wall clock, ms since the Unix epoch).
    pub taken_at_ms: u64,
    /// `codec` of [`State`].
    state: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a Flagstaff backup (no FSBACKUP header)")]
    NotABackup,
    #[error("the backup is damaged: its checksum does not match its contents")]
    Checksum,
    #[error("the backup does not decode: {0}")]
    Codec(#[from] CodecError),
    #[error("{0} is not a pristine data dir: a backup seeds only a new node's empty directory")]
    NotPristine(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Backup {
    /// A backup of `state`, read from cluster `cluster_id`.
    pub fn of(state: &State, cluster_id: &str, taken_at_ms: u64) -> Result<Self, CodecError> {
        Ok(Self {
            cluster_id: cluster_id.to_string(),
            revision: state.revision(),
            taken_at_ms,
            state: state.to_snapshot()?,
        })
    }

    /// The file's bytes: header, contents, checksum.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = MAGIC.to_vec();
        out.extend(codec::encode(self)?);
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        Ok(out)
    }

    /// Reads a backup file's bytes, checking its header and checksum.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BackupError> {
        if bytes.len() < MAGIC.len() + 32 || !bytes.starts_with(MAGIC) {
            return Err(BackupError::NotABackup);
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(BackupError::Checksum);
        }
        Ok(codec::decode(&body[MAGIC.len()..])?)
    }

    /// The state it holds.
    pub fn state(&self) -> Result<State, CodecError> {
        State::from_snapshot(&self.state)
    }
}

/// The state a stopped node applied, read from its RocksDB directory `db_dir` (a running
/// node holds the database's lock, and this fails).
pub fn read_applied(db_dir: &Path) -> Result<State, BackupError> {
    if !db_dir.is_dir() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} holds no database", db_dir.display()),
        ))
        .into());
    }
    let db = crate::db::open_db(db_dir)?;
    let sm = cf(&db, CF_SM)?;
    let mut rows = Vec::new();
    for item in db.iterator_cf(sm, rocksdb::IteratorMode::Start) {
        rows.push(item.map_err(StoreError::from)?);
    }
    Ok(State::from_rows(
        rows.iter().map(|(k, v)| (k.as_ref(), v.as_ref())),
    )?)
}

/// Writes the backup's state into the RocksDB directory `db_dir`, which must not exist yet or
/// be empty, with no membership and no applied log position (see the module docs). Returns the
/// state written.
pub fn seed(db_dir: &Path, backup: &Backup) -> Result<State, BackupError> {
    let is_empty = match std::fs::read_dir(db_dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(StoreError::Io(e).into()),
    };
    if !is_empty {
        return Err(BackupError::NotPristine(db_dir.display().to_string()));
    }
    let mut state = backup.state()?;
    state.forget_cluster();
    let db = crate::db::open_db(db_dir)?;
    // Opened fresh: nothing may be in it (a race with a node starting on the same dir).
    for name in [CF_LOGS, CF_META, CF_SM] {
        let handle = cf(&db, name)?;
        if db
            .iterator_cf(handle, rocksdb::IteratorMode::Start)
            .next()
            .is_some()
        {
            return Err(BackupError::NotPristine(db_dir.display().to_string()));
        }
    }
    let sm = cf(&db, CF_SM)?;
    let mut batch = rocksdb::WriteBatch::default();
    for (key, value) in state.all_rows() {
        if let Some(v) = value {
            batch.put_cf(sm, key, v);
        }
    }
    db.write_opt(batch, &synced()).map_err(StoreError::from)?;
    Ok(state)
}
