//! The last-known-good file: the newest accepted namespace state, kept on disk so an
//! application restarted while the cluster is unreachable starts from real data.
//!
//! Format (version 1): one ASCII header line, then the body.
//!
//! ```text
//! flagstaff-lkg 1 sha256=<64 hex digits of the body> len=<body bytes>\n
//! {"namespace":…,"cluster_id":…,"key_fingerprint":…,"revision":…,"fetched_at_unix_ms":…,
//!  "data_as_of_unix_ms":…,"flags":{…},"segments":{…}}
//! ```
//!
//! Written as temp file + fsync + rename + directory fsync, so a crash leaves either the old
//! file or the new one, never half of one. A file that fails any check (header, version,
//! length, checksum, JSON shape, namespace, SDK-key fingerprint) is refused with the reason,
//! never trusted.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

const MAGIC: &str = "flagstaff-lkg";
const VERSION: u32 = 1;
/// Files larger than this are refused unread (a flag set is kilobytes to a few megabytes).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LkgContents {
    /// Namespace the data belongs to.
    pub namespace: String,
    /// Cluster that produced it; revisions compare only within one cluster id.
    pub cluster_id: String,
    /// [`key_fingerprint`] of the SDK key that fetched it.
    pub key_fingerprint: String,
    /// Revision of the data.
    pub revision: u64,
    /// Wall-clock time the data was received (Unix milliseconds).
    pub fetched_at_unix_ms: u64,
    /// Wall-clock time up to which the data was proven complete (receipt minus the node's
    /// staleness proof), when a proof was held.
    #[serde(default)]
    pub data_as_of_unix_ms: Option<u64>,
    /// Flag key → definition.
    pub flags: BTreeMap<String, Value>,
    /// Segment key → rule.
    pub segments: BTreeMap<String, Value>,
}

/// Why a file was refused.
#[derive(Debug, thiserror::Error)]
pub enum LkgError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// It is larger than [`MAX_FILE_BYTES`].
    #[error("file is {0} bytes, more than the limit")]
    TooLarge(u64),
    /// The header is missing or malformed.
    #[error("not a flagstaff last-known-good file (bad header)")]
    BadHeader,
    /// Written by a format version this SDK does not read.
    #[error("unsupported format version {0}")]
    Version(u32),
    /// The body is shorter or longer than the header says (truncated or appended to).
    #[error("body is {found} bytes, header says {expected} (truncated?)")]
    Length {
        /// From the header.
        expected: usize,
        /// On disk.
        found: usize,
    },
    /// The body does not match its checksum.
    #[error("checksum mismatch (corrupt file)")]
    Checksum,
    /// The body is not the expected JSON.
    #[error("malformed body: {0}")]
    Body(#[source] serde_json::Error),
    /// Written for another namespace.
    #[error("file is for namespace {found:?}, not {expected:?}")]
    Namespace {
        /// This client's namespace.
        expected: String,
        /// The file's.
        found: String,
    },
    /// Written with another SDK key.
    #[error("file was written with another SDK key")]
    Key,
}

/// A short, one-way fingerprint of an SDK key (never the key itself on disk).
pub fn key_fingerprint(sdk_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"flagstaff-lkg-key\0");
    h.update(sdk_key.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// The file's bytes for `contents`.
pub fn encode(contents: &LkgContents) -> Vec<u8> {
    // Serialising maps of `Value` cannot fail.
    let body = serde_json::to_vec(contents).unwrap_or_default();
    let sum = hex::encode(Sha256::digest(&body));
    let mut out = format!("{MAGIC} {VERSION} sha256={sum} len={}\n", body.len()).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Checks and parses a file's bytes; `namespace` and `fingerprint` must match.
pub fn decode(bytes: &[u8], namespace: &str, fingerprint: &str) -> Result<LkgContents, LkgError> {
    let nl = bytes
        .iter()
        .take(256)
        .position(|b| *b == b'\n')
        .ok_or(LkgError::BadHeader)?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| LkgError::BadHeader)?;
    let body = &bytes[nl + 1..];
    let mut parts = header.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err(LkgError::BadHeader);
    }
    let version: u32 = parts
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or(LkgError::BadHeader)?;
    if version != VERSION {
        return Err(LkgError::Version(version));
    }
    let sum = parts
        .next()
        .and_then(|s| s.strip_prefix("sha256="))
        .ok_or(LkgError::BadHeader)?;
    let len: usize = parts
        .next()
        .and_then(|s| s.strip_prefix("len="))
        .and_then(|s| s.parse().ok())
        .ok_or(LkgError::BadHeader)?;
    if parts.next().is_some() {
        return Err(LkgError::BadHeader);
    }
    if body.len() != len {
        return Err(LkgError::Length {
            expected: len,
            found: body.len(),
        });
    }
    if hex::encode(Sha256::digest(body)) != sum {
        return Err(LkgError::Checksum);
    }
    let contents: LkgContents = serde_json::from_slice(body).map_err(LkgError::Body)?;
    if contents.namespace != namespace {
        return Err(LkgError::Namespace {
            expected: namespace.to_string(),
            found: contents.namespace,
        });
    }
    if contents.key_fingerprint != fingerprint {
        return Err(LkgError::Key);
    }
    Ok(contents)
}

