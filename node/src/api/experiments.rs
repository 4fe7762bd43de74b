//! A/B tests: `POST /v1/namespaces/{ns}/events` takes exposures and conversions (from SDKs,
//! or raw conversions from any language), `GET /v1/namespaces/{ns}/experiments[/{flag}]`
//! answers what was recorded and what it means (`flagstaff-experiments`).
//!
//! An answer to `POST …/events` comes once the batch is committed (see [`crate::event_intake`]),
//! so a sender that got 200 can forget it; any other answer means "keep it and retry with the
//! same `batch` id", which is never counted twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use flagstaff_api::experiments::{
    ArmSeries, EventsRecorded, ExperimentList, ExperimentResults, ExperimentSummary, Ignored,
    SeriesPoint, WeightsFrom,
};
use flagstaff_experiments::{analyse, ArmInput, DistinctCount, MetricInput, Settings};
use flagstaff_flags::{is_event_name, Context, Fault, FlagSet};
use flagstaff_raft_store::experiment_data::{EventPart, ExperimentRecord};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::extract::{InPath, InQuery, ItemRead, JsonBody, NsPath, NsRead};
use crate::auth::Caller;
use crate::clock::wall_ms;
use crate::error::ApiError;
use crate::event_intake::{count_delta, ArmKey};
use crate::node::Node;

pub fn router() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::new()
        .routes(routes!(record_events))
        .routes(routes!(list_experiments))
        .routes(routes!(experiment_results))
}

/// Entries one list of an events request may have.
pub const MAX_EVENT_ENTRIES: usize = 1_000;
/// The largest conversion value (and sum of values) one entry may carry, so that sums of
/// squares stay far from overflowing however long an experiment runs.
pub const MAX_VALUE: f64 = 1e15;
/// Flag keys one events request may report as evaluated.
pub const MAX_EVALUATED_FLAGS: usize = 10_000;
/// Flag evaluations the `track` entries of one request may cost together.
pub const MAX_TRACK_EVALUATIONS: usize = 20_000;

/// One request's events: aggregates from an SDK, raw conversions from anywhere.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventsRequest {
    /// The sender's id for this batch (1 to 64 letters, digits, `-` or `_`). A retry carries
    /// the same id and is counted once.
    batch: Option<String>,
    #[serde(default)]
    exposures: Vec<ExposureIn>,
    #[serde(default)]
    conversions: Vec<ConversionIn>,
    /// Raw conversions: the node finds the variants of the running experiments for each
    /// context and attributes the conversion to them.
    #[serde(default)]
    track: Vec<TrackIn>,
    /// Events the sender had to drop (its backlog was full), since its last accepted batch.
    #[serde(default)]
    dropped: u64,
    /// Keys of the flags the sender evaluated since its last batch (any flag): each flag's
    /// "last evaluated" time, shown in the flag list.
    #[serde(default)]
    evaluated: Vec<String>,
}

/// Evaluations of one experiment flag that chose one variant.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExposureIn {
    flag: String,
    variant: String,
    count: u64,
    /// The distinct targeting keys, as a sparse HyperLogLog sketch (`index << 8 | rank`,
    /// sorted by index).
    #[serde(default)]
    #[schema(value_type = Vec<u32>)]
    users: DistinctCount,
}

/// Conversions of one metric by users in one variant.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConversionIn {
    flag: String,
    variant: String,
    metric: String,
    count: u64,
    #[serde(default)]
    #[schema(value_type = Vec<u32>)]
    users: DistinctCount,
    /// Conversions that carried a value, and their sum and sum of squares.
    #[serde(default)]
    value_count: u64,
    #[serde(default)]
    value_sum: f64,
    #[serde(default)]
    value_sum_squares: f64,
}

/// One conversion as it happened.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackIn {
    /// The conversion event (a metric of the experiments it counts for).
    event: String,
    /// The evaluation context of the user; `targetingKey` is required.
    #[schema(value_type = Object)]
    context: Value,
    /// A number to average (an order's amount, say).
    value: Option<f64>,
}

/// Accumulates one request's counts and sketches by (flag, variant, metric).
#[derive(Default)]
struct Tally {
    counts: BTreeMap<ArmKey, (u64, u64, f64, f64)>,
    sketches: BTreeMap<ArmKey, DistinctCount>,
    exposures: u64,
    conversions: u64,
    ignored: Vec<Ignored>,
}

