"""The default relative method on the cases a statistician checks by hand, degenerate inputs,
the compatibility defaults and issue 16's defects (state/METHODS.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state import EngineConfig, ExperimentState, MetricConfig, Observation, evaluate, parse_request
from state.experiment import update_many
from state.fieller import fieller_bounds
from state.srm import SequentialSRM, dirichlet_multinomial_log_bf, sequential_p_value
from state.sequential import SequentialTest


def one_look(control, treatment, config=None, binary=False):
    state = ExperimentState("e", config or EngineConfig(), {"m": MetricConfig(is_binary=binary)})
    result = state.update(0, [Observation("m", "control", 0, *control), Observation("m", "t", 0, *treatment)])
    return result.rows[0], result.alerts


def sums(values, units):
    return (units, float(sum(values)), float(sum(v * v for v in values)))


# ----------------------------------------------------------------------------- minimal cases
def test_seven_of_421_against_one_of_431_is_not_a_discovery():
    """Fisher's exact test gives p = 0.036 for this table at a single fixed-horizon look; an
    always-valid test at alpha 0.1 must not call it: 8 conversions in all carry no evidence of
    that strength for continuous monitoring. The reference service's method said p = 3.3e-9.
    With 7 conversions in control, the control mean is not distinguishable from 0 at the
    interval's level, so the relative interval is honestly unbounded above; below, a ratio of
    rates is never negative, so it stops at -100%."""
    row, _ = one_look((421, 7, 7), (431, 1, 1), binary=True)
    assert row["lift_estimate"] == pytest.approx(1 / 431 / (7 / 421) - 1)
    assert row["local_p_value"] > 0.5 and not row["rejected"]
    assert row["uncorrected_local_conf_interval_lower"] == -1.0
    assert row["uncorrected_local_conf_interval_upper"] == math.inf
    ses, _ = one_look((421, 7, 7), (431, 1, 1), EngineConfig(variance_method="ses"), binary=True)
    assert ses["local_p_value"] < 1e-8  # the flaw, kept for compatibility


def test_one_whale_order_in_control_is_not_a_discovery():
    """100 units each; control orders 5, 8 and 3000, treatment 6, 9, 12 and 20: the lift
    estimate is -98%, but one order carries it; nothing is learnt about the means at a level
    that survives continuous monitoring. The reference service's method said p = 0."""
    row, _ = one_look(sums([5, 8, 3000], 100), sums([6, 9, 12, 20], 100))
    assert row["lift_estimate"] == pytest.approx(47 / 3013 - 1)
    assert row["local_p_value"] == 1.0 and not row["rejected"]
    assert row["uncorrected_local_conf_interval_lower"] <= 0 <= row["uncorrected_local_conf_interval_upper"]


def test_clear_effect_gives_a_bounded_fieller_interval_around_the_estimate():
    """20,000 units per arm, 10% vs 12% conversion: rejected, and the interval is the set of
    lifts r that the difference-scale test of mu_t = (1 + r) mu_c does not reject."""
    row, _ = one_look((20000, 2000, 2000), (20000, 2400, 2400), binary=True)
    lo, hi = row["uncorrected_local_conf_interval_lower"], row["uncorrected_local_conf_interval_upper"]
    assert row["rejected"] and 0 < lo < 0.2 < hi < 0.45
    # the bounds are roots of the test: at r = lo the statistic z(r)^2 sits on the threshold
    # at equal allocation the pooled variance 0.11 * 0.89 is at least Welch's: both arms take it
    # (the pooled z-test, state/METHODS.md F2b)
    pooled = 0.11 * 0.89
    assert 2 * pooled >= 0.12 * 0.88 + 0.09
    m_t, m_c, a_t, a_c = 0.12, 0.1, pooled / 20000, pooled / 20000
    k = 0.01 * m_c**2 / (a_t + a_c)
    c = (1 + k) / k * (2 * math.log(10) + math.log(1 + k))
    for r in (lo, hi):
        u = 1 + r
        assert (m_t - u * m_c) ** 2 / (a_t + u * u * a_c) == pytest.approx(c, rel=1e-9)


