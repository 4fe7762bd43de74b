//! Experiment pages: the namespace's A/B tests, and one test's results with its charts
//! (drawn here as SVG, no script) and the "stop and ship" action.

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use flagstaff_api::admin::ItemInfo;
use flagstaff_api::experiments::{ArmSeries, ExperimentList, ExperimentResults, Report};
use flagstaff_experiments::{ArmReport, Estimate, MetricReport, Srm};
use serde::Deserialize;
use serde_json::json;

use super::*;

pub(super) async fn experiments(
    State(ui): State<Ui>,
    s: Signed,
    Path(ns): Path<String>,
) -> Response {
    let uri = format!("/v1/namespaces/{}/experiments", seg(&ns));
    read_page(
        &ui,
        &s,
        StatusCode::OK,
        &uri,
        "experiments.html",
        |l: ExperimentList| json!({"title": format!("Experiments in {ns}"), "ns": ns, "experiments": l.experiments}),
    )
    .await
}

#[derive(Deserialize, Default)]
pub(super) struct ResultsQuery {
    /// The control variant, for an experiment already stopped.
    #[serde(default)]
    control: String,
}

pub(super) async fn experiment(
    State(ui): State<Ui>,
    s: Signed,
    Path((ns, flag)): Path<(String, String)>,
    Query(q): Query<ResultsQuery>,
) -> Response {
    experiment_page(&ui, &s, StatusCode::OK, &ns, &flag, &q.control, None).await
}

async fn experiment_page(
    ui: &Ui,
    s: &Signed,
    status: StatusCode,
    ns: &str,
    flag: &str,
    control: &str,
    message: Option<String>,
) -> Response {
    let mut uri = format!(
        "/v1/namespaces/{}/experiments/{}?consistency=linearizable",
        seg(ns),
        seg(flag)
    );
    if !control.is_empty() {
        uri.push_str(&format!("&control={}", seg(control)));
    }
    let r = match s.api.read::<ExperimentResults>(&uri).await {
        Ok(r) => r,
        Err(a) => return api_error_page(ui, s, &a),
    };
    // The flag's version makes "stop and ship" a conditional write; without it (the flag is
    // gone) the page shows no ship form.
    let version = s
        .api
        .read::<ItemInfo>(&flag_uri(ns, flag))
        .await
        .ok()
        .map(|f| f.version);
    let report = &r.report;
    let metrics: Vec<_> = r
        .metrics
        .iter()
        .map(|name| {
            json!({"name": name, "chart": rate_chart(report, name), "rows": metric_rows(report, name)})
        })
        .collect();
    let variants: Vec<&str> = report.arms.iter().map(|a| a.variant.as_str()).collect();
    render(
        ui,
        status,
        "experiment.html",
        Some(s),
        json!({
            "title": format!("Experiment {flag}"), "ns": ns, "flag": flag, "r": r,
            "exposure_chart": exposure_chart(&r.series), "metrics": metrics,
            "srm_text": srm_in_words(&report.srm), "srm_bad": report.srm.mismatch,
            "version": version, "message": message, "variants": variants,
        }),
    )
}

/// The sample-ratio check, for people.
fn srm_in_words(srm: &Srm) -> String {
    let Some(p) = srm.p_value else {
        return "Not enough users yet to check the split.".into();
    };
    if srm.mismatch {
        format!(
            "Warning: the variants did not get the share of users the split configures (p = {p:.2e}). \
             Something is assigning or counting users unevenly (a redirect that loses users, a bot, \
             a changed split, an SDK that counts only some evaluations). Do not trust the results \
             until the cause is found."
        )
    } else {
        format!("The users are split as configured (p = {p:.3}).")
    }
}

/// One row per arm of `metric`'s table; an arm without the metric shows its users only.
fn metric_rows(report: &Report, metric: &str) -> Vec<serde_json::Value> {
    let row = |a: &ArmReport| {
        let m = metric_of(a, metric);
        let uplift = m.and_then(|m| m.uplift.as_ref());
        let rate = m.map(|m| m.rate);
        json!({
            "variant": a.variant, "users": a.users.round() as u64, "exposures": a.exposures,
            "conversions": m.map(|m| m.conversions),
            "rate": rate.map(|r| pct(r.value)), "low": rate.map(|r| pct(r.low)), "high": rate.map(|r| pct(r.high)),
            "uplift": uplift.map(|u| format!("{:+.1}%", u.relative.value * 100.0)),
            "uplift_low": uplift.map(|u| pct(u.relative.low)), "uplift_high": uplift.map(|u| pct(u.relative.high)),
            "beat": uplift.map(|u| format!("{:.1}%", u.chance_to_beat_control * 100.0)),
            "significant": uplift.is_some_and(|u| u.significant),
            "mean": m.and_then(|m| m.mean_value).map(|e: Estimate| format!("{:.2}", e.value)),
        })
    };
    report.arms.iter().map(row).collect()
}

