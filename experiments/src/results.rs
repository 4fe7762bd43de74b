//! The results of one experiment from its aggregates: per arm and metric a conversion rate, the
//! relative uplift against the control arm and the mean value per conversion event, each with
//! an always-valid interval; and a sample-ratio-mismatch check over the arms.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::stats::{normal_cdf, srm_p_value};

/// One arm (variant) of an experiment, as aggregated by the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmInput {
    /// The variant's name; unique within an experiment.
    pub variant: String,
    /// The arm's share of traffic as configured (any positive scale; shares are wᵢ/Σw).
    pub weight: f64,
    /// Exposure events recorded for the arm (a user may be exposed many times).
    pub exposures: u64,
    /// Distinct users exposed, estimated by a sketch (so not necessarily whole).
    pub users: f64,
    /// The arm's metrics; at most one per metric name.
    pub metrics: Vec<MetricInput>,
}

/// One metric of one arm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricInput {
    /// The metric's name, matched against the control arm's metric of the same name.
    pub metric: String,
    /// Distinct exposed users who converted, estimated by a sketch.
    pub converters: f64,
    /// Conversion events (a user may convert many times).
    pub conversions: u64,
    /// Conversion events that carried a numeric value.
    pub value_count: u64,
    /// Sum of those values.
    pub value_sum: f64,
    /// Sum of their squares.
    pub value_sum_squares: f64,
}

/// How results are computed. Deserializes with defaults for missing fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Error rate of every interval, in (0, 1): each covers its true value at all looks with
    /// probability at least 1 − α. Default 0.05.
    pub alpha: f64,
    /// Total users across arms at which the confidence sequences are tightest (the mixture's
    /// tuning parameter); any positive value keeps the intervals valid. Default 5,000.
    pub tuning_users: f64,
    /// Standard relative error of the sketches that counted `users` and `converters`, in
    /// [0, 1); 0 for exact counts. Default: [`DistinctCount::relative_error`](crate::DistinctCount::relative_error).
    pub sketch_relative_error: f64,
    /// p-value below which the arms' user counts are a sample-ratio mismatch, in (0, 1).
    /// Default 0.001.
    pub srm_threshold: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            alpha: 0.05,
            tuning_users: 5_000.0,
            sketch_relative_error: crate::DistinctCount::relative_error(),
            srm_threshold: 0.001,
        }
    }
}

/// A point estimate with its interval; all three finite, low ≤ value ≤ high.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The point estimate.
    pub value: f64,
    /// Lower end of the always-valid interval.
    pub low: f64,
    /// Upper end of the always-valid interval.
    pub high: f64,
}

/// A treatment arm's metric against the control arm's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Relative uplift of the rate, rate/control_rate − 1, with its always-valid interval
    /// (delta method); the interval's lower end is never below −1.
    pub relative: Estimate,
    /// Chance the arm's rate beats control's: Φ(relative/se), the normal approximation with a
    /// flat prior. In [0, 1].
    pub chance_to_beat_control: f64,
    /// The interval excludes 0: the arm differs from control at level α, whenever it is looked at.
    pub significant: bool,
}

/// One metric's results for one arm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricReport {
    /// The metric's name.
    pub metric: String,
    /// Conversion events, as input.
    pub conversions: u64,
    /// Distinct converters, as input.
    pub converters: f64,
    /// converters/users, its interval clamped to [0, 1]; value 0 and interval [0, 1] when the
    /// arm has no users.
    pub rate: Estimate,
    /// Against control; None for the control arm, when either arm has no users, when control
    /// has no such metric or a rate of 0, or when the ratio is not representable.
    pub uplift: Option<Comparison>,
    /// Mean value per conversion event with its always-valid interval; None with fewer than two
    /// values (no variance to build an interval from) or when the values overflow.
    pub mean_value: Option<Estimate>,
}

/// One arm's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmReport {
    /// The variant's name.
    pub variant: String,
    /// Exposure events, as input.
    pub exposures: u64,
    /// Distinct users, as input.
    pub users: f64,
    /// One report per input metric, in input order.
    pub metrics: Vec<MetricReport>,
}

