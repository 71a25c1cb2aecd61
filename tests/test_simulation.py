"""Monte-Carlo checks of every claim of METHODS.md section 9 ("What the tests must show").

Everything runs the real engine path, ``ExperimentState.update`` interval by interval with
continuous monitoring (every interval is a look), fed by the seeded simulator of
``state.simulate``. All seeds are fixed, so the file is deterministic; the bounds are still stated
as Monte-Carlo tolerances so that they mean something for any seed:

* A rate r estimated from n (near-)independent runs is accepted when
  ``observed <= claimed + 3 * sqrt(claimed * (1 - claimed) / n)``: if the true rate were exactly
  the claimed one, a binomial count exceeds this with probability ~0.1-0.2%.
  Hypotheses of one experiment share their unit counts (units are common to all metrics) but
  draw their metric values independently, so they are treated as independent runs.
* For rates far below 1/n (SRM false alarms at 0.001) the normal approximation is useless; the
  bound is the exact binomial 99.9% quantile of the count under the claimed rate.
* FDR is a mean of the false-discovery proportion FDP in [0, 1], so Var(FDP) <= FDR (1 - FDR) and
  the same "claimed + 3 standard errors" bound applies with n = number of experiments.
* Power-type claims ("is flagged", "triggers a reset") assert a floor; the floor is stated where
  it is used.

Budget: the whole file runs in ~20-30 s on 2 cores. One engine update of a 20-metric experiment
costs ~0.35 ms, whereas ``simulate()`` builds a dict per (metric, arm) row and costs about twice
that; the large A/A, coverage and FDR studies therefore draw each interval with the simulator's
own pieces (``ExperimentSpec.served_at``, ``MetricSpec.lifts_at``, ``draw_arm_sums``) vectorised
over metrics, and build ``Observation`` objects directly. The stats-reset and SRM-detection
studies go through ``simulate()`` and ``parse_observation`` end to end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.stats import binom

from state import EngineConfig, ExperimentState, MetricConfig, Observation, parse_observation
from state.fdr import benjamini_hochberg
from state.simulate import ExperimentSpec, MetricSpec, draw_arm_sums, simulate
from state.srm import dirichlet_multinomial_log_bf

ALPHA = 0.1  # METHODS.md defaults, checked against EngineConfig below
RESET_ALPHA = 0.01
SRM_ALPHA = 0.001


def upper_tolerance(rate: float, n: int, sds: float = 3.0) -> float:
    """claimed rate + ``sds`` binomial standard errors of a mean over n runs."""
    return rate + sds * math.sqrt(rate * (1.0 - rate) / n)


def test_defaults_are_the_ones_under_test():
    cfg = EngineConfig()
    assert (cfg.alpha, cfg.reset_alpha, cfg.srm_alpha, cfg.use_stats_resets) == (ALPHA, RESET_ALPHA, SRM_ALPHA, True)
    assert cfg.min_units == 100 and cfg.tau2 == 0.01


# ------------------------------------------------------------------------------------ runner
def _metrics(prefix: str, count: int, *, binary: bool, lifts: list[float] | float = 0.0) -> tuple[MetricSpec, ...]:
    lifts = [lifts] * count if isinstance(lifts, float) else lifts
    if binary:  # conversion-like 0/1 metric, 20% base rate
        return tuple(MetricSpec(f"{prefix}{i}", 0.2, is_binary=True, lifts={"treatment": lifts[i]}) for i in range(count))
    # continuous metric with coefficient of variation 1 (mean 10, sd 10)
    return tuple(MetricSpec(f"{prefix}{i}", 10.0, sd=10.0, lifts={"treatment": lifts[i]}) for i in range(count))


def _metric_configs(spec: ExperimentSpec) -> dict[str, MetricConfig]:
    return {m.name: MetricConfig(name=m.name, is_binary=m.is_binary) for m in spec.metrics}


@dataclass
class Trace:
    """Columns of every interval of one experiment, shape (intervals, hypotheses)."""

    metrics: list[str]
    columns: dict[str, np.ndarray]
    true_lift: np.ndarray  # (intervals, hypotheses): the simulator's relative lift at that interval
    alerts: list
    srm: list
    timestamps: list[float]


TRACE_COLUMNS = (
    "always_valid_p_value", "rejected", "corrected_p_value", "stats_reset", "segment",
    "uncorrected_conf_interval_lower", "uncorrected_conf_interval_upper", "lift_estimate",
)


def _draw_interval(rng: np.random.Generator, spec: ExperimentSpec, i: int, groups) -> list[Observation]:
    """One interval of ``simulate(spec)``, vectorised over metrics of one kind: the same draws
    (Poisson total, multinomial split by the served allocation, ``draw_arm_sums`` per arm)."""
    ts = spec.start + i * spec.interval_seconds
    units = rng.multinomial(rng.poisson(spec.units_per_interval), spec.served_at(i)).astype(np.float64)
    unit_list = units.tolist()
    out: list[Observation] = []
    for (is_binary, sd), metrics in groups:
        means = np.array([[m.control_mean * (1.0 + m.lifts_at(i).get(v, 0.0)) for v in spec.variations] for m in metrics])
        sums, squares = draw_arm_sums(rng, np.broadcast_to(units, means.shape).copy(), means, sd, is_binary)
        sums, squares = sums.tolist(), squares.tolist()
        for r, m in enumerate(metrics):
            for k, v in enumerate(spec.variations):
                out.append(Observation(m.name, v, ts, unit_list[k], sums[r][k], squares[r][k]))
    return out


def run_fast(spec: ExperimentSpec, seed: int, config: EngineConfig | None = None) -> Trace:
    """Feed ``ExperimentState`` from the vectorised simulator; collect TRACE_COLUMNS."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[bool, float], list[MetricSpec]] = {}
    for m in spec.metrics:
        groups.setdefault((m.is_binary, 0.0 if m.is_binary else m.sd), []).append(m)
    groups = list(groups.items())
    state = ExperimentState(spec.experiment_id, config or EngineConfig(), _metric_configs(spec))
    cols: dict[str, list] = {c: [] for c in TRACE_COLUMNS}
    alerts, srm, metrics = [], [], None
    for i in range(spec.intervals):
        obs = _draw_interval(rng, spec, i, groups)
        res = state.update(obs[0].interval_timestamp, obs)
        metrics = _record(res, cols, alerts, srm, metrics)
    return _trace(spec, metrics, cols, alerts, srm)