# -------------------------------------------------------------------------------- degenerate
@pytest.mark.parametrize("control, treatment, binary, reason", [
    ((200, 0, 0), (200, 10, 10), True, "control mean is 0"),  # zero control mean
    ((200, 200, 200), (200, 200, 200), True, "variance is 0"),  # everyone converts in both arms
    ((200, 600, 1800), (200, 800, 3200), False, "variance is 0"),  # constants 3 vs 4: no spread at all
])
def test_degenerate_inputs_never_give_a_confident_answer(control, treatment, binary, reason):
    """A plug-in variance of 0 in both arms (or an undefined lift) is no evidence: p = 1, an
    infinite interval, and one data-quality alert saying why (gbstats also answers p = 1)."""
    row, alerts = one_look(control, treatment, binary=binary)
    assert row["local_p_value"] == row["always_valid_p_value"] == row["corrected_p_value"] == 1.0
    assert not row["rejected"]
    assert (row["uncorrected_local_conf_interval_lower"], row["uncorrected_local_conf_interval_upper"]) == (
        -math.inf, math.inf)
    assert [a.kind for a in alerts] == ["data_quality"] and reason in alerts[0].message


def test_zero_variance_in_one_arm_uses_the_other_and_needs_real_evidence():
    """Treatment 0 conversions of 200, control 3 of 200: V_D = v_c / N_c > 0, no alert, and no
    rejection from a plug-in 0 (Fisher: p = 0.25). All converting in one arm likewise."""
    row, alerts = one_look((200, 3, 3), (200, 0, 0), binary=True)
    assert alerts == [] and row["local_p_value"] > 0.5 and math.isfinite(row["standard_error"])
    row, alerts = one_look((200, 195, 195), (200, 200, 200), binary=True)
    assert alerts == [] and row["local_p_value"] > 0.5
    # and with plenty of data the same shape is a discovery, as it should be
    row, _ = one_look((5000, 250, 250), (5000, 0, 0), binary=True)
    assert row["rejected"] and row["uncorrected_local_conf_interval_upper"] < 0
    # Not the point [-100%, -100%] that the treatment's plug-in variance of 0 would give: a true
    # rate of 0.02% shows 0 conversions in 5,000 units 37% of the time, and its lift (-99.6%) must
    # be inside. The floor (F2b) gives the arm the pooled variance; -100% bounds it below (F3).
    lo, hi = row["uncorrected_local_conf_interval_lower"], row["uncorrected_local_conf_interval_upper"]
    assert lo == -1.0 and -0.996 < hi < 0


# --------------------------------------------------------------------------- Fieller algebra
@settings(max_examples=300, deadline=None)
@given(st.floats(-5, 5), st.floats(-5, 5), st.floats(1e-6, 4), st.floats(1e-6, 4), st.floats(0.5, 200))
def test_fieller_bounds_are_the_non_rejected_set(m_t, m_c, a_t, a_c, c):
    """Whatever the case (bounded interval, ray, whole line), a lift inside the reported
    bounds is not rejected, the estimate is inside, and lower <= upper; points just outside
    finite bounds are rejected."""
    if abs(m_c) < 1e-3:
        return
    lo, hi = (float(x) for x in fieller_bounds(np.array(m_t), np.array(m_c), np.array(a_t), np.array(a_c), c))
    assert lo <= hi
    z2 = lambda r: (m_t - (1 + r) * m_c) ** 2 / (a_t + (1 + r) ** 2 * a_c)  # noqa: E731
    estimate = m_t / m_c - 1
    assert lo <= estimate <= hi
    for bound, step in ((lo, -1), (hi, 1)):
        if abs(bound) < 1e8:  # finite, and squares of points near it still fit in a float
            outside = bound + step * 1e-6 * max(1.0, abs(bound))
            assert z2(outside) >= c * (1 - 1e-6)
    for inside in np.linspace(max(lo, estimate - 50), min(hi, estimate + 50), 7).tolist():
        assert z2(inside) <= c * (1 + 1e-6)


def test_p_value_is_the_mixture_test_of_the_difference():
    """The reported p is section 4's mixture test applied to D = m_t - m_c, V_D and tau^2 m_c^2,
    V_D the pooled two-sample variance when it is at least Welch's (state/METHODS.md F2b)."""
    row, _ = one_look((4000, 4100, 9000), (4000, 4300, 9800))
    m_c, m_t = 4100 / 4000, 4300 / 4000
    v_t, v_c = 9800 / 4000 - m_t**2, 9000 / 4000 - m_c**2
    v_pool = (9800 + 9000) / 8000 - ((4100 + 4300) / 8000) ** 2
    assert v_c < v_pool < v_t and 2 * v_pool >= v_t + v_c  # equal allocation: pooled >= Welch
    v_d = 2 * v_pool / 4000
    expected = SequentialTest().score(np.array(m_t - m_c), np.array(v_d), 0.01 * m_c**2).local_p_value
    assert row["local_p_value"] == pytest.approx(float(expected), rel=1e-12)
    assert row["standard_error"] == pytest.approx(math.sqrt(v_d) / m_c, rel=1e-12)


