//! One flag definition: structural checks and compilation into a [`CompiledFlag`].

use crate::bucketing::FractionalAlgorithm;
use crate::fault::{Fault, Faults};
use crate::limits::{MAX_EVENT_NAME_BYTES, MAX_EXPERIMENT_METRICS, MAX_EXPERIMENT_VARIANTS};
use crate::rule::compile::{short_json, Compiler, RefLookup, VariantNames};
use crate::rule::Node;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

/// The JSON type shared by all of a flag's variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VariantType {
    /// `true` / `false`.
    Boolean,
    /// JSON strings.
    String,
    /// JSON numbers (integers and floats may be mixed, as flagd's schema allows).
    Number,
    /// JSON objects.
    Object,
}

impl VariantType {
    fn of(v: &Value) -> Option<Self> {
        Some(match v {
            Value::Bool(_) => Self::Boolean,
            Value::String(_) => Self::String,
            Value::Number(_) => Self::Number,
            Value::Object(_) => Self::Object,
            Value::Null | Value::Array(_) => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Boolean => "a boolean",
            Self::String => "a string",
            Self::Number => "a number",
            Self::Object => "an object",
        }
    }
}

const FLAG_FIELDS: &[&str] = &[
    "state",
    "variants",
    "defaultVariant",
    "targeting",
    "metadata",
    "description",
    "tags",
    "fractionalAlgorithm",
    "experiment",
];

/// A flag compiled for evaluation: variants indexed, targeting compiled to a node tree,
/// metadata merged with the flag set's.
#[derive(Debug)]
pub struct CompiledFlag {
    pub(crate) key: Box<str>,
    pub(crate) enabled: bool,
    /// Sorted by name for lookup by binary search.
    pub(crate) variants: Box<[(Box<str>, Value)]>,
    pub(crate) variant_type: Option<VariantType>,
    pub(crate) default_variant: Option<usize>,
    pub(crate) targeting: Option<Node>,
    pub(crate) metadata: Map<String, Value>,
    /// How its `fractional` splits hash (`fractionalAlgorithm`, default v2).
    pub(crate) fractional: FractionalAlgorithm,
    /// The A/B test this flag runs (`experiment`), if any.
    pub(crate) experiment: Option<Experiment>,
    /// Set by every evaluation, cleared by [`CompiledFlag::take_evaluated`]: which flags an
    /// application still reads ("last evaluated").
    pub(crate) evaluated: AtomicBool,
    /// Why the definition could not be compiled; evaluating it answers `PARSE_ERROR`.
    pub(crate) broken: Option<String>,
}

/// A flag's `experiment` field: the variant the others are compared with and the conversion
/// events that count. Exposures of the flag and conversions of these events are recorded for
/// it while the field is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Experiment {
    control: Box<str>,
    metrics: Box<[Box<str>]>,
}

impl Experiment {
    /// The control variant (a variant of the flag).
    pub fn control(&self) -> &str {
        &self.control
    }

    /// The conversion events that count, in the order the definition names them.
    pub fn metrics(&self) -> impl Iterator<Item = &str> {
        self.metrics.iter().map(|m| &**m)
    }

    /// Whether `event` is one of the experiment's metrics.
    pub fn counts(&self, event: &str) -> bool {
        self.metrics.iter().any(|m| &**m == event)
    }
}

impl CompiledFlag {
    /// The flag key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The type of the flag's variants (`None` only for a definition that failed to compile).
    pub fn variant_type(&self) -> Option<VariantType> {
        self.variant_type
    }

    /// Whether `state` is `ENABLED`.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The flag's metadata merged over the flag set's (flag entries win).
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// How the flag's `fractional` splits hash.
    pub fn fractional_algorithm(&self) -> FractionalAlgorithm {
        self.fractional
    }

    /// Whether the flag was evaluated since the last call, clearing the mark.
    pub fn take_evaluated(&self) -> bool {
        self.evaluated.swap(false, Ordering::Relaxed)
    }

