//! Checkers: pure functions from a recorded history to anomalies.

pub mod bounded;
pub mod linearizable;
pub mod register;
pub mod sdk;
pub mod set;
pub mod watch;