fn metric_of<'a>(arm: &'a ArmReport, metric: &str) -> Option<&'a MetricReport> {
    arm.metrics.iter().find(|m| m.metric == metric)
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];
const WIDTH: f64 = 640.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Cumulative exposures over time, one line per variant.
fn exposure_chart(series: &[ArmSeries]) -> String {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            let mut total = 0.0;
            // The line starts at zero where the first bucket starts.
            let start = s.points.first().map(|p| (p.start_ms as f64, 0.0));
            let points = start
                .into_iter()
                .chain(s.points.iter().map(|p| {
                    total += p.exposures as f64;
                    ((p.start_ms + p.width_ms) as f64, total)
                }))
                .collect();
            (s.variant.as_str(), points)
        })
        .collect();
    let all = lines.iter().flat_map(|(_, p)| p.iter());
    let (mut t0, mut t1, mut ymax) = (f64::MAX, f64::MIN, 1.0f64);
    for &(t, y) in all {
        t0 = t0.min(t);
        t1 = t1.max(t);
        ymax = ymax.max(y);
    }
    if t0 > t1 {
        return String::new();
    }
    let (height, left, bottom) = (220.0, 60.0, 30.0);
    let span = (t1 - t0).max(1.0);
    let x = |t: f64| left + (t - t0) / span * (WIDTH - left - 10.0);
    let y = |v: f64| 10.0 + (1.0 - v / ymax) * (height - bottom - 10.0);
    let mut svg = format!(
        r#"<svg class="chart" role="img" aria-label="Exposures over time per variant" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}">"#
    );
    svg.push_str(&format!(
        r##"<line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="#888"/><text x="4" y="14" font-size="11">{ymax:.0}</text><text x="4" y="{b}" font-size="11">0</text>"##,
        b = height - bottom,
        r = WIDTH - 10.0
    ));
    for (i, (variant, points)) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts: Vec<String> = points
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        svg.push_str(&format!(
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        ));
        svg.push_str(&format!(
            r#"<text x="{}" y="{}" font-size="12" fill="{colour}">{}</text>"#,
            left + 10.0 + 120.0 * i as f64,
            height - 8.0,
            escape(variant)
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// Each variant's conversion rate as a dot with its interval as a bar.
fn rate_chart(report: &Report, metric: &str) -> String {
    let zero = Estimate {
        value: 0.0,
        low: 0.0,
        high: 0.0,
    };
    let rows: Vec<(&str, f64, f64, f64)> = report
        .arms
        .iter()
        .map(|a| {
            let r = metric_of(a, metric).map_or(zero, |m| m.rate);
            (a.variant.as_str(), r.value, r.low, r.high)
        })
        .collect();
    let max = rows.iter().map(|r| r.3).fold(0.0f64, f64::max).max(1e-9);
    let (left, row_h) = (120.0, 28.0);
    let height = row_h * rows.len() as f64 + 24.0;
    let x = |v: f64| left + v / max * (WIDTH - left - 80.0);
    let mut svg = format!(
        r#"<svg class="chart" role="img" aria-label="Conversion rate of {} per variant, with 95% intervals" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}">"#,
        escape(metric)
    );
    for (i, (variant, value, low, high)) in rows.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let cy = 16.0 + row_h * i as f64;
        svg.push_str(&format!(
            r#"<text x="4" y="{:.1}" font-size="12">{}</text><line x1="{:.1}" y1="{cy:.1}" x2="{:.1}" y2="{cy:.1}" stroke="{colour}" stroke-width="6" stroke-opacity="0.35"/><circle cx="{:.1}" cy="{cy:.1}" r="5" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{:.2}%</text>"#,
            cy + 4.0,
            escape(variant),
            x(*low),
            x(*high),
            x(*value),
            WIDTH - 4.0,
            cy + 4.0,
            value * 100.0
        ));
    }
    svg.push_str(&format!(
        r##"<text x="{left}" y="{:.1}" font-size="11" fill="#555">0%</text><text x="{:.1}" y="{:.1}" font-size="11" fill="#555" text-anchor="end">{:.1}%</text></svg>"##,
        height - 4.0,
        WIDTH - 80.0,
        height - 4.0,
        max * 100.0
    ));
    svg
}

/// "Stop and ship variant X": one audited flag write that serves X to everyone and ends the
/// experiment (its recorded results stay readable).
pub(super) async fn ship(
    State(ui): State<Ui>,
    Path((ns, flag)): Path<(String, String)>,
    f: SignedForm,
) -> Response {
    let variant = f.field("variant").to_string();
    let control = f.field("control").to_string();
    let patch = json!({"defaultVariant": variant, "targeting": null, "experiment": null});
    let a = f
        .signed
        .api
        .call(
            Method::PATCH,
            &flag_uri(&ns, &flag),
            Some(&patch),
            &[if_match(f.field("version"))],
        )
        .await;
    if a.ok() {
        return see_other(&format!(
            "/ui/ns/{}/experiments/{}?control={}",
            seg(&ns),
            seg(&flag),
            seg(&control)
        ));
    }
    let message = if a.status == StatusCode::PRECONDITION_FAILED {
        "Someone changed this flag after you opened this page; here are the results as they are now. Ship again if you still want to.".to_string()
    } else {
        a.message()
    };
    experiment_page(
        &ui,
        &f.signed,
        a.status,
        &ns,
        &flag,
        &control,
        Some(message),
    )
    .await
}
