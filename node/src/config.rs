//! Node configuration: a typed struct with defaults, parsed once at the edge (the CLI).

use std::path::PathBuf;
use std::time::Duration;

pub use crate::listener::ListenerLimits;
pub use crate::tls::{PeerTlsFiles, TlsFiles};

/// Everything a node needs to run. Built by `flagstaff serve` from flags and `FLAGSTAFF_*`
/// environment variables, or directly by tests.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Cluster id to mark a pristine data dir with. Ignored (but checked) when the dir is marked.
    pub cluster_id: Option<String>,
    /// URL other nodes and clients use for this node's client listener.
    pub advertise_api: String,
    /// URL other nodes use for this node's peer listener.
    pub advertise_peer: String,
    /// Shared secret authenticating raft RPC and write forwarding between nodes.
    pub cluster_secret: String,
    /// Bearer tokens accepted on the admin API, as `(name, token)`; the name is the actor
    /// recorded in history.
    pub admin_tokens: Vec<(String, String)>,
    /// Default and upper bound for `consistency=bounded` reads.
    pub max_staleness: Duration,
    /// How long a write may take end to end (leader election, forwarding, commit) before the
    /// node answers 503/504.
    pub write_timeout: Duration,
    /// How long a read may wait for a read index, a proof or `min_revision`.
    pub read_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging follower catches up from the
    /// log instead of looping on snapshot transfers.
    pub logs_behind_snapshot: u64,
    /// Maximum request body size on the client listener.
    pub max_body_bytes: usize,
    /// Source address for outgoing peer connections (lets firewalls and tests tell nodes apart
    /// on one host, e.g. 127.0.0.2).
    pub peer_source_ip: Option<std::net::IpAddr>,
    /// OFREP evaluations per second per caller (SDK key or admin token); 0 disables the limit.
    pub evaluation_rate_per_sec: u32,
    /// Write limits and retention enforced inside `apply` (flags and segments per namespace,
    /// definition bytes, `$ref` chain): must be the same on every node.
    pub state_limits: flagstaff_raft_store::StateLimits,
    /// Maximum request body of a flagd document import (`PUT …/flagd`), which may carry a
    /// whole namespace.
    pub max_import_bytes: usize,
    /// Maximum OFREP evaluation request body (the evaluation context), in bytes.
    pub max_context_bytes: usize,
    /// Concurrent SDK watch streams per caller (SDK key or admin token); over it, 429.
    pub max_watch_streams_per_key: usize,
    /// How fast this node starts watch streams and snapshot requests (all callers together).
    pub sdk_admission: SdkAdmission,
    /// Timeouts and the connection cap of the client listener.
    pub client_listener: ListenerLimits,
    /// Timeouts and the connection cap of the peer listener.
    pub peer_listener: ListenerLimits,
    /// Series of `flagstaff_evaluations_total` (namespace × flag × variant) at most; further
    /// combinations count under `_other`. 0 turns the family off.
    pub max_evaluation_series: usize,
    /// Where to serve `GET /metrics` alone, besides the client listener (none by default).
    pub listen_metrics: Option<std::net::SocketAddr>,
    /// flagd's gRPC sync service (`flagd_sync.rs`), when set.
    pub listen_sync: Option<std::net::SocketAddr>,
    /// Namespaces the sync listener serves to providers that send no key (none by default).
    pub sync_keyless_namespaces: std::collections::BTreeSet<String>,
    /// At shutdown, how long requests in flight may take to finish before they are cut.
    pub drain_timeout: Duration,
    /// How often the node proposes the A/B test events it gathered (one log entry per
    /// namespace per interval).
    pub events_interval: Duration,
    /// TLS of the client listener (and of the metrics listener); `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Mutual TLS between nodes: the peer listener and the peer client; `None`: plain HTTP.
    pub peer_tls: Option<PeerTlsFiles>,
}

/// The node-wide pace of the SDK routes' expensive starts: a watch stream's first snapshot (or
/// resume) and a snapshot request. Over the burst, requests queue in arrival order; one that
/// would queue longer than `max_wait` gets 429 with `Retry-After`.
#[derive(Debug, Clone, Copy)]
pub struct SdkAdmission {
    /// Starts per second; 0 disables pacing.
    pub per_sec: u32,
    /// Starts admitted at once from idle.
    pub burst: u32,
    /// Longest queueing before a 429 (below the SDK's 5 s request timeout by default).
    pub max_wait: Duration,
}

impl NodeConfig {
    pub const DEFAULT_SDK_ADMISSION: SdkAdmission = SdkAdmission {
        per_sec: 1_000,
        burst: 1_000,
        max_wait: Duration::from_secs(4),
    };
    pub const DEFAULT_MAX_IMPORT_BYTES: usize = 64 << 20;
    pub const DEFAULT_MAX_CONTEXT_BYTES: usize = 64 << 10;
    pub const DEFAULT_MAX_WATCH_STREAMS_PER_KEY: usize = 10_000;
    pub const DEFAULT_MAX_EVALUATION_SERIES: usize = 2_000;
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(3);
    pub const DEFAULT_CLIENT_LISTENER: ListenerLimits = ListenerLimits {
        header_read_timeout: Duration::from_secs(30),
        body_read_timeout: Duration::from_secs(60),
        max_connections: 16_384,
    };
    pub const DEFAULT_PEER_LISTENER: ListenerLimits = ListenerLimits {
        header_read_timeout: Duration::from_secs(30),
        body_read_timeout: Duration::from_secs(30),
        max_connections: 1_024,
    };

    /// A config with the documented defaults.
    pub fn new(
        node_id: u64,
        data_dir: PathBuf,
        advertise_api: String,
        advertise_peer: String,
    ) -> Self {
        Self {
            node_id,
            data_dir,
            cluster_id: None,
            advertise_api,
            advertise_peer,
            cluster_secret: String::new(),
            admin_tokens: Vec::new(),
            max_staleness: Duration::from_millis(2000),
            write_timeout: Duration::from_secs(5),
            read_timeout: Self::DEFAULT_READ_TIMEOUT,
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            snapshot_every: 10_000,
            logs_behind_snapshot: 10_000,
            max_body_bytes: 1 << 20,
            peer_source_ip: None,
            evaluation_rate_per_sec: 10_000,
            state_limits: flagstaff_raft_store::StateLimits::default(),
            max_import_bytes: Self::DEFAULT_MAX_IMPORT_BYTES,
            max_context_bytes: Self::DEFAULT_MAX_CONTEXT_BYTES,
            max_watch_streams_per_key: Self::DEFAULT_MAX_WATCH_STREAMS_PER_KEY,
            sdk_admission: Self::DEFAULT_SDK_ADMISSION,
            client_listener: Self::DEFAULT_CLIENT_LISTENER,
            peer_listener: Self::DEFAULT_PEER_LISTENER,
            max_evaluation_series: Self::DEFAULT_MAX_EVALUATION_SERIES,
            listen_metrics: None,
            listen_sync: None,
            sync_keyless_namespaces: Default::default(),
            drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
            events_interval: Duration::from_secs(1),
            tls: None,
            peer_tls: None,
        }
    }
}
