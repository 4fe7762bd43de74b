//! `flagstaff-flags`: the flag model shared by the Flagstaff node and SDK.
//!
//! Pure: no I/O, no async, no clock (the evaluation time is passed in with the [`Context`]).
//! One implementation decides what a user sees, so the service and the application can never
//! disagree.
//!
//! - **Validation** of flagd-compatible definitions, every fault with its JSON path:
//!   [`validate_flag`], [`validate_segment`], [`validate_document`], and the `$ref` helpers
//!   [`flag_refs`], [`rule_refs`], [`find_ref_cycle`].
//! - **Definitions** as typed serde values that read and write flagd's JSON and round-trip:
//!   [`FlagDefinition`], [`FlagdDocument`] (`from_json` validates, `to_json` writes).
//! - **Evaluation**: [`FlagSet`] compiles flags and segments once; [`FlagSet::boolean`],
//!   [`FlagSet::string`], [`FlagSet::integer`], [`FlagSet::float`], [`FlagSet::object`] and the
//!   untyped [`FlagSet::resolve`] return value, variant, [`Reason`], [`ErrorCode`] and metadata.
//! - **Bucketing**: `fractional` hashes exactly as flagd does, with either of its algorithms
//!   chosen per flag by `fractionalAlgorithm` ([`FractionalAlgorithm`]: `v2`, the default, the
//!   UTF-8 bucketing string as flagd's daemon and the Go/Java/.NET/Node providers hash it; `v3`,
//!   its canonical CBOR as the Python provider does); both [`murmur3_x86_32`] with seed 0 and
//!   `bucket = (hash * total_weight) >> 32`; frozen by `tests/cases/bucketing.json` and
//!   `tests/cases/bucketing_v3.json`.
//!
//! Guarantees: no function of this crate panics on any input JSON; evaluation allocates
//! nothing for boolean and numeric results (checked by `tests/no_alloc.rs`).
//!
//! Checking it (see `flags/README.md`): `cargo nextest run --workspace -E
//! 'package(flagstaff-flags)'` runs the data-file tables, property tests and the allocation test;
//! `cargo bench --workspace --bench evaluate` compares against `datalogic-rs` in the same run;
//! `flags/fuzz/run.sh 60` builds the libFuzzer target on the stable toolchain and fuzzes parse →
//! validate → compile → evaluate for 60 seconds.

mod bucketing;
mod compiled_rule;
mod context;
mod definition;
mod evaluation;
mod fault;
mod flag;
mod flag_set;
pub mod limits;
mod murmur3;
mod refs;
mod rule;
mod semver;
mod validate;

pub use bucketing::FractionalAlgorithm;
pub use compiled_rule::CompiledRule;
pub use context::Context;
pub use definition::{
    ExperimentDefinition, FlagDefinition, FlagState, FlagdDocument, FLAGSTAFF_FLAG_FIELDS,
};
pub use evaluation::{ErrorCode, Evaluation, EvaluationError, Reason, Resolution};
pub use fault::Fault;
pub use flag::{is_event_name, CompiledFlag, Experiment, VariantType};
pub use flag_set::FlagSet;
pub use murmur3::murmur3_x86_32;
pub use refs::{check_segment_graph, find_ref_cycle, flag_refs, rule_refs, RefFault};
pub use validate::{
    validate_document, validate_document_as_flagd, validate_flag, validate_flag_as_flagd,
    validate_segment,
};