/// One arm's share of users, configured and observed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmShare {
    /// The variant's name.
    pub variant: String,
    /// weight/Σweights.
    pub expected_share: f64,
    /// users/Σusers; 0 when no arm has users.
    pub observed_share: f64,
}

/// The sample-ratio-mismatch check: do the arms' user counts fit their weights?
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Srm {
    /// p-value of [`srm_p_value`] over the arms' users; None with fewer than two arms or no users.
    pub p_value: Option<f64>,
    /// p_value is below the threshold: assignment or logging is broken and the results should
    /// not be trusted.
    pub mismatch: bool,
    /// Per arm, in input order.
    pub shares: Vec<ArmShare>,
}

/// The results of one experiment. Every number in it is finite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The sample-ratio-mismatch check.
    pub srm: Srm,
    /// Per arm, in input order.
    pub arms: Vec<ArmReport>,
}

/// Why [`analyse`] refused its input.
#[derive(Clone, Debug, PartialEq)]
pub enum AnalysisError {
    /// The control variant is not among the arms.
    UnknownControl {
        /// The control variant asked for.
        control: String,
    },
    /// A setting is out of its range.
    InvalidSetting {
        /// The setting's field name.
        setting: &'static str,
        /// Its value.
        value: f64,
    },
    /// Two arms have the same variant name.
    DuplicateVariant {
        /// The repeated name.
        variant: String,
    },
    /// An arm has two metrics with the same name.
    DuplicateMetric {
        /// The arm.
        variant: String,
        /// The repeated metric.
        metric: String,
    },
    /// A number of an arm is negative or not finite (or a weight is not positive).
    InvalidNumber {
        /// The arm.
        variant: String,
        /// The field, with the metric's name for metric fields (`metrics[checkout].converters`).
        field: String,
        /// Its value.
        value: f64,
    },
}

impl fmt::Display for AnalysisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnalysisError::UnknownControl { control } => {
                write!(f, "control variant {control:?} is not among the arms")
            }
            AnalysisError::InvalidSetting { setting, value } => {
                write!(f, "setting {setting} = {value} is out of range")
            }
            AnalysisError::DuplicateVariant { variant } => {
                write!(f, "variant {variant:?} appears more than once")
            }
            AnalysisError::DuplicateMetric { variant, metric } => {
                write!(
                    f,
                    "variant {variant:?} has metric {metric:?} more than once"
                )
            }
            AnalysisError::InvalidNumber {
                variant,
                field,
                value,
            } => write!(f, "variant {variant:?}: {field} = {value} is not allowed"),
        }
    }
}

impl std::error::Error for AnalysisError {}

