//! Write → watch event latency with many SSE subscribers spread over the nodes, and write →
//! value changed in an SDK instance, in the same run.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flagstaff_client::Client;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::machine;

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
    /// CPU time the nodes used from the first write until the last event arrived (the
    /// streams' heartbeats included), if every node's could be read.
    pub node_cpu: Option<Duration>,
    /// CPU time this process used meanwhile: the subscribers' side (reading and parsing every
    /// event), the SDK instance and the writer.
    pub subscriber_cpu: Option<Duration>,
    /// Streams that ended before every write arrived, by why (the bench does not resume them).
    pub ended_early: BTreeMap<&'static str, usize>,
}

impl Fanout {
    pub fn delivered(&self) -> usize {
        self.latencies.len()
    }

    /// CPU per delivered event, (nodes, subscribers' side).
    pub fn cpu_per_delivery(&self) -> (Option<Duration>, Option<Duration>) {
        let per = |d: Option<Duration>| {
            d.filter(|_| self.delivered() > 0)
                .map(|d| d / self.delivered() as u32)
        };
        (per(self.node_cpu), per(self.subscriber_cpu))
    }
}

fn cpu_sum(pids: &[Option<i32>]) -> Option<Duration> {
    pids.iter().map(|p| machine::cpu_time(Some((*p)?))).sum()
}

/// (when, the nodes' CPU time, this process's CPU time).
type CpuSample = (Instant, Option<Duration>, Option<Duration>);

/// Samples CPU times every 20 ms on its own thread (so a busy runtime cannot delay it) until
/// `stop` is set or `limit` has passed.
fn sample_cpu(
    pids: Vec<Option<i32>>,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> std::thread::JoinHandle<Vec<CpuSample>> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut samples = Vec::new();
        loop {
            samples.push((Instant::now(), cpu_sum(&pids), machine::cpu_time(None)));
            if stop.load(Ordering::Relaxed) || started.elapsed() > limit {
                return samples;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// The CPU (nodes, this process) used between `from` and `to`, from the samples just outside
/// that span.
fn cpu_between(
    samples: &[CpuSample],
    from: Instant,
    to: Instant,
) -> (Option<Duration>, Option<Duration>) {
    let start = samples
        .iter()
        .rev()
        .find(|s| s.0 <= from)
        .or(samples.first());
    let end = samples.iter().find(|s| s.0 >= to).or(samples.last());
    let (Some(a), Some(b)) = (start, end) else {
        return (None, None);
    };
    let diff = |x: Option<Duration>, y: Option<Duration>| y?.checked_sub(x?);
    (diff(a.1, b.1), diff(a.2, b.2))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Subscribes `subscribers` watch streams to namespace `ns` (round-robin over `apis`), plus
/// one SDK client on every node, then writes `writes` new flags to `leader_api` spaced by
/// `gap`. Every load loop is bounded: connecting within 120 s, delivery within 60 s after the
/// last write. `node_pids` are the nodes' processes, for their RSS while every subscriber is
/// connected and their CPU time while the writes are delivered.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    apis: &[String],
    leader_api: &str,
    token: &str,
    ns: &str,
    subscribers: usize,
    writes: usize,
    gap: Duration,
    node_pids: &[Option<i32>],
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
        let (http, ready, gate) = (http.clone(), ready_tx.clone(), gate.clone());
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
                _ => return (Vec::new(), None, Some("refused")),
            };
            let mut permit = Some(permit);
            let mut stream = resp.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            // (flag key, arrival) of every change event, kept per stream so that subscribers
            // never contend on a lock while measuring.
            let mut arrivals: Vec<(String, Instant)> = Vec::with_capacity(writes);
            // Why the stream ended before every write arrived, if it did.
            let mut ended = None;
            while arrivals.len() < writes && ended.is_none() {
                let chunk = match tokio::time::timeout_at(end, stream.next()).await {
                    Ok(Some(Ok(c))) => c,
                    Ok(_) => {
                        ended = ended.or(Some("closed by the node"));
                        break;
                    }
                    Err(_) => {
                        ended = Some("bench deadline");
                        break;
                    }
                };
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
                    let frame: Vec<u8> = buf.drain(..pos + 2).collect();
                    let now = Instant::now();
                    let frame = String::from_utf8_lossy(&frame);
                    if frame.contains("event: snapshot") {
                        permit.take();
                        let _ = ready.send(()).await;
                    } else if frame.contains("event: stale") {
                        ended = Some("stale (node could not prove its bound)");
                    } else if frame.contains("event: error") {
                        ended = Some("error event");
                    } else if frame.contains("event: change") {
                        let data = frame
                            .lines()
                            .find_map(|l| l.strip_prefix("data: "))
                            .unwrap_or("{}");
                        let Ok(v) = serde_json::from_str::<Value>(data) else {
                            continue;
                        };
                        if let Some(m) = v["upserted"]["flags"].as_object() {
                            arrivals.extend(m.keys().map(|key| (key.clone(), now)));
                        }
                    }
                }
            }
            // The stream goes back open: closing it now would tear the connection down while
            // the other subscribers are still receiving the last writes, and that teardown
            // work on the nodes would be measured as their delivery latency.
            (arrivals, Some(stream), ended)
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
    let rss_connected = machine::rss_of(node_pids);
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_cpu(
        node_pids.to_vec(),
        stop_sampling.clone(),
        gap * writes as u32 + Duration::from_secs(120),
    );
    let first_write = Instant::now();

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
    let mut arrivals = Vec::new();
    let mut open_streams = Vec::with_capacity(subscribers);
    let mut ended_early: BTreeMap<&'static str, usize> = BTreeMap::new();
    for t in tasks {
        let (a, stream, ended) =
            t.await
                .unwrap_or((Vec::new(), None, Some("subscriber task failed")));
        arrivals.extend(a);
        open_streams.push(stream);
        if let Some(why) = ended {
            *ended_early.entry(why).or_default() += 1;
        }
    }
    // The SDK has had the whole delivery time; anything missing now was not delivered.
    let ctx = flagstaff_client::context();
    let sdk_values_ok = (0..writes).all(|i| sdk.bool(&format!("w{i}"), &ctx, false));
    sdk.close();

    stop_sampling.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap_or_default();
    let last_arrival = arrivals.iter().map(|a| a.1).max().unwrap_or(first_write);
    let (node_cpu, subscriber_cpu) = cpu_between(&samples, first_write, last_arrival);
    drop(open_streams);
    let latencies = arrivals
        .iter()
        .filter_map(|(key, t)| sent.get(key).map(|t0| t.saturating_duration_since(*t0)))
        .collect();
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
        node_cpu,
        subscriber_cpu,
        ended_early,
    })
}
