//! The application-facing client: construction, typed evaluation, status and listeners.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use flagstaff_flags::{Context, ErrorCode, Evaluation, EvaluationError, FlagSet, Reason};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::config::{Config, ConfigError, Limits};
use crate::data_set::{DataSet, Source};
use crate::events::{ChangeSet, Event, EventListener, FlagChange, Status};
use crate::lkg;
use crate::shared::{unix_ms_now, Shared};
use crate::thread_cache::with_data;

/// A typed evaluation result with where it came from.
///
/// On any fault `value` is the caller's default, `reason` is [`Reason::Error`], `error` says
/// why and `source` is [`Source::Default`].
#[derive(Debug, Clone, PartialEq)]
pub struct Details<T> {
    /// The value to use.
    pub value: T,
    /// The chosen variant (`None` when the caller's default is used).
    pub variant: Option<String>,
    /// Why this value (OpenFeature's reasons). Stale data does not change it: see `stale`.
    pub reason: Reason,
    /// Set exactly when `reason` is [`Reason::Error`].
    pub error: Option<EvaluationError>,
    /// The flag's metadata.
    pub metadata: Map<String, Value>,
    /// Where the value came from.
    pub source: Source,
    /// Revision of the data consulted (`None` for bootstrap data or none).
    pub revision: Option<u64>,
    /// Proven age of the data consulted (`None`: unknown, e.g. bootstrap data).
    pub age: Option<Duration>,
    /// The data is older than the configured bound, or its age is unknown.
    pub stale: bool,
}

/// What happened to the LKG file and bootstrap document at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// Not configured.
    NotConfigured,
    /// Configured, but there is no file (yet).
    Missing,
    /// Loaded (bootstrap: parsed; used only when no LKG data was loaded).
    Loaded {
        /// Revision of the data (`None` for bootstrap).
        revision: Option<u64>,
    },
    /// Refused, with the reason. Never trusted.
    Rejected(String),
}

/// Outcome of loading local data at construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupReport {
    /// The last-known-good file.
    pub lkg: LoadOutcome,
    /// The bootstrap document.
    pub bootstrap: LoadOutcome,
}

/// Counters for the application's metrics system; all monotonic but
/// `events_backlog_batches`, a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metrics {
    /// Snapshots accepted from the network.
    pub snapshots_accepted: u64,
    /// Incremental changes applied.
    pub changes_applied: u64,
    /// Offers older than the revision held, refused.
    pub rollbacks_refused: u64,
    /// Sessions with an endpoint that ended (each is followed by a reconnect).
    pub reconnects: u64,
    /// Transitions into [`Status::Stale`].
    pub stale_transitions: u64,
    /// LKG files written.
    pub lkg_writes: u64,
    /// LKG writes that failed.
    pub lkg_write_errors: u64,
    /// Responses or events that could not be parsed.
    pub malformed_responses: u64,
    /// Data refused for exceeding [`crate::Limits`]: responses, stream lines or events, files,
    /// updates (each refused whole), and single definitions not kept.
    pub limits_exceeded: u64,
    /// Batches of experiment events (exposures and conversions) a node accepted.
    pub events_sent_batches: u64,
    /// Batches of experiment events waiting to be sent now (a gauge; at most
    /// [`Config::max_event_batches`]).
    pub events_backlog_batches: u64,
    /// Experiment events (exposures plus conversions) dropped: pushed out of a full backlog
    /// or refused by a node as invalid.
    pub events_dropped: u64,
    /// [`Client::track`] calls ignored because the event name is not one
    /// ([`flagstaff_flags::is_event_name`]).
    pub events_invalid_names: u64,
}

/// Builds a [`Client`]; see [`Client::builder`].
pub struct ClientBuilder {
    cfg: Config,
    on_event: Vec<EventListener>,
}

