//! SDK keys (per namespace) and extra admin tokens. The secret is random, shown once, and only
//! its SHA-256 is replicated. Revoking takes effect on every node as soon as it applies the
//! revocation (within the staleness bound), and open watch streams using the key are closed.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use flagstaff_raft_store::Command;
use rand::RngCore;
use serde_json::{json, Value};

use crate::api::admin::submit;
use crate::api::extract::{check_name, hash_secret, read_params, Admin, JsonBody};
use crate::error::ApiError;
use crate::node::Node;

pub fn router() -> Router<Arc<Node>> {
    Router::new()
        .route(
            "/v1/namespaces/{ns}/sdk-keys",
            get(list_sdk_keys).post(create_sdk_key),
        )
        .route(
            "/v1/namespaces/{ns}/sdk-keys/{name}",
            delete(revoke_sdk_key),
        )
        .route(
            "/v1/admin-tokens",
            get(list_admin_tokens).post(create_admin_token),
        )
        .route("/v1/admin-tokens/{name}", delete(revoke_admin_token))
}

fn secret(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

fn name_from(body: &Value) -> Result<String, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("body: must be an object like {\"name\": \"web\"}"))?;
    if let Some(k) = obj.keys().find(|k| k.as_str() != "name") {
        return Err(ApiError::bad_request(format!(
            "{k}: unknown field (expected \"name\")"
        )));
    }
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("name: required string"))?;
    check_name("name", name)?;
    Ok(name.to_string())
}

fn created(
    kind: &str,
    name: String,
    ns: Option<&str>,
    secret: String,
    revision: u64,
    replayed: bool,
) -> Result<Response, ApiError> {
    if replayed {
        return Err(ApiError::Conflict(format!(
            "{kind} {name:?} was already created by this request; its secret was shown once"
        )));
    }
    Ok(Json(
        json!({"name": name, "namespace": ns, "secret": secret, "revision": revision,
        "note": "store the secret now: it is not shown again"}),
    )
    .into_response())
}

#[allow(clippy::too_many_arguments)]
async fn create_sdk_key(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    p: Result<Path<String>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let ns = crate::api::extract::namespace_path(p)?;
    let name = name_from(&body.value)?;
    let secret = secret("fsk_");
    let command = Command::CreateSdkKey {
        ns: ns.clone(),
        name: name.clone(),
        hash: hash_secret(&secret),
    };
    let applied = submit(&node, &actor, &headers, &method, &uri, &body.raw, command).await?;
    created(
        "SDK key",
        name,
        Some(&ns),
        secret,
        applied.revision,
        applied.replayed,
    )
}

async fn list_sdk_keys(
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
    if state.namespace(&ns).is_none() {
        return Err(ApiError::NotFound(format!(
            "namespace {ns:?} does not exist"
        )));
    }
    let mut keys: Vec<Value> = state
        .sdk_keys()
        .values()
        .filter(|k| k.ns == ns)
        .map(|k| json!({"name": k.name, "created_at_ms": k.created_at_ms, "created_by": k.created_by}))
        .collect();
    keys.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(json!({"namespace": ns, "sdk_keys": keys})))
}

async fn revoke_sdk_key(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    p: Result<Path<(String, String)>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (ns, name) = crate::api::extract::item_path(p, "name")?;
    let command = Command::RevokeSdkKey {
        ns: ns.clone(),
        name: name.clone(),
    };
    let applied = submit(&node, &actor, &headers, &method, &uri, b"", command).await?;
    Ok(Json(
        json!({"namespace": ns, "name": name, "revoked": true, "revision": applied.revision}),
    ))
}

async fn create_admin_token(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let name = name_from(&body.value)?;
    let secret = secret("fsa_");
    let command = Command::CreateAdminToken {
        name: name.clone(),
        hash: hash_secret(&secret),
    };
    let applied = submit(&node, &actor, &headers, &method, &uri, &body.raw, command).await?;
    created(
        "admin token",
        name,
        None,
        secret,
        applied.revision,
        applied.replayed,
    )
}

async fn list_admin_tokens(
    State(node): State<Arc<Node>>,
    _: Admin,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = read_params(q.as_deref(), &node, true)?;
    node.read_barrier(params.consistency, params.min_revision)
        .await?;
    let state = node.state.read();
    let mut tokens: Vec<Value> = state
        .admin_tokens()
        .values()
        .map(|t| json!({"name": t.name, "created_at_ms": t.created_at_ms, "created_by": t.created_by}))
        .collect();
    tokens.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let bootstrap: Vec<&str> = node
        .config
        .admin_tokens
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    Ok(Json(
        json!({"admin_tokens": tokens, "configured": bootstrap}),
    ))
}

async fn revoke_admin_token(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    p: Result<Path<String>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = p.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check_name("name", &name)?;
    let command = Command::RevokeAdminToken { name: name.clone() };
    let applied = submit(&node, &actor, &headers, &method, &uri, b"", command).await?;
    Ok(Json(
        json!({"name": name, "revoked": true, "revision": applied.revision}),
    ))
}
