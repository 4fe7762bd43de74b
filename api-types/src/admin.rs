//! Namespaces, flags and segments: `/v1/namespaces[/{ns}[/flags|/segments[/{key}]]]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::FaultBody;

/// `PUT /v1/namespaces/{ns}` body (the body may also be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    /// For people; empty when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What a change or an item is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    /// A namespace (its description).
    Namespace,
    Flag,
    Segment,
}

/// A flag's `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum FlagState {
    Enabled,
    Disabled,
}

/// How `fractional` splits hash users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FractionalAlgorithm {
    V2,
    V3,
}

/// A flagd flag definition plus `description` and `tags`: the body of
/// `PUT …/flags/{key}`. The node validates the body whole with `flagstaff-flags` before it
/// is proposed (400 with the path of every fault), which checks more than this shape says
/// (variant types, rules); this type is the documented shape, for clients that build one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlagSpec {
    pub state: FlagState,
    /// Variant name → value; all values of one type (boolean, string, number or object).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub variants: BTreeMap<String, Value>,
    #[serde(
        rename = "defaultVariant",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub default_variant: Option<String>,
    /// JsonLogic with flagd's `fractional`, `sem_ver`, `starts_with`, `ends_with` and
    /// `{"$ref": "segment"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub targeting: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// How `fractional` splits hash users: `v2` (the default; flagd and its Go, Java, .NET and
    /// Node providers) or `v3` (the Python provider). Changing it moves users between variants.
    #[serde(
        rename = "fractionalAlgorithm",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub fractional_algorithm: Option<FractionalAlgorithm>,
}

/// A namespace: its description, version and sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamespaceInfo {
    pub name: String,
    pub description: String,
    pub version: u64,
    /// How many flags it holds.
    pub flags: usize,
    /// How many segments it holds.
    pub segments: usize,
    /// The revision the answer reflects (single namespace reads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

/// `GET /v1/namespaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamespaceList {
    pub revision: u64,
    pub namespaces: Vec<NamespaceInfo>,
}

/// The answer to a namespace write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamespaceWritten {
    pub namespace: String,
    pub version: u64,
    pub revision: u64,
}

/// The answer to a namespace delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamespaceDeleted {
    pub namespace: String,
    pub deleted: bool,
    pub revision: u64,
}

/// A flag or segment with its version and last change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ItemInfo {
    pub namespace: String,
    /// `flag` or `segment`.
    pub kind: ItemKind,
    pub key: String,
    pub version: u64,
    pub updated_at_ms: u64,
    /// The token name that wrote it.
    pub updated_by: String,
    /// `null` if the stored definition does not parse (state corruption; see `error`).
    pub definition: Value,
    /// Present only when the stored definition does not parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A flag's last reported evaluation (by an SDK's event batches or OFREP), if any: flags
    /// nobody evaluates any more are easy to find and remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluated_ms: Option<u64>,
}

/// `GET …/{ns}/flags`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlagList {
    pub namespace: String,
    pub revision: u64,
    pub flags: Vec<ItemInfo>,
}

/// `GET …/{ns}/segments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SegmentList {
    pub namespace: String,
    pub revision: u64,
    pub segments: Vec<ItemInfo>,
}

/// The answer to a flag or segment write: its new version (= the revision of the write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ItemWritten {
    pub namespace: String,
    pub key: String,
    pub version: u64,
    pub revision: u64,
    /// With `?flagd_semantics=true`: what was stored although Flagstaff refuses it by default,
    /// because flagd accepts it (each evaluates as flagd does it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<FaultBody>,
}

/// The answer to a flag or segment delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ItemDeleted {
    pub namespace: String,
    pub key: String,
    pub deleted: bool,
    pub revision: u64,
}
