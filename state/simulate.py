"""Seeded traffic simulator: per-interval observations of synthetic experiments (numpy only).

Each interval draws its units from a Poisson rate, splits them across variations by the
allocation actually served (which may differ from the intended one, to simulate a sample ratio
mismatch, and may ramp over time), and draws each arm's sufficient statistics exactly in
distribution: a 0/1 metric's sum is binomial; a normal metric's sum is N(n mu, n sd^2) and its
sum of squares S^2/n + sd^2 chi^2_(n-1), the textbook decomposition of sum x^2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric: control mean, sd (ignored for 0/1 metrics) and relative lifts per treatment.

    ``lift_changes`` holds (interval index, {variation: lift}) pairs: from that interval on the
    lifts are replaced, to simulate effects that change over time.
    """

    name: str
    control_mean: float
    sd: float = 1.0
    is_binary: bool = False
    lifts: Mapping[str, float] = field(default_factory=dict)
    lift_changes: tuple[tuple[int, Mapping[str, float]], ...] = ()

    def lifts_at(self, interval: int) -> Mapping[str, float]:
        lifts = self.lifts
        for start, changed in self.lift_changes:
            if interval >= start:
                lifts = changed
        return lifts


@dataclass(frozen=True, slots=True)
class ExperimentSpec:
    """An experiment. ``served_weights`` is the split actually delivered (default: ``weights``);
    ``weight_changes`` holds (interval index, weights) pairs for ramps."""

    experiment_id: str
    metrics: tuple[MetricSpec, ...]
    variations: tuple[str, ...] = ("control", "treatment")
    weights: tuple[float, ...] | None = None
    served_weights: tuple[float, ...] | None = None
    weight_changes: tuple[tuple[int, tuple[float, ...]], ...] = ()
    units_per_interval: float = 1000.0
    intervals: int = 30
    start: float = 1_700_000_000.0
    interval_seconds: float = 60.0

    def served_at(self, interval: int) -> np.ndarray:
        weights = self.served_weights or self.weights or (1.0,) * len(self.variations)
        for start, changed in self.weight_changes:
            if interval >= start:
                weights = changed
        w = np.asarray(weights, dtype=np.float64)
        return w / w.sum()


def draw_arm_sums(rng: np.random.Generator, units: np.ndarray, means: np.ndarray, sd: float, is_binary: bool):
    """Sums and sums of squares for arms with ``units`` units each and per-unit ``means``."""
    if is_binary:
        sums = rng.binomial(units.astype(np.int64), np.clip(means, 0.0, 1.0)).astype(np.float64)
        return sums, sums.copy()
    sums = rng.normal(units * means, sd * np.sqrt(units))
    within = sd * sd * rng.chisquare(np.maximum(units - 1, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        squares = np.where(units > 0, sums * sums / units, 0.0) + np.where(units > 1, within, 0.0)
    sums = np.where(units > 0, sums, 0.0)
    return sums, squares


def simulate(spec: ExperimentSpec, seed: int) -> list[list[dict]]:
    """Observations interval by interval: a list (per interval) of row dicts, each with
    experiment_id, metric, variation_id, interval_timestamp (unix s), unit_count, sums."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(spec.intervals):
        ts = spec.start + i * spec.interval_seconds
        units = rng.multinomial(rng.poisson(spec.units_per_interval), spec.served_at(i)).astype(np.float64)
        rows = []
        for metric in spec.metrics:
            lifts = metric.lifts_at(i)
            means = metric.control_mean * (1.0 + np.array([lifts.get(v, 0.0) for v in spec.variations]))
            sums, squares = draw_arm_sums(rng, units, means, metric.sd, metric.is_binary)
            for k, variation in enumerate(spec.variations):
                rows.append({
                    "experiment_id": spec.experiment_id,
                    "metric": metric.name,
                    "variation_id": variation,
                    "interval_timestamp": ts,
                    "unit_count": int(units[k]),
                    "unit_observation_sum": float(sums[k]),
                    "unit_observation_sum_of_squares": float(squares[k]),
                })
        out.append(rows)
    return out


def demo_experiments(intervals: int = 20) -> list[ExperimentSpec]:
    """The README's example traffic: one experiment with real effects on some metrics and none on
    others, and one whose traffic is split 55/45 against an intended 50/50."""
    effects = ExperimentSpec(
        experiment_id="checkout-redesign",
        variations=("control", "treatment_a", "treatment_b"),
        metrics=(
            MetricSpec("conversion", 0.10, is_binary=True, lifts={"treatment_a": 0.12, "treatment_b": 0.0}),
            MetricSpec("revenue_per_visitor", 5.0, sd=12.0, lifts={"treatment_a": 0.10, "treatment_b": 0.0}),
            MetricSpec("support_tickets", 0.05, is_binary=True, lifts={}),
        ),
        units_per_interval=3000,
        intervals=intervals,
    )
    mismatch = ExperimentSpec(
        experiment_id="pricing-banner",
        variations=("control", "treatment"),
        weights=(0.5, 0.5),
        served_weights=(0.55, 0.45),
        metrics=(MetricSpec("conversion", 0.08, is_binary=True, lifts={"treatment": 0.0}),),
        units_per_interval=1000,
        intervals=intervals,
    )
    return [effects, mismatch]
