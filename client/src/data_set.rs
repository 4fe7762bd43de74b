//! One immutable, compiled namespace state and where it came from. The client swaps whole
//! data sets atomically; evaluation reads one without locks.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use flagstaff_flags::{flag_refs, Fault, FlagSet};
use serde_json::{Map, Value};

use crate::config::Limits;
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

/// What a flag definition refused by the SDK is replaced with: it compiles to a fault (a flag
/// must be an object), so that flag alone evaluates to `PARSE_ERROR`, and the compiler's
/// message quotes it whole (it quotes up to 40 characters).
const REFUSED_FLAG: &str = "over the SDK's definition size limit";
const UNPARSABLE_FLAG: &str = "definition text would not parse back";
/// The same for a segment: an unknown operator, so the flags using it fail to compile.
const REFUSED_SEGMENT_OP: &str = "over the SDK's definition size limit";

/// Nesting depth up to which compact JSON text surely parses back (`serde_json` refuses 128
/// levels); deeper definitions are checked by parsing their text once.
const SURELY_PARSES_DEPTH: usize = 100;

/// Whether `v` nests more than `levels` arrays and objects deep (recursing at most that far).
fn deeper_than(v: &Value, levels: usize) -> bool {
    match v {
        Value::Array(a) => levels == 0 || a.iter().any(|c| deeper_than(c, levels - 1)),
        Value::Object(m) => levels == 0 || m.values().any(|c| deeper_than(c, levels - 1)),
        _ => false,
    }
}

impl RawDef {
    /// The definition as text. A definition whose text would not parse back (a `Value` built
    /// in code nested deeper than `serde_json` reads) is replaced with a placeholder that
    /// evaluates to `PARSE_ERROR`, and the replacement is logged.
    pub fn new(def: &Value) -> Self {
        let json: Arc<str> = def.to_string().into();
        if deeper_than(def, SURELY_PARSES_DEPTH) {
            if let Err(e) = serde_json::from_str::<Value>(&json) {
                tracing::warn!(
                    "a flag definition cannot be kept ({e}); it evaluates to PARSE_ERROR"
                );
                return Self::placeholder(UNPARSABLE_FLAG);
            }
        }
        Self {
            json,
            uses_segments: !flag_refs(def).is_empty(),
        }
    }

    fn placeholder(why: &str) -> Self {
        Self {
            json: Value::from(why).to_string().into(),
            uses_segments: false,
        }
    }

    /// Bytes of the definition's text.
    pub fn len(&self) -> usize {
        self.json.len()
    }

    /// The definition. Its text came from a `Value` and was checked to parse back, so an
    /// error here means the text was corrupted: the caller must not use a stand-in value.
    pub fn value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.json)
    }
}

/// Data beyond [`Limits`], refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct OverLimit(pub String);

/// Bytes of `v` as compact JSON, without building the text.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.0,
        // Serialising a `Value` does not fail; were it to, the value is not measurable and
        // must not be accepted.
        Err(_) => usize::MAX,
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

    /// The flag definitions as JSON values (for the LKG file). Fails, naming the flag, if a
    /// definition's text does not parse: a file must never hold a stand-in for it.
    pub fn flag_values(&self) -> Result<BTreeMap<String, Value>, String> {
        self.flags
            .iter()
            .map(|(k, d)| match d.value() {
                Ok(v) => Ok((k.clone(), v)),
                Err(e) => Err(format!(
                    "the stored definition of flag {k:?} is corrupt: {e}"
                )),
            })
            .collect()
    }

    /// This data within `limits`: too many flags or segments, or more bytes in all than a
    /// snapshot may have, refuse it whole; a single definition larger than
    /// `max_definition_bytes` is replaced with a placeholder that evaluates to `PARSE_ERROR`
    /// (its path, `flags.KEY` or `$evaluators.NAME`, is returned).
    pub fn bounded(mut self, limits: &Limits) -> Result<(Self, Vec<String>), OverLimit> {
        if self.flags.len() > limits.max_flags {
            return Err(OverLimit(format!(
                "{} flags, more than the limit of {}",
                self.flags.len(),
                limits.max_flags
            )));
        }
        if self.segments.len() > limits.max_segments {
            return Err(OverLimit(format!(
                "{} segments, more than the limit of {}",
                self.segments.len(),
                limits.max_segments
            )));
        }
        let mut replaced = Vec::new();
        let mut total: usize = 0;
        for (k, d) in self.flags.iter_mut() {
            if d.len() > limits.max_definition_bytes {
                replaced.push(format!("flags.{k}"));
                *d = RawDef::placeholder(REFUSED_FLAG);
            }
            total = total.saturating_add(k.len()).saturating_add(d.len());
        }
        for (k, v) in self.segments.iter_mut() {
            let mut len = json_len(v);
            if len > limits.max_definition_bytes {
                replaced.push(format!("$evaluators.{k}"));
                *v = serde_json::json!({ REFUSED_SEGMENT_OP: [] });
                len = json_len(v);
            }
            total = total.saturating_add(k.len()).saturating_add(len);
        }
        if total > limits.max_snapshot_bytes {
            return Err(OverLimit(format!(
                "the flag and segment definitions take {total} bytes, more than the limit of {}",
                limits.max_snapshot_bytes
            )));
        }
        Ok((self, replaced))
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
    /// Definitions that arrived with this data set and were larger than
    /// [`Limits::max_definition_bytes`] (`flags.KEY`, `$evaluators.NAME`): not kept, they
    /// evaluate to `PARSE_ERROR`.
    pub oversized: Vec<String>,
    /// Which flags run an A/B test.
    pub experiments: ExperimentFlags,
}

