//! Starting and stopping a node: takes already-bound listeners (so tests use port 0) and a
//! shutdown future.

use std::future::Future;
use std::sync::Arc;

use flagstaff_raft_store::marker;
use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::bounded_read::{run_rounds, Proofs};
use crate::config::NodeConfig;
use crate::flag_sets::FlagSetCache;
use crate::hand_over::HandOver;
use crate::node::{when_stopped, Node};
use crate::peer::network::NetworkFactory;
use crate::peer::server::peer_router;
use crate::peer::PeerClient;
use crate::proposer::Proposer;
use crate::read_index::ReadIndexCoalescer;
use crate::tls::{ServerTls, TlsError};
use crate::watch_hub::WatchHub;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the node stopped on a fatal error: {0}")]
    Fatal(String),
    #[error(transparent)]
    Marker(#[from] marker::MarkerError),
    #[error(
        "data dir {0} is empty: pass --cluster-id to create a new cluster or join one as a new member \
         (a former member whose data was lost must be removed and re-added under a new id)"
    )]
    Pristine(String),
    #[error("opening the store: {0}")]
    Store(#[from] flagstaff_raft_store::StoreError),
    #[error("raft config: {0}")]
    Config(Box<openraft::ConfigError>),
    #[error("starting raft: {0}")]
    Raft(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl From<openraft::ConfigError> for NodeError {
    fn from(e: openraft::ConfigError) -> Self {
        NodeError::Config(Box::new(e))
    }
}

/// A started node; dropping it does not stop it, [`RunningNode::shutdown`] does.
pub struct RunningNode {
    pub node: Arc<Node>,
    stop: tokio::sync::watch::Sender<bool>,
    /// The listeners and the watch hub: they end by themselves once `stop` is sent.
    tasks: Vec<JoinHandle<()>>,
    /// Proof rounds and the leader-change counter: aborted at shutdown.
    background: Vec<JoinHandle<()>>,
    raft_runtime: RaftRuntime,
}

/// The Raft core's own threads. openraft spawns its tasks (the core with its heartbeats and
/// votes, replication, log appends, applies) on the runtime that creates it, so creating it
/// here keeps them off the workers that serve clients: no amount of API work delays a
/// heartbeat. Two threads, so an fsync in the log store never stalls the core.
struct RaftRuntime(Option<tokio::runtime::Runtime>);

impl RaftRuntime {
    fn new(node_id: u64) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("raft-{node_id}"))
            .on_thread_start(raise_priority)
            .enable_all()
            .build()?;
        Ok(Self(Some(rt)))
    }

    fn handle(&self) -> Result<tokio::runtime::Handle, NodeError> {
        let rt = self.0.as_ref();
        rt.map(|rt| rt.handle().clone())
            .ok_or_else(|| NodeError::Raft("no Raft runtime".into()))
    }
}

