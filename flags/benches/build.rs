//! Compiling a whole namespace: 10,000 flags over 10,000 segments (chains, diamonds, wide
//! fan-in), beside the same flags over 10 segments in the same run, so the ratio shows what
//! the segments cost. Segments are linked in one O(V+E) pass, so the ratio stays small.
//!
//! Run: `cargo bench --bench build` (the target: ≤ 100 ms for 10,000 + 10,000).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use flagstaff_flags::FlagSet;
use serde_json::Value;
use std::collections::BTreeMap;

#[path = "../tests/support/large_namespace.rs"]
mod large;

/// The document's flags and segments as the maps `FlagSet::build` takes.
fn namespace(flags: usize, segments: usize) -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let doc = large::large_namespace(flags, segments);
    let map = |name: &str| -> BTreeMap<String, Value> {
        doc[name]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    (map("flags"), map("$evaluators"))
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
