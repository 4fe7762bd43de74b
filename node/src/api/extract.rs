//! Request parsing shared by the handlers: auth, bodies, read parameters, names, conditions and
//! idempotency keys. Every failure becomes an [`ApiError`] (400/401/413), never a panic.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use flagstaff_raft_store::{ChangeKind, Condition, IdempotencyKey};
use rand::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::{bearer, Caller};
use crate::error::ApiError;
use crate::names::check_name;
use crate::node::{Consistency, Node};

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

/// Who is calling, from the request: the console's signed-in admin, else the bearer secret.
fn identify(parts: &Parts, node: &Node) -> Result<Caller, ApiError> {
    if let Some(ConsoleActor(name)) = parts.extensions.get::<ConsoleActor>() {
        return Ok(Caller::Admin(name.clone()));
    }
    let presented = bearer(&parts.headers).ok_or(ApiError::Unauthenticated)?;
    Caller::of_secret(presented, node)
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
        identify(parts, node)
    }
}

/// An authenticated admin caller; the field is the token's name (the actor in history).
pub struct Admin(pub String);

impl FromRequestParts<Arc<Node>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        match identify(parts, node)? {
            Caller::Admin(name) => Ok(Admin(name)),
            Caller::Sdk { .. } => Err(ApiError::Forbidden(
                "this route needs an admin token, not an SDK key".into(),
            )),
        }
    }
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

    /// The body as a `T` of `flagstaff-api`: a body of another shape is a 400 naming the path
    /// of the fault (`body` for the whole).
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_path_to_error::deserialize(&self.value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." {
                "body".to_string()
            } else {
                path
            };
            ApiError::bad_request(format!("{path}: {}", e.inner()))
        })
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

/// A flag (`SEGMENT = false`) or segment item of the API: `…/{ns}/flags/{key}` or
/// `…/{ns}/segments/{key}`.
pub const fn item_kind(segment: bool) -> ChangeKind {
    if segment {
        ChangeKind::Segment
    } else {
        ChangeKind::Flag
    }
}

/// An admin's read of one flag or segment (`GET …/{ns}/flags/{key}`, `…/segments/{key}`): the
/// checked path and the read parameters (`consistency`, `min_revision`).
pub struct ItemRead<const SEGMENT: bool> {
    pub node: Arc<Node>,
    pub ns: String,
    pub key: String,
    pub params: ReadParams,
}

impl<const SEGMENT: bool> FromRequestParts<Arc<Node>> for ItemRead<SEGMENT> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        Admin::from_request_parts(parts, node).await?;
        let path = Path::<(String, String)>::from_request_parts(parts, node).await;
        let (ns, key) = item_path(path, item_kind(SEGMENT).as_str())?;
        let params = read_params(parts.uri.query(), node, true)?;
        let node = node.clone();
        Ok(ItemRead {
            node,
            ns,
            key,
            params,
        })
    }
}

/// An admin's read of a namespace's flags or segments (`GET …/{ns}/flags`, `…/segments`).
pub struct ListRead<const SEGMENT: bool> {
    pub node: Arc<Node>,
    pub ns: String,
    pub params: ReadParams,
}

impl<const SEGMENT: bool> FromRequestParts<Arc<Node>> for ListRead<SEGMENT> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        Admin::from_request_parts(parts, node).await?;
        let ns = namespace_path(Path::<String>::from_request_parts(parts, node).await)?;
        let params = read_params(parts.uri.query(), node, true)?;
        let node = node.clone();
        Ok(ListRead { node, ns, params })
    }
}

/// An admin's write to one flag or segment (`PUT`, `PATCH`, `DELETE` of `…/{ns}/flags/{key}`
/// or `…/segments/{key}`): the actor, the checked path, its condition (`If-Match`,
/// `If-None-Match`) and what the idempotency key is made of. A body, if any, is read after it.
pub struct ItemWrite<const SEGMENT: bool> {
    pub node: Arc<Node>,
    pub actor: String,
    pub ns: String,
    pub key: String,
    pub condition: Condition,
    pub method: Method,
    pub uri: axum::http::Uri,
    pub headers: HeaderMap,
}

impl<const SEGMENT: bool> FromRequestParts<Arc<Node>> for ItemWrite<SEGMENT> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        let Admin(actor) = Admin::from_request_parts(parts, node).await?;
        let path = Path::<(String, String)>::from_request_parts(parts, node).await;
        let (ns, key) = item_path(path, item_kind(SEGMENT).as_str())?;
        Ok(ItemWrite {
            node: node.clone(),
            actor,
            ns,
            key,
            condition: condition(&parts.headers)?,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        })
    }
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
