//! State shared between the evaluating threads and the background tasks: the current data
//! set (atomically swapped), the freshness proof, the status, listeners and metrics.
//!
//! Only the background task writes data; it decides here, in one place, what is accepted:
//! never a lower revision of the same cluster, always a new cluster's state (a fresh start).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use flagstaff_flags::Context;
use tokio::sync::watch;

use crate::config::Config;
use crate::data_set::{DataSet, Source};
use crate::endpoints::Endpoints;
use crate::events::{contained, ChangeSet, Event, FlagChange, Registry, Status};
use crate::experiment_events::Recorder;
use crate::wire::{WireChange, WireSnapshot};

const NO_PROOF: i64 = i64::MIN;

/// Client ids start at 1 (0 marks an empty `thread_cache` slot).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Counters for the application's metrics system (all monotonic).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub snapshots_accepted: AtomicU64,
    pub changes_applied: AtomicU64,
    pub rollbacks_refused: AtomicU64,
    pub reconnects: AtomicU64,
    pub stale_transitions: AtomicU64,
    pub lkg_writes: AtomicU64,
    pub lkg_write_errors: AtomicU64,
    pub malformed_responses: AtomicU64,
    pub limits_exceeded: AtomicU64,
    pub events_sent_batches: AtomicU64,
    /// A gauge: batches waiting now.
    pub events_backlog_batches: AtomicU64,
    pub events_dropped: AtomicU64,
    pub events_invalid_names: AtomicU64,
}

/// What became of an offered snapshot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    Accepted,
    /// Same cluster, same revision: nothing new.
    Same,
    /// Same cluster, lower revision: refused.
    Older {
        held: u64,
    },
    /// Wrong namespace: refused.
    Foreign,
    /// Beyond the configured limits: refused, the data held is kept.
    Refused(String),
}

/// What became of a change event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChangeOutcome {
    Applied,
    Duplicate,
    /// A change between the held revision and this one was missed: resync.
    Gap,
    /// The state it leads to is beyond the configured limits: refused, the data held is kept.
    Refused(String),
}

pub(crate) struct Shared {
    pub cfg: Config,
    /// The endpoints and the rotation the sync loop and the event sender share.
    pub endpoints: Endpoints,
    /// Exposures and conversions of experiment flags; `None` when events are disabled
    /// (`events_interval` zero, or no endpoint to send them to).
    pub events: Option<Recorder>,
    /// The current data. Replace it only with [`Shared::store_data`], which moves the
    /// generation that evaluating threads check their own reference against.
    pub data: ArcSwapOption<DataSet>,
    /// Bumped after every store to `data` (see `thread_cache`).
    generation: AtomicU64,
    /// Unique in this process and never reused (unlike an address), for `thread_cache`.
    pub id: u64,
    /// [`crate::clock::now_ns`] when the client started.
    base: i64,
    base_wall_ms: i64,
    /// Monotonic time (ns since `base`) up to which the held data is proven complete.
    as_of: AtomicI64,
    pub status: watch::Sender<Status>,
    /// The cluster refused this client's credentials (reported as `Error` while no data).
    pub auth_refused: AtomicBool,
    pub listeners: Registry,
    pub counters: Counters,
    pub lkg_tx: watch::Sender<Option<Arc<DataSet>>>,
    pub last_error: Mutex<Option<String>>,
    /// Serialises data installs and status transitions (background tasks only, never
    /// evaluation), so READY is observable only after the change events that led to it.
    transitions: Mutex<()>,
    /// Highest revision ever held per cluster id, so that flapping between clusters (a
    /// misconfigured endpoint list) can never bring back an older state of either.
    high_water: Mutex<std::collections::HashMap<String, u64>>,
}