/// A filter over the flags of a data set that have an `experiment` field (their keys are
/// `FlagSet::experiment_keys`), so that evaluating any other flag costs one branch: a bit per
/// key length (modulo 64) that some experiment flag has. Only a key whose length bit is set is
/// looked up again.
#[derive(Debug, Default)]
pub(crate) struct ExperimentFlags {
    lengths: u64,
}

impl ExperimentFlags {
    fn of(flags: &FlagSet) -> Self {
        let lengths = flags.experiment_keys().fold(0u64, |m, k| m | Self::bit(k));
        Self { lengths }
    }

    #[inline(always)]
    fn bit(key: &str) -> u64 {
        1u64 << (key.len() % 64)
    }

    /// False for most flags that do not run an experiment (and for every flag when none
    /// does); true for every flag that does.
    #[inline(always)]
    pub fn may_include(&self, key: &str) -> bool {
        self.lengths & Self::bit(key) != 0
    }
}

impl DataSet {
    /// Compiles data already within the limits.
    fn build(
        raw: RawData,
        revision: Option<u64>,
        cluster_id: Option<String>,
        source: Source,
    ) -> Self {
        let mut corrupt = Vec::new();
        // Parsed for compiling only, then dropped: the text is what stays.
        let defs: Vec<(&str, Value)> = raw
            .flags
            .iter()
            .map(|(k, d)| {
                let v = d.value().unwrap_or_else(|e| {
                    // Never a stand-in definition: this flag fails to compile, loudly.
                    tracing::error!(flag = %k, "stored flag definition is corrupt: {e}");
                    corrupt.push(Fault::new(
                        format!("flags.{k}"),
                        format!("the stored definition is corrupt: {e}"),
                    ));
                    Value::from(UNPARSABLE_FLAG)
                });
                (k.as_str(), v)
            })
            .collect();
        // Lossy: one bad definition must not take every other flag down.
        let (flags, mut faults) = FlagSet::build(
            defs.iter().map(|(k, v)| (*k, v)),
            &raw.segments,
            &Map::new(),
        );
        drop(defs);
        faults.extend(corrupt);
        Self {
            experiments: ExperimentFlags::of(&flags),
            flags,
            raw,
            revision,
            cluster_id,
            source,
            faults,
            oversized: Vec::new(),
        }
    }

    /// Checks `raw` against `limits` (see [`RawData::bounded`]), then compiles it.
    pub fn checked(
        raw: RawData,
        revision: Option<u64>,
        cluster_id: Option<String>,
        source: Source,
        limits: &Limits,
    ) -> Result<Self, OverLimit> {
        let (raw, oversized) = raw.bounded(limits)?;
        let mut data = Self::build(raw, revision, cluster_id, source);
        data.oversized = oversized;
        Ok(data)
    }

    pub fn from_snapshot(s: WireSnapshot, limits: &Limits) -> Result<Self, OverLimit> {
        Self::checked(
            RawData {
                flags: s.flags,
                segments: s.segments,
            },
            Some(s.revision),
            Some(s.cluster_id),
            Source::Network,
            limits,
        )
    }

