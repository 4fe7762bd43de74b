//! Shared pieces of the Flagstaff measurements: an in-process cluster on loopback, the load
//! generator both systems are driven by, an etcd cluster of real processes, the watch fan-out
//! measurement, latency summaries, plots and machine facts. `src/bin/report.rs` runs them all
//! and writes the dated report (see README.md).

pub mod etcd;
pub mod fanout;
pub mod load;
pub mod machine;
pub mod plot;
pub mod stats;

use std::time::Duration;

use flagstaff_node::{NodeConfig, RunningNode};
use serde_json::{json, Value};

pub const TOKEN: &str = "bench-admin-token";

/// A cluster of real nodes in this process, on 127.0.0.1 ports chosen by the OS.
pub struct LocalCluster {
    pub nodes: Vec<RunningNode>,
    pub apis: Vec<String>,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl LocalCluster {
    pub async fn start(n: u64) -> anyhow::Result<LocalCluster> {
        let dir = tempfile::tempdir()?;
        let mut nodes = Vec::new();
        let mut members = Vec::new();
        let mut apis = Vec::new();
        for id in 1..=n {
            let client = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let api = format!("http://{}", client.local_addr()?);
            let peer_url = format!("http://{}", peer.local_addr()?);
            let mut cfg = NodeConfig::new(
                id,
                dir.path().join(format!("node-{id}")),
                api.clone(),
                peer_url.clone(),
            );
            cfg.cluster_id = Some("bench".into());
            cfg.cluster_secret = "bench-secret".into();
            cfg.admin_tokens = vec![("admin".into(), TOKEN.into())];
            nodes.push(flagstaff_node::start(cfg, client, peer).await?);
            members.push(json!({"id": id, "api_addr": api, "peer_addr": peer_url}));
            apis.push(api);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let c = LocalCluster {
            nodes,
            apis,
            http,
            _dir: dir,
        };
        let r = c
            .http
            .post(format!("{}/v1/cluster/init", c.apis[0]))
            .bearer_auth(TOKEN)
            .json(&json!({"members": members}))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "init failed");
        c.wait_leader().await?;
        Ok(c)
    }

    pub async fn wait_leader(&self) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let leaders: Vec<Option<u64>> = self
                .nodes
                .iter()
                .map(|n| n.node.raft.metrics().borrow().current_leader)
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l)) {
                    return Ok(*l);
                }
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no leader");
            let mut rx = self.nodes[0].node.raft.metrics();
            let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
        }
    }

    pub async fn put(&self, node: usize, path: &str, body: Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .put(format!("{}{path}", self.apis[node]))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "PUT {path}: {}", r.status());
        Ok(r.json().await?)
    }

    pub async fn stop(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

/// `line` without ANSI colour sequences (`ESC [ ... m`): the nodes' logs carry them around
/// field names (`bytes=`).
pub fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// p50, p99 and max of `samples` (sorted in place).
pub fn percentiles(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    }
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.50), at(0.99), samples[samples.len() - 1])
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_strips_colours_around_fields() {
        let line = "\u{1b}[32m INFO\u{1b}[0m installed snapshot \u{1b}[3mbytes\u{1b}[0m\u{1b}[2m=\u{1b}[0m37967994";
        assert_eq!(
            super::plain(line),
            " INFO installed snapshot bytes=37967994"
        );
    }
}
