//! `flagstaff`: run a node, a local cluster, and talk to a cluster from the command line.

mod backup;
mod client;
mod config_file;
mod experiment_cmd;
mod local_cluster;
mod pki;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use flagstaff_node::config::{PeerTlsFiles, TlsFiles};
use flagstaff_node::NodeConfig;
use flagstaff_raft_store::StateLimits;

#[derive(Parser)]
#[command(
    name = "flagstaff",
    version,
    about = "Flagstaff feature-flag and runtime-config store"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Log lines as text for a terminal, or as one JSON object per line for a log shipper.
    #[arg(
        long,
        global = true,
        env = "FLAGSTAFF_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node in the foreground.
    Serve(Box<ServeArgs>),
    /// Local clusters and membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Read and change flags.
    #[command(subcommand)]
    Flag(client::FlagCmd),
    /// Namespaces.
    #[command(subcommand)]
    Namespace(client::NamespaceCmd),
    /// SDK keys.
    #[command(subcommand)]
    Key(client::KeyCmd),
    /// A/B tests: start one on a flag, read its results, ship the winner.
    #[command(subcommand)]
    Experiment(experiment_cmd::ExperimentCmd),
    /// Back up a running cluster, or seed a new one from a backup.
    #[command(subcommand)]
    Backup(backup::BackupCmd),
    /// A CA and node certificates for TLS, as files (or bring your own PKI).
    #[command(subcommand)]
    Tls(pki::TlsCmd),
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Start a local cluster in the foreground (Ctrl-C stops it); reuses its data on restart.
    Up(local_cluster::UpArgs),
    /// Initialise a new multi-machine cluster: `--members 1=http://a:7701,http://a:7801 …`.
    Init {
        #[command(flatten)]
        conn: client::Conn,
        /// `ID=API_URL,PEER_URL`, one per member.
        #[arg(long, num_args = 1.., required = true)]
        members: Vec<String>,
    },
    /// Members, roles, leader, term and applied index.
    Status {
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Add a non-voting learner (it catches up and serves bounded reads). Start the new node
    /// first: the leader asks it to prove, without the cluster secret being sent, that it is
    /// node ID of this cluster at these addresses.
    AddLearner {
        #[command(flatten)]
        conn: client::Conn,
        #[arg(long)]
        id: u64,
        /// The client listener URL the new node advertises (its --advertise-client).
        #[arg(long)]
        api_addr: String,
        /// The peer listener URL the new node advertises (its --advertise-peer).
        #[arg(long)]
        peer_addr: String,
    },
    /// Promote a caught-up learner to voter.
    Promote {
        #[command(flatten)]
        conn: client::Conn,
        #[arg(long)]
        id: u64,
    },
    /// Remove a member.
    Remove {
        #[command(flatten)]
        conn: client::Conn,
        #[arg(long)]
        id: u64,
    },
    /// Disaster recovery when a majority is lost for good: write a backup file of what this
    /// stopped node applied, to restore into a new cluster (`backup restore`). Writes the lost
    /// majority acknowledged that this node never applied are lost; see the README.
    ForceNew {
        /// The surviving node's data dir (the node must be stopped).
        #[arg(long)]
        data_dir: PathBuf,
        /// The backup file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Every option is also an environment variable (`FLAGSTAFF_*`).
#[derive(Args)]
struct ServeArgs {
    /// A TOML file of these options (keys without the dashes: `listen-client = "0.0.0.0:7701"`);
    /// the command line and `FLAGSTAFF_*` variables take precedence over it.
    #[arg(long, env = "FLAGSTAFF_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster, never reused).
    #[arg(long, env = "FLAGSTAFF_ID")]
    id: u64,
    /// Data directory (RocksDB and the identity marker).
    #[arg(long, env = "FLAGSTAFF_DATA_DIR")]
    data_dir: PathBuf,
    /// Client listener (HTTP API).
    #[arg(
        long,
        env = "FLAGSTAFF_LISTEN_CLIENT",
        default_value = "127.0.0.1:7701"
    )]
    listen_client: SocketAddr,
    /// Peer listener (raft RPC, forwarding); bind it to a private interface.
    #[arg(long, env = "FLAGSTAFF_LISTEN_PEER", default_value = "127.0.0.1:7801")]
    listen_peer: SocketAddr,
    /// URL others use for the client listener (default: http(s)://LISTEN_CLIENT).
    #[arg(long, env = "FLAGSTAFF_ADVERTISE_CLIENT")]
    advertise_client: Option<String>,
    /// URL others use for the peer listener (default: http(s)://LISTEN_PEER).
    #[arg(long, env = "FLAGSTAFF_ADVERTISE_PEER")]
    advertise_peer: Option<String>,
    /// Cluster id for a pristine data dir (creating or joining a cluster).
    #[arg(long, env = "FLAGSTAFF_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Shared secret for the peer protocol (same on every node).
    #[arg(long, env = "FLAGSTAFF_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: String,
    /// Admin bearer token (same on every node).
    #[arg(long, env = "FLAGSTAFF_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Default and maximum staleness of bounded reads.
    #[arg(long, env = "FLAGSTAFF_MAX_STALENESS_MS", default_value_t = 2000)]
    max_staleness_ms: u64,
    #[arg(long, env = "FLAGSTAFF_HEARTBEAT_MS", default_value_t = 50)]
    heartbeat_ms: u64,
    #[arg(long, env = "FLAGSTAFF_ELECTION_MIN_MS", default_value_t = 150)]
    election_min_ms: u64,
    #[arg(long, env = "FLAGSTAFF_ELECTION_MAX_MS", default_value_t = 300)]
    election_max_ms: u64,
    /// Build a snapshot every this many log entries.
    #[arg(long, env = "FLAGSTAFF_SNAPSHOT_EVERY", default_value_t = 10_000)]
    snapshot_every: u64,
    /// OFREP evaluations per second per SDK key or admin token (0: no limit); over it, 429.
    #[arg(long, env = "FLAGSTAFF_EVALUATION_RATE", default_value_t = 10_000)]
    evaluation_rate: u32,
    /// Log entries kept behind a snapshot for lagging followers.
    #[arg(long, env = "FLAGSTAFF_LOGS_BEHIND_SNAPSHOT", default_value_t = 10_000)]
    logs_behind_snapshot: u64,
    /// Source address for outgoing peer connections (lets firewalls and fault-injecting
    /// proxies tell nodes on one host apart, e.g. 127.0.0.2).
    #[arg(long, env = "FLAGSTAFF_PEER_SOURCE_IP")]
    peer_source_ip: Option<std::net::IpAddr>,
    /// Flags per namespace; a write over it is refused (400 naming `flags`). Same on every node.
    #[arg(long, env = "FLAGSTAFF_MAX_FLAGS_PER_NAMESPACE", default_value_t = StateLimits::DEFAULT_MAX_FLAGS)]
    max_flags_per_namespace: usize,
    /// Segments per namespace (400 naming `segments` / `$evaluators`). Same on every node.
    #[arg(long, env = "FLAGSTAFF_MAX_SEGMENTS_PER_NAMESPACE", default_value_t = StateLimits::DEFAULT_MAX_SEGMENTS)]
    max_segments_per_namespace: usize,
    /// Bytes of one flag or segment definition (400 naming `definition` / `flags.KEY`). Same on
    /// every node.
    #[arg(long, env = "FLAGSTAFF_MAX_DEFINITION_BYTES", default_value_t = StateLimits::DEFAULT_MAX_DEFINITION_BYTES)]
    max_definition_bytes: usize,
    /// Bytes of all flag and segment definitions of one namespace (400 naming the path); bounds
    /// the snapshot every SDK holds. Same on every node.
    #[arg(long, env = "FLAGSTAFF_MAX_NAMESPACE_BYTES", default_value_t = StateLimits::DEFAULT_MAX_NAMESPACE_BYTES)]
    max_namespace_bytes: usize,
    /// Segments one `$ref` chain may pass through (at most the evaluator's limit, 8). Same on
    /// every node.
    #[arg(long, env = "FLAGSTAFF_MAX_REF_CHAIN", default_value_t = StateLimits::default().max_ref_chain)]
    max_ref_chain: usize,
    /// Request body of a flagd document import, in bytes (over it, 413).
    #[arg(long, env = "FLAGSTAFF_MAX_IMPORT_BYTES", default_value_t = NodeConfig::DEFAULT_MAX_IMPORT_BYTES)]
    max_import_bytes: usize,
    /// OFREP evaluation request (context) size in bytes; over it, 400 INVALID_CONTEXT.
    #[arg(long, env = "FLAGSTAFF_MAX_CONTEXT_BYTES", default_value_t = NodeConfig::DEFAULT_MAX_CONTEXT_BYTES)]
    max_context_bytes: usize,
    /// Concurrent SDK watch streams per SDK key (or admin token); over it, 429.
    #[arg(long, env = "FLAGSTAFF_MAX_WATCH_STREAMS_PER_KEY", default_value_t = NodeConfig::DEFAULT_MAX_WATCH_STREAMS_PER_KEY)]
    max_watch_streams_per_key: usize,
    /// Watch streams and snapshot requests this node starts per second (all callers together);
    /// 0 disables pacing.
    #[arg(long, env = "FLAGSTAFF_SDK_ADMISSION_RATE", default_value_t = NodeConfig::DEFAULT_SDK_ADMISSION.per_sec)]
    sdk_admission_rate: u32,
    /// Watch streams and snapshot requests started at once from idle, before pacing.
    #[arg(long, env = "FLAGSTAFF_SDK_ADMISSION_BURST", default_value_t = NodeConfig::DEFAULT_SDK_ADMISSION.burst)]
    sdk_admission_burst: u32,
    /// Longest a watch or snapshot request queues for its start; past it, 429 with Retry-After.
    #[arg(long, env = "FLAGSTAFF_SDK_ADMISSION_MAX_WAIT_MS", default_value_t = NodeConfig::DEFAULT_SDK_ADMISSION.max_wait.as_millis() as u64)]
    sdk_admission_max_wait_ms: u64,
    /// How long a read may wait for `min_revision`, a read index or a freshness proof before
    /// it answers 503 STALE_REPLICA (or NO_LEADER).
    #[arg(long, env = "FLAGSTAFF_READ_TIMEOUT_MS", default_value_t = NodeConfig::DEFAULT_READ_TIMEOUT.as_millis() as u64)]
    read_timeout_ms: u64,
    /// Client listener: a connection must send a request's headers within this many ms of
    /// opening or of its last response (idle keep-alive connections are closed after it too).
    #[arg(long, env = "FLAGSTAFF_HEADER_READ_TIMEOUT_MS", default_value_t = NodeConfig::DEFAULT_CLIENT_LISTENER.header_read_timeout.as_millis() as u64)]
    header_read_timeout_ms: u64,
    /// Client listener: a request body must arrive whole within this many ms (else 408).
    #[arg(long, env = "FLAGSTAFF_BODY_READ_TIMEOUT_MS", default_value_t = NodeConfig::DEFAULT_CLIENT_LISTENER.body_read_timeout.as_millis() as u64)]
    body_read_timeout_ms: u64,
    /// Client listener: connections open at once; while full, new ones wait to be accepted.
    #[arg(long, env = "FLAGSTAFF_MAX_CLIENT_CONNECTIONS", default_value_t = NodeConfig::DEFAULT_CLIENT_LISTENER.max_connections)]
    max_client_connections: usize,
    /// Peer listener: connections open at once (the peer listener's timeouts are fixed).
    #[arg(long, env = "FLAGSTAFF_MAX_PEER_CONNECTIONS", default_value_t = NodeConfig::DEFAULT_PEER_LISTENER.max_connections)]
    max_peer_connections: usize,
    /// A second address serving only `GET /metrics` (the client listener serves it too), for
    /// a scraper on another network than the clients.
    #[arg(long, env = "FLAGSTAFF_LISTEN_METRICS")]
    listen_metrics: Option<SocketAddr>,
    /// Serve flagd's gRPC sync service (`flagd.sync.v1.FlagSyncService`) here, for the stock
    /// flagd providers' in-process mode (gRPC, over TLS with the client listener's
    /// certificate when --tls-cert is set; none by default).
    #[arg(long, env = "FLAGSTAFF_LISTEN_SYNC")]
    listen_sync: Option<SocketAddr>,
    /// A namespace the sync listener serves to providers that send no SDK key (repeat, or
    /// separate with commas; none by default: every stream needs the namespace's key).
    #[arg(long, env = "FLAGSTAFF_SYNC_KEYLESS_NAMESPACE", value_delimiter = ',')]
    sync_keyless_namespace: Vec<String>,
    /// At shutdown (SIGTERM), how long requests in flight may take to finish before they are cut.
    #[arg(long, env = "FLAGSTAFF_DRAIN_TIMEOUT_MS", default_value_t = NodeConfig::DEFAULT_DRAIN_TIMEOUT.as_millis() as u64)]
    drain_timeout_ms: u64,
    /// Series of `flagstaff_evaluations_total` (namespace × flag × variant) at most; further
    /// OFREP evaluations count under `_other`. 0 turns the family off.
    #[arg(long, env = "FLAGSTAFF_METRICS_MAX_EVALUATION_SERIES", default_value_t = NodeConfig::DEFAULT_MAX_EVALUATION_SERIES)]
    metrics_max_evaluation_series: usize,
    /// Certificate chain (PEM, leaf first) of the client listener: with --tls-key it serves
    /// HTTPS, and so does --listen-metrics. Reloaded on SIGHUP or when the file changes.
    #[arg(long, env = "FLAGSTAFF_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "FLAGSTAFF_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// This node's certificate chain (PEM) for mutual TLS between nodes: served on the peer
    /// listener and presented when connecting to other nodes. Needs --peer-tls-key and
    /// --peer-trusted-ca. Reloaded on SIGHUP or when a file changes.
    #[arg(long, env = "FLAGSTAFF_PEER_TLS_CERT", requires_all = ["peer_tls_key", "peer_trusted_ca"])]
    peer_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --peer-tls-cert.
    #[arg(long, env = "FLAGSTAFF_PEER_TLS_KEY", requires = "peer_tls_cert")]
    peer_tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): every node's peer certificate must chain to it, both ways.
    #[arg(long, env = "FLAGSTAFF_PEER_TRUSTED_CA", requires = "peer_tls_cert")]
    peer_trusted_ca: Option<PathBuf>,
}