/// Reads and checks the file at `path`; `Ok(None)` when there is none.
pub fn read(
    path: &Path,
    namespace: &str,
    fingerprint: &str,
) -> Result<Option<LkgContents>, LkgError> {
    let io_err = |source| LkgError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    if len > MAX_FILE_BYTES {
        return Err(LkgError::TooLarge(len));
    }
    let bytes = fs::read(path).map_err(io_err)?;
    decode(&bytes, namespace, fingerprint).map(Some)
}

/// Replaces the file at `path` with `bytes` atomically and durably: temp file in the same
/// directory, fsync, rename over the target, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "LKG path has no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(
        ".tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> LkgContents {
        LkgContents {
            namespace: "checkout".into(),
            cluster_id: "c1".into(),
            key_fingerprint: key_fingerprint("sdk-key"),
            revision: 42,
            fetched_at_unix_ms: 1_700_000_000_000,
            data_as_of_unix_ms: Some(1_699_999_999_000),
            flags: BTreeMap::from([(
                "f".to_string(),
                json!({"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on"}),
            )]),
            segments: BTreeMap::from([("s".to_string(), json!({"==": [1, 1]}))]),
        }
    }

    #[test]
    fn round_trip_through_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns.lkg");
        assert!(read(&path, "checkout", &key_fingerprint("sdk-key"))
            .unwrap()
            .is_none());
        write_atomic(&path, &encode(&sample())).unwrap();
        let mut second = sample();
        second.revision = 43;
        write_atomic(&path, &encode(&second)).unwrap();
        let back = read(&path, "checkout", &key_fingerprint("sdk-key"))
            .unwrap()
            .unwrap();
        assert_eq!(back, second);
        // No temp file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn every_fault_is_refused_with_its_reason() {
        let fp = key_fingerprint("sdk-key");
        let good = encode(&sample());
        assert!(decode(&good, "checkout", &fp).is_ok());

        // Any single flipped bit in the body breaks the checksum.
        let nl = good.iter().position(|b| *b == b'\n').unwrap();
        for i in (nl + 1..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            assert!(
                matches!(decode(&bad, "checkout", &fp), Err(LkgError::Checksum)),
                "flip at {i}"
            );
        }
        // Every truncation is refused.
        for cut in 0..good.len() {
            assert!(
                decode(&good[..cut], "checkout", &fp).is_err(),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            decode(&good[..good.len() - 1], "checkout", &fp),
            Err(LkgError::Length { .. })
        ));
        assert!(matches!(
            decode(b"garbage\n{}", "checkout", &fp),
            Err(LkgError::BadHeader)
        ));
        let v2 = String::from_utf8(good.clone()).unwrap().replacen(
            "flagstaff-lkg 1",
            "flagstaff-lkg 2",
            1,
        );
        assert!(matches!(
            decode(v2.as_bytes(), "checkout", &fp),
            Err(LkgError::Version(2))
        ));
        assert!(matches!(
            decode(&good, "other", &fp),
            Err(LkgError::Namespace { .. })
        ));
        assert!(matches!(
            decode(&good, "checkout", &key_fingerprint("another-key")),
            Err(LkgError::Key)
        ));
        // A valid checksum over a body of the wrong shape.
        let body = br#"{"namespace":"checkout"}"#;
        let mut odd = format!(
            "flagstaff-lkg 1 sha256={} len={}\n",
            hex::encode(Sha256::digest(body)),
            body.len()
        )
        .into_bytes();
        odd.extend_from_slice(body);
        assert!(matches!(
            decode(&odd, "checkout", &fp),
            Err(LkgError::Body(_))
        ));
    }

    #[test]
    fn the_fingerprint_does_not_contain_the_key() {
        let fp = key_fingerprint("sdk-secret-key");
        assert_eq!(fp.len(), 32);
        assert!(!fp.contains("secret"));
        assert_ne!(fp, key_fingerprint("sdk-secret-key2"));
    }
}
