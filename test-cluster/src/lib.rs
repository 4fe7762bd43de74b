//! Test harness shared by the node and client tests: real nodes in this process on real loopback sockets, real RocksDB in temp dirs,
//! and a TCP proxy in front of every peer listener that the test owns, so partitions really
//! drop traffic between chosen nodes.
//!
//! Node `i` sends its peer traffic from 127.0.0.(10+i), so a proxy can tell who is calling.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flagstaff_node::config::{PeerTlsFiles, TlsFiles};
use flagstaff_node::tls::ca::Authority;
use flagstaff_node::{NodeConfig, RunningNode};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub const TOKEN: &str = "test-admin-token";
pub const SECRET: &str = "test-cluster-secret";

pub fn node_ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + id as u8))
}

/// A TCP proxy in front of one node's peer listener that can refuse chosen source addresses.
pub struct Proxy {
    pub listen: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    blocked: Arc<Mutex<HashSet<IpAddr>>>,
    conns: Arc<Mutex<Vec<(IpAddr, AbortHandle)>>>,
    accept: AbortHandle,
}

impl Proxy {
    pub async fn start(ip: IpAddr, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind proxy");
        let listen = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let blocked: Arc<Mutex<HashSet<IpAddr>>> = Arc::default();
        let conns: Arc<Mutex<Vec<(IpAddr, AbortHandle)>>> = Arc::default();
        let (t, b, c) = (target.clone(), blocked.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, from)) = listener.accept().await {
                if b.lock().unwrap().contains(&from.ip()) {
                    drop(inbound);
                    continue;
                }
                let to = *t.lock().unwrap();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut list = c.lock().unwrap();
                list.retain(|(_, h)| !h.is_finished());
                list.push((from.ip(), task.abort_handle()));
            }
        })
        .abort_handle();
        Proxy {
            listen,
            target,
            blocked,
            conns,
            accept,
        }
    }

    /// Drops every connection from `src`, now and until unblocked.
    pub fn block(&self, src: IpAddr) {
        self.blocked.lock().unwrap().insert(src);
        for (ip, h) in self.conns.lock().unwrap().iter() {
            if *ip == src {
                h.abort();
            }
        }
    }

    pub fn unblock_all(&self) {
        self.blocked.lock().unwrap().clear();
    }

    pub fn retarget(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for (_, h) in self.conns.lock().unwrap().iter() {
            h.abort();
        }
    }
}

pub struct TestNode {
    pub id: u64,
    pub api: String,
    pub client_addr: SocketAddr,
    pub dir: PathBuf,
    pub running: Option<RunningNode>,
}

pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub proxies: Vec<Proxy>,
    /// Trusts the cluster's CA when it runs TLS.
    pub http: reqwest::Client,
    pub cluster_id: String,
    pub tune: fn(&mut NodeConfig),
    /// Set by [`TestCluster::start_tls`].
    pub tls: Option<TestTls>,
    _tmp: tempfile::TempDir,
}

/// The certificates of a cluster started with [`TestCluster::start_tls`]: a throwaway CA, and
/// for each node one certificate (for its client and peer listeners and its peer client) valid
/// for 127.0.0.1 and the node's own address.
pub struct TestTls {
    pub dir: PathBuf,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    authority: Authority,
}

