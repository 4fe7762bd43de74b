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
    /// Largest snapshot body or stream event accepted. Default 64 MiB.
    pub max_body_bytes: usize,
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
            max_body_bytes: 64 << 20,
        }
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
        Ok(())
    }
}

/// The configuration is unusable (the only way `build` fails).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid flagstaff client config: {0}")]
pub struct ConfigError(pub String);
