//! The `/v1` admin API for namespaces, flags and segments.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Json;
use flagstaff_api::admin::{
    FlagList, FlagSpec, ItemDeleted, ItemInfo, ItemWritten, NamespaceDeleted, NamespaceInfo,
    NamespaceList, NamespaceSpec, NamespaceWritten, SegmentList,
};
use flagstaff_flags::Fault;
use flagstaff_raft_store::IdempotencyKey as StoredKey;
use flagstaff_raft_store::{Applied, ChangeKind, Command, Condition, Envelope, Item};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::openapi::path::HttpMethod;
use utoipa::IntoParams;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use crate::api::extract::{
    item_kind, Admin, InPath, InQuery, ItemPath, ItemRead, ItemWrite, JsonBody, NsPath, NsRead,
    Precondition, Read, ReadQuery, RetryKey,
};
use crate::api::openapi::{body_object, body_of, Operation};
use crate::api::{revision_header, staleness_header};
use crate::error::ApiError;
use crate::node::Node;

pub fn router() -> OpenApiRouter<Arc<Node>> {
    let [flag, flags] = item_routes::<FLAGS>();
    let [segment, segments] = item_routes::<SEGMENTS>();
    OpenApiRouter::new()
        .routes(routes!(list_namespaces))
        .routes(routes!(get_namespace, put_namespace, delete_namespace))
        .routes(flags)
        .routes(flag)
        .routes(routes!(patch_flag))
        .routes(segments)
        .routes(segment)
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Flags and segments share their handlers; the const parameter picks which one a route serves.
const FLAGS: bool = false;
const SEGMENTS: bool = true;

/// Proposes one command (with the write's idempotency key) and answers with what it produced.
pub(crate) async fn submit(
    node: &Node,
    actor: &str,
    retry: &RetryKey,
    body: &[u8],
    command: Command,
) -> Result<Applied> {
    let idem = retry.key(actor, command.namespace(), body);
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
    params(NsPath, Precondition, RetryKey),
    request_body(content = Option<NamespaceSpec>, description = "`{}` or `{\"description\": \"…\"}`"),
    responses((status = 200, description = "written", body = NamespaceWritten)))]
async fn put_namespace(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    InPath(NsPath { ns }): InPath<NsPath>,
    Precondition(condition): Precondition,
    retry: RetryKey,
    body: JsonBody,
) -> Result<Response> {
    let spec: NamespaceSpec = match &body.value {
        Value::Null => NamespaceSpec::default(),
        _ => body.parse()?,
    };
    let description = spec.description.unwrap_or_default();
    let command = Command::PutNamespace {
        ns: ns.clone(),
        description,
        condition,
    };
    let revision = submit(&node, &actor, &retry, &body.raw, command)
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
    params(NsPath, Precondition, RetryKey),
    responses((status = 200, description = "deleted", body = NamespaceDeleted)))]