    /// Marks the flag evaluated: a load, and a store only the first time (the mark's cache
    /// line stays shared between threads evaluating the flag).
    pub(crate) fn mark_evaluated(&self) {
        if !self.evaluated.load(Ordering::Relaxed) {
            self.evaluated.store(true, Ordering::Relaxed);
        }
    }

    /// The A/B test the flag runs, if its definition has an `experiment` field.
    pub fn experiment(&self) -> Option<&Experiment> {
        self.experiment.as_ref()
    }

    /// The variant names, sorted.
    pub fn variant_names(&self) -> impl Iterator<Item = &str> {
        self.variants.iter().map(|(n, _)| &**n)
    }

    pub(crate) fn variant_index(&self, name: &str) -> Option<usize> {
        self.variants
            .binary_search_by(|(n, _)| n.as_ref().cmp(name))
            .ok()
    }

    /// A placeholder for a definition that did not compile.
    pub(crate) fn broken(key: &str, faults: &[Fault], metadata: Map<String, Value>) -> Self {
        let why = faults
            .iter()
            .map(Fault::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            key: key.into(),
            enabled: true,
            variants: Box::new([]),
            variant_type: None,
            default_variant: None,
            targeting: None,
            metadata,
            fractional: FractionalAlgorithm::V2,
            experiment: None,
            evaluated: AtomicBool::new(false),
            broken: Some(why),
        }
    }
}

