"""Writes reference.json: reference values for flagstaff-experiments' numerics (tests/reference.rs).

    python3 -m venv /tmp/sp && /tmp/sp/bin/pip install scipy==1.17.1 statsmodels==0.15.0
    /tmp/sp/bin/python experiments/tests/cases/reference.py > experiments/tests/cases/reference.json

Values come from SciPy and statsmodels, except the confidence-sequence half-widths, which have
no library implementation here: they are computed from the normal-mixture formula of Howard et
al. (2021) as written in the crate's docs, and cross-checked against the same boundary in the
paper's other parameterisation (ρ² = L/m), so a slip in either form fails the script.
The JSON is committed; CI does not run Python.
"""

import json
import math

import numpy as np
from scipy import special, stats
from statsmodels.stats.proportion import proportion_confint


def normal_cdf():
    xs = [-37.5, -20.0, -8.0, -3.0, -1.96, -1.0, -0.25, 0.0, 1e-8, 0.3, 1.0, 1.644853, 2.5, 5.0, 8.0]
    return [[x, float(stats.norm.cdf(x))] for x in xs]


def normal_quantile():
    ps = [1e-300, 1e-100, 1e-20, 1e-9, 1e-4, 0.001, 0.01, 0.02424, 0.02426, 0.025, 0.05, 0.1,
          0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.95, 0.975, 0.97575, 0.99, 0.999, 1 - 1e-9]
    return [[p, float(stats.norm.ppf(p))] for p in ps]


def chi2_sf():
    cases = []
    for dof in [1, 2, 3, 5, 10, 30, 100, 1000]:
        for x in [0.001, 0.5, 1.0, 3.84, 10.0, 50.0, 200.0, 1500.0]:
            sf = float(stats.chi2.sf(x, dof))
            if sf > 1e-300:
                cases.append([x, dof, sf])
    return cases


def gammaincc():
    cases = []
    for a in [0.1, 0.5, 1.0, 2.5, 10.0, 50.0, 500.0, 1e5]:
        for x in [1e-6, 0.1, 1.0, 3.0, 9.9, 10.0, 10.5, 49.0, 52.0, 480.0, 520.0, 99000.0, 101000.0]:
            q = float(special.gammaincc(a, x))
            # Below the smallest normal double the relative comparison means nothing.
            if q > 1e-300:
                cases.append([a, x, q])
    return cases


def gammaln():
    xs = [1e-8, 0.001, 0.1, 0.4999, 0.5, 0.9, 1.0, 1.0001, 1.5, 1.9999, 2.0, 2.5, 3.0, 7.5,
          10.0, 33.3, 100.0, 1234.5, 1e6, 1e10]
    return [[x, float(special.gammaln(x))] for x in xs]


def chisquare():
    vectors = [
        ([5000, 5000], [1, 1]),
        ([5120, 4880], [1, 1]),
        ([10400, 9600], [50, 50]),
        ([301, 350, 349], [1, 1, 1]),
        ([900, 100], [9, 1]),
        ([810, 190], [0.8, 0.2]),
        ([12, 20, 31, 40], [1, 2, 3, 4]),
        ([100000, 101000, 99500, 99000, 100500], [1, 1, 1, 1, 1]),
        ([33, 1], [1, 1]),
        ([1, 0], [1, 3]),
    ]
    cases = []
    for observed, weights in vectors:
        obs = np.array(observed, dtype=float)
        w = np.array(weights, dtype=float)
        expected = obs.sum() * w / w.sum()
        p = float(stats.chisquare(obs, expected).pvalue)
        cases.append({"observed": [float(o) for o in obs], "weights": [float(x) for x in w], "p_value": p})
    return cases


def proportion_intervals():
    cases = []
    for count, nobs, alpha in [(100, 1000, 0.05), (1234, 20000, 0.05), (37, 120, 0.1),
                               (9, 40, 0.01), (50000, 100000, 0.05), (2, 10, 0.2)]:
        low, high = proportion_confint(count, nobs, alpha=alpha, method="normal")
        p = count / nobs
        # Only unclipped intervals: statsmodels clips to [0, 1], the half-width does not.
        assert 0 < low and high < 1
        cases.append({"count": count, "nobs": nobs, "alpha": alpha, "rate": p,
                      "low": float(low), "high": float(high)})
    return cases


def confidence_sequence():
    cases = []
    for unit_variance, n, alpha, tuning in [
        (0.09, 1000, 0.05, 5000), (0.09, 5000, 0.05, 5000), (0.25, 1, 0.05, 5000),
        (1.0, 1e6, 0.05, 5000), (3.5, 200, 0.01, 100), (0.01, 40000, 0.1, 20000),
        (12.0, 7, 0.2, 1e6), (1e-6, 1e9, 0.05, 5000),
    ]:
        log_term = 2 * math.log(1 / alpha) + math.log(1 + 2 * math.log(1 / alpha))
        v = unit_variance * n
        rho = unit_variance * tuning / log_term
        half_width = math.sqrt((v + rho) * math.log((v + rho) / (rho * alpha ** 2))) / n
        # The same boundary with ρ² = L/m: σ·√(2(nρ² + 1)·ln(√(nρ² + 1)/α)) / (nρ).
        r = math.sqrt(log_term / tuning)
        other = math.sqrt(unit_variance) * math.sqrt(
            2 * (n * r * r + 1) * math.log(math.sqrt(n * r * r + 1) / alpha) / (n * r) ** 2)
        assert math.isclose(half_width, other, rel_tol=1e-12), (half_width, other)
        cases.append({"unit_variance": unit_variance, "n": n, "alpha": alpha, "tuning_n": tuning,
                      "half_width": half_width})
    return cases


def main():
    doc = {
        "generated_by": "experiments/tests/cases/reference.py",
        "scipy": __import__("scipy").__version__,
        "statsmodels": __import__("statsmodels").__version__,
        "normal_cdf": normal_cdf(),
        "normal_quantile": normal_quantile(),
        "chi2_sf": chi2_sf(),
        "gammaincc": gammaincc(),
        "gammaln": gammaln(),
        "chisquare": chisquare(),
        "proportion_confint_normal": proportion_intervals(),
        "confidence_sequence": confidence_sequence(),
    }
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
