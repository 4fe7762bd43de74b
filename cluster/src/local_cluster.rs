//! `flagstaff cluster up`: a local 3- or 5-node cluster of child processes, in the foreground.
//!
//! First start (every node dir pristine): generates the cluster id, secret and admin token,
//! starts the nodes and initialises the cluster once. Later starts reuse the data: no re-init,
//! no re-adding members. A mix of pristine and used dirs is refused, since a voter whose data
//! was lost must not rejoin under its old id. Nodes that die are reported, not restarted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use flagstaff_node::config::TlsFiles;
use flagstaff_raft_store::marker;

use rand::RngCore;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::pki;

#[derive(Args)]
pub struct UpArgs {
    /// Number of voters: 3 or 5 (1 for a quick experiment).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Where node data, logs, the admin token and the cluster secret live.
    #[arg(long, env = "FLAGSTAFF_DATA_DIR", default_value = "flagstaff-data")]
    data_dir: PathBuf,
    /// Client port of node 1; node N listens on BASE+N-1.
    #[arg(long, default_value_t = 7701)]
    client_port: u16,
    /// Peer port of node 1; node N listens on BASE+N-1.
    #[arg(long, default_value_t = 7801)]
    peer_port: u16,
    /// flagd gRPC sync port of node 1 (`--listen-sync`); node N listens on BASE+N-1.
    #[arg(long, default_value_t = 7901)]
    sync_port: u16,
    /// Loopback address the nodes bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Serve HTTPS and mutual TLS between the nodes, with a throwaway CA and node certificates
    /// generated into DATA_DIR/tls (kept and reused on restart). The CLI trusts
    /// DATA_DIR/tls/ca.pem by itself; give SDKs and curl that file.
    #[arg(long)]
    tls: bool,
    /// A namespace the nodes' sync listeners serve without an SDK key, for flagd providers
    /// that cannot send one (repeat for more; see `serve --sync-keyless-namespace`).
    #[arg(long, value_name = "NS")]
    sync_keyless_namespace: Vec<String>,
}

/// `DATA_DIR/tls`, a [`pki::Dir`]: the CA and one certificate and key per node, `node-N`.
struct LocalTls {
    dir: pki::Dir,
}

impl LocalTls {
    fn ca(&self) -> PathBuf {
        self.dir.ca().cert
    }

    fn node(&self, id: u64) -> TlsFiles {
        self.dir.files(&format!("node-{id}"))
    }

    /// Reuses the files when all are there; otherwise issues what is missing, with the CA
    /// there or a new one, for `host`, `localhost` and 127.0.0.1.
    fn ensure(data_dir: &Path, nodes: usize, host: &str) -> anyhow::Result<Self> {
        let tls = Self {
            dir: pki::Dir(data_dir.join("tls")),
        };
        let ids = 1..=nodes as u64;
        let ca_files = tls.dir.ca();
        let has_ca = ca_files.cert.exists() && ca_files.key.exists();
        if has_ca
            && ids
                .clone()
                .all(|id| tls.node(id).cert.exists() && tls.node(id).key.exists())
        {
            return Ok(tls);
        }
        let ca = match has_ca {
            true => tls.dir.load_ca()?,
            false => {
                // A CA certificate without its key cannot sign: start over with a new CA.
                let _ = std::fs::remove_file(&ca_files.cert);
                tls.dir.create_ca("Flagstaff local cluster CA")?
            }
        };
        let mut names = vec![host.to_string(), "localhost".into(), "127.0.0.1".into()];
        names.sort();
        names.dedup();
        for id in ids {
            let name = format!("node-{id}");
            tls.dir.write(&name, &ca.issue(&name, &names)?)?;
        }
        Ok(tls)
    }

