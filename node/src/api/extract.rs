//! Request parsing shared by the handlers: auth, bodies, read parameters, names, conditions and
//! idempotency keys. Every failure becomes an [`ApiError`] (400/401/413), never a panic. The
//! parsed types also describe themselves to the OpenAPI document (`IntoParams`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use flagstaff_raft_store::{ChangeKind, Condition, IdempotencyKey};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::{ObjectBuilder, Required, Type};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{bearer, Caller};
use crate::error::ApiError;
use crate::names::check_name;
use crate::node::{Consistency, Node, ReadProof};

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
        // (A malformed query is the route's own 400, once the caller is known.)
        let query = InQuery::<ReadQuery>::parse(parts.uri.query()).ok();
        let min_revision = query.and_then(|q| q.min_revision);
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
        serde_path_to_error::deserialize(&self.value).map_err(|e| fault_at("body", e))
    }
}

/// A 400 naming where `T` did not parse: the field's path, or `whole` for the whole input.
fn fault_at<E: std::fmt::Display>(whole: &str, e: serde_path_to_error::Error<E>) -> ApiError {
    let path = e.path().to_string();
    let path = if path == "." { whole } else { path.as_str() };
    ApiError::bad_request(format!("{path}: {}", e.inner()))
}

// ----- the shapes of requests -----
//
// Each type below is what a handler takes from a request and, through its `IntoParams`, what
// the OpenAPI document says the request carries: the document is made from the parser's own
// types, so the two cannot drift apart.

/// A query string parsed as `T`: an unknown parameter is ignored, a malformed one is a 400
/// naming it.
pub struct InQuery<T>(pub T);

impl<T: DeserializeOwned> InQuery<T> {
    pub fn parse(query: Option<&str>) -> Result<T, ApiError> {
        let pairs = form_urlencoded::parse(query.unwrap_or("").as_bytes());
        serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs))
            .map_err(|e| fault_at("query", e))
    }
}

impl<T: DeserializeOwned, S: Sync> FromRequestParts<S> for InQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        InQuery::parse(parts.uri.query()).map(InQuery)
    }
}

/// Path parameters that are names (of namespaces, flags, segments, keys), checked by
/// [`check_name`] once parsed.
pub trait PathNames: DeserializeOwned + Send {
    /// Each name with the parameter it is.
    fn names(&self) -> Vec<(&'static str, &str)>;
}

/// A route's `{…}` segments parsed as `T` and checked as names.
pub struct InPath<T>(pub T);

impl<T: PathNames, S: Send + Sync> FromRequestParts<S> for InPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(p) = Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        for (what, name) in p.names() {
            check_name(what, name)?;
        }
        Ok(InPath(p))
    }
}

/// `{ns}` in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct NsPath {
    /// Namespace name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub ns: String,
}

impl PathNames for NsPath {
    fn names(&self) -> Vec<(&'static str, &str)> {
        vec![("namespace", &self.ns)]
    }
}

/// `{ns}` and `{key}` in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ItemPath {
    /// Namespace name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub ns: String,
    /// Flag or segment key.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub key: String,
}

impl PathNames for ItemPath {
    fn names(&self) -> Vec<(&'static str, &str)> {
        vec![("namespace", &self.ns), ("key", &self.key)]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyParam {
    Linearizable,
    Bounded,
}

/// The read parameters every read takes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// `linearizable`: a quorum-confirmed read index from the leader, then wait until applied.
    /// `bounded`: this node's state, which reflects every write acknowledged before
    /// `now - Flagstaff-Staleness-Ms`; 503 `STALE_REPLICA` when the node cannot prove that.
    /// Admin reads default to `linearizable`, application reads (snapshot, watch, OFREP) to
    /// `bounded`.
    #[param(inline)]
    pub consistency: Option<ConsistencyParam>,
    /// Bound for `bounded` reads (default 2000; giving it alone selects `bounded`).
    #[param(minimum = 1, maximum = 3600000)]
    pub max_staleness_ms: Option<u64>,
    /// Wait until this node has applied this revision (bounded wait, then 503).
    pub min_revision: Option<u64>,
}

impl ReadQuery {
    /// The consistency these parameters ask of `node`; without `consistency` (and without
    /// `max_staleness_ms`), linearizable if `default_linearizable`.
    pub fn resolve(self, node: &Node, default_linearizable: bool) -> Result<ReadParams, ApiError> {
        let default_ms = node.config.max_staleness.as_millis() as u64;
        let bound = Duration::from_millis(self.max_staleness_ms.unwrap_or(default_ms));
        if bound.is_zero() || bound > Duration::from_secs(3600) {
            return Err(ApiError::bad_request(
                "max_staleness_ms: must be between 1 and 3600000",
            ));
        }
        let consistency = match self.consistency {
            None if default_linearizable && self.max_staleness_ms.is_none() => {
                Consistency::Linearizable
            }
            None | Some(ConsistencyParam::Bounded) => Consistency::Bounded(bound),
            Some(ConsistencyParam::Linearizable) => Consistency::Linearizable,
        };
        Ok(ReadParams {
            consistency,
            min_revision: self.min_revision,
        })
    }

