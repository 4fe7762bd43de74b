//! The `/v1` admin API for namespaces, flags and segments.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flagstaff_api::admin::{
    FlagList, FlagSpec, ItemDeleted, ItemInfo, ItemWritten, NamespaceDeleted, NamespaceInfo,
    NamespaceList, NamespaceSpec, NamespaceWritten, SegmentList,
};
use flagstaff_flags::Fault;
use flagstaff_raft_store::IdempotencyKey as StoredKey;
use flagstaff_raft_store::{Applied, ChangeKind, Command, Condition, Envelope, Item};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::extract::{
    condition, idempotency, item_kind, item_path, namespace_path, read_params, Admin, ItemRead,
    ItemWrite, JsonBody, ListRead,
};
use crate::api::openapi::{
    FlagdSemantics, IdempotencyKey, IfMatch, IfNoneMatch, ItemPath, NsPath, ReadQuery,
};
use crate::api::{revision_header, staleness_header};
use crate::error::ApiError;
use crate::node::Node;

pub fn router() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::new()
        .routes(routes!(list_namespaces))
        .routes(routes!(get_namespace, put_namespace, delete_namespace))
        .routes(routes!(list_flags))
        .routes(routes!(get_flag, put_flag, patch_flag, delete_flag))
        .routes(routes!(list_segments))
        .routes(routes!(get_segment, put_segment, delete_segment))
}

type Result<T, E = ApiError> = std::result::Result<T, E>;
type NsPathArg = std::result::Result<Path<String>, PathRejection>;
type ItemPathArg = std::result::Result<Path<(String, String)>, PathRejection>;

/// Flags and segments share their handlers; the const parameter picks which one a route serves.
const FLAGS: bool = false;
const SEGMENTS: bool = true;

/// Proposes one command (with an idempotency key) and answers with what it produced.
pub(crate) async fn submit(
    node: &Node,
    actor: &str,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    body: &[u8],
    command: Command,
) -> Result<Applied> {
    let ns = command.namespace().to_string();
    let idem = idempotency(headers, actor, &ns, method, uri.path(), body)?;
    submit_keyed(node, actor, idem, command).await
}

/// Checks the stateless write limits, then proposes one command under the given idempotency
/// key and answers with what it produced.
async fn submit_keyed(
    node: &Node,
    actor: &str,
    idem: StoredKey,
    command: Command,
) -> Result<Applied> {
    node.config.state_limits.check(&command)?;
    let envelope = Envelope {
        actor: actor.to_string(),
        idempotency: Some(idem),
        command,
    };
    let mut results = node.write(vec![envelope]).await?;
    let applied = results
        .pop()
        .ok_or_else(|| ApiError::Unavailable("the leader returned no result".into()))??;
    Ok(applied)
}

fn written(body: impl Serialize, revision: u64) -> Response {
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(header::ETAG, etag(revision));
    revision_header(&mut resp, revision);
    resp
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

// ----- namespaces -----

/// Create or update a namespace.
#[utoipa::path(put, path = "/v1/namespaces/{ns}", tag = "namespaces", security(("bearer" = [])),
    params(NsPath, IfMatch, IfNoneMatch, IdempotencyKey),
    request_body(content = Option<NamespaceSpec>, description = "`{}` or `{\"description\": \"…\"}`"),
    responses((status = 200, description = "written", body = NamespaceWritten)))]
async fn put_namespace(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    p: NsPathArg,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response> {
    let ns = namespace_path(p)?;
    let spec: NamespaceSpec = match &body.value {
        Value::Null => NamespaceSpec::default(),
        _ => body.parse()?,
    };
    let description = spec.description.unwrap_or_default();
    let command = Command::PutNamespace {
        ns: ns.clone(),
        description,
        condition: condition(&headers)?,
    };
    let revision = submit(&node, &actor, &headers, &method, &uri, &body.raw, command)
        .await?
        .revision;
    Ok(written(
        NamespaceWritten {
            namespace: ns,
            version: revision,
            revision,
        },
        revision,
    ))
}

/// Delete a namespace with its flags, segments and SDK keys.
#[utoipa::path(delete, path = "/v1/namespaces/{ns}", tag = "namespaces", security(("bearer" = [])),
    params(NsPath, IfMatch, IfNoneMatch, IdempotencyKey),
    responses((status = 200, description = "deleted", body = NamespaceDeleted)))]
