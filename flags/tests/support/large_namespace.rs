//! A large flagd document for tests and benchmarks: segments in turn a leaf, a link onto the one
//! before, a diamond over the two before, and a wide fan-in onto the first leaf (chains of at most
//! four), and flags that each reference one segment. Shared by `flags/tests/bounded_cost.rs`,
//! `flags/benches/build.rs` and the node's segment-write benchmark (`bench/`), through `#[path]`.

use serde_json::{json, Map, Value};

/// `{"flags": …, "$evaluators": …}` with `flags` flags over `segments` segments (at least one).
pub fn large_namespace(flags: usize, segments: usize) -> Value {
    let mut evaluators = Map::new();
    for i in 0..segments {
        let rule = match i % 4 {
            0 => json!({"ends_with": [{"var": "email"}, format!("@team{i}.example")]}),
            1 => {
                json!({"and": [{"$ref": format!("seg{}", i - 1)}, {"in": [{"var": "country"}, ["NL", "BE"]]}]})
            }
            2 => {
                json!({"or": [{"$ref": format!("seg{}", i - 1)}, {"$ref": format!("seg{}", i - 2)}]})
            }
            _ => json!({"and": [{"$ref": "seg0"}, {"$ref": format!("seg{}", i - 1)}]}),
        };
        evaluators.insert(format!("seg{i}"), rule);
    }
    let flags: Map<String, Value> = (0..flags)
        .map(|i| {
            let flag = json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "targeting": {"if": [{"$ref": format!("seg{}", i % segments)}, "on", "off"]}});
            (format!("flag{i}"), flag)
        })
        .collect();
    json!({"flags": flags, "$evaluators": evaluators})
}
