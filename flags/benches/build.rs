//! Compiling a whole namespace: 10,000 flags over 10,000 segments (chains, diamonds, wide
//! fan-in), beside the same flags over 10 segments in the same run, so the ratio shows what
//! the segments cost. Segments are linked in one O(V+E) pass, so the ratio stays small.
//!
//! Run: `cargo bench --bench build` (the target: ≤ 100 ms for 10,000 + 10,000).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use flagstaff_flags::FlagSet;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn flag(segment: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
           "targeting": {"if": [{"$ref": segment}, "on", "off"]}})
}

/// `segments` segments (a leaf, a chain link, a diamond, a fan-in onto the first leaf, in
/// turn) and `flags` flags, each referencing one segment.
fn namespace(flags: usize, segments: usize) -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let segs: BTreeMap<String, Value> = (0..segments)
        .map(|i| {
            let rule = match i % 4 {
                0 => json!({"ends_with": [{"var": "email"}, format!("@team{i}.example")]}),
                1 => json!({"and": [{"$ref": format!("seg{}", i - 1)}, {"in": [{"var": "country"}, ["NL", "BE"]]}]}),
                2 => json!({"or": [{"$ref": format!("seg{}", i - 1)}, {"$ref": format!("seg{}", i - 2)}]}),
                _ => json!({"and": [{"$ref": "seg0"}, {"$ref": format!("seg{}", i - 1)}]}),
            };
            (format!("seg{i}"), rule)
        })
        .collect();
    let flags = (0..flags)
        .map(|i| (format!("flag{i}"), flag(&format!("seg{}", i % segments))))
        .collect();
    (flags, segs)
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    for segments in [10, 10_000] {
        let (flags, segs) = namespace(10_000, segments);
        group.bench_function(format!("10000 flags, {segments} segments"), |b| {
            b.iter(|| {
                let (set, faults) = FlagSet::build(
                    flags.iter().map(|(k, v)| (k.as_str(), v)),
                    &segs,
                    &serde_json::Map::new(),
                );
                assert!(faults.is_empty());
                black_box(set.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, build);
criterion_main!(benches);
