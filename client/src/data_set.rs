//! One immutable, compiled namespace state and where it came from. The client swaps whole
//! data sets atomically; evaluation reads one without locks.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use flagstaff_flags::{flag_refs, Fault, FlagSet};
use serde_json::{Map, Value};

use crate::wire::{WireChange, WireSnapshot};

/// Where an evaluated value came from, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Data received from a Flagstaff node in this process's lifetime.
    Network,
    /// The last-known-good file written by an earlier run (or earlier in this one).
    Lkg,
    /// The bootstrap flagd document shipped with the application.
    Bootstrap,
    /// The default passed at the call site (no data, or evaluation failed).
    Default,
}

impl Source {
    /// `network`, `lkg`, `bootstrap` or `default`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Lkg => "lkg",
            Self::Bootstrap => "bootstrap",
            Self::Default => "default",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One flag definition as compact JSON text: a `serde_json::Value` tree takes about 20 times
/// the bytes of its text (a map node per object), and the text is shared, not copied, between
/// successive data sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawDef {
    /// `Value::to_string` of the definition: keys sorted, so equal definitions have equal text.
    json: Arc<str>,
    /// It references a segment, so a segment change may change its outcome.
    uses_segments: bool,
}

impl RawDef {
    pub fn new(def: &Value) -> Self {
        Self {
            json: def.to_string().into(),
            uses_segments: !flag_refs(def).is_empty(),
        }
    }

    /// The definition. The text came from a `Value`, so it parses; were it ever not to, the
    /// flag would evaluate to `PARSE_ERROR`, never panic.
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }
}

/// Raw definitions, kept to apply incremental changes and to write the LKG file.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RawData {
    pub flags: BTreeMap<String, RawDef>,
    pub segments: BTreeMap<String, Value>,
}

impl RawData {
    pub fn from_values(flags: BTreeMap<String, Value>, segments: BTreeMap<String, Value>) -> Self {
        Self {
            flags: flags
                .iter()
                .map(|(k, v)| (k.clone(), RawDef::new(v)))
                .collect(),
            segments,
        }
    }

    /// The flag definitions as JSON values (for the LKG file).
    pub fn flag_values(&self) -> BTreeMap<String, Value> {
        self.flags
            .iter()
            .map(|(k, d)| (k.clone(), d.value()))
            .collect()
    }
}

/// A compiled namespace state.
#[derive(Debug)]
pub(crate) struct DataSet {
    pub flags: FlagSet,
    pub raw: RawData,
    /// `None` for bootstrap data, which has no revision.
    pub revision: Option<u64>,
    pub cluster_id: Option<String>,
    pub source: Source,
    /// Definitions that did not compile (they evaluate to `PARSE_ERROR`).
    pub faults: Vec<Fault>,
}

impl DataSet {
    pub fn build(
        raw: RawData,
        revision: Option<u64>,
        cluster_id: Option<String>,
        source: Source,
    ) -> Self {
        // Parsed for compiling only, then dropped: the text is what stays.
        let defs: Vec<(&str, Value)> = raw
            .flags
            .iter()
            .map(|(k, d)| (k.as_str(), d.value()))
            .collect();
        // Lossy: one bad definition must not take every other flag down.
        let (flags, faults) = FlagSet::build(
            defs.iter().map(|(k, v)| (*k, v)),
            &raw.segments,
            &Map::new(),
        );
        drop(defs);
        Self {
            flags,
            raw,
            revision,
            cluster_id,
            source,
            faults,
        }
    }

    pub fn from_snapshot(s: WireSnapshot) -> Self {
        Self::build(
            RawData::from_values(s.flags, s.segments),
            Some(s.revision),
            Some(s.cluster_id),
            Source::Network,
        )
    }

    /// A flagd document (`flags`, `$evaluators`), as a bootstrap file holds.
    pub fn from_flagd_document(doc: &Value) -> Result<Self, String> {
        let obj = doc
            .as_object()
            .ok_or("a flagd document must be a JSON object")?;
        let map = |v: Option<&Value>, what: &str| -> Result<BTreeMap<String, Value>, String> {
            match v {
                None | Some(Value::Null) => Ok(BTreeMap::new()),
                Some(Value::Object(m)) => {
                    Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                }
                Some(_) => Err(format!("`{what}` must be an object")),
            }
        };
        let raw = RawData::from_values(
            map(obj.get("flags"), "flags")?,
            map(obj.get("$evaluators"), "$evaluators")?,
        );
        Ok(Self::build(raw, None, None, Source::Bootstrap))
    }