impl TestTls {
    fn new(dir: PathBuf) -> TestTls {
        std::fs::create_dir_all(&dir).unwrap();
        let authority = Authority::generate("test cluster CA").unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &authority.cert_pem).unwrap();
        TestTls { dir, ca, authority }
    }

    /// Node `id`'s certificate and key files.
    pub fn node_files(&self, id: u64) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join(format!("node-{id}.pem")),
            key: self.dir.join(format!("node-{id}-key.pem")),
        }
    }

    /// Issues node `id` a new certificate under `common_name` and writes it over its files
    /// (each replaced whole by a rename, as an operator's tooling would); returns the PEM.
    pub fn issue(&self, id: u64, common_name: &str) -> String {
        let names = ["127.0.0.1".to_string(), node_ip(id).to_string()];
        let issued = self.authority.issue(common_name, &names).unwrap();
        let files = self.node_files(id);
        for (path, text) in [
            (&files.key, &issued.key_pem),
            (&files.cert, &issued.cert_pem),
        ] {
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        issued.cert_pem
    }

    fn configure(&self, c: &mut NodeConfig) {
        let files = self.node_files(c.node_id);
        if !files.cert.exists() {
            self.issue(c.node_id, &format!("node {}", c.node_id));
        }
        c.tls = Some(files.clone());
        c.peer_tls = Some(PeerTlsFiles {
            identity: files,
            trusted_ca: self.ca.clone(),
        });
    }
}

fn base_config(id: u64, dir: PathBuf, api: String, peer: String, cluster_id: &str) -> NodeConfig {
    let mut c = NodeConfig::new(id, dir, api, peer);
    c.cluster_id = Some(cluster_id.to_string());
    c.cluster_secret = SECRET.into();
    c.admin_tokens = vec![("admin".into(), TOKEN.into())];
    c.read_timeout = Duration::from_millis(1500);
    c.write_timeout = Duration::from_secs(5);
    c.peer_source_ip = Some(node_ip(id));
    c
}

impl TestCluster {
    /// Starts `n` voters and initialises them as one cluster; `tune` adjusts each node's config.
    pub async fn start(n: u64, tune: fn(&mut NodeConfig)) -> TestCluster {
        Self::start_with(n, tune, false).await
    }

    /// Like [`TestCluster::start`], with HTTPS on the client listeners and mutual TLS between
    /// the nodes ([`TestCluster::tls`] holds the certificates).
    pub async fn start_tls(n: u64, tune: fn(&mut NodeConfig)) -> TestCluster {
        Self::start_with(n, tune, true).await
    }