impl ClientBuilder {
    /// Adds a node base URL (`http://host:7701`). Add every node, voters and learners.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.cfg.endpoints.push(url.into());
        self
    }

    /// Adds several node base URLs.
    pub fn endpoints<I: IntoIterator<Item = S>, S: Into<String>>(mut self, urls: I) -> Self {
        self.cfg.endpoints.extend(urls.into_iter().map(Into::into));
        self
    }

    /// Keeps the last-known-good state in this file (its directory must exist).
    pub fn lkg_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cfg.lkg_path = Some(path.into());
        self
    }

    /// A flagd document file shipped with the application.
    pub fn bootstrap_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cfg.bootstrap_path = Some(path.into());
        self
    }

    /// A flagd document given in code.
    pub fn bootstrap_document(mut self, doc: Value) -> Self {
        self.cfg.bootstrap_document = Some(doc);
        self
    }

    /// Data older than this is reported stale (default 10 s).
    pub fn stale_after(mut self, bound: Duration) -> Self {
        self.cfg.stale_after = bound;
        self
    }

    /// A watch stream silent for this long is dead (default 5 s).
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.cfg.heartbeat_timeout = d;
        self
    }

    /// Use the watch stream (default) or only poll snapshots.
    pub fn push(mut self, enabled: bool) -> Self {
        self.cfg.push = enabled;
        self
    }

    /// Snapshot polling period when not streaming (default 5 s).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.cfg.poll_interval = d;
        self
    }

    /// Reconnect backoff bounds (default 100 ms … 5 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.cfg.backoff_min = min;
        self.cfg.backoff_max = max;
        self
    }

    /// Timeout of a snapshot request and of a watch request's headers (default 5 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.cfg.request_timeout = d;
        self
    }

    /// How often experiment exposures and conversions are sent (default 5 s);
    /// `Duration::ZERO` disables counting and sending them.
    pub fn events_interval(mut self, d: Duration) -> Self {
        self.cfg.events_interval = d;
        self
    }

    /// Most batches of experiment events kept while no node accepts them (default 120).
    pub fn max_event_batches(mut self, n: usize) -> Self {
        self.cfg.max_event_batches = n;
        self
    }

    /// Trusts the CA certificates (PEM) in `path` for `https` endpoints, besides the built-in
    /// roots. `build` fails if the file cannot be read or holds no certificate.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cfg.ca_file = Some(path.into());
        self
    }

    /// Bounds on the data accepted from the network and from files (see [`Limits`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.cfg.limits = limits;
        self
    }

    /// Replaces the whole configuration (endpoints, namespace and key included).
    pub fn config(mut self, cfg: Config) -> Self {
        self.cfg = cfg;
        self
    }

    /// Registers an event listener before start, so it also sees what happens while loading
    /// local files (e.g. [`Event::LkgProblem`]).
    pub fn on_event(mut self, f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.on_event.push(Arc::new(f));
        self
    }

    /// Starts the client and returns at once. Reads the LKG file and bootstrap document
    /// synchronously (local files, so evaluation right after `build` already uses them), then
    /// follows the cluster in the background: on the current Tokio runtime if there is one,
    /// otherwise on a thread of its own. Fails only on an unusable configuration.
    pub fn build(self) -> Result<Client, ConfigError> {
        let mut cfg = self.cfg;
        cfg.check()?;
        let shared = Arc::new(Shared::new(cfg));
        shared.listeners.with(|l| l.events.extend(self.on_event));
        let report = load_local(&shared);
        shared.refresh_status();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ended_tx, ended) = watch::channel(false);
        spawn_tasks(shared.clone(), stop_rx, ended_tx);
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                report,
                stop: stop_tx,
                ended,
            }),
        })
    }
}

