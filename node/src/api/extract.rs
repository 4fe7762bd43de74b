//! Request parsing shared by the handlers: auth, bodies, read parameters, names, conditions and
//! idempotency keys. Every failure becomes an [`ApiError`] (400/401/413), never a panic.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use flagstaff_raft_store::{Condition, IdempotencyKey};
use rand::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::node::{Consistency, Node};

/// SHA-256 (hex) of a secret: what the replicated state stores for keys and tokens.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Who is calling: an admin (token name) or an SDK key bound to one namespace.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin(String),
    Sdk {
        ns: String,
        name: String,
        hash: String,
    },
}

/// Set by the web console on the requests it makes to this API on behalf of a signed-in admin
/// (after checking the session cookie). Clients cannot set request extensions, so this never
/// comes from the network; only this crate can make one. Such requests carry no
/// `Authorization` header, so routes that relay the caller's token to another node over HTTP
/// (the membership changes) are not for the console.
#[derive(Debug, Clone)]
pub struct ConsoleActor(String);

impl ConsoleActor {
    pub(crate) fn new(actor: String) -> ConsoleActor {
        ConsoleActor(actor)
    }
}

impl Caller {
    fn identify(parts: &Parts, node: &Node) -> Result<Caller, ApiError> {
        if let Some(ConsoleActor(name)) = parts.extensions.get::<ConsoleActor>() {
            return Ok(Caller::Admin(name.clone()));
        }
        let presented = bearer(&parts.headers).ok_or(ApiError::Unauthenticated)?;
        Caller::of_secret(presented, node)
    }

    /// The caller a presented secret (admin token or SDK key) names, for any protocol.
    pub fn of_secret(presented: &str, node: &Node) -> Result<Caller, ApiError> {
        if let Some(name) = Caller::configured_admin(presented, node) {
            return Ok(Caller::Admin(name));
        }
        // Stored secrets are looked up by their hash, so timing reveals nothing about them.
        let hash = hash_secret(presented);
        let state = node.state.read();
        if let Some(t) = state.admin_tokens().get(&hash) {
            return Ok(Caller::Admin(t.name.clone()));
        }
        if let Some(k) = state.sdk_keys().get(&hash) {
            return Ok(Caller::Sdk {
                ns: k.ns.clone(),
                name: k.name.clone(),
                hash,
            });
        }
        Err(ApiError::Unauthenticated)
    }

    /// May this caller read namespace `ns`?
    pub fn check_namespace(&self, ns: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin(_) => Ok(()),
            Caller::Sdk { ns: bound, .. } if bound == ns => Ok(()),
            Caller::Sdk { ns: bound, .. } => Err(ApiError::Forbidden(format!(
                "this SDK key is for namespace {bound:?}, not {ns:?}"
            ))),
        }
    }

    /// After a read barrier: the key must still exist at the revision the read reflects.
    pub fn check_still_valid(&self, node: &Node) -> Result<(), ApiError> {
        if self.still_valid(node) {
            Ok(())
        } else {
            Err(ApiError::Unauthenticated)
        }
    }

    /// The name of the configured admin token `presented` is, if it is one.
    fn configured_admin(presented: &str, node: &Node) -> Option<String> {
        node.config
            .admin_tokens
            .iter()
            .find(|(_, token)| {
                !token.is_empty() && bool::from(token.as_bytes().ct_eq(presented.as_bytes()))
            })
            .map(|(name, _)| name.clone())
    }

    /// The admin token `presented` names, if it is one (configured or created through the API).
    pub fn admin_name(presented: &str, node: &Node) -> Option<String> {
        Caller::configured_admin(presented, node).or_else(|| {
            let state = node.state.read();
            state
                .admin_tokens()
                .get(&hash_secret(presented))
                .map(|t| t.name.clone())
        })
    }

    /// Is the admin token whose SHA-256 is `credential` still an admin token called `name`
    /// (configured, or created through the API and not revoked)? A token revoked and created
    /// again under the same name, or a configured secret that changed, is another credential.
    pub fn admin_credential_valid(name: &str, credential: &str, node: &Node) -> bool {
        let configured = node.config.admin_tokens.iter().any(|(n, token)| {
            n == name
                && !token.is_empty()
                && bool::from(hash_secret(token).as_bytes().ct_eq(credential.as_bytes()))
        });
        configured
            || node
                .state
                .read()
                .admin_tokens()
                .get(credential)
                .is_some_and(|t| t.name == name)
    }

    /// False once an SDK key has been revoked (as this node's state knows).
    pub fn still_valid(&self, node: &Node) -> bool {
        match self {
            Caller::Admin(_) => true,
            Caller::Sdk { hash, .. } => node.state.read().sdk_keys().contains_key(hash),
        }
    }
}

