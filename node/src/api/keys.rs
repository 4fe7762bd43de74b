//! SDK keys (per namespace) and extra admin tokens. The secret is random, shown once, and only
//! its SHA-256 is replicated. Revoking takes effect on every node as soon as it applies the
//! revocation (within the staleness bound), and open watch streams using the key are closed.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flagstaff_api::keys::{
    AdminTokenList, CredentialInfo, NameSpec, Revoked, SdkKeyList, SecretCreated,
};
use flagstaff_raft_store::Command;
use rand::RngCore;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::admin::submit;
use crate::api::extract::{
    no_namespace, Admin, InPath, JsonBody, NsPath, NsRead, PathNames, Read, ReadQuery, RetryKey,
};
use crate::auth::hash_secret;
use crate::error::ApiError;
use crate::names::check_name;
use crate::node::Node;

pub fn router() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::new()
        .routes(routes!(list_sdk_keys, create_sdk_key))
        .routes(routes!(revoke_sdk_key))
        .routes(routes!(list_admin_tokens, create_admin_token))
        .routes(routes!(revoke_admin_token))
}

/// `{ns}` and `{name}` in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct KeyPath {
    /// Namespace name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    ns: String,
    /// The SDK key's name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    name: String,
}

impl PathNames for KeyPath {
    fn names(&self) -> Vec<(&'static str, &str)> {
        vec![("namespace", &self.ns), ("name", &self.name)]
    }
}

/// `{name}` in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TokenPath {
    /// The admin token's name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    name: String,
}

impl PathNames for TokenPath {
    fn names(&self) -> Vec<(&'static str, &str)> {
        vec![("name", &self.name)]
    }
}

fn secret(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

fn name_from(body: &JsonBody) -> Result<String, ApiError> {
    let NameSpec { name } = body.parse()?;
    check_name("name", &name)?;
    Ok(name)
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
    Ok(Json(SecretCreated {
        name,
        namespace: ns.map(str::to_string),
        secret,
        revision,
        note: "store the secret now: it is not shown again".into(),
    })
    .into_response())
}

/// Create an SDK key for a namespace; the secret is in this answer only.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/sdk-keys", tag = "keys", security(("bearer" = [])),
    params(NsPath, RetryKey), request_body = NameSpec,
    responses((status = 200, description = "created", body = SecretCreated)))]
async fn create_sdk_key(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    InPath(NsPath { ns }): InPath<NsPath>,
    retry: RetryKey,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let name = name_from(&body)?;
    let secret = secret("fsk_");
    let command = Command::CreateSdkKey {
        ns: ns.clone(),
        name: name.clone(),
        hash: hash_secret(&secret),
    };
    let applied = submit(&node, &actor, &retry, &body.raw, command).await?;
    created(
        "SDK key",
        name,
        Some(&ns),
        secret,
        applied.revision,
        applied.replayed,
    )
}

/// A namespace's SDK keys (names only).
#[utoipa::path(get, path = "/v1/namespaces/{ns}/sdk-keys", tag = "keys", security(("bearer" = [])),
    params(NsRead), responses((status = 200, description = "the keys", body = SdkKeyList)))]
async fn list_sdk_keys(NsRead { node, ns, .. }: NsRead) -> Result<Json<SdkKeyList>, ApiError> {
    let state = node.state.read();
    if state.namespace(&ns).is_none() {
        return Err(no_namespace(&ns));
    }
    let mut sdk_keys: Vec<CredentialInfo> = state
        .sdk_keys()
        .values()
        .filter(|k| k.ns == ns)
        .map(|k| credential(&k.name, k.created_at_ms, &k.created_by))
        .collect();
    sdk_keys.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(SdkKeyList {
        namespace: ns,
        sdk_keys,
    }))
}

fn credential(name: &str, created_at_ms: u64, created_by: &str) -> CredentialInfo {
    CredentialInfo {
        name: name.to_string(),
        created_at_ms,
        created_by: created_by.to_string(),
    }
}

/// Revoke an SDK key: every node refuses it once it has applied this revision, and closes
/// the streams using it.
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/sdk-keys/{name}", tag = "keys", security(("bearer" = [])),
    params(KeyPath, RetryKey), responses((status = 200, description = "revoked", body = Revoked)))]
