"""Engine speed (issue 2): prints figures, asserts nothing.

1. Scoring 50,000 hypotheses in one vectorised call (effects, mSPRT, confidence half-widths),
   next to a minimal plain-numpy version of the same formulas as the yardstick; and the native
   default method (difference-scale mSPRT and the closed-form Fieller interval) against it.
2. One interval update of a 3-variation, 5-metric experiment (state advance; then also with the
   row dicts materialised), and the serialised state size.

Run: python bench/bench_engine.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from state import EngineConfig, ExperimentState, SequentialTest, parse_observation, to_bytes  # noqa: E402
from state.effects import estimate_effects  # noqa: E402
from state.fieller import fieller_bounds  # noqa: E402
from state.simulate import ExperimentSpec, MetricSpec, simulate  # noqa: E402


def best_of(fn, repeats=30):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def score_engine(stats, relative, test):
    """The reference service's method ("ses"): effects, mSPRT, symmetric half-widths."""
    est = estimate_effects(stats, None, relative, variance_method="ses")
    tau2 = test.mixing_variance(est.variance, est.units_treatment + est.units_control)
    score = test.score(est.effect, est.variance, tau2)
    half = test.half_width(est.variance, tau2, 0.1)
    return score.local_p_value, est.effect - half, est.effect + half


def score_default(stats, relative, test, a=0.1):
    """The native default ("fieller", state/METHODS.md F2-F3): the mSPRT of the difference with
    mixing variance tau^2 m_c^2, and the relative interval by the closed-form Fieller inversion."""
    est = estimate_effects(stats, None, relative, variance_method="fieller")
    tau2 = test.tau2 * est.mean_control**2
    score = test.score(est.statistic, est.variance, tau2)
    half = test.half_width(est.variance, tau2, a)
    lo, hi = fieller_bounds(est.mean_treatment, est.mean_control, est.var_mean_treatment, est.var_mean_control,
                            half * half / est.variance)
    return score.local_p_value, lo, hi


def score_plain(nt, st, qt, nc, sc, qc, tau2=0.01, a=0.1):
    mt, mc = st / nt, sc / nc
    vt, vc = qt / nt - mt * mt, qc / nc - mc * mc
    theta = mt / mc - 1
    v = (vt / (nt * mc**2) + mt**2 * vc / (nc * mc**4)) * 4 * mt * mc / (mt + mc) ** 2
    log_mlr = 0.5 * np.log(v / (v + tau2)) + tau2 * theta**2 / (2 * v * (v + tau2))
    half = np.sqrt(v * (v + tau2) / tau2 * (-2 * np.log(a) + np.log((v + tau2) / v)))
    return np.minimum(1, np.exp(-log_mlr)), theta - half, theta + half


def bench_vectorised(h=50_000):
    rng = np.random.default_rng(0)
    n = rng.integers(1_000, 100_000, size=(h, 2)).astype(float)
    mean = rng.uniform(1.0, 2.0, size=(h, 2))
    s = n * mean
    q = n * (mean**2 + rng.uniform(0.5, 2.0, size=(h, 2)))
    stats = np.stack([n, s, q], axis=-1)[:, None, :, :]  # (H, E=1, 2, 3)
    relative = np.ones(h, dtype=bool)
    test = SequentialTest()
    engine = best_of(lambda: score_engine(stats, relative, test))
    default = best_of(lambda: score_default(stats, relative, test))
    plain = best_of(lambda: score_plain(n[:, 0], s[:, 0], q[:, 0], n[:, 1], s[:, 1], q[:, 1]))
    p_engine, *_ = score_engine(stats, relative, test)
    p_plain, *_ = score_plain(n[:, 0], s[:, 0], q[:, 0], n[:, 1], s[:, 1], q[:, 1])
    assert np.allclose(p_engine, p_plain, rtol=1e-12)  # same numbers, or the comparison is moot
    p_default, lo, hi = score_default(stats, relative, test)
    assert np.all(lo <= hi) and np.array_equal((lo > 0) | (hi < 0), p_default < 0.1)  # a real interval
    print(f"score {h:,} hypotheses, one call: engine (ses) best {engine[0]*1e3:.2f} ms (median {engine[1]*1e3:.2f} ms); "
          f"plain numpy best {plain[0]*1e3:.2f} ms (median {plain[1]*1e3:.2f} ms); "
          f"ratio {engine[0]/plain[0]:.2f}x  [target <= 20 ms]")
    print(f"score {h:,} hypotheses, one call, default method (fieller, Fieller inversion): best {default[0]*1e3:.2f} ms "
          f"(median {default[1]*1e3:.2f} ms); ratio to plain numpy mSPRT {default[0]/plain[0]:.2f}x  [target <= 3x]")


def bench_interval_update(intervals=3000):
    spec = ExperimentSpec("bench", tuple(MetricSpec(f"m{i}", 1.0, sd=2.0, lifts={"t1": 0.01}) for i in range(5)),
                          variations=("control", "t1", "t2"), intervals=intervals)
    data = [[parse_observation(r) for r in rows] for rows in simulate(spec, 1)]
    # ExperimentState("bench") uses the default method (fieller); "ses" for comparison
    for label, materialise, config in (("state advance", False, None), ("advance + row dicts", True, None),
                                       ("state advance, ses", False, EngineConfig(variance_method="ses"))):
        per_run = []
        for _ in range(5):
            state = ExperimentState("bench", config)
            t0 = time.perf_counter()
            for observations in data:
                result = state.update(observations[0].interval_timestamp, observations)
                if materialise:
                    result.rows  # noqa: B018 (build the dicts)
            per_run.append((time.perf_counter() - t0) / len(data))
            if config is None:
                default_state = state
        print(f"interval update, 3 variations x 5 metrics ({label}): best {min(per_run)*1e6:.0f} us, "
              f"median {statistics.median(per_run)*1e6:.0f} us per interval  [target <= 200 us]")
    size = len(to_bytes(default_state))
    print(f"serialised state after {intervals} intervals: {size} bytes = {size / 15:.0f} bytes per (metric, variation)")


if __name__ == "__main__":
    bench_vectorised()
    bench_interval_update()
