//! The SDK API: `GET /v1/namespaces/{ns}/snapshot` and the events of the watch stream
//! `GET /v1/namespaces/{ns}/watch` (`snapshot`, `change`, `heartbeat`, `stale`, `error`).
//!
//! A flag definition is `D`: a `serde_json::Value` by default; a reader that keeps each
//! definition in another form (the SDK keeps its compact text) names its own type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A namespace's whole state at one revision: the snapshot body and the `snapshot` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamespaceSnapshot<D = Value> {
    pub namespace: String,
    /// The cluster that produced it.
    pub cluster_id: String,
    /// The cluster-wide revision the namespace is at.
    pub revision: u64,
    /// Flag key → flagd flag definition.
    #[serde(default = "BTreeMap::new")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, Object>))]
    pub flags: BTreeMap<String, D>,
    /// Segment key → JsonLogic rule.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, Object>))]
    pub segments: BTreeMap<String, Value>,
}

/// Flags and segments created or replaced by one change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Upserted<D = Value> {
    /// Flag key → new definition.
    #[serde(default = "BTreeMap::new")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, Object>))]
    pub flags: BTreeMap<String, D>,
    /// Segment key → new rule.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, Object>))]
    pub segments: BTreeMap<String, Value>,
}

impl<D> Default for Upserted<D> {
    fn default() -> Self {
        Upserted {
            flags: BTreeMap::new(),
            segments: BTreeMap::new(),
        }
    }
}

/// Keys deleted by one change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deleted {
    /// Deleted flag keys.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Deleted segment keys.
    #[serde(default)]
    pub segments: Vec<String>,
}

/// A `change` event (its SSE id is `revision`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeEvent<D = Value> {
    /// The revision of this change.
    pub revision: u64,
    /// The namespace's previous change; a client holding another revision has missed one.
    pub prev_revision: u64,
    /// What was created or replaced.
    #[serde(default = "Upserted::default")]
    pub upserted: Upserted<D>,
    /// What was removed.
    #[serde(default)]
    pub deleted: Deleted,
}

/// A `heartbeat` event: the node's proof that its data is at most `staleness_ms` old.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Heartbeat {
    /// The node's applied revision.
    pub revision: u64,
    /// Age bound of the node's data when it sent the heartbeat.
    pub staleness_ms: u64,
}

/// A `stale` event: the node cannot prove the stream's bound any more; the stream closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StaleEvent {
    /// The revision the stream had delivered everything up to.
    pub revision: u64,
    pub message: String,
}

/// An `error` event (the SDK key was revoked); the stream closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorEvent {
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shapes_and_refuses_others() {
        let s: NamespaceSnapshot = serde_json::from_str(
            r#"{"namespace":"n","cluster_id":"c","revision":5,"flags":{"f":{"state":"ENABLED"}},"segments":{}}"#,
        )
        .unwrap();
        assert_eq!((s.revision, s.flags.len()), (5, 1));
        let c: ChangeEvent = serde_json::from_str(
            r#"{"revision":9,"prev_revision":5,"upserted":{"flags":{"g":{}}},"deleted":{"flags":["f"],"segments":[]}}"#,
        )
        .unwrap();
        assert_eq!((c.prev_revision, c.deleted.flags.len()), (5, 1));
        assert_eq!(c.upserted.flags["g"], serde_json::json!({}));
        let h: Heartbeat = serde_json::from_str(r#"{"revision":9,"staleness_ms":120}"#).unwrap();
        assert_eq!(h.staleness_ms, 120);
        for bad in [
            "",
            "null",
            "[]",
            r#"{"revision":-1}"#,
            r#"{"namespace":"n","cluster_id":"c","revision":"5"}"#,
            r#"{"namespace":"n","cluster_id":"c","revision":5,"flags":[]}"#,
        ] {
            assert!(
                serde_json::from_str::<NamespaceSnapshot>(bad).is_err(),
                "{bad}"
            );
        }
        assert!(serde_json::from_str::<ChangeEvent>(r#"{"revision":9}"#).is_err());
    }

    #[test]
    fn serializes_field_for_field_as_the_node_sends_it() {
        let c = ChangeEvent::<Value> {
            revision: 9,
            prev_revision: 5,
            upserted: Upserted::default(),
            deleted: Deleted {
                flags: vec!["f".into()],
                segments: Vec::new(),
            },
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"revision":9,"prev_revision":5,"upserted":{"flags":{},"segments":{}},"deleted":{"flags":["f"],"segments":[]}}"#
        );
    }
}
