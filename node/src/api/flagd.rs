//! `GET|PUT /v1/namespaces/{ns}/flagd`: export a namespace as a flagd `flags.json` document,
//! and import one atomically (validated whole, applied as one log entry and one revision; the
//! namespace then holds exactly the document's flags and segments).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use flagstaff_api::flagd::{FlagdDocument, Imported, FLAGD_SCHEMA};
use flagstaff_raft_store::Command;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::admin::submit;
use crate::api::extract::{no_namespace, Admin, ImportBody, InPath, NsPath, NsRead, RetryKey};
use crate::error::ApiError;
use crate::names::check_name;
use crate::node::Node;

pub fn router() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::new().routes(routes!(export, import))
}

/// Export a namespace as a flagd document.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/flagd", tag = "namespaces", security(("bearer" = [])),
    params(NsRead), responses((status = 200, description = "the document", body = FlagdDocument)))]
async fn export(NsRead { node, ns, .. }: NsRead) -> Result<Json<FlagdDocument>, ApiError> {
    let state = node.state.read();
    let space = state.namespace(&ns).ok_or_else(|| no_namespace(&ns))?;
    let (flags, evaluators) = crate::flag_sets::definitions(&ns, space);
    Ok(Json(FlagdDocument {
        schema: Some(FLAGD_SCHEMA.to_string()),
        flags,
        evaluators,
    }))
}

/// Replace a namespace's flags and segments with a flagd document: validated whole, applied as
/// one log entry and one revision (the namespace is created if missing). Every document flagd
/// loads is accepted, except `$ref`s to segments that do not exist and `$ref` cycles; what
/// Flagstaff would refuse for a single write comes back as `warnings`.
#[utoipa::path(put, path = "/v1/namespaces/{ns}/flagd", tag = "namespaces", security(("bearer" = [])),
    params(NsPath, RetryKey),
    request_body(content = Object, description = "a flagd document: `{\"flags\": {…}, \"$evaluators\": {…}}`"),
    responses((status = 200, description = "imported", body = Imported)))]
async fn import(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    InPath(NsPath { ns }): InPath<NsPath>,
    retry: RetryKey,
    ImportBody(body): ImportBody,
) -> Result<Json<Imported>, ApiError> {
    let warnings =
        flagstaff_flags::validate_document_as_flagd(&body.value).map_err(ApiError::invalid)?;
    let section = |name: &str| -> Result<Vec<(String, String)>, ApiError> {
        let Some(map) = body.value.get(name).and_then(Value::as_object) else {
            return Ok(Vec::new());
        };
        map.iter()
            .map(|(k, v)| {
                check_name(&format!("{name}.{k}"), k)?;
                Ok((k.clone(), v.to_string()))
            })
            .collect()
    };
    let (flags, segments) = (section("flags")?, section("$evaluators")?);
    let count = (flags.len(), segments.len());
    let command = Command::ImportFlagd {
        ns: ns.clone(),
        flags,
        segments,
    };
    let applied = submit(&node, &actor, &retry, &body.raw, command).await?;
    Ok(Json(Imported {
        namespace: ns,
        flags: count.0,
        segments: count.1,
        revision: applied.revision,
        warnings: crate::error::fault_bodies(&warnings),
    }))
}
