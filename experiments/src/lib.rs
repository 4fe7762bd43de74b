//! `flagstaff-experiments`: the statistics behind Flagstaff's A/B test results, and the
//! distinct-count sketch that counts the users they are computed from.
//!
//! Pure: no I/O, no async, no clock, no randomness. The node aggregates exposures and
//! conversions per arm, the SDK may pre-aggregate users in sketches; both hand their numbers to
//! this crate, so every reader of an experiment sees the same results.
//!
//! - **[`DistinctCount`]**: a HyperLogLog sketch (precision 14, Ertl's improved raw
//!   estimator) with a stable [`key_hash`], merge, and a validated sparse wire form with deltas.
//! - **[`stats`]**: ln Γ, the incomplete gamma functions, normal and chi-squared
//!   distributions, always-valid confidence sequences (Howard et al. 2021) and the
//!   sample-ratio-mismatch test.
//! - **[`analyse`]**: one experiment's [`Report`] from its [`ArmInput`]s: rates, relative
//!   uplifts against control, mean values, each with an interval that stays valid however often
//!   it is looked at, and an SRM check.
//!
//! Guarantees: no function panics on any input, and [`analyse`] never puts a NaN or an
//! infinity in a report. See `experiments/README.md` for the methods and their caveats.

#![warn(missing_docs)]

mod results;
mod sketch;
pub mod stats;

pub use results::{
    analyse, AnalysisError, ArmInput, ArmReport, ArmShare, Comparison, Estimate, MetricInput,
    MetricReport, Report, Settings, Srm,
};
pub use sketch::{
    key_hash, DistinctCount, SketchDecodeError, SparseFault, MAX_RANK, PRECISION, REGISTERS,
};
