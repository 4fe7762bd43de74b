//! Evaluation results: value, variant, reason, error code and metadata, with OpenFeature's names.

use serde_json::{Map, Value};
use std::fmt;

/// Why a value was chosen (OpenFeature's reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// No targeting: the default variant, always.
    Static,
    /// Targeting chose the variant.
    TargetingMatch,
    /// A `fractional` split chose the variant.
    Split,
    /// Targeting returned null (or there is none and no default variant): the default applies.
    Default,
    /// The flag is `DISABLED`.
    Disabled,
    /// Served from a cache (used by the SDK, never by this crate).
    Cached,
    /// Served from data older than the staleness bound (used by the SDK).
    Stale,
    /// Unknown.
    Unknown,
    /// Evaluation failed; see the error code. The caller's default is the value.
    Error,
}

impl Reason {
    /// The OpenFeature name, e.g. `TARGETING_MATCH`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "STATIC",
            Self::TargetingMatch => "TARGETING_MATCH",
            Self::Split => "SPLIT",
            Self::Default => "DEFAULT",
            Self::Disabled => "DISABLED",
            Self::Cached => "CACHED",
            Self::Stale => "STALE",
            Self::Unknown => "UNKNOWN",
            Self::Error => "ERROR",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong (OpenFeature's error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// No flag with that key.
    FlagNotFound,
    /// The flag's variants are not of the requested type.
    TypeMismatch,
    /// The flag's definition could not be compiled.
    ParseError,
    /// A targeting key was required and missing (reserved: like flagd, a `fractional` without a
    /// targeting key falls back to the default variant instead).
    TargetingKeyMissing,
    /// The evaluation context is malformed.
    InvalidContext,
    /// The provider has no data yet (used by the SDK).
    ProviderNotReady,
    /// The provider cannot recover (used by the SDK).
    ProviderFatal,
    /// Anything else, e.g. targeting returned a name that is not a variant.
    General,
}

impl ErrorCode {
    /// The OpenFeature name, e.g. `FLAG_NOT_FOUND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FlagNotFound => "FLAG_NOT_FOUND",
            Self::TypeMismatch => "TYPE_MISMATCH",
            Self::ParseError => "PARSE_ERROR",
            Self::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            Self::InvalidContext => "INVALID_CONTEXT",
            Self::ProviderNotReady => "PROVIDER_NOT_READY",
            Self::ProviderFatal => "PROVIDER_FATAL",
            Self::General => "GENERAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error code with a human-readable explanation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvaluationError {
    /// The OpenFeature error code.
    pub code: ErrorCode,
    /// What happened, for logs and `errorDetails`.
    pub message: String,
}

impl EvaluationError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for EvaluationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for EvaluationError {}

/// The untyped outcome of evaluating a flag, borrowing from the [`crate::FlagSet`].
///
/// `value` is `None` when the caller's own default applies: the flag has no default variant
/// (flagd's "code default"), or evaluation failed (`reason == Error`).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution<'a> {
    /// The chosen variant's value.
    pub value: Option<&'a Value>,
    /// The chosen variant's name.
    pub variant: Option<&'a str>,
    /// Why.
    pub reason: Reason,
    /// Set exactly when `reason == Reason::Error`.
    pub error: Option<EvaluationError>,
    /// The flag's metadata merged over the flag set's (the flag set's alone for an unknown flag).
    pub metadata: &'a Map<String, Value>,
}

impl Resolution<'_> {
    /// The variant a user was exposed to, for A/B test counting: a variant was chosen, the
    /// evaluation did not fail and the flag is not disabled.
    pub fn exposed_variant(&self) -> Option<&str> {
        if self.error.is_some() || matches!(self.reason, Reason::Error | Reason::Disabled) {
            return None;
        }
        self.variant
    }
}

/// A typed evaluation result. Never a panic: on any fault `value` is the caller's default,
/// `reason` is `Error` and `error` says why.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation<'a, T> {
    /// The value to use.
    pub value: T,
    /// The chosen variant's name (`None` when the caller's default is used).
    pub variant: Option<&'a str>,
    /// Why.
    pub reason: Reason,
    /// Set exactly when `reason == Reason::Error`.
    pub error: Option<EvaluationError>,
    /// The flag's metadata merged over the flag set's.
    pub metadata: &'a Map<String, Value>,
}

impl<T> Evaluation<'_, T> {
    /// The error code, if evaluation failed.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.error.as_ref().map(|e| e.code)
    }
}