async fn delete_namespace(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    p: NsPathArg,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response> {
    let ns = namespace_path(p)?;
    let command = Command::DeleteNamespace {
        ns: ns.clone(),
        condition: condition(&headers)?,
    };
    let revision = submit(&node, &actor, &headers, &method, &uri, b"", command)
        .await?
        .revision;
    Ok(written(
        NamespaceDeleted {
            namespace: ns,
            deleted: true,
            revision,
        },
        revision,
    ))
}

/// Every namespace.
#[utoipa::path(get, path = "/v1/namespaces", tag = "namespaces", security(("bearer" = [])),
    params(ReadQuery), responses((status = 200, description = "the namespaces", body = NamespaceList)))]
async fn list_namespaces(
    State(node): State<Arc<Node>>,
    _: Admin,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let params = read_params(q.as_deref(), &node, true)?;
    let proof = node
        .read_barrier(params.consistency, params.min_revision)
        .await?;
    let (body, revision) = {
        let state = node.state.read();
        let namespaces = state
            .namespaces()
            .iter()
            .map(|(name, n)| namespace_info(name, n, None))
            .collect();
        (
            NamespaceList {
                revision: state.revision(),
                namespaces,
            },
            state.revision(),
        )
    };
    Ok(read_answer(body, revision, proof.staleness_ms, None))
}

fn namespace_info(
    name: &str,
    n: &flagstaff_raft_store::Namespace,
    revision: Option<u64>,
) -> NamespaceInfo {
    NamespaceInfo {
        name: name.to_string(),
        description: n.description.clone(),
        version: n.version,
        flags: n.flags.len(),
        segments: n.segments.len(),
        revision,
    }
}

/// One namespace.
#[utoipa::path(get, path = "/v1/namespaces/{ns}", tag = "namespaces", security(("bearer" = [])),
    params(NsPath, ReadQuery), responses((status = 200, description = "the namespace", body = NamespaceInfo)))]
async fn get_namespace(
    State(node): State<Arc<Node>>,
    _: Admin,
    p: NsPathArg,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let ns = namespace_path(p)?;
    let params = read_params(q.as_deref(), &node, true)?;
    let proof = node
        .read_barrier(params.consistency, params.min_revision)
        .await?;
    let state = node.state.read();
    let n = state
        .namespace(&ns)
        .ok_or_else(|| ApiError::NotFound(format!("namespace {ns:?} does not exist")))?;
    let body = namespace_info(&ns, n, Some(state.revision()));
    Ok(read_answer(
        body,
        state.revision(),
        proof.staleness_ms,
        Some(n.version),
    ))
}

fn read_answer(
    body: impl Serialize,
    revision: u64,
    staleness: Option<u64>,
    version: Option<u64>,
) -> Response {
    let mut resp = Json(body).into_response();
    revision_header(&mut resp, revision);
    if let Some(s) = staleness {
        staleness_header(&mut resp, s);
    }
    if let Some(v) = version {
        resp.headers_mut().insert(header::ETAG, etag(v));
    }
    resp
}

// ----- flags and segments -----

fn item_info(
    state: &flagstaff_raft_store::state::State,
    kind: ChangeKind,
    ns: &str,
    key: &str,
    item: &Item,
) -> ItemInfo {
    let (definition, error) = match item.definition.stored_json(ns, kind, key) {
        Ok(v) => (v.clone(), None),
        Err(e) => (Value::Null, Some(e)),
    };
    ItemInfo {
        namespace: ns.to_string(),
        kind: crate::api::item_kind_of(kind),
        key: key.to_string(),
        version: item.version,
        updated_at_ms: item.updated_at_ms,
        updated_by: item.updated_by.clone(),
        definition,
        error,
        last_evaluated_ms: state.experiments().last_evaluated(ns, key),
    }
}

// The routed handlers for flags and segments: documented one by one, sharing the generic ones.

/// One flag.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/flags/{key}", tag = "flags", security(("bearer" = [])),
    params(ItemPath, ReadQuery), responses((status = 200, description = "the flag; ETag is its version", body = ItemInfo)))]
async fn get_flag(r: ItemRead<FLAGS>) -> Result<Response> {
    get_item(r).await
}

