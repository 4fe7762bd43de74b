//! `flagstaff experiment …`: start an A/B test on a flag, read its results, stop it and ship
//! the winner. Starting and shipping are ordinary (audited) flag writes.

use anyhow::bail;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Conn;

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

fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{:.2}%", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// The results as a table per metric, with the SRM verdict first.
fn results_table(v: &Value) -> String {
    let report = &v["report"];
    let srm = &report["srm"];
    let mut out = format!(
        "experiment {} (control {}, {}, split {})\n",
        v["flag"].as_str().unwrap_or(""),
        v["control"].as_str().unwrap_or(""),
        if v["running"] == true {
            "running"
        } else {
            "stopped"
        },
        v["weights_from"].as_str().unwrap_or(""),
    );
    out.push_str(&match srm["p_value"].as_f64() {
        None => "sample ratio: not enough users yet\n".to_string(),
        Some(p) if srm["mismatch"] == true => format!(
            "SAMPLE RATIO MISMATCH (p = {p:.2e}): users are not split as configured; do not trust these results\n"
        ),
        Some(p) => format!("sample ratio: as configured (p = {p:.3})\n"),
    });
    let arms = report["arms"].as_array().cloned().unwrap_or_default();
    for metric in v["metrics"].as_array().into_iter().flatten() {
        let metric = metric.as_str().unwrap_or("");
        out.push_str(&format!(
            "\n{metric}\n{:<14} {:>9} {:>9} {:>8} {:>24} {:>26} {:>8}\n",
            "VARIANT", "EXPOSED", "USERS", "CONV", "RATE (95%)", "UPLIFT (95%)", "P(BEAT)"
        ));
        for a in &arms {
            let m = a["metrics"]
                .as_array()
                .and_then(|ms| ms.iter().find(|m| m["metric"] == metric))
                .cloned()
                .unwrap_or(Value::Null);
            let rate = format!(
                "{} [{}, {}]",
                pct(&m["rate"]["value"]),
                pct(&m["rate"]["low"]),
                pct(&m["rate"]["high"])
            );
            let up = &m["uplift"];
            let uplift = if up.is_null() {
                "-".to_string()
            } else {
                format!(
                    "{} [{}, {}]{}",
                    pct(&up["relative"]["value"]),
                    pct(&up["relative"]["low"]),
                    pct(&up["relative"]["high"]),
                    if up["significant"] == true { " *" } else { "" }
                )
            };
            out.push_str(&format!(
                "{:<14} {:>9} {:>9.0} {:>8} {:>24} {:>26} {:>8}\n",
                a["variant"].as_str().unwrap_or(""),
                a["exposures"],
                a["users"].as_f64().unwrap_or(0.0),
                m["conversions"],
                rate,
                uplift,
                pct(&up["chance_to_beat_control"])
            ));
        }
    }
    out.push_str("\n* significant at 95%; intervals stay valid however often you look.");
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
            conn.print(&v, |v| format!("started: version {}", v["version"]));
        }
        ExperimentCmd::List { conn, namespace } => {
            let v = conn
                .call(
                    Method::GET,
                    &format!("/v1/namespaces/{namespace}/experiments"),
                    None,
                )
                .await?;
            conn.print(&v, |v| {
                let mut out = format!(
                    "{:<24} {:<8} {:<12} {:>10} METRICS",
                    "FLAG", "STATUS", "CONTROL", "EXPOSURES"
                );
                for e in v["experiments"].as_array().into_iter().flatten() {
                    let metrics: Vec<&str> = e["metrics"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    out.push_str(&format!(
                        "\n{:<24} {:<8} {:<12} {:>10} {}",
                        e["flag"].as_str().unwrap_or(""),
                        if e["running"] == true {
                            "running"
                        } else {
                            "stopped"
                        },
                        e["control"].as_str().unwrap_or("-"),
                        e["exposures"],
                        metrics.join(",")
                    ));
                }
                out
            });
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
            conn.print(&v, results_table);
        }
        ExperimentCmd::Ship {
            conn,
            namespace,
            flag,
            variant,
        } => {
            let path = format!("/v1/namespaces/{namespace}/flags/{flag}");
            let current = conn.call(Method::GET, &path, None).await?;
            let known = current["definition"]["variants"]
                .as_object()
                .is_some_and(|vs| vs.contains_key(&variant));
            if !known {
                bail!("{variant:?} is not a variant of flag {flag:?}");
            }
            let patch = json!({"defaultVariant": variant, "targeting": null, "experiment": null});
            let v = conn.call(Method::PATCH, &path, Some(patch)).await?;
            conn.print(&v, |v| {
                format!(
                    "shipped {variant}: version {}; results: flagstaff experiment results {namespace} {flag} --control <control>",
                    v["version"]
                )
            });
        }
    }
    Ok(())
}