impl Tally {
    fn add(&mut self, key: ArmKey, count: u64, values: (u64, f64, f64), users: &DistinctCount) {
        if key.2.is_some() {
            self.conversions = self.conversions.saturating_add(count);
        } else {
            self.exposures = self.exposures.saturating_add(count);
        }
        if !users.is_empty() {
            self.sketches.entry(key.clone()).or_default().merge(users);
        }
        let c = self.counts.entry(key).or_default();
        c.0 = c.0.saturating_add(count);
        c.1 = c.1.saturating_add(values.0);
        c.2 += values.1;
        c.3 += values.2;
    }

    fn ignore(&mut self, path: String, reason: impl Into<String>) {
        self.ignored.push(Ignored {
            path,
            reason: reason.into(),
        });
    }
}

/// The namespace's compiled flags; 404 when it does not exist.
fn flag_set(node: &Node, ns: &str) -> Result<Arc<FlagSet>, ApiError> {
    node.flag_sets
        .get(node, ns)
        .map(|(_, set)| set)
        .ok_or_else(|| ApiError::NotFound(format!("namespace {ns:?} does not exist")))
}

fn bad(path: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::invalid(vec![Fault::new(path, message)])
}

/// Why (flag, variant, metric) counts for no running experiment of `set`, if it does not.
fn not_counted(set: &FlagSet, flag: &str, variant: &str, metric: Option<&str>) -> Option<String> {
    let Some(f) = set.get(flag) else {
        return Some(format!("flag {flag:?} does not exist"));
    };
    let Some(e) = f.experiment() else {
        return Some(format!("flag {flag:?} is not an experiment"));
    };
    if !f.variant_names().any(|v| v == variant) {
        return Some(format!("{variant:?} is not a variant of flag {flag:?}"));
    }
    match metric {
        Some(m) if !e.counts(m) => Some(format!("experiment {flag:?} does not count {m:?}")),
        _ => None,
    }
}

fn check_batch_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(bad("batch", "must be 1 to 64 letters, digits, '-' or '_'"))
    }
}

/// Reads the request's aggregates and conversions into a tally, checking every entry.
fn tally(set: &FlagSet, req: &EventsRequest) -> Result<Tally, ApiError> {
    if req.evaluated.len() > MAX_EVALUATED_FLAGS {
        return Err(bad(
            "evaluated",
            format!(
                "{} flags, more than the limit of {MAX_EVALUATED_FLAGS}",
                req.evaluated.len()
            ),
        ));
    }
    for (name, len) in [
        ("exposures", req.exposures.len()),
        ("conversions", req.conversions.len()),
        ("track", req.track.len()),
    ] {
        if len > MAX_EVENT_ENTRIES {
            return Err(bad(
                name,
                format!("{len} entries, more than the limit of {MAX_EVENT_ENTRIES}"),
            ));
        }
    }
    let mut t = Tally::default();
    for (i, e) in req.exposures.iter().enumerate() {
        let path = format!("exposures[{i}]");
        match not_counted(set, &e.flag, &e.variant, None) {
            Some(why) => t.ignore(path, why),
            None => t.add(
                (e.flag.clone(), e.variant.clone(), None),
                e.count,
                (0, 0.0, 0.0),
                &e.users,
            ),
        }
    }
    for (i, c) in req.conversions.iter().enumerate() {
        let path = format!("conversions[{i}]");
        if c.value_count > c.count {
            return Err(bad(
                format!("{path}.valueCount"),
                format!("{} is more than count ({})", c.value_count, c.count),
            ));
        }
        if !(0.0..=MAX_VALUE * MAX_VALUE).contains(&c.value_sum_squares) {
            return Err(bad(
                format!("{path}.valueSumSquares"),
                format!("must be between 0 and {:e}", MAX_VALUE * MAX_VALUE),
            ));
        }
        if c.value_sum.abs() > MAX_VALUE {
            return Err(bad(
                format!("{path}.valueSum"),
                format!("must be between -{MAX_VALUE:e} and {MAX_VALUE:e}"),
            ));
        }
        match not_counted(set, &c.flag, &c.variant, Some(&c.metric)) {
            Some(why) => t.ignore(path, why),
            None => t.add(
                (c.flag.clone(), c.variant.clone(), Some(c.metric.clone())),
                c.count,
                (c.value_count, c.value_sum, c.value_sum_squares),
                &c.users,
            ),
        }
    }
    track(set, &req.track, &mut t)?;
    Ok(t)
}

