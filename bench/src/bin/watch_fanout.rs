//! Write → watch event latency with many subscribers on a 3-node cluster.
//!
//! `cargo run --release -p flagstaff-bench --bin watch_fanout -- [SUBSCRIBERS] [WRITES]`
//! (defaults 1000 and 50). Subscribers are spread over the three nodes; every write goes to the
//! leader; the latency of one delivery is from just before the write was sent to the moment the
//! subscriber parsed its `change` event. Every subscriber must receive every write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flagstaff_bench::{percentiles, LocalCluster, TOKEN};
use futures::StreamExt;
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let subscribers = args.first().copied().unwrap_or(1000);
    let writes = args.get(1).copied().unwrap_or(50);
    let cluster = LocalCluster::start(3).await?;
    let leader = (cluster.wait_leader().await? - 1) as usize;
    cluster
        .put(leader, "/v1/namespaces/bench", json!({}))
        .await?;

    // key → (subscriber, arrival)
    let arrivals: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(subscribers);
    let mut tasks = Vec::new();
    for s in 0..subscribers {
        let url = format!(
            "{}/v1/namespaces/bench/watch",
            cluster.apis[s % cluster.apis.len()]
        );
        let (http, arrivals, ready) = (cluster.http.clone(), arrivals.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let resp = http.get(url).bearer_auth(TOKEN).send().await?;
            let mut stream = resp.bytes_stream();
            let mut buf = String::new();
            let mut got = 0;
            // Bounded: stops after every write arrived or 120 s.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while got < writes {
                let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(c))) => c,
                    _ => break,
                };
                buf.push_str(std::str::from_utf8(&chunk)?);
                while let Some(pos) = buf.find("\n\n") {
                    let frame: String = buf.drain(..pos + 2).collect();
                    let now = Instant::now();
                    if frame.contains("event: snapshot") {
                        let _ = ready.send(()).await;
                    } else if frame.contains("event: change") {
                        let data = frame
                            .lines()
                            .find_map(|l| l.strip_prefix("data: "))
                            .unwrap_or("{}");
                        let v: Value = serde_json::from_str(data)?;
                        for key in v["upserted"]["flags"]
                            .as_object()
                            .into_iter()
                            .flat_map(|m| m.keys())
                        {
                            arrivals
                                .lock()
                                .unwrap()
                                .entry(key.clone())
                                .or_default()
                                .push(now);
                            got += 1;
                        }
                    }
                }
            }
            anyhow::Ok(got)
        }));
    }
    for _ in 0..subscribers {
        ready_rx.recv().await;
    }
    eprintln!("{subscribers} subscribers connected; writing {writes} flags");

    let mut sent = HashMap::new();
    for i in 0..writes {
        let key = format!("w{i}");
        sent.insert(key.clone(), Instant::now());
        let def = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"});
        cluster
            .put(leader, &format!("/v1/namespaces/bench/flags/{key}"), def)
            .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut delivered = 0;
    for t in tasks {
        delivered += t.await??;
    }
    let mut samples = Vec::new();
    for (key, times) in arrivals.lock().unwrap().iter() {
        let t0 = sent[key];
        samples.extend(times.iter().map(|t| t.duration_since(t0)));
    }
    let (p50, p99, max) = percentiles(&mut samples);
    println!(
        "subscribers={subscribers} writes={writes} delivered={delivered}/{} write->event p50={p50:?} p99={p99:?} max={max:?}",
        subscribers * writes
    );
    cluster.stop().await;
    anyhow::ensure!(
        delivered == subscribers * writes,
        "some events were not delivered"
    );
    Ok(())
}
