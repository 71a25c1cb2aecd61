"""Sufficient statistics of one arm (METHODS.md section 1) and their vectorised moments.

An arm's data reduce to N (units), S (sum) and Q (sum of squares). They form a commutative monoid
under addition, so partial states merge by adding and any batching of the same observations gives
the same totals (exactly, for counts below 2**53).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Relative tolerance below which a negative variance is rounding noise (METHODS.md section 1).
VARIANCE_ROUNDING = 1e-9


@dataclass(frozen=True, slots=True)
class ArmStats:
    """Cumulative (N, S, Q) of one arm; immutable, mergeable."""

    n: float = 0.0
    s: float = 0.0
    q: float = 0.0

    def update(self, n: float, s: float, q: float) -> "ArmStats":
        return ArmStats(self.n + n, self.s + s, self.q + q)

    def merge(self, other: "ArmStats") -> "ArmStats":
        return ArmStats(self.n + other.n, self.s + other.s, self.q + other.q)

    @property
    def mean(self) -> float:
        return self.s / self.n if self.n > 0 else float("nan")

    def variance(self, is_binary: bool = False, ddof: int = 0) -> float:
        mean, var = arm_moments(np.array([self.n, self.s, self.q]), np.array(is_binary), ddof)
        return float(var)

    def to_array(self) -> np.ndarray:
        return np.array([self.n, self.s, self.q], dtype=np.float64)

    @classmethod
    def from_array(cls, values) -> "ArmStats":
        n, s, q = (float(v) for v in values)
        return cls(n, s, q)


def arm_moments(stats: np.ndarray, is_binary: np.ndarray | None, ddof: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of arms stored as ``stats[..., (N, S, Q)]``.

    Population variance v = Q/N - m^2 (METHODS.md section 1), or m(1 - m) for 0/1 metrics
    (``is_binary``: a mask, or None when no metric is 0/1, which saves the streaming path a pass);
    ``ddof=1`` rescales to the sample variance by N / (N - 1); ``ddof`` may also be an array
    broadcasting against N (one convention per metric). Rounding noise below zero is
    clamped; arms without units give NaN.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return _arm_moments(stats, is_binary, ddof)


def _arm_moments(stats, is_binary, ddof):
    """:func:`arm_moments` without its errstate, for callers that already hold one (the hot path)."""
    n, s, q = stats[..., 0], stats[..., 1], stats[..., 2]
    mean = s / n
    var = q / n - mean * mean
    if is_binary is not None and np.any(is_binary):
        var = np.where(is_binary, mean * (1.0 - mean), var)
    var = np.maximum(var, 0.0)
    # ddof: 0 or 1, or an array (one convention per metric, config.MetricConfig.ddof); n / (n - 0)
    # is exactly 1.0, so mixing conventions leaves the population-form variances bit-exact.
    if ddof is not None and (ddof.any() if isinstance(ddof, np.ndarray) else ddof):
        var = var * n / (n - ddof)
    return mean, var
