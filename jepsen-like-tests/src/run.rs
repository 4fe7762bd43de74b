//! One run: start a cluster, drive the workloads under a fault schedule, heal, take final
//! reads, save the history, check it, and keep the evidence when it fails.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::cluster::{endpoints_now, Cluster, NodeOptions};
use crate::history::{self, Op, Outcome, Record, F};
use crate::nemesis::{self, Fault};
use crate::report::{self, Report};
use crate::workload::{self, Recorder, REG_NS, SET_NS};

/// What one run does.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub nodes: u64,
    pub duration: Duration,
    pub faults: Vec<Fault>,
    /// Learners added after the voters (nodes `nodes + 1 …`); they serve bounded reads and
    /// host a watcher like every member.
    pub learners: u64,
    /// Extra environment for every node (the fault-injection switches).
    pub env: Vec<(String, String)>,
    /// Extra `serve` arguments for every node (e.g. small snapshots).
    pub node_args: Vec<String>,
    /// `max_staleness_ms` the watchers ask for (`None`: the node's default).
    pub watch_staleness_ms: Option<u64>,
    /// Unchecked background writes to namespace `fill` through every node with short
    /// timeouts, so the log keeps moving while the checked clients wait on a cut-off node.
    pub filler: bool,
    pub registers: usize,
    pub register_clients: u64,
    pub bounded_clients: u64,
}

impl Scenario {
    pub fn new(name: &str, nodes: u64, secs: u64, faults: &[Fault]) -> Scenario {
        Scenario {
            name: name.into(),
            nodes,
            duration: Duration::from_secs(secs),
            faults: faults.to_vec(),
            learners: 0,
            env: Vec::new(),
            node_args: Vec::new(),
            watch_staleness_ms: None,
            filler: false,
            registers: 3,
            register_clients: 4,
            bounded_clients: 2,
        }
    }
}

/// The outcome of a run, with where its evidence is.
pub struct RunResult {
    pub report: Report,
    pub dir: PathBuf,
    pub history: PathBuf,
}

async fn retry<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = f().await {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{what}: no success within {limit:?}")
}

/// Runs `scenario` with `seed` from binary `bin`, keeping its files under `dir`.
pub async fn run(
    bin: &Path,
    scenario: &Scenario,
    seed: u64,
    dir: &Path,
) -> anyhow::Result<RunResult> {
    std::fs::create_dir_all(dir)?;
    println!(
        "== {} (seed {seed}, {} nodes, {:?}, faults {:?}) in {}",
        scenario.name,
        scenario.nodes,
        scenario.duration,
        scenario.faults,
        dir.display()
    );
    let opts = NodeOptions {
        env: scenario.env.clone(),
        args: scenario.node_args.clone(),
        ..Default::default()
    };
    let mut cluster = Cluster::start(bin, dir, scenario.nodes, scenario.learners, opts)
        .await
        .context("starting the cluster")?;
    let result = drive(&mut cluster, scenario, seed, dir).await;
    cluster.stop().await;
    let records = result?;
    let mut records = records;
    // Raft snapshot installs, from each node's log (the state machine logs every install).
    for n in &cluster.nodes {
        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
        records.push(Record::SnapshotsInstalled {
            node: n.id,
            count: log.matches("installed snapshot").count() as u64,
        });
    }
    let history_path = dir.join("history.jsonl");
    history::save(&history_path, &records)?;
    let report = report::check(&records);
    let text = report.render();
    println!("{text}");
    std::fs::write(dir.join("report.txt"), &text)?;
    if report.anomalies() == 0 {
        // Keep the history and logs, drop the bulky data dirs.
        for id in 1..=cluster.nodes.len() {
            let _ = std::fs::remove_dir_all(dir.join(format!("n{id}")));
        }
    }
    Ok(RunResult {
        report,
        dir: dir.to_path_buf(),
        history: history_path,
    })
}