/// One segment.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/segments/{key}", tag = "segments", security(("bearer" = [])),
    params(ItemPath, ReadQuery), responses((status = 200, description = "the segment; ETag is its version", body = ItemInfo)))]
async fn get_segment(r: ItemRead<SEGMENTS>) -> Result<Response> {
    get_item(r).await
}

/// Every flag of a namespace.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/flags", tag = "flags", security(("bearer" = [])),
    params(NsPath, ReadQuery), responses((status = 200, description = "the flags", body = FlagList)))]
async fn list_flags(r: ListRead<FLAGS>) -> Result<Response> {
    list_items(r).await
}

/// Every segment of a namespace.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/segments", tag = "segments", security(("bearer" = [])),
    params(NsPath, ReadQuery), responses((status = 200, description = "the segments", body = SegmentList)))]
async fn list_segments(r: ListRead<SEGMENTS>) -> Result<Response> {
    list_items(r).await
}

/// Create or replace a flag.
#[utoipa::path(put, path = "/v1/namespaces/{ns}/flags/{key}", tag = "flags", security(("bearer" = [])),
    params(ItemPath, IfMatch, IfNoneMatch, IdempotencyKey, FlagdSemantics), request_body = FlagSpec,
    responses((status = 200, description = "written", body = ItemWritten)))]
async fn put_flag(w: ItemWrite<FLAGS>, body: JsonBody) -> Result<Response> {
    put_item(w, body).await
}

/// Create or replace a segment (a JsonLogic rule, referenced as `{"$ref": "key"}`).
#[utoipa::path(put, path = "/v1/namespaces/{ns}/segments/{key}", tag = "segments", security(("bearer" = [])),
    params(ItemPath, IfMatch, IfNoneMatch, IdempotencyKey), request_body(content = Object, description = "a JsonLogic rule"),
    responses((status = 200, description = "written", body = ItemWritten)))]
async fn put_segment(w: ItemWrite<SEGMENTS>, body: JsonBody) -> Result<Response> {
    put_item(w, body).await
}

/// Delete a flag.
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/flags/{key}", tag = "flags", security(("bearer" = [])),
    params(ItemPath, IfMatch, IdempotencyKey), responses((status = 200, description = "deleted", body = ItemDeleted)))]
async fn delete_flag(w: ItemWrite<FLAGS>) -> Result<Response> {
    delete_item(w).await
}

/// Delete a segment (409 while a flag or segment still references it).
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/segments/{key}", tag = "segments", security(("bearer" = [])),
    params(ItemPath, IfMatch, IdempotencyKey), responses((status = 200, description = "deleted", body = ItemDeleted)))]
async fn delete_segment(w: ItemWrite<SEGMENTS>) -> Result<Response> {
    delete_item(w).await
}

async fn get_item<const SEGMENT: bool>(r: ItemRead<SEGMENT>) -> Result<Response> {
    let kind = item_kind(SEGMENT);
    let (node, ns, key, params) = (r.node.as_ref(), r.ns.as_str(), r.key.as_str(), r.params);
    let proof = node
        .read_barrier(params.consistency, params.min_revision)
        .await?;
    let state = node.state.read();
    let space = state
        .namespace(ns)
        .ok_or_else(|| ApiError::NotFound(format!("namespace {ns:?} does not exist")))?;
    let items = space.items(kind);
    let item = items.get(key).ok_or_else(|| {
        ApiError::NotFound(format!(
            "{} {key:?} does not exist in namespace {ns:?}",
            kind.as_str()
        ))
    })?;
    Ok(read_answer(
        item_info(&state, kind, ns, key, item),
        state.revision(),
        proof.staleness_ms,
        Some(item.version),
    ))
}

async fn list_items<const SEGMENT: bool>(r: ListRead<SEGMENT>) -> Result<Response> {
    let kind = item_kind(SEGMENT);
    let (node, ns, params) = (r.node.as_ref(), r.ns.as_str(), r.params);
    let proof = node
        .read_barrier(params.consistency, params.min_revision)
        .await?;
    let state = node.state.read();
    let space = state
        .namespace(ns)
        .ok_or_else(|| ApiError::NotFound(format!("namespace {ns:?} does not exist")))?;
    let list: Vec<ItemInfo> = space
        .items(kind)
        .iter()
        .map(|(k, item)| item_info(&state, kind, ns, k, item))
        .collect();
    let (namespace, revision) = (ns.to_string(), state.revision());
    Ok(if kind == ChangeKind::Flag {
        let body = FlagList {
            namespace,
            revision,
            flags: list,
        };
        read_answer(body, revision, proof.staleness_ms, None)
    } else {
        let body = SegmentList {
            namespace,
            revision,
            segments: list,
        };
        read_answer(body, revision, proof.staleness_ms, None)
    })
}

