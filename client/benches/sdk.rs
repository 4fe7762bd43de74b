//! Evaluation through the SDK (atomically swapped snapshot) against the raw evaluator on the
//! same compiled flags, single-threaded and with 8 threads at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};

mod common;
use common::fixture;

fn bench(c: &mut Criterion) {
    let (raw, client, ctx) = fixture();

    for key in ["static", "rule"] {
        let mut g = c.benchmark_group(format!("bool/{key}"));
        g.bench_function("raw FlagSet", |b| {
            b.iter(|| raw.boolean(black_box(key), &ctx, false).value)
        });
        g.bench_function("Client::bool", |b| {
            b.iter(|| client.bool(black_box(key), &ctx, false))
        });
        g.bench_function("Client::bool_details", |b| {
            b.iter(|| client.bool_details(black_box(key), &ctx, false).value)
        });
        g.finish();
    }

    // Throughput with 1 and 8 threads evaluating at once, the SDK next to the raw evaluator
    // (no shared lock: both should scale alike with the cores available).
    let client = Arc::new(client);
    let raw = Arc::new(raw);
    for threads in [1usize, 8] {
        for sdk in [false, true] {
            let name = format!(
                "{} rule, {threads} thread(s) x 100k calls",
                if sdk { "Client::bool" } else { "raw FlagSet" }
            );
            c.bench_function(&name, |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        std::thread::scope(|s| {
                            for _ in 0..threads {
                                let (client, raw, ctx) = (client.clone(), raw.clone(), ctx.clone());
                                s.spawn(move || {
                                    for _ in 0..100_000 {
                                        if sdk {
                                            black_box(client.bool("rule", &ctx, false));
                                        } else {
                                            black_box(raw.boolean("rule", &ctx, false).value);
                                        }
                                    }
                                });
                            }
                        });
                    }
                    start.elapsed()
                })
            });
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