def _record(res, cols: dict[str, list], alerts: list, srm: list, metrics):
    """Append one interval's result to a trace under construction; returns the metric order."""
    for c in TRACE_COLUMNS:
        cols[c].append(res.columns[c])
    alerts.extend(res.alerts)
    srm.append(res.srm)
    return metrics or list(res.columns["metric"])


def run_simulate(spec: ExperimentSpec, seed: int, config: EngineConfig | None = None, stop=None) -> Trace:
    """Feed ``ExperimentState`` from ``simulate()`` rows through ``parse_observation``.
    ``stop(result)`` may end the run early (returns True)."""
    configs = _metric_configs(spec)
    state = ExperimentState(spec.experiment_id, config or EngineConfig(), configs)
    cols: dict[str, list] = {c: [] for c in TRACE_COLUMNS}
    alerts, srm, metrics = [], [], None
    for rows in simulate(spec, seed):
        obs = [parse_observation(r, is_binary=configs[r["metric"]].is_binary) for r in rows]
        res = state.update(obs[0].interval_timestamp, obs)
        metrics = _record(res, cols, alerts, srm, metrics)
        if stop is not None and stop(res):
            break
    return _trace(spec, metrics, cols, alerts, srm)


def _trace(spec, metrics, cols, alerts, srm) -> Trace:
    by_name = {m.name: m for m in spec.metrics}
    truth = np.array([[by_name[name].lifts_at(i).get("treatment", 0.0) for name in metrics] for i in range(len(srm))])
    timestamps = [spec.start + i * spec.interval_seconds for i in range(len(srm))]
    return Trace(metrics, {c: np.array(v) for c, v in cols.items()}, truth, alerts, srm, timestamps)


# ------------------------------------------------------------------------------- A/A (null)
AA_EXPERIMENTS = 300  # x 20 hypotheses (10 continuous + 10 binary), 30 looks each
AA_INTERVALS = 30


@pytest.fixture(scope="module")
def aa_runs() -> list[Trace]:
    spec = ExperimentSpec(
        "aa",
        _metrics("c", 10, binary=False) + _metrics("b", 10, binary=True),
        units_per_interval=1000,
        intervals=AA_INTERVALS,
    )
    return [run_fast(spec, 10_000 + s) for s in range(AA_EXPERIMENTS)]


def test_aa_always_valid_p_false_positive_rate(aa_runs):
    """Per hypothesis: P(always-valid p < alpha at any of the 30 looks) <= alpha, separately for
    continuous and 0/1 metrics (3000 hypotheses each: tolerance 3 SE = 0.016)."""
    ever = np.concatenate([(t.columns["always_valid_p_value"] < ALPHA).any(axis=0) for t in aa_runs])
    names = np.concatenate([t.metrics for t in aa_runs])
    for kind in ("c", "b"):
        mask = np.char.startswith(names.astype(str), kind)
        rate, n = ever[mask].mean(), int(mask.sum())
        bound = upper_tolerance(ALPHA, n)
        assert rate <= bound, f"A/A {kind}: P(ever p < alpha) = {rate:.4f} over {n} hypotheses > {bound:.4f}"