/// `?flagd_semantics=true` on a flag write: store what flagd accepts although Flagstaff
/// refuses it by default (see [`flagstaff_flags::validate_flag_as_flagd`]).
fn flagd_semantics(uri: &Uri) -> Result<bool> {
    let query = uri.query().unwrap_or_default().as_bytes();
    let Some((_, v)) = form_urlencoded::parse(query).find(|(k, _)| k == "flagd_semantics") else {
        return Ok(false);
    };
    match v.as_ref() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(ApiError::bad_request(format!(
            "flagd_semantics: {other:?} is not true or false"
        ))),
    }
}

/// Checks a definition and serializes it for the log; with `as_flagd`, also the warnings of
/// what was accepted because flagd accepts it.
fn validate(kind: ChangeKind, value: &Value, as_flagd: bool) -> Result<(String, Vec<Fault>)> {
    let warnings = match kind {
        ChangeKind::Flag if as_flagd => {
            flagstaff_flags::validate_flag_as_flagd(value).map_err(ApiError::invalid)?
        }
        ChangeKind::Flag => {
            flagstaff_flags::validate_flag(value).map_err(|faults| {
                let e = ApiError::invalid(faults);
                if flagstaff_flags::validate_flag_as_flagd(value).is_ok() {
                    e.with_hint(
                        "flagd accepts this flag and resolves these when it evaluates; \
                         add ?flagd_semantics=true to store it as flagd would",
                    )
                } else {
                    e
                }
            })?;
            Vec::new()
        }
        _ => {
            flagstaff_flags::validate_segment(value).map_err(ApiError::invalid)?;
            Vec::new()
        }
    };
    let text = serde_json::to_string(value).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((text, warnings))
}

fn put_command(
    kind: ChangeKind,
    ns: String,
    key: String,
    definition: String,
    condition: Condition,
) -> Command {
    if kind == ChangeKind::Flag {
        Command::PutFlag {
            ns,
            key,
            definition,
            condition,
        }
    } else {
        Command::PutSegment {
            ns,
            key,
            definition,
            condition,
        }
    }
}

/// Proposes `command` for write `w` (`raw`: its body, part of the idempotency fingerprint);
/// the revision it produced.
async fn submit_item<const SEGMENT: bool>(
    w: &ItemWrite<SEGMENT>,
    raw: &[u8],
    command: Command,
) -> Result<u64> {
    let applied = submit(
        &w.node, &w.actor, &w.headers, &w.method, &w.uri, raw, command,
    )
    .await?;
    Ok(applied.revision)
}

async fn put_item<const SEGMENT: bool>(w: ItemWrite<SEGMENT>, body: JsonBody) -> Result<Response> {
    let kind = item_kind(SEGMENT);
    let (definition, warnings) = validate(kind, &body.value, flagd_semantics(&w.uri)?)?;
    let command = put_command(kind, w.ns.clone(), w.key.clone(), definition, w.condition);
    let revision = submit_item(&w, &body.raw, command).await?;
    Ok(written(
        ItemWritten {
            namespace: w.ns,
            key: w.key,
            version: revision,
            revision,
            warnings: crate::error::fault_bodies(&warnings),
        },
        revision,
    ))
}

async fn delete_item<const SEGMENT: bool>(w: ItemWrite<SEGMENT>) -> Result<Response> {
    let (ns, key, condition) = (w.ns.clone(), w.key.clone(), w.condition);
    let command = if item_kind(SEGMENT) == ChangeKind::Flag {
        Command::DeleteFlag {
            ns: ns.clone(),
            key: key.clone(),
            condition,
        }
    } else {
        Command::DeleteSegment {
            ns: ns.clone(),
            key: key.clone(),
            condition,
        }
    };
    let revision = submit_item(&w, b"", command).await?;
    Ok(written(
        ItemDeleted {
            namespace: ns,
            key,
            deleted: true,
            revision,
        },
        revision,
    ))
}

