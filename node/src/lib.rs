//! The Flagstaff node: wires the replicated store ([`flagstaff_raft_store`]) to the HTTP API,
//! the peer protocol, leader forwarding and the read paths.
//!
//! Start one with [`server::start`] (already-bound listeners, so tests can use port 0) or
//! [`server::run`] (until a shutdown future resolves).

pub mod api;
pub mod auth;
pub mod bounded_read;
pub mod clock;
pub mod config;
pub mod error;
pub mod event_intake;
pub mod fault_injection;
pub mod flag_sets;
pub mod flagd_sync;
pub mod hand_over;
pub mod listener;
pub mod metrics;
pub mod names;
pub mod node;
pub mod peer;
pub mod proposer;
pub mod rate_limit;
pub mod read_index;
pub mod server;
pub mod snapshot_cache;
pub mod takeover;
pub mod tls;
pub mod ui;
pub mod watch_hub;
pub mod watch_stream;
pub mod watch_writer;

pub use config::NodeConfig;
pub use error::ApiError;
pub use node::{Consistency, Node};
pub use server::{run, start, NodeError, RunningNode};