/// Gives the calling thread a higher CPU priority than the client workers (nice -10), where
/// the process may (root or `CAP_SYS_NICE`): on a machine whose CPUs are saturated, heartbeats
/// then still go out and are answered on time. Without the privilege the thread keeps the
/// normal priority; the election timeouts are sized for that too.
fn raise_priority() {
    // SAFETY: plain system calls on the calling thread; failure changes nothing.
    let raised = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -10) == 0
    };
    if !raised {
        tracing::debug!("the Raft threads keep the normal CPU priority (no CAP_SYS_NICE)");
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        // Dropping a runtime may block, which is not allowed inside another runtime.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The listeners' TLS, loaded from the configured files.
struct Listeners {
    client: Option<Arc<ServerTls>>,
    peer: Option<Arc<ServerTls>>,
    /// The sync listener's: the client listener's certificate, for HTTP/2.
    sync: Option<Arc<ServerTls>>,
}

impl Listeners {
    /// Loads the files, and checks that each advertised URL's scheme is what its listener
    /// serves (a peer reached over `http://` while expecting TLS would never answer).
    fn tls(config: &NodeConfig) -> Result<Self, NodeError> {
        let check = |url: &str, tls: bool, option: &str| {
            let scheme = if tls { "https://" } else { "http://" };
            if url.to_ascii_lowercase().starts_with(scheme) {
                Ok(())
            } else {
                Err(TlsError::Config(format!(
                    "{option} is {url:?}, but the listener serves {}: advertise a {scheme} URL",
                    if tls { "TLS" } else { "plain HTTP" }
                )))
            }
        };
        check(
            &config.advertise_api,
            config.tls.is_some(),
            "--advertise-client",
        )?;
        check(
            &config.advertise_peer,
            config.peer_tls.is_some(),
            "--advertise-peer",
        )?;
        let client = match &config.tls {
            Some(files) => Some(Arc::new(ServerTls::load(files.clone(), None)?)),
            None => None,
        };
        let sync = match (&config.tls, config.listen_sync) {
            (Some(files), Some(_)) => Some(Arc::new(ServerTls::load_for(
                files.clone(),
                None,
                crate::tls::H2,
            )?)),
            _ => None,
        };
        let peer = match &config.peer_tls {
            Some(files) => Some(Arc::new(ServerTls::load(
                files.identity.clone(),
                Some(files.trusted_ca.clone()),
            )?)),
            None => None,
        };
        Ok(Self { client, peer, sync })
    }

    /// The task that reloads every certificate on SIGHUP or when a file changes; `None`
    /// without TLS.
    fn reloading(&self, node: Arc<Node>) -> Option<impl Future<Output = ()> + Send + 'static> {
        let servers: Vec<Arc<ServerTls>> = self
            .client
            .iter()
            .chain(self.peer.iter())
            .chain(self.sync.iter())
            .cloned()
            .collect();
        if servers.is_empty() {
            return None;
        }
        let mut paths: Vec<_> = servers.iter().flat_map(|s| s.paths()).collect();
        paths.sort();
        paths.dedup();
        Some(crate::tls::watch_files(paths, move || {
            let outcome = servers
                .iter()
                .try_for_each(|s| s.reload())
                .and_then(|()| node.peers.reload());
            let outcome = match outcome {
                Ok(()) => {
                    tracing::info!("TLS certificates reloaded");
                    "reloaded"
                }
                Err(e) => {
                    tracing::error!(error = %e,
                        "TLS certificates not reloaded; the ones in use are kept");
                    "failed"
                }
            };
            let labels = crate::metrics::ReloadOutcome { outcome };
            node.metrics.tls_reloads.get_or_create(&labels).inc();
        }))
    }
}

/// Logs a warning when `listener` serves plain HTTP beyond this machine: tokens, SDK keys and
/// the cluster secret then cross the network in the clear.
fn warn_if_plain(listener: &TcpListener, tls: bool, name: &str) {
    if let Ok(addr) = listener.local_addr() {
        if !tls && !addr.ip().is_loopback() {
            tracing::warn!(listener = name, %addr,
                "plain HTTP on a non-loopback address: credentials cross the network in the \
                 clear; configure TLS (see the README)");
        }
    }
}