    /// The `serve` options of node `id`: both listeners on TLS, the CA trusted between nodes.
    fn serve_args(&self, id: u64) -> Vec<std::ffi::OsString> {
        let files = self.node(id);
        let mut args = Vec::new();
        for (option, path) in [
            ("--tls-cert", &files.cert),
            ("--tls-key", &files.key),
            ("--peer-tls-cert", &files.cert),
            ("--peer-tls-key", &files.key),
            ("--peer-trusted-ca", &self.ca()),
        ] {
            args.push(option.into());
            args.push(path.into());
        }
        args
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads `path`, or creates it with a fresh random secret (mode 0600).
fn secret_file(path: &Path) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        return Ok(s.trim().to_string());
    }
    let s = random_hex(24);
    write_private(path, &format!("{s}\n"))?;
    Ok(s)
}

/// Writes `text` to `path`, readable by its owner only.
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

struct NodeProc {
    id: u64,
    api: String,
    peer: String,
    child: Child,
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    if ![1, 3, 5].contains(&args.nodes) {
        bail!("--nodes must be 3 or 5 (or 1 for a quick experiment)");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let dirs: Vec<PathBuf> = (1..=args.nodes)
        .map(|i| data_dir.join(format!("node-{i}")))
        .collect();
    let pristine: Vec<bool> = dirs.iter().map(|d| marker::is_pristine(d)).collect();
    let fresh = pristine.iter().all(|p| *p);
    if !fresh && pristine.iter().any(|p| *p) {
        let lost: Vec<String> = dirs
            .iter()
            .zip(&pristine)
            .filter(|(_, p)| **p)
            .map(|(d, _)| d.display().to_string())
            .collect();
        bail!(
            "some node data dirs are empty while others hold data: {}. A voter whose data was lost must not \
             rejoin under its old id; remove it from the cluster and add a new node instead (or delete the whole \
             data dir to start over).",
            lost.join(", ")
        );
    }
    let secret = secret_file(&data_dir.join("cluster.secret"))?;
    let token = secret_file(&data_dir.join("admin.token"))?;
    let cluster_id = if fresh { Some(random_hex(8)) } else { None };
    let exe = std::env::current_exe().context("locating the flagstaff binary")?;
    let tls = match args.tls {
        true => Some(LocalTls::ensure(&data_dir, args.nodes, &args.host)?),
        false => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };

    let mut procs = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = i as u64 + 1;
        let client = format!("{}:{}", args.host, args.client_port + i as u16);
        let peer = format!("{}:{}", args.host, args.peer_port + i as u16);
        let sync = format!("{}:{}", args.host, args.sync_port + i as u16);
        let log = std::fs::File::create(data_dir.join(format!("node-{id}.log")))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen-client", &client, "--listen-peer", &peer])
            .args(["--listen-sync", &sync])
            .args(
                args.sync_keyless_namespace
                    .iter()
                    .flat_map(|ns| ["--sync-keyless-namespace", ns]),
            )
            .env("FLAGSTAFF_CLUSTER_SECRET", &secret)
            .env("FLAGSTAFF_ADMIN_TOKEN", &token)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(c) = &cluster_id {
            cmd.args(["--cluster-id", c]);
        }
        if let Some(tls) = &tls {
            cmd.args(tls.serve_args(id));
        }
        let child = cmd.spawn().context("starting a node")?;
        procs.push(NodeProc {
            id,
            api: format!("{scheme}://{client}"),
            peer: format!("{scheme}://{peer}"),
            child,
        });
    }

    let ca = tls.as_ref().map(LocalTls::ca);
    let result = run_cluster(&data_dir, ca.as_deref(), &token, fresh, &mut procs).await;
    stop_all(&mut procs).await;
    result
}

