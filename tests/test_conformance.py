"""Conformance with reference implementations, on their own data (../shared/data/epstats) and
with gbstats' published sequential-test numbers (issue 2)."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest

from state import SequentialSRM, SequentialTest, chi_square_srm, sum_ratio_check
from state.effects import estimate_effects
from state.srm import dirichlet_multinomial_log_bf

EPSTATS = "data/epstats"
GOAL = re.compile(r"count\((\w+)\.(\w+)\.(\w+)\)")


def _value(expected):
    if expected is None:
        return math.nan
    if isinstance(expected, str):
        return float(expected)  # 'inf' / '-inf'
    return float(expected)


def _close(actual: float, expected: float, rel: float) -> bool:
    if math.isnan(expected):
        return math.isnan(actual)
    return math.isclose(actual, expected, rel_tol=rel, abs_tol=0.0)


def _goal_counts(shared_dir, case, expression):
    """Per-variant sums of ``count`` for an ep-stats goal expression, read from the case's input.

    Cases with trigger/exposure ``filters`` select units by ep-stats' own dimension logic; for
    those the counts are the exposures ep-stats reports, i.e. exactly what its check saw.
    """
    if case["experiment"].get("filters"):
        assert "exposure" in expression
        return [float(e["exposures"]) for e in case["exposures"]]
    path = shared_dir / EPSTATS / case["input_file"]
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r["exp_id"] == case["exp_id"]]
    variant_key = "variant" if rows and "variant" in rows[0] else "exp_variant_id"
    # ep-stats' variants: declared ones, else the control and those in the data.
    variants = case["experiment"].get("variants") or sorted({r[variant_key] for r in rows} | {case["control_variant"]})
    counts = dict.fromkeys(variants, 0.0)
    match = GOAL.fullmatch(expression)
    for r in rows:
        if match is None:  # wide format (SimpleSrmCheck): a column name
            counts[r[variant_key]] += float(r[expression])
            continue
        unit_type, agg_type, goal = match.groups()
        dimension_free = not r.get("element") and not r.get("product") and not r.get("dimension")
        if (r["unit_type"], r["agg_type"], r["goal"]) == (unit_type, agg_type, goal) and dimension_free:
            counts[r[variant_key]] += float(r["count"])
    return [counts[v] for v in variants]


def _check_cases(shared_dir):
    doc = json.loads((shared_dir / EPSTATS / "expected_outputs.json").read_text())
    return [(case, check) for case in doc["cases"] for check in case["experiment"].get("checks", [])]


def test_every_epstats_check_value_is_reproduced(shared_dir):
    compared = 0
    for case, check in _check_cases(shared_dir):
        expected = {r["variable_id"]: _value(r["value"]) for r in case["checks"] if r["check_id"] == check["id"]}
        if check["type"] in ("SrmCheck", "SimpleSrmCheck"):
            result = chi_square_srm(_goal_counts(shared_dir, case, check["denominator"]))
            actual = {"p_value": result.p_value, "test_stat": result.test_stat, "confidence_level": result.confidence_level}
        elif check["type"] == "SumRatioCheck":
            result = sum_ratio_check(
                _goal_counts(shared_dir, case, check["nominator"]), _goal_counts(shared_dir, case, check["denominator"])
            )
            actual = {"sum_ratio": result.sum_ratio, "max_sum_ratio": result.max_sum_ratio, "p_value": result.p_value,
                      "test_stat": result.test_stat, "confidence_level": result.confidence_level}
            assert result.failed == (result.sum_ratio > result.max_sum_ratio)
        else:
            raise AssertionError(f"unexpected check type {check['type']}")
        assert set(expected) == set(actual), (case["case"], expected.keys())
        for name, value in expected.items():
            assert _close(actual[name], value, 1e-9), (case["case"], name, actual[name], value)
            compared += 1
    assert compared == 94  # every SRM and SumRatio value in the file (29 cases with checks)


def test_srm_mismatch_flag_follows_confidence_level():
    assert chi_square_srm([5000, 5100, 5300]).mismatch is False  # p 0.0106 > 0.001
    assert chi_square_srm([0, 5100]).mismatch is True


def _srm_looks(shared_dir):
    doc = json.loads((shared_dir / EPSTATS / "sequential_srm_reference.json").read_text())
    for case in doc["cases"]:
        yield case


def test_sequential_srm_matches_ssrm_reference_at_every_look(shared_dir):
    looks = 0
    for case in _srm_looks(shared_dir):
        srm = SequentialSRM(tuple(case["null_probabilities"]), case["dirichlet_concentration"])
        for increment, look in zip(case["increments"], case["looks"]):
            srm = srm.update(increment)
            assert list(srm.counts) == [float(c) for c in look["cumulative_counts"]]
            log_bf = dirichlet_multinomial_log_bf(srm.counts, case["null_probabilities"], case["dirichlet_concentration"])
            assert abs(log_bf - look["log_bayes_factor"]) <= 1e-6, (case["case"], look["look"])
            assert _close(srm.p_value, look["sequential_p_value"], 1e-9), (case["case"], look["look"], srm.p_value)
            looks += 1
    assert looks >= 30


def test_zero_weight_variation_with_units_is_an_immediate_mismatch():
    assert dirichlet_multinomial_log_bf([10, 10, 1], [0.5, 0.5, 0.0], 100.0) == math.inf
    assert SequentialSRM((0.5, 0.5, 0.0)).update([10, 10, 1]).p_value == 0.0
    assert math.isfinite(dirichlet_multinomial_log_bf([10, 10, 0], [0.5, 0.5, 0.0], 100.0))


# gbstats' sequential two-sided test (issue 2): A = control, B = treatment, alpha 0.05, its own
# conventions: sample variances (n - 1) and the delta-method variance.
GB_CONTROL = (3000, 1396.87, 52377.9767)
GB_TREATMENT = (3461, 2422.7, 134698.29)


def _gbstats(relative: bool, n_star: float):
    stats = np.array([[[GB_TREATMENT, GB_CONTROL]]], dtype=np.float64)
    est = estimate_effects(stats, None, np.array([relative]), variance_method="delta", ddof=1)
    test = SequentialTest(n_star=n_star, alpha=0.05)
    tau2 = test.mixing_variance(est.variance, est.units_treatment + est.units_control)
    half = test.half_width(est.variance, tau2, 0.05)
    p = test.score(est.effect, est.variance, tau2).local_p_value
    return float(est.effect[0]), float((est.effect - half)[0]), float((est.effect + half)[0]), float(p[0])


@pytest.mark.parametrize(
    "relative, n_star, effect, lower, upper, p_value",
    [
        (True, 1000, 0.50336, -0.55844, 1.56516, None),
        (True, 5000, 0.50336, -0.50972, 1.51644, None),
        (False, 5000, 0.234377, -0.160117, 0.628870, 0.760125),
    ],
)
def test_gbstats_sequential_conformance(relative, n_star, effect, lower, upper, p_value):
    got_effect, got_lower, got_upper, got_p = _gbstats(relative, n_star)
    assert got_effect == pytest.approx(effect, abs=1e-5)
    assert got_lower == pytest.approx(lower, abs=1e-5)
    assert got_upper == pytest.approx(upper, abs=1e-5)
    if p_value is not None:
        assert got_p == pytest.approx(p_value, abs=1e-5)


def test_n_star_is_the_tau2_mixture_with_a_scaled_variance():
    """Section 4: the n_star form is the same martingale, tau^2 = rho^2 V N."""
    rng = np.random.default_rng(7)
    theta, variance, units = rng.normal(0, 0.1, 50), rng.uniform(1e-4, 1e-2, 50), rng.uniform(200, 1e5, 50)
    gb = SequentialTest(n_star=5000, alpha=0.1)
    tau2 = gb.mixing_variance(variance, units)
    a = 0.1
    rho2 = (-2 * math.log(a) + math.log(1 - 2 * math.log(a))) / 5000
    s2 = variance * units
    expected_half = np.sqrt(s2) * np.sqrt(2 * (units * rho2 + 1) / (units**2 * rho2) * np.log(np.sqrt(units * rho2 + 1) / a))
    expected_p = np.minimum(1, np.sqrt(units * rho2 + 1) * np.exp(-rho2 * (theta**2 * units / variance) / (2 * (units * rho2 + 1))))
    np.testing.assert_allclose(gb.half_width(variance, tau2, a), expected_half, rtol=1e-12)
    np.testing.assert_allclose(gb.score(theta, variance, tau2).local_p_value, expected_p, rtol=1e-10)


# A gbstats experiment with a binomial and a continuous metric on the same units (issue 16):
# gbstats 0.8.0, SequentialTwoSidedTTest(alpha=0.05, sequential_tuning_parameter=n_star,
# difference_type=...), ProportionStatistic(n, sum) for "conv" (variance p(1 - p)) and
# SampleMeanStatistic(n, sum, sum_squares) for "rev" (variance with n - 1); control first.
# Columns: metric, relative, n_star, expected, ci lower, ci upper, p_value.
GB_MIXED_DATA = {"conv": ((3000, 312, 312), (3461, 402, 402)), "rev": (GB_CONTROL, GB_TREATMENT)}
GB_MIXED = [
    ("conv", True, 1000, 0.11684039739515044, -0.13642454957078232, 0.3701053443610832, 1.0),
    ("conv", True, 5000, 0.11684039739515044, -0.12480301561938069, 0.3584838104096816, 1.0),
    ("conv", False, 1000, 0.012151401329095646, -0.01266505354376913, 0.03696785620196042, 1.0),
    ("conv", False, 5000, 0.012151401329095646, -0.011526304276199866, 0.03582910693439116, 1.0),
    ("rev", True, 1000, 0.5033610858562358, -0.5584405051077315, 1.5651626768202032, 1.0),
    ("rev", True, 5000, 0.5033610858562358, -0.5097177608556427, 1.5164399325681144, 1.0),
    ("rev", False, 1000, 0.23437666666666668, -0.17908917909394972, 0.6478425124272831, 1.0),
    ("rev", False, 5000, 0.23437666666666668, -0.16011652842982782, 0.6288698617631612, 0.7601250075467714),
]


@pytest.mark.parametrize("relative, n_star", [(True, 1000), (True, 5000), (False, 1000), (False, 5000)])
def test_gbstats_mixed_binomial_and_continuous_experiment(relative, n_star):
    """Both metrics in one experiment through ExperimentState: engine variance_ddof=1 (gbstats'
    continuous convention) while the 0/1 metric keeps p(1 - p), per metric (MetricConfig.ddof).
    With an engine-wide ddof the binomial bounds were off by a factor near sqrt(n / (n - 1))."""
    from state import EngineConfig, ExperimentState, MetricConfig, Observation

    config = EngineConfig(variance_method="delta", n_star=n_star, alpha=0.05, variance_ddof=1, min_units=0,
                          effect="relative" if relative else "absolute")
    state = ExperimentState("gb", config, {"conv": MetricConfig(is_binary=True), "rev": MetricConfig()})
    observations = [Observation(m, v, 0, *arm) for m, arms in GB_MIXED_DATA.items()
                    for v, arm in zip(("control", "t"), arms)]
    rows = {r["metric"]: r for r in state.update(0, observations).rows}
    for metric, rel, ns, effect, lower, upper, p_value in GB_MIXED:
        if (rel, ns) != (relative, n_star):
            continue
        row = rows[metric]
        assert row["lift_estimate"] == pytest.approx(effect, rel=1e-12)
        assert row["uncorrected_local_conf_interval_lower"] == pytest.approx(lower, rel=1e-10)
        assert row["uncorrected_local_conf_interval_upper"] == pytest.approx(upper, rel=1e-10)
        assert row["local_p_value"] == pytest.approx(p_value, rel=1e-10)