fn load_local(shared: &Shared) -> StartupReport {
    let cfg = &shared.cfg;
    let limits = &cfg.limits;
    let over_limit = || {
        shared
            .counters
            .limits_exceeded
            .fetch_add(1, Ordering::Relaxed);
    };
    let lkg = match &cfg.lkg_path {
        None => LoadOutcome::NotConfigured,
        Some(path) => {
            let fp = lkg::key_fingerprint(&cfg.sdk_key);
            let loaded =
                lkg::read_with_limit(path, &cfg.namespace, &fp, limits.max_lkg_file_bytes())
                    .map_err(|e| {
                        if matches!(e, lkg::LkgError::TooLarge(_)) {
                            over_limit();
                        }
                        e.to_string()
                    })
                    .and_then(|file| {
                        file.map(|c| {
                            let (revision, as_of) = (c.revision, c.data_as_of_unix_ms);
                            DataSet::checked(
                                crate::data_set::RawData::from_values(c.flags, c.segments),
                                Some(c.revision),
                                Some(c.cluster_id),
                                Source::Lkg,
                                limits,
                            )
                            .map(|data| (data, revision, as_of))
                            .map_err(|e| {
                                over_limit();
                                e.0
                            })
                        })
                        .transpose()
                    });
            match loaded {
                Ok(None) => LoadOutcome::Missing,
                Ok(Some((data, revision, as_of))) => {
                    shared.note_oversized(&data);
                    shared.install_initial(data, as_of);
                    LoadOutcome::Loaded {
                        revision: Some(revision),
                    }
                }
                Err(e) => {
                    let message = format!("ignored last-known-good file {}: {e}", path.display());
                    tracing::warn!("{message}");
                    shared.listeners.emit(&Event::LkgProblem {
                        message: message.clone(),
                    });
                    LoadOutcome::Rejected(message)
                }
            }
        }
    };
    let bootstrap_doc: Option<Result<Value, String>> =
        match (&cfg.bootstrap_path, &cfg.bootstrap_document) {
            (Some(path), fallback) => {
                let read =
                    lkg::read_capped(path, limits.max_snapshot_bytes as u64).map_err(|e| match e {
                        lkg::CappedError::Io(e) => e.to_string(),
                        lkg::CappedError::NotRegular => "not a regular file".to_string(),
                        lkg::CappedError::TooLarge(limit) => {
                            over_limit();
                            format!("larger than the limit of {limit} bytes")
                        }
                    });
                match read {
                    Ok(bytes) => Some(
                        serde_json::from_slice(&bytes)
                            .map_err(|e| format!("bootstrap file {}: {e}", path.display())),
                    ),
                    Err(e) if fallback.is_some() => {
                        tracing::warn!(
                            "bootstrap file {}: {e}; using the document given in code",
                            path.display()
                        );
                        fallback.clone().map(Ok)
                    }
                    Err(e) => Some(Err(format!("bootstrap file {}: {e}", path.display()))),
                }
            }
            (None, Some(doc)) => Some(Ok(doc.clone())),
            (None, None) => None,
        };
    let bootstrap = match bootstrap_doc {
        None => LoadOutcome::NotConfigured,
        Some(Err(message)) => {
            tracing::warn!("{message}");
            shared.listeners.emit(&Event::BootstrapProblem {
                message: message.clone(),
            });
            LoadOutcome::Rejected(message)
        }
        Some(Ok(doc)) => match DataSet::from_flagd_document(&doc, limits) {
            Err(message) => {
                let message = format!("bootstrap document refused: {message}");
                tracing::warn!("{message}");
                shared.listeners.emit(&Event::BootstrapProblem {
                    message: message.clone(),
                });
                LoadOutcome::Rejected(message)
            }
            Ok(data) => {
                shared.note_oversized(&data);
                if !data.faults.is_empty() {
                    shared.listeners.emit(&Event::BootstrapProblem {
                        message: format!(
                            "{} invalid definition(s) in the bootstrap document; they evaluate to PARSE_ERROR: {}",
                            data.faults.len(),
                            data.faults.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                        ),
                    });
                }
                if shared.data.load().is_none() {
                    shared.install_initial(data, None);
                }
                LoadOutcome::Loaded { revision: None }
            }
        },
    };
    StartupReport { lkg, bootstrap }
}

