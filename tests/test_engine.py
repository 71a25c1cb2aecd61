"""Engine behaviour: burn-in, undefined lifts, FDR family, epochs, resets, SRM, serialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from state import EngineConfig, ExperimentState, InvalidInput, MetricConfig, from_bytes, parse_observation, to_bytes
from state.fdr import benjamini_hochberg
from state.simulate import ExperimentSpec, MetricSpec, simulate


def obs(metric, variation, ts, n, s, q):
    return parse_observation({"metric": metric, "variation_id": variation, "interval_timestamp": ts,
                              "unit_count": n, "unit_observation_sum": s, "unit_observation_sum_of_squares": q})


def feed(state, spec, seed=1):
    results = []
    for rows in simulate(spec, seed):
        observations = [parse_observation(r) for r in rows]
        results.append(state.update(observations[0].interval_timestamp, observations))
    return results


def test_burn_in_reports_counts_but_no_inference():
    state = ExperimentState("e", EngineConfig(min_units=100))
    row = state.update(0, [obs("m", "control", 0, 99, 50, 60), obs("m", "t", 0, 150, 90, 100)]).rows[0]
    assert (row["lift_estimate"], row["standard_error"], row["mixture_likelihood_ratio"]) == (0.0, math.inf, 1.0)
    assert row["local_p_value"] == row["corrected_p_value"] == 1.0
    assert row["corrected_conf_interval_lower"] == row["uncorrected_local_conf_interval_lower"] == -math.inf
    assert row["corrected_conf_interval_upper"] == row["uncorrected_conf_interval"] == math.inf
    assert row["treatment_unit_cumcount"] == 150 and row["control_unit_cumcount"] == 99
    assert row["treatment_sample_variance"] == pytest.approx(100 / 150 - (90 / 150) ** 2)
    assert row["fdr_correction_factor"] == 1.0  # one hypothesis, no discovery: max(0, 1) / 1


def test_zero_control_mean_gives_nan_lift_p_one_and_one_alert():
    state = ExperimentState("e")
    result = state.update(0, [obs("m", "control", 0, 200, 0, 0), obs("m", "t", 0, 200, 10, 10)])
    row = result.rows[0]
    assert math.isnan(row["lift_estimate"]) and row["local_p_value"] == 1.0
    assert row["corrected_conf_interval_lower"] == -math.inf and row["corrected_conf_interval_upper"] == math.inf
    assert [a.kind for a in result.alerts] == ["data_quality"]
    again = state.update(60, [obs("m", "control", 60, 200, 0, 0), obs("m", "t", 60, 200, 10, 10)])
    assert not any(a.kind == "data_quality" for a in again.alerts)  # raised once, not every interval


def test_absolute_effect_and_its_variance():
    state = ExperimentState("e", EngineConfig(effect="absolute"))
    row = state.update(0, [obs("m", "control", 0, 400, 400, 1200), obs("m", "t", 0, 500, 600, 1500)]).rows[0]
    assert row["effect"] == "absolute"
    assert row["lift_estimate"] == pytest.approx(1.2 - 1.0)
    v_t, v_c = 1500 / 500 - 1.2**2, 1200 / 400 - 1.0
    assert row["standard_error"] == pytest.approx(math.sqrt(v_t / 500 + v_c / 400))


def test_a_treatment_that_appears_late_is_compared_with_the_control_from_then_on():
    """A variation launched in the third interval is compared with its control's data from that
    interval on, not with the control's earlier intervals (another time: any drift of the metric
    would read as an effect, state/METHODS.md F8b). The cumulative count columns stay the arms'
    lifetime totals, as after a stats reset."""
    state = ExperimentState("e", EngineConfig(effect="absolute"))
    for ts in (0, 60):  # two intervals of control and t1 only
        state.update(ts, [obs("m", "control", ts, 400, 400, 1200), obs("m", "t1", ts, 400, 480, 1500)])
    # t2 appears in the third interval, together with a new metric whose arms are all new
    rows = state.update(120, [obs("m", "control", 120, 400, 440, 1300), obs("m", "t2", 120, 500, 700, 1800),
                              obs("m", "t1", 120, 400, 480, 1500), obs("n", "t2", 120, 300, 30, 30),
                              obs("n", "control", 120, 300, 60, 60)]).rows
    by_arm = {(r["metric"], r["variation_id"]): r for r in rows}
    assert list(by_arm) == [("m", "t1"), ("m", "t2"), ("n", "t2")]  # first-sight order
    late = by_arm[("m", "t2")]
    assert (late["control_unit_cumcount"], late["treatment_unit_cumcount"]) == (1200, 500)  # lifetimes
    n_c, s_c, q_c = 400, 440, 1300  # the control's interval concurrent with t2
    assert late["lift_estimate"] == pytest.approx(700 / 500 - s_c / n_c)
    v_t, v_c = 1800 / 500 - (700 / 500) ** 2, q_c / n_c - (s_c / n_c) ** 2
    assert late["standard_error"] == pytest.approx(math.sqrt(v_t / 500 + v_c / n_c))
    early = by_arm[("m", "t1")]  # t1 keeps all three control intervals
    assert early["lift_estimate"] == pytest.approx(1440 / 1200 - 1240 / 1200)
    new_metric = by_arm[("n", "t2")]
    assert new_metric["lift_estimate"] == pytest.approx(30 / 300 - 60 / 300)
    assert new_metric["control_unit_cumcount"] == 300
    restored = from_bytes(to_bytes(state))  # the grown arrays survive a round trip
    nxt = [obs("m", "control", 180, 400, 400, 1200), obs("m", "t2", 180, 500, 700, 1800)]
    assert repr(restored.update(180, nxt).rows) == repr(state.update(180, nxt).rows)


def test_bh_matches_its_definition():
    rng = np.random.default_rng(3)
    for _ in range(200):
        p = rng.uniform(0, 1, rng.integers(1, 12)) ** 3
        m = len(p)
        order = np.argsort(p)
        expected = np.empty(m)
        for rank, i in enumerate(order, start=1):
            expected[i] = min(1.0, min(m / j * p[order[j - 1]] for j in range(rank, m + 1)))
        np.testing.assert_allclose(benjamini_hochberg(p), expected, rtol=1e-12)
        np.testing.assert_allclose(benjamini_hochberg(p[None, :])[0], expected, rtol=1e-12)


def test_guardrail_metric_outside_the_family_is_uncorrected():
    spec = ExperimentSpec("e", (MetricSpec("a", 1.0, sd=1.0, lifts={"treatment": 0.05}),
                                MetricSpec("guard", 1.0, sd=1.0, lifts={"treatment": 0.05})), intervals=6)
    state = ExperimentState("e", metric_configs={"guard": MetricConfig(in_fdr_family=False)})
    last = feed(state, spec)[-1].rows
    guard = next(r for r in last if r["metric"] == "guard")
    main = next(r for r in last if r["metric"] == "a")
    assert guard["corrected_p_value"] == guard["always_valid_p_value"] and guard["fdr_correction_factor"] == 1.0
    assert main["fdr_correction_factor"] == 1.0  # a family of one


def test_allocation_change_starts_an_epoch_and_stratifies_the_estimate():
    """Simpson's paradox guard (section 6): the metric drifts up over time while the treatment's
    share ramps from 10% to 90%. Pooled means would show a large spurious lift; the stratified
    estimate shows none."""
    state = ExperimentState("e", EngineConfig(weights={"control": 9, "t": 1}))
    rows = []
    for i in range(10):
        if i == 5:
            assert state.reconfigure(EngineConfig(weights={"control": 1, "t": 9})) is True
        level = 1.0 if i < 5 else 2.0
        n_c, n_t = (900, 100) if i < 5 else (100, 900)
        ts = 60.0 * i
        rows.append(state.update(ts, [obs("m", "control", ts, n_c, level * n_c, (level**2 + 1) * n_c),
                                      obs("m", "t", ts, n_t, level * n_t, (level**2 + 1) * n_t)]).rows[0])
    assert [r["epoch_boundary"] for r in rows] == [False] * 5 + [True] + [False] * 4
    assert [r["epoch"] for r in rows] == [0] * 5 + [1] * 5
    final = rows[-1]
    assert final["lift_estimate"] == pytest.approx(0.0, abs=1e-12)
    pooled_t = final["treatment_observation_cumsum"] / final["treatment_unit_cumcount"]
    pooled_c = final["control_observation_cumsum"] / final["control_unit_cumcount"]
    assert pooled_t / pooled_c - 1 > 0.5  # what an unstratified estimate would have reported
    assert not state.reconfigure(EngineConfig(weights={"control": 1, "t": 9}))  # same weights: same epoch


def test_weights_set_before_any_data_define_epoch_zero():
    state = ExperimentState("e")
    assert state.reconfigure(EngineConfig(weights={"control": 1, "t": 1})) is False
    row = state.update(0, [obs("m", "control", 0, 200, 100, 80), obs("m", "t", 0, 200, 110, 90)]).rows[0]
    assert (row["epoch"], row["epoch_boundary"]) == (0, False)
    assert state.expected_shares() == [0.5, 0.5]


def test_flipped_effect_resets_only_when_enabled():
    spec = ExperimentSpec("e", (MetricSpec("m", 1.0, sd=1.0, lifts={"treatment": 0.3},
                                           lift_changes=((15, {"treatment": -0.3}),)),),
                          units_per_interval=2000, intervals=30)
    on = feed(ExperimentState("e", EngineConfig(use_stats_resets=True)), spec)
    off = feed(ExperimentState("e", EngineConfig(use_stats_resets=False)), spec)
    resets = [i for i, r in enumerate(on) if r.rows[0]["stats_reset"]]
    assert resets and resets[0] >= 15
    assert on[resets[0]].rows[0]["segment"] == 1 and any(a.kind == "stats_reset" for a in on[resets[0]].alerts)
    # lifetime totals keep counting across the reset
    assert on[-1].rows[0]["treatment_unit_cumcount"] == off[-1].rows[0]["treatment_unit_cumcount"]
    assert on[-1].rows[0]["lift_estimate"] < 0
    assert not any(r.rows[0]["stats_reset"] for r in off)


def test_srm_alert_once_and_exposures_counted_once_per_variation():
    spec = ExperimentSpec("e", tuple(MetricSpec(f"m{i}", 0.1, is_binary=True) for i in range(3)),
                          weights=(0.5, 0.5), served_weights=(0.55, 0.45), units_per_interval=500, intervals=20)
    state = ExperimentState("e", EngineConfig(weights={"control": 0.5, "treatment": 0.5}))
    results = feed(state, spec)
    srm_alerts = [a for r in results for a in r.alerts if a.kind == "srm"]
    assert len(srm_alerts) == 1
    total_units = sum(r["unit_count"] for rows in simulate(spec, 1) for r in rows if r["metric"] == "m0")
    assert sum(results[-1].srm.exposures) == total_units  # not three times (one per metric)
    assert results[-1].srm.detected and results[-1].srm.chi_square.p_value < 1e-6


def test_rejected_interval_changes_nothing():
    state = ExperimentState("e")
    state.update(0, [obs("m", "control", 0, 200, 100, 80), obs("m", "t", 0, 200, 110, 90)])
    before = to_bytes(state)
    with pytest.raises(InvalidInput, match="not after"):
        state.update(0, [obs("m", "control", 0, 1, 1, 1)])
    with pytest.raises(InvalidInput, match="two observations"):
        state.update(60, [obs("m", "t", 60, 1, 1, 1), obs("m", "t", 60, 1, 1, 1)])
    assert to_bytes(state) == before


def test_serialised_state_restores_bit_for_bit_and_continues_identically():
    spec = ExperimentSpec("e", (MetricSpec("a", 0.2, is_binary=True, lifts={"treatment": 0.1}),
                                MetricSpec("b", 3.0, sd=4.0)), intervals=12)
    data = [[parse_observation(r) for r in rows] for rows in simulate(spec, 5)]
    state = ExperimentState("e", EngineConfig(alpha=0.05, weights={"control": 1, "treatment": 1}))
    for observations in data[:6]:
        state.update(observations[0].interval_timestamp, observations)
    restored = from_bytes(to_bytes(state))
    assert to_bytes(restored) == to_bytes(state)
    for observations in data[6:]:
        a = state.update(observations[0].interval_timestamp, observations)
        b = restored.update(observations[0].interval_timestamp, observations)
        assert repr(a.rows) == repr(b.rows)  # repr: NaN == NaN, and exact floats
    assert len(to_bytes(state)) < 4096


def test_state_rejects_unknown_format_version():
    blob = to_bytes(ExperimentState("e")).replace(b'"v":1', b'"v":99')
    with pytest.raises(InvalidInput, match="format version"):
        from_bytes(blob)


def _mixed_experiments(count: int = 24):
    """Experiments that exercise every branch of the scoring: burn-in, 0/1 and absolute metrics,
    a guardrail outside the FDR family, n_star, a zero control mean, an effect that flips (stats
    reset) and an allocation change (epoch); several share a layout, so they share blocks."""
    cases = []
    for i in range(count):
        kind = i % 6
        metrics = (MetricSpec("conv", 0.0 if kind == 3 else 0.1, is_binary=True, lifts={"treatment": 0.2}),
                   MetricSpec("rev", 0.0 if kind == 3 else 5.0, sd=3.0, lifts={"treatment": 0.1 * (i % 3)},
                              lift_changes=((12, {"treatment": -0.3}),) if kind == 1 else ()))
        config = EngineConfig(n_star=2000.0 if kind == 2 else None, min_units=400 if kind == 4 else 0,
                              weights={"control": 1, "treatment": 1} if kind == 5 else None)
        metric_configs = {"rev": MetricConfig(effect="absolute" if kind == 2 else None, in_fdr_family=kind != 4)}
        spec = ExperimentSpec(f"e{i}", metrics, units_per_interval=400 + 100 * i, intervals=20)
        cases.append((ExperimentState(spec.experiment_id, config, metric_configs), list(simulate(spec, i))))
    return cases


def test_update_many_equals_update_to_the_bit():
    """Scoring experiments together (state.block) must not change any experiment's figures."""
    from state.experiment import update_many

    alone, together = _mixed_experiments(), _mixed_experiments()
    kinds, epochs = set(), set()
    for t in range(20):
        if t == 10:  # an allocation change mid-way: epochs in blocks too
            for state, _ in alone[5::6] + together[5::6]:
                state.reconfigure(EngineConfig(weights={"control": 2, "treatment": 1}))
        items = []
        for (single, intervals), (joint, _) in zip(alone, together):
            observations = [parse_observation(r) for r in intervals[t]]
            expected = single.update(observations[0].interval_timestamp, observations)
            items.append((joint, observations[0].interval_timestamp, observations, expected))
        layouts = {state.block_key() for state, _, _, _ in items}
        assert len(layouts) < len(items)  # some experiments are scored together
        got = update_many([(state, ts, observations) for state, ts, observations, _ in items])
        for result, (_, _, _, expected) in zip(got, items):
            kinds |= {a.kind for a in expected.alerts}
            epochs |= {row["epoch"] for row in expected.rows}
            assert repr(result.rows) == repr(expected.rows)  # repr: NaN == NaN, and exact floats
            assert [a.to_dict() for a in result.alerts] == [a.to_dict() for a in expected.alerts]
            assert result.srm == expected.srm
    for (single, _), (joint, _) in zip(alone, together):
        assert to_bytes(joint) == to_bytes(single)
    assert {"stats_reset", "significance_reached", "data_quality"} <= kinds and epochs == {0, 1}


def test_update_many_checks_every_interval_before_changing_any_state():
    from state.experiment import update_many

    first, second = ExperimentState("a", EngineConfig(weights={"control": 1, "t": 1})), ExperimentState("b")
    first.update(0, [obs("m", "control", 0, 10, 5, 5)])
    first.reconfigure(EngineConfig(weights={"control": 2, "t": 1}))  # pending epoch: opened by the next update
    second.update(60, [obs("m", "control", 60, 10, 5, 5)])
    before = to_bytes(first), to_bytes(second)
    with pytest.raises(InvalidInput, match="not after the last applied interval"):
        update_many([(first, 60, [obs("m", "control", 60, 10, 5, 5), obs("m", "t", 60, 10, 5, 5)]),
                     (second, 0, [obs("m", "control", 0, 10, 5, 5)])])
    assert (to_bytes(first), to_bytes(second)) == before  # no arm registered, no epoch opened
