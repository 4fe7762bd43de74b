//! `GET|PUT /v1/namespaces/{ns}/flagd`: export a namespace as a flagd `flags.json` document,
//! and import one atomically (validated whole, applied as one log entry and one revision; the
//! namespace then holds exactly the document's flags and segments).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::get;
use axum::{Json, Router};
use flagstaff_raft_store::Command;
use serde_json::{json, Map, Value};

use crate::api::admin::submit;
use crate::api::extract::{check_name, read_params, Admin, JsonBody};
use crate::error::ApiError;
use crate::node::Node;
use crate::watch_hub::parse;

const SCHEMA: &str = "https://flagd.dev/schema/v0/flags.json";

pub fn router() -> Router<Arc<Node>> {
    Router::new().route("/v1/namespaces/{ns}/flagd", get(export).put(import))
}

async fn export(
    State(node): State<Arc<Node>>,
    _: Admin,
    p: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let ns = crate::api::extract::namespace_path(p)?;
    let params = read_params(q.as_deref(), &node, true)?;
    node.read_barrier(params.consistency, params.min_revision)
        .await?;
    let state = node.state.read();
    let space = state
        .namespace(&ns)
        .ok_or_else(|| ApiError::NotFound(format!("namespace {ns:?} does not exist")))?;
    let flags: Map<String, Value> = space
        .flags
        .iter()
        .map(|(k, i)| (k.clone(), parse(&i.definition)))
        .collect();
    let segments: Map<String, Value> = space
        .segments
        .iter()
        .map(|(k, i)| (k.clone(), parse(&i.definition)))
        .collect();
    let mut doc = json!({"$schema": SCHEMA, "flags": flags});
    if !segments.is_empty() {
        doc["$evaluators"] = Value::Object(segments);
    }
    Ok(Json(doc))
}

async fn import(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    p: Result<Path<String>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let ns = crate::api::extract::namespace_path(p)?;
    flagstaff_flags::validate_document(&body.value).map_err(ApiError::invalid)?;
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
    let applied = submit(&node, &actor, &headers, &method, &uri, &body.raw, command).await?;
    Ok(Json(
        json!({"namespace": ns, "flags": count.0, "segments": count.1, "revision": applied.revision}),
    ))
}
