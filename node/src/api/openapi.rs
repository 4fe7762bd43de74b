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
use utoipa::openapi::path::{HttpMethod, OperationBuilder, Parameter, Paths};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Required, ResponseBuilder, Schema, Type,
};
use utoipa::{Modify, ToSchema};

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

/// One operation of the document made by hand, for the handlers that serve flags and
/// segments alike (`admin::item_routes`): a generic handler cannot carry a `#[utoipa::path]`.
#[derive(Clone)]
pub struct Operation {
    pub id: String,
    pub tag: &'static str,
    pub summary: String,
    /// From the `IntoParams` of the handler's extractors.
    pub params: Vec<Parameter>,
    /// The JSON body it takes, with what it is.
    pub body: Option<(RefOr<Schema>, &'static str)>,
    /// Its 200 answer: what it is, and the schema of its JSON body.
    pub ok: (String, RefOr<Schema>),
}

impl Operation {
    /// The operations of one path, for `OpenApiRouter::routes`.
    pub fn paths(
        path: &str,
        operations: impl IntoIterator<Item = (HttpMethod, Operation)>,
    ) -> Paths {
        let mut paths = Paths::new();
        for (method, op) in operations {
            paths.add_path_operation(path, vec![method], op.build());
        }
        paths
    }

    fn build(self) -> utoipa::openapi::path::Operation {
        let json = |schema| ContentBuilder::new().schema(Some(schema)).build();
        let body = self.body.map(|(schema, description)| {
            RequestBodyBuilder::new()
                .description(Some(description))
                .required(Some(Required::True))
                .content("application/json", json(schema))
                .build()
        });
        let (description, schema) = self.ok;
        OperationBuilder::new()
            .tag(self.tag)
            .summary(Some(self.summary))
            .operation_id(Some(self.id))
            .parameters(Some(self.params))
            .request_body(body)
            .response(
                "200",
                ResponseBuilder::new()
                    .description(description)
                    .content("application/json", json(schema)),
            )
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
            .build()
    }
}

/// A reference to `T`'s schema, which (with the schemas it refers to) goes into `schemas`.
pub fn body_of<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema> {
    T::schemas(schemas);
    schemas.push((T::name().into_owned(), T::schema()));
    Ref::from_schema_name(T::name()).into()
}

/// Any JSON object.
pub fn body_object() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Object).into()
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

fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> Vec<(HttpMethod, &mut utoipa::openapi::path::Operation)> {
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

fn add(op: &mut utoipa::openapi::path::Operation, statuses: &[(u16, &str)], schema: &str) {
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