async fn revoke_sdk_key(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    InPath(KeyPath { ns, name }): InPath<KeyPath>,
    retry: RetryKey,
) -> Result<Json<Revoked>, ApiError> {
    let command = Command::RevokeSdkKey {
        ns: ns.clone(),
        name: name.clone(),
    };
    let applied = submit(&node, &actor, &retry, b"", command).await?;
    Ok(Json(Revoked {
        namespace: Some(ns),
        name,
        revoked: true,
        revision: applied.revision,
    }))
}

/// The name of the configured admin token (`flagstaff serve --admin-token`).
const CONFIGURED_ADMIN: &str = "admin";

/// An admin token's name is its actor in history and the scope of its idempotency keys, so an
/// API token may not take the name of a configured one (`admin`, and any other this node is
/// configured with): the two would be one actor in the audit and could replay each other's
/// idempotent writes. Refused before proposal, ignoring case, so that no audit reader has to
/// tell `Admin` from `admin`. Refusing keeps the names people chose as the actors (the history
/// and the documented `admin` stay as they are), where prefixing one kind would rename them.
fn check_not_configured(node: &Node, name: &str) -> Result<(), ApiError> {
    let configured = std::iter::once(CONFIGURED_ADMIN)
        .chain(node.config.admin_tokens.iter().map(|(n, _)| n.as_str()))
        .find(|c| c.eq_ignore_ascii_case(name));
    match configured {
        Some(c) => Err(ApiError::bad_request(format!(
            "name: {name:?} is taken by the configured admin token {c:?}; choose another name"
        ))),
        None => Ok(()),
    }
}

/// Create another admin token; the secret is in this answer only. Its name may not be that of
/// a configured admin token (`admin`), whatever the case (400 naming `name`).
#[utoipa::path(post, path = "/v1/admin-tokens", tag = "keys", security(("bearer" = [])),
    params(RetryKey), request_body = NameSpec,
    responses((status = 200, description = "created", body = SecretCreated)))]
async fn create_admin_token(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    retry: RetryKey,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let name = name_from(&body)?;
    check_not_configured(&node, &name)?;
    let secret = secret("fsa_");
    let command = Command::CreateAdminToken {
        name: name.clone(),
        hash: hash_secret(&secret),
    };
    let applied = submit(&node, &actor, &retry, &body.raw, command).await?;
    created(
        "admin token",
        name,
        None,
        secret,
        applied.revision,
        applied.replayed,
    )
}

/// The admin tokens (names only).
#[utoipa::path(get, path = "/v1/admin-tokens", tag = "keys", security(("bearer" = [])),
    params(ReadQuery), responses((status = 200, description = "the tokens", body = AdminTokenList)))]
async fn list_admin_tokens(
    State(node): State<Arc<Node>>,
    _: Admin,
    Read(params): Read,
) -> Result<Json<AdminTokenList>, ApiError> {
    node.read_barrier(params.consistency, params.min_revision)
        .await?;
    let state = node.state.read();
    let mut admin_tokens: Vec<CredentialInfo> = state
        .admin_tokens()
        .values()
        .map(|t| credential(&t.name, t.created_at_ms, &t.created_by))
        .collect();
    admin_tokens.sort_by(|a, b| a.name.cmp(&b.name));
    let configured = node
        .config
        .admin_tokens
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    Ok(Json(AdminTokenList {
        admin_tokens,
        configured,
    }))
}

/// Revoke an admin token created through the API.
#[utoipa::path(delete, path = "/v1/admin-tokens/{name}", tag = "keys", security(("bearer" = [])),
    params(TokenPath, RetryKey), responses((status = 200, description = "revoked", body = Revoked)))]
async fn revoke_admin_token(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    InPath(TokenPath { name }): InPath<TokenPath>,
    retry: RetryKey,
) -> Result<Json<Revoked>, ApiError> {
    let command = Command::RevokeAdminToken { name: name.clone() };
    let applied = submit(&node, &actor, &retry, b"", command).await?;
    Ok(Json(Revoked {
        namespace: None,
        name,
        revoked: true,
        revision: applied.revision,
    }))
}
