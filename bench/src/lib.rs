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

use jepsen_like_tests::cluster::Cluster;
use serde_json::Value;

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