    async fn start_with(n: u64, tune: fn(&mut NodeConfig), tls: bool) -> TestCluster {
        let tmp = tempfile::tempdir().unwrap();
        let tls = tls.then(|| TestTls::new(tmp.path().join("tls")));
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(20));
        if let Some(tls) = &tls {
            for ca in flagstaff_node::tls::ca_certificates(&tls.ca).unwrap() {
                http = http.add_root_certificate(ca);
            }
        }
        let mut c = TestCluster {
            nodes: Vec::new(),
            proxies: Vec::new(),
            http: http.build().unwrap(),
            cluster_id: "test-cluster".into(),
            tune,
            tls,
            _tmp: tmp,
        };
        for id in 1..=n {
            c.add_node(id).await;
        }
        let members: Vec<Value> = c.nodes.iter().map(|n| c.member_json(n.id)).collect();
        let r = c
            .post(1, "/v1/cluster/init", json!({ "members": members }))
            .await;
        assert_eq!(r.0, 200, "init: {}", r.1);
        c.wait_leader().await;
        c
    }

    pub fn member_json(&self, id: u64) -> Value {
        let n = self.node(id);
        json!({"id": id, "api_addr": n.api, "peer_addr": self.url(self.proxies[(id - 1) as usize].listen)})
    }

    /// The URL of a listener at `addr`: `https` when the cluster runs TLS.
    pub fn url(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    fn config(&self, id: u64, dir: PathBuf, api: String, peer: String) -> NodeConfig {
        let mut cfg = base_config(id, dir, api, peer, &self.cluster_id);
        if let Some(tls) = &self.tls {
            tls.configure(&mut cfg);
        }
        (self.tune)(&mut cfg);
        cfg
    }

    /// Starts a new pristine node (`id` = position + 1) with its proxy; not yet a member.
    pub async fn add_node(&mut self, id: u64) {
        let dir = self._tmp.path().join(format!("node-{id}"));
        // On the node's own address: fewer other sockets compete for its port while it is down.
        let client = TcpListener::bind((node_ip(id), 0)).await.unwrap();
        let client_addr = client.local_addr().unwrap();
        let peer = TcpListener::bind((node_ip(id), 0)).await.unwrap();
        let proxy = Proxy::start(node_ip(id), peer.local_addr().unwrap()).await;
        let api = self.url(client_addr);
        let cfg = self.config(id, dir.clone(), api.clone(), self.url(proxy.listen));
        let running = flagstaff_node::start(cfg, client, peer)
            .await
            .expect("start node");
        self.proxies.push(proxy);
        self.nodes.push(TestNode {
            id,
            api,
            client_addr,
            dir,
            running: Some(running),
        });
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[(id - 1) as usize]
    }

    /// Stops a node (its data dir stays).
    pub async fn stop(&mut self, id: u64) {
        if let Some(r) = self.nodes[(id - 1) as usize].running.take() {
            r.shutdown().await;
        }
    }

    /// Stops a node as a failure looks to the others: it is cut off first, so it cannot hand
    /// its leadership over (`flagstaff_node::hand_over`); the links are healed once it is down.
    pub async fn crash(&mut self, id: u64) {
        self.isolate(id);
        self.stop(id).await;
        self.heal();
    }

    /// Restarts a stopped node from its data dir, on the same client port.
    pub async fn restart(&mut self, id: u64) {
        let (dir, api, client_addr) = {
            let n = self.node(id);
            (n.dir.clone(), n.api.clone(), n.client_addr)
        };
        let client = TcpListener::bind(client_addr)
            .await
            .expect("rebind client port");
        let peer = TcpListener::bind((node_ip(id), 0)).await.unwrap();
        self.proxies[(id - 1) as usize].retarget(peer.local_addr().unwrap());
        let peer_url = self.url(self.proxies[(id - 1) as usize].listen);
        let mut cfg = self.config(id, dir, api, peer_url);
        cfg.cluster_id = None; // a marked dir needs no cluster id
        let running = flagstaff_node::start(cfg, client, peer)
            .await
            .expect("restart node");
        self.nodes[(id - 1) as usize].running = Some(running);
    }

    /// Cuts every peer link into and out of `id`.
    pub fn isolate(&self, id: u64) {
        for other in self.nodes.iter().map(|n| n.id).filter(|o| *o != id) {
            self.proxies[(id - 1) as usize].block(node_ip(other));
            self.proxies[(other - 1) as usize].block(node_ip(id));
        }
    }

    pub fn heal(&self) {
        for p in &self.proxies {
            p.unblock_all();
        }
    }

    /// Waits until the running nodes agree on one leader; returns its id.
    pub async fn wait_leader(&self) -> u64 {
        self.wait_leader_among(
            &self
                .nodes
                .iter()
                .filter(|n| n.running.is_some())
                .map(|n| n.id)
                .collect::<Vec<_>>(),
        )
        .await
    }

    /// Waits until all of `ids` report the same leader, which is one of `ids`.
    pub async fn wait_leader_among(&self, ids: &[u64]) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let leaders: Vec<Option<u64>> = ids
                .iter()
                .map(|id| {
                    self.node(*id)
                        .running
                        .as_ref()
                        .and_then(|r| r.node.raft.metrics().borrow().current_leader)
                })
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if ids.contains(l) && leaders.iter().all(|x| *x == Some(*l)) {
                    return *l;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader among {ids:?}: {leaders:?}"
            );
            let mut rx = self
                .node(ids[0])
                .running
                .as_ref()
                .unwrap()
                .node
                .raft
                .metrics();
            let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
        }
    }

    pub fn follower_of(&self, leader: u64) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.id)
            .find(|id| *id != leader && self.node(*id).running.is_some())
            .unwrap()
    }

    pub async fn request(
        &self,
        id: u64,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.node(id).api, path))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body, headers)
    }

    pub async fn get(&self, id: u64, path: &str) -> (u16, Value) {
        let (s, b, _) = self.request(id, reqwest::Method::GET, path, None).await;
        (s, b)
    }

    pub async fn put(&self, id: u64, path: &str, body: Value) -> (u16, Value) {
        let (s, b, _) = self
            .request(id, reqwest::Method::PUT, path, Some(body))
            .await;
        (s, b)
    }

    pub async fn post(&self, id: u64, path: &str, body: Value) -> (u16, Value) {
        let (s, b, _) = self
            .request(id, reqwest::Method::POST, path, Some(body))
            .await;
        (s, b)
    }

    /// Creates namespace `ns` through node `via` and waits until every running node serves it,
    /// so that bounded reads on followers that follow cannot miss it. Returns its revision.
    pub async fn create_namespace(&self, via: u64, ns: &str) -> u64 {
        let (s, b) = self
            .put(via, &format!("/v1/namespaces/{ns}"), json!({}))
            .await;
        assert_eq!(s, 200, "{b}");
        let revision = b["revision"].as_u64().unwrap();
        for n in self.nodes.iter().filter(|n| n.running.is_some()) {
            let path = format!("/v1/namespaces/{ns}?consistency=bounded&min_revision={revision}");
            let (s, b) = self.get(n.id, &path).await;
            assert_eq!(s, 200, "node {}: {b}", n.id);
        }
        revision
    }

    /// Creates namespace `ns` through node `via`, with flag `flag` running an A/B test
    /// ([`experiment_flag`]`(control, treatment)`) and an SDK key, and waits until every running
    /// node serves both. Returns the key's secret.
    pub async fn experiment_namespace(
        &self,
        via: u64,
        ns: &str,
        flag: &str,
        (control, treatment): (&str, &str),
    ) -> String {
        self.create_namespace(via, ns).await;
        let path = format!("/v1/namespaces/{ns}/flags/{flag}");
        let (s, b) = self
            .put(via, &path, experiment_flag(control, treatment))
            .await;
        assert_eq!(s, 200, "{b}");
        let keys = format!("/v1/namespaces/{ns}/sdk-keys");
        let (s, key) = self.post(via, &keys, json!({"name": ns})).await;
        assert_eq!(s, 200, "{key}");
        let revision = key["revision"].as_u64().unwrap();
        for n in self.nodes.iter().filter(|n| n.running.is_some()) {
            let (s, b) = self
                .get(n.id, &format!("{path}?min_revision={revision}"))
                .await;
            assert_eq!(s, 200, "node {}: {b}", n.id);
        }
        key["secret"].as_str().unwrap().to_string()
    }

    pub fn revision(&self, id: u64) -> u64 {
        self.node(id)
            .running
            .as_ref()
            .unwrap()
            .node
            .state
            .applied()
            .revision
    }

    pub fn last_log_index(&self, id: u64) -> u64 {
        self.node(id)
            .running
            .as_ref()
            .unwrap()
            .node
            .raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0)
    }

    /// Stops every node, the leader last: stopped first, it would hand its leadership on
    /// from node to node.
    pub async fn shutdown(mut self) {
        let leader = |c: &Self, id: u64| {
            c.node(id)
                .running
                .as_ref()
                .is_some_and(|r| r.node.raft.metrics().borrow().current_leader == Some(id))
        };
        let mut ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        ids.sort_by_key(|id| leader(&self, *id));
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// An A/B test flag: a 50/50 `fractional` split of `control` and `treatment` (string values),
/// counting the conversion event `purchase`.
pub fn experiment_flag(control: &str, treatment: &str) -> Value {
    json!({"state": "ENABLED", "variants": {control: "old", treatment: "new"},
        "defaultVariant": control,
        "targeting": {"fractional": [[control, 50], [treatment, 50]]},
        "experiment": {"control": control, "metrics": ["purchase"]}})
}

pub fn bool_flag(default: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": default})
}