/// Attributes raw conversions to the variants their users get in the experiments counting
/// their event.
fn track(set: &FlagSet, items: &[TrackIn], t: &mut Tally) -> Result<(), ApiError> {
    if items.is_empty() {
        return Ok(());
    }
    let experiments: Vec<&str> = set.experiment_keys().collect();
    let mut evaluations = 0usize;
    let now = (wall_ms() / 1000) as i64;
    for (i, item) in items.iter().enumerate() {
        let path = format!("track[{i}]");
        if !is_event_name(&item.event) {
            return Err(bad(
                format!("{path}.event"),
                "must be 1 to 64 letters, digits, '_', '-', '.' or ':'",
            ));
        }
        if item
            .value
            .is_some_and(|v| !v.is_finite() || v.abs() > MAX_VALUE)
        {
            return Err(bad(
                format!("{path}.value"),
                format!("must be a number between -{MAX_VALUE:e} and {MAX_VALUE:e}"),
            ));
        }
        let ctx = Context::from_json(&item.context, now)
            .map_err(|e| bad(format!("{path}.context"), e.message))?;
        let Some(user) = ctx.targeting_key().map(str::to_string) else {
            return Err(bad(
                format!("{path}.context.targetingKey"),
                "is required: conversions are attributed by targeting key",
            ));
        };
        let counting: Vec<&str> = experiments
            .iter()
            .copied()
            .filter(|k| {
                set.get(k)
                    .and_then(|f| f.experiment())
                    .is_some_and(|e| e.counts(&item.event))
            })
            .collect();
        if counting.is_empty() {
            t.ignore(
                path,
                format!("no experiment counts the event {:?}", item.event),
            );
            continue;
        }
        evaluations += counting.len();
        if evaluations > MAX_TRACK_EVALUATIONS {
            return Err(bad(
                "track",
                format!(
                    "the conversions would take more than {MAX_TRACK_EVALUATIONS} flag evaluations; send fewer per request"
                ),
            ));
        }
        let mut users = DistinctCount::new();
        users.insert(&user);
        for flag in counting {
            let r = set.resolve(flag, &ctx);
            let Some(variant) = r.exposed_variant() else {
                continue;
            };
            let values = match item.value {
                Some(v) => (1, v, v * v),
                None => (0, 0.0, 0.0),
            };
            t.add(
                (
                    flag.to_string(),
                    variant.to_string(),
                    Some(item.event.clone()),
                ),
                1,
                values,
                &users,
            );
        }
    }
    Ok(())
}

/// Record exposures and conversions.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/events", tag = "experiments", security(("bearer" = [])),
    params(NsPath), request_body = EventsRequest,
    responses(
        (status = 200, description = "recorded (committed), or recorded before", body = EventsRecorded),
        (status = 400, description = "a malformed entry, with its path"),
        (status = 429, description = "this node's intake is full for this interval; retry with the same batch id"),
        (status = 503, description = "not recorded; retry with the same batch id")))]
async fn record_events(
    State(node): State<Arc<Node>>,
    caller: Result<Caller, ApiError>,
    path: Result<InPath<NsPath>, ApiError>,
    body: axum::extract::Request,
) -> Result<Json<EventsRecorded>, ApiError> {
    let caller = caller?;
    let InPath(NsPath { ns }) = path?;
    caller.check_namespace(&ns)?;
    node.rate_limits.check(match &caller {
        Caller::Admin(name) => name,
        Caller::Sdk { hash, .. } => hash,
    })?;
    let body = JsonBody::read(body, node.config.max_body_bytes).await?;
    let mut de = serde_json::Deserializer::from_slice(&body.raw);
    let req: EventsRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        bad(
            if path == "." { String::new() } else { path },
            e.inner().to_string(),
        )
    })?;
    if let Some(id) = &req.batch {
        check_batch_id(id)?;
    }
    if req.dropped > 0 {
        tracing::info!(
            ns,
            dropped = req.dropped,
            "a sender dropped A/B test events (backlog full)"
        );
    }
    let set = flag_set(&node, &ns)?;
    let already = req
        .batch
        .as_deref()
        .is_some_and(|id| node.state.read().experiments().seen(&ns, id));
    let mut t = tally(&set, &req)?;
    let answer = |duplicate: bool, t: Tally| EventsRecorded {
        batch: req.batch.clone(),
        duplicate,
        exposures: t.exposures,
        conversions: t.conversions,
        ignored: t.ignored,
    };
    // Flags the sender names as evaluated, and the experiment flags it saw exposures of.
    let mut evaluated: Vec<String> = req
        .evaluated
        .iter()
        .filter(|k| set.get(k).is_some())
        .cloned()
        .chain(
            t.counts
                .keys()
                .filter(|k| k.2.is_none())
                .map(|k| k.0.clone()),
        )
        .collect();
    evaluated.sort_unstable();
    evaluated.dedup();
    if already || (t.counts.is_empty() && evaluated.is_empty()) {
        return Ok(Json(answer(already, t)));
    }
    let part = EventPart {
        id: Some(match &req.batch {
            Some(id) => id.clone(),
            None => format!("req-{:032x}", rand::random::<u128>()),
        }),
        counts: t
            .counts
            .iter()
            .map(|((f, v, m), (n, vc, vs, vss))| {
                count_delta(f, v, m.as_deref(), *n, (*vc, *vs, *vss))
            })
            .collect(),
    };
    let sketches: Vec<(ArmKey, DistinctCount)> =
        std::mem::take(&mut t.sketches).into_iter().collect();
    let ack = node.events.submit(&ns, part, sketches, evaluated)?;
    let wait = node.config.write_timeout + node.config.events_interval * 2;
    match tokio::time::timeout(wait, ack).await {
        Ok(Ok(Ok(()))) => Ok(Json(answer(false, t))),
        Ok(Ok(Err(e))) => Err(ApiError::Unavailable(format!(
            "the events were not recorded ({e}); retry with the same batch id"
        ))),
        Ok(Err(_)) | Err(_) => Err(ApiError::Unavailable(
            "the events' outcome is unknown; retry with the same batch id".into(),
        )),
    }
}