/// JSON merge patch (RFC 7386).
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// How many times a `PATCH` without `If-Match` recomputes itself on a concurrent change.
const PATCH_ATTEMPTS: u32 = 5;

/// The idempotency key of one attempt of a `PATCH`.
///
/// Without `If-Match`, a `PATCH` is a loop: read the flag at version `V`, merge, propose with
/// `If-Match: V`; on 412 (someone wrote in between) read again and propose again. Each attempt
/// is a different command, and `apply` records one outcome per idempotency scope, so the
/// attempts cannot share the client's scope (the second attempt would be answered with the
/// first one's 412, and so would every retry of the client). Attempt 0 uses the request's own
/// scope (so the client's key still collides with a PUT or DELETE that used it: 422), attempt
/// `n > 0` the scope plus `"\n#patch-attempt-n"`. A header value cannot hold a newline, so no
/// client key can name another request's attempt.
///
/// Why this keeps "applied at most once" for the client's key: every attempt's outcome is
/// recorded under its own scope by `apply`, and a handler moves on to attempt `n + 1` only
/// after attempt `n` was recorded as a 412 (a recorded outcome never changes). So at most one
/// attempt of the chain can succeed, whichever handler (the first try, a client retry, or both
/// at once after a lost answer) proposes it: proposals of the same attempt are deduplicated in
/// `apply`. A retry walks the chain from attempt 0 and is answered, attempt by attempt, with
/// what was recorded, before recomputing anything: a success comes back as it was (same
/// revision, nothing applied again) even if the flag has changed or gone since, and an attempt
/// whose proposal is still in flight (504 before) is proposed again under the same scope, so
/// it applies once. The cost: one `PATCH` may hold up to 5 of the remembered keys.
fn patch_attempt_key(base: &StoredKey, attempt: u32) -> StoredKey {
    StoredKey {
        scope: if attempt == 0 {
            base.scope.clone()
        } else {
            format!("{}\n#patch-attempt-{attempt}", base.scope)
        },
        fingerprint: base.fingerprint.clone(),
    }
}

/// The fingerprint of a `PATCH` also covers its precondition: a retried attempt's recorded
/// 412 must come from the same request, not from one with another `If-Match`.
fn patch_fingerprint(fingerprint: &str, wanted: Condition) -> String {
    let mut h = Sha256::new();
    h.update(fingerprint.as_bytes());
    h.update([0]);
    match wanted {
        Condition::IfMatch(v) => h.update(format!("if-match {v}").as_bytes()),
        _ => h.update(b"retry"),
    }
    hex::encode(h.finalize())
}

/// `PATCH` applies a merge patch to the current definition. Without `If-Match`, the patch is
/// applied against the version it was computed from and recomputed if someone else wrote in
/// between, so a concurrent write is never silently overwritten.
#[utoipa::path(patch, path = "/v1/namespaces/{ns}/flags/{key}", tag = "flags", security(("bearer" = [])),
    params(ItemPath, IfMatch, IdempotencyKey, FlagdSemantics),
    request_body(content = Object, description = "a JSON merge patch (RFC 7386) of the definition, e.g. `{\"state\": \"DISABLED\"}`"),
    responses((status = 200, description = "written", body = ItemWritten)))]
