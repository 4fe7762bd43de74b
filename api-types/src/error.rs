//! The body of every error answer of `/v1`: `{"error":{"code":"…","message":"…"}}`;
//! validation errors add `"faults":[{"path":…,"message":…}]`, and 412 adds
//! `"current_version"`.

use serde::{Deserialize, Deserializer, Serialize};

/// The body of every error answer: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable code: `INVALID_ARGUMENT`, `UNAUTHENTICATED`, `PERMISSION_DENIED`, `NOT_FOUND`,
    /// `CONFLICT`, `PRECONDITION_FAILED`, `PAYLOAD_TOO_LARGE`, `IDEMPOTENCY_KEY_REUSED`,
    /// `NO_LEADER`, `STALE_REPLICA`, `UNAVAILABLE`, `OUTCOME_UNKNOWN` or `RATE_LIMITED`.
    pub code: String,
    /// For people: what was wrong, naming the parameter or path.
    pub message: String,
    /// For an invalid definition: every fault with the JSON path where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<Vec<FaultBody>>,
    /// For 412: the item's current version (null when it does not exist).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub current_version: Option<Option<u64>>,
}

/// A field that is present (`Some`), even as `null` (`Some(None)`); absent is `None` (by
/// `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// One fault of an invalid definition (or one warning of what was accepted anyway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FaultBody {
    /// JSON path of the fault, e.g. `/variants/on`.
    pub path: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_current_version_is_kept_apart_from_an_absent_one() {
        let parse = |s: &str| serde_json::from_str::<ErrorBody>(s).unwrap().error;
        let absent = parse(r#"{"error":{"code":"NOT_FOUND","message":"m"}}"#);
        assert_eq!((&absent.current_version, &absent.faults), (&None, &None));
        let null = parse(
            r#"{"error":{"code":"PRECONDITION_FAILED","message":"m","current_version":null}}"#,
        );
        assert_eq!(null.current_version, Some(None));
        let seven =
            parse(r#"{"error":{"code":"PRECONDITION_FAILED","message":"m","current_version":7}}"#);
        assert_eq!(seven.current_version, Some(Some(7)));
        for e in [absent, null, seven] {
            let body = ErrorBody { error: e };
            let text = serde_json::to_string(&body).unwrap();
            assert_eq!(serde_json::from_str::<ErrorBody>(&text).unwrap(), body);
        }
    }
}