/// What a hand-over may take beyond waiting out its own vote's lease: the catch-up of the
/// next leader and one vote round.
const HAND_OVER_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a node that stopped on a fatal error keeps answering 503 before it exits.
const FATAL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl RunningNode {
    /// Resolves with the error if the Raft core stops on a fatal one (a failed disk, say).
    pub async fn fatal(&self) -> String {
        let mut metrics = self.node.raft.metrics();
        loop {
            if let Some(e) = crate::node::fatal_of(&metrics.borrow_and_update()) {
                return e;
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Drains and stops: a leader first hands its leadership to a caught-up voter
    /// ([`crate::hand_over`]); then the listeners stop accepting, watch streams end (their
    /// clients move to another node at once), requests in flight finish (writes still commit:
    /// Raft runs until they are done), all within `NodeConfig::drain_timeout`; then whatever
    /// is left is aborted and Raft shuts down. No task of the node outlives this call. Returns
    /// whether everything drained before the deadline.
    pub async fn shutdown(mut self) -> bool {
        let config = &self.node.config;
        let deadline = tokio::time::Instant::now() + config.drain_timeout;
        let within = (config.election_timeout_max + HAND_OVER_SLACK).min(config.drain_timeout / 2);
        match self.node.hand_over(within).await {
            HandOver::NotLeader | HandOver::NoOtherVoter => {}
            HandOver::HandedTo(to) => tracing::info!(to, "handed leadership over"),
            HandOver::TooManyVoters(n) => tracing::info!(
                voters = n,
                "not handing leadership over: with more than three voters the others would \
                 refuse the vote; the next leader is elected after the election timeout"
            ),
            HandOver::Failed(why) => tracing::warn!(%why, "leadership hand-over failed"),
        }
        let _ = self.stop.send(true);
        let mut drained = true;
        for mut t in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                tracing::warn!("drain deadline passed; aborting what is left");
                drained = false;
                t.abort();
                let _ = t.await;
            }
        }
        for t in std::mem::take(&mut self.background) {
            t.abort();
            let _ = t.await;
        }
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        // Waits for the Raft threads to end, so the store they hold is closed before this
        // returns (a process that exits right after must not race their destructors).
        if let Some(rt) = self.raft_runtime.0.take() {
            let stopped = tokio::task::spawn_blocking(move || {
                rt.shutdown_timeout(std::time::Duration::from_secs(10))
            });
            let _ = stopped.await;
        }
        drained
    }
}

// Called once at start-up; the large error type costs nothing here.
#[allow(clippy::result_large_err)]
fn raft_config(cfg: &NodeConfig) -> Result<Config, openraft::ConfigError> {
    Config {
        cluster_name: "flagstaff".into(),
        heartbeat_interval: cfg.heartbeat_interval.as_millis() as u64,
        election_timeout_min: cfg.election_timeout_min.as_millis() as u64,
        election_timeout_max: cfg.election_timeout_max.as_millis() as u64,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
        max_in_snapshot_log_to_keep: cfg.logs_behind_snapshot,
        // Each entry can be a batch of hundreds of writes; openraft's default of 300 entries
        // per append makes a lagging follower's appends many MB, which cannot be sent and
        // synced within the append timeout (the heartbeat interval), so it never caught up.
        max_payload_entries: 32,
        ..Default::default()
    }
    .validate()
}

/// Opens the data dir, starts Raft and serves both listeners until [`RunningNode::shutdown`].
pub async fn start(
    config: NodeConfig,
    client: TcpListener,
    peer: TcpListener,
) -> Result<RunningNode, NodeError> {
    let cluster_id = marker::claim(
        &config.data_dir,
        config.node_id,
        config.cluster_id.as_deref(),
    )?
    .ok_or_else(|| NodeError::Pristine(config.data_dir.display().to_string()))?;
    // Lets the fault-injection apply delay tell follower applies apart (a no-op otherwise).
    flagstaff_raft_store::fault_injection::set_local_node(config.node_id);
    let (mut log, sm, store_metrics) =
        flagstaff_raft_store::open(&config.data_dir.join(marker::DB_DIR), config.state_limits)?;
    let metrics = crate::metrics::Metrics::new(config.max_evaluation_series);
    log.follow(sm.handle().subscribe());
    let state = sm.handle();
    let tls = Listeners::tls(&config)?;
    let peers = PeerClient::new(
        config.cluster_secret.clone(),
        cluster_id.clone(),
        config.peer_source_ip,
        config.peer_tls.clone(),
    )?;
    let network = NetworkFactory {
        node_id: config.node_id,
        client: peers.clone(),
    };
    let raft_runtime = RaftRuntime::new(config.node_id)?;
    let raft_handle = raft_runtime.handle()?;
    let raft_config = Arc::new(raft_config(&config)?);
    let node_id = config.node_id;
    let raft = raft_handle
        .spawn(async move {
            flagstaff_raft_store::Raft::new(node_id, raft_config, network, log, sm).await
        })
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?
        .map_err(|e| NodeError::Raft(e.to_string()))?;

    // The write batcher and the read-index coalescer talk only to Raft: they run on its
    // runtime too, so writes and proofs progress while the client workers are saturated.
    let (proposer, read_index) = {
        let _on_raft_runtime = raft_handle.enter();
        (
            Proposer::spawn(raft.clone(), metrics.proposal_batch.clone()),
            ReadIndexCoalescer::spawn(raft.clone(), config.read_timeout),
        )
    };
    let proofs = Arc::new(Proofs::default());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    // The hub ticks every half bound, between 100 ms and 1 s: heartbeats and staleness
    // checks, decided once per node for every stream.
    let hub_tick = (config.max_staleness / 2).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(1),
    );
    let (hub, hub_task) = WatchHub::spawn(
        state.clone(),
        proofs.clone(),
        hub_tick,
        when_stopped(stop_rx.clone()),
    );
    let registry = metrics.registry(
        &store_metrics,
        crate::metrics::RaftGauges {
            raft: raft.clone(),
            node_id: config.node_id,
            proofs: proofs.clone(),
        },
    );
    let node = Arc::new(Node {
        id: config.node_id,
        cluster_id,
        proposer,
        proposal_gate: Default::default(),
        read_index,
        proofs,
        hub,
        flag_sets: FlagSetCache::default(),
        events: crate::event_intake::EventIntake::new(config.node_id),
        rate_limits: crate::rate_limit::RateLimiter::new(config.evaluation_rate_per_sec),
        watch_streams: crate::watch_hub::StreamSlots::new(config.max_watch_streams_per_key),
        sdk_admission: crate::rate_limit::Pacer::new(
            config.sdk_admission.per_sec,
            config.sdk_admission.burst,
            config.sdk_admission.max_wait,
        ),
        snapshots: Default::default(),
        metrics,
        registry,
        peers,
        raft,
        state,
        config,
    });

    // Tasks that end by themselves once `stop` is sent (the listeners drain first).
    let mut tasks = vec![hub_task];
    tasks.push(tokio::spawn(crate::event_intake::run_flusher(
        node.clone(),
        node.config.events_interval,
        when_stopped(stop_rx.clone()),
    )));
    if let Some(addr) = node.config.listen_metrics {
        let listener = crate::listener::bind(addr)?;
        warn_if_plain(&listener, tls.client.is_some(), "metrics");
        tasks.push(tokio::spawn(crate::listener::serve(
            listener,
            crate::api::metrics_router(node.clone()),
            tls.client.clone(),
            node.config.client_listener,
            None,
            when_stopped(stop_rx.clone()),
            "metrics",
        )));
    }
    if let Some(addr) = node.config.listen_sync {
        let listener = crate::listener::bind(addr)?;
        warn_if_plain(&listener, tls.sync.is_some(), "sync");
        tasks.push(tokio::spawn(crate::flagd_sync::serve(
            node.clone(),
            listener,
            tls.sync.clone(),
            when_stopped(stop_rx.clone()),
        )));
    }
    let app = client_router(node.clone());
    warn_if_plain(&client, tls.client.is_some(), "client");
    warn_if_plain(&peer, tls.peer.is_some(), "peer");
    tasks.push(tokio::spawn(crate::listener::serve(
        client,
        app,
        tls.client.clone(),
        node.config.client_listener,
        Some(crate::api::sdk::is_watch_path),
        when_stopped(stop_rx.clone()),
        "client",
    )));
    // Raft traffic from the other nodes is served on the Raft runtime too, so a node busy
    // with clients still answers votes and appends on time.
    let peer_app = peer_router(node.clone());
    // Re-registered with the Raft runtime's reactor, so its readiness does not wait on the
    // client runtime either.
    let peer = peer.into_std()?;
    let (peer_limits, stop_peer) = (node.config.peer_listener, when_stopped(stop_rx.clone()));
    let peer_tls = tls.peer.clone();
    tasks.push(raft_handle.spawn(async move {
        match TcpListener::from_std(peer) {
            Ok(peer) => {
                let name = "peer";
                crate::listener::serve(peer, peer_app, peer_tls, peer_limits, None, stop_peer, name)
                    .await
            }
            Err(e) => tracing::error!(error = %e, "peer listener failed"),
        }
    }));
    // Tasks that run until they are aborted.
    let mut background = vec![raft_handle.spawn(crate::metrics::count_leader_changes(
        node.raft.clone(),
        node.metrics.leader_changes.clone(),
    ))];
    let rounds_node = node.clone();
    let period = node.config.max_staleness / 2;
    // Staleness proofs are Raft traffic as well.
    background.push(
        raft_handle.spawn(run_rounds(node.proofs.clone(), period, move || {
            rounds_node.clone().proof_round()
        })),
    );

    if let Some(reloading) = tls.reloading(node.clone()) {
        background.push(tokio::spawn(reloading));
    }

    tracing::info!(node = node.id, cluster = %node.cluster_id, api = %node.config.advertise_api,
        peer = %node.config.advertise_peer, "node started");
    Ok(RunningNode {
        node,
        stop,
        tasks,
        background,
        raft_runtime,
    })
}

