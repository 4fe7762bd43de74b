//! OpenFeature Remote Evaluation Protocol: `POST /ofrep/v1/evaluate/flags/{key}` and the bulk
//! `POST /ofrep/v1/evaluate/flags`, evaluated with `flagstaff-flags` (the same code the SDK
//! runs). The namespace comes from the SDK key (an admin token names it with `?namespace=` or
//! the `Flagstaff-Namespace` header). Reads are bounded-stale by default.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flagstaff_api::ofrep::{BulkEvaluation, BulkItem, EvaluationRequest, OfrepError, OfrepSuccess};
use flagstaff_flags::{Context, ErrorCode, FlagSet, Resolution};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::extract::{no_namespace, InQuery, JsonBody, ReadQuery};
use crate::api::{revision_header, staleness_header};
use crate::auth::Caller;
use crate::clock::wall_ms;
use crate::error::ApiError;
use crate::node::Node;

pub fn router() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::new()
        .routes(routes!(bulk))
        .routes(routes!(single))
}

/// With an admin token, the namespace (an SDK key names its own).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct NamespaceParam {
    /// Namespace, when called with an admin token (or the `Flagstaff-Namespace` header).
    namespace: Option<String>,
}

fn namespace_of(
    caller: &Caller,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<String, ApiError> {
    match caller {
        Caller::Sdk { ns, .. } => Ok(ns.clone()),
        Caller::Admin(_) => InQuery::<NamespaceParam>::parse(query)?
            .namespace
            .or_else(|| headers.get("flagstaff-namespace").and_then(|v| v.to_str().ok()).map(str::to_string))
            .ok_or_else(|| ApiError::bad_request("namespace: an admin token must name it with ?namespace= or Flagstaff-Namespace")),
    }
}

fn error_body(key: Option<&str>, code: &str, details: &str) -> OfrepError {
    OfrepError {
        key: key.map(str::to_string),
        error_code: code.to_string(),
        error_details: details.to_string(),
    }
}

/// An OFREP error body `{key, errorCode, errorDetails}` with its status.
fn ofrep_error(status: StatusCode, key: Option<&str>, code: &str, details: &str) -> Response {
    (status, Json(error_body(key, code, details))).into_response()
}

/// A request-level failure (credentials, parameters, availability) in OFREP's shape, keeping
/// its status and `Retry-After`.
fn api_error(key: Option<&str>, e: ApiError) -> Response {
    let (status, _) = e.status_code();
    let code = if status == StatusCode::NOT_FOUND {
        "FLAG_NOT_FOUND"
    } else {
        "GENERAL"
    };
    let mut resp = ofrep_error(status, key, code, &e.to_string());
    if let Some(secs) = e.retry_after() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The evaluation request body (the context) may not exceed `max_context_bytes`.
fn check_context_size(node: &Node, body: &JsonBody) -> Result<(), (String, String)> {
    let limit = node.config.max_context_bytes;
    if body.raw.len() > limit {
        return Err((
            "INVALID_CONTEXT".into(),
            format!(
                "context: the evaluation request is {} bytes, more than the limit of {limit}",
                body.raw.len()
            ),
        ));
    }
    Ok(())
}

fn context_of(body: &Value) -> Result<Context, (String, String)> {
    let now = (wall_ms() / 1000) as i64;
    match body {
        Value::Null => Ok(Context::new(now)),
        Value::Object(map) => match map.get("context") {
            None | Some(Value::Null) => Ok(Context::new(now)),
            Some(ctx) => {
                Context::from_json(ctx, now).map_err(|e| (e.code.as_str().to_string(), e.message))
            }
        },
        _ => Err((
            "INVALID_CONTEXT".into(),
            "body must be an object like {\"context\": {…}}".into(),
        )),
    }
}

fn success(key: &str, r: &Resolution<'_>) -> OfrepSuccess {
    OfrepSuccess {
        key: key.to_string(),
        value: r.value.cloned(),
        variant: r.variant.map(str::to_string),
        reason: r.reason,
        metadata: r.metadata.clone(),
    }
}

fn failure(key: &str, r: &Resolution<'_>) -> Option<(StatusCode, OfrepError)> {
    let e = r.error.as_ref()?;
    let status = if e.code == ErrorCode::FlagNotFound {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_REQUEST
    };
    Some((status, error_body(Some(key), e.code.as_str(), &e.message)))
}

/// An evaluation request made ready: the caller admitted to the namespace, the read barrier
/// passed, the namespace's compiled flags and the context parsed.
struct Prepared {
    ns: String,
    /// The namespace's last change, which the flag set reflects.
    rev: u64,
    set: Arc<FlagSet>,
    staleness: Option<u64>,
    /// The request body, as read.
    body: Value,
    ctx: Context,
}

/// Checks and reads an evaluation request of flag `key` (`None`: every flag), or the answer
/// refusing it: an API error, or OFREP's 400 for a context it cannot take. The body is read
/// only for an authenticated caller.
async fn prepare(
    node: &Node,
    caller: Result<Caller, ApiError>,
    key: Option<&str>,
    headers: &HeaderMap,
    query: Option<&str>,
    body: Request,
) -> Result<Prepared, Response> {
    let ready = async {
        let caller = caller?;
        let body = JsonBody::read(body, node.config.max_body_bytes).await?;
        node.rate_limits.check(match &caller {
            Caller::Admin(name) => name,
            Caller::Sdk { hash, .. } => hash,
        })?;
        let params = ReadQuery::params(query, node, false)?;
        let ns = namespace_of(&caller, headers, query)?;
        caller.check_namespace(&ns)?;
        let proof = node
            .read_barrier(params.consistency, params.min_revision)
            .await?;
        caller.check_still_valid(node)?;
        let (rev, set) = node
            .flag_sets
            .get(node, &ns)
            .ok_or_else(|| no_namespace(&ns))?;
        Ok::<_, ApiError>((ns, rev, set, proof.staleness_ms, body))
    };
    let (ns, rev, set, staleness, body) = ready.await.map_err(|e| api_error(key, e))?;
    let ctx = check_context_size(node, &body)
        .and_then(|()| context_of(&body.value))
        .map_err(|(code, details)| ofrep_error(StatusCode::BAD_REQUEST, key, &code, &details))?;
    Ok(Prepared {
        ns,
        rev,
        set,
        staleness,
        body: body.value,
        ctx,
    })
}

fn finish(mut resp: Response, node: &Node, staleness: Option<u64>) -> Response {
    revision_header(&mut resp, node.state.applied().revision);
    if let Some(s) = staleness {
        staleness_header(&mut resp, s);
    }
    resp
}

/// Evaluate one flag for a context.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags/{key}", tag = "ofrep", security(("bearer" = [])),
    params(("key" = String, Path, description = "flag key"), NamespaceParam, ReadQuery),
    request_body(content = Option<EvaluationRequest>),
    responses(
        (status = 200, description = "evaluated", body = OfrepSuccess),
        (status = 400, description = "evaluation failed (e.g. TYPE_MISMATCH, INVALID_CONTEXT)", body = OfrepError),
        (status = 404, description = "FLAG_NOT_FOUND", body = OfrepError)))]
