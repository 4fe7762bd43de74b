//! The one error type of the HTTP API and the one place that maps errors to status codes.
//!
//! Every error answers `{"error":{"code":"…","message":"…"}}`; validation errors add
//! `"faults":[{"path":…,"message":…}]`, and 412 adds `"current_version"` ([`ErrorBody`], which
//! is also the schema the OpenAPI document gives every error; the types are `flagstaff-api`'s).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flagstaff_raft_store::ApplyError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        faults: Vec<flagstaff_flags::Fault>,
    },
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("precondition failed: current version is {current:?}")]
    PreconditionFailed { current: Option<u64> },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    RequestTimeout(String),
    #[error("idempotency key was already used for a different request")]
    IdempotencyKeyReused,
    #[error("no leader is known; the write was not sent")]
    NoLeader,
    #[error("{0}")]
    StaleReplica(String),
    #[error("the write was sent but its outcome is unknown; retry with the same Idempotency-Key")]
    OutcomeUnknown,
    #[error("{0}")]
    Unavailable(String),
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            faults: Vec::new(),
        }
    }

    pub fn invalid(faults: Vec<flagstaff_flags::Fault>) -> Self {
        let message = faults
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        ApiError::BadRequest { message, faults }
    }

    /// The same invalid-definition error with `hint` added to its message.
    pub fn with_hint(self, hint: &str) -> Self {
        match self {
            ApiError::BadRequest { message, faults } => ApiError::BadRequest {
                message: format!("{message} ({hint})"),
                faults,
            },
            other => other,
        }
    }

    /// Status and stable error code.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            ApiError::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            ApiError::PreconditionFailed { .. } => {
                (StatusCode::PRECONDITION_FAILED, "PRECONDITION_FAILED")
            }
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
            }
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT"),
            ApiError::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED")
            }
            ApiError::NoLeader => (StatusCode::SERVICE_UNAVAILABLE, "NO_LEADER"),
            ApiError::StaleReplica(_) => (StatusCode::SERVICE_UNAVAILABLE, "STALE_REPLICA"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            ApiError::OutcomeUnknown => (StatusCode::GATEWAY_TIMEOUT, "OUTCOME_UNKNOWN"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::NamespaceNotFound { .. } | ApplyError::NotFound { .. } => {
                ApiError::NotFound(e.to_string())
            }
            ApplyError::PreconditionFailed { current } => ApiError::PreconditionFailed { current },
            ApplyError::UnknownSegment {
                ref path,
                ref segment,
                ..
            } => fault(&e, path, format!("segment {segment:?} does not exist")),
            ApplyError::SegmentCycle { .. } => ApiError::bad_request(e.to_string()),
            ApplyError::SegmentChainTooLong {
                ref path,
                chain,
                max,
                ..
            } => fault(
                &e,
                path,
                format!("the $ref chain passes through {chain} segments, more than {max}"),
            ),
            ApplyError::SegmentInUse { .. } => ApiError::Conflict(e.to_string()),
            ApplyError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            ApplyError::AlreadyExists { .. } => ApiError::Conflict(e.to_string()),
            ApplyError::LimitExceeded {
                ref path,
                ref what,
                limit,
                actual,
            } => fault(
                &e,
                path,
                format!("{actual} {what}, more than the limit of {limit}"),
            ),
            ApplyError::InvalidDefinition {
                ref path,
                ref message,
            } => fault(&e, path, message.clone()),
        }
    }
}

/// A 400 whose one fault is at `path`.
fn fault(e: &ApplyError, path: &str, message: String) -> ApiError {
    ApiError::BadRequest {
        message: e.to_string(),
        faults: vec![flagstaff_flags::Fault {
            path: path.to_string(),
            message,
        }],
    }
}

pub use flagstaff_api::error::{ErrorBody, ErrorDetail, FaultBody};

/// Faults (or warnings) as they are answered.
pub fn fault_bodies(faults: &[flagstaff_flags::Fault]) -> Vec<FaultBody> {
    faults
        .iter()
        .map(|f| FaultBody {
            path: f.path.clone(),
            message: f.message.clone(),
        })
        .collect()
}

impl ApiError {
    /// The JSON body this error answers with.
    pub fn body(&self) -> ErrorBody {
        let (_, code) = self.status_code();
        let faults = match self {
            ApiError::BadRequest { faults, .. } if !faults.is_empty() => Some(fault_bodies(faults)),
            _ => None,
        };
        let current_version = match self {
            ApiError::PreconditionFailed { current } => Some(*current),
            _ => None,
        };
        ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: self.to_string(),
                faults,
                current_version,
            },
        }
    }

    /// `Retry-After` (seconds) for the answers that carry one: 503 and 429.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ if self.status_code().0 == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_code();
        let mut resp = (status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
