//! The README's "Running a cluster by hand", run as written on three hosts of their own: one
//! network namespace per node (`10.0.0.1`–`10.0.0.3`) and one for the operator and an
//! application (`10.0.0.10`), joined by veth pairs to a bridge in a fifth, "switch", namespace,
//! so the machine's own network is not touched. The test reads the section's shell block from
//! README.md and runs every command in it: the `tls` commands make the PKI, `serve` starts node
//! 1 in its namespace (nodes 2 and 3 with their id, addresses and files, as the README says),
//! `export` sets the environment of the commands after it, and the rest run on the operator's
//! host. Then it checks what an operator would: each node answers over HTTPS with the CA, the
//! cluster has three voters, a write through one node is read from every node, and an SDK on the
//! application host follows the flag, fails over when the node it streams from is cut off the
//! network, and never answers a default.
//!
//! It needs root (network namespaces) and iproute2, which `scripts/setup.sh` installs. Without
//! them it says so and passes, except under CI (`CI` set), where it fails.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flagstaff_client::{context, Client, Reason};
use serde_json::Value;

const SECRET: &str = "netns-test-secret";
const ADMIN_TOKEN: &str = "netns-test-admin-token";
const APP_ADDR: &str = "10.0.0.10";

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_flagstaff")
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The five namespaces; removed (with their links) when dropped.
struct Net {
    prefix: String,
    made: Vec<String>,
}

impl Net {
    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    /// The switch, and one host per `(name, address)` plugged into it.
    fn build(hosts: &[(&str, &str)]) -> Result<Net, String> {
        let mut net = Net {
            prefix: format!("fs{}-", std::process::id()),
            made: Vec::new(),
        };
        let sw = net.ns("sw");
        ip(&["netns", "add", &sw])?;
        net.made.push(sw.clone());
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (host, addr) in hosts {
            let ns = net.ns(host);
            ip(&["netns", "add", &ns])?;
            net.made.push(ns.clone());
            ip(&[
                "-n", &sw, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", host, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Unplugs (or plugs back) a host's cable at the switch.
    fn cable(&self, host: &str, plugged: bool) {
        let state = if plugged { "up" } else { "down" };
        ip(&["-n", &self.ns("sw"), "link", "set", host, state]).unwrap();
    }

    /// Moves the calling thread (and the threads it starts later) into a host's namespace.
    fn enter(&self, host: &str) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.ns(host))).unwrap();
        // SAFETY: setns(2) on an open namespace file; it changes only this thread's network
        // namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Processes started in the namespaces; killed when dropped (before the namespaces go).
#[derive(Default)]
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The shell block of the README's "Running a cluster by hand", as commands (continuations
/// joined, comments dropped).
fn readme_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = readme
        .split_once("## Running a cluster by hand")
        .expect("the README has the section")
        .1;
    let block = section
        .split_once("```sh\n")
        .unwrap()
        .1
        .split_once("```")
        .unwrap()
        .0;
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = match line.find(" #").or(line.starts_with('#').then_some(0)) {
            Some(at) => &line[..at],
            None => line,
        };
        let line = line.trim();
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    commands.push(current.trim().to_string());
                }
                current.clear();
            }
        }
    }
    commands
}

/// Shell words of one command: whitespace splits, `'…'` is literal, `"…"` and bare words
/// expand `$NAME` from `env`.
fn words(command: &str, env: &HashMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = command.chars().peekable();
    let expand = |chars: &mut std::iter::Peekable<std::str::Chars>, w: &mut String| {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if !(c.is_ascii_alphanumeric() || c == '_') {
                break;
            }
            name.push(c);
            chars.next();
        }
        w.push_str(
            env.get(&name)
                .unwrap_or_else(|| panic!("${name} is not set")),
        );
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = word.take() {
                    out.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '$' => expand(&mut chars, w),
                        c => w.push(c),
                    }
                }
            }
            '$' => expand(&mut chars, word.get_or_insert_with(String::new)),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(word);
    out
}

/// Runs a `flagstaff` command to completion in `dir`, with `env` (in network namespace `ns`
/// when given): its output, or its output and errors.
fn flagstaff_in(
    ns: Option<&str>,
    args: &[String],
    dir: &Path,
    env: &HashMap<String, String>,
) -> Result<String, String> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, exe()]);
            c
        }
        None => Command::new(exe()),
    };
    let out = cmd
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Node 1's `serve` words rewritten for node `n`: its id, addresses, files and data dir.
fn serve_words_for(node1: &[String], n: u32, data_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = node1
        .iter()
        .map(|w| {
            w.replace("10.0.0.1:", &format!("10.0.0.{n}:"))
                .replace("node-1", &format!("node-{n}"))
        })
        .collect();
    for i in 0..out.len() {
        match out[i].as_str() {
            "--id" => out[i + 1] = n.to_string(),
            "--data-dir" => out[i + 1] = data_dir.display().to_string(),
            _ => {}
        }
    }
    out
}

