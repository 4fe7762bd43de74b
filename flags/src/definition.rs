//! Typed flagd definitions: serde types whose JSON is flagd's own, field for field.
//!
//! Field names follow flagd's flag-definition schema (<https://flagd.dev/schema/v0/flags.json>):
//! `state`, `variants`, `defaultVariant`, `targeting`, `metadata`, and at the document level
//! `$schema`, `flags`, `$evaluators`, `metadata`; Flagstaff adds `description`, `tags` and
//! `fractionalAlgorithm` and `experiment` per flag ([`FLAGSTAFF_FLAG_FIELDS`], which flagd providers are not
//! sent). Targeting rules and segments stay JSON ([`Value`]): they are compiled, not modelled.
//!
//! Deserializing checks the shape only (field names and JSON types). Whether a definition
//! *means* something (variants of one type, a default that is a variant, valid JsonLogic, `$ref`s
//! that resolve) is [`crate::validate_flag`] / [`crate::validate_document`]'s job; the
//! `from_json` constructors run both and report faults with their paths.

use crate::bucketing::FractionalAlgorithm;
use crate::fault::Fault;
use crate::flag_set::FlagSet;
use crate::validate::{validate_document, validate_flag};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// A flag's `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FlagState {
    /// `"ENABLED"`: targeting is evaluated.
    Enabled,
    /// `"DISABLED"`: evaluation answers the default variant with reason `DISABLED`.
    Disabled,
}

/// The fields Flagstaff adds to a flagd flag definition.
pub const FLAGSTAFF_FLAG_FIELDS: &[&str] =
    &["description", "tags", "fractionalAlgorithm", "experiment"];

/// One flag as flagd defines it, plus Flagstaff's `description`, `tags` and
/// `fractionalAlgorithm`.
///
/// Serializes to exactly the JSON flagd reads; absent optional fields are left out, so
/// `parse → serialize → parse` gives an equal value. A `defaultVariant` or `targeting` of `null`
/// reads as absent, which is what flagd means by it. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlagDefinition {
    /// `ENABLED` or `DISABLED`.
    pub state: FlagState,
    /// Variant name → value; all values of one JSON type (boolean, string, number or object).
    pub variants: Map<String, Value>,
    /// The variant served without targeting, or when targeting returns `null`. `None` means the
    /// caller's default (flagd's "code default").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_variant: Option<String>,
    /// The JsonLogic rule (with flagd's operators) that chooses a variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeting: Option<Value>,
    /// Flag metadata: string, number or boolean values.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Labels for filtering and ownership.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// How `fractional` splits hash (see [`FractionalAlgorithm`]); absent means `v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fractional_algorithm: Option<FractionalAlgorithm>,
    /// The A/B test this flag runs: its control variant and the conversion events that count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<ExperimentDefinition>,
}

/// A flag's `experiment` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentDefinition {
    /// The variant the others are compared with.
    pub control: String,
    /// The conversion events that count (1 to `limits::MAX_EXPERIMENT_METRICS`).
    pub metrics: Vec<String>,
}

impl FlagDefinition {
    /// Validates `def` (every fault, with its path, as [`validate_flag`] reports them) and reads
    /// it. `$ref`s are not resolved here; a document resolves them.
    pub fn from_json(def: &Value) -> Result<Self, Vec<Fault>> {
        validate_flag(def)?;
        Self::deserialize(def).map_err(|e| vec![Fault::new("", e.to_string())])
    }

    /// The flagd JSON of this definition.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self)
            .expect("a flag definition serializes: string keys and JSON values only")
    }

    /// Validates this definition (see [`validate_flag`]).
    pub fn validate(&self) -> Result<(), Vec<Fault>> {
        validate_flag(&self.to_json())
    }
}

/// A flagd document (`flags.json`): flags by key, shared rules (`$evaluators`, referenced with
/// `$ref`) and flag-set metadata.
///
/// `flags` reads as flagd's object (key → definition) or, as flagd's daemon also accepts, an
/// array of definitions each carrying a `key`; it always serializes as the object. Unknown
/// fields are refused. `parse → serialize → parse` gives an equal value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagdDocument {
    /// `$schema`, e.g. `https://flagd.dev/schema/v0/flags.json`.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Flag key → definition.
    #[serde(deserialize_with = "flags_object_or_array")]
    pub flags: BTreeMap<String, FlagDefinition>,
    /// Segment name → JsonLogic rule (`$evaluators`; `null` reads as none).
    #[serde(
        rename = "$evaluators",
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub evaluators: BTreeMap<String, Value>,
    /// Flag-set metadata, merged under each flag's own.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

impl FlagdDocument {
    /// Validates `doc` (every fault, with its path, as [`validate_document`] reports them,
    /// including `$ref`s to missing segments and `$ref` cycles) and reads it.
    pub fn from_json(doc: &Value) -> Result<Self, Vec<Fault>> {
        validate_document(doc)?;
        Self::deserialize(doc).map_err(|e| vec![Fault::new("", e.to_string())])
    }

    /// The flagd JSON of this document (`flags` as an object).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self)
            .expect("a flagd document serializes: string keys and JSON values only")
    }

    /// Validates this document (see [`validate_document`]).
    pub fn validate(&self) -> Result<(), Vec<Fault>> {
        validate_document(&self.to_json())
    }

    /// Compiles this document for evaluation (see [`FlagSet::from_document`]).
    pub fn compile(&self) -> Result<FlagSet, Vec<Fault>> {
        FlagSet::from_document(&self.to_json())
    }
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Value>, D::Error> {
    Ok(Option::<BTreeMap<String, Value>>::deserialize(d)?.unwrap_or_default())
}

fn flags_object_or_array<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, FlagDefinition>, D::Error> {
    d.deserialize_any(FlagsVisitor)
}

struct FlagsVisitor;

impl<'de> Visitor<'de> for FlagsVisitor {
    type Value = BTreeMap<String, FlagDefinition>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of flag key to definition, or an array of definitions with a key")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut flags = BTreeMap::new();
        while let Some((key, def)) = map.next_entry::<String, FlagDefinition>()? {
            if flags.insert(key.clone(), def).is_some() {
                return Err(de::Error::custom(format!("duplicate flag key \"{key}\"")));
            }
        }
        Ok(flags)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut flags = BTreeMap::new();
        while let Some(mut entry) = seq.next_element::<Map<String, Value>>()? {
            let key = match entry.remove("key") {
                Some(Value::String(k)) if !k.is_empty() => k,
                _ => {
                    return Err(de::Error::custom(
                        "each flag in an array needs a non-empty string key",
                    ))
                }
            };
            let def = FlagDefinition::deserialize(Value::Object(entry))
                .map_err(|e| de::Error::custom(format!("flag \"{key}\": {e}")))?;
            if flags.insert(key.clone(), def).is_some() {
                return Err(de::Error::custom(format!("duplicate flag key \"{key}\"")));
            }
        }
        Ok(flags)
    }
}
