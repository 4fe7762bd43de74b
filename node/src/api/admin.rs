//! The `/v1` admin API for namespaces, flags and segments.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flagstaff_raft_store::{Applied, ChangeKind, Command, Condition, Envelope, Item};
use serde_json::{json, Value};

use crate::api::extract::{
    condition, idempotency, item_path, namespace_path, read_params, Admin, JsonBody,
};
use crate::api::{revision_header, staleness_header};
use crate::error::ApiError;
use crate::node::Node;

pub fn router() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/namespaces", get(list_namespaces))
        .route(
            "/v1/namespaces/{ns}",
            get(get_namespace)
                .put(put_namespace)
                .delete(delete_namespace),
        )
        .route("/v1/namespaces/{ns}/flags", get(list_items::<FLAGS>))
        .route(
            "/v1/namespaces/{ns}/flags/{key}",
            get(get_item::<FLAGS>)
                .put(put_item::<FLAGS>)
                .patch(patch_flag)
                .delete(delete_item::<FLAGS>),
        )
        .route("/v1/namespaces/{ns}/segments", get(list_items::<SEGMENTS>))
        .route(
            "/v1/namespaces/{ns}/segments/{key}",
            get(get_item::<SEGMENTS>)
                .put(put_item::<SEGMENTS>)
                .delete(delete_item::<SEGMENTS>),
        )
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Flags and segments share their handlers; the const parameter picks which one a route serves.
const FLAGS: bool = false;
const SEGMENTS: bool = true;

const fn kind_of(segment: bool) -> ChangeKind {
    if segment {
        ChangeKind::Segment
    } else {
        ChangeKind::Flag
    }
}

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

fn written(body: Value, revision: u64) -> Response {
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(header::ETAG, etag(revision));
    revision_header(&mut resp, revision);
    resp
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

// ----- namespaces -----

async fn put_namespace(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    p: Result<Path<String>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response> {
    let ns = namespace_path(p)?;
    let description = match &body.value {
        Value::Null => String::new(),
        Value::Object(map) => {
            if let Some(k) = map.keys().find(|k| k.as_str() != "description") {
                return Err(ApiError::bad_request(format!(
                    "{k}: unknown field (expected \"description\")"
                )));
            }
            match map.get("description") {
                None => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(_) => return Err(ApiError::bad_request("description: must be a string")),
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "body: must be a JSON object like {\"description\": \"…\"}",
            ))
        }
    };
    let command = Command::PutNamespace {
        ns: ns.clone(),
        description,
        condition: condition(&headers)?,
    };
    let revision = submit(&node, &actor, &headers, &method, &uri, &body.raw, command)
        .await?
        .revision;
    Ok(written(
        json!({"namespace": ns, "version": revision, "revision": revision}),
        revision,
    ))
}

async fn delete_namespace(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    p: Result<Path<String>, PathRejection>,
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
        json!({"namespace": ns, "deleted": true, "revision": revision}),
        revision,
    ))
}

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
        let list: Vec<Value> = state
            .namespaces()
            .iter()
            .map(|(name, n)| {
                json!({"name": name, "description": n.description, "version": n.version,
                "flags": n.flags.len(), "segments": n.segments.len()})
            })
            .collect();
        (
            json!({"revision": state.revision(), "namespaces": list}),
            state.revision(),
        )
    };
    Ok(read_answer(body, revision, proof.staleness_ms, None))
}

async fn get_namespace(
    State(node): State<Arc<Node>>,
    _: Admin,
    p: Result<Path<String>, PathRejection>,
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
    let body = json!({"name": ns, "description": n.description, "version": n.version,
        "flags": n.flags.len(), "segments": n.segments.len(), "revision": state.revision()});
    Ok(read_answer(
        body,
        state.revision(),
        proof.staleness_ms,
        Some(n.version),
    ))
}

fn read_answer(
    body: Value,
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

fn item_json(kind: ChangeKind, ns: &str, key: &str, item: &Item) -> Value {
    let definition: Value = serde_json::from_str(&item.definition).unwrap_or(Value::Null);
    json!({
        "namespace": ns,
        "kind": kind.as_str(),
        "key": key,
        "version": item.version,
        "updated_at_ms": item.updated_at_ms,
        "updated_by": item.updated_by,
        "definition": definition,
    })
}

async fn get_item<const SEGMENT: bool>(
    State(node): State<Arc<Node>>,
    _: Admin,
    p: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let kind = kind_of(SEGMENT);
    let (ns, key) = item_path(p, kind.as_str())?;
    let (ns, key, query) = (ns.as_str(), key.as_str(), query.as_deref());
    let node = node.as_ref();
    let params = read_params(query, node, true)?;
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
        item_json(kind, ns, key, item),
        state.revision(),
        proof.staleness_ms,
        Some(item.version),
    ))
}

