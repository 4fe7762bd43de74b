//! `GET /v1/namespaces/{ns}/history`: the audit log — every retained change with revision, time,
//! actor and before/after definitions, newest first, paged with `before` and `limit`.

use std::sync::Arc;

use axum::Json;
use flagstaff_api::history::{HistoryChange, HistoryItem, HistoryPage};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::extract::{InQuery, NsRead};
use crate::error::ApiError;
use crate::node::Node;
use flagstaff_raft_store::{ChangeKind, Definition};

const MAX_PAGE: usize = 1000;

pub fn router() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::new().routes(routes!(history))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// Only changes of this flag or segment.
    key: Option<String>,
    /// Only changes below this revision (the previous page's `next_before`).
    before: Option<u64>,
    /// Page size, 1–1000 (default 100).
    limit: Option<u64>,
}

/// Who changed what at which revision (audit).
#[utoipa::path(get, path = "/v1/namespaces/{ns}/history", tag = "audit", security(("bearer" = [])),
    params(NsRead, HistoryQuery),
    responses((status = 200, description = "one page of changes, newest first", body = HistoryPage)))]
async fn history(
    NsRead { node, ns, .. }: NsRead,
    InQuery(q): InQuery<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let key = q.key;
    let before = q.before.unwrap_or(u64::MAX);
    let limit = q
        .limit
        .map_or(100, |l| l.clamp(1, MAX_PAGE as u64) as usize);
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
    let mut changes: Vec<HistoryChange> = Vec::new();
    let mut next_before = None;
    for c in matching {
        if changes.len() == limit {
            next_before = changes.last().map(|c| c.revision);
            break;
        }
        let items = c
            .items
            .iter()
            .filter(|i| key.as_ref().is_none_or(|k| &i.key == k))
            .map(|i| HistoryItem {
                kind: crate::api::item_kind_of(i.kind),
                key: i.key.clone(),
                before: i
                    .before
                    .as_ref()
                    .map(|d| value_of(&c.ns, i.kind, &i.key, d)),
                after: i.after.as_ref().map(|d| value_of(&c.ns, i.kind, &i.key, d)),
            })
            .collect();
        changes.push(HistoryChange {
            revision: c.revision,
            prev_revision: c.prev_revision,
            at_ms: c.at_ms,
            actor: c.actor.clone(),
            items,
        });
    }
    Ok(Json(HistoryPage {
        namespace: ns,
        revision: state.revision(),
        earliest_retained_revision: state.history().front().map(|c| c.revision),
        changes,
        next_before,
    }))
}

/// A flag or segment definition as JSON (`null`, logged, if it does not parse); a namespace's
/// description as a string.
fn value_of(ns: &str, kind: ChangeKind, key: &str, stored: &Definition) -> serde_json::Value {
    if kind == ChangeKind::Namespace {
        serde_json::Value::String(stored.text().to_string())
    } else {
        stored.json_or_null(ns, kind, key)
    }
}