/// The experiment flags of a namespace: running ones and those with recorded data.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/experiments", tag = "experiments", security(("bearer" = [])),
    params(NsRead), responses((status = 200, description = "the experiments", body = ExperimentList)))]
async fn list_experiments(
    NsRead { node, ns, .. }: NsRead,
) -> Result<Json<ExperimentList>, ApiError> {
    let set = flag_set(&node, &ns)?;
    let state = node.state.read();
    let records: BTreeMap<&str, &ExperimentRecord> = state.experiments().records_of(&ns).collect();
    let mut flags: Vec<&str> = set
        .experiment_keys()
        .chain(records.keys().copied())
        .collect();
    flags.sort_unstable();
    flags.dedup();
    let experiments = flags
        .into_iter()
        .map(|flag| {
            let e = set.get(flag).and_then(|f| f.experiment());
            let rec = records.get(flag);
            ExperimentSummary {
                flag: flag.to_string(),
                running: e.is_some(),
                control: e.map(|e| e.control().to_string()),
                metrics: e
                    .map(|e| e.metrics().map(str::to_string).collect())
                    .unwrap_or_default(),
                exposures: rec.map_or(0, |r| r.arms.values().map(|a| a.exposures).sum()),
                first_event_ms: rec.map(|r| r.first_ms),
                last_event_ms: rec.map(|r| r.last_ms),
            }
        })
        .collect();
    Ok(Json(ExperimentList { experiments }))
}

/// The configured weights of the first `fractional` split in a targeting rule.
pub fn fractional_weights(rule: &Value) -> Option<BTreeMap<String, f64>> {
    fn find(v: &Value, depth: usize) -> Option<&Vec<Value>> {
        if depth > flagstaff_flags::limits::MAX_RULE_DEPTH {
            return None;
        }
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(args)) = m.get("fractional") {
                    return Some(args);
                }
                m.values().find_map(|x| find(x, depth + 1))
            }
            Value::Array(items) => items.iter().find_map(|x| find(x, depth + 1)),
            _ => None,
        }
    }
    let args = find(rule, 0)?;
    let mut weights = BTreeMap::new();
    for a in args {
        let Value::Array(entry) = a else { continue };
        let Some(Value::String(name)) = entry.first() else {
            continue;
        };
        let w = entry.get(1).and_then(Value::as_f64).unwrap_or(1.0).max(0.0);
        *weights.entry(name.clone()).or_insert(0.0) += w;
    }
    (!weights.is_empty()).then_some(weights)
}

/// Which variant is the control.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ControlQuery {
    /// The control variant, for a flag whose experiment field was removed.
    control: Option<String>,
}

/// An experiment's results: per variant exposures, users, conversions, rates and uplifts with
/// always-valid intervals, and the sample-ratio check.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/experiments/{key}", tag = "experiments", security(("bearer" = [])),
    params(ItemRead, ControlQuery),
    responses((status = 200, description = "the results", body = ExperimentResults),
        (status = 404, description = "no such flag, or neither running nor recorded")))]
