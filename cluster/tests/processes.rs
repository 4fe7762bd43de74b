//! Real `flagstaff` processes: `kill -9` of the leader under a stream of writes, a rolling
//! restart (SIGTERM, one node at a time) under writes with SDKs evaluating, and the
//! `cluster up` command of the README (start, tour, stop, restart on the same data).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TOKEN: &str = "proc-test-token";
const SECRET: &str = "proc-test-secret";

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_flagstaff")
}

/// `n` consecutive free ports on 127.0.0.1, below the kernel's ephemeral range (32768+), so that
/// no other test's `bind(":0")` or outgoing connection can take a port while a node that owns
/// it is down between a kill and its restart.
fn free_ports(n: u16) -> u16 {
    use rand::Rng;
    for _ in 0..200 {
        let base = rand::thread_rng().gen_range(20_000..32_000 - n);
        let all_free = (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free port range");
}

struct Proc {
    id: u64,
    api: String,
    peer: String,
    dir: PathBuf,
    child: Option<Child>,
}

fn spawn_node(p: &mut Proc, cluster_id: Option<&str>, log_dir: &Path) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join(format!("node-{}.log", p.id)))
        .unwrap();
    let mut cmd = Command::new(exe());
    cmd.args(["serve", "--id", &p.id.to_string()])
        .arg("--data-dir")
        .arg(&p.dir)
        .args(["--listen-client", p.api.trim_start_matches("http://")])
        .args(["--listen-peer", p.peer.trim_start_matches("http://")])
        .env("FLAGSTAFF_CLUSTER_SECRET", SECRET)
        .env("FLAGSTAFF_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some(c) = cluster_id {
        cmd.args(["--cluster-id", c]);
    }
    p.child = Some(cmd.spawn().expect("spawn flagstaff serve"));
}

