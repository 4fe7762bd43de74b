//! The node's SDK wire format: snapshot bodies, watch `change` and `heartbeat` events, as the
//! types of `flagstaff-api` with each flag definition kept as [`RawDef`] text.
//!
//! Everything here parses untrusted bytes, so every function returns an error instead of
//! assuming a shape; nothing panics on any input.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::data_set::RawDef;

/// A whole namespace at one revision, as `GET …/snapshot` and the `snapshot` event send it.
pub type WireSnapshot = flagstaff_api::sdk::NamespaceSnapshot<RawDef>;
/// One `change` event.
pub type WireChange = flagstaff_api::sdk::ChangeEvent<RawDef>;
/// A `heartbeat` event: the node's proof that its data is at most `staleness_ms` old.
pub type WireHeartbeat = flagstaff_api::sdk::Heartbeat;

/// A definition is kept as its compact text as soon as it is read, so a snapshot never stands
/// in memory as one `Value` tree (about 20 times its text): one definition at a time is.
impl<'de> Deserialize<'de> for RawDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(|v| RawDef::new(&v))
    }
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

/// Parses a snapshot body.
pub fn snapshot(bytes: &[u8]) -> Result<WireSnapshot, WireError> {
    parse("snapshot", bytes)
}

/// Parses a `change` event's data.
pub fn change(bytes: &[u8]) -> Result<WireChange, WireError> {
    parse("change event", bytes)
}

/// Parses a `heartbeat` event's data.
pub fn heartbeat(bytes: &[u8]) -> Result<WireHeartbeat, WireError> {
    parse("heartbeat event", bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shapes_and_refuses_others() {
        let s = snapshot(
            br#"{"namespace":"n","cluster_id":"c","revision":5,"flags":{"f":{"state":"ENABLED"}},"segments":{}}"#,
        )
        .unwrap();
        assert_eq!((s.revision, s.flags.len()), (5, 1));
        let c = change(
            br#"{"revision":9,"prev_revision":5,"upserted":{"flags":{"g":{}}},"deleted":{"flags":["f"],"segments":[]}}"#,
        )
        .unwrap();
        assert_eq!((c.prev_revision, c.deleted.flags.len()), (5, 1));
        let h = heartbeat(br#"{"revision":9,"staleness_ms":120}"#).unwrap();
        assert_eq!(h.staleness_ms, 120);
        for bad in [
            &b""[..],
            b"null",
            b"[]",
            br#"{"revision":-1}"#,
            br#"{"namespace":"n","cluster_id":"c","revision":"5"}"#,
            br#"{"namespace":"n","cluster_id":"c","revision":5,"flags":[]}"#,
        ] {
            assert!(snapshot(bad).is_err());
        }
        assert!(change(br#"{"revision":9}"#).is_err());
    }
}
