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
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

const MAGIC: &str = "flagstaff-lkg";
const VERSION: u32 = 1;
/// The largest file [`read`] accepts: [`crate::Limits::max_lkg_file_bytes`] of the default
/// limits (a flag set is kilobytes to a few megabytes). The client reads with its configured
/// limits ([`read_with_limit`]).
pub const MAX_FILE_BYTES: u64 = (64 << 20) + (1 << 20);

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
    /// It is larger than the limit (bytes); reading stopped at the first byte past it.
    #[error("file is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// It is not a regular file (a FIFO or a device is never read: it could block or never end).
    #[error("{0} is not a regular file")]
    NotRegular(PathBuf),
    /// It could not be encoded (a definition's text is corrupt, or it would exceed the limit).
    #[error("cannot encode: {0}")]
    Encode(String),
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

/// The file's bytes for `contents`. Serialising maps of `Value` does not fail; were it to,
/// the error is returned rather than a file with an empty body.
pub fn encode(contents: &LkgContents) -> Result<Vec<u8>, LkgError> {
    let body = serde_json::to_vec(contents).map_err(|e| LkgError::Encode(e.to_string()))?;
    let sum = hex::encode(Sha256::digest(&body));
    let mut out = format!("{MAGIC} {VERSION} sha256={sum} len={}\n", body.len()).into_bytes();
    out.extend_from_slice(&body);
    Ok(out)
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

/// Why [`read_capped`] read nothing usable.
#[derive(Debug)]
pub(crate) enum CappedError {
    Io(io::Error),
    /// Not a regular file.
    NotRegular,
    /// More than the limit (bytes).
    TooLarge(u64),
}

/// Reads at most `limit` bytes from `r`, failing at the first byte past it: the size is found
/// by reading, never asked first, so a file that grows meanwhile (or lies about its size, as
/// `/proc` files do) is still bounded.
pub(crate) fn read_to_limit(r: impl Read, limit: u64) -> Result<Vec<u8>, CappedError> {
    let mut bytes = Vec::new();
    r.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(CappedError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(CappedError::TooLarge(limit));
    }
    Ok(bytes)
}

/// Opens `path` for reading without blocking (a FIFO would block `open` until a writer came)
/// and reads it to at most `limit` bytes; anything but a regular file is refused.
pub(crate) fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, CappedError> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(CappedError::Io)?;
    if !file.metadata().map_err(CappedError::Io)?.is_file() {
        return Err(CappedError::NotRegular);
    }
    read_to_limit(file, limit)
}

/// Reads and checks the file at `path` with the default limit ([`MAX_FILE_BYTES`]);
/// `Ok(None)` when there is none.
pub fn read(
    path: &Path,
    namespace: &str,
    fingerprint: &str,
) -> Result<Option<LkgContents>, LkgError> {
    read_with_limit(path, namespace, fingerprint, MAX_FILE_BYTES)
}

/// Reads and checks the file at `path`, refusing it past `max_bytes` (read up to one byte
/// past the limit, never further); `Ok(None)` when there is none.
pub fn read_with_limit(
    path: &Path,
    namespace: &str,
    fingerprint: &str,
    max_bytes: u64,
) -> Result<Option<LkgContents>, LkgError> {
    let bytes = match read_capped(path, max_bytes) {
        Ok(b) => b,
        Err(CappedError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(CappedError::Io(source)) => {
            return Err(LkgError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(CappedError::NotRegular) => return Err(LkgError::NotRegular(path.to_path_buf())),
        Err(CappedError::TooLarge(limit)) => return Err(LkgError::TooLarge(limit)),
    };
    decode(&bytes, namespace, fingerprint).map(Some)
}

/// Replaces the file at `path` with `bytes` atomically and durably: temp file in the same
/// directory, fsync, rename over the target, fsync of the directory. On Unix the temp file is
/// created with mode 0600 (and never over an existing file), so the data is readable by its
/// owner only from the first byte, and the renamed file keeps that mode.
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
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
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
        write_atomic(&path, &encode(&sample()).unwrap()).unwrap();
        let mut second = sample();
        second.revision = 43;
        write_atomic(&path, &encode(&second).unwrap()).unwrap();
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
        let good = encode(&sample()).unwrap();
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

    /// A reader that never ends, counting what was taken from it (it fails past 64 MiB, so
    /// that a reader ignoring the limit fails the test instead of exhausting the memory).
    struct Endless<'a>(&'a mut u64);
    impl Read for Endless<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if *self.0 > 64 << 20 {
                return Err(io::Error::other("read 64 MiB from an endless reader"));
            }
            buf.fill(b'x');
            *self.0 += buf.len() as u64;
            Ok(buf.len())
        }
    }

    #[test]
    fn reading_stops_one_byte_past_the_limit() {
        let mut taken = 0;
        assert!(matches!(
            read_to_limit(Endless(&mut taken), 10_000),
            Err(CappedError::TooLarge(10_000))
        ));
        assert_eq!(taken, 10_001, "read exactly one byte past the limit");
        assert_eq!(read_to_limit(&b"12345"[..], 5).unwrap(), b"12345");
        assert!(matches!(
            read_to_limit(&b"123456"[..], 5),
            Err(CappedError::TooLarge(5))
        ));
    }

    #[test]
    fn an_oversized_file_is_refused_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns.lkg");
        // A valid file, then one 1 GiB long (sparse: reading it whole would take a thousand
        // times the limit in memory, and time).
        write_atomic(&path, &encode(&sample()).unwrap()).unwrap();
        let fp = key_fingerprint("sdk-key");
        assert!(read_with_limit(&path, "checkout", &fp, 1 << 20)
            .unwrap()
            .is_some());
        let len = fs::metadata(&path).unwrap().len();
        assert!(matches!(
            read_with_limit(&path, "checkout", &fp, len - 1),
            Err(LkgError::TooLarge(_))
        ));
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            read_with_limit(&path, "checkout", &fp, 1 << 20),
            Err(LkgError::TooLarge(l)) if l == 1 << 20
        ));
        assert!(matches!(
            read(&path, "checkout", &fp),
            Err(LkgError::TooLarge(MAX_FILE_BYTES))
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[cfg(unix)]
    #[test]
    fn devices_and_fifos_are_refused_without_blocking() {
        let fp = key_fingerprint("sdk-key");
        // `/dev/zero` never ends and says it is 0 bytes long.
        assert!(matches!(
            read(Path::new("/dev/zero"), "checkout", &fp),
            Err(LkgError::NotRegular(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A plain `open` of a FIFO blocks until a writer comes: run it on a thread and give
        // up on it (the test fails) if it does not return.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read(&fifo, "checkout", &key_fingerprint("sdk-key")).map(|_| ()));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO blocked");
        assert!(matches!(got, Err(LkgError::NotRegular(_))), "{got:?}");
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns.lkg");
        // An older file readable by everyone is replaced by a private one.
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, &encode(&sample()).unwrap()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        write_atomic(&path, &encode(&sample()).unwrap()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        // (No mode is set after the rename: the file is the temp file, created 0600.)
        // A failed write leaves no temp file behind: the target is a non-empty directory,
        // which the rename cannot replace.
        let target = dir.path().join("dir-target");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("x"), b"x").unwrap();
        assert!(write_atomic(&target, b"data").is_err());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }

    #[test]
    fn the_fingerprint_does_not_contain_the_key() {
        let fp = key_fingerprint("sdk-secret-key");
        assert_eq!(fp.len(), 32);
        assert!(!fp.contains("secret"));
        assert_ne!(fp, key_fingerprint("sdk-secret-key2"));
    }
}
