//! The identity marker every data directory carries: which cluster and which node id it belongs
//! to. A node refuses to open a directory marked for another cluster or node, and an empty
//! directory is never silently taken as a member of a cluster that already exists.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the marker inside a data directory.
pub const MARKER_FILE: &str = "flagstaff.id";
/// Sub-directory holding RocksDB.
pub const DB_DIR: &str = "db";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub format: u32,
    pub cluster_id: String,
    pub node_id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid marker: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{dir}: belongs to cluster {found_cluster} as node {found_node}, not cluster {want_cluster} as node {want_node}"
    )]
    Mismatch {
        dir: PathBuf,
        found_cluster: String,
        found_node: u64,
        want_cluster: String,
        want_node: u64,
    },
    #[error(
        "{dir}: holds Raft data but no identity marker; refusing to guess which cluster it belongs to"
    )]
    Unmarked { dir: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MarkerError + '_ {
    move |source| MarkerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the marker of `dir`, if any.
pub fn read(dir: &Path) -> Result<Option<Marker>, MarkerError> {
    let path = dir.join(MARKER_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| MarkerError::Parse { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join(DB_DIR).exists() {
                Err(MarkerError::Unmarked {
                    dir: dir.to_path_buf(),
                })
            } else {
                Ok(None)
            }
        }
        Err(e) => Err(MarkerError::Io { path, source: e }),
    }
}

/// True when `dir` has never been used by a node (no marker, no database).
pub fn is_pristine(dir: &Path) -> bool {
    !dir.join(MARKER_FILE).exists() && !dir.join(DB_DIR).exists()
}

/// Writes the marker durably: temp file, fsync, rename, directory fsync.
pub fn write(dir: &Path, marker: &Marker) -> Result<(), MarkerError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
    let path = dir.join(MARKER_FILE);
    let body = serde_json::to_vec_pretty(marker).map_err(|source| MarkerError::Parse {
        path: path.clone(),
        source,
    })?;
    let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&body).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// Marks `dir` as node `node_id` of cluster `cluster_id`, whatever it holds (a pristine dir, or
/// one a backup was just restored into).
pub fn mark(dir: &Path, node_id: u64, cluster_id: &str) -> Result<(), MarkerError> {
    write(
        dir,
        &Marker {
            format: 1,
            cluster_id: cluster_id.to_string(),
            node_id,
        },
    )
}

/// Opens the identity of `dir` for node `node_id`:
/// - a marked directory must match `node_id` (and `cluster_id` when given);
/// - a pristine directory is marked with `cluster_id`, which must then be given.
///
/// Returns the cluster id, or `Ok(None)` when the directory is pristine and no cluster id was
/// given (the caller decides how to refuse).
pub fn claim(
    dir: &Path,
    node_id: u64,
    cluster_id: Option<&str>,
) -> Result<Option<String>, MarkerError> {
    match read(dir)? {
        Some(m) => {
            if m.node_id != node_id || cluster_id.is_some_and(|c| c != m.cluster_id) {
                return Err(MarkerError::Mismatch {
                    dir: dir.to_path_buf(),
                    found_cluster: m.cluster_id,
                    found_node: m.node_id,
                    want_cluster: cluster_id.unwrap_or("(any)").to_string(),
                    want_node: node_id,
                });
            }
            Ok(Some(m.cluster_id))
        }
        None => match cluster_id {
            None => Ok(None),
            Some(c) => {
                mark(dir, node_id, c)?;
                Ok(Some(c.to_string()))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_marks_pristine_and_refuses_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        assert!(is_pristine(dir.path()));
        assert_eq!(claim(dir.path(), 1, None).unwrap(), None);
        assert_eq!(
            claim(dir.path(), 1, Some("c1")).unwrap().as_deref(),
            Some("c1")
        );
        assert!(!is_pristine(dir.path()));
        assert_eq!(claim(dir.path(), 1, None).unwrap().as_deref(), Some("c1"));
        assert!(matches!(
            claim(dir.path(), 2, None),
            Err(MarkerError::Mismatch { .. })
        ));
        assert!(matches!(
            claim(dir.path(), 1, Some("c2")),
            Err(MarkerError::Mismatch { .. })
        ));
    }

    #[test]
    fn database_without_marker_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(DB_DIR)).unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(MarkerError::Unmarked { .. })
        ));
    }
}