async fn run_cluster(
    data_dir: &Path,
    ca: Option<&Path>,
    token: &str,
    fresh: bool,
    procs: &mut [NodeProc],
) -> anyhow::Result<()> {
    let http = crate::client::http_client(ca, Duration::from_secs(5))?;
    for p in procs.iter_mut() {
        wait_answering(&http, p, "/healthz", "healthy").await?;
    }
    if fresh {
        let members: Vec<Value> = procs
            .iter()
            .map(|p| json!({"id": p.id, "api_addr": p.api, "peer_addr": p.peer}))
            .collect();
        let resp = http
            .post(format!("{}/v1/cluster/init", procs[0].api))
            .bearer_auth(token)
            .json(&json!({ "members": members }))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!(
                "initialising the cluster failed: {}",
                resp.text().await.unwrap_or_default()
            );
        }
    }
    let leader = wait_leader(&http, procs, token).await?;
    // So that the banner below means every node serves reads.
    for p in procs.iter_mut() {
        wait_answering(&http, p, "/readyz", "ready").await?;
    }

    println!(
        "Flagstaff cluster of {} nodes is up (leader: node {leader}).",
        procs.len()
    );
    for p in procs.iter() {
        println!(
            "  node {}  api {}  peer {}  pid {}",
            p.id,
            p.api,
            p.peer,
            p.child.id().unwrap_or(0)
        );
    }
    println!(
        "Admin token: {token}  (also in {})",
        data_dir.join("admin.token").display()
    );
    println!(
        "Console:     {}/ui  (any node; sign in with the admin token)",
        procs[0].api
    );
    println!("Node logs:   {}/node-N.log", data_dir.display());
    let curl_ca = match ca {
        Some(ca) => {
            println!(
                "TLS:         CA certificate {} (give it to SDKs, curl --cacert, browsers)",
                ca.display()
            );
            format!(" --cacert {}", ca.display())
        }
        None => String::new(),
    };
    println!(
        "Try:  curl -s{curl_ca} -H \"Authorization: Bearer $(cat {})\" {}/v1/cluster",
        data_dir.join("admin.token").display(),
        procs[0].api
    );
    println!("Press Ctrl-C to stop.");

    // Run until asked to stop; report nodes that exit on their own without restarting them.
    let mut reported = vec![false; procs.len()];
    let mut stop = std::pin::pin!(crate::local_cluster::terminated());
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (i, p) in procs.iter_mut().enumerate() {
                    if !reported[i] {
                        if let Ok(Some(status)) = p.child.try_wait() {
                            eprintln!("node {} exited ({status}); not restarting it", p.id);
                            reported[i] = true;
                        }
                    }
                }
            }
        }
    }
    // The terminal may be gone by now; a failed write must not turn a clean stop into a panic.
    let _ = writeln!(std::io::stdout(), "stopping nodes…");
    Ok(())
}

/// Waits until node `p` answers `path` with a success (`/healthz`: it serves; `/readyz`: it
/// knows the leader and has caught up), within 60 s; fails early if the node exits.
async fn wait_answering(
    http: &reqwest::Client,
    p: &mut NodeProc,
    path: &str,
    state: &str,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(status)) = p.child.try_wait() {
            bail!(
                "node {} exited during start-up ({status}); see its log",
                p.id
            );
        }
        if let Ok(r) = http.get(format!("{}{path}", p.api)).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "node {} did not become {state} within 60 s; see its log",
        p.id
    )
}

async fn wait_leader(
    http: &reqwest::Client,
    procs: &[NodeProc],
    token: &str,
) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        for p in procs {
            let resp = http
                .get(format!("{}/v1/cluster", p.api))
                .bearer_auth(token)
                .send()
                .await;
            if let Ok(r) = resp {
                if let Ok(v) = r.json::<Value>().await {
                    if let Some(l) = v["leader"].as_u64() {
                        return Ok(l);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no leader was elected within 60 s; see the node logs")
}

async fn stop_all(procs: &mut [NodeProc]) {
    for p in procs.iter() {
        if let Some(pid) = p.child.id() {
            // SAFETY: plain kill(2) on a child we started and still own.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
    for p in procs.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = p.child.kill().await;
            }
        }
    }
}
