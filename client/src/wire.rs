//! The node's SDK wire format: snapshot bodies, watch `change` and `heartbeat` events.
//!
//! Everything here parses untrusted bytes, so every function returns an error instead of
//! assuming a shape; nothing panics on any input.

use std::collections::BTreeMap;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::data_set::RawDef;

/// Flag key → definition, each definition kept as its compact text as soon as it is read, so
/// a snapshot never stands in memory as one `Value` tree (about 20 times its text).
fn raw_defs<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, RawDef>, D::Error> {
    struct Defs;
    impl<'de> Visitor<'de> for Defs {
        type Value = BTreeMap<String, RawDef>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of flag definitions")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = m.next_entry::<String, Value>()? {
                out.insert(k, RawDef::new(&v));
            }
            Ok(out)
        }
    }
    d.deserialize_map(Defs)
}

/// A whole namespace at one revision, as `GET …/snapshot` and the `snapshot` event send it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WireSnapshot {
    /// The namespace.
    pub namespace: String,
    /// The cluster that produced it.
    pub cluster_id: String,
    /// The cluster-wide revision the namespace is at.
    pub revision: u64,
    /// Flag key → flagd flag definition.
    #[serde(default, deserialize_with = "raw_defs")]
    pub(crate) flags: BTreeMap<String, RawDef>,
    /// Segment key → JsonLogic rule.
    #[serde(default)]
    pub segments: BTreeMap<String, Value>,
}

/// Flags and segments upserted by one change.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct WireUpserted {
    /// Flag key → new definition.
    #[serde(default, deserialize_with = "raw_defs")]
    pub(crate) flags: BTreeMap<String, RawDef>,
    /// Segment key → new rule.
    #[serde(default)]
    pub segments: BTreeMap<String, Value>,
}

/// Keys deleted by one change.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct WireDeleted {
    /// Deleted flag keys.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Deleted segment keys.
    #[serde(default)]
    pub segments: Vec<String>,
}

/// One `change` event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WireChange {
    /// The revision of this change.
    pub revision: u64,
    /// The namespace's previous change; a client holding another revision has missed one.
    pub prev_revision: u64,
    /// What was created or replaced.
    #[serde(default)]
    pub upserted: WireUpserted,
    /// What was removed.
    #[serde(default)]
    pub deleted: WireDeleted,
}

/// A `heartbeat` event: the node's proof that its data is at most `staleness_ms` old.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WireHeartbeat {
    /// The node's applied revision.
    pub revision: u64,
    /// Age bound of the node's data when it sent the heartbeat.
    pub staleness_ms: u64,
}

/// Why a body could not be used.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {source}")]
pub struct WireError {
    what: &'static str,
    #[source]
    source: serde_json::Error,
}

fn parse<T: for<'de> Deserialize<'de>>(what: &'static str, bytes: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(bytes).map_err(|source| WireError { what, source })
}

impl WireSnapshot {
    /// Parses a snapshot body.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        parse("snapshot", bytes)
    }
}

impl WireChange {
    /// Parses a `change` event's data.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        parse("change event", bytes)
    }
}

impl WireHeartbeat {
    /// Parses a `heartbeat` event's data.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        parse("heartbeat event", bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shapes_and_refuses_others() {
        let s = WireSnapshot::parse(
            br#"{"namespace":"n","cluster_id":"c","revision":5,"flags":{"f":{"state":"ENABLED"}},"segments":{}}"#,
        )
        .unwrap();
        assert_eq!((s.revision, s.flags.len()), (5, 1));
        let c = WireChange::parse(
            br#"{"revision":9,"prev_revision":5,"upserted":{"flags":{"g":{}}},"deleted":{"flags":["f"],"segments":[]}}"#,
        )
        .unwrap();
        assert_eq!((c.prev_revision, c.deleted.flags.len()), (5, 1));
        let h = WireHeartbeat::parse(br#"{"revision":9,"staleness_ms":120}"#).unwrap();
        assert_eq!(h.staleness_ms, 120);
        for bad in [
            &b""[..],
            b"null",
            b"[]",
            br#"{"revision":-1}"#,
            br#"{"namespace":"n","cluster_id":"c","revision":"5"}"#,
            br#"{"namespace":"n","cluster_id":"c","revision":5,"flags":[]}"#,
        ] {
            assert!(WireSnapshot::parse(bad).is_err());
        }
        assert!(WireChange::parse(br#"{"revision":9}"#).is_err());
    }
}