fn kill9(p: &mut Proc) {
    if let Some(mut c) = p.child.take() {
        // SAFETY: kill(2) on a child this test started and still owns.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGKILL);
        }
        let _ = c.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill9(self);
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn leader_of(http: &reqwest::Client, api: &str) -> Option<u64> {
    let r = http
        .get(format!("{api}/v1/cluster"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    r.json::<Value>().await.ok()?["leader"].as_u64()
}

/// Three `flagstaff serve` processes with data dirs `root/node-N` (pristine, or seeded for
/// cluster `cluster_id`) and logs in `root`, initialised as one cluster with a leader.
async fn three_nodes(root: &Path, cluster_id: &str, http: &reqwest::Client) -> Vec<Proc> {
    std::fs::create_dir_all(root).unwrap();
    let base = free_ports(6);
    let mut procs: Vec<Proc> = (1..=3u64)
        .map(|id| Proc {
            id,
            api: format!("http://127.0.0.1:{}", base + id as u16 - 1),
            peer: format!("http://127.0.0.1:{}", base + 2 + id as u16),
            dir: root.join(format!("node-{id}")),
            child: None,
        })
        .collect();
    for p in procs.iter_mut() {
        spawn_node(p, Some(cluster_id), root);
    }
    for p in &procs {
        let url = format!("{}/healthz", p.api);
        wait_until("healthz", Duration::from_secs(30), || {
            let r = http.get(&url).send();
            async move { r.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
    }
    let members: Vec<Value> = procs
        .iter()
        .map(|p| json!({"id": p.id, "api_addr": p.api, "peer_addr": p.peer}))
        .collect();
    let r = http
        .post(format!("{}/v1/cluster/init", procs[0].api))
        .bearer_auth(TOKEN)
        .json(&json!({"members": members}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let api0 = procs[0].api.clone();
    wait_until("a leader", Duration::from_secs(30), || {
        let (h, a) = (http.clone(), api0.clone());
        async move { leader_of(&h, &a).await.is_some() }
    })
    .await;
    procs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let http = http();
    let mut procs = three_nodes(tmp.path(), "kill-test", &http).await;
    let r = http
        .put(format!("{}/v1/namespaces/prod", procs[0].api))
        .bearer_auth(TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A stream of writes round-robin over the live nodes; kill -9 the leader after 40 acks.
    let leader = leader_of(&http, &procs[0].api).await.unwrap();
    let start = Instant::now();
    let mut acked: Vec<(String, u64, Duration)> = Vec::new();
    let mut killed_at = None;
    let mut i = 0u64;
    while acked.len() < 160 && i < 2000 && start.elapsed() < Duration::from_secs(60) {
        i += 1;
        if acked.len() == 40 && killed_at.is_none() {
            kill9(&mut procs[(leader - 1) as usize]);
            killed_at = Some(start.elapsed());
        }
        let live: Vec<&Proc> = procs.iter().filter(|p| p.child.is_some()).collect();
        let target = live[(i as usize) % live.len()];
        let key = format!("k{i}");
        let body = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"});
        let resp = http
            .put(format!("{}/v1/namespaces/prod/flags/{key}", target.api))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
        if let Ok(r) = resp {
            if r.status() == 200 {
                let v: Value = r.json().await.unwrap();
                acked.push((key, v["revision"].as_u64().unwrap(), start.elapsed()));
            }
        }
    }
    let killed_at = killed_at.expect("the leader was killed");
    assert_eq!(
        acked.len(),
        160,
        "writes did not resume after the leader was killed"
    );
    // The write outage: from the kill to the first write acknowledged after it.
    let resumed = acked.iter().map(|a| a.2).find(|t| *t > killed_at).unwrap();
    println!(
        "write outage after kill -9 of the leader: {:?}",
        resumed - killed_at
    );

    // The killed node restarts from its data dir and rejoins without operator action.
    spawn_node(&mut procs[(leader - 1) as usize], None, tmp.path());
    let acked: Vec<(String, u64)> = acked.into_iter().map(|(k, r, _)| (k, r)).collect();
    every_node_holds(&http, &procs, tmp.path(), "prod", &acked).await;
}

/// Every node serves (bounded, once it reached the newest of them) every acknowledged write
/// `(flag key, revision)` of namespace `ns` at its acknowledged revision. A node that never
/// gets there fails the test with the end of its log (in `log_dir`).
async fn every_node_holds(
    http: &reqwest::Client,
    procs: &[Proc],
    log_dir: &Path,
    ns: &str,
    acked: &[(String, u64)],
) {
    let last = acked.iter().map(|a| a.1).max().unwrap();
    for p in procs {
        let url = format!(
            "{}/v1/namespaces/{ns}/flags?consistency=bounded&min_revision={last}",
            p.api
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let flags: Value = loop {
            match http.get(&url).bearer_auth(TOKEN).send().await {
                Ok(r) if r.status() == 200 => break r.json().await.unwrap(),
                other => {
                    if Instant::now() >= deadline {
                        let status = match other {
                            Ok(r) => {
                                format!("{} {}", r.status(), r.text().await.unwrap_or_default())
                            }
                            Err(e) => e.to_string(),
                        };
                        let log =
                            std::fs::read_to_string(log_dir.join(format!("node-{}.log", p.id)))
                                .unwrap_or_default();
                        let tail: Vec<&str> = log
                            .lines()
                            .rev()
                            .take(40)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect();
                        panic!("node {} never served revision {last} (last answer: {status}); its log ends:\n{}", p.id, tail.join("\n"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let present: std::collections::BTreeMap<&str, u64> = flags["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["key"].as_str().unwrap(), f["version"].as_u64().unwrap()))
            .collect();
        for (key, rev) in acked {
            assert_eq!(
                present.get(key.as_str()),
                Some(rev),
                "node {} lost acknowledged write {key}@{rev}",
                p.id
            );
        }
    }
}

/// Reads the child's stdout until a line contains `needle`.
/// Reads `out` up to the line holding `needle`; if the output ends first, fails with it and
/// with what the process wrote to `stderr` (a file).
fn wait_for_line(out: &mut impl std::io::BufRead, needle: &str, stderr: &Path) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "output ended before {needle:?}: {all}\nstderr: {}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        );
        all.push_str(&line);
        if line.contains(needle) {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_starts_serves_stops_and_restarts_on_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let client = free_ports(3);
    let peer = free_ports(3);
    let sync = free_ports(3);
    let err = tmp.path().join("up.err");
    let start = |dir: &Path| {
        Command::new(exe())
            .args(["cluster", "up", "--nodes", "3"])
            .arg("--data-dir")
            .arg(dir)
            .args([
                "--client-port",
                &client.to_string(),
                "--peer-port",
                &peer.to_string(),
                "--sync-port",
                &sync.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap()
    };
    let dir = tmp.path().join("data");
    let http = http();
    let api = format!("http://127.0.0.1:{}", client + 1);
    let token_path = dir.join("admin.token");

    let mut up = start(&dir);
    let mut out = std::io::BufReader::new(up.stdout.take().unwrap());
    let banner = tokio::task::spawn_blocking({
        let err = err.clone();
        move || (wait_for_line(&mut out, "Press Ctrl-C", &err), out)
    })
    .await
    .unwrap();
    assert!(banner.0.contains("is up"), "{}", banner.0);
    let token = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_string();

    // The README tour: namespace, flag, flip, read back with its revision.
    let put = http
        .put(format!("{api}/v1/namespaces/checkout"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let put = http
        .put(format!("{api}/v1/namespaces/checkout/flags/new-checkout"))
        .bearer_auth(&token)
        .json(&json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let flip = http
        .patch(format!("{api}/v1/namespaces/checkout/flags/new-checkout"))
        .bearer_auth(&token)
        .json(&json!({"defaultVariant": "on"}))
        .send()
        .await
        .unwrap();
    assert_eq!(flip.status(), 200);
    let rev = flip.json::<Value>().await.unwrap()["revision"]
        .as_u64()
        .unwrap();
    let cluster_id = leader_cluster_id(&http, &api, &token).await;

    // The command line against the same cluster (token read from the data dir).
    let cli = |args: &[&str]| {
        let out = Command::new(exe())
            .args(args)
            .args([
                "--endpoint",
                &format!("http://127.0.0.1:{},{api}", client + 2),
            ])
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    cli(&["namespace", "create", "cli"]);
    cli(&[
        "flag",
        "set",
        "cli",
        "dark-mode",
        r#"{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on"}"#,
    ]);
    cli(&["flag", "disable", "cli", "dark-mode"]);
    let got: Value =
        serde_json::from_str(&cli(&["flag", "get", "cli", "dark-mode", "--json"])).unwrap();
    assert_eq!(got["definition"]["state"], "DISABLED");
    assert!(cli(&["flag", "list", "cli"]).contains("dark-mode"));
    let secret = cli(&["key", "create", "cli", "web"]);
    assert!(secret.starts_with("fsk_"), "{secret}");
    assert!(cli(&["key", "list", "cli"]).contains("web"));
    let history = cli(&["flag", "history", "cli", "--key", "dark-mode"]);
    assert_eq!(
        history.lines().count(),
        3,
        "header + two changes: {history}"
    );
    let exported = cli(&["flag", "export", "cli"]);
    let doc_path = tmp.path().join("flags.json");
    std::fs::write(&doc_path, &exported).unwrap();
    cli(&["namespace", "create", "copy"]);
    cli(&["flag", "import", "copy", doc_path.to_str().unwrap()]);
    assert!(cli(&["flag", "list", "copy"]).contains("dark-mode"));
    assert!(cli(&["cluster", "status"]).contains("voter"));

    // An A/B test from the command line: start it, send conversions with the SDK key, read the
    // results, ship a variant.
    cli(&[
        "flag",
        "set",
        "cli",
        "checkout",
        r#"{"state":"ENABLED","variants":{"old":1,"new":2},"defaultVariant":"old","targeting":{"fractional":[["old",50],["new",50]]}}"#,
    ]);
    cli(&[
        "experiment",
        "start",
        "cli",
        "checkout",
        "--control",
        "old",
        "--metric",
        "purchase",
    ]);
    let track: Vec<Value> = (0..200)
        .map(|i| json!({"event": "purchase", "context": {"targetingKey": format!("u{i}")}}))
        .collect();
    let sent = http
        .post(format!("{api}/v1/namespaces/cli/events"))
        .bearer_auth(secret.lines().next().unwrap().trim())
        .json(&json!({"batch": "cli-1", "track": track}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200, "{}", sent.text().await.unwrap());
    assert!(cli(&["experiment", "list", "cli"]).contains("running"));
    let results = cli(&["experiment", "results", "cli", "checkout"]);
    assert!(
        results.contains("purchase") && results.contains("old") && results.contains("new"),
        "{results}"
    );
    let json: Value = serde_json::from_str(&cli(&[
        "experiment",
        "results",
        "cli",
        "checkout",
        "--json",
    ]))
    .unwrap();
    let conversions: u64 = json["report"]["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["metrics"][0]["conversions"].as_u64().unwrap())
        .sum();
    assert_eq!(conversions, 200, "{json}");
    cli(&["experiment", "ship", "cli", "checkout", "new"]);
    let got: Value =
        serde_json::from_str(&cli(&["flag", "get", "cli", "checkout", "--json"])).unwrap();
    assert_eq!(got["definition"]["defaultVariant"], "new");
    assert!(got["definition"].get("experiment").is_none(), "{got}");
    assert!(cli(&[
        "experiment",
        "results",
        "cli",
        "checkout",
        "--control",
        "old"
    ])
    .contains("stopped"));

    // SIGTERM stops every node.
    // SAFETY: kill(2) on the child this test started.
    unsafe {
        libc::kill(up.id() as i32, libc::SIGTERM);
    }
    let status = up.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        http.get(format!("{api}/healthz")).send().await.is_err(),
        "nodes still running after stop"
    );

    // Restart on the same data: no re-init, same cluster, data still there.
    let mut up = start(&dir);
    let mut out = std::io::BufReader::new(up.stdout.take().unwrap());
    let _keep_stdout_open = tokio::task::spawn_blocking({
        let err = err.clone();
        move || (wait_for_line(&mut out, "Press Ctrl-C", &err), out)
    })
    .await
    .unwrap();
    let got: Value = http
        .get(format!(
            "{api}/v1/namespaces/checkout/flags/new-checkout?min_revision={rev}"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["definition"]["defaultVariant"], "on", "{got}");
    assert_eq!(got["version"].as_u64(), Some(rev));
    assert_eq!(leader_cluster_id(&http, &api, &token).await, cluster_id);
    unsafe {
        libc::kill(up.id() as i32, libc::SIGTERM);
    }
    assert!(up.wait().unwrap().success());
}

async fn leader_cluster_id(http: &reqwest::Client, api: &str, token: &str) -> String {
    let v: Value = http
        .get(format!("{api}/v1/cluster"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["cluster_id"].as_str().unwrap().to_string()
}

/// Everything a restore must bring back, as the admin API shows it: the namespaces with their
/// flags and segments, SDK key and admin token names, and the cluster revision.
async fn everything(http: &reqwest::Client, api: &str) -> (Value, u64) {
    let get = |path: String| {
        let r = http.get(format!("{api}{path}")).bearer_auth(TOKEN).send();
        async move {
            let r = r.await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let mut out = serde_json::Map::new();
    let namespaces = get("/v1/namespaces".into()).await;
    for ns in namespaces["namespaces"].as_array().unwrap() {
        let name = ns["name"].as_str().unwrap();
        let mut snapshot = get(format!(
            "/v1/namespaces/{name}/snapshot?consistency=linearizable"
        ))
        .await;
        // The only field that names the cluster.
        snapshot.as_object_mut().unwrap().remove("cluster_id");
        let keys = get(format!("/v1/namespaces/{name}/sdk-keys")).await;
        out.insert(
            name.to_string(),
            json!({"snapshot": snapshot, "sdk_keys": keys}),
        );
    }
    out.insert("admin_tokens".into(), get("/v1/admin-tokens".into()).await);
    let revision = get("/v1/cluster".into()).await["revision"]
        .as_u64()
        .unwrap();
    (Value::Object(out), revision)
}

fn flagstaff(args: &[&str]) -> std::process::Output {
    Command::new(exe())
        .args(args)
        .output()
        .expect("run flagstaff")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restores_every_flag_segment_key_and_the_revision_into_a_new_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let http = http();
    let procs = three_nodes(&tmp.path().join("old"), "old", &http).await;
    let api = procs[0].api.clone();
    let send = |api: &str, method: reqwest::Method, path: &str, body: Value| {
        let r = http
            .request(method, format!("{api}{path}"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send();
        async move {
            let r = r.await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap_or_default();
            assert!(status.is_success(), "{status} {body}");
            body
        }
    };
    use reqwest::Method;
    let writes = [
        (
            Method::PUT,
            "/v1/namespaces/web",
            json!({"description": "the site"}),
        ),
        (Method::PUT, "/v1/namespaces/ops", json!({})),
        (
            Method::PUT,
            "/v1/namespaces/web/segments/staff",
            json!({"ends_with": [{"var": "email"}, "@example.com"]}),
        ),
        (
            Method::PUT,
            "/v1/namespaces/web/flags/banner",
            json!({"state": "ENABLED", "variants": {"on": "hi", "off": "hello"}, "defaultVariant": "off",
                "targeting": {"if": [{"$ref": "staff"}, "on", "off"]}}),
        ),
        (
            Method::PUT,
            "/v1/namespaces/ops/flagd",
            json!({"flags": {"kill": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"},
                "limit": {"state": "ENABLED", "variants": {"low": 10, "high": 100}, "defaultVariant": "high"}}}),
        ),
        (
            Method::PATCH,
            "/v1/namespaces/ops/flags/limit",
            json!({"defaultVariant": "low"}),
        ),
    ];
    for (method, path, body) in writes {
        send(&api, method, path, body).await;
    }
    let key = send(
        &api,
        Method::POST,
        "/v1/namespaces/web/sdk-keys",
        json!({"name": "site"}),
    )
    .await;
    let key = key["secret"].as_str().unwrap().to_string();
    send(
        &api,
        Method::POST,
        "/v1/admin-tokens",
        json!({"name": "ci"}),
    )
    .await;
    let (before, revision) = everything(&http, &api).await;
    // What is compared below is all there.
    assert_eq!(
        before["web"]["snapshot"]["flags"]["banner"]["defaultVariant"],
        "off"
    );
    assert!(
        before["web"]["snapshot"]["segments"]["staff"].is_object(),
        "{before}"
    );
    assert_eq!(
        before["ops"]["snapshot"]["flags"]["limit"]["defaultVariant"],
        "low"
    );
    assert_eq!(
        before["web"]["sdk_keys"]["sdk_keys"][0]["name"], "site",
        "{before}"
    );
    assert!(
        before["admin_tokens"].to_string().contains("\"ci\""),
        "{before}"
    );

    // Saved from a follower.
    let leader = leader_of(&http, &api).await.unwrap();
    let follower = procs.iter().find(|p| p.id != leader).unwrap();
    let file = tmp.path().join("cluster.backup");
    let file_arg = file.to_str().unwrap();
    let out = flagstaff(&[
        "backup",
        "save",
        file_arg,
        "--endpoint",
        &follower.api,
        "--token",
        TOKEN,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("at revision {revision}")), "{said}");

    // The old cluster is gone. Disaster recovery from the follower's data dir gives the same
    // state as the backup saved through it.
    let follower_dir = follower.dir.clone();
    drop(procs);
    let forced = tmp.path().join("forced.backup");
    let out = flagstaff(&[
        "cluster",
        "force-new",
        "--data-dir",
        follower_dir.to_str().unwrap(),
        "--out",
        forced.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &Path| {
        flagstaff_raft_store::backup::Backup::from_bytes(&std::fs::read(f).unwrap()).unwrap()
    };
    let (saved, forced) = (read(&file), read(&forced));
    assert_eq!((saved.revision, forced.revision), (revision, revision));
    assert_eq!(forced.state().unwrap(), saved.state().unwrap());
    std::fs::remove_dir_all(tmp.path().join("old")).unwrap();

    // Refused: the old cluster's id, a damaged file, a data dir in use.
    let new = tmp.path().join("new");
    let dir = |id: u64| new.join(format!("node-{id}"));
    let restore = |file: &str, id: u64, cluster: &str| {
        let dir = dir(id);
        flagstaff(&[
            "backup",
            "restore",
            file,
            "--data-dir",
            dir.to_str().unwrap(),
            "--id",
            &id.to_string(),
            "--cluster-id",
            cluster,
        ])
    };
    let out = restore(file_arg, 1, "old");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("new one"));
    let mut damaged = std::fs::read(&file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;
    let damaged_file = tmp.path().join("damaged.backup");
    std::fs::write(&damaged_file, damaged).unwrap();
    let out = restore(damaged_file.to_str().unwrap(), 1, "new");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir(1).exists(), "a refused restore leaves nothing behind");

    for id in 1..=3 {
        let out = restore(file_arg, id, "new");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = restore(file_arg, 1, "new");
    assert!(!out.status.success(), "restored twice into one dir");

    let procs = three_nodes(&new, "new", &http).await;
    for p in &procs {
        let (after, restored_revision) = everything(&http, &p.api).await;
        assert_eq!(after, before, "node {}", p.id);
        assert_eq!(restored_revision, revision, "node {}", p.id);
    }
    assert_eq!(leader_cluster_id(&http, &procs[0].api, TOKEN).await, "new");
    // The old SDK key still reads; the next write continues the revisions.
    let r = http
        .get(format!("{}/v1/namespaces/web/snapshot", procs[1].api))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let written = send(
        &procs[2].api,
        Method::PATCH,
        "/v1/namespaces/ops/flags/limit",
        json!({"defaultVariant": "high"}),
    )
    .await;
    assert_eq!(
        written["revision"].as_u64(),
        Some(revision + 1),
        "{written}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_tls_serves_https_between_nodes_and_to_the_cli_with_its_own_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let client = free_ports(3);
    let peer = free_ports(3);
    let dir = tmp.path().join("data");
    let err = tmp.path().join("up.err");
    let mut up = Command::new(exe())
        .args(["cluster", "up", "--tls", "--nodes", "3"])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--client-port", &client.to_string()])
        .args(["--peer-port", &peer.to_string()])
        .args(["--sync-port", &free_ports(3).to_string()])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(up.stdout.take().unwrap());
    let (banner, _keep_stdout_open) = tokio::task::spawn_blocking({
        let err = err.clone();
        move || (wait_for_line(&mut out, "Press Ctrl-C", &err), out)
    })
    .await
    .unwrap();
    let ca = dir.join("tls").join("ca.pem");
    assert!(banner.contains(&ca.display().to_string()), "{banner}");
    let api = format!("https://127.0.0.1:{client}");
    assert!(banner.contains(&api), "{banner}");

    // Trusted with the generated CA, and only with it; plain HTTP gets no answer.
    let mut trusting = reqwest::Client::builder().timeout(Duration::from_secs(10));
    for cert in reqwest::Certificate::from_pem_bundle(&std::fs::read(&ca).unwrap()).unwrap() {
        trusting = trusting.add_root_certificate(cert);
    }
    let trusting = trusting.build().unwrap();
    for port in client..client + 3 {
        let r = trusting
            .get(format!("https://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "node on {port}");
    }
    assert!(http().get(format!("{api}/healthz")).send().await.is_err());
    let plain = format!("http://127.0.0.1:{client}/healthz");
    assert!(http().get(plain).send().await.is_err());

    // The CLI finds the CA in the data dir; a write through a follower crosses the nodes'
    // mutual TLS, and the other nodes serve it.
    let cli = |args: &[&str], endpoint: &str| {
        let out = Command::new(exe())
            .args(args)
            .args(["--endpoint", endpoint])
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    for port in client..client + 3 {
        let endpoint = format!("https://127.0.0.1:{port}");
        cli(&["namespace", "create", &format!("ns-{port}")], &endpoint);
    }
    let endpoint = format!("https://127.0.0.1:{}", client + 2);
    let listed = cli(&["namespace", "list"], &endpoint);
    for port in client..client + 3 {
        assert!(listed.contains(&format!("ns-{port}")), "{listed}");
    }
    assert!(cli(&["cluster", "status"], &endpoint).contains("voter"));

    // SAFETY: kill(2) on the child this test started.
    unsafe {
        libc::kill(up.id() as i32, libc::SIGTERM);
    }
    assert!(up.wait().unwrap().success());
}

/// SIGTERM to a node this test started, then its exit, within `limit`: how long the drain took.
async fn stop_gracefully(p: &mut Proc, limit: Duration) -> Duration {
    let mut child = p.child.take().expect("a running node");
    let start = Instant::now();
    // SAFETY: kill(2) on a child this test started and still owns.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "node {} exited with {status}", p.id);
            return start.elapsed();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node {} did not stop within {limit:?} of SIGTERM", p.id);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One writer: flag `w{i}` after `w{i-1}`, each under its own idempotency key and retried on
/// the next node until acknowledged. Returns each acknowledgement's time and revision.
async fn write_sequentially(
    http: reqwest::Client,
    apis: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<(String, u64, Instant)>>>,
) {
    use std::sync::atomic::Ordering;
    let started = Instant::now();
    let mut target = 0usize;
    let body =
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"});
    for i in 0..20_000u64 {
        if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(180) {
            return;
        }
        let key = format!("w{i}");
        let revision = loop {
            let r = http
                .put(format!("{}/v1/namespaces/roll/flags/{key}", apis[target]))
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", &key)
                .timeout(Duration::from_secs(5))
                .json(&body)
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => {
                    break r.json::<Value>().await.unwrap()["revision"]
                        .as_u64()
                        .unwrap()
                }
                Ok(r) if r.status().is_client_error() => {
                    panic!("write {key}: {} {}", r.status(), r.text().await.unwrap())
                }
                // Refused (a draining or restarting node), 503 or 504: the same key elsewhere.
                _ => {
                    target = (target + 1) % apis.len();
                    assert!(
                        started.elapsed() < Duration::from_secs(180),
                        "write {key} never acknowledged"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        acked.lock().unwrap().push((key, revision, Instant::now()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_writes_loses_no_write_and_no_sdk_answers_a_default() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let tmp = tempfile::tempdir().unwrap();
    let http = http();
    let mut procs = three_nodes(tmp.path(), "rolling", &http).await;
    let apis: Vec<String> = procs.iter().map(|p| p.api.clone()).collect();
    let admin = |method: reqwest::Method, path: &str, body: Value| {
        let r = http
            .request(method, format!("{}{path}", apis[0]))
            .bearer_auth(TOKEN)
            .json(&body)
            .send();
        async move {
            let r = r.await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };
    admin(reqwest::Method::PUT, "/v1/namespaces/roll", json!({})).await;
    let on =
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"});
    admin(
        reqwest::Method::PUT,
        "/v1/namespaces/roll/flags/feature",
        on,
    )
    .await;
    let key = admin(
        reqwest::Method::POST,
        "/v1/namespaces/roll/sdk-keys",
        json!({"name": "apps"}),
    )
    .await["secret"]
        .as_str()
        .unwrap()
        .to_string();

    // Two applications evaluating every 2 ms. A fault: an error, or the caller's default.
    let faults = Arc::new(AtomicU64::new(0));
    let evaluations = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut apps = Vec::new();
    for n in 0..2 {
        let client = flagstaff_client::Client::builder("roll", key.clone())
            .endpoints(apis.clone())
            .lkg_file(tmp.path().join(format!("app-{n}.lkg")))
            .build()
            .unwrap();
        client
            .wait_ready(Duration::from_secs(15))
            .await
            .expect("the SDK is ready");
        let (faults, evaluations, stop) = (faults.clone(), evaluations.clone(), stop.clone());
        apps.push(tokio::spawn(async move {
            let ctx = flagstaff_client::context().with_targeting_key(format!("user-{n}"));
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let d = client.bool_details("feature", &ctx, false);
                if d.reason == flagstaff_client::Reason::Error || d.variant.is_none() || !d.value {
                    faults.fetch_add(1, Ordering::Relaxed);
                }
                evaluations.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            client.close();
        }));
    }

    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = tokio::spawn(write_sequentially(
        http.clone(),
        apis.clone(),
        stop.clone(),
        acked.clone(),
    ));
    let acks = || acked.lock().unwrap().len();
    let more_acks = |n: usize| {
        let from = acks();
        let acked = acked.clone();
        wait_until("writes to go on", Duration::from_secs(60), move || {
            let done = acked.lock().unwrap().len() >= from + n;
            async move { done }
        })
    };
    more_acks(50).await;

    // Followers first, the leader last, as an operator rolls a cluster.
    let leader = leader_of(&http, &apis[0]).await.unwrap();
    let mut order: Vec<usize> = (0..3).filter(|&i| procs[i].id != leader).collect();
    order.push((leader - 1) as usize);
    let mut report = Vec::new();
    for i in order {
        let was_leader = procs[i].id == leader;
        let from = Instant::now();
        let drain = stop_gracefully(&mut procs[i], Duration::from_secs(15)).await;
        spawn_node(&mut procs[i], None, tmp.path());
        let ready = format!("{}/readyz", procs[i].api);
        wait_until(
            "the restarted node's /readyz",
            Duration::from_secs(60),
            || {
                let r = http.get(&ready).send();
                async move { r.await.is_ok_and(|r| r.status() == 200) }
            },
        )
        .await;
        // Back: it serves, from its own state, the latest write acknowledged by now.
        let (last, _) = {
            let a = acked.lock().unwrap();
            let l = a.last().unwrap();
            (l.0.clone(), l.1)
        };
        let url = format!(
            "{}/v1/namespaces/roll/flags/{last}?consistency=bounded",
            procs[i].api
        );
        wait_until(
            "the restarted node to catch up",
            Duration::from_secs(60),
            || {
                let r = http.get(&url).bearer_auth(TOKEN).send();
                async move { r.await.is_ok_and(|r| r.status() == 200) }
            },
        )
        .await;
        more_acks(50).await;
        let until = Instant::now();
        let leader_now = leader_of(&http, &procs[i].api).await;
        // The longest wait between two acknowledgements around this restart.
        let a = acked.lock().unwrap();
        let times: Vec<Instant> = a.iter().map(|x| x.2).collect();
        let first = times.iter().position(|t| *t >= from).unwrap_or(0).max(1) - 1;
        let pause = times[first..]
            .windows(2)
            .take_while(|w| w[0] <= until)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap();
        drop(a);
        if was_leader {
            // It handed its leadership over before it stopped, so it came back as a follower.
            assert!(
                leader_now.is_some_and(|l| l != procs[i].id),
                "after the leader's restart the leader is {leader_now:?}"
            );
        }
        report.push((procs[i].id, was_leader, drain, pause, leader_now));
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    for app in apps {
        app.await.unwrap();
    }

    // Every acknowledged write is on every node, at its acknowledged revision.
    let acked: Vec<(String, u64)> = acked
        .lock()
        .unwrap()
        .iter()
        .map(|(k, r, _)| (k.clone(), *r))
        .collect();
    every_node_holds(&http, &procs, tmp.path(), "roll", &acked).await;
    let evaluations = evaluations.load(Ordering::Relaxed);
    let faults = faults.load(Ordering::Relaxed);
    for (id, was_leader, drain, pause, leader_now) in &report {
        println!(
            "restart of node {id}{}: drain {drain:?}, longest write pause {pause:?}, leader after: {leader_now:?}",
            if *was_leader { " (the leader)" } else { "" }
        );
    }
    println!(
        "{} writes acknowledged, 0 lost; {evaluations} SDK evaluations, {faults} defaults or errors",
        acked.len()
    );
    assert!(evaluations > 1_000, "only {evaluations} evaluations");
    assert_eq!(
        faults, 0,
        "SDK evaluations that answered a default or an error"
    );
}