/// Starts the background work; `ended` turns true once all of it has returned (the last event
/// flush included), and its sender is dropped if the work cannot start.
fn spawn_tasks(shared: Arc<Shared>, stop: watch::Receiver<bool>, ended: watch::Sender<bool>) {
    let work = async move {
        // One HTTP client for the sync loop and the event sender (none when offline).
        let http = if shared.endpoints.is_empty() {
            None
        } else {
            match crate::sync_loop::http_client(&shared) {
                Ok(c) => Some(c),
                Err(e) => {
                    shared.report_error(None, e);
                    None
                }
            }
        };
        let send_events = {
            let (shared, http, stop) = (shared.clone(), http.clone(), stop.clone());
            async move {
                if let Some(http) = http {
                    crate::experiment_events::run(shared, http, stop).await;
                }
            }
        };
        let stopped = async {
            let mut stop = stop;
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        };
        // A sync loop that has nothing to follow returns; the other tasks carry on (the
        // pending is inside the branch: a branch's handler runs only once the others are
        // no longer polled).
        let follow = {
            let shared = shared.clone();
            async move {
                if let Some(http) = http {
                    supervise(shared, http).await;
                }
                std::future::pending::<()>().await
            }
        };
        let background = async {
            tokio::select! {
                _ = follow => {},
                _ = monitor(shared.clone()) => {},
                _ = lkg_writer(shared.clone()) => {},
                _ = stopped => {},
            }
        };
        // The sender stops on the same signal, after one last bounded flush.
        tokio::join!(background, send_events);
        let _ = ended.send(true);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(work);
        }
        Err(_) => {
            let spawned = std::thread::Builder::new()
                .name("flagstaff-client".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(work),
                        Err(e) => tracing::error!("flagstaff client cannot start a runtime: {e}"),
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("flagstaff client cannot start its thread: {e}");
            }
        }
    }
}