/// Checks a flag definition and compiles it. `resolve` decides what `$ref`s mean;
/// `set_metadata` is the flag set's metadata, merged under the flag's own. With `warnings`,
/// the constructs flagd resolves at evaluation are collected there instead of being faults
/// (see [`Faults::flagd_resolves`]).
pub(crate) fn compile_flag(
    key: &str,
    def: &Value,
    resolve: &dyn Fn(&str) -> RefLookup,
    set_metadata: Option<&Map<String, Value>>,
    warnings: Option<&mut Vec<Fault>>,
) -> Result<CompiledFlag, Vec<Fault>> {
    let mut faults = Faults::new();
    let Value::Object(obj) = def else {
        faults.add(format!(
            "a flag definition must be an object, found {}",
            short_json(def)
        ));
        return Err(faults.list);
    };
    for field in obj.keys() {
        if !FLAG_FIELDS.contains(&field.as_str()) {
            faults.add_at_key(
                field,
                format!(
                    "unknown field (expected one of: {})",
                    FLAG_FIELDS.join(", ")
                ),
            );
        }
    }

    let enabled = match obj.get("state") {
        Some(Value::String(s)) if s == "ENABLED" => true,
        Some(Value::String(s)) if s == "DISABLED" => false,
        Some(other) => {
            faults.add_at_key(
                "state",
                format!(
                    "must be \"ENABLED\" or \"DISABLED\", found {}",
                    short_json(other)
                ),
            );
            true
        }
        None => {
            faults.add_at_key("state", "is required (\"ENABLED\" or \"DISABLED\")");
            true
        }
    };

    let mut variants: Vec<(Box<str>, Value)> = Vec::new();
    let mut variant_type = None;
    match obj.get("variants") {
        Some(Value::Object(vs)) => {
            if vs.is_empty() {
                faults.add_at_key("variants", "must define at least one variant");
            }
            faults.push_key("variants");
            // The type of the first well-typed variant is the flag's; others must match it.
            let mut first: Option<(&str, VariantType)> = None;
            for (name, value) in vs {
                if name.is_empty() {
                    faults.add_at_key(name, "a variant name must not be empty");
                }
                match VariantType::of(value) {
                    None => faults.add_at_key(
                        name,
                        format!("a variant value must be a boolean, string, number or object, found {}", short_json(value)),
                    ),
                    Some(t) => match first {
                        None => first = Some((name, t)),
                        Some((first_name, ft)) if ft != t => faults.add_at_key(
                            name,
                            format!(
                                "is {} but variant \"{first_name}\" is {}: all variants must have one type",
                                t.name(),
                                ft.name()
                            ),
                        ),
                        Some(_) => {}
                    },
                }
                variants.push((name.as_str().into(), value.clone()));
            }
            faults.pop();
            variant_type = first.map(|(_, t)| t);
        }
        Some(other) => faults.add_at_key(
            "variants",
            format!(
                "must be an object of variant name to value, found {}",
                short_json(other)
            ),
        ),
        None => faults.add_at_key("variants", "is required"),
    }
    variants.sort_by(|a, b| a.0.cmp(&b.0));
    let names: BTreeSet<String> = variants.iter().map(|(n, _)| n.to_string()).collect();

    let default_variant = match obj.get("defaultVariant") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match variants.binary_search_by(|(n, _)| n.as_ref().cmp(s)) {
            Ok(i) => Some(i),
            Err(_) => {
                faults.add_at_key("defaultVariant", format!("\"{s}\" is not a variant"));
                None
            }
        },
        Some(other) => {
            faults.add_at_key(
                "defaultVariant",
                format!(
                    "must be a variant name or null, found {}",
                    short_json(other)
                ),
            );
            None
        }
    };

    let targeting = match obj.get("targeting") {
        None | Some(Value::Null) => None,
        // flagd treats an empty targeting object as no targeting (reason STATIC).
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(rule) => {
            let mut compiler = Compiler::new(resolve, Some(VariantNames { names: &names }));
            compiler.faults.lenient = warnings.is_some();
            let node = compiler.compile_root(rule, true);
            for f in compiler.faults.list {
                faults.list.push(f.prefixed("targeting"));
            }
            if let Some(w) = warnings {
                w.extend(
                    compiler
                        .faults
                        .warnings
                        .into_iter()
                        .map(|f| f.prefixed("targeting")),
                );
            }
            Some(node)
        }
    };

    let mut metadata = set_metadata.cloned().unwrap_or_default();
    match obj.get("metadata") {
        None => {}
        Some(Value::Object(m)) => {
            faults.push_key("metadata");
            check_metadata(m, &mut faults);
            faults.pop();
            for (k, v) in m {
                metadata.insert(k.clone(), v.clone());
            }
        }
        Some(other) => faults.add_at_key(
            "metadata",
            format!("must be an object, found {}", short_json(other)),
        ),
    }

    match obj.get("description") {
        None | Some(Value::String(_)) => {}
        Some(other) => faults.add_at_key(
            "description",
            format!("must be a string, found {}", short_json(other)),
        ),
    }
    match obj.get("tags") {
        None => {}
        Some(Value::Array(tags)) => {
            faults.push_key("tags");
            for (i, t) in tags.iter().enumerate() {
                if !t.is_string() {
                    faults.push_index(i);
                    faults.add(format!("a tag must be a string, found {}", short_json(t)));
                    faults.pop();
                }
            }
            faults.pop();
        }
        Some(other) => faults.add_at_key(
            "tags",
            format!("must be an array of strings, found {}", short_json(other)),
        ),
    }

    let fractional = match obj.get("fractionalAlgorithm") {
        None => FractionalAlgorithm::V2,
        Some(Value::String(s)) if FractionalAlgorithm::parse(s).is_some() => {
            FractionalAlgorithm::parse(s).unwrap_or_default()
        }
        Some(other) => {
            faults.add_at_key(
                "fractionalAlgorithm",
                format!("must be \"v2\" or \"v3\", found {}", short_json(other)),
            );
            FractionalAlgorithm::V2
        }
    };

    let experiment = obj
        .get("experiment")
        .and_then(|e| compile_experiment(e, &names, &mut faults));

    if !faults.is_empty() {
        return Err(faults.list);
    }
    Ok(CompiledFlag {
        key: key.into(),
        enabled,
        variants: variants.into_boxed_slice(),
        variant_type,
        default_variant,
        targeting,
        metadata,
        fractional,
        experiment,
        evaluated: AtomicBool::new(false),
        broken: None,
    })
}