async fn drive(
    cluster: &mut Cluster,
    scenario: &Scenario,
    seed: u64,
    _dir: &Path,
) -> anyhow::Result<Vec<Record>> {
    let rec = Recorder::new();
    // Setup: namespaces and one flag per register.
    let namespaces: &[&str] = if scenario.filler {
        &[REG_NS, SET_NS, workload::FILL_NS]
    } else {
        &[REG_NS, SET_NS]
    };
    for &ns in namespaces {
        let (s, b) = cluster
            .call(
                1,
                reqwest::Method::PUT,
                &format!("/v1/namespaces/{ns}"),
                Some(json!({})),
            )
            .await?;
        if s != 200 && s != 201 {
            bail!("creating namespace {ns}: {s} {b}");
        }
    }
    if scenario.faults.contains(&Fault::LoadBurst) {
        crate::load::setup(cluster, 1).await?;
    }
    let keys: Vec<String> = (0..scenario.registers).map(|i| format!("r{i}")).collect();
    let mut initial = serde_json::Map::new();
    for k in &keys {
        let (s, b) = cluster
            .call(
                1,
                reqwest::Method::PUT,
                &format!("/v1/namespaces/{REG_NS}/flags/{k}"),
                Some(workload::reg_flag(0)),
            )
            .await?;
        if s != 200 && s != 201 {
            bail!("creating register {k}: {s} {b}");
        }
        initial.insert(k.clone(), json!([0, b["revision"]]));
    }
    // An SDK key for the embedded client (workload e).
    let (st, b) = cluster
        .call(
            1,
            reqwest::Method::POST,
            &format!("/v1/namespaces/{REG_NS}/sdk-keys"),
            Some(json!({"name": "jepsen-sdk"})),
        )
        .await?;
    let sdk_key = match b["secret"].as_str() {
        Some(k) if st == 200 || st == 201 => k.to_string(),
        _ => bail!("creating an SDK key: {st} {b}"),
    };
    rec.push(Record::Meta {
        info: json!({
            "scenario": scenario.name, "seed": seed, "nodes": scenario.nodes,
            "duration_s": scenario.duration.as_secs(), "faults": scenario.faults,
            "learners": scenario.learners, "env": scenario.env, "node_args": scenario.node_args,
            "initial": Value::Object(initial),
        }),
    });

    let eps = cluster.endpoints.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()?;
    let until = Instant::now() + scenario.duration;
    let mut tasks = Vec::new();
    for p in 0..scenario.register_clients {
        tasks.push(tokio::spawn(workload::register_client(
            rec.clone(),
            http.clone(),
            eps.clone(),
            keys.clone(),
            seed * 100 + p,
            until,
        )));
    }
    for p in 0..scenario.bounded_clients {
        tasks.push(tokio::spawn(workload::bounded_client(
            rec.clone(),
            http.clone(),
            eps.clone(),
            keys.clone(),
            seed * 100 + 50 + p,
            until,
        )));
    }
    if scenario.filler {
        for p in 0..3 {
            tasks.push(tokio::spawn(workload::filler_client(
                http.clone(),
                eps.clone(),
                p,
                until,
            )));
        }
    }
    tasks.push(tokio::spawn(workload::set_client(
        rec.clone(),
        http.clone(),
        eps.clone(),
        seed * 100 + 80,
        until,
    )));
    let sdk_task = tokio::spawn(crate::sdk::sdk_client(
        rec.clone(),
        endpoints_now(&eps).into_iter().map(|e| e.api).collect(),
        sdk_key,
        REG_NS,
        keys.clone(),
        until,
    ));
    // One watcher per member (nodes added later get theirs when they start); they keep going
    // a little after the workload to catch up after healing.
    let watch_until = until + Duration::from_secs(6);
    let watchers: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
    let spawn_watcher = {
        let (rec, http, watchers) = (rec.clone(), http.clone(), watchers.clone());
        let bound = scenario.watch_staleness_ms;
        move |ep: workload::Endpoint| {
            let t = tokio::spawn(workload::watcher(
                rec.clone(),
                http.clone(),
                ep.clone(),
                ep.id,
                bound,
                watch_until,
            ));
            watchers.lock().unwrap_or_else(|p| p.into_inner()).push(t);
        }
    };
    for ep in endpoints_now(&eps) {
        spawn_watcher(ep);
    }
    cluster.on_new_node = Some(Box::new(spawn_watcher));

    let nemesis_result = nemesis::run(cluster, rec.clone(), &scenario.faults, seed, until).await;
    for t in tasks {
        let _ = t.await;
    }
    nemesis_result?;
    match sdk_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("the SDK client could not run: {e:#}"),
        Err(e) => bail!("the SDK client task failed: {e}"),
    }
    cluster.heal_all().await?;
    cluster
        .wait_leader(&cluster.ids(), Duration::from_secs(30))
        .await
        .context("cluster did not recover after healing")?;

    // Final reads go to a member that is still in the cluster (node 1 may have been removed).
    let home = cluster.ids().first().copied().context("no member left")?;
    // Final linearizable reads of every register (they join the register history, so a lost
    // acknowledged write shows as a linearizability failure).
    let final_process = 999;
    let mut max_rev = 0;
    for k in &keys {
        let op: Op = retry(
            &format!("final read of {k}"),
            Duration::from_secs(20),
            || {
                let (cluster, rec) = (&*cluster, rec.clone());
                async move {
                    let invoke = rec.now_ns();
                    let (s, b) = cluster
                        .call(
                            home,
                            reqwest::Method::GET,
                            &format!("/v1/namespaces/{REG_NS}/flags/{k}?consistency=linearizable"),
                            None,
                        )
                        .await
                        .ok()?;
                    (s == 200).then(|| Op {
                        process: final_process,
                        node: home,
                        f: F::Read,
                        key: k.clone(),
                        value: b["definition"]["variants"]["v"].as_i64(),
                        expect_version: None,
                        version: b["version"].as_u64(),
                        max_staleness_ms: None,
                        invoke_ns: invoke,
                        complete_ns: Some(rec.now_ns()),
                        outcome: Outcome::Ok,
                        revision: None,
                        staleness_ms: None,
                        error: None,
                    })
                }
            },
        )
        .await?;
        max_rev = max_rev.max(op.version.unwrap_or(0));
        rec.push(Record::Op(op));
    }
    // Every member must reach the final state: bounded reads at min_revision on each node.
    for n in &endpoints_now(&eps) {
        for k in &keys {
            let url = format!(
                "/v1/namespaces/{REG_NS}/flags/{k}?consistency=bounded&max_staleness_ms={}&min_revision={max_rev}",
                workload::BOUNDED_MS
            );
            let invoke = rec.now_ns();
            let (s, b, h) = retry(
                &format!("node {} catching up", n.id),
                Duration::from_secs(20),
                || {
                    let (url, http, api) = (url.clone(), http.clone(), n.api.clone());
                    async move {
                        let r = http
                            .get(format!("{api}{url}"))
                            .bearer_auth(crate::cluster::ADMIN_TOKEN)
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await
                            .ok()?;
                        let s = r.status().as_u16();
                        let h = r.headers().clone();
                        let b: Value = r.json().await.ok()?;
                        (s == 200).then_some((s, b, h))
                    }
                },
            )
            .await?;
            let _ = s;
            let hv = |name: &str| {
                h.get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
            };
            rec.push(Record::Op(Op {
                process: final_process,
                node: n.id,
                f: F::BoundedRead,
                key: k.clone(),
                value: b["definition"]["variants"]["v"].as_i64(),
                expect_version: None,
                version: b["version"].as_u64(),
                max_staleness_ms: Some(workload::BOUNDED_MS),
                invoke_ns: invoke,
                complete_ns: Some(rec.now_ns()),
                outcome: Outcome::Ok,
                revision: hv("flagstaff-revision"),
                staleness_ms: hv("flagstaff-staleness-ms"),
                error: None,
            }));
        }
    }
    // The set, read linearizably.
    let elements: Vec<(String, u64)> =
        retry("final read of the set", Duration::from_secs(20), || async {
            let (s, b) = cluster
                .call(
                    home,
                    reqwest::Method::GET,
                    &format!("/v1/namespaces/{SET_NS}/flags?consistency=linearizable"),
                    None,
                )
                .await
                .ok()?;
            if s != 200 {
                return None;
            }
            let list = b["flags"].as_array()?;
            Some(
                list.iter()
                    .filter_map(|f| Some((f["key"].as_str()?.to_string(), f["version"].as_u64()?)))
                    .collect(),
            )
        })
        .await?;
    rec.push(Record::SetFinal { elements });
    // The audit history of both namespaces, page by page.
    for ns in [REG_NS, SET_NS] {
        let mut all: Vec<(u64, Vec<String>)> = Vec::new();
        let mut before: Option<u64> = None;
        for _page in 0..1000 {
            let path = match before {
                Some(b) => format!("/v1/namespaces/{ns}/history?limit=1000&before={b}"),
                None => format!("/v1/namespaces/{ns}/history?limit=1000"),
            };
            let b = retry(
                &format!("history of {ns}"),
                Duration::from_secs(20),
                || async {
                    let (s, b) = cluster
                        .call(home, reqwest::Method::GET, &path, None)
                        .await
                        .ok()?;
                    (s == 200).then_some(b)
                },
            )
            .await?;
            for c in b["changes"].as_array().into_iter().flatten() {
                let keys = c["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|i| i["kind"] != "namespace")
                    .filter_map(|i| i["key"].as_str().map(String::from))
                    .collect();
                all.push((c["revision"].as_u64().unwrap_or(0), keys));
            }
            match b["next_before"].as_u64() {
                Some(n) => before = Some(n),
                None => break,
            }
        }
        all.sort();
        rec.push(Record::Changes {
            ns: ns.to_string(),
            changes: all,
        });
    }
    cluster.on_new_node = None;
    let watchers = std::mem::take(&mut *watchers.lock().unwrap_or_else(|p| p.into_inner()));
    for w in watchers {
        let _ = w.await;
    }
    Ok(rec.take())
}
