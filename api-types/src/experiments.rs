//! A/B tests: the answers of `POST /v1/namespaces/{ns}/events` and
//! `GET /v1/namespaces/{ns}/experiments[/{flag}]`.

use std::collections::BTreeMap;

pub use flagstaff_experiments::Report;
use serde::{Deserialize, Serialize};

/// What the node did with a batch of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventsRecorded {
    pub batch: Option<String>,
    /// The batch had been recorded before: nothing was added this time.
    pub duplicate: bool,
    pub exposures: u64,
    pub conversions: u64,
    /// Entries that count for no running experiment (an unknown flag, variant or metric, a
    /// flag that is not an experiment), with their paths. They are not an error: an SDK
    /// whose data is a little behind may send them.
    pub ignored: Vec<Ignored>,
}

/// One entry that counted for nothing, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ignored {
    pub path: String,
    pub reason: String,
}

/// One experiment flag with recorded data, or running now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExperimentSummary {
    pub flag: String,
    /// The definition has an `experiment` field now.
    pub running: bool,
    pub control: Option<String>,
    pub metrics: Vec<String>,
    pub exposures: u64,
    pub first_event_ms: Option<u64>,
    pub last_event_ms: Option<u64>,
}

/// `GET …/{ns}/experiments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExperimentList {
    pub experiments: Vec<ExperimentSummary>,
}

/// One bucket of an arm's time series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeriesPoint {
    pub start_ms: u64,
    pub width_ms: u64,
    pub exposures: u64,
    pub conversions: u64,
}

/// One variant's time series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArmSeries {
    pub variant: String,
    pub points: Vec<SeriesPoint>,
}

/// Where the weights of the sample-ratio check come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum WeightsFrom {
    /// The flag's first `fractional` split.
    Fractional,
    /// No split found: equal weights.
    Equal,
}

/// `GET …/{ns}/experiments/{flag}`: an experiment's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExperimentResults {
    pub flag: String,
    pub running: bool,
    pub control: String,
    pub metrics: Vec<String>,
    /// The configured split the sample-ratio check compares with, by variant.
    pub weights: BTreeMap<String, f64>,
    /// `fractional` (read from the flag's targeting) or `equal` (no split found).
    pub weights_from: WeightsFrom,
    pub first_event_ms: Option<u64>,
    pub last_event_ms: Option<u64>,
    /// Per variant: exposures, users, conversions, rates with always-valid 95% intervals,
    /// uplift over control with its interval, chance to beat control; and the SRM check.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub report: Report,
    pub series: Vec<ArmSeries>,
}