fn https(ca: &Path) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(5));
    for cert in reqwest::Certificate::from_pem_bundle(&std::fs::read(ca).unwrap()).unwrap() {
        b = b.add_root_certificate(cert);
    }
    b.build().unwrap()
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    let r = http.get(url).bearer_auth(ADMIN_TOKEN).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Open watch streams on a node, from its `/metrics`.
async fn watch_streams(http: &reqwest::Client, api: &str) -> Option<u64> {
    let text = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("flagstaff_watch_streams "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

#[test]
fn the_readme_cluster_runs_on_three_hosts_with_tls_and_an_sdk_fails_over_a_cut_cable() {
    let hosts = [
        ("n1", "10.0.0.1"),
        ("n2", "10.0.0.2"),
        ("n3", "10.0.0.3"),
        ("app", APP_ADDR),
    ];
    let net = match Net::build(&hosts) {
        Ok(net) => net,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: network namespaces need root and iproute2 ({e})");
            return;
        }
        Err(e) => panic!("cannot make the test network: {e}"),
    };
    let mut procs = Procs::default();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_path_buf();
    let host_dir = |host: &str| -> PathBuf {
        let d = tmp.path().join(host);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    // The environment the README asks for on every node, and what `export` adds.
    let mut env: HashMap<String, String> = HashMap::from([
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ("FLAGSTAFF_CLUSTER_SECRET".into(), SECRET.into()),
        ("FLAGSTAFF_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
    ]);
    let mut outputs: Vec<(Vec<String>, String)> = Vec::new();
    let commands = readme_commands();
    assert!(commands.len() >= 8, "the README block: {commands:?}");
    for command in &commands {
        if let Some(assignments) = command.strip_prefix("export ") {
            for a in words(assignments, &env) {
                let (k, v) = a.split_once('=').unwrap();
                env.insert(k.into(), v.into());
            }
            continue;
        }
        let w = words(command, &env);
        assert_eq!(
            w[0], "flagstaff",
            "a command the test does not know: {command}"
        );
        let args = w[1..].to_vec();
        match (args[0].as_str(), args.get(1).map(String::as_str)) {
            ("tls", _) => {
                flagstaff_in(None, &args, &home, &env).unwrap_or_else(|e| panic!("{command}: {e}"));
            }
            ("serve", _) => {
                // "copy pki/ca.pem, pki/node-N.pem and pki/node-N-key.pem to node N"
                for n in 1..=3u32 {
                    let dir = host_dir(&format!("n{n}"));
                    for f in [
                        "ca.pem".to_string(),
                        format!("node-{n}.pem"),
                        format!("node-{n}-key.pem"),
                    ] {
                        std::fs::copy(home.join("pki").join(&f), dir.join(&f)).unwrap();
                    }
                    let serve = serve_words_for(&args, n, &dir.join("data"));
                    let log = std::fs::File::create(dir.join("node.log")).unwrap();
                    let child = Command::new("ip")
                        .args(["netns", "exec", &net.ns(&format!("n{n}")), exe()])
                        .args(&serve)
                        .current_dir(&dir)
                        .env_clear()
                        .envs(&env)
                        .stdin(Stdio::null())
                        .stdout(log.try_clone().unwrap())
                        .stderr(log)
                        .spawn()
                        .unwrap();
                    procs.0.push(child);
                }
            }
            _ => {
                // The operator's commands run on the application host, with the CA copied there.
                let dir = host_dir("app");
                std::fs::copy(home.join("pki/ca.pem"), dir.join("ca.pem")).unwrap();
                // As an operator would, it runs a command again while it fails (the nodes are
                // still starting, or electing a leader), and the status until all three vote.
                let deadline = Instant::now() + Duration::from_secs(30);
                let out = loop {
                    let out = flagstaff_in(Some(&net.ns("app")), &args, &dir, &env);
                    let complete = match &out {
                        Ok(text) if args[..2] == ["cluster", "status"] => {
                            text.matches("voter").count() == 3
                        }
                        Ok(_) => true,
                        Err(_) => false,
                    };
                    if complete || Instant::now() > deadline {
                        break out.unwrap_or_else(|e| panic!("{command}: {e}"));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                };
                outputs.push((args, out));
            }
        }
    }
    // The operator's view: three voters and a namespace, over HTTPS, and the SDK key printed.
    let status = output_of(&outputs, &["cluster", "status"]);
    assert_eq!(status.matches("voter").count(), 3, "{status}");
    let key_out = output_of(&outputs, &["key", "create"]);
    let sdk_key = key_out
        .lines()
        .find(|l| l.starts_with("fsk_"))
        .unwrap_or_else(|| panic!("no key in {key_out}"))
        .to_string();
    let (namespace, flag_key) = flag_set(&outputs);
    let ca = host_dir("app").join("ca.pem");
    // From here on this thread, its runtime and everything it starts run on the application
    // host.
    let app = std::thread::scope(|s| {
        s.spawn(|| {
            net.enter("app");
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(application(&net, &ca, &sdk_key, &namespace, &flag_key))
        })
        .join()
    });
    if let Err(panic) = app {
        for n in 1..=3 {
            let log = std::fs::read_to_string(host_dir(&format!("n{n}")).join("node.log"));
            eprintln!("--- node {n} log ---\n{}", log.unwrap_or_default());
        }
        std::panic::resume_unwind(panic);
    }
    drop(procs);
    drop(net);
}

fn output_of(outputs: &[(Vec<String>, String)], prefix: &[&str]) -> String {
    outputs
        .iter()
        .find(|(args, _)| {
            args.iter().zip(prefix).all(|(a, p)| a == p) && args.len() >= prefix.len()
        })
        .map(|(_, out)| out.clone())
        .unwrap_or_else(|| panic!("the README block has no `flagstaff {}`", prefix.join(" ")))
}

/// The namespace and key of the README's `flag set`.
fn flag_set(outputs: &[(Vec<String>, String)]) -> (String, String) {
    let (args, _) = outputs
        .iter()
        .find(|(args, _)| args[0] == "flag" && args[1] == "set")
        .expect("the README block sets a flag");
    (args[2].clone(), args[3].clone())
}

/// On the application host: reads from every node, then an SDK that must follow a change
/// through a cut cable without ever answering its default.
async fn application(net: &Net, ca: &Path, sdk_key: &str, namespace: &str, flag: &str) {
    let http = https(ca);
    let apis: Vec<String> = (1..=3)
        .map(|n| format!("https://10.0.0.{n}:7701"))
        .collect();
    let url = |api: &str| format!("{api}/v1/namespaces/{namespace}/flags/{flag}");
    // The README's write is on every node (bounded reads from each node's own state).
    for api in &apis {
        let u = format!("{}?consistency=bounded", url(api));
        wait_for("the flag on every node", Duration::from_secs(10), || {
            let (h, u) = (http.clone(), u.clone());
            async move { get_json(&h, &u).await.filter(|v| v["key"] == flag) }
        })
        .await;
    }
    let client = Client::builder(namespace, sdk_key)
        .endpoints(apis.clone())
        .ca_file(ca)
        .heartbeat_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    client
        .wait_ready(Duration::from_secs(15))
        .await
        .expect("the SDK is ready over HTTPS");
    let ctx = context().with_targeting_key("user-1");
    let first = client.bool_details(flag, &ctx, false);
    assert!(first.value && first.reason != Reason::Error, "{first:?}");

    // Evaluate all along, as an application does. Faults: an error, the caller's default (no
    // variant), or the old value once the new one was seen (the SDK going back in time).
    let bad = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let evaluator = {
        let (client, bad, total, stop) = (client.clone(), bad.clone(), total.clone(), stop.clone());
        let flag = flag.to_string();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut seen_off = false;
            while !stop.load(Ordering::Relaxed) && total.load(Ordering::Relaxed) < 1_000_000 {
                let d = client.bool_details(&flag, &ctx, false);
                if d.reason == Reason::Error || d.variant.is_none() || (seen_off && d.value) {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                seen_off |= !d.value;
                total.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    // Cut the cable of the node the SDK streams from.
    let streaming = wait_for(
        "the SDK's stream on a node",
        Duration::from_secs(10),
        || {
            let (h, apis) = (http.clone(), apis.clone());
            async move {
                for (i, api) in apis.iter().enumerate() {
                    if watch_streams(&h, api).await.unwrap_or(0) > 0 {
                        return Some(i);
                    }
                }
                None
            }
        },
    )
    .await;
    let cut = format!("n{}", streaming + 1);
    net.cable(&cut, false);
    let cut_at = Instant::now();
    // A change written through another node, once the rest of the cluster has a leader.
    let other = &apis[(streaming + 1) % 3];
    let body = serde_json::json!({
        "state": "ENABLED",
        "variants": {"on": true, "off": false},
        "defaultVariant": "off",
    });
    wait_for(
        "a write with the cable cut",
        Duration::from_secs(20),
        || {
            let r = http
                .put(url(other))
                .bearer_auth(ADMIN_TOKEN)
                .header("Idempotency-Key", "netns-cut-write")
                .json(&body)
                .send();
            async move { r.await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        },
    )
    .await;
    // Switched off: the SDK must see it through another node although its node is silent.
    wait_for(
        "the SDK to follow the change",
        Duration::from_secs(30),
        || {
            let v = client.bool(flag, &ctx, true);
            async move { (!v).then_some(()) }
        },
    )
    .await;
    eprintln!(
        "SDK followed a change {:?} after the cable of node {} (its stream) was cut",
        cut_at.elapsed(),
        streaming + 1
    );
    stop.store(true, Ordering::Relaxed);
    evaluator.await.unwrap();
    let evaluated = total.load(Ordering::Relaxed);
    assert!(evaluated > 100, "only {evaluated} evaluations");
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "evaluations that gave an error, a default or an older value, of {evaluated}"
    );

    // Plugged back in, the cut node catches up and serves the change.
    net.cable(&cut, true);
    let back = format!("{}?consistency=bounded", url(&apis[streaming]));
    wait_for("the cut node to catch up", Duration::from_secs(30), || {
        let (h, u) = (http.clone(), back.clone());
        async move {
            get_json(&h, &u)
                .await
                .filter(|v| v["definition"]["defaultVariant"] == "off")
        }
    })
    .await;
    client.close();
}
