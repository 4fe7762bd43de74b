//! The one RocksDB instance per node: column families for the log, its metadata and the state
//! machine rows, sharing one write-ahead log.

use std::path::Path;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteOptions, DB};

use crate::codec::CodecError;

pub(crate) const CF_LOGS: &str = "logs";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_SM: &str = "sm";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("decoding stored data: {0}")]
    Codec(#[from] CodecError),
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    #[error("{0}")]
    Io(std::io::Error),
}

pub(crate) fn open_db(dir: &Path) -> Result<DB, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs =
        [CF_LOGS, CF_META, CF_SM].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    Ok(DB::open_cf_descriptors(&opts, dir, cfs)?)
}

pub(crate) fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a ColumnFamily, StoreError> {
    db.cf_handle(name)
        .ok_or(StoreError::MissingColumnFamily(name))
}

/// Write options that return only after the WAL is fsynced.
pub(crate) fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}
