//! Client configuration: a typed struct with defaults, checked once by the builder.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// Everything the client needs; build it with [`crate::Client::builder`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Node base URLs (`http://host:7701`), voters and learners alike. The client rotates
    /// through all of them. Empty: offline, LKG and bootstrap only.
    pub endpoints: Vec<String>,
    /// The namespace the SDK key is bound to.
    pub namespace: String,
    /// SDK key (or admin token), sent as `Authorization: Bearer …`.
    pub sdk_key: String,
    /// Where to keep the last-known-good file. `None`: no file.
    pub lkg_path: Option<PathBuf>,
    /// A flagd document file shipped with the application, used when no newer data exists.
    pub bootstrap_path: Option<PathBuf>,
    /// A flagd document given in code; used when `bootstrap_path` is unset or unusable.
    pub bootstrap_document: Option<Value>,
    /// Data older than this (by the nodes' proofs) is reported stale. Default 10 s.
    pub stale_after: Duration,
    /// A watch stream with no event for this long is dead (nodes send a heartbeat at least
    /// every 2 s). Default 5 s.
    pub heartbeat_timeout: Duration,
    /// Use the watch stream (push). When false, or when a node has no stream, the client
    /// polls the snapshot every `poll_interval`.
    pub push: bool,
    /// Snapshot polling period in pull mode. Default 5 s.
    pub poll_interval: Duration,
    /// First reconnect delay; doubles per consecutive failure up to `backoff_max`, with
    /// jitter. Default 100 ms.
    pub backoff_min: Duration,
    /// Reconnect delay cap. Default 5 s.
    pub backoff_max: Duration,
    /// TCP connect timeout. Default 2 s.
    pub connect_timeout: Duration,
    /// Timeout of a snapshot request and of a watch request's response headers. Default 5 s.
    pub request_timeout: Duration,
    /// What the client accepts from the network and from files; see [`Limits`].
    pub limits: Limits,
    /// CA certificates (PEM) trusted for `https` endpoints besides the built-in roots: the
    /// cluster's own CA when its certificates are not from a public one.
    pub ca_file: Option<PathBuf>,
    /// How often the exposures and conversions of experiment flags are sent to the cluster
    /// (`POST /v1/namespaces/{ns}/events`). Default 5 s. `Duration::ZERO` disables both
    /// counting and sending (as does an empty endpoint list).
    pub events_interval: Duration,
    /// Most batches of experiment events kept while no node accepts them; beyond it the
    /// oldest is dropped and its events counted in the next batch's `dropped`. Default 120
    /// (10 minutes at the default interval, one batch per interval). At least 1.
    pub max_event_batches: usize,
}

/// Bounds on the data the client accepts, so that no node, stream or file can make it hold
/// unbounded memory. Anything beyond them is refused: the client keeps the data it holds (or
/// the next source: LKG file, bootstrap document, call-site default), reports the fault
/// ([`crate::Event::Error`], [`crate::Event::LkgProblem`] or [`crate::Event::BootstrapProblem`],
/// a warning in the log) and counts it ([`crate::Metrics::limits_exceeded`]).
///
/// Every byte limit is enforced while reading: a larger body, stream or file is abandoned at
/// the first byte past its limit, never read whole and then measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest namespace state, in bytes of JSON: a snapshot response body, one line or one
    /// event of the watch stream, a bootstrap file, and the data set held after applying
    /// changes (the compact JSON text of its flag and segment keys and definitions).
    /// Default 64 MiB. The LKG file may be [`Limits::LKG_OVERHEAD_BYTES`] larger (its header
    /// and metadata).
    pub max_snapshot_bytes: usize,
    /// Most flags in the namespace. Default 10,000.
    pub max_flags: usize,
    /// Most segments in the namespace. Default 10,000.
    pub max_segments: usize,
    /// Largest single flag or segment definition (compact JSON text). A larger one is not
    /// kept: that flag, and the flags using that segment, evaluate to `PARSE_ERROR`; the rest
    /// of the update is accepted. Default 1 MiB (the nodes' default request body limit, so no
    /// definition a default node accepted is larger).
    pub max_definition_bytes: usize,
    /// Largest evaluation context, as compact JSON (an estimate: see
    /// [`flagstaff_flags::Context::exceeds_bytes`]). An evaluation with a larger one answers
    /// the caller's default with `INVALID_CONTEXT`, as a node's OFREP endpoint does. Default
    /// 64 KiB (the nodes' default `--max-context-bytes`).
    pub max_context_bytes: usize,
}

impl Limits {
    /// Room for the LKG file's header and metadata on top of `max_snapshot_bytes`.
    pub const LKG_OVERHEAD_BYTES: usize = 1 << 20;

    /// Largest last-known-good file read or written.
    pub fn max_lkg_file_bytes(&self) -> u64 {
        (self.max_snapshot_bytes as u64).saturating_add(Self::LKG_OVERHEAD_BYTES as u64)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_snapshot_bytes: 64 << 20,
            max_flags: 10_000,
            max_segments: 10_000,
            max_definition_bytes: 1 << 20,
            max_context_bytes: 64 << 10,
        }
    }
}

impl Config {
    /// Defaults for `namespace` and `sdk_key`, no endpoints.
    pub fn new(namespace: impl Into<String>, sdk_key: impl Into<String>) -> Self {
        Self {
            endpoints: Vec::new(),
            namespace: namespace.into(),
            sdk_key: sdk_key.into(),
            lkg_path: None,
            bootstrap_path: None,
            bootstrap_document: None,
            stale_after: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(5),
            push: true,
            poll_interval: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            ca_file: None,
            events_interval: Duration::from_secs(5),
            max_event_batches: 120,
        }
    }

    /// The certificates of `ca_file` (none without one).
    pub(crate) fn ca_certificates(&self) -> Result<Vec<reqwest::Certificate>, ConfigError> {
        let Some(path) = &self.ca_file else {
            return Ok(Vec::new());
        };
        let fault = |why: String| ConfigError(format!("ca_file {}: {why}", path.display()));
        let pem = std::fs::read(path).map_err(|e| fault(e.to_string()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fault(e.to_string()))?;
        if certs.is_empty() {
            return Err(fault("no PEM certificate in the file".into()));
        }
        Ok(certs)
    }

    pub(crate) fn check(&mut self) -> Result<(), ConfigError> {
        if self.namespace.is_empty() {
            return Err(ConfigError("namespace is empty".into()));
        }
        for e in &mut self.endpoints {
            let trimmed = e.trim_end_matches('/').to_string();
            let url = reqwest::Url::parse(&trimmed)
                .map_err(|err| ConfigError(format!("endpoint {e:?}: {err}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError(format!(
                    "endpoint {e:?}: scheme must be http(s)"
                )));
            }
            *e = trimmed;
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return Err(ConfigError(
                "backoff_min must be > 0 and <= backoff_max".into(),
            ));
        }
        if self.heartbeat_timeout.is_zero() || self.poll_interval.is_zero() {
            return Err(ConfigError(
                "heartbeat_timeout and poll_interval must be > 0".into(),
            ));
        }
        if self.max_event_batches == 0 {
            return Err(ConfigError("max_event_batches must be > 0".into()));
        }
        self.ca_certificates()?;
        let l = &self.limits;
        if l.max_snapshot_bytes == 0 || l.max_definition_bytes == 0 || l.max_context_bytes == 0 {
            return Err(ConfigError(
                "limits.max_snapshot_bytes, max_definition_bytes and max_context_bytes must be > 0"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The configuration is unusable (the only way `build` fails).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid flagstaff client config: {0}")]
pub struct ConfigError(pub String);