async fn experiment_results(
    r: ItemRead,
    InQuery(ControlQuery { control }): InQuery<ControlQuery>,
) -> Result<Json<ExperimentResults>, ApiError> {
    let (node, ns, flag) = (r.node, r.ns, r.key);
    let control_param = control;
    let set = flag_set(&node, &ns)?;
    let compiled = set.get(&flag);
    let experiment = compiled.and_then(|f| f.experiment());
    let (record, definition) = {
        let state = node.state.read();
        let record = state.experiments().record(&ns, &flag).cloned();
        let definition = state
            .namespace(&ns)
            .and_then(|s| s.flags.get(&flag))
            .and_then(|i| i.definition.json().ok().cloned());
        (record, definition)
    };
    if experiment.is_none() && record.is_none() {
        return Err(ApiError::NotFound(format!(
            "flag {flag:?} in namespace {ns:?} is not an experiment and has no recorded events"
        )));
    }
    let record = record.unwrap_or_default();
    let control = control_param
        .or_else(|| experiment.map(|e| e.control().to_string()))
        .ok_or_else(|| {
            bad(
                "control",
                format!("flag {flag:?} is no longer an experiment: name its control variant with ?control="),
            )
        })?;
    let mut metrics: Vec<String> = experiment
        .map(|e| e.metrics().map(str::to_string).collect())
        .unwrap_or_default();
    for arm in record.arms.values() {
        for m in arm.metrics.keys() {
            if !metrics.contains(m) {
                metrics.push(m.clone());
            }
        }
    }
    let split = definition
        .as_ref()
        .and_then(|d| d.get("targeting"))
        .and_then(fractional_weights);
    let weights_from = if split.is_some() {
        WeightsFrom::Fractional
    } else {
        WeightsFrom::Equal
    };
    let mut variants: Vec<String> = record.arms.keys().cloned().collect();
    if let Some(w) = &split {
        variants.extend(w.iter().filter(|(_, w)| **w > 0.0).map(|(v, _)| v.clone()));
    } else if let Some(f) = compiled {
        variants.extend(f.variant_names().map(str::to_string));
    }
    variants.push(control.clone());
    variants.sort();
    variants.dedup();
    let weights: BTreeMap<String, f64> = variants
        .iter()
        .map(|v| {
            let w = match &split {
                Some(s) => s.get(v).copied().unwrap_or(0.0),
                None => 1.0,
            };
            (v.clone(), w)
        })
        .collect();
    let empty = Default::default();
    let arms: Vec<ArmInput> = variants
        .iter()
        .map(|v| {
            let arm = record.arms.get(v).unwrap_or(&empty);
            ArmInput {
                variant: v.clone(),
                weight: weights[v],
                exposures: arm.exposures,
                users: arm.users.estimate(),
                metrics: metrics
                    .iter()
                    .map(|m| {
                        let r = arm.metrics.get(m).cloned().unwrap_or_default();
                        MetricInput {
                            metric: m.clone(),
                            converters: r.converters.estimate(),
                            conversions: r.conversions,
                            value_count: r.value_count,
                            value_sum: r.value_sum.0,
                            value_sum_squares: r.value_sum_squares.0,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let report = analyse(&control, &arms, &Settings::default())
        .map_err(|e| bad("control", e.to_string()))?;
    let series = record
        .arms
        .iter()
        .map(|(v, arm)| ArmSeries {
            variant: v.clone(),
            points: arm
                .series
                .buckets()
                .map(|(width_ms, b)| SeriesPoint {
                    start_ms: b.start_ms,
                    width_ms,
                    exposures: b.exposures,
                    conversions: b.conversions,
                })
                .collect(),
        })
        .collect();
    Ok(Json(ExperimentResults {
        flag,
        running: experiment.is_some(),
        control,
        metrics,
        weights,
        weights_from,
        first_event_ms: (record.first_ms > 0).then_some(record.first_ms),
        last_event_ms: (record.last_ms > 0).then_some(record.last_ms),
        report,
        series,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn weights_come_from_the_first_fractional_split() {
        let rule = json!({"if": [{"in": ["@example.com", {"var": "email"}]}, "on",
            {"fractional": [{"var": "targetingKey"}, ["a", 25], ["b", 75], ["a", 25]]}]});
        let w = fractional_weights(&rule).unwrap();
        assert_eq!(w["a"], 50.0);
        assert_eq!(w["b"], 75.0);
        assert!(fractional_weights(&json!({"if": [true, "a", "b"]})).is_none());
        let shorthand = fractional_weights(&json!({"fractional": [["x"], ["y"]]})).unwrap();
        assert_eq!((shorthand["x"], shorthand["y"]), (1.0, 1.0));
    }
}