async fn single(
    State(node): State<Arc<Node>>,
    caller: Result<Caller, ApiError>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Request,
) -> Response {
    let key = match p {
        Ok(Path(key)) => key,
        Err(e) => return api_error(None, ApiError::bad_request(e.body_text())),
    };
    let resp = evaluate_one(&node, caller, &key, &headers, q.as_deref(), body).await;
    counted(&node, resp)
}

/// Counts an OFREP answer by status (`flagstaff_ofrep_requests_total`).
fn counted(node: &Node, resp: Response) -> Response {
    crate::metrics::Metrics::answered(&node.metrics.ofrep_requests, resp.status().as_u16());
    resp
}

/// Counts an evaluation of a flag that exists (`flagstaff_evaluations_total`): keys a client
/// merely asked for never become series. An experiment flag's evaluation is an exposure.
fn count_evaluation(
    node: &Node,
    ns: &str,
    set: &FlagSet,
    key: &str,
    ctx: &Context,
    r: &Resolution<'_>,
) {
    if r.error
        .as_ref()
        .is_some_and(|e| e.code == ErrorCode::FlagNotFound)
    {
        return;
    }
    node.metrics.evaluated(ns, key, r.variant);
    let exposure = r
        .exposed_variant()
        .filter(|_| set.get(key).is_some_and(|f| f.experiment().is_some()))
        .map(|variant| (variant, ctx.targeting_key()));
    node.events.count_evaluation(ns, key, exposure);
}

