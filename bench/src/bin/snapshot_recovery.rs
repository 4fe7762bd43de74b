//! Recovery through a snapshot install: a 3-node Flagstaff cluster of processes with a small
//! snapshot policy, a follower killed (`kill -9` by its PID) while many writes are
//! acknowledged, then restarted. Measures the time until it has applied the leader's index and
//! the snapshots it installed (count and bytes, from its `installed snapshot` log lines), and
//! prints a markdown section. The policy keeps fewer entries behind a snapshot than the
//! follower falls behind, so the leader must send it a snapshot (see README.md).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use flagstaff_bench::cluster_status;
use flagstaff_bench::load;
use flagstaff_bench::machine;
use jepsen_like_tests::cluster::{Cluster, NodeOptions};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// The release `flagstaff` binary.
    #[arg(long)]
    flagstaff_bin: PathBuf,
    /// Writes to acknowledge while the follower is down.
    #[arg(long, default_value_t = 1_000_000)]
    writes: u64,
    /// Time bound of the write phase, seconds.
    #[arg(long, default_value_t = 120)]
    write_secs: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Distinct flag keys written.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// `--snapshot-every` of every node: a snapshot every this many log entries.
    #[arg(long, default_value_t = 1_000)]
    snapshot_every: u64,
    /// `--logs-behind-snapshot` of every node: entries kept behind a snapshot.
    #[arg(long, default_value_t = 100)]
    logs_behind_snapshot: u64,
    /// Bound of the wait for the restarted follower, seconds.
    #[arg(long, default_value_t = 300)]
    catch_up_secs: u64,
    /// The command line quoted in the section.
    #[arg(long)]
    command: Option<String>,
    /// Also write the section to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The text appended to `path` since byte `from`; moves `from` to the end.
fn log_since(path: &Path, from: &mut u64) -> String {
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(*from)).is_ok() {
            let _ = f.take(64 << 20).read_to_end(&mut out);
        }
    }
    *from += out.len() as u64;
    String::from_utf8_lossy(&out).into_owned()
}

