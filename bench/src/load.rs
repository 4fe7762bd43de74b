//! The one load generator both systems are driven by: `concurrency` workers over one
//! HTTP/1.1 keep-alive client, each sending its next request as soon as the previous one is
//! answered (closed loop), until a request count or a deadline is reached, whichever first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request for worker `w`, sequence number `n` (unique across workers).
pub type MakeRequest = Arc<dyn Fn(usize, u64) -> reqwest::RequestBuilder + Send + Sync>;

/// What one load run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub concurrency: usize,
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency of every successful request.
    pub latencies: Vec<Duration>,
    /// First error seen, for the report.
    pub first_error: Option<String>,
}

impl LoadResult {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn summary(&self) -> crate::stats::Summary {
        crate::stats::Summary::of(&self.latencies)
    }
}

/// An HTTP/1.1 client with a connection per worker kept alive.
pub fn http_client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(concurrency.max(1))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// Runs `concurrency` closed-loop workers until `max_requests` were sent or `max_time`
/// passed. A 2xx answer counts as success; anything else (status, transport error, timeout)
/// as an error. `progress` is called about every 10 s with the requests done so far.
pub async fn run(
    concurrency: usize,
    max_requests: u64,
    max_time: Duration,
    make: MakeRequest,
    progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
) -> LoadResult {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + max_time;
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let (next, done, make) = (next.clone(), done.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= max_requests || Instant::now() >= deadline {
                    break;
                }
                let t0 = Instant::now();
                let outcome = match make(w, n).send().await {
                    Ok(r) if r.status().is_success() => {
                        r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        Err(format!(
                            "{status}: {}",
                            body.chars().take(200).collect::<String>()
                        ))
                    }
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(()) => {
                        ok += 1;
                        lat.push(t0.elapsed());
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (lat, ok, errors, first_error)
        }));
    }
    let ticker = progress.map(|p| {
        let done = done.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                p(done.load(Ordering::Relaxed));
            }
        })
    });
    let mut out = LoadResult {
        concurrency,
        ..LoadResult::default()
    };
    for t in tasks {
        if let Ok((lat, ok, errors, first_error)) = t.await {
            out.latencies.extend(lat);
            out.ok += ok;
            out.errors += errors;
            if out.first_error.is_none() {
                out.first_error = first_error;
            }
        }
    }
    out.elapsed = start.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    out
}

/// The flag definition every benchmark write puts (80 bytes of JSON; etcd stores the same text).
pub const FLAG_BODY: &str =
    r#"{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on"}"#;

/// Writes of [`FLAG_BODY`] to flags `k0…k{keys-1}` of namespace `ns` through `api`, round robin.
pub fn flagstaff_writes(client: &reqwest::Client, api: &str, ns: &str, keys: u64) -> MakeRequest {
    let client = client.clone();
    let urls: Vec<String> = (0..keys)
        .map(|k| format!("{api}/v1/namespaces/{ns}/flags/k{k}"))
        .collect();
    Arc::new(move |_, n| {
        client
            .put(&urls[(n % keys) as usize])
            .bearer_auth(jepsen_like_tests::cluster::ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(FLAG_BODY)
    })
}

/// The same writes to etcd through its HTTP/JSON gateway at `url`: [`FLAG_BODY`] as the value
/// of keys `bench/k0…`, round robin.
pub fn etcd_writes(client: &reqwest::Client, url: &str, keys: u64) -> MakeRequest {
    let client = client.clone();
    let put = format!("{url}/v3/kv/put");
    let value = crate::etcd::b64(FLAG_BODY.as_bytes());
    let bodies: Vec<String> = (0..keys)
        .map(|k| {
            serde_json::json!({"key": crate::etcd::b64(format!("bench/k{k}").as_bytes()), "value": value})
                .to_string()
        })
        .collect();
    Arc::new(move |_, n| {
        client
            .post(&put)
            .header("content-type", "application/json")
            .body(bodies[(n % keys) as usize].clone())
    })
}