async fn patch_flag(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    p: ItemPathArg,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response> {
    let (ns, key) = item_path(p, "flag")?;
    if !body.value.is_object() {
        return Err(ApiError::bad_request(
            "body: a merge patch must be a JSON object",
        ));
    }
    let wanted = condition(&headers)?;
    if wanted == Condition::CreateOnly {
        return Err(ApiError::bad_request(
            "If-None-Match: * makes no sense on PATCH",
        ));
    }
    let mut base = idempotency(&headers, &actor, &ns, &method, uri.path(), &body.raw)?;
    base.fingerprint = patch_fingerprint(&base.fingerprint, wanted);
    let attempts = if wanted == Condition::None {
        PATCH_ATTEMPTS
    } else {
        1
    };
    for attempt in 0..attempts {
        let idem = patch_attempt_key(&base, attempt);
        node.read_barrier(crate::node::Consistency::Linearizable, None)
            .await?;
        let outcome = match recorded_outcome(&node, &idem)? {
            // This attempt was already decided (by an earlier try of this request).
            Some(recorded) => recorded.map(|applied| (applied, Vec::new())),
            None => {
                let as_flagd = flagd_semantics(&uri)?;
                let patch = (&body.value, as_flagd);
                patch_attempt(&node, &actor, &ns, &key, patch, wanted, idem).await
            }
        };
        match outcome {
            Err(ApiError::PreconditionFailed { .. }) if wanted == Condition::None => continue,
            Err(e) => return Err(e),
            Ok((applied, warnings)) => {
                let revision = applied.revision;
                let body = ItemWritten {
                    namespace: ns,
                    key,
                    version: revision,
                    revision,
                    warnings: crate::error::fault_bodies(&warnings),
                };
                return Ok(written(body, revision));
            }
        }
    }
    Err(ApiError::Conflict(
        "the flag kept changing while the patch was applied; retry".into(),
    ))
}

/// The outcome this node has applied for `idem`, if any (422 if another request used it).
fn recorded_outcome(node: &Node, idem: &StoredKey) -> Result<Option<Result<Applied>>> {
    let state = node.state.read();
    match state.idempotency_outcome(&idem.scope) {
        None => Ok(None),
        Some((fingerprint, _)) if fingerprint != idem.fingerprint => {
            Err(ApiError::IdempotencyKeyReused)
        }
        Some((_, result)) => Ok(Some(result.clone().map_err(ApiError::from))),
    }
}

/// One attempt of a `PATCH`: read the flag, merge, validate, propose against the version read.
async fn patch_attempt(
    node: &Node,
    actor: &str,
    ns: &str,
    key: &str,
    (patch, as_flagd): (&Value, bool),
    wanted: Condition,
    idem: StoredKey,
) -> Result<(Applied, Vec<Fault>)> {
    let (mut definition, version) = {
        let state = node.state.read();
        let space = state
            .namespace(ns)
            .ok_or_else(|| ApiError::NotFound(format!("namespace {ns:?} does not exist")))?;
        let item = space.flags.get(key).ok_or_else(|| {
            ApiError::NotFound(format!("flag {key:?} does not exist in namespace {ns:?}"))
        })?;
        let current = item.definition.stored_json(ns, ChangeKind::Flag, key);
        (current.map_err(ApiError::Conflict)?.clone(), item.version)
    };
    merge_patch(&mut definition, patch);
    let (text, warnings) = validate(ChangeKind::Flag, &definition, as_flagd)?;
    let cond = match wanted {
        Condition::IfMatch(v) => Condition::IfMatch(v),
        _ => Condition::IfMatch(version),
    };
    let command = put_command(
        ChangeKind::Flag,
        ns.to_string(),
        key.to_string(),
        text,
        cond,
    );
    Ok((submit_keyed(node, actor, idem, command).await?, warnings))
}

#[cfg(test)]
mod tests {
    use super::{merge_patch, patch_attempt_key, patch_fingerprint, StoredKey};
    use flagstaff_raft_store::Condition;
    use serde_json::json;

    #[test]
    fn each_patch_attempt_has_its_own_scope_and_the_requests_fingerprint() {
        let base = StoredKey {
            scope: "admin/prod/client:k".into(),
            fingerprint: "f".into(),
        };
        assert_eq!(patch_attempt_key(&base, 0), base);
        let scopes: std::collections::BTreeSet<String> =
            (0..5).map(|a| patch_attempt_key(&base, a).scope).collect();
        assert_eq!(scopes.len(), 5);
        assert!((1..5).all(|a| patch_attempt_key(&base, a).fingerprint == "f"));
        // No client key (a header value, so no newline) names another key's attempt.
        assert!(scopes.iter().skip(1).all(|s| s.contains('\n')));
        let retry = patch_fingerprint("f", Condition::None);
        assert_ne!(retry, patch_fingerprint("f", Condition::IfMatch(3)));
        assert_ne!(
            patch_fingerprint("f", Condition::IfMatch(3)),
            patch_fingerprint("f", Condition::IfMatch(4))
        );
        assert_eq!(retry, patch_fingerprint("f", Condition::None));
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut v =
            json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "tags": ["a"]});
        merge_patch(
            &mut v,
            &json!({"state": "DISABLED", "variants": {"off": null}, "tags": ["b"]}),
        );
        assert_eq!(
            v,
            json!({"state": "DISABLED", "variants": {"on": true}, "tags": ["b"]})
        );
    }
}