/// `bytes=` of every `installed snapshot` line in `text`.
fn installs(text: &str) -> Vec<u64> {
    text.lines()
        .map(flagstaff_bench::plain)
        .filter(|l| l.contains("installed snapshot"))
        .filter_map(|l| {
            let v = l.split("bytes=").nth(1)?;
            v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect()
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB ({b} bytes)", b as f64 / 1048576.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let t_start = Instant::now();
    let note = |s: &str| eprintln!("   [{:>6.0}s] {s}", t_start.elapsed().as_secs_f64());
    let work = tempfile::Builder::new()
        .prefix("flagstaff-snapshot.")
        .tempdir()?;
    let opts = NodeOptions {
        env: Vec::new(),
        args: vec![
            "--snapshot-every".into(),
            a.snapshot_every.to_string(),
            "--logs-behind-snapshot".into(),
            a.logs_behind_snapshot.to_string(),
        ],
        ..Default::default()
    };
    note(&format!(
        "start 3 nodes (snapshot every {} entries, {} kept behind)",
        a.snapshot_every, a.logs_behind_snapshot
    ));
    let mut fs = Cluster::start_with(&a.flagstaff_bin, work.path(), 3, 0, opts, true)
        .await
        .context("starting Flagstaff")?;
    let leader = fs.wait_leader(&fs.ids(), Duration::from_secs(30)).await?;
    let leader_api = fs.node(leader).api.clone();
    let (s, b) = fs
        .call(
            leader,
            reqwest::Method::PUT,
            "/v1/namespaces/recovery",
            Some(json!({})),
        )
        .await?;
    anyhow::ensure!(s == 200, "create namespace: {s} {b}");
    let down = fs.ids().into_iter().find(|i| *i != leader).unwrap_or(2);
    let pid = fs.pid(down);
    let down_index = cluster_status(&fs, down).await?["applied_index"].as_u64();
    note(&format!("kill -9 node {down} (pid {pid:?})"));
    fs.kill(down).await;
    let before = cluster_status(&fs, leader).await?;

    note(&format!(
        "{} writes at concurrency {} (bound {} s)",
        a.writes, a.concurrency, a.write_secs
    ));
    let http = load::http_client(a.concurrency)?;
    let total = a.writes;
    let prog: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(move |n| {
        eprintln!(
            "   [{:>6.0}s] {n}/{total} writes",
            t_start.elapsed().as_secs_f64()
        )
    });
    let rec = load::run(
        a.concurrency,
        a.writes,
        Duration::from_secs(a.write_secs),
        load::flagstaff_writes(&http, &leader_api, "recovery", a.keys),
        Some(prog),
    )
    .await;
    note(&format!(
        "{} writes acknowledged ({} errors) in {:.1} s",
        rec.ok,
        rec.errors,
        rec.elapsed.as_secs_f64()
    ));
    let after = cluster_status(&fs, leader).await?;
    let entries = after["last_log_index"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(before["last_log_index"].as_u64().unwrap_or(0));

    let target = cluster_status(&fs, leader).await?["applied_index"]
        .as_u64()
        .unwrap_or(0);

    let log_path = fs.node(down).log.clone();
    let mut offset = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    note(&format!(
        "restart node {down}, wait until it applied index {target}"
    ));
    let t0 = Instant::now();
    fs.restart(down).await?;
    let healthy = t0.elapsed();
    let mut caught = None;
    let mut first_install = None;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(a.catch_up_secs);
    for _ in 0..100_000 {
        if Instant::now() >= deadline {
            break;
        }
        text.push_str(&log_since(&log_path, &mut offset));
        if first_install.is_none() && text.contains("installed snapshot") {
            first_install = Some(t0.elapsed());
        }
        if let Ok(s) = cluster_status(&fs, down).await {
            if s["applied_index"].as_u64().unwrap_or(0) >= target {
                caught = Some(t0.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    text.push_str(&log_since(&log_path, &mut offset));
    let sizes = installs(&text);
    let install_lines: Vec<String> = text
        .lines()
        .filter(|l| l.contains("installed snapshot"))
        .map(flagstaff_bench::plain)
        .collect();
    for l in &install_lines {
        note(l);
    }
    let rss = fs.pid(leader).and_then(machine::rss_kib);
    note(&format!(
        "caught up: {caught:?}; snapshots installed: {sizes:?}"
    ));
    fs.stop().await;

    let mut md = String::new();
    let mut line = |s: String| {
        md.push_str(&s);
        md.push('\n');
    };
    line("### 5b. Recovery through a snapshot install".into());
    line(String::new());
    line(format!(
        "Command: `{}` (`bench/src/bin/snapshot_recovery.rs`), a 3-node cluster of its own, fsync on, loopback.",
        a.command.clone().unwrap_or_else(|| "target/release/snapshot_recovery --flagstaff-bin target/release/flagstaff".into())
    ));
    line(String::new());
    line(format!(
        "Snapshot policy: every node started with `--snapshot-every {} --logs-behind-snapshot {}` (a snapshot every {} log entries, {} entries kept behind it), so a follower more than {} entries behind the leader's last snapshot is sent that snapshot and replays the log after it. The node's default is 10,000 / 10,000.",
        a.snapshot_every, a.logs_behind_snapshot, a.snapshot_every, a.logs_behind_snapshot, a.logs_behind_snapshot
    ));
    line(String::new());
    line(format!(
        "Node {down} (a follower, applied index {}) was killed (`kill -9` by PID), then {} of {} writes were acknowledged ({} errors) in {:.1} s at concurrency {} ({:.0} writes/s; {} distinct keys) — {} Raft log entries. Then node {down} was restarted from its data dir.",
        down_index.map_or("?".to_string(), |i| i.to_string()),
        rec.ok, a.writes, rec.errors, rec.elapsed.as_secs_f64(), a.concurrency, rec.throughput(), a.keys, entries,
    ));
    line(String::new());
    line(format!(
        "- restart → healthy: {:.2} s",
        healthy.as_secs_f64()
    ));
    line(format!(
        "- restart → first snapshot installed (seen in its log, polled every ~20 ms): {}",
        first_install.map_or("none".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
    ));
    line(format!(
        "- restart → applied index {target} (the leader's, snapshot install + replay): {}",
        caught.map_or(
            format!("**not within {} s**", a.catch_up_secs),
            |d| format!("{:.2} s", d.as_secs_f64())
        )
    ));
    line(format!(
        "- snapshots installed: {} ({})",
        sizes.len(),
        if sizes.is_empty() {
            "caught up from the log alone".to_string()
        } else {
            sizes.iter().map(|b| mib(*b)).collect::<Vec<_>>().join(", ")
        }
    ));
    line(format!(
        "- snapshot size: the installed snapshot is the leader's latest one as it sent it (the encoded state: {} flags and the change history); leader RSS at the end {}",
        a.keys,
        rss.map_or("?".to_string(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
    ));
    for l in &install_lines {
        line(format!("- the follower's log: `{}`", l.trim()));
    }
    if rec.ok < a.writes {
        line(format!(
            "- the write phase stopped at its time bound ({} s) before {} writes",
            a.write_secs, a.writes
        ));
    }
    print!("{md}");
    if let Some(out) = &a.out {
        std::fs::write(out, &md)?;
    }
    Ok(())
}