def test_unequal_allocation_with_the_small_arm_more_variable_keeps_welch_and_the_floor():
    """1,000 treatment units with variance 9 against 9,000 control units with variance 1: the
    pooled variance (1.8 plus the means' spread) understates the small arm's, Welch's sum is the
    larger, and each arm keeps the larger of its own variance and the pooled one (F2b)."""
    control, treatment = (9000, 9000 * 1.0, 9000 * (1.0 + 1.0)), (1000, 1000 * 1.05, 1000 * (1.05**2 + 9.0))
    row, _ = one_look(control, treatment)
    m_c, m_t = 1.0, 1.05
    v_t, v_c = 9.0, 1.0
    v_pool = (treatment[2] + control[2]) / 10000 - ((treatment[1] + control[1]) / 10000) ** 2
    assert v_pool * (1 / 1000 + 1 / 9000) < v_t / 1000 + v_c / 9000 and v_c < v_pool < v_t
    v_d = v_t / 1000 + v_pool / 9000
    expected = SequentialTest().score(np.array(m_t - m_c), np.array(v_d), 0.01 * m_c**2).local_p_value
    assert row["local_p_value"] == pytest.approx(float(expected), rel=1e-9)
    assert row["standard_error"] == pytest.approx(math.sqrt(v_d) / m_c, rel=1e-9)


def test_zero_conversions_in_the_larger_arm_is_not_a_point_interval():
    """0 of 50,000 treatment units against 250 of 5,000 in control (10:1): Welch's sum is the
    larger, and the treatment arm's plug-in 0 is floored at the pooled variance, so the interval
    is not the single point -100% (F2b)."""
    row, _ = one_look((5000, 250, 250), (50000, 0, 0), binary=True)
    lo, hi = row["uncorrected_local_conf_interval_lower"], row["uncorrected_local_conf_interval_upper"]
    assert row["rejected"] and lo == -1.0 and -1.0 < hi < 0


# --------------------------------------------------------------------------- compatibility
def test_batch_call_defaults_to_the_reference_method_and_honours_an_explicit_one():
    request = {"config": {}, "metrics": [{"config": {"name": "m"}, "data": [
        {"interval_timestamp": 0, "variation_id": "control", "unit_count": 421, "unit_observation_sum": 7,
         "unit_observation_sum_of_squares": 7},
        {"interval_timestamp": 0, "variation_id": "t", "unit_count": 431, "unit_observation_sum": 1,
         "unit_observation_sum_of_squares": 1}]}]}
    assert parse_request(request)[1].variance_method == "ses"
    assert parse_request({k: v for k, v in request.items() if k != "config"})[1].variance_method == "ses"
    assert evaluate(request)[0][0]["local_p_value"] < 1e-8
    named = dict(request, config={"variance_method": "fieller"})
    assert evaluate(named)[0][0]["local_p_value"] > 0.5


def test_per_metric_variance_ddof():
    """gbstats' conventions in one experiment: engine ddof 1 for continuous metrics, p(1 - p)
    for binary ones unless a metric says otherwise."""
    config = EngineConfig(variance_ddof=1, effect="absolute")
    configs = {"conv": MetricConfig(is_binary=True), "rev": MetricConfig(),
               "conv_sample": MetricConfig(is_binary=True, variance_ddof=1), "rev_pop": MetricConfig(variance_ddof=0)}
    state = ExperimentState("e", config, configs)
    data = {"conv": (400, 40, 40), "rev": (400, 800, 2000), "conv_sample": (400, 40, 40), "rev_pop": (400, 800, 2000)}
    rows = {r["metric"]: r for r in state.update(0, [Observation(m, v, 0, *data[m]) for m in data
                                                        for v in ("control", "t")]).rows}
    p, mean = 0.1, 2.0
    assert rows["conv"]["treatment_sample_variance"] == pytest.approx(p * (1 - p), rel=1e-12)
    assert rows["conv_sample"]["treatment_sample_variance"] == pytest.approx(p * (1 - p) * 400 / 399, rel=1e-12)
    assert rows["rev"]["treatment_sample_variance"] == pytest.approx((2000 / 400 - mean**2) * 400 / 399, rel=1e-12)
    assert rows["rev_pop"]["treatment_sample_variance"] == pytest.approx(2000 / 400 - mean**2, rel=1e-12)
    with pytest.raises(Exception, match="0 \\(population\\) or 1"):
        MetricConfig.from_dict({"variance_ddof": 2})
    assert MetricConfig.from_dict(MetricConfig(variance_ddof=1).to_dict()).variance_ddof == 1