impl FromRequestParts<Arc<Node>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        // `min_revision` covers the credentials too: a key created at revision R works on any
        // node once that node has applied R.
        let min_revision = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "min_revision")
            .and_then(|(_, v)| v.parse::<u64>().ok());
        if let Some(rev) = min_revision {
            node.wait_revision(rev).await?;
        }
        Caller::identify(parts, node)
    }
}

/// An authenticated admin caller; the field is the token's name (the actor in history).
pub struct Admin(pub String);

impl FromRequestParts<Arc<Node>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        match Caller::identify(parts, node)? {
            Caller::Admin(name) => Ok(Admin(name)),
            Caller::Sdk { .. } => Err(ApiError::Forbidden(
                "this route needs an admin token, not an SDK key".into(),
            )),
        }
    }
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// A request body read with the node's size limit, kept as bytes (for fingerprints) and parsed
/// as JSON. Malformed JSON is a 400 naming the line and column.
pub struct JsonBody {
    pub raw: Bytes,
    pub value: Value,
}

impl FromRequest<Arc<Node>> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, node: &Arc<Node>) -> Result<Self, ApiError> {
        JsonBody::read(req, node.config.max_body_bytes).await
    }
}

/// A flagd document import body: a [`JsonBody`] read with `max_import_bytes` (a document may
/// carry a whole namespace).
pub struct ImportBody(pub JsonBody);

impl FromRequest<Arc<Node>> for ImportBody {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, node: &Arc<Node>) -> Result<Self, ApiError> {
        let limit = node.config.max_import_bytes.max(node.config.max_body_bytes);
        JsonBody::read(req, limit).await.map(ImportBody)
    }
}

impl JsonBody {
    /// Reads and parses `req`'s body, at most `limit` bytes.
    pub(crate) async fn read(req: Request<Body>, limit: usize) -> Result<Self, ApiError> {
        let raw = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|e| match crate::listener::body_deadline(&e) {
                Some(deadline) => ApiError::RequestTimeout(deadline.to_string()),
                None => ApiError::PayloadTooLarge { limit },
            })?;
        let value = if raw.iter().all(|b| b.is_ascii_whitespace()) {
            Value::Null
        } else {
            serde_json::from_slice(&raw)
                .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?
        };
        Ok(JsonBody { raw, value })
    }
}

/// `consistency`, `max_staleness_ms` and `min_revision` from a query string.
pub struct ReadParams {
    pub consistency: Consistency,
    pub min_revision: Option<u64>,
    /// Remaining parameters, for handlers that take more.
    pub rest: Vec<(String, String)>,
}

