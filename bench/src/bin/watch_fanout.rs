//! Write → watch event latency on its own: a 3-node cluster of `flagstaff` processes (fsync
//! on, loopback), then the report's propagation phase (`flagstaff_bench::fanout`) at each
//! subscriber count given. Two binaries can be compared in one sitting by running it with
//! each `--flagstaff-bin`.
//!
//! `target/release/watch_fanout --flagstaff-bin target/release/flagstaff --subscribers 1000,10000`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use flagstaff_bench::stats::{ms, us, Summary};
use flagstaff_bench::{fanout, node_apis, node_pids};
use jepsen_like_tests::cluster::{Cluster, NodeOptions, ADMIN_TOKEN};

#[derive(Parser)]
struct Args {
    /// The release `flagstaff` binary.
    #[arg(long)]
    flagstaff_bin: PathBuf,
    /// Subscriber counts, one run each, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    subscribers: Vec<usize>,
    /// Writes per run.
    #[arg(long, default_value_t = 30)]
    writes: usize,
    /// Time between writes, milliseconds.
    #[arg(long, default_value_t = 100)]
    gap_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::Builder::new()
        .prefix("flagstaff-fanout.")
        .tempdir()?;
    let mut fs = Cluster::start_with(
        &args.flagstaff_bin,
        work.path(),
        3,
        0,
        NodeOptions::default(),
        true,
    )
    .await
    .context("starting Flagstaff")?;
    let result = runs(&fs, &args).await;
    fs.stop().await;
    result
}

async fn runs(fs: &Cluster, args: &Args) -> anyhow::Result<()> {
    let leader = fs.wait_leader(&fs.ids(), Duration::from_secs(30)).await?;
    let apis = node_apis(fs);
    let leader_api = fs.node(leader).api.clone();
    let pids = node_pids(fs);
    println!("| subscribers | connected | delivered | event p50 / p99 / max ms | SDK p50 / p99 / max ms | CPU per delivery, nodes / subscribers µs | node RSS per stream KiB |");
    println!("|---|---|---|---|---|---|---|");
    let mut all_delivered = true;
    for &s in &args.subscribers {
        let f = fanout::run(
            &apis,
            &leader_api,
            ADMIN_TOKEN,
            &format!("fanout-{s}"),
            s,
            args.writes,
            Duration::from_millis(args.gap_ms),
            &pids,
        )
        .await?;
        let (ev, sdk) = (Summary::of(&f.latencies), Summary::of(&f.sdk_latencies));
        println!(
            "| {s} | {} | {}/{} | {} / {} / {} | {} / {} / {} | {} / {} | {} |",
            f.connected,
            f.delivered(),
            s * args.writes,
            ms(ev.p50),
            ms(ev.p99),
            ms(ev.max),
            ms(sdk.p50),
            ms(sdk.p99),
            ms(sdk.max),
            us(f.cpu_per_delivery().0),
            us(f.cpu_per_delivery().1),
            f.rss_per_stream_kib()
                .map_or("?".into(), |k| format!("{k:.1}")),
        );
        for (why, n) in &f.ended_early {
            println!("\n{n} of {s} streams ended early: {why}");
        }
        all_delivered &= f.delivered() == s * args.writes;
    }
    anyhow::ensure!(all_delivered, "some events were not delivered");
    Ok(())
}