fn check_settings(s: &Settings) -> Result<(), AnalysisError> {
    let checks: [(&'static str, f64, bool); 4] = [
        ("alpha", s.alpha, s.alpha > 0.0 && s.alpha < 1.0),
        (
            "tuning_users",
            s.tuning_users,
            s.tuning_users > 0.0 && s.tuning_users.is_finite(),
        ),
        (
            "sketch_relative_error",
            s.sketch_relative_error,
            (0.0..1.0).contains(&s.sketch_relative_error),
        ),
        (
            "srm_threshold",
            s.srm_threshold,
            s.srm_threshold > 0.0 && s.srm_threshold < 1.0,
        ),
    ];
    for (setting, value, ok) in checks {
        if !ok {
            return Err(AnalysisError::InvalidSetting { setting, value });
        }
    }
    Ok(())
}

fn check_arms(arms: &[ArmInput]) -> Result<(), AnalysisError> {
    let mut variants = BTreeSet::new();
    for arm in arms {
        if !variants.insert(arm.variant.as_str()) {
            return Err(AnalysisError::DuplicateVariant {
                variant: arm.variant.clone(),
            });
        }
        let invalid = |field: String, value: f64| AnalysisError::InvalidNumber {
            variant: arm.variant.clone(),
            field,
            value,
        };
        if !(arm.weight > 0.0 && arm.weight.is_finite()) {
            return Err(invalid("weight".into(), arm.weight));
        }
        if !non_negative(arm.users) {
            return Err(invalid("users".into(), arm.users));
        }
        let mut metrics = BTreeSet::new();
        for m in &arm.metrics {
            if !metrics.insert(m.metric.as_str()) {
                return Err(AnalysisError::DuplicateMetric {
                    variant: arm.variant.clone(),
                    metric: m.metric.clone(),
                });
            }
            let field = |name: &str| format!("metrics[{}].{name}", m.metric);
            if !non_negative(m.converters) {
                return Err(invalid(field("converters"), m.converters));
            }
            if !m.value_sum.is_finite() {
                return Err(invalid(field("value_sum"), m.value_sum));
            }
            if !non_negative(m.value_sum_squares) {
                return Err(invalid(field("value_sum_squares"), m.value_sum_squares));
            }
        }
    }
    Ok(())
}

fn non_negative(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

/// A rate with the variance its interval is built from.
struct Rate {
    value: f64,
    variance: f64,
}

/// converters/users clamped to [0, 1] (both are sketch estimates, so converters can read a
/// little above users), and its variance: binomial sampling plus the sketch error of
/// numerator and denominator, 2·(r·p)².
///
/// The sampling part holds p half a user away from 0 and 1, so an arm where nobody (or
/// everybody) converted does not claim a zero-width interval after a handful of users.
fn rate(converters: f64, users: f64, relative_error: f64) -> Option<Rate> {
    if users <= 0.0 {
        return None;
    }
    let value = (converters / users).clamp(0.0, 1.0);
    let half = (0.5 / users).min(0.5);
    let p = value.max(half).min(1.0 - half);
    let sketch = relative_error * value;
    Some(Rate {
        value,
        variance: p * (1.0 - p) / users + 2.0 * sketch * sketch,
    })
}

/// Half-width of the always-valid interval for an estimate with `variance` from `n`
/// observations; the confidence sequence fed variance·n per observation, in a form that
/// cannot overflow.
fn half_width(variance: f64, n: f64, settings: &Settings, tuning: f64) -> f64 {
    // The boundary scales with the square root of the per-observation variance, so computing
    // it for unit variance and scaling afterwards never forms variance·n (which could overflow).
    let unit = crate::stats::confidence_sequence_half_width(1.0, n, settings.alpha, tuning);
    unit * (variance.sqrt() * n.sqrt())
}

fn estimate(value: f64, half_width: f64) -> Option<Estimate> {
    let e = Estimate {
        value,
        low: value - half_width,
        high: value + half_width,
    };
    (e.value.is_finite() && e.low.is_finite() && e.high.is_finite()).then_some(e)
}

fn uplift(arm: &Rate, control: &Rate, n: f64, settings: &Settings) -> Option<Comparison> {
    if control.value <= 0.0 {
        return None;
    }
    let pa = control.value;
    let pb = arm.value;
    let relative = pb / pa - 1.0;
    // Delta method for pb/pa with independent arms.
    let variance = arm.variance / (pa * pa) + pb * pb * control.variance / (pa * pa * pa * pa);
    let hw = half_width(variance, n, settings, settings.tuning_users);
    let mut interval = estimate(relative, hw)?;
    // pb ≥ 0, so the ratio never falls below −1.
    interval.low = interval.low.max(-1.0);
    let se = variance.sqrt();
    let chance = if se > 0.0 {
        normal_cdf(relative / se)
    } else if relative > 0.0 {
        1.0
    } else if relative < 0.0 {
        0.0
    } else {
        0.5
    };
    chance.is_finite().then_some(Comparison {
        relative: interval,
        chance_to_beat_control: chance,
        significant: interval.low > 0.0 || interval.high < 0.0,
    })
}

/// Mean value per conversion event and its interval, from count, sum and sum of squares.
fn mean_value(m: &MetricInput, settings: &Settings, tuning: f64) -> Option<Estimate> {
    if m.value_count < 2 {
        return None;
    }
    let n = m.value_count as f64;
    let mean = m.value_sum / n;
    // Sample variance from the sums; rounding (or inconsistent sums) can push it below zero.
    let sample_variance = ((m.value_sum_squares / n - mean * mean) * (n / (n - 1.0))).max(0.0);
    let hw = half_width(sample_variance / n, n, settings, tuning);
    estimate(mean, hw)
}

/// Computes the [`Report`] of one experiment whose control arm is `control`.
///
/// Intervals are two-sided always-valid (1 − α) confidence sequences (see
/// [`confidence_sequence_half_width`](crate::stats::confidence_sequence_half_width)), so the
/// report may be recomputed at every look without inflating the error rate. An arm's rate and
/// mean are tuned to be tightest at its weight's share of `tuning_users`; uplifts at
/// `tuning_users` with n the two arms' users together. The sketch error of users and
/// converters is folded into every rate's variance and into the SRM test.
///
/// Refuses unknown control, duplicate variants or metrics, settings out of range, and negative
/// or non-finite numbers. Never panics, and every number in the report is finite.
pub fn analyse(
    control: &str,
    arms: &[ArmInput],
    settings: &Settings,
) -> Result<Report, AnalysisError> {
    check_settings(settings)?;
    check_arms(arms)?;
    let control_arm = arms.iter().find(|a| a.variant == control).ok_or_else(|| {
        AnalysisError::UnknownControl {
            control: control.to_owned(),
        }
    })?;
    let r = settings.sketch_relative_error;
    // Shares from weights scaled by the largest, so weights near f64::MAX cannot overflow the sum.
    let weight_max = arms.iter().map(|a| a.weight).fold(0.0, f64::max);
    let weight_total: f64 = arms.iter().map(|a| a.weight / weight_max).sum();
    let share = |a: &ArmInput| a.weight / weight_max / weight_total;
    let user_total: f64 = arms.iter().map(|a| a.users).sum();

    let users: Vec<f64> = arms.iter().map(|a| a.users).collect();
    let weights: Vec<f64> = arms.iter().map(share).collect();
    let p_value = srm_p_value(&users, &weights, r);
    let srm = Srm {
        p_value,
        mismatch: p_value.is_some_and(|p| p < settings.srm_threshold),
        shares: arms
            .iter()
            .map(|a| ArmShare {
                variant: a.variant.clone(),
                expected_share: share(a),
                observed_share: if user_total > 0.0 && user_total.is_finite() {
                    a.users / user_total
                } else {
                    0.0
                },
            })
            .collect(),
    };

    let reports = arms
        .iter()
        .map(|arm| {
            // Weights are positive and finite, so the share is in (0, 1] and the tuning positive.
            let tuning = settings.tuning_users * share(arm);
            let metrics = arm
                .metrics
                .iter()
                .map(|m| metric_report(arm, m, control_arm, tuning, settings))
                .collect();
            ArmReport {
                variant: arm.variant.clone(),
                exposures: arm.exposures,
                users: arm.users,
                metrics,
            }
        })
        .collect();
    Ok(Report { srm, arms: reports })
}

fn metric_report(
    arm: &ArmInput,
    m: &MetricInput,
    control: &ArmInput,
    tuning: f64,
    settings: &Settings,
) -> MetricReport {
    let r = settings.sketch_relative_error;
    let own = rate(m.converters, arm.users, r);
    let rate_estimate = own
        .as_ref()
        .and_then(|p| {
            let hw = half_width(p.variance, arm.users, settings, tuning);
            estimate(p.value, hw)
        })
        .map(|e| Estimate {
            value: e.value,
            low: e.low.max(0.0),
            high: e.high.min(1.0),
        })
        .unwrap_or(Estimate {
            value: own.as_ref().map_or(0.0, |p| p.value),
            low: 0.0,
            high: 1.0,
        });
    let comparison = if arm.variant == control.variant {
        None
    } else {
        let control_rate = control
            .metrics
            .iter()
            .find(|c| c.metric == m.metric)
            .and_then(|c| rate(c.converters, control.users, r));
        match (own.as_ref(), control_rate.as_ref()) {
            (Some(b), Some(a)) => uplift(b, a, arm.users + control.users, settings),
            _ => None,
        }
    };
    MetricReport {
        metric: m.metric.clone(),
        conversions: m.conversions,
        converters: m.converters,
        rate: rate_estimate,
        uplift: comparison,
        mean_value: mean_value(m, settings, tuning),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::confidence_sequence_half_width;

    fn metric(converters: f64) -> MetricInput {
        MetricInput {
            metric: "checkout".into(),
            converters,
            conversions: converters as u64,
            value_count: 0,
            value_sum: 0.0,
            value_sum_squares: 0.0,
        }
    }

    fn arm(variant: &str, users: f64, converters: f64) -> ArmInput {
        ArmInput {
            variant: variant.into(),
            weight: 1.0,
            exposures: users as u64,
            users,
            metrics: vec![metric(converters)],
        }
    }

    fn exact() -> Settings {
        Settings {
            sketch_relative_error: 0.0,
            ..Settings::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-300)
    }

    #[test]
    fn rate_and_uplift_follow_their_formulas() {
        let arms = [arm("a", 1000.0, 100.0), arm("b", 1200.0, 150.0)];
        let report = analyse("a", &arms, &exact()).expect("valid");
        let a = &report.arms[0].metrics[0];
        let hw = confidence_sequence_half_width(0.09, 1000.0, 0.05, 2_500.0);
        assert!(
            close(a.rate.value, 0.1) && close(a.rate.high, 0.1 + hw),
            "{a:?}"
        );
        assert!(a.uplift.is_none(), "control has no uplift");

        let b = report.arms[1].metrics[0].uplift.expect("uplift");
        let (pa, pb): (f64, f64) = (0.1, 0.125);
        let (va, vb) = (pa * (1.0 - pa) / 1000.0, pb * (1.0 - pb) / 1200.0);
        let var = vb / (pa * pa) + pb * pb * va / pa.powi(4);
        let hw = confidence_sequence_half_width(var * 2200.0, 2200.0, 0.05, 5_000.0);
        assert!(close(b.relative.value, 0.25), "{b:?}");
        assert!(close(b.relative.high - b.relative.value, hw), "{b:?}");
        assert!(close(
            b.chance_to_beat_control,
            crate::stats::normal_cdf(0.25 / var.sqrt())
        ));
        assert_eq!(b.significant, b.relative.low > 0.0);
    }

    #[test]
    fn sketch_error_widens_rates() {
        let arms = [arm("a", 100_000.0, 10_000.0)];
        let plain = analyse("a", &arms, &exact()).expect("valid");
        let sketched = analyse("a", &arms, &Settings::default()).expect("valid");
        let w = |r: &Report| r.arms[0].metrics[0].rate.high - r.arms[0].metrics[0].rate.value;
        let r = Settings::default().sketch_relative_error;
        let var = 0.09 / 100_000.0 + 2.0 * (r * 0.1) * (r * 0.1);
        let hw = confidence_sequence_half_width(var * 1e5, 1e5, 0.05, 5_000.0);
        assert!(w(&sketched) > w(&plain));
        assert!(close(w(&sketched), hw));
    }

    #[test]
    fn mean_value_per_event() {
        let mut a = arm("a", 100.0, 4.0);
        a.metrics[0].value_count = 4;
        a.metrics[0].value_sum = 10.0;
        a.metrics[0].value_sum_squares = 30.0;
        let report = analyse("a", &[a.clone()], &exact()).expect("valid");
        let mean = report.arms[0].metrics[0].mean_value.expect("four values");
        // Values 1, 2, 3, 4: mean 2.5, sample variance 5/3.
        let hw = confidence_sequence_half_width(5.0 / 3.0, 4.0, 0.05, 5_000.0);
        assert!(
            close(mean.value, 2.5) && close(mean.high - 2.5, hw),
            "{mean:?}"
        );
        a.metrics[0].value_count = 1;
        let report = analyse("a", &[a], &exact()).expect("valid");
        assert_eq!(report.arms[0].metrics[0].mean_value, None);
    }

    #[test]
    fn empty_and_degenerate_arms_stay_finite() {
        let arms = [arm("a", 0.0, 0.0), arm("b", 0.0, 0.0)];
        let report = analyse("a", &arms, &Settings::default()).expect("valid");
        let b = &report.arms[1].metrics[0];
        assert_eq!(
            b.rate,
            Estimate {
                value: 0.0,
                low: 0.0,
                high: 1.0
            }
        );
        assert!(b.uplift.is_none());
        assert_eq!(report.srm.p_value, None);
        assert!(!report.srm.mismatch);

        // Control converts nobody: no uplift to speak of.
        let arms = [arm("a", 500.0, 0.0), arm("b", 500.0, 10.0)];
        let report = analyse("a", &arms, &exact()).expect("valid");
        assert!(report.arms[1].metrics[0].uplift.is_none());

        // Converters read above users (two sketches): the rate is clamped, not above 1.
        let arms = [arm("a", 100.0, 101.0)];
        let report = analyse("a", &arms, &Settings::default()).expect("valid");
        let rate = report.arms[0].metrics[0].rate;
        assert_eq!(rate.value, 1.0);
        assert!(rate.low < 1.0 && rate.high == 1.0, "{rate:?}");
    }

    #[test]
    fn nobody_converting_after_a_handful_of_users_is_not_a_certainty() {
        // Without the half-user floor the treatment's variance would be 0 and the uplift of −1
        // a zero-width, "significant" interval after five users.
        let arms = [arm("a", 5.0, 1.0), arm("b", 5.0, 0.0)];
        let report = analyse("a", &arms, &exact()).expect("valid");
        let b = report.arms[1].metrics[0].uplift.expect("uplift");
        assert!(!b.significant, "{b:?}");
        let rate = report.arms[1].metrics[0].rate;
        assert!(rate.high > 0.0, "{rate:?}");
    }

    #[test]
    fn refusals_name_their_cause() {
        let arms = [arm("a", 10.0, 1.0), arm("b", 10.0, 1.0)];
        assert_eq!(
            analyse("c", &arms, &Settings::default()),
            Err(AnalysisError::UnknownControl {
                control: "c".into()
            })
        );
        let bad = Settings {
            alpha: 1.0,
            ..Settings::default()
        };
        assert!(matches!(
            analyse("a", &arms, &bad),
            Err(AnalysisError::InvalidSetting {
                setting: "alpha",
                ..
            })
        ));
        let twice = [arm("a", 10.0, 1.0), arm("a", 10.0, 1.0)];
        assert!(matches!(
            analyse("a", &twice, &Settings::default()),
            Err(AnalysisError::DuplicateVariant { .. })
        ));
        let mut nan = arm("a", 10.0, 1.0);
        nan.metrics[0].converters = f64::NAN;
        let err = analyse("a", &[nan], &Settings::default()).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "variant \"a\": metrics[checkout].converters = NaN is not allowed"
        );
        let mut repeated = arm("a", 10.0, 1.0);
        repeated.metrics.push(metric(2.0));
        assert!(matches!(
            analyse("a", &[repeated], &Settings::default()),
            Err(AnalysisError::DuplicateMetric { .. })
        ));
        let mut weightless = arm("a", 10.0, 1.0);
        weightless.weight = 0.0;
        assert!(matches!(
            analyse("a", &[weightless], &Settings::default()),
            Err(AnalysisError::InvalidNumber { .. })
        ));
    }

    #[test]
    fn settings_deserialize_with_defaults() {
        let s: Settings = serde_json::from_str(r#"{"alpha": 0.1}"#).expect("valid JSON");
        assert_eq!(
            s,
            Settings {
                alpha: 0.1,
                ..Settings::default()
            }
        );
    }
}