pub fn read_params(
    query: Option<&str>,
    node: &Node,
    default_linearizable: bool,
) -> Result<ReadParams, ApiError> {
    let mut consistency = None;
    let mut staleness = None;
    let mut min_revision = None;
    let mut rest = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "consistency" => consistency = Some(v.into_owned()),
            "max_staleness_ms" => staleness = Some(parse_u64("max_staleness_ms", &v)?),
            "min_revision" => min_revision = Some(parse_u64("min_revision", &v)?),
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    let bound =
        Duration::from_millis(staleness.unwrap_or(node.config.max_staleness.as_millis() as u64));
    if bound.is_zero() || bound > Duration::from_secs(3600) {
        return Err(ApiError::bad_request(
            "max_staleness_ms: must be between 1 and 3600000",
        ));
    }
    let consistency = match consistency.as_deref() {
        None if default_linearizable && staleness.is_none() => Consistency::Linearizable,
        None | Some("bounded") => Consistency::Bounded(bound),
        Some("linearizable") => Consistency::Linearizable,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "consistency: {other:?} is not one of \"linearizable\", \"bounded\""
            )))
        }
    };
    Ok(ReadParams {
        consistency,
        min_revision,
        rest,
    })
}

pub fn parse_u64(name: &str, v: &str) -> Result<u64, ApiError> {
    v.parse()
        .map_err(|_| ApiError::bad_request(format!("{name}: {v:?} is not a non-negative integer")))
}

/// Names of namespaces, flags and segments: 1–128 characters of `A-Z a-z 0-9 . _ -`, starting
/// with a letter or digit.
pub fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what}: {name:?} is not a valid name (1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit)"
        )))
    }
}

/// The `{ns}` path segment, checked as a name.
pub fn namespace_path(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(ns) = p.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check_name("namespace", &ns)?;
    Ok(ns)
}

/// The `{ns}/…/{key}` path segments, both checked as names (`what` names the second).
pub fn item_path(
    p: Result<Path<(String, String)>, PathRejection>,
    what: &str,
) -> Result<(String, String), ApiError> {
    let Path((ns, key)) = p.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check_name("namespace", &ns)?;
    check_name(what, &key)?;
    Ok((ns, key))
}

/// `If-Match: "<version>"` or `If-None-Match: *`.
pub fn condition(headers: &HeaderMap) -> Result<Condition, ApiError> {
    let if_match = headers
        .get(header::IF_MATCH)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let if_none = headers
        .get(header::IF_NONE_MATCH)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    match (if_match, if_none) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "If-Match and If-None-Match cannot be combined",
        )),
        (Some(v), None) => {
            let t = v.trim().trim_start_matches("W/").trim_matches('"');
            t.parse().map(Condition::IfMatch).map_err(|_| {
                ApiError::bad_request(format!(
                    "If-Match: {v:?} is not a quoted version like \"42\""
                ))
            })
        }
        (None, Some(v)) if v.trim() == "*" => Ok(Condition::CreateOnly),
        (None, Some(v)) => Err(ApiError::bad_request(format!(
            "If-None-Match: only * is supported on writes, got {v:?}"
        ))),
        (None, None) => Ok(Condition::None),
    }
}

/// The idempotency key for a write: the client's `Idempotency-Key`, scoped per caller and
/// namespace, or a fresh one, so that the node's own retries after a leader change apply once.
pub fn idempotency(
    headers: &HeaderMap,
    actor: &str,
    ns: &str,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<IdempotencyKey, ApiError> {
    let mut hash = Sha256::new();
    hash.update(method.as_str().as_bytes());
    hash.update([0]);
    hash.update(path.as_bytes());
    hash.update([0]);
    hash.update(body);
    let fingerprint = hex::encode(hash.finalize());
    let key = match headers.get("idempotency-key") {
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key: must be visible ASCII"))?;
            if k.is_empty() || k.len() > 256 {
                return Err(ApiError::bad_request(
                    "Idempotency-Key: must be 1-256 characters",
                ));
            }
            format!("client:{k}")
        }
        None => {
            let mut bytes = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut bytes);
            format!("node:{}", hex::encode(bytes))
        }
    };
    Ok(IdempotencyKey {
        scope: format!("{actor}/{ns}/{key}"),
        fingerprint,
    })
}