impl ServeArgs {
    fn into_config(self) -> NodeConfig {
        let tls = self
            .tls_cert
            .zip(self.tls_key)
            .map(|(cert, key)| TlsFiles { cert, key });
        let peer_tls = match (self.peer_tls_cert, self.peer_tls_key, self.peer_trusted_ca) {
            (Some(cert), Some(key), Some(trusted_ca)) => Some(PeerTlsFiles {
                identity: TlsFiles { cert, key },
                trusted_ca,
            }),
            _ => None,
        };
        let scheme = |tls: bool| if tls { "https" } else { "http" };
        let api = self
            .advertise_client
            .unwrap_or_else(|| format!("{}://{}", scheme(tls.is_some()), self.listen_client));
        let peer = self
            .advertise_peer
            .unwrap_or_else(|| format!("{}://{}", scheme(peer_tls.is_some()), self.listen_peer));
        let mut c = NodeConfig::new(self.id, self.data_dir, api, peer);
        c.cluster_id = self.cluster_id;
        c.cluster_secret = self.cluster_secret;
        c.admin_tokens = vec![("admin".into(), self.admin_token)];
        c.max_staleness = Duration::from_millis(self.max_staleness_ms);
        c.heartbeat_interval = Duration::from_millis(self.heartbeat_ms);
        c.election_timeout_min = Duration::from_millis(self.election_min_ms);
        c.election_timeout_max = Duration::from_millis(self.election_max_ms);
        c.read_timeout = Duration::from_millis(self.read_timeout_ms.max(1));
        c.snapshot_every = self.snapshot_every;
        c.evaluation_rate_per_sec = self.evaluation_rate;
        c.logs_behind_snapshot = self.logs_behind_snapshot;
        c.peer_source_ip = self.peer_source_ip;
        c.state_limits.max_flags = self.max_flags_per_namespace;
        c.state_limits.max_segments = self.max_segments_per_namespace;
        c.state_limits.max_definition_bytes = self.max_definition_bytes;
        c.state_limits.max_namespace_bytes = self.max_namespace_bytes;
        c.state_limits.max_ref_chain = self.max_ref_chain;
        c.max_import_bytes = self.max_import_bytes;
        c.max_context_bytes = self.max_context_bytes;
        c.max_watch_streams_per_key = self.max_watch_streams_per_key;
        c.sdk_admission = flagstaff_node::config::SdkAdmission {
            per_sec: self.sdk_admission_rate,
            burst: self.sdk_admission_burst,
            max_wait: Duration::from_millis(self.sdk_admission_max_wait_ms),
        };
        c.client_listener = flagstaff_node::config::ListenerLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms.max(1)),
            max_connections: self.max_client_connections.max(1),
        };
        c.peer_listener.max_connections = self.max_peer_connections.max(1);
        c.listen_metrics = self.listen_metrics;
        c.listen_sync = self.listen_sync;
        c.sync_keyless_namespaces = self.sync_keyless_namespace.iter().cloned().collect();
        c.max_evaluation_series = self.metrics_max_evaluation_series;
        c.drain_timeout = Duration::from_millis(self.drain_timeout_ms);
        c.tls = tls;
        c.peer_tls = peer_tls;
        c
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.cluster_secret.is_empty() || args.admin_token.is_empty() {
        anyhow::bail!("--cluster-secret and --admin-token must not be empty");
    }
    let max_chain = StateLimits::default().max_ref_chain;
    if args.max_ref_chain == 0 || args.max_ref_chain > max_chain {
        anyhow::bail!("--max-ref-chain must be between 1 and {max_chain} (the evaluator's limit)");
    }
    let client = flagstaff_node::listener::bind(args.listen_client)
        .with_context(|| format!("binding client listener {}", args.listen_client))?;
    let peer = flagstaff_node::listener::bind(args.listen_peer)
        .with_context(|| format!("binding peer listener {}", args.listen_peer))?;
    flagstaff_node::run(
        args.into_config(),
        client,
        peer,
        local_cluster::terminated(),
    )
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let argv = match config_file::expand(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLAGSTAFF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        Cmd::Serve(args) => serve(*args).await,
        Cmd::Cluster(ClusterCmd::Up(args)) => local_cluster::up(args).await,
        Cmd::Cluster(ClusterCmd::Init { conn, members }) => {
            client::cluster_init(&conn, &members).await
        }
        Cmd::Cluster(ClusterCmd::Status { conn }) => client::cluster_status(&conn).await,
        Cmd::Cluster(ClusterCmd::AddLearner {
            conn,
            id,
            api_addr,
            peer_addr,
        }) => client::add_learner(&conn, id, &api_addr, &peer_addr).await,
        Cmd::Cluster(ClusterCmd::Promote { conn, id }) => client::promote(&conn, id).await,
        Cmd::Cluster(ClusterCmd::Remove { conn, id }) => client::remove(&conn, id).await,
        Cmd::Cluster(ClusterCmd::ForceNew { data_dir, out }) => backup::force_new(&data_dir, &out),
        Cmd::Flag(cmd) => client::flag(cmd).await,
        Cmd::Namespace(cmd) => client::namespace(cmd).await,
        Cmd::Key(cmd) => client::key(cmd).await,
        Cmd::Experiment(cmd) => experiment_cmd::experiment(cmd).await,
        Cmd::Backup(cmd) => backup::run(cmd).await,
        Cmd::Tls(cmd) => pki::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
