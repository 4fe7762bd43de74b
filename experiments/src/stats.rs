//! Numerics for experiment results: the gamma family, the normal and chi-squared
//! distributions, always-valid confidence sequences and the sample-ratio-mismatch test.
//!
//! Every function is pure and total: out-of-domain arguments give a documented value instead of
//! a panic, and every series or continued fraction stops after a fixed number of steps.

use std::f64::consts::PI;

/// Steps allowed to the incomplete-gamma series and continued fraction. Near x ≈ a both need
/// about 6·√a steps, so this bound covers shape parameters up to ~10⁸ (far beyond the handful
/// of degrees of freedom an SRM test has); it exists so nothing can loop forever.
const GAMMA_ITERATIONS: usize = 100_000;
const EPSILON: f64 = 1e-16;
/// Smallest magnitude the modified Lentz algorithm lets a denominator take.
const TINY: f64 = 1e-300;

/// Lanczos coefficients for g = 7, n = 9 (as tabulated by Godfrey; ~15 digits for x > 0).
const LANCZOS_G: f64 = 7.0;
const LANCZOS: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];

/// ln Γ(x) for x > 0, by the Lanczos approximation (g = 7, 9 coefficients), with the reflection
/// formula below 1/2. Relative error about 1e-15 away from the zeros at 1 and 2 (absolute there).
/// NaN for x ≤ 0 or NaN; +∞ for x = +∞.
pub fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x < 0.5 {
        // Γ(x)Γ(1−x) = π / sin(πx); sin(πx) > 0 for 0 < x < 1/2.
        return (PI / (PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = LANCZOS[0];
    for (i, c) in LANCZOS.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + LANCZOS_G + 0.5;
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// e^−x x^a / Γ(a), the factor both incomplete-gamma expansions share, computed in logs so
/// large a and x neither overflow nor underflow early.
fn gamma_prefactor(a: f64, x: f64) -> f64 {
    (a * x.ln() - x - ln_gamma(a)).exp()
}

/// P(a, x) by its power series; converges quickly for x < a + 1.
fn gamma_p_series(a: f64, x: f64) -> f64 {
    let mut ap = a;
    let mut term = 1.0 / a;
    let mut sum = term;
    for _ in 0..GAMMA_ITERATIONS {
        ap += 1.0;
        term *= x / ap;
        sum += term;
        if term.abs() < sum.abs() * EPSILON {
            break;
        }
    }
    sum * gamma_prefactor(a, x)
}

/// Q(a, x) by its continued fraction (modified Lentz); converges quickly for x ≥ a + 1.
fn gamma_q_fraction(a: f64, x: f64) -> f64 {
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..=GAMMA_ITERATIONS {
        let i = i as f64;
        let an = -i * (i - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < EPSILON {
            break;
        }
    }
    gamma_prefactor(a, x) * h
}

/// The regularized lower incomplete gamma function P(a, x) = γ(a, x)/Γ(a), for a > 0, x ≥ 0:
/// the chance a Gamma(a, 1) variable is at most x. In [0, 1]; 0 for x ≤ 0, 1 for x = +∞;
/// NaN when a ≤ 0 or an argument is NaN. Relative error about 1e-14 for a up to 10⁴, growing
/// like a·ln(a)·1e-16 beyond (the rounding of e^−x x^a / Γ(a)'s exponent).
pub fn gamma_p(a: f64, x: f64) -> f64 {
    if a.is_nan() || x.is_nan() || a <= 0.0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 0.0;
    }
    if x == f64::INFINITY {
        return 1.0;
    }
    let p = if x < a + 1.0 {
        gamma_p_series(a, x)
    } else {
        1.0 - gamma_q_fraction(a, x)
    };
    p.clamp(0.0, 1.0)
}

/// The regularized upper incomplete gamma function Q(a, x) = 1 − P(a, x), computed directly
/// (not as 1 − P) where it is small, so tail probabilities keep their relative precision.
/// In [0, 1]; 1 for x ≤ 0, 0 for x = +∞; NaN when a ≤ 0 or an argument is NaN. Accuracy as
/// for [`gamma_p`].
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if a.is_nan() || x.is_nan() || a <= 0.0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    if x == f64::INFINITY {
        return 0.0;
    }
    let q = if x < a + 1.0 {
        1.0 - gamma_p_series(a, x)
    } else {
        gamma_q_fraction(a, x)
    };
    q.clamp(0.0, 1.0)
}

/// Φ(x), the standard normal distribution function, through erfc(t) = Q(1/2, t²). Keeps its
/// relative precision in the lower tail (down to Φ(−37) ≈ 1e−300). NaN for NaN.
pub fn normal_cdf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    // Φ(x) = erfc(−x/√2)/2, and (x/√2)² is x²/2 exactly up to one rounding.
    let q = gamma_q(0.5, 0.5 * x * x);
    if x < 0.0 {
        0.5 * q
    } else {
        1.0 - 0.5 * q
    }
}

/// Acklam's rational approximation of Φ⁻¹ on (0, 1/2]; relative error below 1.2e-9.
fn acklam_lower(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.02425;
    if p < P_LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Φ⁻¹(p), the standard normal quantile: Acklam's rational approximation refined by one
/// Halley step against [`normal_cdf`], accurate to about 1e-15 in the central range.
/// −∞ for p = 0, +∞ for p = 1, NaN outside [0, 1].
pub fn normal_quantile(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    if p > 0.5 {
        // 1 − p is exact here (Sterbenz), and the lower tail is where Φ keeps its precision.
        return -normal_quantile(1.0 - p);
    }
    let x = acklam_lower(p);
    let e = normal_cdf(x) - p;
    let u = e * (2.0 * PI).sqrt() * (0.5 * x * x).exp();
    x - u / (1.0 + 0.5 * x * u)
}

/// The chi-squared survival function P(X ≥ x) for `dof` degrees of freedom, Q(dof/2, x/2).
/// 1 for x ≤ 0; NaN when dof ≤ 0 or an argument is NaN.
pub fn chi_squared_sf(x: f64, dof: f64) -> f64 {
    gamma_q(0.5 * dof, 0.5 * x)
}

/// ln(1/α) terms of the normal-mixture boundary's ρ: 2·ln(1/α) + ln(1 + 2·ln(1/α)).
fn mixture_log_term(alpha: f64) -> f64 {
    let l = -alpha.ln();
    2.0 * l + (1.0 + 2.0 * l).ln()
}

/// Half-width of the two-sided always-valid (1 − α) confidence sequence for a mean of `n`
/// observations with per-observation variance `unit_variance`: the normal-mixture boundary of
/// Howard, Ramdas, McAuliffe & Sekhon (2021, "Time-uniform, nonparametric, nonasymptotic
/// confidence sequences"), parameterised as GrowthBook does:
///
/// V = unit_variance·n, ρ = unit_variance·tuning_n / (2·ln(1/α) + ln(1 + 2·ln(1/α))),
/// half-width = √((V + ρ)·ln((V + ρ)/(ρ·α²))) / n.
///
/// The interval may be looked at after every observation and still covers the true mean at all
/// times with probability 1 − α; it is tightest relative to the fixed-horizon interval near
/// n = `tuning_n`. Computed in a form where the variance cancels inside the logarithm, so it is
/// finite for every finite variance and n > 0, and exactly 0 for zero variance.
///
/// Returns +∞ for n ≤ 0 (no observations, no information) and NaN when `unit_variance` < 0,
/// n = +∞, α is not in (0, 1), `tuning_n` ≤ 0, or an argument is NaN.
pub fn confidence_sequence_half_width(
    unit_variance: f64,
    n: f64,
    alpha: f64,
    tuning_n: f64,
) -> f64 {
    if unit_variance.is_nan() || n.is_nan() || n == f64::INFINITY || unit_variance < 0.0 {
        return f64::NAN;
    }
    let valid = alpha > 0.0 && alpha < 1.0 && tuning_n > 0.0;
    if !valid {
        return f64::NAN;
    }
    if n <= 0.0 {
        return f64::INFINITY;
    }
    // ρ/unit_variance: (V + ρ)/ρ = (n + r)/r whatever the variance.
    let r = tuning_n / mixture_log_term(alpha);
    let spread = (n + r) / n * ((n + r) / r).ln() - 2.0 * (n + r) / n * alpha.ln();
    (unit_variance / n).sqrt() * spread.sqrt()
}

/// Half-width z_{1−α/2}·√(unit_variance/n) of the fixed-horizon two-sided (1 − α) normal
/// interval for a mean of `n` observations: valid for one look decided in advance only, kept
/// for comparison with [`confidence_sequence_half_width`]. +∞ for n ≤ 0; NaN for a negative
/// variance, α outside (0, 1) or a NaN argument.
pub fn fixed_half_width(unit_variance: f64, n: f64, alpha: f64) -> f64 {
    if unit_variance.is_nan() || n.is_nan() || unit_variance < 0.0 || !(alpha > 0.0 && alpha < 1.0)
    {
        return f64::NAN;
    }
    if n <= 0.0 {
        return f64::INFINITY;
    }
    normal_quantile(1.0 - 0.5 * alpha) * (unit_variance / n).sqrt()
}

/// The p-value of a sample-ratio-mismatch test: Pearson's chi-squared goodness of fit of the
/// `observed` counts against expected counts total·wᵢ/Σw, with k − 1 degrees of freedom.
///
/// Each term's denominator is the expected count widened by the counting error,
/// expᵢ + (relative_error·expᵢ)², rather than expᵢ alone. Distinct-user counts come from
/// sketches whose error grows in proportion to n while the sampling error grows with √n, so an
/// unwidened test would flag every large experiment for the sketch's noise alone. With
/// `relative_error` = 0 this is exactly Pearson's test.
///
/// None when there are fewer than two arms, the slices differ in length, a weight is not
/// finite and positive, a count is negative or not finite, the total is 0, or
/// `relative_error` is negative or not finite.
pub fn srm_p_value(observed: &[f64], weights: &[f64], relative_error: f64) -> Option<f64> {
    if observed.len() < 2 || observed.len() != weights.len() {
        return None;
    }
    if !(relative_error.is_finite() && relative_error >= 0.0) {
        return None;
    }
    if weights.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
        return None;
    }
    if observed.iter().any(|o| !(o.is_finite() && *o >= 0.0)) {
        return None;
    }
    let total: f64 = observed.iter().sum();
    let weight_total: f64 = weights.iter().sum();
    if !(total > 0.0 && total.is_finite() && weight_total.is_finite()) {
        return None;
    }
    let mut statistic = 0.0;
    for (o, w) in observed.iter().zip(weights) {
        let expected = total * w / weight_total;
        let spread = relative_error * expected;
        let d = o - expected;
        statistic += d * d / (expected + spread * spread);
    }
    let p = chi_squared_sf(statistic, (observed.len() - 1) as f64);
    p.is_finite().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs()
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut factorial = 1.0_f64;
        for n in 1..30 {
            // Γ(n + 1) = n!
            factorial *= n as f64;
            let got = ln_gamma(n as f64 + 1.0);
            assert!(close(got, factorial.ln(), 1e-13), "ln Γ({}) = {got}", n + 1);
        }
        assert!(close(ln_gamma(0.5), PI.sqrt().ln(), 1e-14));
        assert!(ln_gamma(1.0).abs() < 1e-14 && ln_gamma(2.0).abs() < 1e-14);
        assert!(ln_gamma(0.0).is_nan() && ln_gamma(-1.5).is_nan() && ln_gamma(f64::NAN).is_nan());
    }

    #[test]
    fn incomplete_gamma_identities() {
        // P(1, x) = 1 − e^−x; P + Q = 1 on both sides of the series/fraction switch.
        for x in [0.01, 0.5, 1.9, 2.1, 10.0, 50.0] {
            assert!(close(gamma_p(1.0, x), 1.0 - (-x).exp(), 1e-13), "P(1, {x})");
            assert!(close(gamma_q(1.0, x), (-x).exp(), 1e-13), "Q(1, {x})");
            for a in [0.5, 3.0, 40.0] {
                let sum = gamma_p(a, x) + gamma_q(a, x);
                assert!((sum - 1.0).abs() < 1e-14, "P + Q at ({a}, {x}) = {sum}");
            }
        }
        assert_eq!(gamma_p(2.0, 0.0), 0.0);
        assert_eq!(gamma_q(2.0, -1.0), 1.0);
        assert_eq!(gamma_q(2.0, f64::INFINITY), 0.0);
        assert!(gamma_p(0.0, 1.0).is_nan() && gamma_q(1.0, f64::NAN).is_nan());
        // Huge shape, on both sides of the switch (SciPy: 0.4999579477912763 and
        // 0.0007852534346056285). The prefactor's exponent is ~a·ln a, whose rounding alone
        // costs ~1e-8 relative at a = 1e7, hence the looser tolerance.
        assert!(close(gamma_q(1e7, 1e7), 0.499_957_947_791_276_3, 1e-7));
        assert!(close(
            gamma_q(1e7, 1.001e7),
            0.000_785_253_434_605_628_5,
            1e-7
        ));
    }

    #[test]
    fn normal_cdf_and_quantile_invert_each_other() {
        assert_eq!(normal_cdf(0.0), 0.5);
        assert!(close(normal_cdf(1.959_963_984_540_054), 0.975, 1e-14));
        for p in [
            1e-300,
            1e-12,
            0.001,
            0.02425,
            0.3,
            0.5,
            0.7,
            0.975,
            1.0 - 1e-12,
        ] {
            let x = normal_quantile(p);
            assert!(close(normal_cdf(x), p, 1e-12), "Φ(Φ⁻¹({p}))");
        }
        assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
        assert_eq!(normal_quantile(1.0), f64::INFINITY);
        assert!(normal_quantile(1.5).is_nan() && normal_quantile(-0.1).is_nan());
        assert_eq!(normal_quantile(0.5), 0.0);
        assert_eq!(normal_quantile(0.2), -normal_quantile(0.8));
    }

    #[test]
    fn chi_squared_with_two_dof_is_exponential() {
        for x in [0.1, 1.0, 5.0, 100.0] {
            assert!(close(chi_squared_sf(x, 2.0), (-x / 2.0).exp(), 1e-13));
        }
        assert_eq!(chi_squared_sf(0.0, 3.0), 1.0);
    }

    #[test]
    fn sequential_interval_is_wider_than_fixed_and_tightest_near_tuning() {
        let tuning = 5_000.0;
        for alpha in [0.01, 0.05, 0.2] {
            let mut best = (f64::INFINITY, 0.0);
            // n from 1 to 10^7 on a log grid.
            for step in 0..=700 {
                let n = 10f64.powf(step as f64 / 100.0);
                let seq = confidence_sequence_half_width(0.09, n, alpha, tuning);
                let fixed = fixed_half_width(0.09, n, alpha);
                let ratio = seq / fixed;
                assert!(ratio > 1.0, "α = {alpha}, n = {n}: ratio {ratio}");
                if ratio < best.0 {
                    best = (ratio, n);
                }
            }
            let (_, at) = best;
            assert!(
                (0.8 * tuning..=1.25 * tuning).contains(&at),
                "α = {alpha}: tightest at n = {at}"
            );
        }
    }

    #[test]
    fn confidence_sequence_edges() {
        assert_eq!(confidence_sequence_half_width(0.0, 100.0, 0.05, 10.0), 0.0);
        assert_eq!(
            confidence_sequence_half_width(1.0, 0.0, 0.05, 10.0),
            f64::INFINITY
        );
        assert!(confidence_sequence_half_width(-1.0, 10.0, 0.05, 10.0).is_nan());
        assert!(confidence_sequence_half_width(1.0, 10.0, 1.0, 10.0).is_nan());
        assert!(confidence_sequence_half_width(1.0, 10.0, 0.05, 0.0).is_nan());
        // Astronomical n and variance stay finite.
        let w = confidence_sequence_half_width(1e300, 1e300, 0.05, 5_000.0);
        assert!(w.is_finite() && w > 0.0, "{w}");
        // The boundary shrinks as n grows.
        let a = confidence_sequence_half_width(1.0, 1e3, 0.05, 5e3);
        let b = confidence_sequence_half_width(1.0, 1e5, 0.05, 5e3);
        assert!(b < a);
    }

    #[test]
    fn srm_refuses_what_it_cannot_test() {
        assert_eq!(srm_p_value(&[10.0], &[1.0], 0.0), None);
        assert_eq!(srm_p_value(&[10.0, 10.0], &[1.0], 0.0), None);
        assert_eq!(srm_p_value(&[10.0, 10.0], &[1.0, 0.0], 0.0), None);
        assert_eq!(srm_p_value(&[10.0, 10.0], &[1.0, f64::NAN], 0.0), None);
        assert_eq!(srm_p_value(&[0.0, 0.0], &[1.0, 1.0], 0.0), None);
        assert_eq!(srm_p_value(&[-1.0, 3.0], &[1.0, 1.0], 0.0), None);
        assert_eq!(srm_p_value(&[1.0, 3.0], &[1.0, 1.0], -0.1), None);
        assert_eq!(srm_p_value(&[50.0, 50.0], &[1.0, 1.0], 0.0), Some(1.0));
    }

    #[test]
    fn srm_widening_absorbs_sketch_noise_in_large_experiments() {
        // 2M users split 50/50, counted by sketches that read one arm 0.8 % high and the other
        // 0.8 % low (one standard error each): sampling alone cannot explain 1.008M vs 0.992M,
        // the sketch's error can.
        let observed = [1_008_000.0, 992_000.0];
        let weights = [1.0, 1.0];
        let plain = srm_p_value(&observed, &weights, 0.0).expect("testable");
        let widened = srm_p_value(&observed, &weights, 0.008_125).expect("testable");
        assert!(plain < 1e-20, "unwidened p = {plain}");
        assert!(widened > 0.05, "widened p = {widened}");
        // In a small experiment the widening barely matters.
        let small = [520.0, 480.0];
        let a = srm_p_value(&small, &weights, 0.0).expect("testable");
        let b = srm_p_value(&small, &weights, 0.008_125).expect("testable");
        assert!((a - b).abs() < 0.05 * a, "{a} vs {b}");
    }
}
