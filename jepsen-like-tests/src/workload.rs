//! Clients that drive the cluster and record what they asked and what they were told.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;

pub use crate::cluster::Endpoint;
use crate::cluster::{endpoints_now, Endpoints, ADMIN_TOKEN};
use crate::history::{Op, Outcome, Record, WatchEvent, F};

pub const REG_NS: &str = "reg";
pub const SET_NS: &str = "set";
/// Unchecked filler writes (see `Scenario::filler`).
pub const FILL_NS: &str = "fill";
/// Bound asked for by bounded readers (the nodes' default maximum is 2000 ms).
pub const BOUNDED_MS: u64 = 1000;

/// Shared by every client: the clock, the records, unique values and process ids.
pub struct Recorder {
    start: Instant,
    records: Mutex<Vec<Record>>,
    next_value: AtomicI64,
    next_process: AtomicU64,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            records: Mutex::new(Vec::new()),
            next_value: AtomicI64::new(1),
            next_process: AtomicU64::new(1000),
        })
    }
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    pub fn push(&self, r: Record) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r);
    }
    pub fn nemesis(&self, action: String) {
        println!("  [{:>6.1}s] {action}", self.now_ns() as f64 / 1e9);
        self.push(Record::Nemesis {
            time_ns: self.now_ns(),
            action,
        });
    }
    pub fn take(&self) -> Vec<Record> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }
    fn value(&self) -> i64 {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }
    /// A fresh process id, for a client whose last operation's outcome is unknown (as Jepsen
    /// does: that process may still be running it).
    fn process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }
}

/// A flag whose value is the register's.
pub fn reg_flag(v: i64) -> Value {
    json!({"state": "ENABLED", "variants": {"v": v}, "defaultVariant": "v"})
}

fn reg_value(definition: &Value) -> Option<i64> {
    definition["variants"]["v"].as_i64()
}

/// A random current member, if any.
fn pick(eps: &Endpoints, rng: &mut StdRng) -> Option<Endpoint> {
    let now = endpoints_now(eps);
    if now.is_empty() {
        return None;
    }
    Some(now[rng.gen_range(0..now.len())].clone())
}

fn blank(process: u64, node: u64, f: F, key: &str, invoke_ns: u64) -> Op {
    Op {
        process,
        node,
        f,
        key: key.to_string(),
        value: None,
        expect_version: None,
        version: None,
        max_staleness_ms: None,
        invoke_ns,
        complete_ns: None,
        outcome: Outcome::Info,
        revision: None,
        staleness_ms: None,
        error: None,
    }
}

fn header_u64(h: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

/// Sends one write (`expect`: CAS version) and classifies the answer.
#[allow(clippy::too_many_arguments)]
async fn put(
    http: &reqwest::Client,
    ep: &Endpoint,
    ns: &str,
    key: &str,
    body: &Value,
    expect: Option<u64>,
    idem: &str,
    op: &mut Op,
) {
    let mut req = http
        .put(format!("{}/v1/namespaces/{ns}/flags/{key}", ep.api))
        .bearer_auth(ADMIN_TOKEN)
        .header("Idempotency-Key", idem)
        .timeout(Duration::from_secs(7))
        .json(body);
    if let Some(v) = expect {
        req = req.header("If-Match", format!("\"{v}\""));
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let b: Value = resp.json().await.unwrap_or(Value::Null);
            match status {
                200 | 201 => {
                    op.outcome = Outcome::Ok;
                    op.revision = b["revision"].as_u64();
                }
                412 => {
                    op.outcome = Outcome::Fail;
                    op.version = b["error"]["current_version"].as_u64();
                }
                503 if b["error"]["code"] == "NO_LEADER" => op.outcome = Outcome::Fail,
                400..=499 => {
                    op.outcome = Outcome::Fail;
                    op.error = Some(format!("{status} {b}"));
                }
                _ => {
                    op.outcome = Outcome::Info;
                    op.error = Some(format!("{status} {}", b["error"]["code"]));
                }
            }
        }
        // Refused before anything was sent: it certainly did not happen.
        Err(e) if e.is_connect() => {
            op.outcome = Outcome::Fail;
            op.error = Some("connect".into());
        }
        Err(e) => {
            op.outcome = Outcome::Info;
            op.error = Some(if e.is_timeout() {
                "timeout".into()
            } else {
                e.to_string()
            });
        }
    }
}

