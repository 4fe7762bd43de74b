//! The OpenFeature Remote Evaluation Protocol: `POST /ofrep/v1/evaluate/flags[/{key}]`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `{"context": {"targetingKey": …, …}}`; the body and the context may be left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvaluationRequest {
    /// The evaluation context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub context: Option<Value>,
}

/// Why an evaluation answered what it did (OpenFeature's reasons): the evaluator's own type.
pub use flagstaff_flags::Reason;

/// A successful evaluation. A flag without a value for this context (no default variant)
/// leaves `value` and `variant` out, as OFREP allows; the provider then uses its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OfrepSuccess {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// `STATIC`, `TARGETING_MATCH`, `SPLIT`, `DEFAULT`, `DISABLED` or `UNKNOWN`.
    pub reason: Reason,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Map<String, Value>,
}

/// A failed evaluation or request, in OFREP's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OfrepError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `FLAG_NOT_FOUND`, `TYPE_MISMATCH`, `PARSE_ERROR`, `TARGETING_KEY_MISSING`,
    /// `INVALID_CONTEXT` or `GENERAL`.
    #[serde(rename = "errorCode")]
    pub error_code: String,
    #[serde(rename = "errorDetails")]
    pub error_details: String,
}

/// One flag of a bulk answer: its evaluation or its error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum BulkItem {
    Success(OfrepSuccess),
    Failure(OfrepError),
}

/// The answer to a bulk evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BulkEvaluation {
    pub flags: Vec<BulkItem>,
}
