//! The side-by-side report: a 3-node Flagstaff cluster and a 3-node etcd cluster of real
//! processes on loopback, fsync on for both, driven by the same load generator; failover by
//! `kill -9`; watch fan-out; evaluation (criterion estimates of `benches/peers.rs`); memory and
//! recovery. Writes `OUT_DIR/DATE.md` and its SVG plots. Run through `bench/run.sh`, which
//! installs etcd, builds in release and runs the evaluation benches first (see README.md).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use flagstaff_bench::etcd::{b64, EtcdCluster};
use flagstaff_bench::fanout::{self, Fanout};
use flagstaff_bench::load::{self, etcd_writes, LoadResult, MakeRequest, FLAG_BODY};
use flagstaff_bench::machine;
use flagstaff_bench::plot::{self, Series};
use flagstaff_bench::stats::{ms, ratio, us, Summary};
use flagstaff_bench::{cluster_status, max_term, node_apis, node_pids, SideBySide};
use jepsen_like_tests::cluster::{Cluster, ADMIN_TOKEN};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// A short smoke run (seconds per level, few subscribers, 20,000 recovery writes).
    #[arg(long)]
    quick: bool,
    /// The release `flagstaff` binary.
    #[arg(long)]
    flagstaff_bin: PathBuf,
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    #[arg(long, default_value = "etcdctl")]
    etcdctl_bin: PathBuf,
    /// Where the report and its plots go.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// The report's date (YYYY-MM-DD), also its file name.
    #[arg(long)]
    date: String,
    /// The command line that produced the report, quoted in it.
    #[arg(long, default_value = "bash bench/run.sh")]
    command: String,
    /// criterion's output directory holding the `peer_*` groups.
    #[arg(long)]
    criterion_dir: Option<PathBuf>,
}

struct Plan {
    levels: Vec<usize>,
    write_time: Duration,
    read_levels: Vec<usize>,
    read_time: Duration,
    failover_rounds: usize,
    subscribers: Vec<usize>,
    fanout_writes: usize,
    fanout_gap: Duration,
    bulk_flags: u64,
    recovery_writes: u64,
    recovery_time: Duration,
    check_perf: bool,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                levels: vec![1, 16, 64, 256],
                write_time: Duration::from_secs(2),
                read_levels: vec![1, 64],
                read_time: Duration::from_secs(2),
                failover_rounds: 1,
                subscribers: vec![100, 500],
                fanout_writes: 10,
                fanout_gap: Duration::from_millis(50),
                bulk_flags: 1_000,
                recovery_writes: 20_000,
                recovery_time: Duration::from_secs(60),
                check_perf: false,
            }
        } else {
            Plan {
                levels: vec![1, 16, 64, 256],
                write_time: Duration::from_secs(8),
                read_levels: vec![1, 64],
                read_time: Duration::from_secs(6),
                failover_rounds: 5,
                subscribers: vec![1_000, 5_000, 10_000],
                fanout_writes: 30,
                fanout_gap: Duration::from_millis(100),
                bulk_flags: 10_000,
                recovery_writes: 1_000_000,
                recovery_time: Duration::from_secs(420),
                check_perf: true,
            }
        }
    }
}

/// A progress line per phase on stderr, with the load average, kept for the report.
struct Progress {
    t0: Instant,
    phases: Vec<(String, f64, String)>,
}

impl Progress {
    fn phase(&mut self, name: &str) {
        let la = machine::load_average();
        let t = self.t0.elapsed().as_secs_f64();
        eprintln!("== [{t:>6.0}s] {name} (load average {la})");
        self.phases.push((name.to_string(), t, la));
    }

    fn note(&self, line: &str) {
        eprintln!("   [{:>6.0}s] {line}", self.t0.elapsed().as_secs_f64());
    }
}

const KEYS: u64 = 1000;
const CATCH_UP_LIMIT: Duration = Duration::from_secs(300);

fn fs_read(client: &reqwest::Client, api: &str, consistency: &str) -> MakeRequest {
    let client = client.clone();
    let urls: Vec<String> = (0..KEYS)
        .map(|k| format!("{api}/v1/namespaces/bench/flags/k{k}?consistency={consistency}"))
        .collect();
    Arc::new(move |_, n| {
        client
            .get(&urls[(n % KEYS) as usize])
            .bearer_auth(ADMIN_TOKEN)
    })
}

fn etcd_read(client: &reqwest::Client, url: &str, serializable: bool) -> MakeRequest {
    let client = client.clone();
    let range = format!("{url}/v3/kv/range");
    let bodies: Vec<String> = (0..KEYS)
        .map(|k| {
            let mut b = json!({"key": b64(format!("bench/k{k}").as_bytes())});
            if serializable {
                b["serializable"] = json!(true);
            }
            b.to_string()
        })
        .collect();
    Arc::new(move |_, n| {
        client
            .post(&range)
            .header("content-type", "application/json")
            .body(bodies[(n % KEYS) as usize].clone())
    })
}

async fn fs_leader(fs: &Cluster) -> anyhow::Result<u64> {
    fs.wait_leader(&fs.ids(), Duration::from_secs(30)).await
}

async fn fs_namespace(fs: &Cluster, id: u64, ns: &str) -> anyhow::Result<()> {
    let (s, b) = fs
        .call(
            id,
            reqwest::Method::PUT,
            &format!("/v1/namespaces/{ns}"),
            Some(json!({})),
        )
        .await?;
    anyhow::ensure!(s == 200, "create namespace {ns}: {s} {b}");
    Ok(())
}

fn mib(kib: &[Option<u64>]) -> String {
    kib.iter()
        .map(|k| k.map_or("?".to_string(), |k| format!("{:.0}", k as f64 / 1024.0)))
        .collect::<Vec<_>>()
        .join(" / ")
}

// ---------------------------------------------------------------------------------------
// Failover

