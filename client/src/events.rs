//! Provider status, events and change notifications, and the registry of listeners.
//!
//! Listeners run on the client's background task, never on an evaluating thread. A listener
//! that panics is contained (the panic is caught and logged) and does not stop the client.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flagstaff_flags::Context;
use serde_json::Value;

use crate::data_set::Source;

/// The provider status, in OpenFeature's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// No data from any source yet.
    NotReady,
    /// Data whose proven age is within the configured bound.
    Ready,
    /// Data is held but older than the bound, or its age is unknown (bootstrap file).
    /// Values keep coming from it.
    Stale,
    /// No data, and the cluster refuses this client (e.g. the SDK key is not accepted).
    Error,
}

impl Status {
    /// `NOT_READY`, `READY`, `STALE` or `ERROR`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotReady => "NOT_READY",
            Self::Ready => "READY",
            Self::Stale => "STALE",
            Self::Error => "ERROR",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One flag whose outcome may have changed, with its value before and after, evaluated for
/// the listener's context (`None`: absent, or the caller's default would apply).
#[derive(Debug, Clone, PartialEq)]
pub struct FlagChange {
    /// The flag key.
    pub key: String,
    /// Value before the change.
    pub old_value: Option<Value>,
    /// Value after the change.
    pub new_value: Option<Value>,
    /// Variant before the change.
    pub old_variant: Option<String>,
    /// Variant after the change.
    pub new_variant: Option<String>,
}

/// Everything one accepted update changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeSet {
    /// Revision held before (`None`: bootstrap data or nothing).
    pub old_revision: Option<u64>,
    /// Revision now held.
    pub new_revision: Option<u64>,
    /// Where the new data came from.
    pub source: Source,
    /// Changed flags, by key, evaluated with an empty context.
    pub flags: Vec<FlagChange>,
}

/// Something the application may want to know about. `#[non_exhaustive]`: new kinds may come.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Status became [`Status::Ready`] (`PROVIDER_READY`).
    Ready {
        /// Revision held.
        revision: Option<u64>,
    },
    /// Status became [`Status::Stale`] (`PROVIDER_STALE`): the data is older than the bound.
    Stale {
        /// Proven age of the data held, `None` when unknown.
        age: Option<Duration>,
    },
    /// A fault talking to a node (`PROVIDER_ERROR` when `fatal`: no data and the cluster
    /// refuses this client). The client keeps retrying either way.
    Error {
        /// The endpoint, if the fault came from one.
        endpoint: Option<String>,
        /// What happened.
        message: String,
        /// True when the status is now [`Status::Error`].
        fatal: bool,
    },
    /// New data was accepted (`PROVIDER_CONFIGURATION_CHANGED`).
    ConfigurationChanged {
        /// Revision now held.
        revision: Option<u64>,
        /// Keys of flags whose outcome may have changed.
        flags: Vec<String>,
    },
    /// The cluster id changed (a restored or rebuilt cluster): its state was taken as a
    /// fresh start, even at a lower revision.
    ClusterChanged {
        /// The cluster id held before.
        old: Option<String>,
        /// The new one.
        new: String,
    },
    /// The last-known-good file was refused (corrupt, truncated, other namespace or key) or
    /// could not be written. Never trusted when refused.
    LkgProblem {
        /// What was wrong.
        message: String,
    },
    /// The bootstrap document could not be read or parsed.
    BootstrapProblem {
        /// What was wrong.
        message: String,
    },
    /// A node sent data older than the revision held (same cluster); it was refused.
    RollbackRefused {
        /// The endpoint.
        endpoint: String,
        /// Revision held.
        held: u64,
        /// Revision offered.
        offered: u64,
    },
}

pub(crate) type EventListener = Arc<dyn Fn(&Event) + Send + Sync>;
pub(crate) type ChangeListener = Arc<dyn Fn(&ChangeSet) + Send + Sync>;
pub(crate) type FlagListener = Arc<dyn Fn(&FlagChange) + Send + Sync>;

#[derive(Default)]
pub(crate) struct Listeners {
    pub events: Vec<EventListener>,
    pub changes: Vec<ChangeListener>,
    pub flags: Vec<(String, Context, FlagListener)>,
}

/// The listener registry. Registration takes a short lock; dispatch clones the list first
/// so a listener can register another without deadlock.
#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Listeners>,
}

impl Registry {
    pub fn with<R>(&self, f: impl FnOnce(&mut Listeners) -> R) -> R {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    pub fn emit(&self, event: &Event) {
        let list = self.with(|l| l.events.clone());
        for cb in list {
            contained(|| cb(event));
        }
    }
}

/// Runs application code, containing a panic.
pub(crate) fn contained(f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!("a flagstaff listener panicked; the panic was contained");
    }
}