def test_aa_fdr_corrected_rejection_rate(aa_runs):
    """Per experiment (family of 20 true nulls): P(any `rejected` at any look) <= alpha; under
    the global null FDR = FWER. 300 experiments: tolerance 3 SE = 0.052. Also per hypothesis
    (6000 hypotheses; tolerance 0.012)."""
    any_rejected = np.array([t.columns["rejected"].any() for t in aa_runs])
    rate = any_rejected.mean()
    bound = upper_tolerance(ALPHA, len(aa_runs))
    assert rate <= bound, f"A/A: P(any hypothesis ever rejected) = {rate:.4f} over {len(aa_runs)} experiments > {bound:.4f}"
    per_hyp = np.concatenate([t.columns["rejected"].any(axis=0) for t in aa_runs])
    assert per_hyp.mean() <= upper_tolerance(ALPHA, per_hyp.size), per_hyp.mean()


# ------------------------------------------------------------------------------ CI coverage
COVERAGE_LIFT = 0.05
COVERAGE_EXPERIMENTS = 150  # x 20 hypotheses, 25 looks of 2000 units


@pytest.fixture(scope="module")
def coverage_runs() -> list[Trace]:
    spec = ExperimentSpec(
        "coverage",
        _metrics("c", 10, binary=False, lifts=COVERAGE_LIFT) + _metrics("b", 10, binary=True, lifts=COVERAGE_LIFT),
        units_per_interval=2000,
        intervals=25,
    )
    return [run_fast(spec, 20_000 + s) for s in range(COVERAGE_EXPERIMENTS)]


def test_always_valid_ci_coverage(coverage_runs):
    """P(true relative lift ever outside the running uncorrected CI) <= alpha, true lift 5%, per
    metric kind (1500 hypotheses each: tolerance 3 SE = 0.023)."""
    names = np.concatenate([t.metrics for t in coverage_runs]).astype(str)
    miss = np.concatenate([
        ((t.columns["uncorrected_conf_interval_lower"] > t.true_lift)
         | (t.columns["uncorrected_conf_interval_upper"] < t.true_lift)).any(axis=0)
        for t in coverage_runs
    ])
    # the CIs are finite from the first look (1000 units per arm > min_units) and not vacuous
    last_width = np.concatenate([
        t.columns["uncorrected_conf_interval_upper"][-1] - t.columns["uncorrected_conf_interval_lower"][-1]
        for t in coverage_runs
    ])
    assert np.all(np.isfinite(last_width)) and np.median(last_width) < 2 * COVERAGE_LIFT
    for kind in ("c", "b"):
        mask = np.char.startswith(names, kind)
        rate, n = miss[mask].mean(), int(mask.sum())
        bound = upper_tolerance(ALPHA, n)
        assert rate <= bound, f"coverage {kind}: P(truth ever outside CI) = {rate:.4f} over {n} > {bound:.4f}"


# ------------------------------------------------------------------------------------ FDR
FDR_EXPERIMENTS = 300
FDR_LIFTS = [0.03, 0.04, 0.05, 0.06, 0.08]  # 5 real effects among 20 hypotheses


@pytest.fixture(scope="module")
def fdr_runs() -> list[Trace]:
    metrics = (
        _metrics("effect_c", 5, binary=False, lifts=FDR_LIFTS)
        + _metrics("null_c", 8, binary=False)
        + _metrics("null_b", 7, binary=True)
    )
    spec = ExperimentSpec("fdr", metrics, units_per_interval=1000, intervals=30)
    return [run_fast(spec, 30_000 + s) for s in range(FDR_EXPERIMENTS)]


