"""Property tests (hypothesis): the monoid laws, batching invariance, streaming == evaluate, and
serialisation round trips (issue 2).

Sums are drawn as multiples of 1/8 below 2**40 so float64 addition is exact and the laws can be
asserted with ==, which is what they promise for such data (METHODS.md section 1).
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from state import ArmStats, EngineConfig, ExperimentState, evaluate, from_bytes, parse_observation, to_bytes

counts = st.integers(min_value=0, max_value=10_000)
eighths = st.integers(min_value=0, max_value=2**30).map(lambda k: k / 8)
arms = st.builds(ArmStats, counts.map(float), eighths, eighths)


@given(arms, arms, arms)
def test_merge_is_associative_and_commutative(a, b, c):
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(ArmStats()) == a


@given(st.lists(st.tuples(counts, eighths, eighths), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_any_batching_gives_the_same_totals(increments, rnd):
    one_by_one = ArmStats()
    for n, s, q in increments:
        one_by_one = one_by_one.update(n, s, q)
    cuts = sorted(rnd.sample(range(1, len(increments)), k=rnd.randint(0, len(increments) - 1)))
    batches = [increments[i:j] for i, j in zip([0] + cuts, cuts + [len(increments)])]
    partials = []
    for batch in batches:
        partial = ArmStats()
        for n, s, q in batch:
            partial = partial.update(n, s, q)
        partials.append(partial)
    rnd.shuffle(partials)
    merged = ArmStats()
    for partial in partials:
        merged = merged.merge(partial)
    assert merged == one_by_one


@st.composite
def experiments(draw):
    """A small random experiment: metrics x variations x intervals of valid observations."""
    n_metrics = draw(st.integers(1, 3))
    variations = ["control"] + [f"v{i}" for i in range(draw(st.integers(1, 3)))]
    n_intervals = draw(st.integers(1, 8))
    binary = [draw(st.booleans()) for _ in range(n_metrics)]
    rows = []
    for t in range(n_intervals):
        for m in range(n_metrics):
            for v in variations:
                if v != "control" and draw(st.integers(0, 9)) == 0:
                    continue  # treatments may skip an interval
                n = draw(st.integers(0, 400))
                if binary[m]:
                    s = float(draw(st.integers(0, n)))
                    q = s
                else:
                    s = draw(st.integers(0, 8 * n)) / 4
                    q = s * s / n + draw(st.integers(0, 64 * n)) / 8 if n else 0.0
                    if n == 0:
                        s = 0.0
                rows.append({"metric": f"m{m}", "variation_id": v, "interval_timestamp": 1000.0 + 60 * t,
                             "unit_count": n, "unit_observation_sum": s, "unit_observation_sum_of_squares": q})
    config = {"min_units": draw(st.sampled_from([0, 50, 100])), "use_stats_resets": draw(st.booleans()),
              "effect": draw(st.sampled_from(["relative", "absolute"])),
              # named explicitly: the batch call's default ("ses") is not the native one
              "variance_method": draw(st.sampled_from(["fieller", "ses", "delta"]))}
    return config, binary, rows


def _request(config, binary, rows):
    metrics = sorted({r["metric"] for r in rows})
    return {"config": config, "metrics": [
        {"config": {"name": m, "is_binary": binary[int(m[1:])]},
         "data": [{k: v for k, v in r.items() if k != "metric"} for r in rows if r["metric"] == m]}
        for m in metrics]}


@settings(max_examples=60, deadline=None)
@given(experiments())
def test_streaming_interval_by_interval_equals_evaluate(exp):
    config, binary, rows = exp
    request = _request(config, binary, rows)
    batch = evaluate(request)
    metric_configs = {m["config"]["name"]: m["config"] for m in request["metrics"]}
    from state import MetricConfig
    state = ExperimentState("batch", EngineConfig.from_dict(config),
                            {k: MetricConfig.from_dict(v) for k, v in metric_configs.items()})
    streamed = {name: [] for name in metric_configs}
    by_interval = {}
    for r in rows:
        by_interval.setdefault(r["interval_timestamp"], []).append(r)
    # the stream sees metrics in request order within an interval, as evaluate does
    order = list(metric_configs)
    for ts in sorted(by_interval):
        observations = [parse_observation(r) for r in sorted(by_interval[ts], key=lambda r: order.index(r["metric"]))]
        for row in state.update(ts, observations).rows:
            streamed[row["metric"]].append(row)
    for name, rows_out in zip(order, batch):
        seen = list(dict.fromkeys(r["variation_id"] for r in streamed[name]))
        expected = sorted(streamed[name], key=lambda r: (seen.index(r["variation_id"]), r["interval_timestamp"]))
        assert repr(rows_out) == repr(expected)


@settings(max_examples=40, deadline=None)
@given(experiments(), st.integers(0, 7))
def test_serialisation_round_trips_mid_stream(exp, cut):
    config, binary, rows = exp
    intervals = sorted({r["interval_timestamp"] for r in rows})
    state = ExperimentState("x", EngineConfig.from_dict(config))
    for ts in intervals[:cut]:
        state.update(ts, [parse_observation(r) for r in rows if r["interval_timestamp"] == ts])
    blob = to_bytes(state)
    restored = from_bytes(blob)
    assert to_bytes(restored) == blob
    for ts in intervals[cut:]:
        observations = [parse_observation(r) for r in rows if r["interval_timestamp"] == ts]
        assert repr(state.update(ts, observations).rows) == repr(restored.update(ts, observations).rows)


@settings(max_examples=40, deadline=None)
@given(experiments(), st.randoms(use_true_random=False))
def test_order_within_an_interval_does_not_matter_once_arms_exist(exp, rnd: random.Random):
    config, binary, rows = exp
    intervals = sorted({r["interval_timestamp"] for r in rows})
    a, b = ExperimentState("x", EngineConfig.from_dict(config)), ExperimentState("x", EngineConfig.from_dict(config))
    for i, ts in enumerate(intervals):
        observations = [parse_observation(r) for r in rows if r["interval_timestamp"] == ts]
        shuffled = list(observations)
        if i > 0 and set(a._arm_by_name) >= {(o.metric, o.variation_id) for o in observations}:
            rnd.shuffle(shuffled)
        a.update(ts, observations)
        b.update(ts, shuffled)
    assert to_bytes(a) == to_bytes(b)


PAIRS = (  # (lower, upper, p) of each reported CI/p pair (state/METHODS.md F5)
    ("uncorrected_local_conf_interval_lower", "uncorrected_local_conf_interval_upper", "local_p_value"),
    ("uncorrected_conf_interval_lower", "uncorrected_conf_interval_upper", "always_valid_p_value"),
    ("corrected_conf_interval_lower", "corrected_conf_interval_upper", "corrected_p_value"),
)


@settings(max_examples=80, deadline=None)
@given(experiments(), st.sampled_from([0.05, 0.1, 0.3]))
def test_every_interval_is_possible_and_excludes_zero_iff_its_p_is_below_alpha(exp, alpha):
    """Any data, any method: lower <= upper on every row, and 0 is outside each interval exactly
    when its p-value is below alpha (issue 16)."""
    config, binary, rows = exp
    for row in (r for metric_rows in evaluate(_request({**config, "alpha": alpha}, binary, rows)) for r in metric_rows):
        for lo_name, hi_name, p_name in PAIRS:
            lo, hi, p = row[lo_name], row[hi_name], row[p_name]
            assert lo <= hi, (lo_name, row)
            assert ((lo > 0) or (hi < 0)) == (p < alpha), (lo_name, lo, hi, p_name, p)