/// One read of a register; `bounded`: `Some(max_staleness_ms)`.
async fn get(
    http: &reqwest::Client,
    ep: &Endpoint,
    key: &str,
    bounded: Option<u64>,
    min_revision: Option<u64>,
    op: &mut Op,
) {
    let mut url = format!("{}/v1/namespaces/{REG_NS}/flags/{key}?", ep.api);
    match bounded {
        Some(ms) => url.push_str(&format!("consistency=bounded&max_staleness_ms={ms}")),
        None => url.push_str("consistency=linearizable"),
    }
    if let Some(r) = min_revision {
        url.push_str(&format!("&min_revision={r}"));
    }
    let resp = http
        .get(url)
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match resp {
        Ok(resp) if resp.status().as_u16() == 200 => {
            let h = resp.headers().clone();
            let b: Value = resp.json().await.unwrap_or(Value::Null);
            op.outcome = Outcome::Ok;
            op.value = reg_value(&b["definition"]);
            op.version = b["version"].as_u64();
            op.revision = header_u64(&h, "flagstaff-revision");
            op.staleness_ms = header_u64(&h, "flagstaff-staleness-ms");
        }
        Ok(resp) => {
            op.outcome = Outcome::Fail;
            op.error = Some(resp.status().as_u16().to_string());
        }
        Err(e) => {
            op.outcome = Outcome::Fail;
            op.error = Some(if e.is_timeout() {
                "timeout".into()
            } else {
                "transport".into()
            });
        }
    }
}

/// Register client: writes, CAS and linearizable reads on random keys through random nodes.
pub async fn register_client(
    rec: Arc<Recorder>,
    http: reqwest::Client,
    eps: Endpoints,
    keys: Vec<String>,
    seed: u64,
    until: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = rec.process();
    let mut known: Vec<Option<u64>> = vec![None; keys.len()];
    let mut n = 0u32;
    while Instant::now() < until && n < 100_000 {
        n += 1;
        let k = rng.gen_range(0..keys.len());
        let key = &keys[k];
        let Some(ep) = pick(&eps, &mut rng) else {
            break;
        };
        let ep = &ep;
        let roll: f64 = rng.gen();
        let f = if roll < 0.4 || (roll >= 0.7 && known[k].is_none()) {
            F::Read
        } else if roll < 0.7 {
            F::Write
        } else {
            F::Cas
        };
        let mut op = blank(process, ep.id, f, key, rec.now_ns());
        match f {
            F::Read => {
                get(&http, ep, key, None, None, &mut op).await;
                if op.outcome == Outcome::Ok {
                    known[k] = op.version;
                }
            }
            _ => {
                let v = rec.value();
                op.value = Some(v);
                let expect = if f == F::Cas { known[k] } else { None };
                op.expect_version = expect;
                let idem = format!("w-{v}");
                put(&http, ep, REG_NS, key, &reg_flag(v), expect, &idem, &mut op).await;
                match op.outcome {
                    Outcome::Ok => known[k] = op.revision,
                    Outcome::Fail if op.version.is_some() => known[k] = op.version,
                    _ => {}
                }
            }
        }
        if op.outcome != Outcome::Info {
            op.complete_ns = Some(rec.now_ns());
        }
        let info = op.outcome == Outcome::Info;
        rec.push(Record::Op(op));
        if info {
            process = rec.process();
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..25))).await;
    }
}

/// Bounded reads of random keys on random nodes.
pub async fn bounded_client(
    rec: Arc<Recorder>,
    http: reqwest::Client,
    eps: Endpoints,
    keys: Vec<String>,
    seed: u64,
    until: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let process = rec.process();
    let mut n = 0u32;
    while Instant::now() < until && n < 100_000 {
        n += 1;
        let key = &keys[rng.gen_range(0..keys.len())];
        let Some(ep) = pick(&eps, &mut rng) else {
            break;
        };
        let ep = &ep;
        let mut op = blank(process, ep.id, F::BoundedRead, key, rec.now_ns());
        op.max_staleness_ms = Some(BOUNDED_MS);
        get(&http, ep, key, Some(BOUNDED_MS), None, &mut op).await;
        op.complete_ns = Some(rec.now_ns());
        rec.push(Record::Op(op));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..25))).await;
    }
}

/// Set workload: adds fresh elements, retrying an unknown outcome with the same idempotency
/// key (so a retry must not apply twice).
pub async fn set_client(
    rec: Arc<Recorder>,
    http: reqwest::Client,
    eps: Endpoints,
    seed: u64,
    until: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = rec.process();
    let mut n = 0u32;
    while Instant::now() < until && n < 100_000 {
        n += 1;
        let v = rec.value();
        let key = format!("e-{v}");
        let Some(ep0) = pick(&eps, &mut rng) else {
            break;
        };
        let ep0 = &ep0;
        let mut op = blank(process, ep0.id, F::Add, &key, rec.now_ns());
        let mut maybe = false;
        for attempt in 0..3 {
            let other = if attempt == 0 {
                None
            } else {
                pick(&eps, &mut rng)
            };
            let ep = other.as_ref().unwrap_or(ep0);
            let mut a = blank(process, ep.id, F::Add, &key, 0);
            put(
                &http,
                ep,
                SET_NS,
                &key,
                &reg_flag(v),
                None,
                &format!("add-{v}"),
                &mut a,
            )
            .await;
            match a.outcome {
                Outcome::Ok => {
                    op.outcome = Outcome::Ok;
                    op.revision = a.revision;
                    break;
                }
                Outcome::Info => maybe = true,
                Outcome::Fail => {}
            }
            op.outcome = if maybe { Outcome::Info } else { Outcome::Fail };
            op.error = a.error;
            if Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if op.outcome != Outcome::Info {
            op.complete_ns = Some(rec.now_ns());
        }
        let info = op.outcome == Outcome::Info;
        rec.push(Record::Op(op));
        if info {
            process = rec.process();
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..40))).await;
    }
}