def test_bh_fdr_with_mixed_hypotheses(fdr_runs):
    """FDR = E[false rejections / max(rejections, 1)] <= alpha over 300 experiments of 15 nulls and
    5 real effects (tolerance 3 * sqrt(alpha (1 - alpha) / 300) = 0.052), for the final `rejected`
    flags and for "ever rejected"; the study must have power (mean rejections of real effects)."""
    fdp_final, fdp_ever, power, bh_mismatch = [], [], [], 0
    for t in fdr_runs:
        null = np.array([m.startswith("null") for m in t.metrics])
        for flags, out in ((t.columns["rejected"][-1], fdp_final), (t.columns["rejected"].any(axis=0), fdp_ever)):
            out.append(np.count_nonzero(flags & null) / max(np.count_nonzero(flags), 1))
        power.append(t.columns["rejected"][-1][~null].mean())
        if not t.columns["stats_reset"].any():
            # with no resets, corrected p is BH over the final always-valid p (monotone in time)
            bh = benjamini_hochberg(t.columns["always_valid_p_value"][-1]) < ALPHA
            bh_mismatch += int(np.any(bh != t.columns["rejected"][-1]))
    bound = upper_tolerance(ALPHA, len(fdr_runs))
    assert np.mean(fdp_final) <= bound, f"FDR (final) = {np.mean(fdp_final):.4f} > {bound:.4f}"
    assert np.mean(fdp_ever) <= bound, f"FDR (ever rejected) = {np.mean(fdp_ever):.4f} > {bound:.4f}"
    assert np.mean(power) >= 0.5, f"study has too little power to say anything: {np.mean(power):.3f}"
    assert bh_mismatch == 0


# ------------------------------------------------------------------------------ stats resets
def test_false_reset_rate_under_constant_effect(aa_runs, coverage_runs):
    """P(any stats_reset) <= reset_alpha per hypothesis under a constant effect: 0 (A/A, 6000
    hypotheses) and +5% (coverage study, 3000 hypotheses); tolerance 3 SE = 0.0031 on 9000."""
    resets = np.concatenate([t.columns["stats_reset"].any(axis=0) for t in aa_runs + coverage_runs])
    rate = resets.mean()
    bound = upper_tolerance(RESET_ALPHA, resets.size)
    assert rate <= bound, f"false reset rate {rate:.5f} over {resets.size} hypotheses > {bound:.5f}"


FLIP_AT = 15  # +20% lift for 15 intervals, then -20%
FLIP_INTERVALS = 40
FLIP_EXPERIMENTS = 30  # x 10 metrics = 300 hypotheses


@pytest.fixture(scope="module")
def flip_runs() -> list[Trace]:
    metrics = tuple(
        MetricSpec(f"flip{i}", 10.0, sd=10.0, lifts={"treatment": 0.2}, lift_changes=((FLIP_AT, {"treatment": -0.2}),))
        for i in range(10)
    )
    spec = ExperimentSpec("flip", metrics, units_per_interval=2000, intervals=FLIP_INTERVALS)
    return [run_simulate(spec, 40_000 + s) for s in range(FLIP_EXPERIMENTS)]


def test_sign_flip_triggers_reset_and_new_segment_covers_new_effect(flip_runs):
    """A +20% -> -20% flip at interval 15 resets in >= 90% of 300 hypotheses (the engine should
    do far better: the reset-level CI sequence excludes +20% within a few intervals); among the
    reset hypotheses, the final running uncorrected CI of the new segment covers -20% with rate
    >= 1 - alpha - 3 SE (always-valid coverage of a segment holding post-change data only)."""
    triggered, covered, delays = [], [], []
    for t in flip_runs:
        reset = t.columns["stats_reset"]
        reset_alerts = {(a.metric, a.interval_timestamp) for a in t.alerts if a.kind == "stats_reset"}
        for h, metric in enumerate(t.metrics):
            at = np.flatnonzero(reset[:, h])
            ok = at.size > 0 and at[0] >= FLIP_AT
            triggered.append(ok)
            if not ok:
                continue
            delays.append(at[0] - FLIP_AT)
            assert (metric, t.timestamps[at[0]]) in reset_alerts
            assert t.columns["segment"][-1, h] == at.size and t.columns["segment"][at[0], h] == 1
            lo = t.columns["uncorrected_conf_interval_lower"][-1, h]
            hi = t.columns["uncorrected_conf_interval_upper"][-1, h]
            covered.append(lo <= t.true_lift[-1, h] <= hi)
    assert sum(len([a for a in t.alerts if a.kind == "stats_reset"]) for t in flip_runs) == sum(
        int(t.columns["stats_reset"].sum()) for t in flip_runs
    )
    trigger_rate = np.mean(triggered)
    assert trigger_rate >= 0.9, f"sign flip reset in only {trigger_rate:.3f} of {len(triggered)} hypotheses"
    coverage, n = np.mean(covered), len(covered)
    floor = 1.0 - upper_tolerance(ALPHA, n)
    assert coverage >= floor, f"new segment covers -20% in {coverage:.4f} of {n} < {floor:.4f}"
    assert np.median(delays) <= 10


