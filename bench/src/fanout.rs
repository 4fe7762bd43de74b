//! Write → watch event latency with many SSE subscribers spread over the nodes, and write →
//! value changed in an SDK instance, in the same run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flagstaff_client::Client;
use futures::StreamExt;
use serde_json::{json, Value};

/// What one fan-out run measured.
#[derive(Debug, Default)]
pub struct Fanout {
    pub subscribers: usize,
    pub writes: usize,
    /// Subscribers whose `snapshot` event arrived before the writes began.
    pub connected: usize,
    pub connect_time: Duration,
    /// One sample per (subscriber, write) delivered.
    pub latencies: Vec<Duration>,
    /// Write → the SDK's change listener saw the new value, one per write.
    pub sdk_latencies: Vec<Duration>,
    /// After the writes, the SDK evaluated every written flag to its new value.
    pub sdk_values_ok: bool,
    /// RSS (KiB) of each node, sampled while every subscriber was connected.
    pub rss_kib: Vec<Option<u64>>,
}

impl Fanout {
    pub fn delivered(&self) -> usize {
        self.latencies.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Subscribes `subscribers` watch streams to namespace `ns` (round-robin over `apis`), plus
/// one SDK client on every node, then writes `writes` new flags to `leader_api` spaced by
/// `gap`. Every load loop is bounded: connecting within 120 s, delivery within 60 s after the
/// last write. `rss` is called while every subscriber is connected.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    apis: &[String],
    leader_api: &str,
    token: &str,
    ns: &str,
    subscribers: usize,
    writes: usize,
    gap: Duration,
    rss: &(dyn Fn() -> Vec<Option<u64>> + Sync),
) -> anyhow::Result<Fanout> {
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()?;
    let admin = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let r = admin
        .put(format!("{leader_api}/v1/namespaces/{ns}"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "create namespace {ns}: {}",
        r.status()
    );

    let sdk = Client::builder(ns, token)
        .endpoints(apis.to_vec())
        .build()?;
    let sdk_seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    {
        let seen = sdk_seen.clone();
        sdk.on_change(move |c| {
            let now = Instant::now();
            let mut seen = lock(&seen);
            for f in &c.flags {
                if f.new_value == Some(Value::Bool(true)) {
                    seen.entry(f.key.clone()).or_insert(now);
                }
            }
        });
    }
    sdk.wait_ready(Duration::from_secs(20))
        .await
        .map_err(|s| anyhow::anyhow!("SDK not ready: {s}"))?;

    // key → arrival times
    let arrivals: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(subscribers.max(1));
    // Connect a few hundred at a time so the listeners' accept queues never overflow.
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let connect_start = Instant::now();
    let end = tokio::time::Instant::now()
        + Duration::from_secs(120)
        + gap * writes as u32
        + Duration::from_secs(60);
    let mut tasks = Vec::with_capacity(subscribers);
    for s in 0..subscribers {
        let url = format!("{}/v1/namespaces/{ns}/watch", apis[s % apis.len()]);
        let (http, arrivals, ready, gate) = (
            http.clone(),
            arrivals.clone(),
            ready_tx.clone(),
            gate.clone(),
        );
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let resp = match tokio::time::timeout_at(
                end,
                http.get(url)
                    .bearer_auth(token)
                    .timeout(Duration::from_secs(3600))
                    .send(),
            )
            .await
            {
                Ok(Ok(r)) if r.status().is_success() => r,
                _ => return 0usize,
            };
            let mut permit = Some(permit);
            let mut stream = resp.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            let mut got = 0;
            while got < writes {
                let chunk = match tokio::time::timeout_at(end, stream.next()).await {
                    Ok(Some(Ok(c))) => c,
                    _ => break,
                };
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
                    let frame: Vec<u8> = buf.drain(..pos + 2).collect();
                    let now = Instant::now();
                    let frame = String::from_utf8_lossy(&frame);
                    if frame.contains("event: snapshot") {
                        permit.take();
                        let _ = ready.send(()).await;
                    } else if frame.contains("event: change") {
                        let data = frame
                            .lines()
                            .find_map(|l| l.strip_prefix("data: "))
                            .unwrap_or("{}");
                        let Ok(v) = serde_json::from_str::<Value>(data) else {
                            continue;
                        };
                        if let Some(m) = v["upserted"]["flags"].as_object() {
                            let mut a = lock(&arrivals);
                            for key in m.keys() {
                                a.entry(key.clone()).or_default().push(now);
                                got += 1;
                            }
                        }
                    }
                }
            }
            got
        }));
    }
    drop(ready_tx);
    let mut connected = 0;
    let connect_deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while connected < subscribers {
        match tokio::time::timeout_at(connect_deadline, ready_rx.recv()).await {
            Ok(Some(())) => connected += 1,
            _ => break,
        }
    }
    let connect_time = connect_start.elapsed();
    let rss_connected = rss();

    let def =
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"});
    let mut sent = HashMap::new();
    for i in 0..writes {
        let key = format!("w{i}");
        sent.insert(key.clone(), Instant::now());
        let r = admin
            .put(format!("{leader_api}/v1/namespaces/{ns}/flags/{key}"))
            .bearer_auth(token)
            .json(&def)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "write {key}: {}", r.status());
        tokio::time::sleep(gap).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    // The SDK has had the whole delivery time; anything missing now was not delivered.
    let ctx = flagstaff_client::context();
    let sdk_values_ok = (0..writes).all(|i| sdk.bool(&format!("w{i}"), &ctx, false));
    sdk.close();

    let mut latencies = Vec::new();
    for (key, times) in lock(&arrivals).iter() {
        if let Some(t0) = sent.get(key) {
            latencies.extend(times.iter().map(|t| t.saturating_duration_since(*t0)));
        }
    }
    let sdk_latencies = lock(&sdk_seen)
        .iter()
        .filter_map(|(k, t)| sent.get(k).map(|t0| t.saturating_duration_since(*t0)))
        .collect();
    Ok(Fanout {
        subscribers,
        writes,
        connected,
        connect_time,
        latencies,
        sdk_latencies,
        sdk_values_ok,
        rss_kib: rss_connected,
    })
}
