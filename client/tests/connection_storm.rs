//! A storm of clients against one node of three real `flagstaff serve` processes: a
//! 10,000-flag namespace, 5,000 watch streams and 5,000 snapshot requests opened at once
//! against the leader while one writer keeps writing. The cluster keeps its leader and term,
//! every write succeeds, every stream gets its `snapshot` event and every snapshot request its
//! whole body. Prints the terms, the write latencies during the storm and how long the streams
//! took to get their snapshots.
//!
//! Every connection reads and discards as it goes (10,000 copies of a ~1 MB namespace are never
//! held at once), and every loop is bounded in count and time.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::flagstaff_bin;
use jepsen_like_tests::cluster::{Cluster, NodeOptions, ADMIN_TOKEN};
use serde_json::{json, Value};

const FLAGS: usize = 10_000;
const STREAMS: usize = 5_000;
const SNAPSHOTS: usize = 5_000;
/// The whole storm must be over by then.
const STORM_LIMIT: Duration = Duration::from_secs(240);

async fn terms(c: &Cluster) -> Vec<u64> {
    let mut out = Vec::new();
    for id in c.ids() {
        let (s, b) = c
            .call(id, reqwest::Method::GET, "/v1/cluster", None)
            .await
            .unwrap();
        assert_eq!(s, 200, "{b}");
        out.push(b["term"].as_u64().unwrap());
    }
    out
}

