//! `flagstaff-flags`: the flag model shared by the Flagstaff node and SDK.
//!
//! Pure: no I/O, no async, no clock (the evaluation time is passed in). One implementation
//! decides what a user sees, so the service and the application can never disagree.
//!
//! - Validation of flagd-compatible definitions, every fault with its JSON path:
//!   [`validate_flag`], [`validate_segment`], [`validate_document`], plus `$ref` helpers
//!   [`flag_refs`], [`rule_refs`], [`find_ref_cycle`].
//!
//! No function of this crate panics on any input JSON.

mod fault;
#[allow(dead_code)] // evaluation uses the rest; it lands next
mod flag;
mod refs;
#[allow(dead_code)]
mod rule;
#[allow(dead_code)]
mod semver;
mod validate;

pub use fault::Fault;
pub use flag::{CompiledFlag, VariantType};
pub use refs::{find_ref_cycle, flag_refs, rule_refs};
pub use validate::{validate_document, validate_flag, validate_segment};