/// Filler: writes to namespace `fill` through the nodes in turn with a 300 ms timeout, not
/// recorded (they only add log entries; the checkers see their revisions through the others).
/// A node that failed is skipped for a second, so a cut-off node does not hold the filler.
pub async fn filler_client(http: reqwest::Client, eps: Endpoints, p: u64, until: Instant) {
    let mut skip: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    let mut n = 0u64;
    while Instant::now() < until && n < 100_000 {
        n += 1;
        let now = endpoints_now(&eps);
        let usable: Vec<&Endpoint> = now
            .iter()
            .filter(|e| skip.get(&e.id).is_none_or(|t| Instant::now() >= *t))
            .collect();
        let Some(ep) = usable
            .get((n as usize + p as usize) % usable.len().max(1))
            .copied()
            .or(now.first())
        else {
            break;
        };
        let ok = http
            .put(format!(
                "{}/v1/namespaces/{FILL_NS}/flags/f{p}-{}",
                ep.api,
                n % 20
            ))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_millis(300))
            .json(&reg_flag(n as i64))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !ok {
            skip.insert(ep.id, Instant::now() + Duration::from_secs(1));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Parsed server-sent event.
struct Sse {
    event: String,
    id: Option<u64>,
    data: Value,
}

/// Takes complete events (ending in a blank line) off the front of `buf`.
fn drain_events(buf: &mut String) -> Vec<Sse> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let frame: String = buf.drain(..end + 2).collect();
        let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
        for line in frame.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        out.push(Sse {
            event,
            id,
            data: serde_json::from_str(&data).unwrap_or(Value::Null),
        });
    }
    out
}

/// Follows one node's watch stream of the register namespace until `until` (plus `grace` to
/// catch up), reconnecting with `Last-Event-ID` whenever the stream ends or goes quiet.
pub async fn watcher(
    rec: Arc<Recorder>,
    http: reqwest::Client,
    ep: Endpoint,
    watcher: u64,
    max_staleness_ms: Option<u64>,
    until: Instant,
) {
    let mut last_id: Option<u64> = None;
    let ev = |event: &str| WatchEvent {
        watcher,
        node: ep.id,
        event: event.to_string(),
        time_ns: rec.now_ns(),
        revision: None,
        prev_revision: None,
        since: None,
        values: vec![],
    };
    let mut attempts = 0u32;
    while Instant::now() < until && attempts < 10_000 {
        attempts += 1;
        let query = max_staleness_ms
            .map(|ms| format!("?max_staleness_ms={ms}"))
            .unwrap_or_default();
        let mut req = http
            .get(format!("{}/v1/namespaces/{REG_NS}/watch{query}", ep.api))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(until.saturating_duration_since(Instant::now()) + Duration::from_secs(1));
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = match tokio::time::timeout(Duration::from_secs(3), req.send()).await {
            Ok(Ok(r)) if r.status().is_success() => r,
            _ => {
                rec.push(Record::Watch(ev("refused")));
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        rec.push(Record::Watch(WatchEvent {
            since: last_id,
            ..ev("connect")
        }));
        let mut resp = resp;
        let mut buf = String::new();
        loop {
            // Heartbeats come at least every second; silence for 3 s means a dead stream.
            let chunk = match tokio::time::timeout(Duration::from_secs(3), resp.chunk()).await {
                Ok(Ok(Some(c))) => c,
                _ => break,
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            for e in drain_events(&mut buf) {
                let mut w = ev(&e.event);
                match e.event.as_str() {
                    "snapshot" => w.revision = e.data["revision"].as_u64().or(e.id),
                    "change" => {
                        w.revision = e.data["revision"].as_u64().or(e.id);
                        w.prev_revision = e.data["prev_revision"].as_u64();
                        if let Some(flags) = e.data["upserted"]["flags"].as_object() {
                            w.values = flags
                                .iter()
                                .filter_map(|(k, d)| Some((k.clone(), reg_value(d)?)))
                                .collect();
                        }
                    }
                    "heartbeat" | "stale" => w.revision = e.data["revision"].as_u64(),
                    _ => {}
                }
                if e.id.is_some() {
                    last_id = e.id;
                }
                rec.push(Record::Watch(w));
            }
            if Instant::now() >= until {
                break;
            }
        }
        rec.push(Record::Watch(ev("closed")));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
