//! An application that embeds `flagstaff-client` and evaluates every flag it is told about in a
//! loop, printing one JSON line per round: each flag's value, variant, reason and error code,
//! and the process's resident and peak memory. The SDK's real-process tests run it as the
//! application whose host must be protected from what the service sends.
//!
//! ```sh
//! FLAGSTAFF_ENDPOINTS=http://127.0.0.1:7701 FLAGSTAFF_NAMESPACE=checkout FLAGSTAFF_SDK_KEY=fsk_… \
//! FLAGSTAFF_FLAGS=new-checkout,banner FLAGSTAFF_RUN_SECS=30 \
//!   cargo run --example evaluate_loop
//! ```
//!
//! It stops by itself after `FLAGSTAFF_RUN_SECS` (at most 600), or as soon as its standard input
//! is closed. Each evaluation's context carries `FLAGSTAFF_CONTEXT_ITEMS` list items (default
//! 1,000), so rules that walk context data have something to walk.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flagstaff_client::{context, Client};
use serde_json::{json, Map, Value};

/// `VmRSS` and `VmHWM` (peak) of this process, in KiB, from `/proc/self/status`.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let endpoints = env("FLAGSTAFF_ENDPOINTS", "http://127.0.0.1:7701");
    let flags: Vec<String> = env("FLAGSTAFF_FLAGS", "")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let run_for = Duration::from_secs(env("FLAGSTAFF_RUN_SECS", "30").parse::<u64>()?.min(600));
    let items: usize = env("FLAGSTAFF_CONTEXT_ITEMS", "1000").parse()?;

    let client = Client::builder(
        env("FLAGSTAFF_NAMESPACE", "checkout"),
        env("FLAGSTAFF_SDK_KEY", ""),
    )
    .endpoints(endpoints.split(',').map(str::trim))
    .build()?;
    let _ = client.wait_ready(Duration::from_secs(10)).await;

    // Closing standard input stops the loop.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                if line.is_err() {
                    break;
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
    }

    let list: Vec<Value> = (0..items).map(|i| json!(format!("item-{i}"))).collect();
    let ctx = context()
        .with_targeting_key("user-1")
        .with_attribute("items", Value::Array(list))
        .with_attribute("name", "x".repeat(64));
    let started = Instant::now();
    let mut round = 0u64;
    let mut out = std::io::stdout().lock();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < run_for {
        round += 1;
        let mut values = Map::new();
        for key in &flags {
            let d = client.object_details(key, &ctx, &Value::Null);
            values.insert(
                key.clone(),
                json!({
                    "value": d.value,
                    "variant": d.variant,
                    "reason": d.reason.to_string(),
                    "error": d.error.as_ref().map(|e| format!("{:?}", e.code)),
                    "revision": d.revision,
                }),
            );
        }
        let (rss, peak) = memory_kib();
        let line = json!({"round": round, "revision": client.revision(), "rss_kib": rss,
            "peak_kib": peak, "flags": values});
        writeln!(out, "{line}")?;
        out.flush()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.close();
    Ok(())
}
