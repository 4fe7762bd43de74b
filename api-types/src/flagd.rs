//! flagd documents: `GET|PUT /v1/namespaces/{ns}/flagd`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::FaultBody;

/// The `$schema` of an exported document.
pub const FLAGD_SCHEMA: &str = "https://flagd.dev/schema/v0/flags.json";

/// A flagd `flags.json` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlagdDocument {
    /// [`FLAGD_SCHEMA`] in an export.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Flag key → flagd flag definition.
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, Object>))]
    pub flags: Map<String, Value>,
    /// Segment key → JsonLogic rule (flagd's shared evaluators).
    #[serde(rename = "$evaluators", default, skip_serializing_if = "Map::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, Object>))]
    pub evaluators: Map<String, Value>,
}

/// The answer to an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Imported {
    pub namespace: String,
    /// How many flags the namespace now holds.
    pub flags: usize,
    /// How many segments the namespace now holds.
    pub segments: usize,
    pub revision: u64,
    /// What was imported although Flagstaff refuses it for new writes, because flagd accepts
    /// it: each with its path, evaluated as flagd does it (a branch naming no variant answers
    /// `GENERAL`, an operator that cannot work answers null, a flag whose targeting flagd
    /// cannot parse answers `PARSE_ERROR`).
    #[serde(default)]
    pub warnings: Vec<FaultBody>,
}
