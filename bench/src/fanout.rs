//! Write → watch event latency with many SSE subscribers spread over the nodes, and write →
//! value changed in an SDK instance, in the same run.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flagstaff_client::Client;
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
    /// RSS (KiB) of each node just before the subscribers connected.
    pub rss_before_kib: Vec<Option<u64>>,
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

    /// What the nodes' RSS grew by, per connected stream (KiB), if every node's could be read.
    pub fn rss_per_stream_kib(&self) -> Option<f64> {
        if self.connected == 0 {
            return None;
        }
        let mut grown = 0i64;
        for (after, before) in self.rss_kib.iter().zip(&self.rss_before_kib) {
            grown += (*after)? as i64 - (*before)? as i64;
        }
        Some(grown as f64 / self.connected as f64)
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

/// One watch stream read straight off its socket: the subscribers' side of the bench is a
/// plain HTTP/1.1 reader (request, status line, a chunked body or one that runs to the close),
/// so that it takes as little of the CPU the nodes share as it can.
pub struct RawStream {
    socket: tokio::net::TcpStream,
    /// Bytes read but not yet de-chunked.
    raw: Vec<u8>,
    /// What is left of the chunk being read.
    chunk_left: usize,
    /// The body is chunked (a stream hyper serves); else it runs to the close (a node that
    /// took the connection over).
    chunked: bool,
}

impl RawStream {
    /// Sends `GET path` to `api` (`http://host:port`) and reads the answer's head; anything
    /// but a 200, chunked or to the close, is an error.
    pub async fn open(api: &str, path: &str, token: &str) -> anyhow::Result<RawStream> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = api.strip_prefix("http://").unwrap_or(api);
        let mut socket = tokio::net::TcpStream::connect(host).await?;
        socket.set_nodelay(true)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {token}\r\naccept: text/event-stream\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).await?;
        let mut raw = Vec::with_capacity(4096);
        let head_end = loop {
            if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            anyhow::ensure!(raw.len() < 64 * 1024, "answer head too long");
            if socket.read_buf(&mut raw).await? == 0 {
                anyhow::bail!("closed before the answer's head");
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        anyhow::ensure!(
            head.starts_with("http/1.1 200"),
            "answer: {}",
            head.lines().next().unwrap_or("")
        );
        let chunked = head.contains("transfer-encoding: chunked");
        anyhow::ensure!(
            chunked || head.contains("connection: close"),
            "answer is neither chunked nor delimited by the close"
        );
        raw.drain(..head_end);
        Ok(RawStream {
            socket,
            raw,
            chunk_left: 0,
            chunked,
        })
    }

    /// Reads from the socket and appends the body bytes that arrived to `out`: `false` once
    /// the body ended (last chunk or closed socket).
    pub async fn read_body(&mut self, out: &mut Vec<u8>) -> anyhow::Result<bool> {
        use tokio::io::AsyncReadExt;
        if !self.chunked {
            if self.raw.is_empty() && self.socket.read_buf(&mut self.raw).await? == 0 {
                return Ok(false);
            }
            out.append(&mut self.raw);
            return Ok(true);
        }
        loop {
            match dechunk(&mut self.raw, &mut self.chunk_left, out)? {
                Dechunked::Data => return Ok(true),
                Dechunked::End => return Ok(false),
                Dechunked::NeedMore => {}
            }
            if self.socket.read_buf(&mut self.raw).await? == 0 {
                return Ok(false);
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Dechunked {
    /// Body bytes were appended.
    Data,
    /// The last (empty) chunk was read.
    End,
    /// Nothing complete yet: read more.
    NeedMore,
}

/// Moves the body bytes of HTTP/1.1 chunked encoding from `raw` to `out`, as far as `raw`
/// goes; `left` is what remains of the current chunk (its data, then its CRLF).
fn dechunk(raw: &mut Vec<u8>, left: &mut usize, out: &mut Vec<u8>) -> anyhow::Result<Dechunked> {
    let mut pos = 0;
    let mut moved = false;
    let outcome = loop {
        if *left > 0 {
            // Inside a chunk: its data, then the CRLF that ends it (counted in `left`).
            let take = (*left).min(raw.len() - pos);
            let data = take.min(left.saturating_sub(2));
            out.extend_from_slice(&raw[pos..pos + data]);
            moved |= data > 0;
            pos += take;
            *left -= take;
            if *left > 0 {
                break Dechunked::NeedMore;
            }
            continue;
        }
        let Some(eol) = raw[pos..].windows(2).position(|w| w == b"\r\n") else {
            anyhow::ensure!(raw.len() - pos < 64, "chunk size line too long");
            break Dechunked::NeedMore;
        };
        let line = std::str::from_utf8(&raw[pos..pos + eol])?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            // Left in `raw`, so every later call answers `End` too.
            break Dechunked::End;
        }
        pos += eol + 2;
        *left = size
            .checked_add(2)
            .ok_or_else(|| anyhow::anyhow!("chunk size {line:?} too large"))?;
    };
    raw.drain(..pos);
    Ok(if moved { Dechunked::Data } else { outcome })
}

/// The length of the first complete SSE frame in `buf` (through its blank line), if any.
fn frame_len(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2)
}

/// The `event:` name of one frame.
fn sse_event(frame: &[u8]) -> Option<&[u8]> {
    frame
        .split(|b| *b == b'\n')
        .find_map(|l| l.strip_prefix(b"event: "))
}

/// The flag keys a `change` frame upserted. Only the keys are read (the definitions are
/// skipped unparsed), so that the subscribers' side costs little of the CPU the nodes share.
fn upserted_flags(frame: &[u8]) -> impl Iterator<Item = String> {
    #[derive(serde::Deserialize)]
    struct Change {
        upserted: Upserted,
    }
    #[derive(serde::Deserialize)]
    struct Upserted {
        flags: BTreeMap<String, serde::de::IgnoredAny>,
    }
    let data = frame
        .split(|b| *b == b'\n')
        .find_map(|l| l.strip_prefix(b"data: "));
    data.and_then(|d| serde_json::from_slice::<Change>(d).ok())
        .into_iter()
        .flat_map(|c| c.upserted.flags.into_keys())
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

    let rss_before = machine::rss_of(node_pids);
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
        let api = apis[s % apis.len()].clone();
        let path = format!("/v1/namespaces/{ns}/watch");
        let (ready, gate) = (ready_tx.clone(), gate.clone());
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let mut stream =
                match tokio::time::timeout_at(end, RawStream::open(&api, &path, &token)).await {
                    Ok(Ok(s)) => s,
                    _ => return (Vec::new(), None, Some("refused")),
                };
            let mut permit = Some(permit);
            let mut buf: Vec<u8> = Vec::new();
            // (flag key, arrival) of every change event, kept per stream so that subscribers
            // never contend on a lock while measuring.
            let mut arrivals: Vec<(String, Instant)> = Vec::with_capacity(writes);
            // Why the stream ended before every write arrived, if it did.
            let mut ended = None;
            while arrivals.len() < writes && ended.is_none() {
                match tokio::time::timeout_at(end, stream.read_body(&mut buf)).await {
                    Ok(Ok(true)) => {}
                    Ok(_) => {
                        ended = ended.or(Some("closed by the node"));
                        break;
                    }
                    Err(_) => {
                        ended = Some("bench deadline");
                        break;
                    }
                }
                let mut start = 0;
                while let Some(len) = frame_len(&buf[start..]) {
                    let frame = &buf[start..start + len];
                    start += len;
                    match sse_event(frame) {
                        Some(b"snapshot") => {
                            permit.take();
                            let _ = ready.send(()).await;
                        }
                        Some(b"stale") => ended = Some("stale (node could not prove its bound)"),
                        Some(b"error") => ended = Some("error event"),
                        Some(b"change") => {
                            let now = Instant::now();
                            arrivals.extend(upserted_flags(frame).map(|key| (key, now)));
                        }
                        _ => {}
                    }
                }
                buf.drain(..start);
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
        rss_before_kib: rss_before,
        node_cpu,
        subscriber_cpu,
        ended_early,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_named_and_their_upserted_keys_read() {
        let buf = b"id: 4\nevent: change\ndata: {\"revision\":4,\"upserted\":{\"flags\":{\"w1\":{\"state\":\"ENABLED\"},\"w2\":{}},\"segments\":{}}}\n\nevent: heart";
        let len = frame_len(buf).unwrap_or(0);
        assert_eq!(&buf[len..], b"event: heart", "the partial frame stays");
        let frame = &buf[..len];
        assert_eq!(sse_event(frame), Some(&b"change"[..]));
        assert_eq!(upserted_flags(frame).collect::<Vec<_>>(), ["w1", "w2"]);
        assert_eq!(frame_len(&buf[len..]), None);
        assert_eq!(
            upserted_flags(b"event: change\ndata: {\"upserted\":[]}\n\n").count(),
            0,
            "a malformed change yields no key"
        );
    }

    #[test]
    fn chunked_bodies_are_decoded_across_any_split() {
        let wire = b"5\r\nhello\r\nb;ext=1\r\n, the world\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let (mut raw, mut left, mut out) = (wire[..split].to_vec(), 0, Vec::new());
            let first = dechunk(&mut raw, &mut left, &mut out).unwrap();
            raw.extend_from_slice(&wire[split..]);
            let second = dechunk(&mut raw, &mut left, &mut out).unwrap();
            assert_eq!(out, b"hello, the world", "split at {split}");
            assert!(first != Dechunked::End, "split at {split}");
            let end = if second == Dechunked::End {
                second
            } else {
                dechunk(&mut raw, &mut left, &mut out).unwrap()
            };
            assert_eq!(end, Dechunked::End, "split at {split}");
        }
        let (mut left, mut out) = (0, Vec::new());
        assert!(dechunk(&mut b"zz\r\n".to_vec(), &mut left, &mut out).is_err());
        let huge = format!("{:x}\r\n", usize::MAX);
        assert!(dechunk(&mut huge.into_bytes(), &mut left, &mut out).is_err());
    }
}