async fn delete_namespace(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    InPath(NsPath { ns }): InPath<NsPath>,
    Precondition(condition): Precondition,
    retry: RetryKey,
) -> Result<Response> {
    let command = Command::DeleteNamespace {
        ns: ns.clone(),
        condition,
    };
    let revision = submit(&node, &actor, &retry, b"", command).await?.revision;
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
    Read(params): Read,
) -> Result<Response> {
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
    InPath(NsPath { ns }): InPath<NsPath>,
    Read(params): Read,
) -> Result<Response> {
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

/// The routes of flags (`SEGMENT = false`) or of segments: the generic handlers below, routed
/// for one kind, with their operations documented here from one description per kind (a
/// generic handler cannot carry a `#[utoipa::path]`). `PATCH` is for flags only and documented
/// on [`patch_flag`].
fn item_routes<const SEGMENT: bool>() -> [UtoipaMethodRouter<Arc<Node>>; 2] {
    let (noun, tag) = if SEGMENT {
        ("segment", "segments")
    } else {
        ("flag", "flags")
    };
    let mut schemas = Vec::new();
    let (list, info) = if SEGMENT {
        (
            body_of::<SegmentList>(&mut schemas),
            body_of::<ItemInfo>(&mut schemas),
        )
    } else {
        (
            body_of::<FlagList>(&mut schemas),
            body_of::<ItemInfo>(&mut schemas),
        )
    };
    let (written, deleted) = (
        body_of::<ItemWritten>(&mut schemas),
        body_of::<ItemDeleted>(&mut schemas),
    );
    let write_params = ItemWrite::<SEGMENT>::into_params(|| None);
    let (put_summary, put_body, put_params) = if SEGMENT {
        (
            "Create or replace a segment (a JsonLogic rule, referenced as `{\"$ref\": \"key\"}`).",
            (body_object(), "a JsonLogic rule"),
            write_params.clone(),
        )
    } else {
        (
            "Create or replace a flag.",
            (body_of::<FlagSpec>(&mut schemas), "the flag's definition"),
            [write_params.clone(), FlagdSemantics::into_params(|| None)].concat(),
        )
    };
    let delete_summary = if SEGMENT {
        "Delete a segment (409 while a flag or segment still references it)."
    } else {
        "Delete a flag."
    };
    let one = Operation {
        id: format!("get_{noun}"),
        tag,
        summary: format!("One {noun}."),
        params: ItemRead::into_params(|| None),
        body: None,
        ok: (format!("the {noun}; ETag is its version"), info),
    };
    let put = Operation {
        id: format!("put_{noun}"),
        summary: put_summary.to_string(),
        params: put_params,
        body: Some(put_body),
        ok: ("written".to_string(), written),
        ..one.clone()
    };
    let delete = Operation {
        id: format!("delete_{noun}"),
        summary: delete_summary.to_string(),
        params: write_params,
        ok: ("deleted".to_string(), deleted),
        ..one.clone()
    };
    let every = Operation {
        id: format!("list_{tag}"),
        summary: format!("Every {noun} of a namespace."),
        params: NsRead::into_params(|| None),
        ok: (format!("the {tag}"), list),
        ..one.clone()
    };
    let item_path = format!("/v1/namespaces/{{ns}}/{tag}/{{key}}");
    let list_path = format!("/v1/namespaces/{{ns}}/{tag}");
    let item = [
        (HttpMethod::Get, one),
        (HttpMethod::Put, put),
        (HttpMethod::Delete, delete),
    ];
    let item_router = MethodRouter::new()
        .get(get_item::<SEGMENT>)
        .put(put_item::<SEGMENT>)
        .delete(delete_item::<SEGMENT>);
    let list_router = MethodRouter::new().get(list_items::<SEGMENT>);
    [
        (
            schemas.clone(),
            Operation::paths(&item_path, item),
            item_router,
        ),
        (
            schemas,
            Operation::paths(&list_path, [(HttpMethod::Get, every)]),
            list_router,
        ),
    ]
}

async fn get_item<const SEGMENT: bool>(r: ItemRead) -> Result<Response> {
    let kind = item_kind(SEGMENT);
    let (node, ns, key, proof) = (r.node.as_ref(), r.ns.as_str(), r.key.as_str(), r.proof);
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

async fn list_items<const SEGMENT: bool>(r: NsRead) -> Result<Response> {
    let kind = item_kind(SEGMENT);
    let (node, ns, proof) = (r.node.as_ref(), r.ns.as_str(), r.proof);
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

/// `?flagd_semantics=true` on a flag write.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct FlagdSemantics {
    /// Store what flagd accepts and resolves at evaluation (a branch naming no variant, an
    /// operator that cannot compare, a negative weight, an unknown operator), answered as
    /// `warnings`; without it those are 400 (see `flagstaff_flags::validate_flag_as_flagd`).
    flagd_semantics: Option<bool>,
}

impl FlagdSemantics {
    fn on(&self) -> bool {
        self.flagd_semantics == Some(true)
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
    let applied = submit(&w.node, &w.actor, &w.retry, raw, command).await?;
    Ok(applied.revision)
}

async fn put_item<const SEGMENT: bool>(
    w: ItemWrite<SEGMENT>,
    InQuery(flagd): InQuery<FlagdSemantics>,
    body: JsonBody,
) -> Result<Response> {
    let kind = item_kind(SEGMENT);
    let (definition, warnings) = validate(kind, &body.value, flagd.on())?;
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
    params(ItemPath, Precondition, RetryKey, FlagdSemantics),
    request_body(content = Object, description = "a JSON merge patch (RFC 7386) of the definition, e.g. `{\"state\": \"DISABLED\"}`"),
    responses((status = 200, description = "written", body = ItemWritten)))]
async fn patch_flag(
    w: ItemWrite<FLAGS>,
    InQuery(flagd): InQuery<FlagdSemantics>,
    body: JsonBody,
) -> Result<Response> {
    let ItemWrite {
        node,
        actor,
        ns,
        key,
        condition: wanted,
        retry,
    } = w;
    if !body.value.is_object() {
        return Err(ApiError::bad_request(
            "body: a merge patch must be a JSON object",
        ));
    }
    if wanted == Condition::CreateOnly {
        return Err(ApiError::bad_request(
            "If-None-Match: * makes no sense on PATCH",
        ));
    }
    let mut base = retry.key(&actor, &ns, &body.raw);
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
                let patch = (&body.value, flagd.on());
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
