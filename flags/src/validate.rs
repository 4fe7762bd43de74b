//! Validation of definitions as they arrive from outside: flags, segments, whole flagd documents.

use crate::fault::{Fault, Faults};
use crate::flag::{check_metadata, compile_flag};
use crate::limits::MAX_REF_CHAIN;
use crate::refs::{segment_entries, Graph, Status};
use crate::rule::compile::{short_json, Compiler, RefLookup};
use serde_json::Value;
use std::collections::BTreeMap;

fn unchecked(_: &str) -> RefLookup {
    RefLookup::Unchecked
}

/// Validates one flag definition: a flagd flag object (`state`, `variants`, `defaultVariant`,
/// `targeting`, `metadata`) plus optional `description` (string), `tags` (array of strings) and
/// `fractionalAlgorithm` (`"v2"` or `"v3"`).
///
/// Structure only: `$ref` targets are not resolved (see [`validate_document`] for that).
/// Every fault is reported, each with its path relative to the definition (`defaultVariant`,
/// `variants.on`, `targeting.if[1]`). Unknown fields are faults. Never panics on any JSON.
pub fn validate_flag(def: &Value) -> Result<(), Vec<Fault>> {
    compile_flag("", def, &unchecked, None).map(|_| ())
}

/// Validates a segment: a JsonLogic rule as in flagd's `$evaluators`. Paths are relative to the
/// rule (`and[1].in`). `$ref`s inside it are not resolved. Never panics on any JSON.
pub fn validate_segment(rule: &Value) -> Result<(), Vec<Fault>> {
    let mut compiler = Compiler::new(&unchecked, None);
    compiler.compile_root(rule, false);
    compiler.faults.into_result()
}

const DOCUMENT_FIELDS: &[&str] = &["flags", "$evaluators", "metadata", "$schema"];

/// Validates a whole flagd document (`flags`, `$evaluators`, `metadata`, `$schema`), including
/// that every `$ref` names a segment of the document and that segments do not reference each
/// other in a cycle. Paths start at the document: `flags.X.defaultVariant`, `$evaluators.Y`.
/// `flags` may be an object (flag key → definition) or, as flagd's daemon accepts, an array of
/// definitions each carrying a `key`. Never panics on any JSON.
pub fn validate_document(doc: &Value) -> Result<(), Vec<Fault>> {
    let mut faults = Faults::new();
    let Value::Object(obj) = doc else {
        faults.add(format!(
            "a flagd document must be an object, found {}",
            short_json(doc)
        ));
        return faults.into_result();
    };
    for field in obj.keys() {
        if !DOCUMENT_FIELDS.contains(&field.as_str()) {
            faults.add_at_key(
                field,
                format!(
                    "unknown field (expected one of: {})",
                    DOCUMENT_FIELDS.join(", ")
                ),
            );
        }
    }
    if let Some(s) = obj.get("$schema") {
        if !s.is_string() {
            faults.add_at_key("$schema", "must be a string");
        }
    }
    match obj.get("metadata") {
        None => {}
        Some(Value::Object(m)) => {
            faults.push_key("metadata");
            check_metadata(m, &mut faults);
            faults.pop();
        }
        Some(other) => faults.add_at_key(
            "metadata",
            format!("must be an object, found {}", short_json(other)),
        ),
    }

    let segments = document_segments(obj.get("$evaluators"), &mut faults);
    let resolve = |name: &str| {
        if segments.contains_key(name) {
            RefLookup::Unchecked
        } else {
            RefLookup::Missing
        }
    };
    for (name, rule) in &segments {
        let mut compiler = Compiler::new(&resolve, None);
        compiler.compile_root(rule, false);
        let prefix = format!("$evaluators.{name}");
        faults.list.extend(
            compiler
                .faults
                .list
                .into_iter()
                .map(|f| f.prefixed(&prefix)),
        );
    }
    // Cycles and chain lengths in one pass; each cycle reported once, at its least member.
    let entries = segment_entries(&segments);
    let graph = Graph::new(&entries);
    let links = graph.analyse(MAX_REF_CHAIN);
    for (i, status) in links.status.iter().enumerate() {
        let prefix = format!("$evaluators.{}", graph.names[i]);
        match *status {
            Status::InCycle(c) if links.cycle_head(&graph, c) == i => {
                let cycle = links.cycle_names(&graph, c);
                faults.add_at_key_path(&prefix, format!("$ref cycle: {}", cycle.join(" -> ")));
            }
            Status::TooDeep(chain) => faults.add_at_key_path(
                &prefix,
                format!("$ref chain passes through {chain} segments, more than {MAX_REF_CHAIN}"),
            ),
            _ => {}
        }
    }

    for (path, _, def) in document_flags(obj.get("flags"), &mut faults) {
        if let Err(fs) = compile_flag("", &def, &resolve, None) {
            faults
                .list
                .extend(fs.into_iter().map(|f| f.prefixed(&path)));
        }
    }
    faults.into_result()
}

/// The document's `$evaluators` as name → rule (faults for a wrong shape).
pub(crate) fn document_segments(
    raw: Option<&Value>,
    faults: &mut Faults,
) -> BTreeMap<String, Value> {
    match raw {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(other) => {
            faults.add_at_key(
                "$evaluators",
                format!(
                    "must be an object of segment name to rule, found {}",
                    short_json(other)
                ),
            );
            BTreeMap::new()
        }
    }
}

/// The document's flags as (path prefix, key, definition); array entries lose their `key`
/// field (`None` when it is missing or a duplicate, which are faults).
pub(crate) fn document_flags(
    raw: Option<&Value>,
    faults: &mut Faults,
) -> Vec<(String, Option<String>, Value)> {
    let mut out = Vec::new();
    match raw {
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if k.is_empty() {
                    faults.add_at_key("flags", "a flag key must not be empty");
                }
                out.push((format!("flags.{k}"), Some(k.clone()), v.clone()));
            }
        }
        Some(Value::Array(items)) => {
            let mut seen = std::collections::BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                let path = format!("flags[{i}]");
                let mut def = item.clone();
                let key = def.as_object_mut().and_then(|o| o.remove("key"));
                let key = match key {
                    Some(Value::String(k)) if !k.is_empty() => {
                        if seen.insert(k.clone()) {
                            Some(k)
                        } else {
                            faults.add_at_key_path(
                                &format!("{path}.key"),
                                format!("duplicate flag key \"{k}\""),
                            );
                            None
                        }
                    }
                    _ => {
                        faults.add_at_key_path(
                            &format!("{path}.key"),
                            "each flag in an array needs a non-empty string key",
                        );
                        None
                    }
                };
                out.push((path, key, def));
            }
        }
        Some(other) => faults.add_at_key(
            "flags",
            format!(
                "must be an object of flag key to definition, found {}",
                short_json(other)
            ),
        ),
        None => faults.add_at_key("flags", "is required"),
    }
    out
}