/// Acknowledged writes (sent, done) and failed attempts (time) of a steady write load.
#[derive(Default)]
struct Failures {
    acks: Vec<(Instant, Instant)>,
    errors: Vec<Instant>,
}

type MakeAt = Arc<dyn Fn(&str, u64) -> reqwest::RequestBuilder + Send + Sync>;

/// `workers` closed-loop writers; each stays on one endpoint until a request fails (error
/// status, transport error or 2 s timeout), then moves to the next, as a client library
/// does. Bounded by `stop`, a 120 s limit and 2,000,000 requests.
fn steady_writers(
    urls: Vec<String>,
    make: MakeAt,
    workers: usize,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Failures>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let seq = Arc::new(AtomicU64::new(0));
    let limit = Instant::now() + Duration::from_secs(120);
    (0..workers)
        .map(|w| {
            let (urls, make, stop, out, seq) = (
                urls.clone(),
                make.clone(),
                stop.clone(),
                out.clone(),
                seq.clone(),
            );
            tokio::spawn(async move {
                let mut at = w % urls.len();
                while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    if n >= 2_000_000 {
                        break;
                    }
                    let sent = Instant::now();
                    let ok = match make(&urls[at], n)
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await
                    {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    let done = Instant::now();
                    {
                        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                        if ok {
                            o.acks.push((sent, done));
                        } else {
                            o.errors.push(done);
                        }
                    }
                    if !ok {
                        at = (at + 1) % urls.len();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect()
}

/// One kill: the window from the kill to the first acknowledgement of a write sent after
/// it, and the failed attempts within that window.
#[derive(Clone, Copy, Debug)]
struct Window {
    window: Option<Duration>,
    errors: usize,
}

async fn wait_acks(out: &Mutex<Failures>, after: Instant, n: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let count = out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acks
            .iter()
            .filter(|(s, _)| *s >= after)
            .count();
        if count >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

fn window_of(out: &Failures, killed: Instant) -> Window {
    let first = out
        .acks
        .iter()
        .filter(|(s, _)| *s >= killed)
        .map(|(_, d)| *d)
        .min();
    let window = first.map(|f| f.duration_since(killed));
    let end = first.unwrap_or_else(Instant::now);
    let errors = out
        .errors
        .iter()
        .filter(|t| **t >= killed && **t <= end)
        .count();
    Window { window, errors }
}

/// Runs a steady load on `urls`, waits for it to be acknowledged, calls `kill`, and measures.
async fn failover_round<K, F>(urls: Vec<String>, make: MakeAt, kill: K) -> anyhow::Result<Window>
where
    K: FnOnce() -> F,
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let out: Arc<Mutex<Failures>> = Arc::default();
    let tasks = steady_writers(urls, make, 8, stop.clone(), out.clone());
    let start = Instant::now();
    let steady = wait_acks(&out, start, 200, Duration::from_secs(20)).await;
    let result = if steady {
        let killed = Instant::now();
        kill().await?;
        wait_acks(&out, killed, 1, Duration::from_secs(30)).await;
        // A little more load after the first success, to see errors that trail it.
        let after = Instant::now();
        wait_acks(&out, after, 200, Duration::from_secs(5)).await;
        Ok(window_of(
            &out.lock().unwrap_or_else(|p| p.into_inner()),
            killed,
        ))
    } else {
        Err(anyhow::anyhow!(
            "the steady load was not acknowledged before the kill"
        ))
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    result
}

#[derive(Default)]
struct SdkCount {
    evaluations: u64,
    errors: u64,
    wrong: u64,
    stale: u64,
}

// ---------------------------------------------------------------------------------------
// Evaluation (criterion estimates)

fn criterion_ns(dir: &Path, group: &str, id: &str) -> Option<f64> {
    let p = dir.join(group).join(id).join("new").join("estimates.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn fmt_ns(ns: Option<f64>) -> String {
    match ns {
        Some(n) if n >= 10_000.0 => format!("{:.1} µs", n / 1e3),
        Some(n) => format!("{n:.1} ns"),
        None => "n/a".into(),
    }
}

// ---------------------------------------------------------------------------------------

struct WriteRow {
    c: usize,
    fs: LoadResult,
    etcd: LoadResult,
    terms: Terms,
}

/// Raft terms before and after a phase, of both systems: a change is a leader election.
#[derive(Clone, Copy)]
struct Terms {
    fs: (Option<u64>, Option<u64>),
    etcd: (Option<u64>, Option<u64>),
}

impl Terms {
    async fn before(fs: &Cluster, et: &EtcdCluster) -> Terms {
        Terms {
            fs: (max_term(fs).await, None),
            etcd: (et.term().await, None),
        }
    }

    async fn after(mut self, fs: &Cluster, et: &EtcdCluster) -> Terms {
        self.fs.1 = max_term(fs).await;
        self.etcd.1 = et.term().await;
        self
    }

    fn fs_held(&self) -> bool {
        self.fs.0.is_some() && self.fs.0 == self.fs.1
    }

    /// `F before → after / etcd before → after`.
    fn cell(&self) -> String {
        let t = |t: Option<u64>| t.map_or("?".to_string(), |t| t.to_string());
        format!(
            "{} → {} / {} → {}",
            t(self.fs.0),
            t(self.fs.1),
            t(self.etcd.0),
            t(self.etcd.1)
        )
    }
}

/// One progress line for a Flagstaff run and the etcd run beside it.
fn side_by_side(f: &LoadResult, e: &LoadResult) -> String {
    format!(
        "flagstaff {:.0}/s p99 {} ms ({} errors); etcd {:.0}/s p99 {} ms ({} errors)",
        f.throughput(),
        ms(f.summary().p99),
        f.errors,
        e.throughput(),
        ms(e.summary().p99),
        e.errors
    )
}

fn latency_cells(r: &LoadResult) -> String {
    let s = r.summary();
    format!("{} / {} / {}", ms(s.p50), ms(s.p99), ms(s.p999))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plan = Plan::new(args.quick);
    let mut p = Progress {
        t0: Instant::now(),
        phases: Vec::new(),
    };
    std::fs::create_dir_all(&args.out_dir)?;
    let work = tempfile::Builder::new()
        .prefix("flagstaff-bench.")
        .tempdir()?;
    p.phase("machine facts");
    let facts = machine::facts(work.path());
    let fsync = Summary::of(&machine::fsync_probe(work.path(), 200)?);
    let load_start = machine::load_average();

    p.phase("start a 3-node Flagstaff cluster and a 3-node etcd cluster");
    let SideBySide {
        mut fs,
        mut et,
        fs_leader: leader,
        et_leader,
    } = SideBySide::start(&args.flagstaff_bin, &args.etcd_bin, work.path()).await?;
    let fs_leader_api = fs.node(leader).api.clone();
    let fs_follower = fs
        .ids()
        .into_iter()
        .find(|i| *i != leader)
        .unwrap_or(leader);
    let fs_follower_api = fs.node(fs_follower).api.clone();
    let et_urls = et.urls();
    let et_follower = (et_leader + 1) % 3;

    // 1. Writes at each concurrency, the two systems back to back at each level.
    p.phase("writes: warm-up");
    let fs_http = load::http_client(256)?;
    let et_http = load::http_client(256)?;
    let warm = Duration::from_secs(if args.quick { 1 } else { 2 });
    load::run(
        16,
        2_000,
        warm,
        load::flagstaff_writes(&fs_http, &fs_leader_api, "bench", KEYS),
        None,
    )
    .await;
    load::run(
        16,
        2_000,
        warm,
        etcd_writes(&et_http, &et_urls[et_leader], KEYS),
        None,
    )
    .await;
    let mut writes = Vec::new();
    for (li, &c) in plan.levels.iter().enumerate() {
        p.phase(&format!("writes at concurrency {c}"));
        let fs_run = || {
            load::run(
                c,
                10_000_000,
                plan.write_time,
                load::flagstaff_writes(&fs_http, &fs_leader_api, "bench", KEYS),
                None,
            )
        };
        let et_run = || {
            load::run(
                c,
                10_000_000,
                plan.write_time,
                etcd_writes(&et_http, &et_urls[et_leader], KEYS),
                None,
            )
        };
        let terms = Terms::before(&fs, &et).await;
        // Alternate which goes first, so a drift in background load does not favour one.
        let (f, e) = if li % 2 == 0 {
            let f = fs_run().await;
            (f, et_run().await)
        } else {
            let e = et_run().await;
            (fs_run().await, e)
        };
        let terms = terms.after(&fs, &et).await;
        p.note(&format!("{}; terms {}", side_by_side(&f, &e), terms.cell()));
        writes.push(WriteRow {
            c,
            fs: f,
            etcd: e,
            terms,
        });
    }

    // Reads from a follower.
    let mut reads: Vec<(String, usize, LoadResult, LoadResult, Terms)> = Vec::new();
    for &c in &plan.read_levels {
        for (what, fs_c, et_s) in [
            ("linearizable", "linearizable", false),
            (
                "bounded (Flagstaff) vs serializable (etcd)",
                "bounded",
                true,
            ),
        ] {
            p.phase(&format!("follower reads, {what}, concurrency {c}"));
            let terms = Terms::before(&fs, &et).await;
            let f = load::run(
                c,
                10_000_000,
                plan.read_time,
                fs_read(&fs_http, &fs_follower_api, fs_c),
                None,
            )
            .await;
            let e = load::run(
                c,
                10_000_000,
                plan.read_time,
                etcd_read(&et_http, &et_urls[et_follower], et_s),
                None,
            )
            .await;
            let terms = terms.after(&fs, &et).await;
            p.note(&format!("{}; terms {}", side_by_side(&f, &e), terms.cell()));
            reads.push((what.to_string(), c, f, e, terms));
        }
    }
    let fs_pids = node_pids(&fs);
    let et_pids: Vec<Option<i32>> = (0..3).map(|i| et.pid(i)).collect();
    let rss_after_writes = (machine::rss_of(&fs_pids), machine::rss_of(&et_pids));

    // etcd's own gRPC client, for the gateway's overhead.
    let mut check_perf = String::new();
    if plan.check_perf {
        p.phase("etcdctl check perf --load=s (etcd's native gRPC path, 60 s)");
        let out = tokio::time::timeout(
            Duration::from_secs(150),
            tokio::process::Command::new(&args.etcdctl_bin)
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &et_urls.join(","),
                    "check",
                    "perf",
                    "--load=s",
                ])
                .kill_on_drop(true)
                .output(),
        )
        .await;
        check_perf = match out {
            Ok(Ok(o)) => String::from_utf8_lossy(&o.stdout)
                .split(['\n', '\r'])
                .filter(|l| {
                    l.starts_with("PASS")
                        || l.starts_with("FAIL")
                        || l.contains("took")
                        || l.contains("Throughput")
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Ok(Err(e)) => format!("etcdctl could not run: {e}"),
            Err(_) => "etcdctl check perf did not finish within 150 s".into(),
        };
        p.note(&check_perf.replace('\n', "; "));
    }

    // 2. Failover: kill -9 of the leader under a steady write load; an SDK evaluates meanwhile.
    p.phase("failover: SDK evaluating in a loop while leaders are killed");
    let sdk_stop = Arc::new(AtomicBool::new(false));
    let sdk_count: Arc<Mutex<SdkCount>> = Arc::default();
    let fs_apis = node_apis(&fs);
    let sdk = flagstaff_client::Client::builder("bench", ADMIN_TOKEN)
        .endpoints(fs_apis.clone())
        .build()?;
    sdk.wait_ready(Duration::from_secs(20))
        .await
        .map_err(|s| anyhow::anyhow!("SDK not ready: {s}"))?;
    let sdk_task = {
        let (stop, count, sdk) = (sdk_stop.clone(), sdk_count.clone(), sdk.clone());
        tokio::spawn(async move {
            let ctx = flagstaff_client::context().with_targeting_key("bench");
            let limit = Instant::now() + Duration::from_secs(1200);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < limit && n < 5_000_000 {
                n += 1;
                let d = sdk.bool_details("k0", &ctx, false);
                {
                    let mut c = count.lock().unwrap_or_else(|p| p.into_inner());
                    c.evaluations += 1;
                    c.errors += u64::from(d.error.is_some());
                    c.wrong += u64::from(!d.value);
                    c.stale += u64::from(d.stale);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let fs_make: MakeAt = {
        let c = fs_http.clone();
        Arc::new(move |api: &str, n| {
            c.put(format!("{api}/v1/namespaces/bench/flags/k{}", n % KEYS))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(FLAG_BODY)
        })
    };
    let et_make: MakeAt = {
        let c = et_http.clone();
        let value = b64(FLAG_BODY.as_bytes());
        Arc::new(move |url: &str, n| {
            c.post(format!("{url}/v3/kv/put"))
                .header("content-type", "application/json")
                .body(
                    json!({"key": b64(format!("bench/k{}", n % KEYS).as_bytes()), "value": value})
                        .to_string(),
                )
        })
    };
    let mut fs_windows = Vec::new();
    let mut et_windows = Vec::new();
    for round in 1..=plan.failover_rounds {
        p.phase(&format!(
            "failover round {round}/{}: kill -9 the Flagstaff leader",
            plan.failover_rounds
        ));
        let victim = fs_leader(&fs).await?;
        let fs_ref = &mut fs;
        let w = failover_round(fs_apis.clone(), fs_make.clone(), move || async move {
            fs_ref.kill(victim).await;
            Ok(())
        })
        .await;
        p.note(&format!(
            "flagstaff window {:?}",
            w.as_ref().map(|w| w.window)
        ));
        fs_windows.push(w);
        fs.restart(victim).await?;
        fs_leader(&fs).await?;

        p.phase(&format!(
            "failover round {round}/{}: kill -9 the etcd leader",
            plan.failover_rounds
        ));
        let victim = et.wait_leader(Duration::from_secs(30)).await?;
        let et_ref = &mut et;
        let w = failover_round(et_urls.clone(), et_make.clone(), move || async move {
            et_ref.kill(victim).await;
            Ok(())
        })
        .await;
        p.note(&format!("etcd window {:?}", w.as_ref().map(|w| w.window)));
        et_windows.push(w);
        et.restart(victim).await?;
        et.wait_leader(Duration::from_secs(30)).await?;
    }
    sdk_stop.store(true, Ordering::Relaxed);
    let _ = sdk_task.await;
    sdk.close();
    let sdk_result = std::mem::take(&mut *sdk_count.lock().unwrap_or_else(|p| p.into_inner()));
    et.stop().await;

    // 3 and 5a. Propagation, with the bulk flags in place for the memory figures.
    let leader = fs_leader(&fs).await?;
    let leader_api = fs.node(leader).api.clone();
    p.phase(&format!(
        "memory: {} flags in namespace bulk",
        plan.bulk_flags
    ));
    fs_namespace(&fs, leader, "bulk").await?;
    let rss_before_bulk = machine::rss_of(&node_pids(&fs));
    let bulk = load::run(
        64,
        plan.bulk_flags,
        Duration::from_secs(300),
        load::flagstaff_writes(&fs_http, &leader_api, "bulk", plan.bulk_flags),
        None,
    )
    .await;
    anyhow::ensure!(
        bulk.errors == 0 && bulk.ok == plan.bulk_flags,
        "bulk flags: {} ok, {} errors ({:?})",
        bulk.ok,
        bulk.errors,
        bulk.first_error
    );
    let rss_bulk = machine::rss_of(&node_pids(&fs));
    let mut fanouts: Vec<Fanout> = Vec::new();
    for &s in &plan.subscribers {
        p.phase(&format!(
            "propagation: {s} watch subscribers over 3 nodes, {} writes",
            plan.fanout_writes
        ));
        let f = fanout::run(
            &fs_apis,
            &leader_api,
            ADMIN_TOKEN,
            &format!("fanout-{s}"),
            s,
            plan.fanout_writes,
            plan.fanout_gap,
            &node_pids(&fs),
        )
        .await?;
        let sm = Summary::of(&f.latencies);
        p.note(&format!(
            "connected {}/{s} in {:.1} s; delivered {}/{}; p50 {} p99 {} max {} ms",
            f.connected,
            f.connect_time.as_secs_f64(),
            f.delivered(),
            s * plan.fanout_writes,
            ms(sm.p50),
            ms(sm.p99),
            ms(sm.max)
        ));
        fanouts.push(f);
    }

    // 5b. Recovery: a follower down while many writes happen, then rejoining.
    let leader = fs_leader(&fs).await?;
    let leader_api = fs.node(leader).api.clone();
    let down = fs
        .ids()
        .into_iter()
        .find(|i| *i != leader)
        .unwrap_or(leader);
    p.phase(&format!(
        "recovery: kill -9 node {down}, then {} writes at concurrency 256",
        plan.recovery_writes
    ));
    fs_namespace(&fs, leader, "recovery").await?;
    fs.kill(down).await;
    let before = cluster_status(&fs, leader).await?;
    let progress_total = plan.recovery_writes;
    let prog: Arc<dyn Fn(u64) + Send + Sync> = {
        let t0 = p.t0;
        Arc::new(move |n| {
            eprintln!(
                "   [{:>6.0}s] {n}/{progress_total} writes",
                t0.elapsed().as_secs_f64()
            )
        })
    };
    let rec = load::run(
        256,
        plan.recovery_writes,
        plan.recovery_time,
        load::flagstaff_writes(&fs_http, &leader_api, "recovery", 10_000),
        Some(prog),
    )
    .await;
    p.note(&format!(
        "{} writes acknowledged ({} errors) in {:.1} s",
        rec.ok,
        rec.errors,
        rec.elapsed.as_secs_f64()
    ));
    let after = cluster_status(&fs, leader).await?;
    let target = after["applied_index"].as_u64().unwrap_or(0);
    let log_len = std::fs::metadata(&fs.node(down).log)
        .map(|m| m.len())
        .unwrap_or(0);
    p.phase(&format!(
        "recovery: restart node {down}, wait until it applied index {target}"
    ));
    let t0 = Instant::now();
    fs.restart(down).await?;
    let healthy = t0.elapsed();
    let mut caught = None;
    let deadline = Instant::now() + CATCH_UP_LIMIT;
    while Instant::now() < deadline {
        if let Ok(s) = cluster_status(&fs, down).await {
            if s["applied_index"].as_u64().unwrap_or(0) >= target {
                caught = Some(t0.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read(&fs.node(down).log).unwrap_or_default();
    let new_log = String::from_utf8_lossy(&log[(log_len as usize).min(log.len())..]).to_string();
    let installs: Vec<u64> = new_log
        .lines()
        .map(flagstaff_bench::plain)
        .filter(|l| l.contains("installed snapshot"))
        .filter_map(|l| {
            let v = l.split("bytes=").nth(1)?;
            v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect();
    let rss_end = machine::rss_of(&node_pids(&fs));
    p.note(&format!(
        "caught up: {caught:?}; snapshots installed: {installs:?}"
    ));
    fs.stop().await;

    // 4. Evaluation, from the criterion run that preceded this one.
    p.phase("evaluation: criterion estimates");
    let eval_groups = [
        ("peer_static_bool", "static flag"),
        ("peer_two_conditions", "two conditions (`in`, `ends_with`)"),
        ("peer_fractional_50_50", "50/50 split"),
        ("peer_ref_segment", "segment reference"),
        ("peer_all_1000_flags", "1,000 flags, each by key"),
    ];
    let eval: Vec<(&str, [Option<f64>; 3])> = eval_groups
        .iter()
        .map(|(g, label)| {
            let get = |id| {
                args.criterion_dir
                    .as_deref()
                    .and_then(|d| criterion_ns(d, g, id))
            };
            (
                *label,
                [get("flagstaff"), get("datalogic-rs"), get("yggdrasil")],
            )
        })
        .collect();

    p.phase("report and plots");
    let date = &args.date;
    let plot_name = |what: &str| format!("{date}-{what}.svg");
    // Throughput vs concurrency.
    let tp = |f: fn(&WriteRow) -> &LoadResult| -> Vec<(f64, f64)> {
        writes
            .iter()
            .map(|w| (w.c as f64, f(w).throughput()))
            .collect()
    };
    plot::lines(
        &args.out_dir.join(plot_name("write-throughput")),
        "Writes: throughput vs concurrency (3 nodes, fsync on, loopback)",
        "concurrent clients (log)",
        "acknowledged writes per second",
        &[
            Series {
                name: "Flagstaff".into(),
                points: tp(|w| &w.fs),
            },
            Series {
                name: "etcd (HTTP/JSON gateway)".into(),
                points: tp(|w| &w.etcd),
            },
        ],
        true,
    )?;
    let panels: Vec<(String, Vec<Series>)> = writes
        .iter()
        .map(|w| {
            (
                format!("write latency CDF, concurrency {}", w.c),
                vec![
                    Series {
                        name: "Flagstaff".into(),
                        points: plot::cdf_points(&w.fs.latencies),
                    },
                    Series {
                        name: "etcd".into(),
                        points: plot::cdf_points(&w.etcd.latencies),
                    },
                ],
            )
        })
        .collect();
    plot::cdf_grid(&args.out_dir.join(plot_name("write-latency")), &panels, 2)?;
    let read_panels: Vec<(String, Vec<Series>)> = reads
        .iter()
        .map(|(what, c, f, e, _)| {
            let (fname, ename) = if what.starts_with("linearizable") {
                ("Flagstaff linearizable", "etcd linearizable")
            } else {
                ("Flagstaff bounded", "etcd serializable")
            };
            (
                format!("follower reads, c={c}"),
                vec![
                    Series {
                        name: fname.into(),
                        points: plot::cdf_points(&f.latencies),
                    },
                    Series {
                        name: ename.into(),
                        points: plot::cdf_points(&e.latencies),
                    },
                ],
            )
        })
        .collect();
    plot::cdf_grid(
        &args.out_dir.join(plot_name("read-latency")),
        &read_panels,
        2,
    )?;
    let mut prop_series: Vec<Series> = fanouts
        .iter()
        .map(|f| Series {
            name: format!("{} watch subscribers", f.subscribers),
            points: plot::cdf_points(&f.latencies),
        })
        .collect();
    if let Some(f) = fanouts.last() {
        prop_series.push(Series {
            name: format!("SDK instance (with {} subscribers)", f.subscribers),
            points: plot::cdf_points(&f.sdk_latencies),
        });
    }
    plot::lines(
        &args.out_dir.join(plot_name("propagation")),
        "Write -> watch event delivered (CDF)",
        "latency, ms (log)",
        "% of deliveries",
        &prop_series,
        true,
    )?;

    // The markdown.
    let mut md = String::new();
    let mut line = |s: &str| {
        md.push_str(s);
        md.push('\n');
    };
    line(&format!(
        "# Flagstaff side by side with etcd and evaluation peers — {date}"
    ));
    line("");
    line(&format!(
        "{} run. Command (from the repo root):\n\n```sh\n{}\n```\n",
        if args.quick {
            "**Quick (smoke)**"
        } else {
            "Full"
        },
        args.command
    ));
    line("## Machine");
    line("");
    for f in &facts {
        line(f);
    }
    line(&format!(
        "- 4 KiB append + fdatasync to a growing file in the data dirs' file system (so metadata too: an upper bound for a WAL write): p50 {} ms, p99 {} ms (200 samples)",
        ms(fsync.p50),
        ms(fsync.p99)
    ));
    line(&format!("- Load average at start: {load_start} (the machine is shared; the two systems are run back to back at every step, so ratios are fairer than absolute figures)"));
    line("- Both clusters: 3 processes on loopback addresses, own data dirs in a temp dir, fsync on (Flagstaff: synced RocksDB WAL writes; etcd: its default WAL fsync, `--unsafe-no-fsync` not given), stopped by PID");
    line("- Flagstaff: release build, defaults (heartbeat 50 ms, election timeout 150–300 ms, snapshot every 10,000 log entries, 10,000 entries kept behind a snapshot), peers talk directly");
    line(&format!("- etcd: {} defaults (heartbeat 100 ms, election timeout 1000 ms, snapshot-count 100,000), driven through its HTTP/JSON gateway on the client port", etcd_version(&args.etcd_bin)));
    line("- Load generator: one Rust tool (`bench/src/load.rs`), one HTTP/1.1 keep-alive connection per worker, closed loop; the same code and client settings for both systems; writes to the leader, reads from a follower; 1,000 keys, an 80-byte flag definition as the value (etcd stores the same JSON text)");
    line("");

    // Targets.
    line("## Targets");
    line("");
    line("| target | measured | met |");
    line("|---|---|---|");
    for w in &writes {
        let (f, e) = (w.fs.summary(), w.etcd.summary());
        let met = w.fs.throughput() >= w.etcd.throughput() && f.p99 <= e.p99;
        line(&format!(
            "| writes c={}: throughput ≥ etcd and p99 ≤ etcd | {:.0}/s vs {:.0}/s (×{}), p99 {} vs {} ms | {} |",
            w.c,
            w.fs.throughput(),
            w.etcd.throughput(),
            ratio(w.fs.throughput(), w.etcd.throughput()),
            ms(f.p99),
            ms(e.p99),
            yes(met)
        ));
    }
    let phase_terms: Vec<Terms> = writes
        .iter()
        .map(|w| w.terms)
        .chain(reads.iter().map(|r| r.4))
        .collect();
    line(&format!(
        "| no leader election under write or read load (Flagstaff term unchanged through every write and read level) | {} of {} levels held their term | {} |",
        phase_terms.iter().filter(|t| t.fs_held()).count(),
        phase_terms.len(),
        yes(phase_terms.iter().all(Terms::fs_held))
    ));
    let fs_w = windows(&fs_windows);
    let et_w = windows(&et_windows);
    let med = |v: &[Duration]| median(v);
    line(&format!(
        "| failover window ≤ etcd's (median of {}) | {} vs {} ms | {} |",
        plan.failover_rounds,
        opt_ms(med(&fs_w)),
        opt_ms(med(&et_w)),
        yes(
            matches!((med(&fs_w), med(&et_w)), (Some(a), Some(b)) if a <= b)
                && fs_w.len() == plan.failover_rounds
        )
    ));
    line(&format!(
        "| SDK evaluating through the failovers: 0 errors | {} errors, {} wrong values in {} evaluations | {} |",
        sdk_result.errors,
        sdk_result.wrong,
        sdk_result.evaluations,
        yes(sdk_result.errors == 0 && sdk_result.wrong == 0 && sdk_result.evaluations > 0)
    ));
    if let Some(f) = fanouts.last() {
        let s = Summary::of(&f.latencies);
        let complete = f.delivered() == f.subscribers * f.writes;
        line(&format!(
            "| write → event p99 < 50 ms at {} subscribers | p99 {} ms, {}/{} delivered | {} |",
            f.subscribers,
            ms(s.p99),
            f.delivered(),
            f.subscribers * f.writes,
            yes(complete && s.p99 < Duration::from_millis(50))
        ));
    }
    for (label, [ours, dl, yg]) in &eval {
        let met = matches!((ours, dl, yg), (Some(o), Some(d), Some(y)) if o < d && o < y);
        line(&format!(
            "| evaluation faster than both peers: {label} | {} vs {} (datalogic-rs), {} (yggdrasil) | {} |",
            fmt_ns(*ours),
            fmt_ns(*dl),
            fmt_ns(*yg),
            yes(met)
        ));
    }
    line("");

    line("## 1. Writes (to the leader)");
    line("");
    line("| concurrency | Flagstaff writes/s | etcd writes/s | throughput ratio | Flagstaff p50 / p99 / p99.9 ms | etcd p50 / p99 / p99.9 ms | p99 ratio | errors (F / e) | term before → after (F / e) |");
    line("|---|---|---|---|---|---|---|---|---|");
    for w in &writes {
        line(&format!(
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {} / {} | {} |",
            w.c,
            w.fs.throughput(),
            w.etcd.throughput(),
            ratio(w.fs.throughput(), w.etcd.throughput()),
            latency_cells(&w.fs),
            latency_cells(&w.etcd),
            ratio(
                w.fs.summary().p99.as_secs_f64(),
                w.etcd.summary().p99.as_secs_f64()
            ),
            w.fs.errors,
            w.etcd.errors,
            w.terms.cell()
        ));
    }
    line(&format!(
        "\nEach level runs {:?} per system (closed loop, at most 10,000,000 requests); ratios are Flagstaff / etcd (throughput: higher is better for Flagstaff; p99: lower).\n",
        plan.write_time
    ));
    line(&format!(
        "![write throughput]({})\n",
        plot_name("write-throughput")
    ));
    line(&format!(
        "![write latency]({})\n",
        plot_name("write-latency")
    ));
    line("### etcd's HTTP/JSON gateway");
    line("");
    line("etcd 3.4 serves `/v3/*` JSON through grpc-gateway inside the etcd process: each request is decoded from JSON, sent as gRPC over a loopback connection to the same process's gRPC server, and the answer encoded back to JSON. That is one extra loopback round trip and a JSON↔protobuf conversion per request, paid in CPU that the Raft work on this 2-core machine also needs. etcd's own `benchmark` tool (Go) cannot be built here (no Go toolchain); `etcdctl check perf` is etcd's native gRPC path, but it is rate-limited (`--load=s`: 150 writes/s from 50 clients for 60 s), so it gives latency under light load rather than throughput:");
    line("");
    if check_perf.is_empty() {
        line("- not run in this mode.");
    } else {
        for l in check_perf.lines() {
            line(&format!("- `{}`", l.trim()));
        }
    }
    if let Some(w) = writes.iter().find(|w| w.c == 1) {
        line(&format!(
            "\nFor comparison, one gateway client at a time (c=1 above) took p50 {} ms per write. The gateway's share of that is one loopback hop and a JSON conversion (tens of microseconds), small next to the WAL fsyncs; at high concurrency it costs CPU that Raft and fsync handling also need on 2 cores, so etcd's native gRPC throughput would be somewhat higher than the gateway figures above.\n",
            ms(w.etcd.summary().p50)
        ));
    }

    line("## Reads from a follower");
    line("");
    line("| kind | concurrency | Flagstaff reads/s | etcd reads/s | ratio | Flagstaff p50 / p99 / p99.9 ms | etcd p50 / p99 / p99.9 ms | errors (F / e) | term before → after (F / e) |");
    line("|---|---|---|---|---|---|---|---|---|");
    for (what, c, f, e, terms) in &reads {
        line(&format!(
            "| {what} | {c} | {:.0} | {:.0} | {} | {} | {} | {} / {} | {} |",
            f.throughput(),
            e.throughput(),
            ratio(f.throughput(), e.throughput()),
            latency_cells(f),
            latency_cells(e),
            f.errors,
            e.errors,
            terms.cell()
        ));
    }
    line("\nLinearizable: Flagstaff asks the leader for a quorum-confirmed read index (`/raft/read-index`) and waits until applied; etcd does its ReadIndex through the leader. Bounded (Flagstaff, `consistency=bounded`, 2,000 ms bound) answers from the follower's state under a staleness proof; etcd's serializable read answers from the follower's state with no bound at all.\n");
    line(&format!("![read latency]({})\n", plot_name("read-latency")));

    line("## 2. Failover (`kill -9` of the leader under a steady write load)");
    line("");
    line("8 closed-loop writers; each stays on one node until a request fails (error status, transport error or a 2 s timeout), then moves to the next node, as a client library would. The window is from the kill to the first acknowledgement of a write sent after the kill; failed attempts are those within the window. The killed node is restarted and the cluster has agreed on a leader before the next round.\n");
    line("| round | Flagstaff window ms | Flagstaff failed attempts | etcd window ms | etcd failed attempts |");
    line("|---|---|---|---|---|");
    for (i, (f, e)) in fs_windows.iter().zip(&et_windows).enumerate() {
        line(&format!(
            "| {} | {} | {} | {} | {} |",
            i + 1,
            win_ms(f),
            win_err(f),
            win_ms(e),
            win_err(e)
        ));
    }
    line(&format!(
        "\nMedian window: Flagstaff {} ms, etcd {} ms (ratio {}). Max: Flagstaff {} ms, etcd {} ms.\n",
        opt_ms(med(&fs_w)),
        opt_ms(med(&et_w)),
        match (med(&fs_w), med(&et_w)) {
            (Some(a), Some(b)) => ratio(a.as_secs_f64(), b.as_secs_f64()),
            _ => "n/a".into(),
        },
        opt_ms(fs_w.iter().max().copied()),
        opt_ms(et_w.iter().max().copied())
    ));
    line(&format!(
        "SDK (`flagstaff-client`, default settings, all three nodes configured) evaluating flag `k0` every millisecond through all {} Flagstaff kills: {} evaluations, **{} errors**, {} wrong values, {} marked stale.\n",
        plan.failover_rounds, sdk_result.evaluations, sdk_result.errors, sdk_result.wrong, sdk_result.stale
    ));

    line("## 3. Propagation (watch fan-out)");
    line("");
    line(&format!("Subscribers are SSE streams (`GET /v1/namespaces/NS/watch`) spread round-robin over the three nodes, all in the bench process; {} writes of a new flag to the leader, {:?} apart; latency from just before each write is sent to the moment a subscriber has parsed its `change` event. One SDK instance (`flagstaff-client`) follows the same namespace in the same run: its latency is write → the SDK's change listener saw the new value (its evaluations return it from then on).\n", plan.fanout_writes, plan.fanout_gap));
    line("| subscribers | connected (time) | delivered | event p50 / p99 / max ms | SDK p50 / p99 / max ms | SDK values after | CPU per delivery, nodes / subscribers µs |");
    line("|---|---|---|---|---|---|---|");
    for f in &fanouts {
        let s = Summary::of(&f.latencies);
        let sdk_s = Summary::of(&f.sdk_latencies);
        line(&format!(
            "| {} | {} ({:.1} s) | {}/{} | {} / {} / {} | {} / {} / {} ({} samples) | {} | {} / {} |",
            f.subscribers,
            f.connected,
            f.connect_time.as_secs_f64(),
            f.delivered(),
            f.subscribers * f.writes,
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            ms(sdk_s.p50),
            ms(sdk_s.p99),
            ms(sdk_s.max),
            sdk_s.count,
            if f.sdk_values_ok {
                "all new"
            } else {
                "**some old**"
            },
            us(f.cpu_per_delivery().0),
            us(f.cpu_per_delivery().1),
        ));
    }
    for f in &fanouts {
        for (why, n) in &f.ended_early {
            line(&format!("\n{n} of the {} streams ended before every write arrived: {why} (the bench does not resume streams; an SDK does).", f.subscribers));
        }
    }
    line("\nThe subscribers' side (reading and parsing every event of every stream) runs on the same 2 cores as the three nodes, so these figures include the load generator's own queueing. CPU per delivery is the CPU time used from the first write until the last event arrived (the streams' heartbeats included), divided by the events delivered; nodes summed. The kernel counts CPU time in clock ticks (usually 10 ms), so the figure is coarse when few events are delivered.\n");
    if let Some(f) = fanouts.last() {
        if let (Some(n), Some(c)) = f.cpu_per_delivery() {
            let one_write = (n + c) * f.subscribers as u32;
            line(&format!("So one write to {} streams costs about {} ms of CPU on this machine, {} ms of it in the nodes; with {} cores shared by the nodes and the subscribers, the last subscriber cannot have it sooner than about {} ms after the write.\n", f.subscribers, ms(one_write), ms(n * f.subscribers as u32), machine::cores(), ms(one_write / machine::cores().max(1) as u32)));
        }
    }
    line(&format!("![propagation]({})\n", plot_name("propagation")));

    line("## 4. Evaluation (in-process, criterion, median per call)");
    line("");
    line("`bench/benches/peers.rs`: the same rules in each engine's language — Flagstaff (`flagstaff-flags`, a whole flag evaluation: lookup, targeting, variant, typed value), datalogic-rs (flagd's JsonLogic engine: the rule only, on pre-parsed data with a reused arena) and Unleash's yggdrasil (`is_enabled` with constraints, a segment and a gradual rollout). The answers are checked equal before measuring (except the 50/50 split, which each engine hashes its own way).\n");
    line("| rule | Flagstaff | datalogic-rs | yggdrasil | datalogic-rs / Flagstaff | yggdrasil / Flagstaff |");
    line("|---|---|---|---|---|---|");
    for (label, [o, d, y]) in &eval {
        let r = |p: Option<f64>| match (p, o) {
            (Some(p), Some(o)) => ratio(p, *o),
            _ => "n/a".into(),
        };
        line(&format!(
            "| {label} | {} | {} | {} | {} | {} |",
            fmt_ns(*o),
            fmt_ns(*d),
            fmt_ns(*y),
            r(*d),
            r(*y)
        ));
    }
    line("");

    line("## 5. Resources and recovery");
    line("");
    line("RSS per node (MiB, nodes 1 / 2 / 3, from `/proc/PID/status`):\n");
    line("| when | Flagstaff | etcd |");
    line("|---|---|---|");
    line(&format!(
        "| after the write and read phases | {} | {} |",
        mib(&rss_after_writes.0),
        mib(&rss_after_writes.1)
    ));
    line(&format!(
        "| before the bulk flags | {} | |",
        mib(&rss_before_bulk)
    ));
    line(&format!(
        "| with {} flags (namespace `bulk`) | {} | |",
        plan.bulk_flags,
        mib(&rss_bulk)
    ));
    for f in &fanouts {
        line(&format!(
            "| {} flags + {} watch subscribers connected | {} | |",
            plan.bulk_flags,
            f.subscribers,
            mib(&f.rss_kib)
        ));
    }
    line(&format!("| end (after recovery) | {} | |", mib(&rss_end)));
    line("");
    let entries = after["last_log_index"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(before["last_log_index"].as_u64().unwrap_or(0));
    line(&format!(
        "Recovery: node {down} (a follower) was killed (`kill -9`), then {} writes were acknowledged ({} errors) in {:.1} s at concurrency 256 ({:.0} writes/s; {} distinct keys) — {} Raft log entries (the proposer batches concurrent writes into one entry). Snapshot policy: a snapshot every 10,000 log entries, 10,000 entries kept behind it, so a follower more than 10,000 entries behind is sent the snapshot and replays the log after it.\n",
        rec.ok, rec.errors, rec.elapsed.as_secs_f64(), rec.throughput(), 10_000, entries
    ));
    line(&format!(
        "- restart → healthy: {:.2} s; restart → applied index {target} (the leader's): {}",
        healthy.as_secs_f64(),
        caught.map_or(format!("**not within {CATCH_UP_LIMIT:?}**"), |d| format!(
            "{:.2} s",
            d.as_secs_f64()
        ))
    ));
    line(&format!(
        "- snapshots installed while catching up: {} ({})",
        installs.len(),
        if installs.is_empty() {
            "caught up from the log alone".to_string()
        } else {
            installs
                .iter()
                .map(|b| format!("{:.1} MiB", *b as f64 / 1048576.0))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    if rec.ok < plan.recovery_writes {
        line(&format!(
            "- the write phase stopped at its time bound ({:?}) before {} writes",
            plan.recovery_time, plan.recovery_writes
        ));
    }
    line("");

    line("## Phases");
    line("");
    line("| phase | started at s | load average (1, 5, 15 min) |");
    line("|---|---|---|");
    for (name, t, la) in &p.phases {
        line(&format!("| {name} | {t:.0} | {la} |"));
    }
    line(&format!("\nTotal {:.0} s.", p.t0.elapsed().as_secs_f64()));
    let path = args.out_dir.join(format!("{date}.md"));
    std::fs::write(&path, md)?;
    eprintln!("report: {}", path.display());
    Ok(())
}

fn etcd_version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.replace("etcd Version: ", "etcd "))
        })
        .unwrap_or_else(|| "etcd".into())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "**no**"
    }
}

fn windows(w: &[anyhow::Result<Window>]) -> Vec<Duration> {
    w.iter()
        .filter_map(|w| w.as_ref().ok().and_then(|w| w.window))
        .collect()
}

fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len().checked_sub(1)? / 2).copied()
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or("n/a".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e3))
}

fn win_ms(w: &anyhow::Result<Window>) -> String {
    match w {
        Ok(w) => w.window.map_or("none within 30 s".into(), |d| {
            format!("{:.0}", d.as_secs_f64() * 1e3)
        }),
        Err(e) => format!("failed: {e}"),
    }
}

fn win_err(w: &anyhow::Result<Window>) -> String {
    w.as_ref().map_or("-".into(), |w| w.errors.to_string())
}