/// The kernel's count of connections dropped because a listen queue was full (this network
/// namespace's `TcpExtListenOverflows`), if it can be read.
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// The leader's own count of committed writes per latency bucket (`le` → count), from its
/// `flagstaff_write_duration_seconds` histogram.
async fn write_buckets(http: &reqwest::Client, api: &str) -> Vec<(f64, u64)> {
    let text = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = "flagstaff_write_duration_seconds_bucket{";
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter(|l| l.contains("outcome=\"committed\""))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q` of the writes counted between two
/// readings of [`write_buckets`].
fn bucket_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let count = |b: &[(f64, u64)], le: f64| b.iter().find(|(l, _)| *l == le).map_or(0, |(_, c)| *c);
    let total = after.last().map_or(0, |(le, c)| c - count(before, *le));
    let rank = ((total as f64) * q).ceil() as u64;
    after
        .iter()
        .find(|(le, c)| c - count(before, *le) >= rank.max(1))
        .map_or(f64::NAN, |(le, _)| *le)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// Runs alone (`.config/nextest.toml`): other tests' load on the same two cores is not the
// storm's. `STORM_ARGS` passes extra `serve` options to every node (e.g. Raft timings).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_streams_and_snapshots_costs_no_leader_and_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let opts = NodeOptions {
        env: Vec::new(),
        args: std::env::var("STORM_ARGS")
            .map(|a| a.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        ..Default::default()
    };
    // Direct peer links: the link-cutting proxies run in this process, which the storm
    // saturates, and would delay the Raft traffic they carry by the test's own load.
    let c = Cluster::start_with(&flagstaff_bin(), dir.path(), 3, 0, opts, true)
        .await
        .unwrap_or_else(|e| panic!("starting 3 flagstaff processes: {e:#}"));
    let leader = c
        .wait_leader(&c.ids(), Duration::from_secs(30))
        .await
        .unwrap();
    let call = |method, path: String, body: Value| {
        let c = &c;
        async move {
            let (s, b) = c.call(leader, method, &path, Some(body)).await.unwrap();
            assert_eq!(s, 200, "{path}: {b}");
            b
        }
    };
    call(
        reqwest::Method::PUT,
        "/v1/namespaces/storm".into(),
        json!({}),
    )
    .await;
    let flags = jepsen_like_tests::load::bool_flags("flag", FLAGS);
    call(
        reqwest::Method::PUT,
        "/v1/namespaces/storm/flagd".into(),
        json!({"flags": flags}),
    )
    .await;
    let key = call(
        reqwest::Method::POST,
        "/v1/namespaces/storm/sdk-keys".into(),
        json!({"name": "storm"}),
    )
    .await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let api = c.node(leader).api.clone();
    // The leader knows the key and the namespace before the storm.
    let http = reqwest::Client::builder()
        .timeout(STORM_LIMIT)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let r = http
        .get(format!("{api}/v1/namespaces/storm/snapshot"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let snapshot_bytes = r.bytes().await.unwrap().len();
    let before = terms(&c).await;

    // One writer, one write at a time, until the storm is over.
    let storm_over = Arc::new(tokio::sync::Notify::new());
    let writer = {
        let (http, api, over) = (http.clone(), api.clone(), storm_over.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            let started = Instant::now();
            for i in 0..100_000u64 {
                let t = Instant::now();
                let write = http
                    .patch(format!(
                        "{api}/v1/namespaces/storm/flags/flag-{:05}",
                        i % 100
                    ))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"defaultVariant": if i % 2 == 0 { "on" } else { "off" }}))
                    .send();
                tokio::select! {
                    r = write => match r {
                        Ok(r) if r.status().is_success() => latencies.push(t.elapsed()),
                        Ok(r) => errors.push(format!("write {i}: {}", r.status())),
                        Err(e) => errors.push(format!("write {i}: {e}")),
                    },
                    _ = over.notified() => break,
                }
                if started.elapsed() > STORM_LIMIT {
                    break;
                }
            }
            (latencies, errors)
        })
    };

    // The storm: every connection its own, all at once.
    let overflows_before = listen_overflows();
    let buckets_before = write_buckets(&http, &api).await;
    let t0 = Instant::now();
    let snapshotted = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    // A GET of the namespace's `route` with the SDK key, on a connection of its own. The node
    // paces these starts (`--sdk-admission-rate`): a 429 is retried after its Retry-After, as
    // a client should, and counted.
    let paced = Arc::new(AtomicUsize::new(0));
    let get = |route: &str| {
        let (http, url, key, paced) = (
            http.clone(),
            format!("{api}/v1/namespaces/storm/{route}"),
            key.clone(),
            paced.clone(),
        );
        async move {
            for _ in 0..50 {
                let r = http
                    .get(&url)
                    .bearer_auth(&key)
                    .send()
                    .await
                    .map_err(|e| jepsen_like_tests::load::chain(&e))?;
                if r.status() != 429 {
                    return Ok(r);
                }
                paced.fetch_add(1, Ordering::Relaxed);
                let secs: u64 = r.headers()["retry-after"]
                    .to_str()
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("429 without a Retry-After")?;
                tokio::time::sleep(Duration::from_secs(secs.min(10))).await;
            }
            Err(format!("{url}: 50 answers of 429"))
        }
    };
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (done, release) = (snapshotted.clone(), release.clone());
        let request = get("watch");
        streams.push(tokio::spawn(async move {
            let r = request.await?;
            if r.status() != 200 {
                return Err(format!("watch: {}", r.status()));
            }
            let r = jepsen_like_tests::load::first_snapshot(r).await?;
            let took = t0.elapsed();
            done.fetch_add(1, Ordering::SeqCst);
            // Hold the stream open until every stream and snapshot has been served.
            let _ = release.acquire().await;
            drop(r);
            Ok::<_, String>(took)
        }));
    }
    let mut snapshots = Vec::new();
    for _ in 0..SNAPSHOTS {
        let request = get("snapshot");
        snapshots.push(tokio::spawn(async move {
            let r = request.await?;
            if r.status() != 200 {
                let status = r.status();
                return Err(format!(
                    "snapshot: {status} {}",
                    r.text().await.unwrap_or_default()
                ));
            }
            let bytes = jepsen_like_tests::load::whole_snapshot_body(r).await?;
            Ok::<_, String>((t0.elapsed(), bytes))
        }));
    }
    let mut snapshot_times = Vec::new();
    let mut failures = Vec::new();
    for s in snapshots {
        match s.await.unwrap() {
            Ok((t, bytes)) => {
                assert!(
                    bytes >= snapshot_bytes,
                    "a snapshot of {bytes} bytes, fewer than {snapshot_bytes}"
                );
                snapshot_times.push(t);
            }
            Err(e) => failures.push(e),
        }
    }
    // Streams report as they get their snapshot (a finished one failed: the others wait to be
    // released); wait for all, bounded, then release them.
    let deadline = Instant::now() + STORM_LIMIT;
    loop {
        let failed = streams.iter().filter(|s| s.is_finished()).count();
        if snapshotted.load(Ordering::SeqCst) + failed >= STREAMS || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let storm = t0.elapsed();
    let overflows = listen_overflows()
        .zip(overflows_before)
        .map(|(after, before)| after - before);
    storm_over.notify_one();
    release.add_permits(STREAMS);
    let mut stream_times = Vec::new();
    for s in streams {
        match s.await.unwrap() {
            Ok(t) => stream_times.push(t),
            Err(e) => failures.push(e),
        }
    }
    let (mut latencies, errors) = writer.await.unwrap();
    let buckets_after = write_buckets(&http, &api).await;
    let node_p99 = bucket_quantile(&buckets_before, &buckets_after, 0.99);
    let after = terms(&c).await;

    latencies.sort();
    stream_times.sort();
    snapshot_times.sort();
    eprintln!(
        "storm: {STREAMS} streams + {SNAPSHOTS} snapshot requests of a {FLAGS}-flag namespace \
         ({snapshot_bytes} bytes) against the leader, served in {storm:?} ({} answers of 429 \
         retried); terms {before:?} -> {after:?}; \
         {} writes during it, p50 {:?}, p99 {:?}, max {:?} (as the test's client saw them; on \
         the leader, from request to commit, p99 at most {node_p99} s); every stream had its snapshot after \
         at most {:?} (p50 {:?}); snapshots p50 {:?}, max {:?}; connections dropped by a full \
         listen queue: {overflows:?}",
        paced.load(Ordering::Relaxed),
        latencies.len(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        stream_times.last().copied().unwrap_or_default(),
        quantile(&stream_times, 0.5),
        quantile(&snapshot_times, 0.5),
        snapshot_times.last().copied().unwrap_or_default(),
    );
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(stream_times.len(), STREAMS);
    assert_eq!(snapshot_times.len(), SNAPSHOTS);
    assert!(
        errors.is_empty(),
        "write errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert!(!latencies.is_empty(), "no write completed during the storm");
    assert_eq!(
        before, after,
        "the term changed: an election happened during the storm"
    );
    drop(c);
}