# ------------------------------------------------------------------------------------- SRM
SRM_RUNS = 5000  # per allocation
SRM_LOOKS = 50
SRM_UNITS_PER_LOOK = 200


def _srm_null_p_values(weights: tuple[float, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequential SRM p = min(1, exp(-max log BF)) over 50 looks of ~200 units drawn with the
    intended allocation, through the engine's own Bayes factor function. Returns p per run and
    the count paths (for the cross-check with ExperimentState)."""
    rng = np.random.default_rng(seed)
    shares = np.asarray(weights) / sum(weights)
    increments = rng.multinomial(rng.poisson(SRM_UNITS_PER_LOOK, size=(SRM_RUNS, SRM_LOOKS)), shares)
    paths = np.cumsum(increments, axis=1).astype(np.float64)
    p = np.empty(SRM_RUNS)
    share_list = shares.tolist()
    for r in range(SRM_RUNS):
        best = max(dirichlet_multinomial_log_bf(x, share_list, 100.0) for x in paths[r].tolist())
        p[r] = min(1.0, math.exp(-best))
    return p, increments


@pytest.fixture(scope="module")
def srm_null():
    return {w: _srm_null_p_values(w, 50_000 + k) for k, w in enumerate([(1.0, 1.0), (2.0, 1.0, 1.0)])}


def test_srm_false_alarm_rate(srm_null):
    """Under the intended allocation (50/50 and 50/25/25), 50 looks up to ~10,000 units:
    #alarms at srm_alpha = 0.001 <= the exact Binomial(5000, 0.001) 99.9% quantile (13); the
    sequential p is also checked at 0.01 and 0.05 (Ville's inequality holds at every level),
    where 5000 runs resolve the rate: <= level + 3 SE."""
    for weights, (p, _) in srm_null.items():
        alarms = int(np.count_nonzero(p <= SRM_ALPHA))
        limit = int(binom.ppf(0.999, SRM_RUNS, SRM_ALPHA))
        assert alarms <= limit, f"{weights}: {alarms} SRM false alarms in {SRM_RUNS} runs > {limit}"
        for level in (0.01, 0.05):
            rate = np.mean(p <= level)
            assert rate <= upper_tolerance(level, SRM_RUNS), f"{weights}: P(p_srm <= {level}) = {rate:.4f}"


def test_srm_direct_path_matches_engine(srm_null):
    """The null study above uses dirichlet_multinomial_log_bf directly; ExperimentState's SRM
    status on the same counts must give the same sequential p (20 runs per allocation)."""
    for weights, (p, increments) in srm_null.items():
        variations = ["control"] + [f"t{i}" for i in range(1, len(weights))]
        config = EngineConfig(weights=dict(zip(variations, weights)))
        for r in range(20):
            state = ExperimentState("srm", config, {"m": MetricConfig(is_binary=True)})
            for look in range(SRM_LOOKS):
                obs = [Observation("m", v, float(look), float(n), float(n // 2), float(n // 2))
                       for v, n in zip(variations, increments[r, look].tolist())]
                status = state.update(float(look), obs).srm
            assert status.sequential_p_value == pytest.approx(p[r], rel=1e-9, abs=1e-300)


def test_srm_detects_55_45_split_within_5000_units():
    """Traffic served 55/45 against an intended 50/50 (simulate(), ~100 units per interval):
    `srm.detected` and an 'srm' alert within 5,000 units in >= 95% of 200 runs (the Bayes factor
    grows like N * KL(0.55 || 0.5) = 0.005 N nats, so detection is expected near 2,000 units)."""
    spec = ExperimentSpec(
        "srm-55-45", (MetricSpec("conversion", 0.1, is_binary=True),),
        weights=(0.5, 0.5), served_weights=(0.55, 0.45), units_per_interval=100, intervals=60,
    )
    config = EngineConfig(weights={"control": 0.5, "treatment": 0.5})
    units_to_detection = []
    for s in range(200):
        t = run_simulate(spec, 60_000 + s, config, stop=lambda res: res.srm.detected)
        detected = [k for k, status in enumerate(t.srm) if status.detected]
        if detected:
            k = detected[0]
            assert [a.interval_timestamp for a in t.alerts if a.kind == "srm"] == [spec.start + k * spec.interval_seconds]
            units_to_detection.append(sum(t.srm[k].exposures))
        else:
            units_to_detection.append(math.inf)
    units = np.array(units_to_detection)
    rate = np.mean(units <= 5000)
    assert rate >= 0.95, f"55/45 flagged within 5000 units in {rate:.3f} of runs (median {np.median(units)})"
    assert np.median(units) <= 3500, f"median units to detection {np.median(units)}"
