"""Generators of realistic metric shapes and a runner that feeds many experiments through the
engine at once, for tests/test_realistic.py (issue 16) and its figures.

The generators are independent of ``state.simulate``: each draws unit-level data (or its exact
sufficient statistics) for arrays of experiments x arms at once, so a study of hundreds of
experiments costs numpy passes, not Python loops per unit. Shapes:

- ``revenue``: 4% of units buy, order values lognormal(0, 1.8) (96% zeros, sigma 1.8);
- ``rare``: a 0/1 conversion at 0.5%;
- ``whale``: 5% of units buy, lognormal(0, 0.8) orders, and one buyer in 2,000 places an order
  of 2,000 (a "whale" that dominates its arm's sum when it lands);
- ``counts``: over-dispersed counts per unit, negative binomial with mean 1.5 and shape 0.3
  (variance 9 times the mean);
- ``normal``: normal per unit, mean 10, sd 10;
- ``conversion``: a 0/1 conversion at 10% (the power comparison's binary metric);
- ``conversion5``: a 0/1 conversion at 5% (the power comparison by direction).

A relative lift multiplies the values (revenue, whale, counts, normal) or the rate (rare), so
"lift" means the same thing on every shape. Traffic varies by experiment (20 to 400 units per
arm per interval, log-uniform) and by interval (a daily cycle of +-60% and Poisson noise), so
rare metrics see a few dozen units per arm per interval in the small experiments.

``run_study`` scores all experiments of a study with ``state.experiment.update_many`` (one
vectorised block per look) and returns every reported column as arrays (looks, experiments,
hypotheses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from state import EngineConfig, ExperimentState, MetricConfig, Observation
from state.experiment import update_many

VARIATIONS = ("control", "t1", "t2")
SHAPES = ("revenue", "rare", "whale", "counts", "normal")
BINARY = {"rare", "conversion", "conversion5"}
RATES = {"rare": 0.005, "conversion": 0.1, "conversion5": 0.05}

COLUMNS = (
    "local_p_value", "always_valid_p_value", "corrected_p_value", "rejected", "alpha", "fdr_correction_factor",
    "uncorrected_local_conf_interval_lower", "uncorrected_local_conf_interval_upper",
    "uncorrected_conf_interval_lower", "uncorrected_conf_interval_upper",
    "corrected_conf_interval_lower", "corrected_conf_interval_upper", "lift_estimate", "effect_changed",
    "stats_reset",
)


def _reduce(arm_of_value: np.ndarray, values: np.ndarray, arms: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-arm sum and sum of squares of unit values tagged with their arm."""
    return (np.bincount(arm_of_value, weights=values, minlength=arms),
            np.bincount(arm_of_value, weights=values * values, minlength=arms))


def draw_shape(rng: np.random.Generator, shape: str, units: np.ndarray, factor: np.ndarray):
    """Sum and sum of squares per arm (any array shape) for ``units`` units each; ``factor`` is
    1 + the true relative lift of each arm."""
    flat_units = units.ravel().astype(np.int64)
    flat_factor = np.broadcast_to(factor, units.shape).ravel()
    arms = flat_units.size
    if shape in BINARY:
        sums = rng.binomial(flat_units, RATES[shape] * flat_factor).astype(np.float64)
        return sums.reshape(units.shape), sums.reshape(units.shape).copy()
    if shape == "normal":
        mean = 10.0 * flat_factor
        sums = rng.normal(flat_units * mean, 10.0 * np.sqrt(flat_units))
        within = 100.0 * rng.chisquare(np.maximum(flat_units - 1, 1))
        with np.errstate(divide="ignore", invalid="ignore"):
            squares = np.where(flat_units > 0, sums * sums / flat_units, 0.0) + np.where(flat_units > 1, within, 0.0)
        sums = np.where(flat_units > 0, sums, 0.0)
        return sums.reshape(units.shape), squares.reshape(units.shape)
    if shape == "counts":  # per unit: NB(r = 0.3, mean 1.5 * factor)
        arm = np.repeat(np.arange(arms), flat_units)
        mean = 1.5 * flat_factor[arm]
        values = rng.negative_binomial(0.3, 0.3 / (0.3 + mean)).astype(np.float64)
    else:
        rate, sigma = (0.04, 1.8) if shape == "revenue" else (0.05, 0.8)
        buyers = rng.binomial(flat_units, rate)
        arm = np.repeat(np.arange(arms), buyers)
        values = rng.lognormal(0.0, sigma, arm.size)
        if shape == "whale":
            values = np.where(rng.random(arm.size) < 5e-4, 2000.0, values)
        values = values * flat_factor[arm]
    sums, squares = _reduce(arm, values, arms)
    return sums.reshape(units.shape), squares.reshape(units.shape)


