"""Sample-ratio-mismatch and SumRatio checks (METHODS.md section 7).

- Sequential: the Dirichlet-multinomial mixture Bayes factor of Lindon & Malek (arXiv 2011.03567),
  anytime-valid, used for alerting.
- Fixed horizon: Pearson chi-square against the intended allocation (ep-stats' SrmCheck with equal
  weights), reported only.
- SumRatio: ep-stats' SumRatioCheck, reported only.
Only ``scipy.special`` is used: ``scipy.stats`` distribution objects cost ~58 us a call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import chdtrc


def dirichlet_multinomial_log_bf(counts, null_probabilities, concentration: float) -> float:
    """log BF of "some allocation" against theta0 (section 7):

    lgamma(A) - lgamma(A + N) + sum_i [lgamma(a_i + x_i) - lgamma(a_i) - x_i ln theta0_i],
    a = c * theta0, A = sum a, N = sum x. A unit in a variation of weight 0 is impossible under
    the null: the Bayes factor is infinite. Scalar ``math`` on purpose: an experiment has a handful
    of variations, where numpy's per-call overhead dominates.
    """
    x = [float(v) for v in counts]
    weights = [float(v) for v in null_probabilities]
    scale = sum(weights)
    total_a = total_x = log_bf = 0.0
    for xi, wi in zip(x, weights):
        if wi <= 0:
            if xi > 0:
                return math.inf
            continue
        theta0 = wi / scale
        a = concentration * theta0
        total_a += a
        total_x += xi
        log_bf += math.lgamma(a + xi) - math.lgamma(a) - xi * math.log(theta0)
    return log_bf + math.lgamma(total_a) - math.lgamma(total_a + total_x)


def sequential_p_value(max_log_bayes_factor: float) -> float:
    """Anytime-valid p-value min(1, exp(-max over time of log BF)): the running minimum of 1/BF.

    Decided in log space: with hundreds of variations log BF is often below -710 under the null,
    where exp(-log BF) itself overflows (math.exp raises OverflowError); p is then simply 1."""
    if not max_log_bayes_factor > 0.0:  # BF <= 1 (or no data, or NaN): p = 1
        return 1.0
    return math.exp(-max_log_bayes_factor)  # underflows to 0.0 for an infinite BF, never raises


@dataclass(frozen=True, slots=True)
class SequentialSRM:
    """Running state of the sequential SRM test of one epoch: counts and the largest log BF.

    The sequential p-value min(1, exp(-max log BF)) is the running minimum of 1/BF, so it never
    increases; the test restarts at an allocation change (a new object).
    """

    null_probabilities: tuple[float, ...]
    concentration: float = 100.0
    counts: tuple[float, ...] = ()
    max_log_bayes_factor: float = -math.inf

    def update(self, increments) -> "SequentialSRM":
        counts = np.asarray(self.counts or (0.0,) * len(self.null_probabilities), dtype=np.float64)
        counts = counts + np.asarray(increments, dtype=np.float64)
        log_bf = dirichlet_multinomial_log_bf(counts, self.null_probabilities, self.concentration)
        return SequentialSRM(
            self.null_probabilities,
            self.concentration,
            tuple(counts.tolist()),
            max(self.max_log_bayes_factor, log_bf),
        )

    @property
    def p_value(self) -> float:
        return sequential_p_value(self.max_log_bayes_factor)


@dataclass(frozen=True, slots=True)
class SrmCheckResult:
    """Fixed-horizon chi-square SRM check, ep-stats' output columns."""

    p_value: float
    test_stat: float
    confidence_level: float
    degrees_of_freedom: int

    @property
    def mismatch(self) -> bool:
        return self.p_value < 1.0 - self.confidence_level


def chi_square_srm(counts, weights=None, confidence_level: float = 0.999) -> SrmCheckResult:
    """Pearson chi-square of counts against N * theta0, df = k - 1 (section 7).

    With equal weights this is ep-stats' SrmCheck exactly; with one variant or no units there is
    nothing to test and the statistic is NaN, as in ep-stats.
    """
    x = [float(v) for v in counts]
    k = len(x)
    w = [1.0] * k if weights is None else [float(v) for v in weights]
    total, scale = sum(x), sum(w)
    if k < 2 or total <= 0 or scale <= 0:
        return SrmCheckResult(math.nan, math.nan, confidence_level, max(k - 1, 0))
    stat = 0.0
    for xi, wi in zip(x, w):
        expected = total * wi / scale
        if expected > 0:
            stat += (xi - expected) ** 2 / expected
        elif xi > 0:
            stat = math.inf
    return SrmCheckResult(float(chdtrc(k - 1, stat)), stat, confidence_level, k - 1)


@dataclass(frozen=True, slots=True)
class SumRatioResult:
    """ep-stats' SumRatioCheck outputs; ``failed`` when sum_ratio exceeds max_sum_ratio."""

    sum_ratio: float
    max_sum_ratio: float
    p_value: float
    test_stat: float
    confidence_level: float

    @property
    def failed(self) -> bool:
        return self.sum_ratio > self.max_sum_ratio


def sum_ratio_check(nominator_counts, denominator_counts, max_sum_ratio: float = 0.01, confidence_level: float = 0.999) -> SumRatioResult:
    """sum_ratio = N / (N + D); chi-square of [D, |D - N|] against equal counts (section 7)."""
    nominator = float(np.sum(nominator_counts))
    denominator = float(np.sum(denominator_counts))
    total = nominator + denominator
    ratio = nominator / total if total > 0 else math.nan
    observed = np.array([denominator, abs(denominator - nominator)])
    expected = observed.mean()
    if expected > 0:
        stat = float(np.sum((observed - expected) ** 2) / expected)
        p = float(chdtrc(1, stat))
    else:
        stat = p = math.nan
    return SumRatioResult(ratio, max_sum_ratio, p, stat, confidence_level)