    /// Parses and resolves a query string's read parameters.
    pub fn params(
        query: Option<&str>,
        node: &Node,
        default_linearizable: bool,
    ) -> Result<ReadParams, ApiError> {
        InQuery::<ReadQuery>::parse(query)?.resolve(node, default_linearizable)
    }
}

/// What a read asks for: its consistency and the revision to wait for.
pub struct ReadParams {
    pub consistency: Consistency,
    pub min_revision: Option<u64>,
}

/// The [`ReadQuery`] of a read, resolved: an admin read (`Read` or `Read<true>`) defaults to
/// linearizable, an application's read (`Read<false>`) to bounded.
pub struct Read<const DEFAULT_LINEARIZABLE: bool = true>(pub ReadParams);

impl<const L: bool> FromRequestParts<Arc<Node>> for Read<L> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        ReadQuery::params(parts.uri.query(), node, L).map(Read)
    }
}

/// An admin's read in one namespace (`GET /v1/namespaces/{ns}/…`): the caller checked, the
/// path parsed and the read barrier passed, so the node's state reflects what `consistency`
/// and `min_revision` asked for when the handler runs.
pub struct NsRead {
    pub node: Arc<Node>,
    pub ns: String,
    pub proof: ReadProof,
}

impl FromRequestParts<Arc<Node>> for NsRead {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        Admin::from_request_parts(parts, node).await?;
        let InPath(NsPath { ns }) = InPath::from_request_parts(parts, node).await?;
        let Read(params) = Read::<true>::from_request_parts(parts, node).await?;
        let proof = node
            .read_barrier(params.consistency, params.min_revision)
            .await?;
        let node = node.clone();
        Ok(NsRead { node, ns, proof })
    }
}

impl IntoParams for NsRead {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        [
            NsPath::into_params(|| None),
            ReadQuery::into_params(|| None),
        ]
        .concat()
    }
}

/// The 404 of a namespace that does not exist.
pub fn no_namespace(ns: &str) -> ApiError {
    ApiError::NotFound(format!("namespace {ns:?} does not exist"))
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

/// An admin's read of one item of a namespace (`GET …/{ns}/flags/{key}`,
/// `…/segments/{key}`, `…/experiments/{key}`): as [`NsRead`], with the item's key.
pub struct ItemRead {
    pub node: Arc<Node>,
    pub ns: String,
    pub key: String,
    pub proof: ReadProof,
}

impl FromRequestParts<Arc<Node>> for ItemRead {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        Admin::from_request_parts(parts, node).await?;
        let InPath(ItemPath { ns, key }) = InPath::from_request_parts(parts, node).await?;
        let Read(params) = Read::<true>::from_request_parts(parts, node).await?;
        let proof = node
            .read_barrier(params.consistency, params.min_revision)
            .await?;
        let node = node.clone();
        Ok(ItemRead {
            node,
            ns,
            key,
            proof,
        })
    }
}

impl IntoParams for ItemRead {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        [
            ItemPath::into_params(|| None),
            ReadQuery::into_params(|| None),
        ]
        .concat()
    }
}

/// An admin's write to one flag or segment (`PUT`, `DELETE` of `…/{ns}/flags/{key}` or
/// `…/segments/{key}`): the actor, the checked path, its precondition and what its
/// idempotency key is made of. A body, if any, is read after it.
pub struct ItemWrite<const SEGMENT: bool> {
    pub node: Arc<Node>,
    pub actor: String,
    pub ns: String,
    pub key: String,
    pub condition: Condition,
    pub retry: RetryKey,
}

impl<const SEGMENT: bool> FromRequestParts<Arc<Node>> for ItemWrite<SEGMENT> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        let Admin(actor) = Admin::from_request_parts(parts, node).await?;
        let InPath(ItemPath { ns, key }) = InPath::from_request_parts(parts, node).await?;
        let Precondition(condition) = Precondition::from_request_parts(parts, node).await?;
        let retry = RetryKey::from_request_parts(parts, node).await?;
        Ok(ItemWrite {
            node: node.clone(),
            actor,
            ns,
            key,
            condition,
            retry,
        })
    }
}

impl<const SEGMENT: bool> IntoParams for ItemWrite<SEGMENT> {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        [
            ItemPath::into_params(|| None),
            Precondition::into_params(|| None),
            RetryKey::into_params(|| None),
        ]
        .concat()
    }
}