/// Reads an `experiment` field: `{"control": "<variant>", "metrics": ["<event>", …]}`.
fn compile_experiment(
    e: &Value,
    variants: &BTreeSet<String>,
    faults: &mut Faults,
) -> Option<Experiment> {
    let Value::Object(obj) = e else {
        faults.add_at_key(
            "experiment",
            format!(
                "must be an object with \"control\" and \"metrics\", found {}",
                short_json(e)
            ),
        );
        return None;
    };
    let before = faults.list.len();
    faults.push_key("experiment");
    for field in obj.keys() {
        if field != "control" && field != "metrics" {
            faults.add_at_key(field, "unknown field (expected one of: control, metrics)");
        }
    }
    if variants.len() > MAX_EXPERIMENT_VARIANTS {
        faults.add(format!(
            "an experiment flag may have at most {MAX_EXPERIMENT_VARIANTS} variants, this one has {}",
            variants.len()
        ));
    }
    let control = match obj.get("control") {
        Some(Value::String(c)) if variants.contains(c) => c.as_str(),
        Some(Value::String(c)) => {
            faults.add_at_key("control", format!("\"{c}\" is not a variant"));
            ""
        }
        Some(other) => {
            faults.add_at_key(
                "control",
                format!("must be a variant name, found {}", short_json(other)),
            );
            ""
        }
        None => {
            faults.add_at_key(
                "control",
                "is required (the variant the others are compared with)",
            );
            ""
        }
    };
    let mut metrics: Vec<Box<str>> = Vec::new();
    match obj.get("metrics") {
        Some(Value::Array(list)) => {
            faults.push_key("metrics");
            if list.is_empty() || list.len() > MAX_EXPERIMENT_METRICS {
                faults.add(format!(
                    "must name 1 to {MAX_EXPERIMENT_METRICS} conversion events, found {}",
                    list.len()
                ));
            }
            for (i, m) in list.iter().enumerate() {
                faults.push_index(i);
                match m {
                    Value::String(name) if !is_event_name(name) => faults.add(format!(
                        "\"{}\" is not an event name (1 to {MAX_EVENT_NAME_BYTES} letters, digits, '_', '-', '.' or ':')",
                        name.chars().take(80).collect::<String>()
                    )),
                    Value::String(name) if metrics.iter().any(|x| **x == **name) => {
                        faults.add(format!("\"{name}\" is named twice"))
                    }
                    Value::String(name) => metrics.push(name.as_str().into()),
                    other => faults.add(format!(
                        "an event name must be a string, found {}",
                        short_json(other)
                    )),
                }
                faults.pop();
            }
            faults.pop();
        }
        Some(other) => faults.add_at_key(
            "metrics",
            format!(
                "must be an array of conversion event names, found {}",
                short_json(other)
            ),
        ),
        None => faults.add_at_key("metrics", "is required (the conversion events that count)"),
    }
    faults.pop();
    (faults.list.len() == before).then(|| Experiment {
        control: control.into(),
        metrics: metrics.into_boxed_slice(),
    })
}

/// Whether `name` can name a conversion event: 1 to [`MAX_EVENT_NAME_BYTES`] ASCII letters,
/// digits, `_`, `-`, `.` or `:`.
pub fn is_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_EVENT_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// flagd metadata: an object whose values are strings, numbers or booleans.
pub(crate) fn check_metadata(m: &Map<String, Value>, faults: &mut Faults) {
    for (k, v) in m {
        if !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            faults.add_at_key(
                k,
                format!(
                    "a metadata value must be a string, number or boolean, found {}",
                    short_json(v)
                ),
            );
        }
    }
}