async fn list_items<const SEGMENT: bool>(
    State(node): State<Arc<Node>>,
    _: Admin,
    p: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let kind = kind_of(SEGMENT);
    let ns = namespace_path(p)?;
    let (ns, query) = (ns.as_str(), query.as_deref());
    let node = node.as_ref();
    let params = read_params(query, node, true)?;
    let proof = node
        .read_barrier(params.consistency, params.min_revision)
        .await?;
    let state = node.state.read();
    let space = state
        .namespace(ns)
        .ok_or_else(|| ApiError::NotFound(format!("namespace {ns:?} does not exist")))?;
    let items = space.items(kind);
    let list: Vec<Value> = items
        .iter()
        .map(|(k, item)| item_json(kind, ns, k, item))
        .collect();
    let field = if kind == ChangeKind::Flag {
        "flags"
    } else {
        "segments"
    };
    let body = json!({"namespace": ns, "revision": state.revision(), field: list});
    Ok(read_answer(
        body,
        state.revision(),
        proof.staleness_ms,
        None,
    ))
}

fn validate(kind: ChangeKind, value: &Value) -> Result<String> {
    let checked = if kind == ChangeKind::Flag {
        flagstaff_flags::validate_flag(value)
    } else {
        flagstaff_flags::validate_segment(value)
    };
    checked.map_err(ApiError::invalid)?;
    serde_json::to_string(value).map_err(|e| ApiError::bad_request(e.to_string()))
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

async fn put_item<const SEGMENT: bool>(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    p: Result<Path<(String, String)>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response> {
    let kind = kind_of(SEGMENT);
    let (ns, key) = item_path(p, kind.as_str())?;
    let (node, actor, method, uri, headers) =
        (node.as_ref(), actor.as_str(), &method, &uri, &headers);
    let definition = validate(kind, &body.value)?;
    let command = put_command(
        kind,
        ns.clone(),
        key.clone(),
        definition,
        condition(headers)?,
    );
    let revision = submit(node, actor, headers, method, uri, &body.raw, command)
        .await?
        .revision;
    Ok(written(
        json!({"namespace": ns, "key": key, "version": revision, "revision": revision}),
        revision,
    ))
}

async fn delete_item<const SEGMENT: bool>(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    p: Result<Path<(String, String)>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response> {
    let kind = kind_of(SEGMENT);
    let (ns, key) = item_path(p, kind.as_str())?;
    let (node, actor, method, uri, headers) =
        (node.as_ref(), actor.as_str(), &method, &uri, &headers);
    let condition = condition(headers)?;
    let command = if kind == ChangeKind::Flag {
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
    let revision = submit(node, actor, headers, method, uri, b"", command)
        .await?
        .revision;
    Ok(written(
        json!({"namespace": ns, "key": key, "deleted": true, "revision": revision}),
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

/// `PATCH` applies a merge patch to the current definition. Without `If-Match`, the patch is
/// applied against the version it was computed from and recomputed if someone else wrote in
/// between, so a concurrent write is never silently overwritten.
async fn patch_flag(
    State(node): State<Arc<Node>>,
    Admin(actor): Admin,
    p: Result<Path<(String, String)>, PathRejection>,
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
    for _attempt in 0..5 {
        node.read_barrier(crate::node::Consistency::Linearizable, None)
            .await?;
        let (mut definition, version) = {
            let state = node.state.read();
            let space = state
                .namespace(&ns)
                .ok_or_else(|| ApiError::NotFound(format!("namespace {ns:?} does not exist")))?;
            let item = space.flags.get(&key).ok_or_else(|| {
                ApiError::NotFound(format!("flag {key:?} does not exist in namespace {ns:?}"))
            })?;
            (
                serde_json::from_str::<Value>(&item.definition).unwrap_or(Value::Null),
                item.version,
            )
        };
        merge_patch(&mut definition, &body.value);
        let text = validate(ChangeKind::Flag, &definition)?;
        let cond = match wanted {
            Condition::IfMatch(v) => Condition::IfMatch(v),
            _ => Condition::IfMatch(version),
        };
        let command = put_command(ChangeKind::Flag, ns.clone(), key.clone(), text, cond);
        match submit(&node, &actor, &headers, &method, &uri, &body.raw, command)
            .await
            .map(|a| a.revision)
        {
            Err(ApiError::PreconditionFailed { .. }) if wanted == Condition::None => continue,
            Err(e) => return Err(e),
            Ok(revision) => {
                return Ok(written(
                    json!({"namespace": ns, "key": key, "version": revision, "revision": revision}),
                    revision,
                ))
            }
        }
    }
    Err(ApiError::Conflict(
        "the flag kept changing while the patch was applied; retry".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

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