/// Runs the sync loop as its own task and restarts it should it ever panic, so a bug there
/// can never leave the application silently following nothing.
async fn supervise(shared: Arc<Shared>, http: reqwest::Client) {
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    loop {
        let task = tokio::spawn(crate::sync_loop::run(shared.clone(), http.clone()));
        let _guard = AbortOnDrop(task.abort_handle());
        match task.await {
            Err(e) if e.is_panic() => {
                tracing::error!("flagstaff sync loop panicked; restarting it");
                shared.report_error(None, "internal error in the sync loop; restarted".into());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => return,
        }
    }
}

/// Re-evaluates the status as time passes (data ages even when nothing arrives).
async fn monitor(shared: Arc<Shared>) {
    let tick =
        (shared.cfg.stale_after / 20).clamp(Duration::from_millis(10), Duration::from_millis(250));
    loop {
        shared.refresh_status();
        tokio::time::sleep(tick).await;
    }
}

/// Writes the newest network data to the LKG file; bursts of changes coalesce into one write.
async fn lkg_writer(shared: Arc<Shared>) {
    let Some(path) = shared.cfg.lkg_path.clone() else {
        return std::future::pending().await;
    };
    let mut rx = shared.lkg_tx.subscribe();
    let fingerprint = lkg::key_fingerprint(&shared.cfg.sdk_key);
    while rx.changed().await.is_ok() {
        let Some(data) = rx.borrow_and_update().clone() else {
            continue;
        };
        let (Some(cluster_id), Some(revision)) = (data.cluster_id.clone(), data.revision) else {
            continue;
        };
        let contents = lkg::LkgContents {
            namespace: shared.cfg.namespace.clone(),
            cluster_id,
            key_fingerprint: fingerprint.clone(),
            revision,
            fetched_at_unix_ms: unix_ms_now().max(0) as u64,
            data_as_of_unix_ms: shared.as_of_unix_ms(),
            flags: BTreeMap::new(),
            segments: BTreeMap::new(),
        };
        let path = path.clone();
        let max_file = shared.cfg.limits.max_lkg_file_bytes();
        // Off the runtime: the definitions are parsed back from their text, then encoded.
        // Anything wrong (a corrupt definition, a file the client would refuse to read back)
        // writes nothing: the file on disk stays the previous good one.
        let written = tokio::task::spawn_blocking(move || {
            let contents = lkg::LkgContents {
                flags: data.raw.flag_values()?,
                segments: data.raw.segments.clone(),
                ..contents
            };
            let bytes = lkg::encode(&contents).map_err(|e| e.to_string())?;
            if bytes.len() as u64 > max_file {
                return Err(format!(
                    "the file would be {} bytes, more than the limit of {max_file}",
                    bytes.len()
                ));
            }
            lkg::write_atomic(&path, &bytes).map_err(|e| e.to_string())
        })
        .await;
        match written {
            Ok(Ok(())) => {
                shared.counters.lkg_writes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                shared
                    .counters
                    .lkg_write_errors
                    .fetch_add(1, Ordering::Relaxed);
                shared.listeners.emit(&Event::LkgProblem {
                    message: format!("cannot write the last-known-good file: {e}"),
                });
            }
            Err(e) => {
                shared
                    .counters
                    .lkg_write_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!("LKG writer task failed: {e}");
            }
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    report: StartupReport,
    stop: watch::Sender<bool>,
    /// True once the background work has ended (see [`Client::shutdown`]).
    ended: watch::Receiver<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The Flagstaff SDK client. Cheap to clone (one shared state); background work stops when the
/// last clone is dropped or [`Client::close`] is called.
///
/// Guarantees: evaluation never blocks on the network, performs no I/O, takes no lock
/// (it reads an atomically swapped snapshot, through the evaluating thread's own reference
/// when that is current: one atomic load) and never panics; on any fault it returns the
/// caller's default with reason `ERROR` and an error code. The one lock: evaluating a flag that
/// runs an A/B test (`experiment`) counts its exposure under a mutex held for a few additions.
/// Each thread that evaluates keeps a
/// reference to the data set it last used (for up to four clients), so a replaced data set is
/// freed once those threads have evaluated again or exited.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Builds an evaluation context for now (sets `$flagd.timestamp`).
pub fn context() -> Context {
    Context::new(unix_ms_now() / 1000)
}

struct Owned<T> {
    value: T,
    variant: Option<String>,
    reason: Reason,
    error: Option<EvaluationError>,
    metadata: Map<String, Value>,
}

fn owned<U, T>(e: Evaluation<'_, U>, f: impl FnOnce(U) -> T) -> Owned<T> {
    Owned {
        value: f(e.value),
        variant: e.variant.map(str::to_string),
        reason: e.reason,
        error: e.error,
        metadata: e.metadata.clone(),
    }
}

impl Client {
    /// A builder for `namespace`, authenticated with `sdk_key`.
    pub fn builder(namespace: impl Into<String>, sdk_key: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            cfg: Config::new(namespace, sdk_key),
            on_event: Vec::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// What happened to the LKG file and bootstrap document at start.
    pub fn startup_report(&self) -> &StartupReport {
        &self.inner.report
    }

    /// The provider status now.
    pub fn status(&self) -> Status {
        self.inner.shared.status()
    }

    /// Waits (optionally: evaluation never needs it) until the status is [`Status::Ready`], at
    /// most `timeout`; returns the status reached otherwise.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), Status> {
        let mut rx = self.inner.shared.status.subscribe();
        let reached = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| *s == Status::Ready).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => Ok(()),
            _ => Err(self.status()),
        }
    }

    /// Blocking form of [`Client::wait_ready`] for code outside an async runtime. Do not call
    /// it on a runtime thread.
    pub fn wait_ready_blocking(&self, timeout: Duration) -> Result<(), Status> {
        let start = std::time::Instant::now();
        loop {
            let s = self.status();
            if s == Status::Ready {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Revision held (`None`: bootstrap data or none).
    pub fn revision(&self) -> Option<u64> {
        self.inner
            .shared
            .data
            .load()
            .as_ref()
            .and_then(|d| d.revision)
    }

    /// Cluster id of the data held.
    pub fn cluster_id(&self) -> Option<String> {
        self.inner
            .shared
            .data
            .load()
            .as_ref()
            .and_then(|d| d.cluster_id.clone())
    }

    /// Where the data held came from (`Default`: none).
    pub fn source(&self) -> Source {
        self.inner
            .shared
            .data
            .load()
            .as_ref()
            .map_or(Source::Default, |d| d.source)
    }

    /// Proven age of the data held (`None`: unknown).
    pub fn data_age(&self) -> Option<Duration> {
        self.inner.shared.age()
    }

    /// The last fault reported talking to the cluster.
    pub fn last_error(&self) -> Option<String> {
        self.inner
            .shared
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
    }

    /// Counters for metrics.
    pub fn metrics(&self) -> Metrics {
        let c = &self.inner.shared.counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Metrics {
            snapshots_accepted: l(&c.snapshots_accepted),
            changes_applied: l(&c.changes_applied),
            rollbacks_refused: l(&c.rollbacks_refused),
            reconnects: l(&c.reconnects),
            stale_transitions: l(&c.stale_transitions),
            lkg_writes: l(&c.lkg_writes),
            lkg_write_errors: l(&c.lkg_write_errors),
            malformed_responses: l(&c.malformed_responses),
            limits_exceeded: l(&c.limits_exceeded),
            events_sent_batches: l(&c.events_sent_batches),
            events_backlog_batches: l(&c.events_backlog_batches),
            events_dropped: l(&c.events_dropped),
            events_invalid_names: l(&c.events_invalid_names),
        }
    }

    /// Calls `f` on every event (status transitions, errors, changes). Runs on the client's
    /// background task; keep it short. Listeners live as long as the client: one that holds a
    /// clone of this `Client` keeps it running until [`Client::close`].
    pub fn on_event(&self, f: impl Fn(&Event) + Send + Sync + 'static) {
        self.inner
            .shared
            .listeners
            .with(|l| l.events.push(Arc::new(f)));
    }

    /// Calls `f` with every accepted update that changed any flag, with old and new values
    /// evaluated for an empty context.
    pub fn on_change(&self, f: impl Fn(&ChangeSet) + Send + Sync + 'static) {
        self.inner
            .shared
            .listeners
            .with(|l| l.changes.push(Arc::new(f)));
    }

    /// Calls `f` when the value or variant of flag `key` for `ctx` changes.
    pub fn on_flag_change(
        &self,
        key: impl Into<String>,
        ctx: Context,
        f: impl Fn(&FlagChange) + Send + Sync + 'static,
    ) {
        let key = key.into();
        self.inner
            .shared
            .listeners
            .with(|l| l.flags.push((key, ctx, Arc::new(f))));
    }

    /// Stops the background work (also done when the last clone is dropped). Evaluation keeps
    /// working on the data held. Returns at once; the event sender then makes one last
    /// attempt, bounded by one second, to send the experiment events not yet sent (await
    /// [`shutdown`](Self::shutdown) to know it is done).
    pub fn close(&self) {
        let _ = self.inner.stop.send(true);
    }

    /// [`close`](Self::close), then waits until the background work has ended, its last
    /// experiment-event flush included (bounded by one second), so that a process may exit
    /// right after without losing the last interval's events. Evaluation keeps working.
    pub async fn shutdown(&self) {
        self.close();
        let mut ended = self.inner.ended.clone();
        // An error: the work never started, or has ended and dropped its sender.
        let _ = ended.wait_for(|done| *done).await;
    }

    /// `INVALID_CONTEXT` when `ctx` is larger than `Limits::max_context_bytes`.
    fn context_fault(&self, ctx: &Context) -> Option<EvaluationError> {
        let limit = self.inner.shared.cfg.limits.max_context_bytes;
        ctx.exceeds_bytes(limit).then(|| {
            EvaluationError::new(
                ErrorCode::InvalidContext,
                format!(
                    "context: the evaluation context is larger than the limit of {limit} bytes"
                ),
            )
        })
    }

    fn run<T>(&self, ctx: &Context, default: T, eval: impl FnOnce(&DataSet) -> T) -> T {
        if self.context_fault(ctx).is_some() {
            return default;
        }
        with_data(&self.inner.shared, |data| match data {
            None => default,
            // FlagSet evaluation does not panic; this is a second line of defence.
            Some(d) => catch_unwind(AssertUnwindSafe(|| eval(d))).unwrap_or(default),
        })
    }

    /// The value of `e`, after counting its exposure if `key` may run an experiment: for any
    /// other flag, one branch.
    #[inline(always)]
    fn counted<T>(&self, d: &DataSet, key: &str, ctx: &Context, e: Evaluation<'_, T>) -> T {
        if d.experiments.may_include(key) {
            self.expose(d, key, ctx, e.variant, e.reason, e.error.is_none());
        }
        e.value
    }

    /// Counts an exposure when `key` runs an experiment and the evaluation chose a variant.
    /// Reached only for flags whose key length an experiment flag shares.
    #[inline(never)]
    fn expose(
        &self,
        d: &DataSet,
        key: &str,
        ctx: &Context,
        variant: Option<&str>,
        reason: Reason,
        ok: bool,
    ) {
        let Some(recorder) = &self.inner.shared.events else {
            return;
        };
        let Some(variant) = variant.filter(|_| ok) else {
            return;
        };
        if matches!(reason, Reason::Disabled | Reason::Error) {
            return;
        }
        if d.flags.get(key).and_then(|f| f.experiment()).is_some() {
            recorder.expose(key, variant, ctx.targeting_key());
        }
    }

    /// Records a conversion: for every experiment flag of the data held that counts `event`
    /// (one of its `metrics`), evaluates the flag for `ctx` (no exposure is counted for it)
    /// and, when a variant is chosen, adds one conversion of `event` to that variant, with
    /// `ctx`'s targeting key among its converting users and `value` (when finite) in its sum.
    /// A value that is not finite is ignored, the conversion still counts.
    ///
    /// Never blocks on the network, does no I/O and never panics: it takes the events' mutex
    /// once, and the sender sends the counts every [`Config::events_interval`]. An invalid
    /// event name ([`flagstaff_flags::is_event_name`]) is ignored and counted in
    /// [`Metrics::events_invalid_names`]; with events disabled nothing is recorded.
    pub fn track(&self, event: &str, ctx: &Context, value: Option<f64>) {
        let shared = &self.inner.shared;
        if !flagstaff_flags::is_event_name(event) {
            shared
                .counters
                .events_invalid_names
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(recorder) = &shared.events else {
            return;
        };
        if self.context_fault(ctx).is_some() {
            return;
        }
        let _ = catch_unwind(AssertUnwindSafe(|| {
            with_data(shared, |data| {
                let Some(d) = data else {
                    return;
                };
                let mut arms: Vec<(&str, &str)> = Vec::new();
                for key in d.flags.experiment_keys() {
                    let counts = d
                        .flags
                        .get(key)
                        .and_then(|f| f.experiment())
                        .is_some_and(|x| x.counts(event));
                    if !counts {
                        continue;
                    }
                    let r = d.flags.resolve(key, ctx);
                    if let (Some(variant), None) = (r.variant, &r.error) {
                        if !matches!(r.reason, Reason::Disabled | Reason::Error) {
                            arms.push((key, variant));
                        }
                    }
                }
                recorder.convert(&arms, event, ctx.targeting_key(), value);
            })
        }));
    }

    fn details<T: Clone>(
        &self,
        key: &str,
        ctx: &Context,
        default: T,
        eval: impl FnOnce(&FlagSet) -> Owned<T>,
    ) -> Details<T> {
        let shared = &self.inner.shared;
        if let Some(error) = self.context_fault(ctx) {
            return Details {
                value: default,
                variant: None,
                reason: Reason::Error,
                error: Some(error),
                metadata: Map::new(),
                source: Source::Default,
                revision: None,
                age: None,
                stale: false,
            };
        }
        with_data(shared, |data| {
            let Some(d) = data else {
                return Details {
                    value: default,
                    variant: None,
                    reason: Reason::Error,
                    error: Some(EvaluationError::new(
                        ErrorCode::ProviderNotReady,
                        "no flag data yet: no node answered and no LKG or bootstrap data",
                    )),
                    metadata: Map::new(),
                    source: Source::Default,
                    revision: None,
                    age: None,
                    stale: false,
                };
            };
            let age = shared.age();
            let stale = age.is_none_or(|a| a > shared.cfg.stale_after);
            let fallback = default.clone();
            let o = catch_unwind(AssertUnwindSafe(|| eval(&d.flags))).unwrap_or_else(|_| Owned {
                value: fallback,
                variant: None,
                reason: Reason::Error,
                error: Some(EvaluationError::new(
                    ErrorCode::General,
                    "evaluation failed unexpectedly",
                )),
                metadata: Map::new(),
            });
            if d.experiments.may_include(key) {
                self.expose(
                    d,
                    key,
                    ctx,
                    o.variant.as_deref(),
                    o.reason,
                    o.error.is_none(),
                );
            }
            let source = if o.reason == Reason::Error || o.variant.is_none() {
                Source::Default
            } else {
                d.source
            };
            Details {
                value: o.value,
                variant: o.variant,
                reason: o.reason,
                error: o.error,
                metadata: o.metadata,
                source,
                revision: d.revision,
                age,
                stale,
            }
        })
    }

    /// The boolean value of flag `key` for `ctx`, or `default`.
    pub fn bool(&self, key: &str, ctx: &Context, default: bool) -> bool {
        self.run(ctx, default, |d| {
            self.counted(d, key, ctx, d.flags.boolean(key, ctx, default))
        })
    }

    /// The string value of flag `key` for `ctx`, or `default`.
    pub fn string(&self, key: &str, ctx: &Context, default: &str) -> String {
        if self.context_fault(ctx).is_some() {
            return default.to_string();
        }
        with_data(&self.inner.shared, |data| match data {
            None => default.to_string(),
            Some(d) => catch_unwind(AssertUnwindSafe(|| {
                self.counted(d, key, ctx, d.flags.string(key, ctx, default))
                    .to_string()
            }))
            .unwrap_or_else(|_| default.to_string()),
        })
    }

    /// The integer value of flag `key` for `ctx`, or `default`.
    pub fn i64(&self, key: &str, ctx: &Context, default: i64) -> i64 {
        self.run(ctx, default, |d| {
            self.counted(d, key, ctx, d.flags.integer(key, ctx, default))
        })
    }

    /// The float value of flag `key` for `ctx`, or `default`.
    pub fn f64(&self, key: &str, ctx: &Context, default: f64) -> f64 {
        self.run(ctx, default, |d| {
            self.counted(d, key, ctx, d.flags.float(key, ctx, default))
        })
    }

    /// The object value of flag `key` for `ctx`, or `default`.
    pub fn object(&self, key: &str, ctx: &Context, default: &Value) -> Value {
        if self.context_fault(ctx).is_some() {
            return default.clone();
        }
        with_data(&self.inner.shared, |data| match data {
            None => default.clone(),
            Some(d) => catch_unwind(AssertUnwindSafe(|| {
                self.counted(d, key, ctx, d.flags.object(key, ctx, default))
                    .clone()
            }))
            .unwrap_or_else(|_| default.clone()),
        })
    }

    /// [`Client::bool`] with details.
    pub fn bool_details(&self, key: &str, ctx: &Context, default: bool) -> Details<bool> {
        self.details(key, ctx, default, |f| {
            owned(f.boolean(key, ctx, default), |v| v)
        })
    }

    /// [`Client::string`] with details.
    pub fn string_details(&self, key: &str, ctx: &Context, default: &str) -> Details<String> {
        self.details(key, ctx, default.to_string(), |f| {
            owned(f.string(key, ctx, default), str::to_string)
        })
    }

    /// [`Client::i64`] with details.
    pub fn i64_details(&self, key: &str, ctx: &Context, default: i64) -> Details<i64> {
        self.details(key, ctx, default, |f| {
            owned(f.integer(key, ctx, default), |v| v)
        })
    }

    /// [`Client::f64`] with details.
    pub fn f64_details(&self, key: &str, ctx: &Context, default: f64) -> Details<f64> {
        self.details(key, ctx, default, |f| {
            owned(f.float(key, ctx, default), |v| v)
        })
    }

    /// [`Client::object`] with details.
    pub fn object_details(&self, key: &str, ctx: &Context, default: &Value) -> Details<Value> {
        self.details(key, ctx, default.clone(), |f| {
            owned(f.object(key, ctx, default), Value::clone)
        })
    }
}