@dataclass(frozen=True)
class Study:
    experiments: int
    looks: int
    seed: int
    lifts: dict  # (shape, variation) -> true relative lift; absent: 0
    shapes: tuple = SHAPES
    traffic: tuple = (20.0, 400.0)  # units per arm per interval: log-uniform range over experiments
    flip_at: int | None = None  # from this look on every lift has the opposite sign
    allocation: tuple | None = None  # traffic weight per variation (VARIATIONS order); None: equal
    launches: tuple = ()  # (variation, look): it has no observations before that look
    drift: float = 0.0  # every arm's values (rates) times 1 + drift * look / looks: the metric moves over time


@dataclass
class StudyResult:
    columns: dict  # name -> (looks, experiments, hypotheses)
    metrics: list  # per hypothesis
    variations: list
    true_lift: np.ndarray  # (hypotheses,)
    alerts: list  # per experiment


def run_study(study: Study, config: EngineConfig) -> StudyResult:
    rng = np.random.default_rng(study.seed)
    g, arms = study.experiments, len(VARIATIONS)
    low, high = np.log(study.traffic)
    level = np.exp(rng.uniform(low, high, g))
    metric_configs = {shape: MetricConfig(name=shape, is_binary=shape in BINARY) for shape in study.shapes}
    states = [ExperimentState(f"e{i}", config, metric_configs) for i in range(g)]
    def factors_at(sign):
        return {shape: np.array([1.0 + sign * study.lifts.get((shape, v), 0.0) for v in VARIATIONS])
                for shape in study.shapes}

    factors = factors_at(1.0)
    collected = {name: [] for name in COLUMNS}
    alerts: list[list] = [[] for _ in range(g)]
    metrics = variations = None
    launch_look = dict(study.launches)
    for t in range(study.looks):
        if t == study.flip_at:
            factors = factors_at(-1.0)
        daily = 1.0 + 0.6 * math.sin(2.0 * math.pi * t / 24.0)
        weights = np.ones(arms) if study.allocation is None else np.asarray(study.allocation, dtype=np.float64)
        units = rng.poisson((level * daily)[:, None] * weights[None, :]).astype(np.float64)
        level_now = 1.0 + study.drift * t / study.looks
        drawn = {shape: draw_shape(rng, shape, units, level_now * factors[shape][None, :]) for shape in study.shapes}
        live = [a for a, v in enumerate(VARIATIONS) if t >= launch_look.get(v, 0)]
        ts = 1_700_000_000.0 + 3600.0 * t
        units_list = units.tolist()
        sums = {shape: (s.tolist(), q.tolist()) for shape, (s, q) in drawn.items()}
        items = []
        for e, state in enumerate(states):
            observations = [Observation(shape, VARIATIONS[a], ts, units_list[e][a], sums[shape][0][e][a],
                                        sums[shape][1][e][a]) for shape in study.shapes for a in live]
            items.append((state, ts, observations))
        results = update_many(items)
        for e, result in enumerate(results):
            alerts[e].extend(result.alerts)
        for name in COLUMNS:
            collected[name].append([result.columns[name] for result in results])
        keys = list(zip(results[0].columns["metric"], results[0].columns["variation_id"]))
        if metrics is None or len(keys) > len(metrics):
            assert metrics is None or keys[:len(metrics)] == list(zip(metrics, variations))  # launches append
            metrics, variations = [m for m, _ in keys], [v for _, v in keys]
    columns = {name: _padded(name, values, len(metrics)) for name, values in collected.items()}
    truth = np.array([study.lifts.get((m, v), 0.0) for m, v in zip(metrics, variations)])
    return StudyResult(columns, metrics, variations, truth, alerts)


# Looks before a variation's launch have no rows for its hypotheses: what a row without a test says
_NOT_YET = {"local_p_value": 1.0, "always_valid_p_value": 1.0, "corrected_p_value": 1.0, "rejected": 0.0,
            "effect_changed": 0.0, "stats_reset": 0.0, "uncorrected_local_conf_interval_lower": -np.inf,
            "uncorrected_conf_interval_lower": -np.inf, "corrected_conf_interval_lower": -np.inf,
            "uncorrected_local_conf_interval_upper": np.inf, "uncorrected_conf_interval_upper": np.inf,
            "corrected_conf_interval_upper": np.inf}


def _padded(name: str, looks: list, hypotheses: int) -> np.ndarray:
    """(looks, experiments, hypotheses) from per-look lists of per-experiment columns."""
    fill = _NOT_YET.get(name, np.nan)
    out = np.full((len(looks), len(looks[0]), hypotheses), fill)
    for t, per_experiment in enumerate(looks):
        for e, column in enumerate(per_experiment):
            out[t, e, :len(column)] = column
    return out


