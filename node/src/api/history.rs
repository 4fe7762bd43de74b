//! `GET /v1/namespaces/{ns}/history`: the audit log — every retained change with revision, time,
//! actor and before/after definitions, newest first, paged with `before` and `limit`.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::api::extract::{parse_u64, read_params, Admin};
use crate::error::ApiError;
use crate::node::Node;
use crate::watch_hub::parse;

const MAX_PAGE: usize = 1000;

pub fn router() -> Router<Arc<Node>> {
    Router::new().route("/v1/namespaces/{ns}/history", get(history))
}

async fn history(
    State(node): State<Arc<Node>>,
    _: Admin,
    p: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let ns = crate::api::extract::namespace_path(p)?;
    let params = read_params(q.as_deref(), &node, true)?;
    let (mut key, mut before, mut limit) = (None, u64::MAX, 100usize);
    for (k, v) in &params.rest {
        match k.as_str() {
            "key" => key = Some(v.clone()),
            "before" => before = parse_u64("before", v)?,
            "limit" => limit = (parse_u64("limit", v)? as usize).clamp(1, MAX_PAGE),
            other => {
                return Err(ApiError::bad_request(format!(
                    "{other}: unknown parameter (key, before, limit)"
                )))
            }
        }
    }
    node.read_barrier(params.consistency, params.min_revision)
        .await?;
    let state = node.state.read();
    let matching = state
        .history()
        .iter()
        .rev()
        .filter(|c| c.ns == ns && c.revision < before)
        .filter(|c| {
            key.as_ref()
                .is_none_or(|k| c.items.iter().any(|i| &i.key == k))
        });
    let mut changes = Vec::new();
    let mut next = None;
    for c in matching {
        if changes.len() == limit {
            next = Some(
                changes
                    .last()
                    .map(|v: &Value| v["revision"].clone())
                    .unwrap_or(Value::Null),
            );
            break;
        }
        let items: Vec<Value> = c
            .items
            .iter()
            .filter(|i| key.as_ref().is_none_or(|k| &i.key == k))
            .map(|i| {
                json!({
                    "kind": i.kind.as_str(),
                    "key": i.key,
                    "before": i.before.as_deref().map(parse),
                    "after": i.after.as_deref().map(parse),
                })
            })
            .collect();
        changes.push(
            json!({"revision": c.revision, "prev_revision": c.prev_revision, "at_ms": c.at_ms,
            "actor": c.actor, "items": items}),
        );
    }
    Ok(Json(json!({
        "namespace": ns,
        "revision": state.revision(),
        "earliest_retained_revision": state.history().front().map(|c| c.revision),
        "changes": changes,
        "next_before": next,
    })))
}
