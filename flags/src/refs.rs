//! `$ref` discovery and cycle detection among segments.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Names of the segments a flag definition's `targeting` references with `{"$ref": "name"}`,
/// sorted and deduplicated. Never panics; a definition without targeting has none.
pub fn flag_refs(def: &Value) -> BTreeSet<String> {
    match def.get("targeting") {
        Some(targeting) => rule_refs(targeting),
        None => BTreeSet::new(),
    }
}

/// Names of the segments referenced anywhere in a rule, sorted and deduplicated.
pub fn rule_refs(rule: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    collect(rule, &mut out);
    out
}

fn collect(v: &Value, out: &mut BTreeSet<String>) {
    // An explicit stack: rules from outside may be nested arbitrarily deep.
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if map.len() == 1 {
                    if let Some(Value::String(name)) = map.get("$ref") {
                        out.insert(name.clone());
                        continue;
                    }
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
}

/// Follows `$ref`s from segment `start` through `segments` (name → rule). Returns the cycle
/// if one is reachable, as the names along it with the first repeated at the end
/// (`["a", "b", "a"]`; a segment referencing itself gives `["a", "a"]`). References to
/// segments that do not exist are ignored here (they are a different fault). Deterministic:
/// references are followed in name order.
pub fn find_ref_cycle(segments: &BTreeMap<String, Value>, start: &str) -> Option<Vec<String>> {
    let mut on_path: Vec<String> = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    visit(segments, start, &mut on_path, &mut done)
}

fn visit(
    segments: &BTreeMap<String, Value>,
    name: &str,
    on_path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(pos) = on_path.iter().position(|n| n == name) {
        let mut cycle = on_path[pos..].to_vec();
        cycle.push(name.to_string());
        return Some(cycle);
    }
    if done.contains(name) {
        return None;
    }
    let rule = segments.get(name)?;
    on_path.push(name.to_string());
    for next in rule_refs(rule) {
        if let Some(cycle) = visit(segments, &next, on_path, done) {
            return Some(cycle);
        }
    }
    on_path.pop();
    done.insert(name.to_string());
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn segs(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn refs_are_found_anywhere_sorted_and_deduped() {
        let def = json!({"targeting": {"if": [{"and": [{"$ref": "b"}, {"$ref": "a"}]}, "on", {"$ref": "b"}]}});
        let refs: Vec<String> = flag_refs(&def).into_iter().collect();
        assert_eq!(refs, ["a", "b"]);
        assert!(flag_refs(&json!({"state": "ENABLED"})).is_empty());
        // An object with more keys than `$ref` is not a reference.
        assert!(rule_refs(&json!({"$ref": "a", "x": 1})).is_empty());
    }

    #[test]
    fn cycles() {
        let s = segs(&[
            ("a", json!({"$ref": "b"})),
            ("b", json!({"and": [true, {"$ref": "a"}]})),
            ("c", json!({"$ref": "missing"})),
            ("d", json!({"or": [{"$ref": "c"}, {"$ref": "d"}]})),
            ("e", json!({"$ref": "a"})),
        ]);
        assert_eq!(
            find_ref_cycle(&s, "a"),
            Some(vec!["a".into(), "b".into(), "a".into()])
        );
        assert_eq!(find_ref_cycle(&s, "c"), None);
        assert_eq!(find_ref_cycle(&s, "d"), Some(vec!["d".into(), "d".into()]));
        assert_eq!(
            find_ref_cycle(&s, "e"),
            Some(vec!["a".into(), "b".into(), "a".into()])
        );
        assert_eq!(find_ref_cycle(&s, "nope"), None);
    }
}
