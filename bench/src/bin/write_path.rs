//! Leader writes at low concurrency on their own: a 3-node Flagstaff cluster and a 3-member
//! etcd cluster of processes (fsync on, loopback), driven by the report's load generator in
//! alternating rounds, so a drift in background load hits both. Prints one markdown row per
//! round and the totals, and the leader's PID first, so a profiler can be attached to it
//! (`perf record -p PID`).
//!
//! `target/release/write_path --flagstaff-bin target/release/flagstaff --rounds 4 --secs 10`

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use flagstaff_bench::load::{self, etcd_writes, LoadResult};
use flagstaff_bench::stats::{ms, ratio, Summary};
use flagstaff_bench::SideBySide;

#[derive(Parser)]
struct Args {
    /// The release `flagstaff` binary.
    #[arg(long)]
    flagstaff_bin: PathBuf,
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Closed-loop clients.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Rounds; each runs both systems once, the first system alternating.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Length of each system's run in a round.
    #[arg(long, default_value_t = 10)]
    secs: u64,
}

const KEYS: u64 = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::Builder::new()
        .prefix("flagstaff-write-path.")
        .tempdir()?;
    let fsync = Summary::of(&flagstaff_bench::machine::fsync_probe(work.path(), 200)?);
    println!(
        "fsync probe (200 synced appends of this disk): p50 {} ms, p99 {} ms",
        ms(fsync.p50),
        ms(fsync.p99)
    );
    let mut both = SideBySide::start(&args.flagstaff_bin, &args.etcd_bin, work.path()).await?;
    let result = rounds(&both, &args).await;
    both.stop().await;
    result
}

async fn rounds(both: &SideBySide, args: &Args) -> anyhow::Result<()> {
    let (fs, et) = (&both.fs, &both.et);
    println!(
        "Flagstaff leader PID {}, etcd leader PID {}\n",
        fs.pid(both.fs_leader).unwrap_or(0),
        et.pid(both.et_leader).unwrap_or(0)
    );
    let http = load::http_client(args.concurrency)?;
    let fs_writes = load::flagstaff_writes(&http, &fs.node(both.fs_leader).api, "bench", KEYS);
    let et_writes = etcd_writes(&http, &et.urls()[both.et_leader], KEYS);
    let c = args.concurrency;
    let run = |make| load::run(c, 10_000_000, Duration::from_secs(args.secs), make, None);
    // Warm-up of both, not counted.
    let warm = Duration::from_secs(2);
    load::run(c, 100_000, warm, fs_writes.clone(), None).await;
    load::run(c, 100_000, warm, et_writes.clone(), None).await;

    println!("| round | Flagstaff writes/s | etcd writes/s | ratio | Flagstaff p50 / p99 ms | etcd p50 / p99 ms | errors (F / e) |");
    println!("|---|---|---|---|---|---|---|");
    let (mut all_f, mut all_e) = (LoadResult::default(), LoadResult::default());
    for round in 0..args.rounds {
        let (f, e) = if round % 2 == 0 {
            let f = run(fs_writes.clone()).await;
            (f, run(et_writes.clone()).await)
        } else {
            let e = run(et_writes.clone()).await;
            (run(fs_writes.clone()).await, e)
        };
        println!("{}", row(&round.to_string(), &f, &e));
        for (all, one) in [(&mut all_f, f), (&mut all_e, e)] {
            all.ok += one.ok;
            all.errors += one.errors;
            all.elapsed += one.elapsed;
            all.latencies.extend(one.latencies);
        }
    }
    println!("{}", row("all", &all_f, &all_e));
    // Where Flagstaff's time goes: each node's mean synced log write over the whole run.
    for id in fs.ids() {
        let role = if id == both.fs_leader {
            "leader"
        } else {
            "follower"
        };
        match mean_log_sync(&fs.node(id).api).await {
            Some(d) => println!("node {id} ({role}): mean synced log write {} ms", ms(d)),
            None => println!("node {id} ({role}): no log sync metric"),
        }
    }
    Ok(())
}

/// The mean of `raft_log_sync_duration` from a node's `/metrics` (sum / count).
async fn mean_log_sync(api: &str) -> Option<Duration> {
    let text = reqwest::get(format!("{api}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |suffix: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| {
                l.split(' ').next().is_some_and(|n| {
                    n.ends_with(&format!("raft_log_sync_duration_seconds{suffix}"))
                })
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let (sum, count) = (value("_sum")?, value("_count")?);
    (count > 0.0).then(|| Duration::from_secs_f64(sum / count))
}

fn row(name: &str, f: &LoadResult, e: &LoadResult) -> String {
    let (sf, se) = (Summary::of(&f.latencies), Summary::of(&e.latencies));
    format!(
        "| {name} | {:.0} | {:.0} | {} | {} / {} | {} / {} | {} / {} |",
        f.throughput(),
        e.throughput(),
        ratio(f.throughput(), e.throughput()),
        ms(sf.p50),
        ms(sf.p99),
        ms(se.p50),
        ms(se.p99),
        f.errors,
        e.errors
    )
}