# ------------------------------------------------------------------------------------ defects
def test_rows_scored_in_one_block_carry_their_own_reference():
    """Experiments with references "control" and "baseline" share a block (same layout and
    options); each row names its own experiment's reference, as when scored alone."""
    a = ExperimentState("a", EngineConfig(reference_variation_id="control"))
    b = ExperimentState("b", EngineConfig(reference_variation_id="baseline"))
    alone = ExperimentState("b", EngineConfig(reference_variation_id="baseline"))
    obs_a = [Observation("m", v, 0, 200, 100, 80) for v in ("control", "t")]
    obs_b = [Observation("m", v, 0, 200, 100, 80) for v in ("baseline", "t")]
    got_a, got_b = update_many([(a, 0, obs_a), (b, 0, obs_b)])
    assert [r["reference_variation_id"] for r in got_a.rows] == ["control"]
    assert [r["reference_variation_id"] for r in got_b.rows] == ["baseline"]
    obs_a2 = [Observation("m", v, 60, 200, 100, 80) for v in ("control", "t")]
    obs_b2 = [Observation("m", v, 60, 200, 100, 80) for v in ("baseline", "t")]
    assert a.block_key() == b.block_key()  # now they do share a block
    got_a, got_b = update_many([(a, 60, obs_a2), (b, 60, obs_b2)])
    alone.update(0, obs_b)
    expected = alone.update(60, obs_b2)
    assert [r["reference_variation_id"] for r in got_a.rows] == ["control"]
    assert repr(got_b.rows) == repr(expected.rows)


def test_sequential_srm_with_hundreds_of_variations_stays_in_log_space():
    """300 variations at their intended equal shares: log BF far below -710, where exp(-log BF)
    overflowed (OverflowError, an HTTP 500 from the batch call). p is 1, and a real mismatch is
    still found."""
    k = 300
    shares = [1.0 / k] * k
    counts = [1000.0] * k
    log_bf = dirichlet_multinomial_log_bf(counts, shares, 100.0)
    assert log_bf < -710
    assert sequential_p_value(log_bf) == 1.0
    assert SequentialSRM(tuple(shares)).update(counts).p_value == 1.0
    skewed = [5000.0] + [1000.0] * (k - 1)
    assert SequentialSRM(tuple(shares)).update(skewed).p_value < 1e-10
    state = ExperimentState("many")
    observations = [Observation("m", "control" if i == 0 else f"v{i}", 0, 1000, 500, 500) for i in range(k)]
    assert state.update(0, observations).srm.sequential_p_value == 1.0
    assert sequential_p_value(math.inf) == 0.0 and sequential_p_value(-math.inf) == 1.0


def test_a_state_written_before_the_reset_windows_still_loads():
    """States saved by the previous version have no change-detection window: they load, and
    their windows start as a new segment's would (the next look opens window 1)."""
    import orjson

    from state import from_bytes, to_bytes

    state = ExperimentState("old")
    for ts in (0, 60):
        state.update(ts, [Observation("m", v, ts, 300, 150, 120) for v in ("control", "t")])
    doc = orjson.loads(to_bytes(state))
    for name in ("window", "win_looks", "win_index"):
        del doc["arrays"][f"running.{name}"]
    restored = from_bytes(orjson.dumps(doc))
    assert restored.running["window"].shape == (1, 6) and restored.running["win_looks"].tolist() == [8.0]
    row = restored.update(120, [Observation("m", v, 120, 300, 150, 120) for v in ("control", "t")]).rows[0]
    assert row["treatment_unit_cumcount"] == 900 and restored.running["win_index"].tolist() == [1.0]
