//! `jepsen-like-tests`: run seeded fault schedules against real `flagstaff` processes, re-check
//! saved histories, and show that each deliberate break is caught.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand};
use jepsen_like_tests::{history, profiles, report, run};

#[derive(Parser)]
#[command(
    name = "jepsen-like-tests",
    about = "Real processes, real faults, recorded histories, checkers that can say no"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a profile's scenarios (ci, smoke, soak) and check their histories.
    Run {
        #[arg(long, default_value = "ci")]
        profile: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Override each scenario's duration (seconds), e.g. for a soak.
        #[arg(long)]
        duration: Option<u64>,
        /// Where runs keep their files (default: ./jepsen-runs).
        #[arg(long, default_value = "jepsen-runs")]
        out: PathBuf,
        /// The `flagstaff` binary (default: next to this one).
        #[arg(long)]
        bin: Option<PathBuf>,
    },
    /// Re-check a saved history offline.
    Check { history: PathBuf },
    /// Run each deliberate break (needs `--features fault-injection`) and require that the
    /// suite catches it.
    Breaks {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "jepsen-runs")]
        out: PathBuf,
        /// The fault-injection build of the node (default: `flagstaff-faulty` next to this one).
        #[arg(long)]
        bin: Option<PathBuf>,
        /// Only the breaks whose switch contains this (e.g. `WATCH`).
        #[arg(long)]
        only: Option<String>,
    },
    /// Fail a follower's and then the leader's disk (needs `--features fault-injection`): each
    /// must fail `/healthz` and exit non-zero while the others keep the data.
    DiskFault {
        #[arg(long, default_value = "jepsen-runs")]
        out: PathBuf,
        /// The fault-injection build of the node (default: `flagstaff-faulty` next to this one).
        #[arg(long)]
        bin: Option<PathBuf>,
    },
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no parent dir")?;
    // Test binaries live one level deeper, in deps/.
    for d in [dir.to_path_buf(), dir.join("..")] {
        let p = d.join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    anyhow::bail!(
        "{name} not found next to {}; build it first or pass --bin",
        exe.display()
    )
}

fn stamp() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn replay_hint(history: &std::path::Path, profile: &str, seed: u64) {
    println!(
        "   re-check:  jepsen-like-tests check {}",
        history.display()
    );
    println!("   re-run:    jepsen-like-tests run --profile {profile} --seed {seed}");
}

async fn cmd_run(
    profile: String,
    seed: u64,
    duration: Option<u64>,
    out: PathBuf,
    bin: Option<PathBuf>,
) -> anyhow::Result<bool> {
    let bin = match bin {
        Some(b) => b,
        None => sibling("flagstaff")?,
    };
    let scenarios = profiles::profile(&profile, duration.map(Duration::from_secs))
        .with_context(|| format!("unknown profile {profile:?} (ci, smoke, soak)"))?;
    let started = std::time::Instant::now();
    let mut ok = true;
    for (i, sc) in scenarios.iter().enumerate() {
        let s = seed.wrapping_mul(1000).wrapping_add(i as u64);
        let dir = out.join(format!("{profile}-seed{seed}-{i}-{}", stamp()));
        let r = run::run(&bin, sc, s, &dir).await;
        match r {
            Ok(r) if r.report.anomalies() == 0 => println!("-> PASS ({})\n", sc.name),
            Ok(r) => {
                ok = false;
                println!(
                    "-> FAIL ({}): {} anomalies; evidence (history, node logs) kept in {}",
                    sc.name,
                    r.report.anomalies(),
                    r.dir.display()
                );
                replay_hint(&r.history, &profile, seed);
            }
            Err(e) => {
                ok = false;
                println!(
                    "-> ERROR ({}): {e:#}; node logs kept in {}",
                    sc.name,
                    dir.display()
                );
                println!("   re-run:    jepsen-like-tests run --profile {profile} --seed {seed}");
            }
        }
    }
    println!(
        "profile {profile} seed {seed}: {} in {:.0?}",
        if ok { "PASS" } else { "FAIL" },
        started.elapsed()
    );
    Ok(ok)
}

async fn cmd_breaks(
    seed: u64,
    out: PathBuf,
    bin: Option<PathBuf>,
    only: Option<String>,
) -> anyhow::Result<bool> {
    let bin = match bin {
        Some(b) => b,
        None => sibling("flagstaff-faulty")?,
    };
    let mut all = true;
    for (i, b) in profiles::breaks().into_iter().enumerate() {
        if only.as_ref().is_some_and(|o| !b.env.contains(o.as_str())) {
            continue;
        }
        let dir = out.join(format!("break-seed{seed}-{i}-{}", stamp()));
        let r = run::run(
            &bin,
            &b.scenario,
            seed.wrapping_mul(1000).wrapping_add(100 + i as u64),
            &dir,
        )
        .await?;
        let caught = (b.caught)(&r.report);
        println!(
            "-> break {:?} ({}=1): {}\n",
            b.name,
            b.env,
            if caught { "CAUGHT" } else { "NOT CAUGHT" }
        );
        all &= caught;
        if caught {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    println!(
        "breaks: {}",
        if all {
            "every break was caught"
        } else {
            "SOME BREAK WAS NOT CAUGHT"
        }
    );
    Ok(all)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run {
            profile,
            seed,
            duration,
            out,
            bin,
        } => cmd_run(profile, seed, duration, out, bin).await,
        Cmd::Check { history } => history::load(&history).map(|records| {
            let r = report::check(&records);
            println!("{}", r.render());
            r.anomalies() == 0
        }),
        Cmd::Breaks {
            seed,
            out,
            bin,
            only,
        } => cmd_breaks(seed, out, bin, only).await,
        Cmd::DiskFault { out, bin } => {
            let bin = match bin {
                Some(b) => Ok(b),
                None => sibling("flagstaff-faulty"),
            };
            match bin {
                Ok(bin) => {
                    jepsen_like_tests::disk_fault::run(
                        &bin,
                        &out.join(format!("disk-fault-{}", stamp())),
                    )
                    .await
                }
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