    /// The same data under another source label (e.g. LKG data the network confirmed).
    pub fn relabel(&self, source: Source) -> Self {
        Self::build(
            self.raw.clone(),
            self.revision,
            self.cluster_id.clone(),
            source,
        )
    }

    /// This state with `change` applied (the caller checked it follows this state).
    pub fn apply(&self, change: WireChange) -> Self {
        let mut raw = self.raw.clone();
        for k in change.deleted.flags {
            raw.flags.remove(&k);
        }
        for k in change.deleted.segments {
            raw.segments.remove(&k);
        }
        raw.flags.extend(
            change
                .upserted
                .flags
                .iter()
                .map(|(k, v)| (k.clone(), RawDef::new(v))),
        );
        raw.segments.extend(change.upserted.segments);
        Self::build(
            raw,
            Some(change.revision),
            self.cluster_id.clone(),
            Source::Network,
        )
    }

    /// Keys of flags whose outcome may differ between `old` and `new`: definition added,
    /// removed or changed, or referencing a segment when any segment changed.
    pub fn changed_flags(old: Option<&RawData>, new: &RawData) -> Vec<String> {
        let empty = RawData::default();
        let old = old.unwrap_or(&empty);
        let segments_changed = old.segments != new.segments;
        let mut keys: Vec<String> = Vec::new();
        for (k, def) in &new.flags {
            let differs = old.flags.get(k) != Some(def);
            if differs || (segments_changed && def.uses_segments) {
                keys.push(k.clone());
            }
        }
        for k in old.flags.keys() {
            if !new.flags.contains_key(k) {
                keys.push(k.clone());
            }
        }
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{WireDeleted, WireUpserted};
    use flagstaff_flags::Context;
    use serde_json::json;

    fn flag(default: &str) -> Value {
        json!({"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":default})
    }

    #[test]
    fn changes_apply_and_report_what_changed() {
        let base = DataSet::build(
            RawData::from_values(
                BTreeMap::from([
                    ("a".into(), flag("off")),
                    ("b".into(), flag("on")),
                    (
                        "c".into(),
                        json!({"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off",
                               "targeting":{"if":[{"$ref":"staff"},"on","off"]}}),
                    ),
                ]),
                BTreeMap::from([("staff".into(), json!({"==":[1,1]}))]),
            ),
            Some(5),
            Some("c1".into()),
            Source::Network,
        );
        assert!(base.faults.is_empty(), "{:?}", base.faults);
        let next = base.apply(WireChange {
            revision: 9,
            prev_revision: 5,
            upserted: WireUpserted {
                flags: BTreeMap::from([("a".into(), flag("on"))]),
                segments: BTreeMap::from([("staff".into(), json!({"==":[1,2]}))]),
            },
            deleted: WireDeleted {
                flags: vec!["b".into()],
                segments: vec![],
            },
        });
        let ctx = Context::new(0);
        assert!(next.flags.boolean("a", &ctx, false).value);
        assert!(!next.flags.boolean("c", &ctx, true).value);
        assert!(next.flags.get("b").is_none());
        assert_eq!(next.revision, Some(9));
        assert_eq!(
            DataSet::changed_flags(Some(&base.raw), &next.raw),
            vec!["a", "b", "c"]
        );
        assert!(DataSet::changed_flags(Some(&next.raw), &next.raw).is_empty());
    }

    #[test]
    fn a_bad_definition_does_not_take_the_others_down() {
        let d = DataSet::from_flagd_document(&json!({"flags": {
            "good": flag("on"),
            "bad": {"state":"ENABLED","variants":{"on":true},"defaultVariant":"nope"}
        }}))
        .unwrap();
        let ctx = Context::new(0);
        assert!(d.flags.boolean("good", &ctx, false).value);
        assert_eq!(
            d.flags.boolean("bad", &ctx, false).error_code(),
            Some(flagstaff_flags::ErrorCode::ParseError)
        );
        assert!(!d.faults.is_empty());
        assert!(DataSet::from_flagd_document(&json!([1])).is_err());
        assert!(DataSet::from_flagd_document(&json!({"flags": 3})).is_err());
    }
}
