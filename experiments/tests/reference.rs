//! Compares the numerics with SciPy and statsmodels: `cases/reference.json`, written by
//! `cases/reference.py` (its header says how to regenerate it). Every mismatch is reported with
//! its case, not just the first.

use flagstaff_experiments::stats::{
    chi_squared_sf, confidence_sequence_half_width, fixed_half_width, gamma_q, ln_gamma,
    normal_cdf, normal_quantile, srm_p_value,
};
use serde_json::Value;

const RELATIVE: f64 = 1e-9;
const QUANTILE_ABSOLUTE: f64 = 1e-9;
/// ln Γ is exactly 0 at 1 and 2, where a relative tolerance is no tolerance at all.
const AT_ZERO: f64 = 1e-14;

fn table() -> Value {
    serde_json::from_str(include_str!("cases/reference.json")).expect("reference.json is JSON")
}

fn rows<'a>(table: &'a Value, key: &str) -> &'a [Value] {
    let rows = table[key].as_array().map(Vec::as_slice).unwrap_or(&[]);
    assert!(!rows.is_empty(), "reference.json has no {key} cases");
    rows
}

fn num(v: &Value) -> f64 {
    v.as_f64().expect("reference numbers are numbers")
}

fn relatively_close(got: f64, want: f64) -> bool {
    if want == 0.0 {
        got.abs() <= AT_ZERO
    } else {
        (got - want).abs() <= RELATIVE * want.abs()
    }
}

struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, case: String, got: f64, want: f64, ok: bool) {
        if !ok {
            self.0.push(format!("{case}: got {got:e}, want {want:e}"));
        }
    }

    fn relative(&mut self, case: String, got: f64, want: f64) {
        self.check(case, got, want, relatively_close(got, want));
    }

    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} mismatches:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

#[test]
fn normal_cdf_matches_scipy() {
    let t = table();
    let mut f = Failures(Vec::new());
    for row in rows(&t, "normal_cdf") {
        let (x, want) = (num(&row[0]), num(&row[1]));
        f.relative(format!("normal_cdf({x})"), normal_cdf(x), want);
    }
    f.finish();
}

#[test]
fn normal_quantile_matches_scipy() {
    let t = table();
    let mut f = Failures(Vec::new());
    for row in rows(&t, "normal_quantile") {
        let (p, want) = (num(&row[0]), num(&row[1]));
        let got = normal_quantile(p);
        let ok = (got - want).abs() <= QUANTILE_ABSOLUTE;
        f.check(format!("normal_quantile({p})"), got, want, ok);
    }
    f.finish();
}

#[test]
fn chi_squared_sf_matches_scipy() {
    let t = table();
    let mut f = Failures(Vec::new());
    for row in rows(&t, "chi2_sf") {
        let (x, dof, want) = (num(&row[0]), num(&row[1]), num(&row[2]));
        f.relative(
            format!("chi_squared_sf({x}, {dof})"),
            chi_squared_sf(x, dof),
            want,
        );
    }
    f.finish();
}

#[test]
fn gamma_q_matches_scipy_gammaincc() {
    let t = table();
    let mut f = Failures(Vec::new());
    for row in rows(&t, "gammaincc") {
        let (a, x, want) = (num(&row[0]), num(&row[1]), num(&row[2]));
        f.relative(format!("gamma_q({a}, {x})"), gamma_q(a, x), want);
    }
    f.finish();
}

#[test]
fn ln_gamma_matches_scipy_gammaln() {
    let t = table();
    let mut f = Failures(Vec::new());
    for row in rows(&t, "gammaln") {
        let (x, want) = (num(&row[0]), num(&row[1]));
        f.relative(format!("ln_gamma({x})"), ln_gamma(x), want);
    }
    f.finish();
}

#[test]
fn srm_without_sketch_error_is_scipy_chisquare() {
    let t = table();
    let mut f = Failures(Vec::new());
    for case in rows(&t, "chisquare") {
        let list = |key: &str| -> Vec<f64> {
            case[key]
                .as_array()
                .map(|a| a.iter().map(num).collect())
                .unwrap_or_default()
        };
        let (observed, weights) = (list("observed"), list("weights"));
        let want = num(&case["p_value"]);
        let name = format!("srm_p_value({observed:?}, {weights:?}, 0)");
        match srm_p_value(&observed, &weights, 0.0) {
            Some(got) => f.relative(name, got, want),
            None => f.0.push(format!("{name}: None, want {want:e}")),
        }
    }
    f.finish();
}

#[test]
fn fixed_half_width_is_statsmodels_normal_interval() {
    let t = table();
    let mut f = Failures(Vec::new());
    for case in rows(&t, "proportion_confint_normal") {
        let (rate, nobs, alpha) = (num(&case["rate"]), num(&case["nobs"]), num(&case["alpha"]));
        let hw = fixed_half_width(rate * (1.0 - rate), nobs, alpha);
        let name = format!("count {} of {nobs}, α = {alpha}", case["count"]);
        f.relative(format!("{name}: low"), rate - hw, num(&case["low"]));
        f.relative(format!("{name}: high"), rate + hw, num(&case["high"]));
    }
    f.finish();
}

#[test]
fn confidence_sequence_matches_the_formula() {
    let t = table();
    let mut f = Failures(Vec::new());
    for case in rows(&t, "confidence_sequence") {
        let (v, n, alpha, tuning) = (
            num(&case["unit_variance"]),
            num(&case["n"]),
            num(&case["alpha"]),
            num(&case["tuning_n"]),
        );
        f.relative(
            format!("confidence_sequence_half_width({v}, {n}, {alpha}, {tuning})"),
            confidence_sequence_half_width(v, n, alpha, tuning),
            num(&case["half_width"]),
        );
    }
    f.finish();
}
