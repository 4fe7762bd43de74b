//! Real `flagstaff` processes, each on its own loopback address with a proxy in front of its
//! peer listener. The harness signals only the PIDs it spawned (never by name), and every
//! child is killed when the harness drops it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::proxy::Proxy;

pub const ADMIN_TOKEN: &str = "jepsen-admin-token";
const SECRET: &str = "jepsen-cluster-secret";

/// Node `id` lives on 127.0.0.(40 + id): its own address, so proxies can tell nodes apart,
/// and away from the addresses the in-process tests use.
pub fn node_ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 40 + id as u8))
}

/// Two free ports on `ip` for a node's client and peer listeners, below the kernel's ephemeral
/// range (32768 and up): a port the kernel handed out is one that an outgoing connection from
/// `ip` (a proxy's, a node's) may take again before the node binds it.
fn free_ports(ip: IpAddr) -> anyhow::Result<(u16, u16)> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let (a, b) = (rng.gen_range(20_000..32_000), rng.gen_range(20_000..32_000));
        if a == b {
            continue;
        }
        let first = std::net::TcpListener::bind((ip, a));
        let second = std::net::TcpListener::bind((ip, b));
        if first.is_ok() && second.is_ok() {
            return Ok((a, b));
        }
    }
    bail!("no two free ports on {ip} between 20000 and 32000")
}

/// How a node process currently is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Running,
    Paused,
    Killed,
    /// Removed from the membership and stopped; its id and data dir are never used again.
    Removed,
}

/// A node's place in the membership, as the harness last changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Voter,
    Learner,
}

/// A node's client API base URL and id.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub id: u64,
    pub api: String,
}

/// The current members' client endpoints, shared with the workloads: nodes added at runtime
/// join it, removed ones leave it.
pub type Endpoints = Arc<RwLock<Vec<Endpoint>>>;

/// A snapshot of the current endpoints (never empty while the cluster has a member).
pub fn endpoints_now(eps: &Endpoints) -> Vec<Endpoint> {
    eps.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Called with each node added at runtime (the run starts a watcher on it).
pub type OnNewNode = Box<dyn Fn(Endpoint) + Send + Sync>;

pub struct NodeProc {
    pub id: u64,
    pub api: String,
    client: SocketAddr,
    peer: SocketAddr,
    pub proxy: Proxy,
    /// The peer URL the node advertises: its proxy, or its own peer listener when the cluster
    /// was started with direct peer links.
    advertised_peer: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    pub health: Health,
    pub role: Role,
}

impl NodeProc {
    fn peer_url(&self) -> String {
        self.advertised_peer.clone()
    }
}

/// How every node of a cluster is started.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Extra environment (the fault-injection switches).
    pub env: Vec<(String, String)>,
    /// Extra `serve` arguments (e.g. `--snapshot-every 50`).
    pub args: Vec<String>,
    /// The cluster id given to pristine nodes (and expected of seeded ones); `jepsen` if none.
    pub cluster_id: Option<String>,
}

/// A cluster of processes the harness owns.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    bin: PathBuf,
    dir: PathBuf,
    opts: NodeOptions,
    pub http: reqwest::Client,
    /// The members' client endpoints (voters and learners), kept current.
    pub endpoints: Endpoints,
    pub on_new_node: Option<OnNewNode>,
    /// Peers talk to each other directly, bypassing the proxies (no partitions possible).
    direct_peers: bool,
}

