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
    compile_flag("", def, &unchecked, None, None).map(|_| ())
}

/// Validates a flag as flagd stores it: what [`validate_flag`] refuses but flagd accepts is
/// returned as warnings (see [`validate_document_as_flagd`]); the rest are still faults.
pub fn validate_flag_as_flagd(def: &Value) -> Result<Vec<Fault>, Vec<Fault>> {
    let mut warnings = Vec::new();
    let faults = compile_flag("", def, &unchecked, None, Some(&mut warnings))
        .err()
        .unwrap_or_default();
    as_flagd(faults, warnings, |path| path.starts_with("targeting"))
}

/// Validates a flagd document as flagd itself loads it, for import: what flagd accepts and
/// resolves when it evaluates is a warning with its path, not a fault, and evaluates as flagd
/// does it:
///
/// - a branch that names no variant (`GENERAL` when taken), `sem_ver`, `starts_with` or
///   `ends_with` with the wrong number or type of arguments, an invalid version literal or
///   operator (the operation answers null: the default variant), a negative `fractional`
///   weight (counted as 0);
/// - any other fault inside a flag's `targeting` or a segment (an unknown operator, say): the
///   flag is stored and evaluates to `PARSE_ERROR`, as in flagd.
///
/// Still faults: a document or flag of the wrong shape, a `$ref` to a segment that does not
/// exist, `$ref` cycles and chains that are too long (the store refuses them).
pub fn validate_document_as_flagd(doc: &Value) -> Result<Vec<Fault>, Vec<Fault>> {
    let (faults, warnings) = document_faults(doc, true);
    as_flagd(faults, warnings, |path| {
        path.starts_with("$evaluators.")
            || path
                .strip_prefix("flags.")
                .and_then(|rest| rest.split_once('.'))
                .is_some_and(|(_, field)| field.starts_with("targeting"))
    })
}

/// Moves the faults `in_rules` says are inside targeting or segments to the warnings (they
/// make the flag evaluate to `PARSE_ERROR`), except those about `$ref`s, which the store
/// refuses whatever flagd does.
fn as_flagd(
    faults: Vec<Fault>,
    mut warnings: Vec<Fault>,
    in_rules: impl Fn(&str) -> bool,
) -> Result<Vec<Fault>, Vec<Fault>> {
    let mut refused = Vec::new();
    for f in faults {
        let about_refs = f.path.ends_with("$ref")
            || f.message.starts_with("$ref ")
            || f.message.contains("does not exist");
        if in_rules(&f.path) && !about_refs {
            warnings.push(Fault::new(
                f.path,
                format!(
                    "{} (flagd stores it; the flag evaluates to PARSE_ERROR)",
                    f.message
                ),
            ));
        } else {
            refused.push(f);
        }
    }
    if refused.is_empty() {
        Ok(warnings)
    } else {
        Err(refused)
    }
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
    let (faults, _) = document_faults(doc, false);
    if faults.is_empty() {
        Ok(())
    } else {
        Err(faults)
    }
}

/// The document's faults and, when `lenient`, the constructs flagd resolves at evaluation as
/// warnings.
fn document_faults(doc: &Value, lenient: bool) -> (Vec<Fault>, Vec<Fault>) {
    let mut faults = Faults::new();
    let mut warnings = Vec::new();
    let Value::Object(obj) = doc else {
        faults.add(format!(
            "a flagd document must be an object, found {}",
            short_json(doc)
        ));
        return (faults.list, warnings);
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
        compiler.faults.lenient = lenient;
        compiler.compile_root(rule, false);
        let prefix = format!("$evaluators.{name}");
        faults.list.extend(
            compiler
                .faults
                .list
                .into_iter()
                .map(|f| f.prefixed(&prefix)),
        );
        warnings.extend(
            compiler
                .faults
                .warnings
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
        let mut flag_warnings = Vec::new();
        let lenient_warnings = lenient.then_some(&mut flag_warnings);
        if let Err(fs) = compile_flag("", &def, &resolve, None, lenient_warnings) {
            faults
                .list
                .extend(fs.into_iter().map(|f| f.prefixed(&path)));
        }
        warnings.extend(flag_warnings.into_iter().map(|f| f.prefixed(&path)));
    }
    (faults.list, warnings)
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
