//! What a large namespace costs a segment write: on one 3-node cluster, namespace `wide` holds
//! 10,000 flags over 10,000 segments (chains, diamonds, wide fan-in) and namespace `small` the
//! same 10,000 flags over 10 segments. Writes alternate between the two (one client, each write
//! acknowledged before the next), each rewriting a segment that `$ref`s two others, so every
//! write runs the store's reference and cycle checks; after each write, one OFREP evaluation on
//! a follower that has applied it measures what rebuilding the namespace's flag set costs.
//!
//! `target/release/segment_writes --flagstaff-bin target/release/flagstaff [--writes 200]`
//! (`bash bench/run.sh` runs it). Prints a Markdown table; the ratios are the result.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use flagstaff_bench::stats::{ms, Summary};
use jepsen_like_tests::cluster::{Cluster, NodeOptions, ADMIN_TOKEN};
use serde_json::{json, Value};

#[path = "../../../flags/tests/support/large_namespace.rs"]
mod large;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    flagstaff_bin: PathBuf,
    /// Writes per namespace (alternating).
    #[arg(long, default_value_t = 200)]
    writes: usize,
    /// Append the report to this Markdown file as well as printing it.
    #[arg(long)]
    out: Option<PathBuf>,
}

const FLAGS: usize = 10_000;

#[derive(Default)]
struct Samples {
    write: Vec<Duration>,
    first_evaluation: Vec<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let work = tempfile::Builder::new()
        .prefix("flagstaff-segments.")
        .tempdir()?;
    let mut c = Cluster::start_with(
        &a.flagstaff_bin,
        work.path(),
        3,
        0,
        NodeOptions::default(),
        true,
    )
    .await
    .context("starting Flagstaff")?;
    let leader = c.wait_leader(&c.ids(), Duration::from_secs(30)).await?;
    let follower = *c.ids().iter().find(|id| **id != leader).unwrap();
    let api = |id: u64| c.node(id).api.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    let mut keys = Vec::new();
    for (ns, segments) in [("wide", 10_000), ("small", 10)] {
        let (s, b) = c
            .call(
                leader,
                reqwest::Method::PUT,
                &format!("/v1/namespaces/{ns}"),
                Some(json!({})),
            )
            .await?;
        anyhow::ensure!(s == 200, "create {ns}: {s} {b}");
        let doc = large::large_namespace(FLAGS, segments);
        let t = Instant::now();
        let r = http
            .put(format!("{}/v1/namespaces/{ns}/flagd", api(leader)))
            .bearer_auth(ADMIN_TOKEN)
            .json(&doc)
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "import {ns}: {}", r.text().await?);
        eprintln!(
            "imported {ns} ({FLAGS} flags, {segments} segments) in {:.0} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        let (s, b) = c
            .call(
                leader,
                reqwest::Method::POST,
                &format!("/v1/namespaces/{ns}/sdk-keys"),
                Some(json!({"name": "bench"})),
            )
            .await?;
        anyhow::ensure!(s == 200, "sdk key {ns}: {s} {b}");
        keys.push(b["secret"].as_str().unwrap_or_default().to_string());
    }

    let mut results = [Samples::default(), Samples::default()];
    for i in 0..a.writes * 2 {
        let which = i % 2;
        let (ns, segments) = [("wide", 10_000), ("small", 10)][which];
        // seg3, seg7, …: `{"and": [{"$ref": "seg0"}, {"$ref": "seg{k-1}"}]}`, plus a changing constant.
        let k = 4 * ((i / 2) % (segments / 4)) + 3;
        let rule = json!({"and": [{"$ref": "seg0"}, {"$ref": format!("seg{}", k - 1)}, {"!=": [{"var": "n"}, i]}]});
        let t = Instant::now();
        let r = http
            .put(format!(
                "{}/v1/namespaces/{ns}/segments/seg{k}",
                api(leader)
            ))
            .bearer_auth(ADMIN_TOKEN)
            .json(&rule)
            .send()
            .await?;
        let elapsed = t.elapsed();
        anyhow::ensure!(r.status() == 200, "write {ns}/seg{k}: {}", r.text().await?);
        let revision = r.json::<Value>().await?["revision"].as_u64().unwrap_or(0);
        results[which].write.push(elapsed);

        // The follower's first evaluation at that revision rebuilds the namespace's flag set.
        let t = Instant::now();
        let r = http
            .post(format!(
                "{}/ofrep/v1/evaluate/flags/flag{k}?min_revision={revision}",
                api(follower)
            ))
            .bearer_auth(&keys[which])
            .json(&json!({"context": {"email": "a@team0.example", "country": "NL", "n": 1}}))
            .send()
            .await?;
        let elapsed = t.elapsed();
        anyhow::ensure!(
            r.status() == 200,
            "evaluate {ns}/flag{k}: {}",
            r.text().await?
        );
        results[which].first_evaluation.push(elapsed);
    }

    c.stop().await;
    let [wide, small] = results;
    let row = |what: &str, w: &[Duration], s: &[Duration]| {
        let (w, s) = (Summary::of(w), Summary::of(s));
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        format!(
            "| {what} | {} / {} | {} / {} | {:.2}× / {:.2}× |",
            ms(w.p50),
            ms(w.p99),
            ms(s.p50),
            ms(s.p99),
            ratio(w.p50, s.p50),
            ratio(w.p99, s.p99)
        )
    };
    let report = [
        format!(
            "3-node cluster on loopback, {} writes per namespace, alternating, one client; {FLAGS} flags in each namespace.\n",
            a.writes
        ),
        "| measured | 10,000 segments p50 / p99 ms | 10 segments p50 / p99 ms | ratio p50 / p99 |".into(),
        "|---|---|---|---|".into(),
        row("segment write (leader, acknowledged)", &wide.write, &small.write),
        row("first OFREP evaluation after it (follower)", &wide.first_evaluation, &small.first_evaluation),
    ]
    .join("\n");
    println!("{report}");
    if let Some(out) = a.out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)?;
        writeln!(f, "{report}")?;
    }
    Ok(())
}
