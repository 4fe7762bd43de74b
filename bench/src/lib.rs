//! Shared pieces of the Flagstaff measurements: the load generator both systems are driven by,
//! an etcd cluster of real processes, the watch fan-out measurement, latency summaries, plots
//! and machine facts. `src/bin/bench_report.rs` runs them all and writes the dated report (see
//! README.md).

pub mod etcd;
pub mod fanout;
pub mod load;
pub mod machine;
pub mod plot;
pub mod stats;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use jepsen_like_tests::cluster::{Cluster, NodeOptions};
use serde_json::{json, Value};

use crate::etcd::EtcdCluster;

/// A 3-node Flagstaff cluster and a 3-member etcd cluster of processes side by side (fsync
/// on, loopback), each with its leader found, and namespace `bench` created in Flagstaff.
pub struct SideBySide {
    pub fs: Cluster,
    pub et: EtcdCluster,
    pub fs_leader: u64,
    pub et_leader: usize,
}

impl SideBySide {
    /// Starts both under `dir` (each in a directory of its own).
    pub async fn start(flagstaff_bin: &Path, etcd_bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("flagstaff"))?;
        std::fs::create_dir_all(dir.join("etcd"))?;
        let mut fs = Cluster::start_with(
            flagstaff_bin,
            &dir.join("flagstaff"),
            3,
            0,
            NodeOptions::default(),
            true,
        )
        .await
        .context("starting Flagstaff")?;
        let et = match EtcdCluster::start(etcd_bin, &dir.join("etcd")).await {
            Ok(et) => et,
            Err(e) => {
                fs.stop().await;
                return Err(e.context("starting etcd"));
            }
        };
        let mut both = SideBySide {
            fs,
            et,
            fs_leader: 0,
            et_leader: 0,
        };
        match both.leaders().await {
            Ok(()) => Ok(both),
            Err(e) => {
                both.stop().await;
                Err(e)
            }
        }
    }

    async fn leaders(&mut self) -> anyhow::Result<()> {
        let fs = &self.fs;
        self.fs_leader = fs.wait_leader(&fs.ids(), Duration::from_secs(30)).await?;
        let (s, b) = fs
            .call(
                self.fs_leader,
                reqwest::Method::PUT,
                "/v1/namespaces/bench",
                Some(json!({})),
            )
            .await?;
        anyhow::ensure!(s == 200, "create namespace bench: {s} {b}");
        self.et_leader = self.et.wait_leader(Duration::from_secs(30)).await?;
        Ok(())
    }

    /// Stops every process of both.
    pub async fn stop(&mut self) {
        self.fs.stop().await;
        self.et.stop().await;
    }
}

/// `GET /v1/cluster` on node `id` of a cluster of processes.
pub async fn cluster_status(fs: &Cluster, id: u64) -> anyhow::Result<Value> {
    let (s, b) = fs
        .call(id, reqwest::Method::GET, "/v1/cluster", None)
        .await?;
    anyhow::ensure!(s == 200, "GET /v1/cluster on {id}: {s} {b}");
    Ok(b)
}

/// The highest Raft term any node reports (`None` if none answers).
pub async fn max_term(fs: &Cluster) -> Option<u64> {
    let mut best = None;
    for id in fs.ids() {
        if let Ok(s) = cluster_status(fs, id).await {
            best = best.max(s["term"].as_u64());
        }
    }
    best
}

/// The PID of every node (`None` for one that is not running), in id order.
pub fn node_pids(fs: &Cluster) -> Vec<Option<i32>> {
    fs.ids().iter().map(|i| fs.pid(*i)).collect()
}

/// The API address of every node, in id order.
pub fn node_apis(fs: &Cluster) -> Vec<String> {
    fs.ids().iter().map(|i| fs.node(*i).api.clone()).collect()
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
