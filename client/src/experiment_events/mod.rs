//! A/B tests in the SDK: exposures counted at evaluation, conversions recorded by
//! [`crate::Client::track`], and the background task that sends them to the cluster.
//!
//! - `aggregate`: the per-interval counts and sketches behind one mutex.
//! - `batch`: the request body and the cut into batches of at most 1,000 entries per list.
//! - `backlog`: batches not yet accepted, bounded, and the accounting of dropped events.
//! - `sender`: every `events_interval`, the aggregates into the backlog and the backlog to
//!   `POST /v1/namespaces/{ns}/events`, oldest first, through the sync loop's HTTP client and
//!   endpoint rotation.

mod aggregate;
mod backlog;
mod batch;
mod sender;

pub(crate) use aggregate::Recorder;
pub(crate) use sender::run;
