//! The load fault: a burst of watch streams and snapshot requests against one node, as when
//! every SDK of a fleet reconnects to it at once, while the checked workloads go on. It checks
//! nothing itself; the checkers must still find 0 anomalies. What the burst got is logged as a
//! nemesis line.

use std::fmt;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::cluster::{Cluster, ADMIN_TOKEN};

/// The namespace the burst reads: big enough that every snapshot costs the node real work.
pub const LOAD_NS: &str = "load";
const LOAD_FLAGS: usize = 1_000;
pub const STREAMS: usize = 1_000;
pub const SNAPSHOTS: usize = 1_000;

/// `n` boolean flags `{prefix}-00000`, `{prefix}-00001`, … (alternately on and off), as the
/// `flags` of a flagd document.
pub fn bool_flags(prefix: &str, n: usize) -> Map<String, Value> {
    (0..n)
        .map(|i| {
            let f = json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                "defaultVariant": if i % 2 == 0 { "on" } else { "off" }});
            (format!("{prefix}-{i:05}"), f)
        })
        .collect()
}

/// Creates [`LOAD_NS`] with [`LOAD_FLAGS`] flags (one flagd import, one log entry).
pub async fn setup(cluster: &Cluster, via: u64) -> anyhow::Result<()> {
    let flags = bool_flags("load", LOAD_FLAGS);
    let path = format!("/v1/namespaces/{LOAD_NS}");
    for (method, path, body) in [
        (reqwest::Method::PUT, path.clone(), json!({})),
        (
            reqwest::Method::PUT,
            format!("{path}/flagd"),
            json!({"flags": flags}),
        ),
    ] {
        let (s, b) = cluster.call(via, method, &path, Some(body)).await?;
        anyhow::ensure!(s == 200 || s == 201, "{path}: {s} {b}");
    }
    Ok(())
}

/// What one burst got.
#[derive(Default, Debug)]
pub struct Burst {
    /// Streams whose first `snapshot` event arrived whole.
    pub streams_snapshotted: usize,
    /// Snapshot bodies received whole.
    pub snapshots_received: usize,
    /// 429 answers (the node's pace of new streams and snapshots, or its per-key cap).
    pub refused: usize,
    /// Requests that failed, were answered otherwise, or had not finished by the deadline.
    pub unfinished: usize,
}

impl fmt::Display for Burst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{STREAMS} streams had their snapshot, {}/{SNAPSHOTS} snapshots received, \
             {} answers of 429, {} failed or unfinished",
            self.streams_snapshotted, self.snapshots_received, self.refused, self.unfinished
        )
    }
}

/// An error with every cause under it (`a: b: c`), as reqwest's own message names only the
/// outermost ("error sending request") and hides whether the connect, the write or the read
/// failed.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Reads a watch stream until its first event, which must be a `snapshot`, has arrived whole
/// (without keeping more than its first bytes), and hands the stream back.
pub async fn first_snapshot(mut r: reqwest::Response) -> Result<reqwest::Response, String> {
    let mut head = Vec::new();
    let mut seen = 0usize;
    loop {
        match r.chunk().await {
            Ok(Some(chunk)) => {
                seen += chunk.len();
                if head.len() < 64 {
                    head.extend_from_slice(&chunk[..chunk.len().min(64)]);
                }
                if chunk.ends_with(b"\n\n") {
                    let text = String::from_utf8_lossy(&head);
                    return if text.contains("event: snapshot") {
                        Ok(r)
                    } else {
                        Err(format!("first event is not a snapshot: {text}"))
                    };
                }
            }
            Ok(None) => return Err(format!("the stream ended after {seen} bytes")),
            Err(e) => return Err(format!("after {seen} bytes: {}", chain(&e))),
        }
    }
}

/// Reads a snapshot body to its end, discarding it: its length, if it ended whole (a `}`).
pub async fn whole_snapshot_body(mut r: reqwest::Response) -> Result<usize, String> {
    let (mut bytes, mut last) = (0usize, 0u8);
    while let Some(chunk) = r
        .chunk()
        .await
        .map_err(|e| format!("after {bytes} bytes: {}", chain(&e)))?
    {
        bytes += chunk.len();
        last = *chunk.last().unwrap_or(&last);
    }
    if last != b'}' {
        return Err(format!("snapshot body ended after {bytes} bytes"));
    }
    Ok(bytes)
}

enum Outcome {
    Served,
    Refused,
    Unfinished,
}

/// Opens [`STREAMS`] watch streams and [`SNAPSHOTS`] snapshot requests of [`LOAD_NS`] on `api`
/// at once, each on its own connection, reading and discarding. Streams stay open until `hold`
/// has passed; everything is dropped by `hold` + 10 s whatever its state.
pub async fn burst(api: &str, hold: Duration) -> Burst {
    let deadline = Instant::now() + hold + Duration::from_secs(10);
    let held_until = Instant::now() + hold;
    let http = match reqwest::Client::builder().pool_max_idle_per_host(0).build() {
        Ok(h) => h,
        Err(_) => return Burst::default(),
    };
    let request = |route: &str| {
        http.get(format!("{api}/v1/namespaces/{LOAD_NS}/{route}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    let mut tasks = Vec::with_capacity(STREAMS + SNAPSHOTS);
    for i in 0..STREAMS + SNAPSHOTS {
        let is_stream = i % 2 == 0;
        let send = request(if is_stream { "watch" } else { "snapshot" });
        tasks.push(tokio::spawn(async move {
            let outcome = tokio::time::timeout_at(deadline, async move {
                let r = match send.await {
                    Ok(r) if r.status() == 429 => return Outcome::Refused,
                    Ok(r) if r.status() == 200 => r,
                    _ => return Outcome::Unfinished,
                };
                if !is_stream {
                    return match whole_snapshot_body(r).await {
                        Ok(_) => Outcome::Served,
                        Err(_) => Outcome::Unfinished,
                    };
                }
                match first_snapshot(r).await {
                    Ok(stream) => {
                        // Hold the stream open through the fault.
                        tokio::time::sleep_until(held_until).await;
                        drop(stream);
                        Outcome::Served
                    }
                    Err(_) => Outcome::Unfinished,
                }
            })
            .await
            .unwrap_or(Outcome::Unfinished);
            (is_stream, outcome)
        }));
    }
    let mut b = Burst::default();
    for t in tasks {
        match t.await {
            Ok((true, Outcome::Served)) => b.streams_snapshotted += 1,
            Ok((false, Outcome::Served)) => b.snapshots_received += 1,
            Ok((_, Outcome::Refused)) => b.refused += 1,
            _ => b.unfinished += 1,
        }
    }
    b
}
