//! The one error type of the HTTP API and the one place that maps errors to status codes.
//!
//! Every error answers `{"error":{"code":"…","message":"…"}}`; validation errors add
//! `"faults":[{"path":…,"message":…}]`, and 412 adds `"current_version"`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flagstaff_raft_store::ApplyError;
use serde_json::json;

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
            } => ApiError::BadRequest {
                message: e.to_string(),
                faults: vec![flagstaff_flags::Fault {
                    path: path.clone(),
                    message: format!("segment {segment:?} does not exist"),
                }],
            },
            ApplyError::SegmentCycle { .. } => ApiError::bad_request(e.to_string()),
            ApplyError::SegmentInUse { .. } => ApiError::Conflict(e.to_string()),
            ApplyError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            ApplyError::AlreadyExists { .. } => ApiError::Conflict(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        let mut error = json!({ "code": code, "message": self.to_string() });
        match &self {
            ApiError::BadRequest { faults, .. } if !faults.is_empty() => {
                error["faults"] = json!(faults
                    .iter()
                    .map(|f| json!({"path": f.path, "message": f.message}))
                    .collect::<Vec<_>>());
            }
            ApiError::PreconditionFailed { current } => error["current_version"] = json!(current),
            _ => {}
        }
        let mut resp = (status, axum::Json(json!({ "error": error }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ApiError::RateLimited { retry_after_secs } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        resp
    }
}