/// Runs a node until `shutdown` resolves.
pub async fn run(
    config: NodeConfig,
    client: TcpListener,
    peer: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let running = start(config, client, peer).await?;
    let fatal = tokio::select! {
        _ = shutdown => None,
        e = running.fatal() => Some(e),
    };
    match fatal {
        None => {
            tracing::info!("shutting down");
            running.shutdown().await;
            Ok(())
        }
        Some(e) => {
            tracing::error!(error = %e, "fatal storage error: this node can no longer write its \
                data and stops (non-zero exit) so that a supervisor restarts or replaces it");
            // `/healthz` answers 503 meanwhile, so load balancers take the node out first.
            tokio::time::sleep(FATAL_GRACE).await;
            running.shutdown().await;
            Err(NodeError::Fatal(e))
        }
    }
}

/// The client listener: admin API, SDK API, OFREP, cluster operations, health, the OpenAPI
/// document (the HTTP layer, `api/`) and the web console (`/ui`, `ui/`, on top of it).
pub fn client_router(node: Arc<Node>) -> axum::Router {
    let (routes, _) = crate::api::documented_routes().split_for_parts();
    let api = routes.with_state(node.clone());
    api.clone()
        .merge(crate::ui::router(node.clone(), api))
        .fallback(|| async { crate::error::ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn_with_state(
            node,
            crate::api::flagstaff_headers,
        ))
}
