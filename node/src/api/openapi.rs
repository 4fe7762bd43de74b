//! The OpenAPI document of the client listener, served at `/v1/openapi.json`.
//!
//! It is generated from the handlers: each one carries a `#[utoipa::path]` annotation and is
//! routed through `utoipa_axum::routes!`, which registers the route and its documentation
//! together, so a route cannot be served without being documented. The error statuses that
//! operations answer through [`ApiError`](crate::error::ApiError) (mapped in `error.rs`) are
//! added here, in one place, by kind of route: reads, writes and OFREP.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, OpenApi, Ref, ResponseBuilder, Type};
use utoipa::{IntoParams, Modify, ToSchema};

use crate::error::ErrorBody;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Flagstaff",
        description = "Clustered feature-flag and runtime-configuration store. Writes are \
            linearizable and answer with the new revision; reads take `consistency` \
            (`linearizable` or `bounded`), `max_staleness_ms` and `min_revision`. Every answer \
            carries `Flagstaff-Cluster`, `Flagstaff-Node`, `Flagstaff-Revision` and, when \
            known, `Flagstaff-Leader`."
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "namespaces"), (name = "flags"), (name = "segments"), (name = "keys"),
        (name = "sdk", description = "snapshot and watch stream for applications"),
        (name = "ofrep", description = "OpenFeature Remote Evaluation Protocol"),
        (name = "experiments", description = "A/B tests: exposures and conversions in, results out"),
        (name = "cluster"), (name = "audit"), (name = "health")
    )
)]
pub struct ApiDoc;

/// Every `/v1` and `/ofrep` route takes `Authorization: Bearer <admin token or SDK key>`.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `{ns}` in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents what `extract::namespace_path` parses
pub struct NsPath {
    /// Namespace name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    ns: String,
}

/// `{ns}` and `{key}` in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents what `extract::item_path` parses
pub struct ItemPath {
    /// Namespace name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    ns: String,
    /// Flag or segment key.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    key: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ConsistencyParam {
    Linearizable,
    Bounded,
}

/// The read parameters every read takes (`extract::read_params`).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ReadQuery {
    /// `linearizable`: a quorum-confirmed read index from the leader, then wait until applied.
    /// `bounded`: this node's state, which reflects every write acknowledged before
    /// `now - Flagstaff-Staleness-Ms`; 503 `STALE_REPLICA` when the node cannot prove that.
    #[param(inline)]
    consistency: Option<ConsistencyParam>,
    /// Bound for `bounded` reads (default 2000; giving it alone selects `bounded`).
    #[param(minimum = 1, maximum = 3600000)]
    max_staleness_ms: Option<u64>,
    /// Wait until this node has applied this revision (bounded wait, then 503).
    min_revision: Option<u64>,
}

/// `If-Match: "<version>"`: write only if the item's current version is this one (else 412).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documents what `extract::condition` parses
pub struct IfMatch {
    /// A quoted version, e.g. `"42"`.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
}

/// `If-None-Match: *`: create only (412 if the item exists, with its current version).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IfNoneMatch {
    /// `*`
    #[param(rename = "If-None-Match")]
    if_none_match: Option<String>,
}

/// `Idempotency-Key`: a retry with the same key (per token and namespace) applies once and
/// answers the first result; the same key with another request answers 422.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documents what `extract::idempotency` parses
pub struct IdempotencyKey {
    /// 1–256 visible ASCII characters.
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 256)]
    idempotency_key: Option<String>,
}

/// `?flagd_semantics=true` on a flag write: store what flagd accepts and resolves at evaluation
/// (a branch naming no variant, an operator that cannot compare, a negative weight, an unknown
/// operator), answered as `warnings`; without it those are 400.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents what `admin::flagd_semantics` parses
pub struct FlagdSemantics {
    flagd_semantics: Option<bool>,
}

/// Adds the statuses that [`ApiError`](crate::error::ApiError) can answer to every operation
/// that does not document them itself, with the error body (or the OFREP error shape).
pub fn document_errors(api: &mut OpenApi) {
    const READ: &[(u16, &str)] = &[
        (400, "invalid parameter, path or body"),
        (401, "missing or unknown bearer token"),
        (403, "the token may not use this route or namespace"),
        (404, "no such namespace or item"),
        (503, "no leader, or this node cannot prove the staleness bound (NO_LEADER, STALE_REPLICA, UNAVAILABLE); see Retry-After"),
    ];
    const WRITE: &[(u16, &str)] = &[
        (
            409,
            "conflicts with the current state (exists already, still referenced, membership)",
        ),
        (
            412,
            "If-Match names another version than the current one, or If-None-Match: * and the item exists",
        ),
        (
            408,
            "the request body was not received within the body-read timeout",
        ),
        (413, "request body too large"),
        (422, "Idempotency-Key reused for a different request"),
        (
            504,
            "the write was sent but its outcome is unknown: retry with the same Idempotency-Key",
        ),
    ];
    const OFREP: &[(u16, &str)] = &[
        (400, "evaluation failed or the request is invalid"),
        (401, "missing or unknown SDK key"),
        (403, "the key may not read this namespace"),
        (404, "flag (or namespace) not found"),
        (
            408,
            "the request body was not received within the body-read timeout",
        ),
        (413, "request body too large"),
        (429, "rate limited: see Retry-After"),
        (503, "this node cannot answer now; see Retry-After"),
    ];
    for (path, item) in api.paths.paths.iter_mut() {
        let ofrep = path.starts_with("/ofrep/");
        let api_route = path.starts_with("/v1/") && path != "/v1/openapi.json";
        for (method, op) in operations(item) {
            if ofrep {
                add(op, OFREP, "OfrepError");
            } else if api_route {
                add(op, READ, "ErrorBody");
                if method != HttpMethod::Get {
                    add(op, WRITE, "ErrorBody");
                }
            }
        }
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> Vec<(HttpMethod, &mut Operation)> {
    [
        (HttpMethod::Get, item.get.as_mut()),
        (HttpMethod::Put, item.put.as_mut()),
        (HttpMethod::Post, item.post.as_mut()),
        (HttpMethod::Patch, item.patch.as_mut()),
        (HttpMethod::Delete, item.delete.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
    .collect()
}

fn add(op: &mut Operation, statuses: &[(u16, &str)], schema: &str) {
    for (status, description) in statuses {
        let code = status.to_string();
        if op.responses.responses.contains_key(&code) {
            continue;
        }
        let mut response = ResponseBuilder::new().description(*description).content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        );
        if matches!(status, 429 | 503) {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::Integer))
                    .description(Some("seconds"))
                    .build(),
            );
        }
        op.responses.responses.insert(code, response.build().into());
    }
}

/// `GET /v1/openapi.json`.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health",
    responses((status = 200, description = "this document (OpenAPI 3.1)", body = Object)))]
pub async fn document() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let json = DOCUMENT.get_or_init(crate::api::openapi_json);
    ([(header::CONTENT_TYPE, "application/json")], json.as_str()).into_response()
}

/// The whole document as JSON.
pub fn document_json(mut api: OpenApi) -> String {
    document_errors(&mut api);
    api.to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"openapi: {e}\"}}"))
}
