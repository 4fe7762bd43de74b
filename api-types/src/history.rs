//! The audit history: `GET /v1/namespaces/{ns}/history`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::admin::ItemKind;

/// One page of the audit history, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryPage {
    pub namespace: String,
    pub revision: u64,
    /// The oldest revision the retained history still holds (of any namespace).
    pub earliest_retained_revision: Option<u64>,
    pub changes: Vec<HistoryChange>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_before: Option<u64>,
}

/// One applied change: who made it, when, and each item before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryChange {
    pub revision: u64,
    /// The namespace's previous change.
    pub prev_revision: u64,
    pub at_ms: u64,
    /// The token name that made the change.
    pub actor: String,
    pub items: Vec<HistoryItem>,
}

/// One item of a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryItem {
    /// `flag`, `segment` or `namespace` (its description).
    pub kind: ItemKind,
    pub key: String,
    /// The definition before the change (null when it was created).
    pub before: Option<Value>,
    /// The definition after the change (null when it was deleted).
    pub after: Option<Value>,
}
