//! `flagstaff experiment …`: start an A/B test on a flag, read its results, stop it and ship
//! the winner. Starting and shipping are ordinary (audited) flag writes.

use anyhow::bail;
use clap::Subcommand;
use flagstaff_api::admin::{ItemInfo, ItemWritten};
use flagstaff_api::experiments::{ExperimentList, ExperimentResults, WeightsFrom};
use flagstaff_experiments::Estimate;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use crate::client::{typed, Conn};

#[derive(Subcommand)]
pub enum ExperimentCmd {
    /// Make a flag an experiment: its control variant and the conversion events that count.
    Start {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
        flag: String,
        #[arg(long)]
        control: String,
        /// A conversion event that counts (repeat for several).
        #[arg(long = "metric", required = true)]
        metrics: Vec<String>,
    },
    /// The namespace's experiments: running ones and those with recorded data.
    List {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
    },
    /// Results: per variant exposures, users, conversion rates and uplift with always-valid
    /// 95% intervals, and the sample-ratio check.
    Results {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
        flag: String,
        /// The control variant, for an experiment already stopped.
        #[arg(long)]
        control: Option<String>,
    },
    /// Stop the experiment and serve `variant` to everyone (removes the targeting and the
    /// experiment field; the results stay readable with `--control`).
    Ship {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
        flag: String,
        variant: String,
    },
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// An estimate and its interval as percentages.
fn interval(e: &Estimate) -> String {
    format!("{} [{}, {}]", pct(e.value), pct(e.low), pct(e.high))
}

fn running(running: bool) -> &'static str {
    if running {
        "running"
    } else {
        "stopped"
    }
}

/// The results as a table per metric, with the SRM verdict first.
fn results_table(r: ExperimentResults) -> String {
    let srm = &r.report.srm;
    let weights_from = match r.weights_from {
        WeightsFrom::Fractional => "fractional",
        WeightsFrom::Equal => "equal",
    };
    let mut out = format!(
        "experiment {} (control {}, {}, split {weights_from})\n",
        r.flag,
        r.control,
        running(r.running),
    );
    out.push_str(&match srm.p_value {
        None => "sample ratio: not enough users yet\n".to_string(),
        Some(p) if srm.mismatch => format!(
            "SAMPLE RATIO MISMATCH (p = {p:.2e}): users are not split as configured; do not trust these results\n"
        ),
        Some(p) => format!("sample ratio: as configured (p = {p:.3})\n"),
    });
    for metric in &r.metrics {
        out.push_str(&format!(
            "\n{metric}\n{:<14} {:>9} {:>9} {:>8} {:>24} {:>26} {:>8}\n",
            "VARIANT", "EXPOSED", "USERS", "CONV", "RATE (95%)", "UPLIFT (95%)", "P(BEAT)"
        ));
        for a in &r.report.arms {
            let m = a.metrics.iter().find(|m| &m.metric == metric);
            let up = m.and_then(|m| m.uplift.as_ref());
            let uplift = match up {
                None => "-".to_string(),
                Some(up) => format!(
                    "{}{}",
                    interval(&up.relative),
                    if up.significant { " *" } else { "" }
                ),
            };
            out.push_str(&format!(
                "{:<14} {:>9} {:>9.0} {:>8} {:>24} {:>26} {:>8}\n",
                a.variant,
                a.exposures,
                a.users,
                m.map_or_else(|| "-".to_string(), |m| m.conversions.to_string()),
                m.map_or_else(|| "-".to_string(), |m| interval(&m.rate)),
                uplift,
                up.map_or_else(|| "-".to_string(), |u| pct(u.chance_to_beat_control))
            ));
        }
    }
    out.push_str("\n* significant at 95%; intervals stay valid however often you look.");
    out
}

fn experiment_table(list: ExperimentList) -> String {
    let mut out = format!(
        "{:<24} {:<8} {:<12} {:>10} METRICS",
        "FLAG", "STATUS", "CONTROL", "EXPOSURES"
    );
    for e in list.experiments {
        out.push_str(&format!(
            "\n{:<24} {:<8} {:<12} {:>10} {}",
            e.flag,
            running(e.running),
            e.control.as_deref().unwrap_or("-"),
            e.exposures,
            e.metrics.join(",")
        ));
    }
    out
}

pub async fn experiment(cmd: ExperimentCmd) -> anyhow::Result<()> {
    match cmd {
        ExperimentCmd::Start {
            conn,
            namespace,
            flag,
            control,
            metrics,
        } => {
            let v = conn
                .call(
                    Method::PATCH,
                    &format!("/v1/namespaces/{namespace}/flags/{flag}"),
                    Some(json!({"experiment": {"control": control, "metrics": metrics}})),
                )
                .await?;
            let started = |w: ItemWritten| format!("started: version {}", w.version);
            conn.print(&v, typed(started))?;
        }
        ExperimentCmd::List { conn, namespace } => {
            let v = conn
                .call(
                    Method::GET,
                    &format!("/v1/namespaces/{namespace}/experiments"),
                    None,
                )
                .await?;
            conn.print(&v, typed(experiment_table))?;
        }
        ExperimentCmd::Results {
            conn,
            namespace,
            flag,
            control,
        } => {
            let mut path =
                format!("/v1/namespaces/{namespace}/experiments/{flag}?consistency=linearizable");
            if let Some(c) = control {
                path.push_str(&format!("&control={c}"));
            }
            let v = conn.call(Method::GET, &path, None).await?;
            conn.print(&v, typed(results_table))?;
        }
        ExperimentCmd::Ship {
            conn,
            namespace,
            flag,
            variant,
        } => {
            let path = format!("/v1/namespaces/{namespace}/flags/{flag}");
            let current = ItemInfo::deserialize(conn.call(Method::GET, &path, None).await?)?;
            let known = current.definition["variants"]
                .as_object()
                .is_some_and(|vs| vs.contains_key(&variant));
            if !known {
                bail!("{variant:?} is not a variant of flag {flag:?}");
            }
            let patch = json!({"defaultVariant": variant, "targeting": null, "experiment": null});
            let v = conn.call(Method::PATCH, &path, Some(patch)).await?;
            conn.print(
                &v,
                typed(move |w: ItemWritten| {
                    format!(
                        "shipped {variant}: version {}; results: flagstaff experiment results {namespace} {flag} --control <control>",
                        w.version
                    )
                }),
            )?;
        }
    }
    Ok(())
}
