//! The types of Flagstaff's HTTP API: what requests carry, what the node answers, its errors
//! and the watch stream's events. The node serializes them, the CLI, the console, the SDK and
//! the tests deserialize them, and (with the `openapi` feature) the node's OpenAPI document
//! describes them, so the document, the server and its clients cannot drift apart.
//!
//! Field names and values are the wire format: a change here is a change of the API.

pub mod admin;
pub mod cluster;
pub mod error;
pub mod experiments;
pub mod flagd;
pub mod history;
pub mod keys;
pub mod ofrep;
pub mod sdk;

pub use error::{ErrorBody, ErrorDetail, FaultBody};