pub(crate) fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Shared {
    pub fn new(cfg: Config) -> Self {
        let events =
            (!cfg.events_interval.is_zero() && !cfg.endpoints.is_empty()).then(Recorder::new);
        Self {
            endpoints: Endpoints::new(cfg.endpoints.clone()),
            events,
            cfg,
            data: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            base: crate::clock::now_ns(),
            base_wall_ms: unix_ms_now(),
            as_of: AtomicI64::new(NO_PROOF),
            status: watch::channel(Status::NotReady).0,
            auth_refused: AtomicBool::new(false),
            listeners: Registry::default(),
            counters: Counters::default(),
            lkg_tx: watch::channel(None).0,
            last_error: Mutex::new(None),
            transitions: Mutex::new(()),
            high_water: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Swaps in new data, then moves the generation: a thread that sees the new generation
    /// loads this data or a later one.
    fn store_data(&self, data: Arc<DataSet>) {
        self.data.store(Some(data));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The generation of `data` (see [`Shared::store_data`]).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Monotonic now (suspend included where possible), ns since the client started.
    pub fn now_ns(&self) -> i64 {
        crate::clock::now_ns().saturating_sub(self.base)
    }

    /// Proven age of the data held; `None` when there is no proof (bootstrap data, or no
    /// proof received yet).
    pub fn age(&self) -> Option<Duration> {
        let as_of = self.as_of.load(Ordering::Acquire);
        if as_of == NO_PROOF {
            return None;
        }
        Some(Duration::from_nanos(
            self.now_ns().saturating_sub(as_of).max(0) as u64,
        ))
    }

    /// Records a proof: the data held reflects every write acknowledged up to `as_of_ns`.
    /// Proofs only move forward.
    pub fn prove(&self, as_of_ns: i64) {
        self.as_of.fetch_max(as_of_ns, Ordering::AcqRel);
    }

    /// The proof, as a wall-clock time (for the LKG file).
    pub fn as_of_unix_ms(&self) -> Option<u64> {
        let as_of = self.as_of.load(Ordering::Acquire);
        (as_of != NO_PROOF).then(|| (self.base_wall_ms + as_of / 1_000_000).max(0) as u64)
    }

    /// Sets the proof from a wall-clock time (an LKG file's), replacing any other.
    pub fn set_as_of_unix_ms(&self, unix_ms: Option<u64>) {
        let now_ms = unix_ms_now();
        let ns = match unix_ms.and_then(|ms| i64::try_from(ms).ok()) {
            // A time in the future (clock moved back, or a forged file) proves nothing.
            Some(ms) if ms <= now_ms => {
                let age_ms = now_ms - ms;
                self.now_ns()
                    .saturating_sub(age_ms.saturating_mul(1_000_000))
            }
            _ => NO_PROOF,
        };
        self.as_of.store(ns, Ordering::Release);
    }

    /// Cluster id and revision held, when the data came from a cluster.
    pub fn held(&self) -> Option<(String, u64)> {
        let d = self.data.load();
        let d = d.as_ref()?;
        Some((d.cluster_id.clone()?, d.revision?))
    }

    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    fn transition_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        match self.transitions.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Recomputes the status and emits the event of a transition.
    pub fn refresh_status(&self) {
        let _serial = self.transition_lock();
        self.refresh_status_locked();
    }

    fn refresh_status_locked(&self) {
        let data = self.data.load();
        let new = match data.as_ref() {
            None if self.auth_refused.load(Ordering::Acquire) => Status::Error,
            None => Status::NotReady,
            Some(_) => match self.age() {
                Some(age) if age <= self.cfg.stale_after => Status::Ready,
                _ => Status::Stale,
            },
        };
        let old = self.status.send_replace(new);
        if old == new {
            return;
        }
        tracing::info!(from = %old, to = %new, "flagstaff provider status");
        match new {
            Status::Ready => self.listeners.emit(&Event::Ready {
                revision: data.as_ref().and_then(|d| d.revision),
            }),
            Status::Stale => {
                self.counters
                    .stale_transitions
                    .fetch_add(1, Ordering::Relaxed);
                self.listeners.emit(&Event::Stale { age: self.age() })
            }
            Status::Error => {
                let message = self
                    .last_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .unwrap_or_else(|| "the cluster refuses this client".into());
                self.listeners.emit(&Event::Error {
                    endpoint: None,
                    message,
                    fatal: true,
                })
            }
            Status::NotReady => {}
        }
    }

    /// Installs data loaded at start (LKG or bootstrap), with no listeners to notify.
    pub fn install_initial(&self, data: DataSet, as_of_unix_ms: Option<u64>) {
        self.raise_high_water(&data);
        self.store_data(Arc::new(data));
        self.set_as_of_unix_ms(as_of_unix_ms);
    }

    /// Offers a whole-namespace snapshot from the network; `proof_ns` is the monotonic time
    /// up to which it is proven complete, if the node sent a proof.
    pub fn offer_snapshot(&self, snap: WireSnapshot, proof_ns: Option<i64>) -> Offer {
        if snap.namespace != self.cfg.namespace {
            return Offer::Foreign;
        }
        let current = self.data.load_full();
        let same_cluster = current
            .as_ref()
            .is_some_and(|d| d.cluster_id.as_deref() == Some(snap.cluster_id.as_str()));
        if same_cluster {
            let held = current.as_ref().and_then(|d| d.revision).unwrap_or(0);
            if snap.revision < held {
                self.counters
                    .rollbacks_refused
                    .fetch_add(1, Ordering::Relaxed);
                return Offer::Older { held };
            }
            if snap.revision == held {
                self.confirm(held, proof_ns);
                return Offer::Same;
            }
        } else if let Some(seen) = self.high_water(&snap.cluster_id) {
            // A cluster held before (then left for another): never an older state of it.
            if snap.revision < seen {
                self.counters
                    .rollbacks_refused
                    .fetch_add(1, Ordering::Relaxed);
                return Offer::Older { held: seen };
            }
        }
        let old_cluster = current.as_ref().and_then(|d| d.cluster_id.clone());
        let new_cluster = snap.cluster_id.clone();
        let next = match DataSet::from_snapshot(snap, &self.cfg.limits) {
            Ok(next) => next,
            Err(e) => return Offer::Refused(e.0),
        };
        self.note_oversized(&next);
        if !same_cluster {
            // A fresh start: the old proof says nothing about this cluster's data.
            self.as_of.store(NO_PROOF, Ordering::Release);
            if let Some(old) = &old_cluster {
                tracing::warn!(old = %old, new = %new_cluster, "flagstaff cluster id changed; fresh start");
                self.listeners.emit(&Event::ClusterChanged {
                    old: old_cluster.clone(),
                    new: new_cluster,
                });
            }
        }
        if let Some(p) = proof_ns {
            self.prove(p);
        }
        self.counters
            .snapshots_accepted
            .fetch_add(1, Ordering::Relaxed);
        self.install(current, next);
        Offer::Accepted
    }

    /// The node confirms the held revision (304, or a snapshot at the same revision): the data
    /// is now network data, proven as of `proof_ns`.
    pub fn confirm(&self, revision: u64, proof_ns: Option<i64>) {
        if let Some(p) = proof_ns {
            self.prove(p);
        }
        let current = self.data.load_full();
        if let Some(d) = current.as_ref() {
            if d.source != Source::Network && d.revision == Some(revision) {
                let relabeled = Arc::new(d.relabel(Source::Network));
                self.store_data(relabeled);
            }
        }
        self.refresh_status();
    }

    /// Applies a `change` event if it follows the held state.
    pub fn offer_change(&self, change: WireChange) -> ChangeOutcome {
        let current = self.data.load_full();
        let Some(cur) = current.as_ref() else {
            return ChangeOutcome::Gap;
        };
        let held = cur.revision.unwrap_or(0);
        if change.revision <= held {
            return ChangeOutcome::Duplicate;
        }
        // Revisions are cluster-wide: the held revision may be past the namespace's last
        // change, so only a previous change *after* it means one was missed.
        if change.prev_revision > held || cur.revision.is_none() {
            return ChangeOutcome::Gap;
        }
        let next = match cur.apply(change, &self.cfg.limits) {
            Ok(next) => next,
            Err(e) => return ChangeOutcome::Refused(e.0),
        };
        self.note_oversized(&next);
        self.counters
            .changes_applied
            .fetch_add(1, Ordering::Relaxed);
        self.install(current, next);
        ChangeOutcome::Applied
    }

    /// Logs and counts definitions that arrived too large to keep (they evaluate to
    /// `PARSE_ERROR`; the rest of the data was accepted).
    pub fn note_oversized(&self, data: &DataSet) {
        if data.oversized.is_empty() {
            return;
        }
        self.counters
            .limits_exceeded
            .fetch_add(data.oversized.len() as u64, Ordering::Relaxed);
        let message = format!(
            "{} definition(s) larger than {} bytes not kept; they evaluate to PARSE_ERROR: {}",
            data.oversized.len(),
            self.cfg.limits.max_definition_bytes,
            data.oversized.join(", ")
        );
        tracing::warn!("{message}");
        self.report_error(None, message);
    }

    fn high_water(&self, cluster: &str) -> Option<u64> {
        let map = self.high_water.lock().unwrap_or_else(|p| p.into_inner());
        map.get(cluster).copied()
    }

    fn raise_high_water(&self, data: &DataSet) {
        if let (Some(c), Some(r)) = (&data.cluster_id, data.revision) {
            let mut map = self.high_water.lock().unwrap_or_else(|p| p.into_inner());
            let e = map.entry(c.clone()).or_insert(r);
            *e = (*e).max(r);
        }
    }

    /// Swaps `next` in and tells whoever listens: LKG writer, change listeners, events.
    fn install(&self, old: Option<Arc<DataSet>>, next: DataSet) {
        let _serial = self.transition_lock();
        self.raise_high_water(&next);
        let next = Arc::new(next);
        self.store_data(next.clone());
        if next.source == Source::Network {
            self.lkg_tx.send_replace(Some(next.clone()));
        }
        let changed = DataSet::changed_flags(old.as_ref().map(|d| &d.raw), &next.raw);
        if !changed.is_empty() {
            self.notify_changes(old.as_deref(), &next, &changed);
            self.listeners.emit(&Event::ConfigurationChanged {
                revision: next.revision,
                flags: changed,
            });
        }
        // Last, so whoever waits for READY has seen the change events that led to it.
        self.refresh_status_locked();
    }

    fn notify_changes(&self, old: Option<&DataSet>, new: &DataSet, changed: &[String]) {
        let (changes, flags) = self
            .listeners
            .with(|l| (l.changes.clone(), l.flags.clone()));
        if changes.is_empty() && flags.is_empty() {
            return;
        }
        let now_s = unix_ms_now() / 1000;
        let eval = |key: &str, ctx: &Context| {
            let mut ctx = ctx.clone();
            if ctx.timestamp() == 0 {
                ctx.set_timestamp(now_s);
            }
            let resolve = |d: Option<&DataSet>| {
                d.map(|d| {
                    let r = d.flags.resolve(key, &ctx);
                    (r.value.cloned(), r.variant.map(str::to_string))
                })
                .unwrap_or((None, None))
            };
            let (old_value, old_variant) = resolve(old);
            let (new_value, new_variant) = resolve(Some(new));
            FlagChange {
                key: key.to_string(),
                old_value,
                new_value,
                old_variant,
                new_variant,
            }
        };
        if !changes.is_empty() {
            let empty = Context::new(now_s);
            let set = ChangeSet {
                old_revision: old.and_then(|d| d.revision),
                new_revision: new.revision,
                source: new.source,
                flags: changed.iter().map(|k| eval(k, &empty)).collect(),
            };
            for cb in changes {
                contained(|| cb(&set));
            }
        }
        for (key, ctx, cb) in flags {
            if changed.binary_search(&key).is_ok() {
                let change = eval(&key, &ctx);
                if change.old_value != change.new_value || change.old_variant != change.new_variant
                {
                    contained(|| cb(&change));
                }
            }
        }
    }

    pub fn report_error(&self, endpoint: Option<&str>, message: String) {
        tracing::debug!(endpoint = endpoint.unwrap_or(""), %message, "flagstaff client");
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(message.clone());
        }
        self.listeners.emit(&Event::Error {
            endpoint: endpoint.map(str::to_string),
            message,
            fatal: false,
        });
    }
}