async fn evaluate_one(
    node: &Node,
    caller: Result<Caller, ApiError>,
    key: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    body: Request,
) -> Response {
    let p = match prepare(node, caller, Some(key), headers, query, body).await {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let r = p.set.resolve(key, &p.ctx);
    count_evaluation(node, &p.ns, &p.set, key, &p.ctx, &r);
    let resp = match failure(key, &r) {
        Some((status, body)) => (status, Json(body)).into_response(),
        None => Json(success(key, &r)).into_response(),
    };
    finish(resp, node, p.staleness)
}

/// Writes `v` with object keys sorted, so equal contexts give equal bytes whatever the order
/// the client sent.
fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                canonical_json(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// The bulk `ETag`: the namespace's last change and a digest of the evaluation context, since
/// the answer depends on both. Stock web providers keep their `If-None-Match` across a context
/// change that keeps the targeting key, so a revision-only tag would answer 304 with the old
/// context's values.
fn bulk_etag(rev: u64, body: &Value) -> String {
    use sha2::{Digest, Sha256};
    let empty = Value::Object(Map::new());
    let ctx = match body.get("context") {
        None | Some(Value::Null) => &empty,
        Some(c) => c,
    };
    let mut bytes = Vec::new();
    canonical_json(ctx, &mut bytes);
    let digest = Sha256::digest(&bytes);
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{rev}-{hex}\"")
}

/// Evaluate every flag of the namespace for a context. `ETag` is the namespace's last change
/// plus a digest of the context; `If-None-Match` with it answers 304.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags", tag = "ofrep", security(("bearer" = [])),
    params(NamespaceParam, ReadQuery, ("If-None-Match" = Option<String>, Header, description = "the ETag of an earlier answer")),
    request_body(content = Option<EvaluationRequest>),
    responses(
        (status = 200, description = "every flag, evaluated or failed", body = BulkEvaluation),
        (status = 304, description = "neither the namespace nor the context changed since the ETag"),
        (status = 400, description = "invalid context", body = OfrepError)))]
async fn bulk(
    State(node): State<Arc<Node>>,
    caller: Result<Caller, ApiError>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Request,
) -> Response {
    let resp = evaluate_all(&node, caller, &headers, q.as_deref(), body).await;
    counted(&node, resp)
}

async fn evaluate_all(
    node: &Node,
    caller: Result<Caller, ApiError>,
    headers: &HeaderMap,
    query: Option<&str>,
    body: Request,
) -> Response {
    let p = match prepare(node, caller, None, headers, query, body).await {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let (ns, set, ctx, staleness) = (&p.ns, &p.set, &p.ctx, p.staleness);
    let etag = bulk_etag(p.rev, &p.body);
    let held = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if held.is_some_and(|h| {
        h.split(',')
            .any(|t| t.trim().trim_start_matches("W/") == etag)
    }) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(
            header::ETAG,
            HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
        );
        return finish(resp, node, staleness);
    }
    let mut flags: Vec<(String, BulkItem)> = set
        .resolve_all(ctx)
        .map(|(key, r)| {
            count_evaluation(node, ns, set, key, ctx, &r);
            let item = match failure(key, &r) {
                Some((_, body)) => BulkItem::Failure(body),
                None => BulkItem::Success(success(key, &r)),
            };
            (key.to_string(), item)
        })
        .collect();
    flags.sort_by(|a, b| a.0.cmp(&b.0));
    let flags = flags.into_iter().map(|(_, v)| v).collect();
    let mut resp = Json(BulkEvaluation { flags }).into_response();
    resp.headers_mut().insert(
        header::ETAG,
        HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
    );
    finish(resp, node, staleness)
}