def upper_tolerance(rate: float, n: int, sds: float = 3.0) -> float:
    """claimed rate + ``sds`` binomial standard errors of a mean over n runs."""
    return rate + sds * math.sqrt(rate * (1.0 - rate) / n)


# ---------------------------------------------------------------------------- measurements
INTERVALS = (  # (lower, upper, p, level) of each reported CI/p pair (state/METHODS.md F5)
    ("uncorrected_local_conf_interval_lower", "uncorrected_local_conf_interval_upper", "local_p_value", "alpha"),
    ("uncorrected_conf_interval_lower", "uncorrected_conf_interval_upper", "always_valid_p_value", "alpha"),
    ("corrected_conf_interval_lower", "corrected_conf_interval_upper", "corrected_p_value", "alpha"),
)


def inconsistencies(result: StudyResult) -> dict:
    """Per CI/p pair: rows where lower > upper, and rows where "0 outside" != "p < level"."""
    out = {}
    cols = result.columns
    for lo_name, hi_name, p_name, level in INTERVALS:
        lo, hi = cols[lo_name], cols[hi_name]
        outside = (lo > 0) | (hi < 0)
        out[lo_name] = (int(np.count_nonzero(lo > hi)), int(np.count_nonzero(outside != (cols[p_name] < cols[level]))))
    return out


def aa_rates(result: StudyResult, alpha: float) -> dict:
    """Per shape: (rate of ever always-valid p < alpha, n hypotheses); plus the experiments'
    FWER of ``rejected`` (corrected p < alpha) under the global null."""
    ever = (result.columns["always_valid_p_value"] < alpha).any(axis=0)  # (experiments, hypotheses)
    rates = {}
    for shape in dict.fromkeys(result.metrics):
        mask = np.array([m == shape for m in result.metrics])
        rates[shape] = (float(ever[:, mask].mean()), int(ever[:, mask].size))
    rejected = result.columns["rejected"].astype(bool).any(axis=(0, 2))
    rates["FWER (corrected)"] = (float(rejected.mean()), int(rejected.size))
    return rates


def signed_false_rejections(result: StudyResult, alpha: float) -> dict:
    """Per shape, A/A: rate of hypotheses whose always-valid p first falls below alpha with a
    negative lift estimate, and with a positive one (each side's share of the error); n."""
    sig = result.columns["always_valid_p_value"] < alpha
    first = np.argmax(sig, axis=0)
    sign = np.take_along_axis(result.columns["lift_estimate"], first[None], axis=0)[0]
    ever = sig.any(axis=0)
    out = {}
    for shape in dict.fromkeys(result.metrics):
        mask = np.array([m == shape for m in result.metrics])
        out[shape] = (float((ever & (sign < 0))[:, mask].mean()), float((ever & (sign > 0))[:, mask].mean()),
                      int(ever[:, mask].size))
    return out


def miss_rates(result: StudyResult) -> dict:
    """Per shape with a non-zero true lift: rate of the truth ever outside the reported running
    uncorrected CI (always-valid coverage failure), and the worst single-look miss rate."""
    cols = result.columns
    truth = result.true_lift[None, None, :]
    miss = (cols["uncorrected_conf_interval_lower"] > truth) | (cols["uncorrected_conf_interval_upper"] < truth)
    out = {}
    for shape in dict.fromkeys(result.metrics):
        mask = np.array([m == shape for m in result.metrics]) & (result.true_lift != 0)
        if mask.any():
            out[shape] = (float(miss[:, :, mask].any(axis=0).mean()), int(miss[0][:, mask].size),
                          float(miss[:, :, mask].mean(axis=(1, 2)).max()))
    return out


def fdr(result: StudyResult) -> tuple[float, float, int]:
    """(FDR of the final `rejected` flags, FDR of "ever rejected", experiments)."""
    rejected = result.columns["rejected"].astype(bool)
    null = result.true_lift == 0
    values = []
    for flags in (rejected[-1], rejected.any(axis=0)):
        false = (flags & null).sum(axis=1)
        values.append(float(np.mean(false / np.maximum(flags.sum(axis=1), 1))))
    return values[0], values[1], rejected.shape[1]


def looks_to_detect(result: StudyResult) -> np.ndarray:
    """Per (experiment, hypothesis) with a true effect: the first look (1-based) whose
    corrected p is below alpha, inf when never."""
    rejected = result.columns["rejected"].astype(bool)[:, :, result.true_lift != 0]
    first = np.argmax(rejected, axis=0).astype(np.float64) + 1.0
    return np.where(rejected.any(axis=0), first, np.inf)


def last_widths(result: StudyResult) -> np.ndarray:
    """Width of the running uncorrected CI at the last look, hypotheses with a true effect."""
    cols = result.columns
    keep = result.true_lift != 0
    return (cols["uncorrected_conf_interval_upper"][-1] - cols["uncorrected_conf_interval_lower"][-1])[:, keep]