    /// A flagd document (`flags`, `$evaluators`), as a bootstrap file holds.
    pub fn from_flagd_document(doc: &Value, limits: &Limits) -> Result<Self, String> {
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
        Self::checked(raw, None, None, Source::Bootstrap, limits).map_err(|e| e.0)
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

    /// This state with `change` applied (the caller checked it follows this state), unless
    /// the result would exceed `limits`.
    pub fn apply(&self, change: WireChange, limits: &Limits) -> Result<Self, OverLimit> {
        let mut raw = self.raw.clone();
        for k in change.deleted.flags {
            raw.flags.remove(&k);
        }
        for k in change.deleted.segments {
            raw.segments.remove(&k);
        }
        raw.flags.extend(change.upserted.flags);
        raw.segments.extend(change.upserted.segments);
        Self::checked(
            raw,
            Some(change.revision),
            self.cluster_id.clone(),
            Source::Network,
            limits,
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
    use flagstaff_api::sdk::{Deleted as WireDeleted, Upserted as WireUpserted};
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
        let next = base
            .apply(
                WireChange {
                    revision: 9,
                    prev_revision: 5,
                    upserted: WireUpserted {
                        flags: BTreeMap::from([("a".into(), RawDef::new(&flag("on")))]),
                        segments: BTreeMap::from([("staff".into(), json!({"==":[1,2]}))]),
                    },
                    deleted: WireDeleted {
                        flags: vec!["b".into()],
                        segments: vec![],
                    },
                },
                &Limits::default(),
            )
            .unwrap();
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
        let d = DataSet::from_flagd_document(
            &json!({"flags": {
                "good": flag("on"),
                "bad": {"state":"ENABLED","variants":{"on":true},"defaultVariant":"nope"}
            }}),
            &Limits::default(),
        )
        .unwrap();
        let ctx = Context::new(0);
        assert!(d.flags.boolean("good", &ctx, false).value);
        assert_eq!(
            d.flags.boolean("bad", &ctx, false).error_code(),
            Some(flagstaff_flags::ErrorCode::ParseError)
        );
        assert!(!d.faults.is_empty());
        assert!(DataSet::from_flagd_document(&json!([1]), &Limits::default()).is_err());
        assert!(DataSet::from_flagd_document(&json!({"flags": 3}), &Limits::default()).is_err());
    }

    fn limits(flags: usize, segments: usize, def: usize, total: usize) -> Limits {
        Limits {
            max_snapshot_bytes: total,
            max_flags: flags,
            max_segments: segments,
            max_definition_bytes: def,
            ..Limits::default()
        }
    }

    fn doc(n_flags: usize, n_segments: usize) -> Value {
        let flags: Map<String, Value> = (0..n_flags)
            .map(|i| (format!("f{i}"), flag("on")))
            .collect();
        let segs: Map<String, Value> = (0..n_segments)
            .map(|i| (format!("s{i}"), json!({"==": [1, 1]})))
            .collect();
        json!({"flags": flags, "$evaluators": segs})
    }

    #[test]
    fn too_many_flags_or_segments_or_bytes_are_refused_whole() {
        let l = limits(3, 2, 1 << 20, 1 << 20);
        assert!(DataSet::from_flagd_document(&doc(3, 2), &l).is_ok());
        let e = DataSet::from_flagd_document(&doc(4, 0), &l).unwrap_err();
        assert!(e.contains("4 flags, more than the limit of 3"), "{e}");
        let e = DataSet::from_flagd_document(&doc(0, 3), &l).unwrap_err();
        assert!(e.contains("3 segments, more than the limit of 2"), "{e}");
        // Total bytes: keys plus compact definitions.
        let one = "f0".len() + flag("on").to_string().len();
        assert!(DataSet::from_flagd_document(&doc(2, 0), &limits(9, 9, 1 << 20, 2 * one)).is_ok());
        let e = DataSet::from_flagd_document(&doc(2, 0), &limits(9, 9, 1 << 20, 2 * one - 1))
            .unwrap_err();
        assert!(e.contains("more than the limit"), "{e}");

        // A change that would grow the state past a limit is refused; the state is unchanged.
        let l = limits(2, 9, 1 << 20, 1 << 20);
        let base = DataSet::from_flagd_document(&doc(2, 0), &l).unwrap();
        let grow = |key: &str| WireChange {
            revision: 2,
            prev_revision: 1,
            upserted: WireUpserted {
                flags: BTreeMap::from([(key.to_string(), RawDef::new(&flag("off")))]),
                segments: BTreeMap::new(),
            },
            deleted: WireDeleted::default(),
        };
        assert!(base.apply(grow("f2"), &l).is_err());
        // Replacing one keeps the count.
        let replaced = base.apply(grow("f1"), &l).unwrap();
        assert!(!replaced.flags.boolean("f1", &Context::new(0), true).value);
    }

    #[test]
    fn an_oversized_definition_degrades_only_itself_and_its_users() {
        let big = json!({"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on",
                         "metadata":{"pad": "x".repeat(5000)}});
        let d = DataSet::from_flagd_document(
            &json!({"flags": {
                "small": flag("on"),
                "big": big,
                "uses-big-segment": {"state":"ENABLED","variants":{"on":true,"off":false},
                                     "defaultVariant":"off","targeting":{"if":[{"$ref":"huge"},"on","off"]}},
                "uses-small-segment": {"state":"ENABLED","variants":{"on":true,"off":false},
                                       "defaultVariant":"off","targeting":{"if":[{"$ref":"tiny"},"on","off"]}}
            }, "$evaluators": {
                "huge": {"in": ["x", ["y".repeat(5000)]]},
                "tiny": {"==": [1, 1]}
            }}),
            &limits(10, 10, 1000, 1 << 20),
        )
        .unwrap();
        let ctx = Context::new(0);
        assert!(d.flags.boolean("small", &ctx, false).value);
        assert!(d.flags.boolean("uses-small-segment", &ctx, false).value);
        for key in ["big", "uses-big-segment"] {
            assert_eq!(
                d.flags.boolean(key, &ctx, false).error_code(),
                Some(flagstaff_flags::ErrorCode::ParseError),
                "{key}"
            );
        }
        assert_eq!(d.oversized, vec!["flags.big", "$evaluators.huge"]);
        // What is kept is small: the placeholders, not the definitions.
        assert!(d.raw.flags["big"].len() < 100);
        assert!(json_len(&d.raw.segments["huge"]) < 100);
        // Written to an LKG file and read back, the flag still evaluates to PARSE_ERROR.
        let again = DataSet::from_flagd_document(
            &json!({"flags": d.raw.flag_values().unwrap(), "$evaluators": d.raw.segments}),
            &limits(10, 10, 1000, 1 << 20),
        )
        .unwrap();
        assert!(again.oversized.is_empty());
        assert_eq!(
            again.flags.boolean("big", &ctx, false).error_code(),
            Some(flagstaff_flags::ErrorCode::ParseError)
        );
    }

    #[test]
    fn a_corrupt_definition_text_fails_loudly_never_as_null() {
        let mut raw = RawData::from_values(
            BTreeMap::from([("good".into(), flag("on")), ("bad".into(), flag("on"))]),
            BTreeMap::new(),
        );
        raw.flags.insert(
            "bad".into(),
            RawDef {
                json: "{\"state\":\"ENAB".into(),
                uses_segments: false,
            },
        );
        assert!(raw.flags["bad"].value().is_err());
        let e = raw.flag_values().unwrap_err();
        assert!(e.contains("\"bad\"") && e.contains("corrupt"), "{e}");
        let d = DataSet::build(raw, Some(1), Some("c".into()), Source::Network);
        let ctx = Context::new(0);
        assert!(d.flags.boolean("good", &ctx, false).value);
        let r = d.flags.boolean("bad", &ctx, false);
        assert_eq!(r.error_code(), Some(flagstaff_flags::ErrorCode::ParseError));
        assert!(
            d.faults
                .iter()
                .any(|f| f.path == "flags.bad" && f.message.contains("corrupt")),
            "{:?}",
            d.faults
        );
    }

    #[test]
    fn a_definition_too_deep_to_parse_back_is_an_error_not_null() {
        // Built in code (the network's parser refuses this depth): its text does not parse.
        let mut deep = json!(true);
        for _ in 0..200 {
            deep = json!([deep]);
        }
        let mut def = flag("on");
        def["metadata"] = json!({ "deep": deep });
        let d = DataSet::from_flagd_document(
            &json!({"flags": {"deep": def, "good": flag("on")}}),
            &Limits::default(),
        )
        .unwrap();
        let ctx = Context::new(0);
        assert!(d.flags.boolean("good", &ctx, false).value);
        assert_eq!(
            d.flags.boolean("deep", &ctx, false).error_code(),
            Some(flagstaff_flags::ErrorCode::ParseError)
        );
        assert!(
            d.raw.flags["deep"].value().is_ok(),
            "the placeholder parses"
        );
        // Just within serde_json's depth: kept as it is.
        let mut ok = json!(true);
        for _ in 0..110 {
            ok = json!([ok]);
        }
        assert!(serde_json::from_str::<Value>(&ok.to_string()).is_ok());
        let mut def = flag("on");
        def["metadata"] = json!({ "v": ok });
        let raw = RawDef::new(&def);
        assert_eq!(raw.value().unwrap(), def);
    }
}
