//! A/B test intake capacity: a 3-node cluster of `flagstaff` processes (fsync on, loopback)
//! takes `POST /v1/namespaces/{ns}/events` from concurrent senders for a fixed time, in two
//! shapes: raw conversions (`track`, each evaluated by the node) and SDK aggregates (exposure
//! counts with distinct-user sketches, as `flagstaff-client` sends them). Reports the events
//! acknowledged per second (each acknowledged batch is committed on a quorum), the Raft log
//! entries per second they cost, and the node CPU.
//!
//! `target/release/event_intake --flagstaff-bin target/release/flagstaff --seconds 20`

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use flagstaff_bench::machine::cpu_time;
use flagstaff_bench::{cluster_status, node_apis, node_pids};
use flagstaff_experiments::DistinctCount;
use jepsen_like_tests::cluster::{Cluster, NodeOptions};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// The release `flagstaff` binary.
    #[arg(long)]
    flagstaff_bin: PathBuf,
    /// Seconds per shape.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Concurrent senders (spread over the three nodes).
    #[arg(long, default_value_t = 32)]
    senders: usize,
    /// Raw conversions per request.
    #[arg(long, default_value_t = 200)]
    track_batch: usize,
    /// Distinct users per SDK aggregate (its sketch), each exposed once.
    #[arg(long, default_value_t = 500)]
    sdk_users: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::Builder::new()
        .prefix("flagstaff-intake.")
        .tempdir()?;
    let mut fs = Cluster::start_with(
        &args.flagstaff_bin,
        work.path(),
        3,
        0,
        NodeOptions::default(),
        true,
    )
    .await
    .context("starting Flagstaff")?;
    let result = run(&fs, &args).await;
    fs.stop().await;
    result
}

async fn setup(fs: &Cluster, leader: u64) -> anyhow::Result<String> {
    let put =
        |path: &'static str, body: Value| fs.call(leader, reqwest::Method::PUT, path, Some(body));
    let (s, b) = put("/v1/namespaces/shop", json!({})).await?;
    anyhow::ensure!(s == 200, "namespace: {s} {b}");
    let (s, b) = put(
        "/v1/namespaces/shop/flags/checkout",
        json!({"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a",
            "targeting": {"fractional": [["a", 50], ["b", 50]]},
            "experiment": {"control": "a", "metrics": ["purchase"]}}),
    )
    .await?;
    anyhow::ensure!(s == 200, "flag: {s} {b}");
    let (s, b) = fs
        .call(
            leader,
            reqwest::Method::POST,
            "/v1/namespaces/shop/sdk-keys",
            Some(json!({"name": "bench"})),
        )
        .await?;
    anyhow::ensure!(s == 200, "key: {s} {b}");
    Ok(b["secret"].as_str().unwrap_or_default().to_string())
}

/// One request body of the given shape, and the events it carries.
fn body(shape: &str, sender: usize, n: u64, track_batch: usize, sdk_users: u64) -> (Value, u64) {
    let batch = format!("s{sender}-{shape}-{n}");
    if shape == "track" {
        let track: Vec<Value> = (0..track_batch)
            .map(|i| {
                json!({"event": "purchase", "value": 10.0,
                    "context": {"targetingKey": format!("u{sender}-{n}-{i}")}})
            })
            .collect();
        (json!({"batch": batch, "track": track}), track_batch as u64)
    } else {
        let mut users = DistinctCount::new();
        for i in 0..sdk_users {
            users.insert(&format!("u{sender}-{n}-{i}"));
        }
        let per_arm = sdk_users / 2;
        let exposures = json!([
            {"flag": "checkout", "variant": "a", "count": per_arm, "users": users},
            {"flag": "checkout", "variant": "b", "count": sdk_users - per_arm, "users": users}]);
        (json!({"batch": batch, "exposures": exposures}), sdk_users)
    }
}

async fn run(fs: &Cluster, args: &Args) -> anyhow::Result<()> {
    let leader = fs.wait_leader(&fs.ids(), Duration::from_secs(30)).await?;
    let key = setup(fs, leader).await?;
    let apis = node_apis(fs);
    let pids = node_pids(fs);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(args.senders)
        .build()?;
    println!("| shape | senders | events acknowledged / s | requests / s | refused (429/503) | log entries / s | node CPU s per s |");
    println!("|---|---|---|---|---|---|---|");
    for shape in ["track", "sdk"] {
        let before = cluster_status(fs, leader).await?["last_log_index"]
            .as_u64()
            .unwrap_or(0);
        let cpu_before: Vec<_> = pids.iter().map(|p| cpu_time(*p)).collect();
        let (events, requests, refused) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let started = Instant::now();
        let until = started + Duration::from_secs(args.seconds);
        let mut tasks = Vec::new();
        for sender in 0..args.senders {
            let (http, key, api) = (http.clone(), key.clone(), apis[sender % apis.len()].clone());
            let (events, requests, refused) = (events.clone(), requests.clone(), refused.clone());
            let (track_batch, sdk_users) = (args.track_batch, args.sdk_users);
            let body_of = move |n| body(shape, sender, n, track_batch, sdk_users);
            tasks.push(tokio::spawn(async move {
                // Bounded in count as well as time.
                for n in 0..100_000u64 {
                    if Instant::now() >= until {
                        break;
                    }
                    let (b, carried) = body_of(n);
                    let r = http
                        .post(format!("{api}/v1/namespaces/shop/events"))
                        .bearer_auth(&key)
                        .json(&b)
                        .send()
                        .await;
                    match r.map(|r| r.status().as_u16()) {
                        Ok(200) => {
                            events.fetch_add(carried, Ordering::Relaxed);
                            requests.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(429 | 503 | 504) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Ok(other) => eprintln!("{shape}: unexpected status {other}"),
                        Err(e) => eprintln!("{shape}: {e}"),
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let secs = started.elapsed().as_secs_f64();
        let after = cluster_status(fs, leader).await?["last_log_index"]
            .as_u64()
            .unwrap_or(0);
        let cpu: f64 = pids
            .iter()
            .zip(&cpu_before)
            .filter_map(|(p, b)| Some((cpu_time(*p)? - (*b)?).as_secs_f64()))
            .sum();
        println!(
            "| {shape} | {} | {:.0} | {:.1} | {} | {:.1} | {:.2} |",
            args.senders,
            events.load(Ordering::Relaxed) as f64 / secs,
            requests.load(Ordering::Relaxed) as f64 / secs,
            refused.load(Ordering::Relaxed),
            after.saturating_sub(before) as f64 / secs,
            cpu / secs
        );
    }
    Ok(())
}