impl Cluster {
    /// Starts `n` pristine voters from `bin` under `dir`, initialises them as one cluster, then
    /// adds `learners` more nodes as learners.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        n: u64,
        learners: u64,
        opts: NodeOptions,
    ) -> anyhow::Result<Cluster> {
        Self::start_with(bin, dir, n, learners, opts, false).await
    }

    /// As [`Cluster::start`]; with `direct_peers` the nodes advertise their own peer listeners,
    /// so Raft traffic skips the proxies (for measurements; partitions then cut nothing).
    pub async fn start_with(
        bin: &Path,
        dir: &Path,
        n: u64,
        learners: u64,
        opts: NodeOptions,
        direct_peers: bool,
    ) -> anyhow::Result<Cluster> {
        let mut c = Cluster {
            nodes: Vec::new(),
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            opts,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(4)
                .build()?,
            endpoints: Arc::default(),
            on_new_node: None,
            direct_peers,
        };
        for _ in 1..=n {
            c.new_slot(Role::Voter).await?;
        }
        for id in 1..=n {
            c.spawn(id, true)?;
        }
        for id in 1..=n {
            c.wait_healthy(id, Duration::from_secs(30)).await?;
        }
        let members: Vec<Value> = c
            .nodes
            .iter()
            .map(|n| json!({"id": n.id, "api_addr": n.api, "peer_addr": n.peer_url()}))
            .collect();
        let (status, body) = c
            .call(
                1,
                reqwest::Method::POST,
                "/v1/cluster/init",
                Some(json!({"members": members})),
            )
            .await?;
        if status != 200 {
            bail!("cluster init answered {status}: {body}");
        }
        c.wait_leader(&c.ids(), Duration::from_secs(30)).await?;
        for _ in 0..learners {
            let id = c.start_node().await?;
            c.add_learner(id).await?;
        }
        Ok(c)
    }

    /// A slot for the next node id (addresses, proxy, dir); ids are never reused.
    async fn new_slot(&mut self, role: Role) -> anyhow::Result<u64> {
        let id = self.nodes.len() as u64 + 1;
        if id > 200 {
            bail!("out of loopback addresses for node {id}");
        }
        let ip = node_ip(id);
        let (client, peer) = free_ports(ip)?;
        let (client, peer) = (SocketAddr::new(ip, client), SocketAddr::new(ip, peer));
        let proxy = Proxy::start(ip, peer).await?;
        let api = format!("http://{client}");
        let advertised_peer = if self.direct_peers {
            format!("http://{peer}")
        } else {
            format!("http://{}", proxy.listen)
        };
        self.nodes.push(NodeProc {
            id,
            api: api.clone(),
            client,
            peer,
            proxy,
            advertised_peer,
            dir: self.dir.join(format!("n{id}")),
            log: self.dir.join(format!("n{id}.log")),
            child: None,
            health: Health::Killed,
            role,
        });
        self.endpoints
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Endpoint { id, api });
        Ok(id)
    }

    /// Starts a brand-new node (next id, empty dir) that is not yet a member; see
    /// [`Cluster::add_learner`].
    pub async fn start_node(&mut self) -> anyhow::Result<u64> {
        let id = self.new_slot(Role::Learner).await?;
        self.spawn(id, true)?;
        self.wait_healthy(id, Duration::from_secs(30)).await?;
        if let Some(f) = &self.on_new_node {
            f(Endpoint {
                id,
                api: self.node(id).api.clone(),
            });
        }
        Ok(id)
    }

    /// Runs one membership request through any running member until it is answered with
    /// success, or `done` says the answer means it already happened (a retry after a lost
    /// answer), within `limit`.
    async fn membership(
        &self,
        what: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        done: fn(u16, &Value) -> bool,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            for id in self.running() {
                match self.call(id, method.clone(), path, body.clone()).await {
                    Ok((200, _)) => return Ok(()),
                    Ok((s, b)) if done(s, &b) => return Ok(()),
                    Ok((s, b)) => last = format!("{s} {b}"),
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("{what}: not done within {limit:?} (last answer: {last})")
    }

    /// Adds running node `id` as a learner.
    pub async fn add_learner(&mut self, id: u64) -> anyhow::Result<()> {
        let n = self.node(id);
        let body = json!({"id": id, "api_addr": n.api, "peer_addr": n.peer_url()});
        self.membership(
            &format!("add learner {id}"),
            reqwest::Method::POST,
            "/v1/cluster/learners",
            Some(body),
            |s, b| s == 409 && b.to_string().contains("already a member"),
            Duration::from_secs(30),
        )
        .await?;
        self.nodes[(id - 1) as usize].role = Role::Learner;
        Ok(())
    }

    /// Promotes learner `id`; the node refuses until the learner has caught up, so this retries.
    pub async fn promote(&mut self, id: u64) -> anyhow::Result<()> {
        self.membership(
            &format!("promote {id}"),
            reqwest::Method::POST,
            "/v1/cluster/voters",
            Some(json!({"id": id})),
            |s, b| s == 409 && b.to_string().contains("already a voter"),
            Duration::from_secs(30),
        )
        .await?;
        self.nodes[(id - 1) as usize].role = Role::Voter;
        Ok(())
    }

    /// Removes member `id`, then stops its process for good (its id is never reused).
    pub async fn remove(&mut self, id: u64) -> anyhow::Result<()> {
        self.membership(
            &format!("remove {id}"),
            reqwest::Method::DELETE,
            &format!("/v1/cluster/members/{id}"),
            None,
            |s, _| s == 404,
            Duration::from_secs(30),
        )
        .await?;
        if self.node(id).health == Health::Paused {
            self.pause(id, false);
        }
        self.kill(id).await;
        self.nodes[(id - 1) as usize].health = Health::Removed;
        self.endpoints
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|e| e.id != id);
        Ok(())
    }

    /// Every member, voters and learners (removed nodes excluded).
    pub fn ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.health != Health::Removed)
            .map(|n| n.id)
            .collect()
    }

    /// The voters, as the harness last set the membership.
    pub fn voters(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.health != Health::Removed && n.role == Role::Voter)
            .map(|n| n.id)
            .collect()
    }

    fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.health == Health::Running)
            .map(|n| n.id)
            .collect()
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[(id - 1) as usize]
    }

    fn spawn(&mut self, id: u64, pristine: bool) -> anyhow::Result<()> {
        let n = &self.nodes[(id - 1) as usize];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&n.dir)
            .args(["--listen-client", &n.client.to_string()])
            .args(["--listen-peer", &n.peer.to_string()])
            .args(["--advertise-peer", &n.peer_url()])
            .args(["--peer-source-ip", &node_ip(id).to_string()])
            .env("FLAGSTAFF_CLUSTER_SECRET", SECRET)
            .env("FLAGSTAFF_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("FLAGSTAFF_LOG", "info,openraft=warn")
            .args(&self.opts.args)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if pristine {
            cmd.args([
                "--cluster-id",
                self.opts.cluster_id.as_deref().unwrap_or("jepsen"),
            ]);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let n = &mut self.nodes[(id - 1) as usize];
        n.child = Some(child);
        n.health = Health::Running;
        Ok(())
    }

    /// The PID of node `id`'s process while the harness owns it.
    pub fn pid(&self, id: u64) -> Option<i32> {
        self.node(id)
            .child
            .as_ref()
            .and_then(|c| c.id())
            .map(|p| p as i32)
    }

    /// The exit status of node `id` if its process has ended by itself (it stays reaped).
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let n = &mut self.nodes[(id - 1) as usize];
        let status = n.child.as_mut()?.try_wait().ok()??;
        n.child = None;
        n.health = Health::Killed;
        Some(status)
    }

    /// `kill -9` of node `id` (by its PID); waits until it is gone.
    pub async fn kill(&mut self, id: u64) {
        let n = &mut self.nodes[(id - 1) as usize];
        if let Some(mut child) = n.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        n.health = Health::Killed;
    }

    /// Restarts a killed node from its data dir, on the same addresses.
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        if self.node(id).health != Health::Killed {
            return Ok(());
        }
        self.spawn(id, false)?;
        self.wait_healthy(id, Duration::from_secs(30)).await
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to node `id`'s PID.
    pub fn pause(&mut self, id: u64, stop: bool) {
        if let Some(pid) = self.pid(id) {
            let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) with a PID this harness spawned and still owns (not yet reaped).
            unsafe {
                libc::kill(pid, sig);
            }
            self.nodes[(id - 1) as usize].health = if stop {
                Health::Paused
            } else {
                Health::Running
            };
        }
    }

    /// Cuts the peer links between every pair of nodes in different groups. Nodes in no
    /// group keep every link (a bridge).
    pub fn partition(&self, groups: &[Vec<u64>]) {
        for (gi, g) in groups.iter().enumerate() {
            for (hi, h) in groups.iter().enumerate() {
                if gi == hi {
                    continue;
                }
                for a in g {
                    for b in h {
                        self.node(*a).proxy.block(node_ip(*b));
                    }
                }
            }
        }
    }

    pub fn heal(&self) {
        for n in &self.nodes {
            n.proxy.unblock_all();
        }
    }

    /// Resumes paused nodes, restarts killed ones and heals every link.
    pub async fn heal_all(&mut self) -> anyhow::Result<()> {
        self.heal();
        for id in self.ids() {
            match self.node(id).health {
                Health::Paused => self.pause(id, false),
                Health::Killed => self.restart(id).await?,
                Health::Running | Health::Removed => {}
            }
        }
        Ok(())
    }

    async fn wait_healthy(&mut self, id: u64, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let url = format!("{}/healthz", self.node(id).api);
        while Instant::now() < deadline {
            let exited = self.nodes[(id - 1) as usize]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let log = std::fs::read_to_string(&self.node(id).log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "node {id} exited ({status}) during start: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
            }
            let ok = self
                .http
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "node {id} did not become healthy within {limit:?}; see {}",
            self.node(id).log.display()
        )
    }

    /// The leader as node `id` reports it.
    pub async fn leader_seen_by(&self, id: u64) -> Option<u64> {
        let (status, body) = self
            .call(id, reqwest::Method::GET, "/v1/cluster", None)
            .await
            .ok()?;
        if status != 200 {
            return None;
        }
        body["leader"].as_u64()
    }

    /// The leader most running nodes agree on, if any.
    pub async fn leader(&self) -> Option<u64> {
        for id in self.ids() {
            if self.node(id).health == Health::Running {
                if let Some(l) = self.leader_seen_by(id).await {
                    return Some(l);
                }
            }
        }
        None
    }

    /// Waits until every node of `ids` reports the same leader, one of `ids`.
    pub async fn wait_leader(&self, ids: &[u64], limit: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let mut seen = Vec::new();
            for id in ids {
                seen.push(self.leader_seen_by(*id).await);
            }
            if let Some(Some(l)) = seen.first() {
                if ids.contains(l) && seen.iter().all(|s| *s == Some(*l)) {
                    return Ok(*l);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("no agreed leader among {ids:?} within {limit:?}")
    }

    /// One admin API call with a 5 s timeout; the body is parsed as JSON when it is.
    pub async fn call(
        &self,
        id: u64,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.node(id).api, path))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(5));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Kills every process (the data dirs stay).
    pub async fn stop(&mut self) {
        for id in self.ids() {
            if self.node(id).health == Health::Paused {
                self.pause(id, false);
            }
            self.kill(id).await;
        }
    }
}
