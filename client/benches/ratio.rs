//! The SDK's cost as a ratio to the raw evaluator, measured so that a shared, busy machine does
//! not decide the answer: batches of calls through the raw `FlagSet` and through the `Client`
//! alternate (both see the same interference), and the fastest batch of each — the one least
//! disturbed — is compared, next to the medians. Run:
//! `cargo bench -p flagstaff-client --bench ratio` (absolute times: `--bench sdk`, criterion).

use std::hint::black_box;
use std::time::Instant;

mod common;
use common::fixture;

const CALLS: u32 = 2_000;
const ROUNDS: usize = 400;

/// Nanoseconds per call of one batch.
fn batch(mut f: impl FnMut() -> bool) -> f64 {
    let start = Instant::now();
    for _ in 0..CALLS {
        black_box(f());
    }
    start.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

fn min_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn main() {
    let (raw, client, ctx) = fixture();
    println!("SDK cost against the raw evaluator ({ROUNDS} alternating batches of {CALLS} calls; fastest batch, median batch)");
    for key in ["static", "rule"] {
        let (mut r, mut s, mut d) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            r.push(batch(|| raw.boolean(black_box(key), &ctx, false).value));
            s.push(batch(|| client.bool(black_box(key), &ctx, false)));
            d.push(batch(|| {
                client.bool_details(black_box(key), &ctx, false).value
            }));
        }
        let (r_min, r_med) = min_median(r);
        let (s_min, s_med) = min_median(s);
        let (d_min, d_med) = min_median(d);
        println!(
            "  {key:<6}  raw {r_min:6.1} ns ({r_med:6.1})  Client::bool {s_min:6.1} ns ({s_med:6.1}) = {:.2}x ({:.2}x)  Client::bool_details {d_min:6.1} ns ({d_med:6.1}) = {:.2}x ({:.2}x)",
            s_min / r_min,
            s_med / r_med,
            d_min / r_min,
            d_med / r_med,
        );
    }

    // Many threads at once: no lock and nothing shared written, so the SDK keeps the same ratio
    // to the raw evaluator as with one thread, and the throughput grows with the cores.
    let threads_wall = |threads: usize, sdk: bool| -> f64 {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..20 * CALLS {
                        if sdk {
                            black_box(client.bool(black_box("rule"), &ctx, false));
                        } else {
                            black_box(raw.boolean(black_box("rule"), &ctx, false).value);
                        }
                    }
                });
            }
        });
        // Calls per microsecond, all threads together.
        (threads as f64 * 20.0 * f64::from(CALLS)) / start.elapsed().as_micros().max(1) as f64
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("throughput on the rule, calls per µs (best of 30 alternating rounds; {cores} cores)");
    for threads in [1usize, 2, 8] {
        let (mut r, mut s) = (Vec::new(), Vec::new());
        for _ in 0..30 {
            r.push(threads_wall(threads, false));
            s.push(threads_wall(threads, true));
        }
        let best = |v: Vec<f64>| v.into_iter().fold(0.0, f64::max);
        let (r, s) = (best(r), best(s));
        println!(
            "  {threads} thread(s): raw {r:6.1}  Client::bool {s:6.1}  (SDK/raw throughput {:.2})",
            s / r
        );
    }
}
