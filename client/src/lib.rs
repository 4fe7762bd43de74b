//! `flagstaff-client`: the Rust SDK for Flagstaff. It evaluates flags in-process with
//! `flagstaff-flags` (the node's own evaluator), follows the cluster in the background and
//! never lets the application down.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! let client = flagstaff_client::Client::builder("checkout", "sdk-key")
//!     .endpoints(["http://10.0.0.1:7701", "http://10.0.0.2:7701", "http://10.0.0.3:7701"])
//!     .lkg_file("/var/lib/myapp/flags.lkg")
//!     .bootstrap_file("flags.json")
//!     .build()?;                                             // returns at once
//! let _ = client.wait_ready(Duration::from_secs(2)).await;    // optional
//! let ctx = flagstaff_client::context().with_targeting_key("user-1");
//! if client.bool("new-checkout", &ctx, false) { /* … */ }
//! # Ok(()) }
//! ```
//!
//! Guarantees:
//! - **Never blocks, never panics**: `build` returns at once (it reads the local LKG and
//!   bootstrap files, nothing else); evaluation reads an atomically swapped snapshot (through
//!   a per-thread reference checked with one atomic load), does no I/O and takes no lock
//!   (but a short one, never held across an await, to count an exposure of an A/B test's
//!   flag); on any fault it returns the caller's default with reason `ERROR`.
//! - **A/B tests**: evaluations of flags with an `experiment` field count exposures per
//!   variant, [`Client::track`] records conversions, and a background task sends them every
//!   [`Config::events_interval`] (bounded backlog, retries with the same batch id).
//! - **Sources, best first**: network → last-known-good file → bootstrap document → default;
//!   every [`Details`] says which, at which revision, and how old.
//! - **Never goes back**: within one cluster id, data at a lower revision than held is refused
//!   (requests carry `min_revision`/`since`), also across restarts through the LKG file. A new
//!   cluster id is a fresh start, reported as [`Event::ClusterChanged`].
//! - **Honest age**: data age comes from the nodes' staleness proofs plus local time since
//!   receipt; past [`Config::stale_after`] details say `stale: true` and the status is
//!   [`Status::Stale`] with an [`Event::Stale`].
//! - **Bounded**: whatever a node or a file sends, the data held stays within [`Limits`]
//!   (bodies, stream lines and files are cut off at their limit while read); anything beyond
//!   is refused, the data held kept, and the fault reported and counted. Every request has a
//!   timeout; a hostile definition degrades only the flags it touches (`PARSE_ERROR`).

mod backoff;
mod client;
mod clock;
mod config;
mod data_set;
mod endpoints;
mod events;
mod experiment_events;
pub mod lkg;
#[cfg(feature = "openfeature")]
pub mod provider;
mod shared;
pub mod sse;
mod sync_loop;
mod thread_cache;
mod wire;

pub use client::{context, Client, ClientBuilder, Details, LoadOutcome, Metrics, StartupReport};
pub use config::{Config, ConfigError, Limits};
pub use data_set::Source;
pub use events::{ChangeSet, Event, FlagChange, Status};
pub use flagstaff_flags::{Context, ErrorCode, EvaluationError, Reason};