/// A header parameter of the document: optional, a string.
fn header_param(name: &str, description: &str) -> Parameter {
    header_param_of(name, description, ObjectBuilder::new())
}

fn header_param_of(name: &str, description: &str, schema: ObjectBuilder) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema.schema_type(Type::String)))
        .build()
}

/// A write's precondition: `If-Match: "<version>"` (write only if the item's current version
/// is this one) or `If-None-Match: *` (create only); a write that does not hold is a 412 with
/// the current version.
pub struct Precondition(pub Condition);

impl<S: Sync> FromRequestParts<S> for Precondition {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        condition(&parts.headers).map(Precondition)
    }
}

impl IntoParams for Precondition {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            header_param(
                "If-Match",
                "write only if the current version is this one, quoted: `\"42\"` (else 412)",
            ),
            header_param(
                "If-None-Match",
                "`*`: create only (412 with the current version if the item exists); not on `PATCH`",
            ),
        ]
    }
}

fn condition(headers: &HeaderMap) -> Result<Condition, ApiError> {
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

/// What a write's idempotency key is made of: the client's `Idempotency-Key` (a retry with
/// the same key, per caller and namespace, applies once and answers the first result; the same
/// key with another request answers 422), the method and the path. Without the header the
/// node makes a fresh key, so that its own retries after a leader change apply once.
pub struct RetryKey {
    client: Option<String>,
    method: Method,
    path: String,
}

impl<S: Sync> FromRequestParts<S> for RetryKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let client = match parts.headers.get("idempotency-key") {
            None => None,
            Some(v) => {
                let k = v
                    .to_str()
                    .map_err(|_| ApiError::bad_request("Idempotency-Key: must be visible ASCII"))?;
                if k.is_empty() || k.len() > 256 {
                    return Err(ApiError::bad_request(
                        "Idempotency-Key: must be 1-256 characters",
                    ));
                }
                Some(k.to_string())
            }
        };
        Ok(RetryKey {
            client,
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
        })
    }
}

impl IntoParams for RetryKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let length = ObjectBuilder::new()
            .min_length(Some(1))
            .max_length(Some(256));
        vec![header_param_of(
            "Idempotency-Key",
            "visible ASCII characters: a retry with the same key (per token and namespace) \
             applies once and answers the first result; the same key with another request \
             answers 422",
            length,
        )]
    }
}

impl RetryKey {
    /// The stored idempotency key of this write by `actor` in `ns` with `body`.
    pub fn key(&self, actor: &str, ns: &str, body: &[u8]) -> IdempotencyKey {
        let mut hash = Sha256::new();
        hash.update(self.method.as_str().as_bytes());
        hash.update([0]);
        hash.update(self.path.as_bytes());
        hash.update([0]);
        hash.update(body);
        let fingerprint = hex::encode(hash.finalize());
        let key = match &self.client {
            Some(k) => format!("client:{k}"),
            None => {
                let mut bytes = [0u8; 16];
                rand::thread_rng().fill_bytes(&mut bytes);
                format!("node:{}", hex::encode(bytes))
            }
        };
        IdempotencyKey {
            scope: format!("{actor}/{ns}/{key}"),
            fingerprint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document is made from the parsers' types; this shows each parameter it names is one
    /// the parser reads: a bad value of it is a 400 that names it.
    #[test]
    fn every_documented_read_parameter_is_parsed() {
        let documented = ReadQuery::into_params(|| None);
        assert_eq!(documented.len(), 3);
        for p in documented {
            let query = format!("{}=not-a-value", p.name);
            let e = InQuery::<ReadQuery>::parse(Some(&query))
                .err()
                .unwrap_or_else(|| panic!("{query} was accepted"));
            assert!(e.to_string().contains(&p.name), "{query}: {e}");
        }
        let q = InQuery::<ReadQuery>::parse(Some("consistency=bounded&min_revision=7&other=1"));
        let q = q.expect("valid read parameters");
        assert_eq!(q.consistency, Some(ConsistencyParam::Bounded));
        assert_eq!((q.min_revision, q.max_staleness_ms), (Some(7), None));
    }

    #[tokio::test]
    async fn every_documented_write_header_is_parsed() {
        let documented = [
            Precondition::into_params(|| None),
            RetryKey::into_params(|| None),
        ]
        .concat();
        assert_eq!(documented.len(), 3);
        for p in documented {
            let request = Request::builder().header(p.name.as_str(), "").body(());
            let (mut parts, ()) = request.expect("a request").into_parts();
            let precondition = Precondition::from_request_parts(&mut parts, &()).await;
            let retry = RetryKey::from_request_parts(&mut parts, &()).await;
            let e = precondition.err().or(retry.err());
            let e = e.unwrap_or_else(|| panic!("an empty {} was accepted", p.name));
            assert!(e.to_string().contains(&p.name), "{}: {e}", p.name);
        }
    }
}
